//! `inferscope`: the command-line client of the aggregator's query API.
//!
//! ```text
//! inferscope breakdown --since 15m --model llama-8b
//! inferscope requests --sort ttft --limit 20
//! inferscope groups --by tenant --since 1h
//! inferscope trace 4bf92f3577b34da6a3ce929d0e0e4736
//! inferscope --output json breakdown | jq .slow_vs_median.largest_difference
//! inferscope gate --baseline-file main.json --candidate-filter tag=run=pr-17
//! ```
//!
//! Tables for people (milliseconds, aligned columns), `--output json` (the API's response,
//! unchanged) for scripts. Exit status: 0 on success, 1 on any error, 2 on a usage error;
//! `gate`: 0 pass, 1 regression, 2 no verdict (not enough data, usage error, any error).
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};

mod gate;
mod http;
mod print;
mod table;

use http::Api;
use print::{
    print_breakdown, print_explanation, print_filters, print_groups, print_requests, print_trace,
};

/// Query the inferscope aggregator: latency breakdowns, slow requests, traces.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// Aggregator HTTP API.
    #[arg(
        long,
        global = true,
        env = "INFERSCOPE_API",
        default_value = "http://127.0.0.1:7071"
    )]
    api: String,
    /// The aggregator's read-only API token, when it has one (sent as `Authorization: Bearer`).
    #[arg(
        long,
        global = true,
        env = "INFERSCOPE_API_TOKEN",
        hide_env_values = true
    )]
    api_token: Option<String>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Give up on a call after this many seconds.
    #[arg(long, global = true, default_value_t = 60)]
    timeout_s: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Aligned tables, durations in ms.
    Table,
    /// The API's JSON response.
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Latency quantiles per phase, and what is different about the slowest requests.
    Breakdown {
        #[command(flatten)]
        filters: FilterArgs,
        /// Quantile levels, comma-separated, each in (0, 1).
        #[arg(long, default_value = "0.5,0.9,0.99,0.999")]
        quantiles: String,
        /// Requests at or above this e2e quantile form the slow cohort.
        #[arg(long, default_value_t = 0.99)]
        slow_quantile: f64,
    },
    /// Requests, slowest first.
    Requests {
        #[command(flatten)]
        filters: FilterArgs,
        /// Only requests with e2e at least this (ms).
        #[arg(long)]
        min_e2e_ms: Option<f64>,
        /// Sort key.
        #[arg(long, value_enum, default_value_t = Sort::E2e)]
        sort: Sort,
        /// Ascending order (default: descending).
        #[arg(long)]
        asc: bool,
        /// Rows per page (1..=1000).
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// Rows to skip.
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// One trace: its requests on every node, span tree, engine steps and batch neighbours.
    Trace {
        /// Trace id (32 hex digits).
        id: String,
        /// For traces without spans: search requests from this time (RFC 3339 or Unix s).
        #[arg(long)]
        from: Option<String>,
        /// ... up to this time.
        #[arg(long)]
        to: Option<String>,
    },
    /// p50/p90/p99 of e2e, ttft and tpot per tenant (or model, node, engine, status, outcome),
    /// busiest first.
    Groups {
        #[command(flatten)]
        filters: FilterArgs,
        /// The dimension.
        #[arg(long, default_value = "tenant", value_parser = inferscope_api::groups::GROUP_BY)]
        by: String,
        /// Groups shown at most (1..=1000).
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Models, nodes, engines, statuses, outcomes, run tags and tenants seen in a window.
    Filters {
        #[command(flatten)]
        window: WindowArgs,
    },
    /// Why was it slow: one request against the typical one around it, or (`--p99`) the
    /// window's slow cohort against its median cohort, in sentences with their figures.
    Explain {
        /// Trace id (32 hex digits); leave out with --p99.
        #[arg(required_unless_present = "p99", conflicts_with = "p99")]
        id: Option<String>,
        /// Explain the slow cohort of a window (the filters below) instead of one request.
        #[arg(long)]
        p99: bool,
        /// With --p99: the cohort's e2e quantile.
        #[arg(long, default_value_t = 0.99)]
        slow_quantile: f64,
        #[command(flatten)]
        filters: FilterArgs,
    },
    /// CI regression gate: is the candidate run slower than the baseline? Markdown report
    /// (`--output json`: JSON); exit 0 pass, 1 regression, 2 no verdict.
    Gate(Box<gate::GateArgs>),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Sort {
    E2e,
    Ttft,
    Start,
    Queue,
    Prefill,
    Decode,
}

impl Sort {
    fn key(self) -> &'static str {
        match self {
            Sort::E2e => "e2e",
            Sort::Ttft => "ttft",
            Sort::Start => "start",
            Sort::Queue => "queue",
            Sort::Prefill => "prefill",
            Sort::Decode => "decode",
        }
    }
}

#[derive(Args)]
struct WindowArgs {
    /// Window start: RFC 3339 (2024-05-01T12:00:00Z) or Unix seconds. Default: an hour ago.
    #[arg(long, conflicts_with = "since")]
    from: Option<String>,
    /// Window end (exclusive). Default: now.
    #[arg(long)]
    to: Option<String>,
    /// Window start relative to now: 90s, 15m, 6h, 7d.
    #[arg(long)]
    since: Option<String>,
}

#[derive(Args)]
struct FilterArgs {
    #[command(flatten)]
    window: WindowArgs,
    /// Model (exact).
    #[arg(long)]
    model: Option<String>,
    /// Node (exact).
    #[arg(long)]
    node: Option<String>,
    /// Engine kind (exact).
    #[arg(long)]
    engine: Option<String>,
    /// HTTP status (503) or class (5xx).
    #[arg(long)]
    status: Option<String>,
    /// Outcome: complete, client_abort, server_close, timeout, lost.
    #[arg(long)]
    outcome: Option<String>,
    /// Run tag `key=value` (node-probe `--tag`).
    #[arg(long)]
    tag: Option<String>,
    /// Tenant label (exact; node-probe `--tenant-header`/`--tenant-field`).
    #[arg(long)]
    tenant: Option<String>,
}

/// Parses `90s`, `15m`, `6h`, `7d` into seconds.
fn parse_since(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("--since {s:?}: expected a number and a unit, e.g. 15m"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("--since {s:?}: unit must be s, m, h or d"),
    };
    Ok(n * mult)
}

impl WindowArgs {
    fn push(&self, q: &mut Vec<(&'static str, String)>) -> anyhow::Result<()> {
        let from = match (&self.from, &self.since) {
            (Some(f), _) => Some(f.clone()),
            (None, Some(s)) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .context("system clock before 1970")?
                    .as_secs();
                Some(now.saturating_sub(parse_since(s)?).to_string())
            }
            (None, None) => None,
        };
        q.extend(from.map(|v| ("from", v)));
        q.extend(self.to.clone().map(|v| ("to", v)));
        Ok(())
    }
}

impl FilterArgs {
    fn push(&self, q: &mut Vec<(&'static str, String)>) -> anyhow::Result<()> {
        self.window.push(q)?;
        for (k, v) in [
            ("model", &self.model),
            ("node", &self.node),
            ("engine", &self.engine),
            ("status", &self.status),
            ("outcome", &self.outcome),
            ("tag", &self.tag),
            ("tenant", &self.tenant),
        ] {
            q.extend(v.clone().map(|v| (k, v)));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        [
            ("model", &self.model),
            ("node", &self.node),
            ("engine", &self.engine),
            ("status", &self.status),
            ("outcome", &self.outcome),
            ("tag", &self.tag),
            ("tenant", &self.tenant),
        ]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

// ---------------------------------------------------------------------------------------------

fn decode<T: serde::de::DeserializeOwned>(body: &str, what: &str) -> anyhow::Result<T> {
    serde_json::from_str(body).with_context(|| {
        format!("unexpected {what} response (is the aggregator the same version as this CLI?)")
    })
}

/// Prints the API's response as received (one line; pipe it through `jq` to read it).
fn print_json(body: &str) -> anyhow::Result<()> {
    serde_json::from_str::<serde::de::IgnoredAny>(body)
        .context("the aggregator's response is not JSON")?;
    println!("{}", body.trim_end());
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let api = Api::new(
        &cli.api,
        Duration::from_secs(cli.timeout_s.max(1)),
        cli.api_token.clone(),
    );
    let json = cli.output == Output::Json;
    match cli.cmd {
        Cmd::Breakdown {
            filters,
            quantiles,
            slow_quantile,
        } => {
            let mut q = Vec::new();
            filters.push(&mut q)?;
            q.push(("quantiles", quantiles));
            q.push(("slow_quantile", slow_quantile.to_string()));
            let body = api.get("/api/v1/breakdown", &q)?;
            if json {
                return print_json(&body).map(|()| ExitCode::SUCCESS);
            }
            print_breakdown(&decode(&body, "breakdown")?, &filters.describe());
        }
        Cmd::Requests {
            filters,
            min_e2e_ms,
            sort,
            asc,
            limit,
            offset,
        } => {
            let mut q = Vec::new();
            filters.push(&mut q)?;
            q.extend(min_e2e_ms.map(|v| ("min_e2e_ms", v.to_string())));
            q.push(("sort", sort.key().to_string()));
            q.push(("order", if asc { "asc" } else { "desc" }.to_string()));
            q.push(("limit", limit.to_string()));
            q.push(("offset", offset.to_string()));
            let body = api.get("/api/v1/requests", &q)?;
            if json {
                return print_json(&body).map(|()| ExitCode::SUCCESS);
            }
            print_requests(&decode(&body, "requests")?, &filters.describe());
        }
        Cmd::Trace { id, from, to } => {
            let id = id.trim();
            if id.is_empty() || id.contains('/') || id.contains('?') || id.contains('#') {
                bail!("{id:?} is not a trace id: expected 32 hex digits");
            }
            let mut q = Vec::new();
            q.extend(from.map(|v| ("from", v)));
            q.extend(to.map(|v| ("to", v)));
            let body = api.get(&format!("/api/v1/traces/{id}"), &q)?;
            if json {
                return print_json(&body).map(|()| ExitCode::SUCCESS);
            }
            print_trace(&decode(&body, "trace")?);
        }
        Cmd::Groups { filters, by, limit } => {
            let mut q = Vec::new();
            filters.push(&mut q)?;
            q.push(("by", by));
            q.push(("quantiles", "0.5,0.9,0.99".to_string()));
            q.push(("limit", limit.to_string()));
            let body = api.get("/api/v1/groups", &q)?;
            if json {
                return print_json(&body).map(|()| ExitCode::SUCCESS);
            }
            print_groups(&decode(&body, "groups")?, &filters.describe());
        }
        Cmd::Filters { window } => {
            let mut q = Vec::new();
            window.push(&mut q)?;
            let body = api.get("/api/v1/filters", &q)?;
            if json {
                return print_json(&body).map(|()| ExitCode::SUCCESS);
            }
            print_filters(&decode(&body, "filters")?);
        }
        Cmd::Explain {
            id,
            p99,
            slow_quantile,
            filters,
        } => {
            let (path, mut q) = match id {
                Some(id) if !p99 => {
                    let id = id.trim().to_string();
                    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                        bail!("{id:?} is not a trace id: expected 32 hex digits");
                    }
                    (format!("/api/v1/explain/{id}"), Vec::new())
                }
                _ => {
                    let mut q = Vec::new();
                    filters.push(&mut q)?;
                    q.push(("slow_quantile", slow_quantile.to_string()));
                    ("/api/v1/explain".to_string(), q)
                }
            };
            if path != "/api/v1/explain" {
                filters.window.push(&mut q)?;
            }
            let body = api.get(&path, &q)?;
            if json {
                return print_json(&body).map(|()| ExitCode::SUCCESS);
            }
            let v: serde_json::Value = decode(&body, "explain")?;
            print_explanation(&v);
        }
        Cmd::Gate(a) => return run_gate(&a, &api, json),
    }
    Ok(ExitCode::SUCCESS)
}

/// `inferscope gate`: any error is "no verdict" (2), never "regression" (1).
fn run_gate(a: &gate::GateArgs, api: &Api, json: bool) -> anyhow::Result<ExitCode> {
    let report = match gate::run(a, api) {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("inferscope: error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.markdown());
    }
    Ok(ExitCode::from(report.outcome.exit_code()))
}

fn main() -> ExitCode {
    // `inferscope … | head` ends quietly when the reader goes away, as command-line tools do
    // (Rust ignores SIGPIPE, so each print would fail and panic instead).
    // SAFETY: setting a signal's disposition to its default before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("inferscope: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since() {
        assert_eq!(parse_since("90s").unwrap(), 90);
        assert_eq!(parse_since("15m").unwrap(), 900);
        assert_eq!(parse_since("2h").unwrap(), 7200);
        assert_eq!(parse_since("7d").unwrap(), 604_800);
        assert!(parse_since("m").is_err());
        assert!(parse_since("5w").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
