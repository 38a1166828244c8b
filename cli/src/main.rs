//! `inferscope`: the command-line client of the aggregator's query API.
//!
//! ```text
//! inferscope breakdown --since 15m --model llama-8b
//! inferscope requests --sort ttft --limit 20
//! inferscope trace 4bf92f3577b34da6a3ce929d0e0e4736
//! inferscope --output json breakdown | jq .slow_vs_median.largest_difference
//! ```
//!
//! Tables for people (milliseconds, aligned columns), `--output json` (the API's response,
//! unchanged) for scripts. Exit status: 0 on success, 1 on any error, 2 on a usage error.
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use inferscope_api::breakdown::{level_name, Breakdown, Cohort, PhaseDiff, PhaseMean};
use inferscope_api::filters::FilterValues;
use inferscope_api::requests::{RequestList, RequestSummary};
use inferscope_api::trace::{SpanOut, StepOut, Trace};
use inferscope_api::SpanId;

/// Engine steps listed in a trace table; longer lists show the longest steps.
const MAX_STEP_ROWS: usize = 30;

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
    /// Models, nodes, engines, statuses and outcomes seen in a window.
    Filters {
        #[command(flatten)]
        window: WindowArgs,
    },
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
        ]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

struct Api {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Api {
    fn new(base: &str, timeout: Duration, token: Option<String>) -> Self {
        Self {
            token: token.filter(|t| !t.is_empty()),
            base: base.trim_end_matches('/').to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5).min(timeout))
                .timeout(timeout)
                .build(),
        }
    }

    /// GETs `path` and returns the body; errors say what to do.
    fn get(&self, path: &str, query: &[(&'static str, String)]) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url);
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        for (k, v) in query {
            req = req.query(k, v);
        }
        tracing::debug!(%url, ?query, "GET");
        let spinner = Spinner::start(format!("querying {path}"));
        let res = req.call();
        drop(spinner);
        match res {
            Ok(resp) => resp
                .into_string()
                .with_context(|| format!("reading the response of {url}")),
            Err(ureq::Error::Status(code, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                let msg = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| body.trim().chars().take(500).collect());
                let hint = match code {
                    503 => "\n(the aggregator cannot query ClickHouse right now: is ClickHouse running? `scripts/clickhouse.sh start`)",
                    404 if !path.starts_with("/api/v1/traces/") => {
                        "\n(is --api pointing at an inferscope aggregator?)"
                    }
                    _ => "",
                };
                bail!("{msg} (HTTP {code}){hint}")
            }
            Err(ureq::Error::Transport(t)) => {
                use ureq::ErrorKind as K;
                match t.kind() {
                    K::ConnectionFailed | K::Dns | K::Io | K::ProxyConnect => bail!(
                        "cannot reach the aggregator at {}: {t}\n\
                         Is it running? Start it with `aggregator --http-listen 127.0.0.1:7071` \
                         (it needs ClickHouse: `scripts/clickhouse.sh start`), or point --api \
                         (or INFERSCOPE_API) at the right address.",
                        self.base
                    ),
                    K::InvalidUrl | K::UnknownScheme => bail!(
                        "--api {:?} is not a usable URL ({t}); use http://HOST:PORT",
                        self.base
                    ),
                    _ => bail!("calling {url}: {t}"),
                }
            }
        }
    }
}

/// A progress line on stderr for calls that take over a second (only on a terminal).
struct Spinner {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    fn start(label: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::io::stderr().is_terminal().then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let frames = ['|', '/', '-', '\\'];
                let mut shown = false;
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if t0.elapsed() < Duration::from_secs(1) {
                        continue;
                    }
                    let mut e = std::io::stderr().lock();
                    let _ = write!(
                        e,
                        "\r{} {label} ({:.1} s)",
                        frames[i % frames.len()],
                        t0.elapsed().as_secs_f64()
                    );
                    let _ = e.flush();
                    shown = true;
                    i += 1;
                }
                if shown {
                    let _ = write!(std::io::stderr(), "\r\x1b[2K");
                }
            })
        });
        Self { stop, thread }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tables

/// Milliseconds with 2 decimals below 100 ms, 1 above.
fn ms(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn ms_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), ms)
}

fn pct(v: f64) -> String {
    format!("{:.1}", v * 100.0)
}

fn signed(s: String) -> String {
    if s.starts_with('-') {
        s
    } else {
        format!("+{s}")
    }
}

struct Table {
    head: Vec<&'static str>,
    /// Columns aligned left (text); the others are right-aligned (numbers).
    left: Vec<usize>,
    rows: Vec<Vec<String>>,
}

/// A string of the API as printed: control characters escaped (see `escape_controls`).
fn safe(s: &str) -> String {
    inferscope_api::escape_controls(s)
}

impl Table {
    fn new(head: &[&'static str], left: &[usize]) -> Self {
        Self {
            head: head.to_vec(),
            left: left.to_vec(),
            rows: Vec::new(),
        }
    }

    /// A row; every cell is [`safe`] (cells hold strings clients of the engine chose).
    fn row(&mut self, r: Vec<String>) {
        self.rows.push(r.into_iter().map(|c| safe(&c)).collect());
    }

    fn render(&self) -> String {
        let n = self.head.len();
        let mut w = vec![0; n];
        for r in std::iter::once(&self.head.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .chain(&self.rows)
        {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let head: Vec<String> = self.head.iter().map(|s| s.to_string()).collect();
        for r in std::iter::once(&head).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate().take(n) {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = w[i] - c.chars().count();
                if self.left.contains(&i) {
                    line.push_str(c);
                    if i + 1 < n {
                        line.push_str(&" ".repeat(pad));
                    }
                } else {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(c);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn print_breakdown(b: &Breakdown, filters: &str) {
    println!(
        "{} requests from {} to {}{}",
        b.count,
        b.window.from,
        b.window.to,
        if filters.is_empty() {
            String::new()
        } else {
            format!("  ({filters})")
        }
    );
    if b.count == 0 {
        println!("no requests in this window: widen it (--since 6h) or relax the filters");
        return;
    }
    println!();
    let mut t = Table::new(
        &[
            "quantile", "e2e", "ttft", "tpot", "frontend", "queue", "prefill", "decode", "delivery",
        ],
        &[0],
    );
    for q in &b.quantiles {
        t.row(vec![
            format!("p{}", level_name(q.q)),
            ms_opt(q.e2e_ms),
            ms_opt(q.ttft_ms),
            ms_opt(q.tpot_ms),
            ms_opt(q.frontend_ms),
            ms_opt(q.queue_ms),
            ms_opt(q.prefill_ms),
            ms_opt(q.decode_ms),
            ms_opt(q.delivery_ms),
        ]);
    }
    print!("{}", t.render());
    let s = &b.samples;
    println!(
        "(ms; known for: tpot {}, frontend {}, queue {}, prefill {}, decode {}, delivery {} of {} requests)",
        s.tpot,
        s.phases.frontend,
        s.phases.queue,
        s.phases.prefill,
        s.phases.decode,
        s.phases.delivery,
        b.count
    );
    let Some(c) = &b.slow_vs_median else {
        return;
    };
    println!();
    println!("What is different about the slow requests (mean ms per request, % of mean e2e):");
    println!("  slow:   {}, {} requests", c.slow.definition, c.slow.count);
    println!(
        "  median: {}, {} requests",
        c.median.definition, c.median.count
    );
    println!();
    let mut t = Table::new(
        &[
            "phase",
            "slow ms",
            "slow %",
            "median ms",
            "median %",
            "diff ms",
            "diff pts",
        ],
        &[0],
    );
    let row = |name: &str, a: &PhaseMean, m: &PhaseMean, d: &PhaseDiff| {
        vec![
            name.to_string(),
            ms(a.mean_ms),
            pct(a.share),
            ms(m.mean_ms),
            pct(m.share),
            signed(ms(d.mean_ms)),
            signed(format!("{:.1}", d.share * 100.0)),
        ]
    };
    for ((name, a), ((_, m), (_, d))) in c
        .slow
        .phases
        .iter()
        .zip(c.median.phases.iter().zip(c.diff.iter()))
    {
        t.row(row(name, a, m, d));
    }
    t.row(row(
        "unattributed",
        &c.slow.unattributed,
        &c.median.unattributed,
        &c.unattributed_diff,
    ));
    let e2e = |x: &Cohort| PhaseMean {
        mean_ms: x.mean_e2e_ms,
        share: 1.0,
        requests: x.count,
    };
    let mut last = row(
        "e2e",
        &e2e(&c.slow),
        &e2e(&c.median),
        &PhaseDiff {
            mean_ms: c.slow.mean_e2e_ms - c.median.mean_e2e_ms,
            share: 0.0,
        },
    );
    last[6] = String::new();
    t.row(last);
    print!("{}", t.render());
    if let Some(name) = &c.largest_difference {
        let d = c
            .diff
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| c.unattributed_diff.clone());
        println!(
            "\nlargest difference: {name} ({} ms per request, {} points of e2e)",
            signed(ms(d.mean_ms)),
            signed(format!("{:.1}", d.share * 100.0))
        );
    }
}

fn print_requests(l: &RequestList, filters: &str) {
    let mut t = Table::new(
        &[
            "start", "trace_id", "node", "model", "status", "outcome", "e2e", "ttft", "queue",
            "prefill", "decode",
        ],
        &[0, 1, 2, 3, 5],
    );
    for r in &l.requests {
        t.row(vec![
            r.start.clone(),
            r.trace_id.to_string(),
            r.node.clone(),
            r.model.clone(),
            r.status.to_string(),
            r.outcome.clone(),
            ms(r.e2e_ms),
            ms(r.ttft_ms),
            ms_opt(r.queue_ms),
            ms_opt(r.prefill_ms),
            ms_opt(r.decode_ms),
        ]);
    }
    if l.requests.is_empty() {
        println!(
            "no requests from {} to {}{} (of {} matching)",
            l.window.from,
            l.window.to,
            if filters.is_empty() {
                String::new()
            } else {
                format!(" with {filters}")
            },
            l.total
        );
        return;
    }
    print!("{}", t.render());
    println!(
        "\n{}..{} of {} (ms, sorted by {} {}){}",
        l.offset + 1,
        l.offset + l.requests.len() as u64,
        l.total,
        l.sort,
        l.order,
        l.next_offset
            .map(|n| format!("; next page: --offset {n}"))
            .unwrap_or_default()
    );
}

fn print_request_rows(rs: &[RequestSummary], steps: &[usize]) {
    let mut t = Table::new(
        &[
            "node", "engine", "model", "status", "outcome", "e2e", "ttft", "frontend", "queue",
            "prefill", "decode", "delivery", "steps",
        ],
        &[0, 1, 2, 4],
    );
    for (r, n) in rs.iter().zip(steps) {
        t.row(vec![
            r.node.clone(),
            r.engine.clone(),
            r.model.clone(),
            r.status.to_string(),
            r.outcome.clone(),
            ms(r.e2e_ms),
            ms(r.ttft_ms),
            ms_opt(r.frontend_ms),
            ms_opt(r.queue_ms),
            ms_opt(r.prefill_ms),
            ms_opt(r.decode_ms),
            ms_opt(r.delivery_ms),
            n.to_string(),
        ]);
    }
    print!("{}", t.render());
}

fn span_label(s: &SpanOut) -> String {
    let a = &s.attributes;
    let mut extra = Vec::new();
    for k in [
        "http.method",
        "http.target",
        "http.status_code",
        "gen_ai.request.model",
    ] {
        if let Some(v) = a.get(k) {
            extra.push(v.clone());
        }
    }
    if extra.is_empty() {
        s.name.clone()
    } else {
        format!("{} {}", s.name, extra.join(" "))
    }
}

/// The span tree, depth first; consecutive `engine.step` children are folded into one line.
fn print_spans(spans: &[SpanOut]) {
    let ids: HashMap<(&str, SpanId), usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| ((s.node.as_str(), s.span_id), i))
        .collect();
    let by_id: HashMap<SpanId, usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.span_id, i))
        .collect();
    let mut children: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        // Parent on the same node first, then anywhere (a caller on another node).
        let parent = s
            .parent_span_id
            .and_then(|p| ids.get(&(s.node.as_str(), p)).or_else(|| by_id.get(&p)))
            .filter(|&&p| p != i);
        match parent {
            Some(&p) => children.entry(p).or_default().push(i),
            None => roots.push(i),
        }
    }
    let mut t = Table::new(&["offset", "duration", "node", "span"], &[2, 3]);
    fn walk(
        i: usize,
        depth: usize,
        spans: &[SpanOut],
        children: &BTreeMap<usize, Vec<usize>>,
        t: &mut Table,
        seen: &mut Vec<bool>,
    ) {
        if std::mem::replace(&mut seen[i], true) {
            return;
        }
        let s = &spans[i];
        t.row(vec![
            ms(s.offset_ms),
            ms(s.duration_ms),
            s.node.clone(),
            format!("{}{}", "  ".repeat(depth), span_label(s)),
        ]);
        let kids = children.get(&i).map(Vec::as_slice).unwrap_or_default();
        let steps: Vec<usize> = kids
            .iter()
            .copied()
            .filter(|&j| spans[j].name == "engine.step")
            .collect();
        let fold = steps.len() > 3;
        let mut folded = false;
        for &k in kids {
            let c = &spans[k];
            if fold && c.name == "engine.step" {
                if !std::mem::replace(&mut folded, true) {
                    let total: f64 = steps.iter().map(|&j| spans[j].duration_ms).sum();
                    t.row(vec![
                        ms(c.offset_ms),
                        ms(total),
                        c.node.clone(),
                        format!(
                            "{}engine.step x{} (durations summed; see engine steps below)",
                            "  ".repeat(depth + 1),
                            steps.len()
                        ),
                    ]);
                }
                seen[k] = true;
                continue;
            }
            walk(k, depth + 1, spans, children, t, seen);
        }
    }
    let mut seen = vec![false; spans.len()];
    for r in roots {
        walk(r, 0, spans, &children, &mut t, &mut seen);
    }
    print!("{}", t.render());
}

fn print_trace(tr: &Trace) {
    println!("trace {} on {}", tr.trace_id, safe(&tr.nodes.join(", ")));
    if !tr.requests.is_empty() {
        println!("\nrequests (ms):");
        let rs: Vec<RequestSummary> = tr.requests.iter().map(|r| r.request.clone()).collect();
        let steps: Vec<usize> = tr.requests.iter().map(|r| r.step_ids.len()).collect();
        print_request_rows(&rs, &steps);
    }
    if !tr.spans.is_empty() {
        println!(
            "\nspans ({}{}; ms from the first span):",
            tr.spans.len(),
            if tr.spans_truncated {
                ", truncated"
            } else {
                ""
            }
        );
        print_spans(&tr.spans);
    }
    if !tr.steps.is_empty() {
        println!(
            "\nengine steps ({}{}; ms):",
            tr.steps.len(),
            if tr.steps_truncated {
                ", truncated"
            } else {
                ""
            }
        );
        let mut t = Table::new(
            &[
                "node", "step", "instance", "offset", "duration", "batch", "shared", "with",
            ],
            &[0, 2, 7],
        );
        let mut shown: Vec<&StepOut> = tr.steps.iter().collect();
        if shown.len() > MAX_STEP_ROWS {
            shown.sort_by(|a, b| {
                b.duration_ms
                    .unwrap_or(0.0)
                    .total_cmp(&a.duration_ms.unwrap_or(0.0))
            });
            shown.truncate(MAX_STEP_ROWS);
            shown.sort_by_key(|s| (s.node.clone(), s.step_id));
            println!(
                "(the {MAX_STEP_ROWS} longest of {} steps; --output json lists all)",
                tr.steps.len()
            );
        }
        for s in shown {
            let with = match s.shared_with.as_slice() {
                [] => String::new(),
                [one] => one.to_string(),
                [first, ..] => format!("{first} +{}", s.shared_with_count - 1),
            };
            t.row(vec![
                s.node.clone(),
                s.step_id.to_string(),
                s.engine_instance.clone().unwrap_or_else(|| "-".into()),
                ms_opt(s.offset_ms),
                ms_opt(s.duration_ms),
                s.batch_size.map_or("-".into(), |b| b.to_string()),
                s.shared_with_count.to_string(),
                with,
            ]);
        }
        print!("{}", t.render());
    }
    if !tr.batched_with.is_empty() {
        println!("\nbatched with ({} requests, ms):", tr.batched_with.len());
        let mut t = Table::new(
            &["trace_id", "model", "status", "e2e", "ttft", "shared steps"],
            &[0, 1],
        );
        for n in &tr.batched_with {
            t.row(vec![
                n.request.trace_id.to_string(),
                n.request.model.clone(),
                n.request.status.to_string(),
                ms(n.request.e2e_ms),
                ms(n.request.ttft_ms),
                n.shared_steps.to_string(),
            ]);
        }
        print!("{}", t.render());
    }
}

fn print_filters(f: &FilterValues) {
    println!(
        "{} requests from {} to {}",
        f.count, f.window.from, f.window.to
    );
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            safe(&v.join(", "))
        }
    };
    println!("models:   {}", list(&f.models));
    println!("nodes:    {}", list(&f.nodes));
    println!("engines:  {}", list(&f.engines));
    println!(
        "statuses: {}",
        list(&f.statuses.iter().map(u16::to_string).collect::<Vec<_>>())
    );
    println!("outcomes: {}", list(&f.outcomes));
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

fn run(cli: Cli) -> anyhow::Result<()> {
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
                return print_json(&body);
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
                return print_json(&body);
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
                return print_json(&body);
            }
            print_trace(&decode(&body, "trace")?);
        }
        Cmd::Filters { window } => {
            let mut q = Vec::new();
            window.push(&mut q)?;
            let body = api.get("/api/v1/filters", &q)?;
            if json {
                return print_json(&body);
            }
            print_filters(&decode(&body, "filters")?);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
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
    fn control_characters_are_escaped() {
        assert_eq!(safe("llama-8b"), "llama-8b");
        assert_eq!(safe("m\u{1b}]0;pwned\u{7}x"), "m\\u{1b}]0;pwned\\u{7}x");
        assert_eq!(safe("a\nb\u{9b}c\u{7f}"), "a\\u{a}b\\u{9b}c\\u{7f}");
        assert_eq!(safe("模型 é"), "模型 é");
        let mut t = Table::new(&["model"], &[0]);
        t.row(vec!["\u{1b}[2J".into()]);
        assert!(!t.render().contains('\u{1b}'), "{}", t.render());
    }

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
    fn tables_align() {
        let mut t = Table::new(&["name", "ms"], &[0]);
        t.row(vec!["queue".into(), ms(1234.5678)]);
        t.row(vec!["x".into(), ms(1.234)]);
        let s = t.render();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "name       ms");
        assert_eq!(lines[1], "queue  1234.6");
        assert_eq!(lines[2], "x        1.23");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
