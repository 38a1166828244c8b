//! `aggregator` binary: flags and wiring only (see the library).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory as _, Parser};
use inferscope_aggregator::ingest::writer::WriterConfig;
use inferscope_aggregator::server::{serve, ServerConfig};
use inferscope_aggregator::store::StoreConfig;

/// inferscope aggregator: gRPC ingest from node-probes, ClickHouse storage, HTTP query API.
#[derive(Parser)]
#[command(version, about, args_override_self = true)]
struct Cli {
    /// Configuration file: a JSON object of these long options (`{"http-listen": "0.0.0.0:7071"}`);
    /// flags given here override it, unknown keys are an error.
    #[arg(long)]
    config: Option<PathBuf>,
    /// gRPC ingest address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    grpc_listen: SocketAddr,
    /// HTTP API / UI / metrics address.
    #[arg(long, default_value = "127.0.0.1:7071")]
    http_listen: SocketAddr,
    /// ClickHouse HTTP URL.
    #[arg(
        long,
        env = "INFERSCOPE_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:18123"
    )]
    clickhouse_url: String,
    /// ClickHouse database (created if missing).
    #[arg(long, default_value = "inferscope")]
    database: String,
    /// A ClickHouse cluster (its `remote_servers` name): tables are created ON CLUSTER as
    /// replicated `<table>_local` tables plus `Distributed` tables under the usual names, inserts
    /// are synchronous distributed inserts, queries read the `Distributed` tables.
    #[arg(long, value_name = "NAME")]
    clickhouse_cluster: Option<String>,
    /// Print the DDL that creates the schema (for --clickhouse-cluster when given, for the
    /// server version of --clickhouse-version) and exit, without connecting.
    #[arg(long)]
    print_schema: bool,
    /// The ClickHouse version --print-schema renders for (e.g. 18.16 or 24.8).
    #[arg(
        long,
        value_name = "X.Y",
        default_value = "18.16",
        requires = "print_schema"
    )]
    clickhouse_version: String,
    /// ClickHouse user.
    #[arg(long, env = "INFERSCOPE_CLICKHOUSE_USER")]
    clickhouse_user: Option<String>,
    /// ClickHouse password.
    #[arg(long, env = "INFERSCOPE_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    clickhouse_password: Option<String>,
    /// Bearer token node-probes must present (prefer --token-file or the environment: a command
    /// line is readable by every local user).
    #[arg(long, env = "INFERSCOPE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the ingest token (first line).
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Per-node ingest tokens: a file of `NODE TOKEN` lines (`#` comments). A node's token lets
    /// it send batches for that node name only.
    #[arg(long, value_name = "FILE")]
    node_tokens_file: Option<PathBuf>,
    /// Read-only token for the query API, UI and /metrics (`Authorization: Bearer`, or a browser
    /// login at /login).
    #[arg(long, env = "INFERSCOPE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// File holding the API token (first line).
    #[arg(long, value_name = "FILE", conflicts_with = "api_token")]
    api_token_file: Option<PathBuf>,
    /// A host name the HTTP side answers to (repeatable), besides IP addresses and localhost:
    /// any other `Host` is refused (DNS rebinding guard).
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// Listen beyond loopback without tokens (refused otherwise).
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Query-API calls at once; more are answered 429 at once (ingest has its own connection
    /// settings and a higher ClickHouse priority).
    #[arg(long, default_value_t = 8)]
    max_queries: usize,
    /// TLS certificate (PEM) for the gRPC port; needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Days to keep data (where the ClickHouse version supports TTL; 0 keeps everything).
    #[arg(long, default_value_t = 30)]
    retention_days: u32,
    /// Commit to ClickHouse at least this often (ms).
    #[arg(long, default_value_t = 500)]
    flush_ms: u64,
    /// Commit when this many requests are pending.
    #[arg(long, default_value_t = 50_000)]
    flush_rows: u64,
    /// Largest gRPC message accepted, MiB (after decompression; node-probe's batches stay under 8).
    #[arg(long, default_value_t = 16)]
    max_message_mib: usize,
    /// Largest estimated decoded size of one batch, MiB (checked before decoding).
    #[arg(long, default_value_t = 32)]
    max_decoded_mib: usize,
    /// Ingest streams open at once (one per node-probe); beyond, RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 64)]
    max_streams: usize,
    #[command(flatten)]
    otlp: inferscope_aggregator::otlp::OtlpArgs,
}

/// A secret from its flag/environment value or its file (first line, trimmed); exits with a
/// clear line when the file cannot be read or is empty.
fn secret(value: Option<String>, file: Option<&std::path::Path>) -> Option<String> {
    let Some(f) = file else {
        return value.filter(|v| !v.is_empty());
    };
    match std::fs::read_to_string(f) {
        Ok(s) if !s.trim().is_empty() => {
            Some(s.lines().next().unwrap_or_default().trim().to_string())
        }
        Ok(_) => {
            eprintln!("aggregator: error: {} is empty", f.display());
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("aggregator: error: cannot read {}: {e}", f.display());
            std::process::exit(2);
        }
    }
}

/// `NODE TOKEN` lines of a per-node token file.
fn node_tokens(path: &std::path::Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some(node), Some(token), None) => out.push((token.to_string(), node.to_string())),
            _ => return Err(format!("{}:{}: want `NODE TOKEN`", path.display(), i + 1)),
        }
    }
    if out.is_empty() {
        return Err(format!("{} lists no node", path.display()));
    }
    Ok(out)
}

/// `--print-schema`: every statement, `;`-terminated, in the order the aggregator runs them.
fn print_schema(cli: &Cli) {
    use inferscope_aggregator::store::schema::{
        full_schema, valid_identifier, ChVersion, SchemaOptions,
    };
    let Some(version) = ChVersion::parse(&cli.clickhouse_version) else {
        eprintln!("aggregator: error: --clickhouse-version wants X.Y, e.g. 18.16");
        std::process::exit(2);
    };
    for name in std::iter::once(&cli.database).chain(cli.clickhouse_cluster.as_ref()) {
        if !valid_identifier(name) {
            eprintln!("aggregator: error: invalid name {name:?}: use letters, digits and _");
            std::process::exit(2);
        }
    }
    let o = SchemaOptions {
        database: cli.database.clone(),
        version,
        retention_days: cli.retention_days,
        cluster: cli.clickhouse_cluster.clone(),
    };
    for s in full_schema(&o) {
        println!("{s};\n");
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let argv =
        match inferscope_config::argv_with_config(&Cli::command(), std::env::args().collect()) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("aggregator: error: {e}");
                std::process::exit(2);
            }
        };
    let cli = Cli::parse_from(argv);
    if cli.print_schema {
        print_schema(&cli);
        return;
    }
    let otlp = cli.otlp.config();
    let cfg = ServerConfig {
        grpc_listen: cli.grpc_listen,
        http_listen: cli.http_listen,
        store: StoreConfig {
            url: cli.clickhouse_url,
            database: cli.database,
            user: cli.clickhouse_user,
            password: cli.clickhouse_password,
            retention_days: cli.retention_days,
            cluster: cli.clickhouse_cluster,
        },
        token: secret(cli.token, cli.token_file.as_deref()),
        node_tokens: match cli.node_tokens_file.as_deref().map(node_tokens) {
            None => Vec::new(),
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                eprintln!("aggregator: error: {e}");
                std::process::exit(2);
            }
        },
        api_token: secret(cli.api_token, cli.api_token_file.as_deref()),
        allowed_hosts: cli.allowed_hosts,
        allow_unauthenticated: cli.allow_unauthenticated,
        max_queries: cli.max_queries,
        tls: cli.tls_cert.zip(cli.tls_key),
        writer: WriterConfig {
            max_rows: cli.flush_rows.max(1),
            max_bytes: 32 << 20,
            period: Duration::from_millis(cli.flush_ms.max(10)),
        },
        queue: 1024,
        max_message_bytes: cli.max_message_mib.clamp(1, 1024) << 20,
        max_decoded_bytes: cli.max_decoded_mib.clamp(1, 4096) << 20,
        max_streams: cli.max_streams,
        max_streams_per_connection: 8,
        queue_bytes: 256 << 20,
        otlp,
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    if let Err(e) = serve(cfg, shutdown).await {
        eprintln!("aggregator: error: {e:#}");
        std::process::exit(1);
    }
}
