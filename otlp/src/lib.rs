//! OTLP trace export: every batch, once it is stored in ClickHouse (the aggregator) or closed
//! (node-probe without an aggregator), also goes to an OpenTelemetry collector (OTLP/gRPC or OTLP/HTTP protobuf), converted by [`convert`].
//!
//! Export never slows ingest: the writer hands a stored batch to [`OtlpSink::offer`], which
//! queues it when the queue's span budget allows and drops it otherwise; one task converts and
//! exports, one call per resource. Spans are counted exported, or dropped by reason
//! (`queue_full`, `export_failed`) on `/metrics`. Delivery is at most once: a collector that is
//! down loses the spans of its outage (ClickHouse keeps them), a resent batch is not exported
//! again (only stored batches reach the writer's hand-off, and each is stored once).
pub mod args;
pub mod convert;

pub use args::OtlpArgs;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use inferscope_proto::v1::Batch;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::trace::SpanExporter as _;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`TraceService/Export`), default port 4317.
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`POST …/v1/traces`), default port 4318.
    HttpProtobuf,
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" | "http" => Ok(Self::HttpProtobuf),
            _ => Err(format!(
                "unknown OTLP protocol {s:?}: grpc or http/protobuf"
            )),
        }
    }
}

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// Collector URL: `http://host:4317` (gRPC), `http://host:4318` (HTTP; `/v1/traces` is
    /// added when the URL has no path).
    pub endpoint: String,
    /// Transport.
    pub protocol: Protocol,
    /// Headers (gRPC metadata) sent with every export, e.g. a collector's API key.
    pub headers: Vec<(String, String)>,
    /// Longest wait for one export call.
    pub timeout: Duration,
    /// Spans waiting for export at most; beyond, batches are dropped (counted).
    pub queue_spans: usize,
    /// CA certificate (PEM) trusted for an `https://` gRPC endpoint.
    pub ca_file: Option<PathBuf>,
    /// gzip request bodies.
    pub gzip: bool,
}

impl OtlpConfig {
    /// A configuration with the defaults for everything but the endpoint and transport.
    pub fn new(endpoint: impl Into<String>, protocol: Protocol) -> Self {
        Self {
            endpoint: endpoint.into(),
            protocol,
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            queue_spans: 200_000,
            ca_file: None,
            gzip: true,
        }
    }

    /// The URL the exporter posts to.
    fn url(&self) -> String {
        let e = self.endpoint.trim_end_matches('/');
        let has_path = e
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains('/'));
        match self.protocol {
            Protocol::HttpProtobuf if !has_path => format!("{e}/v1/traces"),
            _ => e.to_owned(),
        }
    }
}

/// A configuration that cannot work, said before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// Malformed endpoint, header, certificate or unsupported combination.
    #[error("OTLP export: {0}")]
    Config(String),
}

type Exporter = opentelemetry_otlp::SpanExporter;

/// Builds the exporter (inside the runtime: the gRPC channel connects lazily).
fn exporter(cfg: &OtlpConfig) -> Result<Exporter, OtlpError> {
    let bad = |e: &dyn std::fmt::Display| OtlpError::Config(e.to_string());
    let url = cfg.url();
    let https = url.starts_with("https://");
    if !url.starts_with("http://") && !https {
        return Err(OtlpError::Config(format!(
            "endpoint {url:?} must start with http:// or https://"
        )));
    }
    match cfg.protocol {
        Protocol::Grpc => {
            let mut md = tonic::metadata::MetadataMap::new();
            for (k, v) in &cfg.headers {
                let k = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .map_err(|e| bad(&format!("header name {k:?}: {e}")))?;
                let v = v.parse().map_err(|e| bad(&format!("header value: {e}")))?;
                md.insert(k, v);
            }
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(url)
                .with_timeout(cfg.timeout)
                .with_metadata(md);
            if cfg.gzip {
                b = b.with_compression(opentelemetry_otlp::Compression::Gzip);
            }
            if let Some(ca) = &cfg.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| bad(&format!("cannot read {}: {e}", ca.display())))?;
                b = b.with_tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                );
            } else if https {
                return Err(OtlpError::Config(
                    "an https:// gRPC endpoint needs --otlp-ca-file (the CA to trust)".into(),
                ));
            }
            b.build().map_err(|e| bad(&e))
        }
        Protocol::HttpProtobuf => {
            if https {
                return Err(OtlpError::Config(
                    "OTLP/HTTP is plaintext only: use --otlp-protocol grpc with --otlp-ca-file \
                     for TLS, or a local collector"
                        .into(),
                ));
            }
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url)
                .with_timeout(cfg.timeout)
                .with_headers(cfg.headers.iter().cloned().collect());
            if cfg.gzip {
                b = b.with_compression(opentelemetry_otlp::Compression::Gzip);
            }
            b.build().map_err(|e| bad(&e))
        }
    }
}

/// A stored batch waiting for export, holding its share of the span budget.
struct Work {
    batch: Batch,
    batch_id: String,
    spans: u64,
    _budget: OwnedSemaphorePermit,
}

/// The writer's end of the export queue.
#[derive(Clone)]
pub struct OtlpSink {
    tx: mpsc::Sender<Work>,
    budget: Arc<Semaphore>,
    metrics: Arc<OtlpMetrics>,
}

/// Budget permits are u32: a batch counts at most this many spans against it.
const MAX_PERMITS: usize = u32::MAX as usize >> 1;

impl OtlpSink {
    /// Checks the configuration, builds the exporter and starts the export task; the task ends
    /// once every sink is dropped and the queue is drained.
    pub fn start(
        cfg: &OtlpConfig,
        metrics: Arc<OtlpMetrics>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), OtlpError> {
        let exporter = exporter(cfg)?;
        let queue = cfg.queue_spans.clamp(1, MAX_PERMITS);
        let (tx, rx) = mpsc::channel(queue.min(65_536));
        let sink = Self {
            tx,
            budget: Arc::new(Semaphore::new(queue)),
            metrics: metrics.clone(),
        };
        info!(endpoint = %cfg.url(), protocol = ?cfg.protocol, queue_spans = queue, "OTLP export on");
        Ok((sink, tokio::spawn(run(exporter, rx, metrics))))
    }

    /// Queues a stored batch for export, or drops it (counted) when the queue is full; never
    /// waits.
    pub fn offer(&self, batch: Batch, batch_id: String) {
        let n = convert::span_count(&batch);
        if n == 0 {
            return;
        }
        let m = &self.metrics;
        let permits = u32::try_from(n.min(MAX_PERMITS)).unwrap_or(u32::MAX);
        let Ok(budget) = self.budget.clone().try_acquire_many_owned(permits) else {
            m.dropped_queue_full.fetch_add(n as u64, Relaxed);
            return;
        };
        let work = Work {
            batch,
            batch_id,
            spans: n as u64,
            _budget: budget,
        };
        m.queued.fetch_add(n as u64, Relaxed);
        if self.tx.try_send(work).is_err() {
            m.queued.fetch_sub(n as u64, Relaxed);
            m.dropped_queue_full.fetch_add(n as u64, Relaxed);
        }
    }
}

/// The export task: converts and exports queued batches one after the other.
async fn run(mut exporter: Exporter, mut rx: mpsc::Receiver<Work>, metrics: Arc<OtlpMetrics>) {
    let m = &metrics;
    let mut seen = convert::SeenSteps::new(262_144);
    let mut failing = false;
    while let Some(w) = rx.recv().await {
        m.queued.fetch_sub(w.spans, Relaxed);
        let mut sent = 0u64;
        for ex in convert::exports(&w.batch, &w.batch_id, &mut seen) {
            let n = ex.spans.len() as u64;
            exporter.set_resource(&ex.resource);
            match exporter.export(ex.spans).await {
                Ok(()) => {
                    m.exported.fetch_add(n, Relaxed);
                    if std::mem::take(&mut failing) {
                        info!("OTLP export works again");
                    }
                }
                Err(e) => {
                    m.export_errors.fetch_add(1, Relaxed);
                    m.dropped_export_failed.fetch_add(n, Relaxed);
                    if !std::mem::replace(&mut failing, true) {
                        warn!(error = %e, spans = n, "OTLP export failed; spans dropped until it works again");
                    }
                }
            }
            sent += n;
        }
        // Steps already sent with an earlier batch are not sent again: not a loss.
        m.deduplicated_steps
            .fetch_add(w.spans.saturating_sub(sent), Relaxed);
    }
    let _ = exporter.shutdown();
}

/// Export counters, rendered on the owner's `/metrics`.
#[derive(Debug, Default)]
pub struct OtlpMetrics {
    /// Spans the collector accepted.
    pub exported: std::sync::atomic::AtomicU64,
    /// Spans dropped because the export queue was full.
    pub dropped_queue_full: std::sync::atomic::AtomicU64,
    /// Spans dropped because their export call failed.
    pub dropped_export_failed: std::sync::atomic::AtomicU64,
    /// Failed export calls.
    pub export_errors: std::sync::atomic::AtomicU64,
    /// Engine steps not exported again because an earlier batch carried them.
    pub deduplicated_steps: std::sync::atomic::AtomicU64,
    /// Spans waiting for export.
    pub queued: std::sync::atomic::AtomicU64,
}

impl OtlpMetrics {
    /// Prometheus text of the counters.
    pub fn render(&self, s: &mut String) {
        use std::fmt::Write as _;
        let mut line = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP inferscope_otlp_{name} {help}\n# TYPE inferscope_otlp_{name} {kind}\ninferscope_otlp_{name} {v}");
        };
        line(
            "spans_exported_total",
            "Spans accepted by the OTLP collector.",
            "counter",
            self.exported.load(Relaxed),
        );
        line(
            "export_errors_total",
            "Failed OTLP export calls.",
            "counter",
            self.export_errors.load(Relaxed),
        );
        line(
            "steps_deduplicated_total",
            "Engine steps not exported again (an earlier batch carried them).",
            "counter",
            self.deduplicated_steps.load(Relaxed),
        );
        line(
            "queued_spans",
            "Spans waiting for OTLP export.",
            "gauge",
            self.queued.load(Relaxed),
        );
        let _ = writeln!(s, "# HELP inferscope_otlp_spans_dropped_total Spans not exported, by reason.\n# TYPE inferscope_otlp_spans_dropped_total counter");
        for (reason, v) in [
            ("queue_full", &self.dropped_queue_full),
            ("export_failed", &self.dropped_export_failed),
        ] {
            let _ = writeln!(
                s,
                "inferscope_otlp_spans_dropped_total{{reason=\"{reason}\"}} {}",
                v.load(Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_protocols() {
        let mut c = OtlpConfig::new("http://127.0.0.1:4318", Protocol::HttpProtobuf);
        assert_eq!(c.url(), "http://127.0.0.1:4318/v1/traces");
        c.endpoint = "http://c:4318/custom/traces".into();
        assert_eq!(c.url(), "http://c:4318/custom/traces");
        c.protocol = Protocol::Grpc;
        c.endpoint = "http://c:4317/".into();
        assert_eq!(c.url(), "http://c:4317");
        assert_eq!("http/protobuf".parse(), Ok(Protocol::HttpProtobuf));
        assert!("thrift".parse::<Protocol>().is_err());
    }

    #[tokio::test]
    async fn bad_configurations_are_refused_up_front() {
        let m = Arc::new(OtlpMetrics::default());
        for (url, p) in [
            ("127.0.0.1:4317", Protocol::Grpc),
            ("https://c:4317", Protocol::Grpc),
            ("https://c:4318", Protocol::HttpProtobuf),
        ] {
            let e = OtlpSink::start(&OtlpConfig::new(url, p), m.clone()).err();
            assert!(e.is_some(), "{url} accepted");
        }
        let mut c = OtlpConfig::new("http://c:4317", Protocol::Grpc);
        c.headers.push(("bad header".into(), "v".into()));
        assert!(OtlpSink::start(&c, m).is_err());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let m = Arc::new(OtlpMetrics::default());
        let mut c = OtlpConfig::new("http://127.0.0.1:9", Protocol::HttpProtobuf);
        c.queue_spans = 1;
        c.timeout = Duration::from_millis(200);
        let (sink, task) = OtlpSink::start(&c, m.clone()).expect("config");
        let span = inferscope_proto::v1::Span::default();
        let rd = inferscope_proto::v1::ResourceData {
            spans: vec![span.clone(), span],
            ..Default::default()
        };
        let b = Batch {
            resources: vec![rd],
            ..Default::default()
        };
        sink.offer(b, "x".into());
        assert_eq!(m.dropped_queue_full.load(Relaxed), 2);
        drop(sink);
        task.await.expect("task ends when the sinks are gone");
    }
}
