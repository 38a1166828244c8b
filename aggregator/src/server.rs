//! Wiring: storage, writer, gRPC ingest and HTTP API, with graceful shutdown.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use inferscope_proto::v1::ingest_server::IngestServer;
use tokio::sync::mpsc;
use tonic::codec::CompressionEncoding;
use tracing::info;

use crate::api::{router_with_limits, ApiState};
use crate::ingest::dedup::Dedup;
use crate::ingest::validate::Limits;
use crate::ingest::writer::{run_writer, WriterConfig};
use crate::ingest::IngestService;
use crate::metrics::Metrics;
use crate::otlp::OtlpSink;
use crate::store::{Store, StoreConfig};

/// Aggregator configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// gRPC ingest address.
    pub grpc_listen: SocketAddr,
    /// HTTP API address.
    pub http_listen: SocketAddr,
    /// Storage.
    pub store: StoreConfig,
    /// Bearer token nodes must present.
    pub token: Option<String>,
    /// Per-node tokens `(token, node name)`: batches sent with one must be that node's.
    pub node_tokens: Vec<(String, String)>,
    /// Read-only token of the HTTP side (API, UI, metrics); none: open to whoever can reach it.
    pub api_token: Option<String>,
    /// Host names the HTTP side answers to besides IP literals and localhost.
    pub allowed_hosts: Vec<String>,
    /// Serve ingest or the HTTP side on a non-loopback address without a token.
    pub allow_unauthenticated: bool,
    /// Query-API calls at once (beyond: 429).
    pub max_queries: usize,
    /// TLS certificate and key (PEM) for gRPC.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Writer commit policy.
    pub writer: WriterConfig,
    /// Batches queued for the writer at most.
    pub queue: usize,
    /// Largest accepted gRPC message (after decompression).
    pub max_message_bytes: usize,
    /// Largest estimated decoded size of one batch (checked on the wire before decoding).
    pub max_decoded_bytes: usize,
    /// Export streams open at once.
    pub max_streams: usize,
    /// HTTP/2 streams per client connection.
    pub max_streams_per_connection: u32,
    /// Encoded bytes of batches waiting for storage, at most (raised to `max_message_bytes`).
    pub queue_bytes: usize,
    /// OTLP export of stored batches (off: `None`).
    pub otlp: Option<crate::otlp::OtlpConfig>,
}

/// Refuses to listen beyond loopback without credentials: an open ingest port lets anyone write
/// rows, an open HTTP port lets anyone read every trace.
fn refuse_open_doors(cfg: &ServerConfig) -> anyhow::Result<()> {
    if cfg.allow_unauthenticated {
        return Ok(());
    }
    if !cfg.grpc_listen.ip().is_loopback() && cfg.token.is_none() && cfg.node_tokens.is_empty() {
        anyhow::bail!(
            "refusing to accept ingest on {} without a token: set --token-file (or INFERSCOPE_TOKEN),              or pass --allow-unauthenticated",
            cfg.grpc_listen
        );
    }
    if !cfg.http_listen.ip().is_loopback() && cfg.api_token.is_none() {
        anyhow::bail!(
            "refusing to serve the query API and UI on {} without an API token: set --api-token-file              (or INFERSCOPE_API_TOKEN), or pass --allow-unauthenticated",
            cfg.http_listen
        );
    }
    Ok(())
}

/// Runs until `shutdown` resolves.
pub async fn serve(
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    refuse_open_doors(&cfg)?;
    let store = Store::open(&cfg.store, Duration::from_secs(60))
        .await
        .with_context(|| format!("cannot use ClickHouse at {}", cfg.store.url))?;
    info!(clickhouse = ?store.version, database = %store.database, "storage ready");
    let metrics = Arc::new(Metrics::default());
    let dedup = Arc::new(Dedup::new(1_000_000));
    load_recent_batches(&store, &dedup).await;
    let (otlp, otlp_task) = match &cfg.otlp {
        Some(o) => {
            let (sink, task) = OtlpSink::start(o, metrics.otlp.clone())?;
            (Some(sink), Some(task))
        }
        None => (None, None),
    };
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let writer = tokio::spawn(run_writer(
        store.clone(),
        rx,
        metrics.clone(),
        dedup.clone(),
        cfg.writer.clone(),
        otlp,
    ));

    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let limits = Limits::default();
    inferscope_proto::codec::set_decode_limits(inferscope_proto::codec::DecodeLimits {
        max_rows: limits.max_rows as u64,
        max_decoded_bytes: cfg.max_decoded_bytes as u64,
    });
    let svc = IngestServer::new(
        IngestService::new(
            tx,
            metrics.clone(),
            dedup,
            limits,
            cfg.token.clone(),
            stopping,
            cfg.queue_bytes.max(cfg.max_message_bytes),
        )
        .with_max_streams(cfg.max_streams)
        .with_node_tokens(cfg.node_tokens.clone())
        .with_resend_lookup(store.clone()),
    )
    .accept_compressed(CompressionEncoding::Gzip)
    .accept_compressed(CompressionEncoding::Zstd)
    .send_compressed(CompressionEncoding::Gzip)
    .max_decoding_message_size(cfg.max_message_bytes);
    let mut grpc = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(cfg.max_streams_per_connection.max(1)));
    if let Some((cert, key)) = &cfg.tls {
        let cert = std::fs::read(cert)
            .with_context(|| format!("read TLS certificate {}", cert.display()))?;
        let key = std::fs::read(key).with_context(|| format!("read TLS key {}", key.display()))?;
        grpc = grpc
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .context("TLS configuration")?;
    }
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut stop_grpc = stop_tx.subscribe();
    let mut stop_http = stop_tx.subscribe();
    let grpc_addr = cfg.grpc_listen;
    let grpc_task = tokio::spawn(grpc.add_service(svc).serve_with_shutdown(
        grpc_addr,
        async move {
            let _ = stop_grpc.recv().await;
        },
    ));
    let listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("bind HTTP {}", cfg.http_listen))?;
    info!(grpc = %grpc_addr, http = %cfg.http_listen, "aggregator listening");
    let access = crate::api::access::Access::new(cfg.api_token.clone(), &cfg.allowed_hosts);
    let app = router_with_limits(
        ApiState { store, metrics },
        access,
        crate::api::limit::QueryLimit::new(cfg.max_queries),
    );
    let http_task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_http.recv().await;
            })
            .await
    });
    shutdown.await;
    info!("shutting down");
    // Streams stop reading and end once their queued batches are answered; the servers then
    // stop. A stream that still does not end (an unresponsive client) is not waited for long.
    let _ = stopping_tx.send(true);
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(15), grpc_task).await {
        Ok(r) => r?.context("gRPC server")?,
        Err(_) => tracing::warn!("gRPC streams still open after 15 s; stopping anyway"),
    }
    http_task.await?.context("HTTP server")?;
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    if let Some(t) = otlp_task {
        // The writer has dropped the sink: the task sends what is queued, then ends.
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    Ok(())
}

/// Remembers the batches stored in the last day, so resends after a restart are recognised.
async fn load_recent_batches(store: &Store, dedup: &Dedup) {
    // Batch markers, and the batch ids of request rows: requests are committed before their
    // marker, so a crash in between leaves rows whose batch must still count as stored. The most
    // recent first: those are the ones nodes resend after a restart.
    let q = format!(
        "SELECT id FROM (SELECT concat(node_id, '/', boot_id, '/', toString(sequence)) AS id, \
         received AS t FROM {} WHERE received > now() - 86400 UNION ALL SELECT batch_id AS id, \
         start AS t FROM {} WHERE start > now() - 86400) GROUP BY id ORDER BY max(t) DESC \
         LIMIT 1000000",
        store.table("ingested_batches"),
        store.table("requests")
    );
    match store.client().query(&q).fetch_all::<String>().await {
        Ok(ids) => {
            for id in &ids {
                dedup.mark_stored(id);
            }
            info!(batches = ids.len(), "loaded recent batch ids for dedup");
        }
        Err(e) => tracing::warn!(error = %e, "could not load recent batch ids"),
    }
}
