//! `node-probe` binary: command-line parsing and wiring only; the work is in the library.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser, ValueEnum};
use inferscope_common::{DEFAULT_PAYLOAD_CAP, MAX_PAYLOAD};
use node_probe::export::otlp::OtlpExportConfig;
use node_probe::export::{
    default_spool_dir, hostname, Compression, ExportConfig, DEFAULT_SPOOL_DIR,
};
use node_probe::kernel::btf::VMLINUX_BTF;
use node_probe::probe::{ProbeOptions, SyscallHook};
use node_probe::run::{run, PrintFormat, RunConfig};
use node_probe::targets::{Selector, UidRule};

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportCompression {
    Zstd,
    Gzip,
    None,
}

/// inferscope node probe: traces the socket traffic of inference processes with eBPF, without
/// touching them.
#[derive(Parser)]
#[command(version, about, args_override_self = true)]
struct Cli {
    /// Read options from this JSON file (keys: the long options; flags given here override it,
    /// repeatable ones add to it). See node-probe's `config` module docs.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Trace this process (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Trace processes whose command line matches this regular expression (repeatable), including
    /// ones started later.
    #[arg(long = "cmdline", value_name = "REGEX")]
    patterns: Vec<String>,
    /// Trace processes whose cgroup path matches this regular expression (repeatable),
    /// including ones started later, whoever runs them: a pod or container
    /// (`pod<UID>`, the container id) as the runtime names it, e.g. `^/kubepods.*pod1234abcd`.
    /// Anchor it at the runtime's slice: paths under a systemd user manager (`user@UID.service`,
    /// where users can create cgroups) never match.
    #[arg(long = "cgroup", value_name = "REGEX")]
    cgroups: Vec<String>,
    /// `--cmdline` selects processes of this user id too (repeatable; default: root's only, so
    /// that a local user cannot have their process traced). `--pid` is not restricted.
    #[arg(long = "cmdline-uid", value_name = "UID")]
    cmdline_uids: Vec<u32>,
    /// `--cmdline` selects any user's processes.
    #[arg(long, conflicts_with = "cmdline_uids")]
    cmdline_any_uid: bool,
    /// Do not trace descendants of targets.
    #[arg(long)]
    no_children: bool,
    /// Print every event to stdout.
    #[arg(long)]
    print_events: bool,
    /// Keep request targets' query strings as sent (by default only their keys are kept:
    /// values such as `?api-key=…` are credentials).
    #[arg(long)]
    keep_query_strings: bool,
    /// Print every finished request as one JSON object per line (see docs/request-format.md).
    #[arg(long)]
    requests: bool,
    /// A server port of the targets (repeatable); listening ports are also discovered.
    #[arg(long = "port", value_name = "PORT")]
    ports: Vec<u16>,
    /// Close requests not finished after this many seconds (marked as timeouts).
    #[arg(long, default_value_t = 300)]
    request_timeout_s: u64,
    /// Connections followed at once (idle ones are evicted first beyond it).
    #[arg(long, default_value_t = 32768)]
    max_connections: usize,
    /// Output format of --print-events.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Include captured payload bytes in --print-events (they may contain prompt text).
    #[arg(long)]
    print_payload: bool,
    /// Bytes of payload captured per socket syscall.
    #[arg(long, default_value_t = DEFAULT_PAYLOAD_CAP, value_parser = clap::value_parser!(u32).range(0..=MAX_PAYLOAD as i64))]
    payload_cap: u32,
    /// Serve node-probe's own metrics (Prometheus text: events, kernel losses, decode errors,
    /// tracker and exporter counters) on GET /metrics at this address, e.g. 127.0.0.1:9465;
    /// GET /healthz there answers 200 while the event loop runs (503 once it stalls 10 s).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// How the socket syscalls are hooked: `tracepoint` (a classic syscalls:* tracepoint pair
    /// per socket syscall; the default, cheapest for the rest of the host) or `raw` (one raw
    /// sys_enter/sys_exit pair that dispatches on the syscall number: ~10 % cheaper per traced
    /// socket syscall, but every other syscall on the host pays more; see BENCHMARKS.md).
    #[arg(long, value_enum, default_value = "tracepoint")]
    syscall_hook: SyscallHook,
    /// Ring buffer size in MiB (power of two).
    #[arg(long, default_value_t = 8)]
    ring_mib: u32,
    /// Ring buffer poll interval in milliseconds (events carry kernel timestamps, so a longer
    /// interval delays delivery, not accuracy; the loop does not sleep while the ring is busy).
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    /// How often /proc is rescanned to repair the target set (seconds). Targets' maps (for
    /// libraries loaded later) are read at this interval at first, then less often while they
    /// do not change (doubling up to 30 s; again at once after an exec or fork).
    #[arg(long, default_value_t = 5.0)]
    rescan_s: f64,
    /// How long a library no target maps any more keeps its uprobes (seconds): a forked child
    /// maps its parent's libraries until it execs, and a restarting engine maps them again.
    #[arg(long, default_value_t = 30.0)]
    uprobe_linger_s: f64,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Kernel BTF file.
    #[arg(long, default_value = VMLINUX_BTF)]
    btf: PathBuf,
    /// The host's /proc (node-probe in a pod with the host's /proc mounted, e.g. /host/proc).
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
    /// Ship finished requests to this aggregator (gRPC), e.g. http://127.0.0.1:7070 (https://
    /// needs --export-tls-ca). Several (repeated, or comma-separated): replicas behind one
    /// ClickHouse, used one at a time, the next after a failure; a batch acknowledged by any of
    /// them is done. A name resolving to several addresses is tried address by address.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    export: Vec<String>,
    /// This node's name in exported data (default: the host name).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// Bearer token for the aggregator (prefer --token-file or the environment: a command line is
    /// readable by every local user).
    #[arg(long, env = "INFERSCOPE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the aggregator token (first line).
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Send the token over plain http:// to an aggregator that is not on this host.
    #[arg(long)]
    allow_plaintext_token: bool,
    /// PEM CA certificate to trust for an https:// aggregator.
    #[arg(long, value_name = "PATH")]
    export_tls_ca: Option<PathBuf>,
    /// Compression of exported batches.
    #[arg(long, value_enum, default_value = "zstd")]
    export_compression: ExportCompression,
    /// A batch closes at this many requests...
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    batch_max_requests: u32,
    /// ...or this many milliseconds after its first request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    batch_max_ms: u64,
    /// Where unsent batches wait (default: /var/lib/inferscope/spool, else
    /// $HOME/.cache/inferscope/spool).
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<PathBuf>,
    /// Spool size cap in MiB (the oldest batches are evicted beyond it).
    #[arg(long, default_value_t = 256)]
    spool_max_mib: u64,
    /// Do not write each batch to the spool before sending it. By default every batch is on
    /// disk until acknowledged, so a probe killed with SIGKILL loses only its open batch.
    #[arg(long)]
    no_spool_write_ahead: bool,
    /// At shutdown, keep sending for up to this many seconds, then spool what is left.
    #[arg(long, default_value_t = 5.0)]
    export_drain_s: f64,
    /// A run tag stored with every exported request, e.g. `run=ci-1234` (repeatable, at most
    /// 16): select a run with `inferscope … --tag run=ci-1234`.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    /// OTLP export of finished requests straight from this node (with or without --export):
    /// batched as for the aggregator (--batch-max-requests, --batch-max-ms), at most once.
    #[command(flatten)]
    otlp: inferscope_otlp::OtlpArgs,
    /// Label each request with the value of this request header (e.g. `x-tenant-id`), to
    /// filter and group by tenant. Off by default: a tenant or user id may be personal data.
    #[arg(long, value_name = "HEADER", conflicts_with = "tenant_field")]
    tenant_header: Option<String>,
    /// Label each request with this top-level string field of its JSON body (e.g. OpenAI's
    /// `user`), looked for in the body's first 4 KiB. Off by default (personal data).
    #[arg(long, value_name = "FIELD")]
    tenant_field: Option<String>,
    /// Distinct tenant labels kept; later new ones are stored as `_other` (counted).
    #[arg(long, default_value_t = 256)]
    tenant_max_values: usize,
    /// Tests only: converted times are off by this many ns (a host whose clock is wrong).
    #[arg(long, hide = true, allow_negative_numbers = true, default_value_t = 0)]
    test_clock_offset_ns: i64,
    /// Tests only: and drift by this many parts per billion from start.
    #[arg(long, hide = true, allow_negative_numbers = true, default_value_t = 0)]
    test_clock_drift_ppb: i64,
    /// Do not follow the targets' outbound HTTP calls (a gateway's upstream calls) as hops.
    #[arg(long)]
    no_client_hops: bool,
    /// How an outbound call is linked to the inbound request it serves, tried in this order:
    /// `header` (same x-request-id / traceparent), `response_id` (the upstream response id
    /// relayed), `body` (same request-body digest), `timing` (the only call in the request's
    /// window); `none` links nothing. An unlinked call stays a hop of its own.
    #[arg(
        long,
        value_name = "METHODS",
        default_value = "header,response_id,body,timing",
        value_parser = node_probe::requests::hops::LinkMethods::parse
    )]
    hop_links: node_probe::requests::hops::LinkMethods,
    /// Sample every GPU through NVML this often, in milliseconds (0: never). Without NVML (no
    /// driver, a CPU node) one line says so and everything else works.
    #[arg(long, default_value_t = 1000)]
    nvml_ms: u64,
    /// The NVML library to load (default: `libnvidia-ml.so.1` from the loader's path).
    #[arg(long, value_name = "PATH")]
    nvml_lib: Option<std::path::PathBuf>,
}

/// The tenant extraction of `--tenant-header`/`--tenant-field` (names are kept for the
/// process's lifetime).
fn tenant(cli: &Cli) -> anyhow::Result<Option<node_probe::requests::tenant::TenantConfig>> {
    use node_probe::requests::tenant::{TenantConfig, TenantFrom};
    let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let from = match (cli.tenant_header.as_deref(), cli.tenant_field.as_deref()) {
        (Some(h), _) if httparse_token(h) => TenantFrom::Header(leak(h)),
        (Some(h), _) => anyhow::bail!("--tenant-header {h:?} is not a header name"),
        (None, Some(f)) if !f.is_empty() && f.len() <= 64 && !f.contains(['"', '\\']) => {
            TenantFrom::BodyField(leak(f).as_bytes())
        }
        (None, Some(f)) => {
            anyhow::bail!("--tenant-field {f:?}: want a JSON key of 1-64 characters")
        }
        (None, None) => return Ok(None),
    };
    let mut c = TenantConfig::new(from);
    c.max_values = cli.tenant_max_values.clamp(1, 100_000);
    Ok(Some(c))
}

/// An HTTP header name (RFC 9110 token).
fn httparse_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = real_main() {
        eprintln!("node-probe: error: {e:#}");
        std::process::exit(1);
    }
}

/// argv with the `--config FILE` options placed before the command line's own.
fn argv_with_config() -> anyhow::Result<Vec<String>> {
    Ok(inferscope_config::argv_with_config(
        &Cli::command(),
        std::env::args().collect(),
    )?)
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(argv_with_config()?);
    let uids = if cli.cmdline_any_uid {
        UidRule::Any
    } else {
        UidRule::Only(
            std::iter::once(0)
                .chain(cli.cmdline_uids.iter().copied())
                .collect(),
        )
    };
    let selector = Selector::new(
        &cli.proc_root,
        &cli.pids,
        (&cli.patterns, &cli.cgroups),
        !cli.no_children,
    )?
    .with_uids(uids);
    let ring_bytes = cli
        .ring_mib
        .checked_mul(1 << 20)
        .filter(|b| b.is_power_of_two())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--ring-mib {} must be a power of two up to 2048",
                cli.ring_mib
            )
        })?;
    let tenant = tenant(&cli)?;
    let duration = match cli.duration_s {
        Some(s) if !(s.is_finite() && s > 0.0) => anyhow::bail!("--duration-s must be positive"),
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    let export = if cli.export.is_empty() {
        None
    } else {
        Some(export_config(&cli, &cli.export)?)
    };
    let otlp = otlp_config(&cli)?;
    let cfg = RunConfig {
        selector,
        probe: ProbeOptions {
            payload_cap: cli.payload_cap,
            ring_bytes,
            exec_events: false,
            exit_group_dead_off: 0,
            syscall_hook: cli.syscall_hook,
        },
        btf_path: cli.btf,
        print: cli.print_events.then_some(match cli.format {
            Format::Text => PrintFormat::Text,
            Format::Json => PrintFormat::Json,
        }),
        print_payload: cli.print_payload,
        poll_interval: Duration::from_millis(cli.poll_ms.max(1)),
        rescan_interval: Duration::from_secs_f64(cli.rescan_s.clamp(0.1, 3600.0)),
        uprobe_linger: Duration::from_secs_f64(cli.uprobe_linger_s.clamp(0.0, 86_400.0)),
        duration,
        print_requests: cli.requests,
        test_clock: (cli.test_clock_offset_ns != 0 || cli.test_clock_drift_ppb != 0)
            .then_some((cli.test_clock_offset_ns, cli.test_clock_drift_ppb)),
        ports: cli.ports,
        tracker: node_probe::requests::TrackerConfig {
            timeout_ns: cli.request_timeout_s.max(1).saturating_mul(1_000_000_000),
            max_conns: cli.max_connections.max(16),
            keep_query_strings: cli.keep_query_strings,
            tenant,
            client_hops: (!cli.no_client_hops).then_some(cli.hop_links),
        },
        export,
        otlp,
        metrics_listen: cli.metrics_listen,
        proc_root: cli.proc_root.clone(),
        nvml: (cli.nvml_ms > 0).then(|| node_probe::run::NvmlConfig {
            period: Duration::from_millis(cli.nvml_ms.max(100)),
            lib: cli.nvml_lib.clone(),
        }),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let stats = run(cfg, stop)?;
    let export = stats
        .export
        .as_ref()
        .map_or_else(|| "off".to_owned(), ToString::to_string);
    tracing::info!(
        events = ?stats.events,
        decode_errors = ?stats.decode_errors,
        kernel_lost = ?stats.kernel_lost,
        kernel_drops = ?stats.kernel_drops,
        requests = stats.tracker.requests,
        tracker = ?stats.tracker,
        export = %export,
        otlp = ?stats.otlp,
        "node-probe stopped"
    );
    Ok(())
}

fn export_config(cli: &Cli, urls: &[String]) -> anyhow::Result<ExportConfig> {
    if !(cli.export_drain_s.is_finite() && cli.export_drain_s >= 0.0) {
        anyhow::bail!("--export-drain-s must be zero or positive");
    }
    let spool_dir = match &cli.spool_dir {
        Some(d) => Some(d.clone()),
        None => {
            let d = default_spool_dir();
            if d.is_none() {
                tracing::warn!(
                    "no writable spool directory ({DEFAULT_SPOOL_DIR} or $HOME/.cache/inferscope/spool): \
                     batches that cannot be sent are dropped"
                );
            }
            d
        }
    };
    let mut cfg = ExportConfig::new(&urls[0], cli.node_name.clone().unwrap_or_else(hostname));
    cfg.urls = urls.to_vec();
    cfg.token = match &cli.token_file {
        Some(f) => {
            let s = std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("cannot read --token-file {}: {e}", f.display()))?;
            let t = s.lines().next().unwrap_or_default().trim().to_string();
            anyhow::ensure!(!t.is_empty(), "--token-file {} is empty", f.display());
            Some(t)
        }
        None => cli.token.clone().filter(|t| !t.is_empty()),
    };
    cfg.allow_plaintext_token = cli.allow_plaintext_token;
    cfg.tls_ca = cli.export_tls_ca.clone();
    cfg.compression = match cli.export_compression {
        ExportCompression::Zstd => Compression::Zstd,
        ExportCompression::Gzip => Compression::Gzip,
        ExportCompression::None => Compression::None,
    };
    cfg.batch.max_requests = cli.batch_max_requests as usize;
    cfg.batch.max_age = Duration::from_millis(cli.batch_max_ms);
    cfg.spool_dir = spool_dir;
    cfg.spool_max_bytes = cli.spool_max_mib.saturating_mul(1 << 20);
    cfg.write_ahead = !cli.no_spool_write_ahead;
    cfg.drain_timeout = Duration::from_secs_f64(cli.export_drain_s);
    cfg.tags = tags(cli)?;
    cfg.validate()?;
    Ok(cfg)
}

fn tags(cli: &Cli) -> anyhow::Result<Vec<(String, String)>> {
    Ok(cli
        .tags
        .iter()
        .map(|t| node_probe::export::parse_tag(t))
        .collect::<Result<_, _>>()?)
}

/// The OTLP export of `--otlp-*` (none without `--otlp-endpoint`).
fn otlp_config(cli: &Cli) -> anyhow::Result<Option<OtlpExportConfig>> {
    let Some(otlp) = cli.otlp.config() else {
        return Ok(None);
    };
    let batch = node_probe::export::BatchLimits {
        max_requests: cli.batch_max_requests as usize,
        max_age: Duration::from_millis(cli.batch_max_ms),
        ..Default::default()
    };
    Ok(Some(OtlpExportConfig {
        otlp,
        node_name: cli.node_name.clone().unwrap_or_else(hostname),
        tags: tags(cli)?,
        batch,
        queue_capacity: 65_536,
    }))
}
