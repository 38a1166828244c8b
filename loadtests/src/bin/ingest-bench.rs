//! Aggregator ingest throughput into the real ClickHouse, against `clickhouse-client`
//! bulk-inserting the same rows, in one run; then the breakdown query over many stored requests.
//!
//! 1. Generates `--batches` × `--requests-per-batch` synthetic requests, each with
//!    `--spans-per-request` spans (what node-probe sends for a vLLM request).
//! 2. Aggregator: streams them over gRPC (zstd) to a running aggregator; measures wall time and
//!    the aggregator process's CPU (per-thread schedstat) from first send to last STORED ack.
//! 3. Baseline: the same span rows as TSV through `clickhouse-client --query "INSERT … FORMAT
//!    TabSeparated"` into a copy of the table; wall time and the client's CPU.
//! 4. Optionally (`--breakdown-rows N`): fills `requests` with N rows generated server-side and
//!    times `GET /api/v1/breakdown` over all of them (median of 5).
//!
//!     target/release/ingest-bench --aggregator-pid $(pgrep -f 'target/release/aggregator') …
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use inferscope_loadtests::ingest::{stream_all, synthetic_batches, Shape};
use inferscope_loadtests::{median, proc_cpu_ns};
use inferscope_proto::v1::Batch;

#[derive(Parser)]
struct Args {
    /// Aggregator gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    grpc: String,
    /// Aggregator HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:7071")]
    http: String,
    /// Aggregator process id (for its CPU time).
    #[arg(long)]
    aggregator_pid: u32,
    /// Bearer token.
    #[arg(long, env = "INFERSCOPE_TOKEN")]
    token: Option<String>,
    /// The aggregator's database.
    #[arg(long, default_value = "inferscope")]
    database: String,
    /// clickhouse-client port (native TCP).
    #[arg(long, default_value_t = 19000)]
    ch_port: u16,
    /// Batches to send.
    #[arg(long, default_value_t = 200)]
    batches: u64,
    /// Requests per batch.
    #[arg(long, default_value_t = 250)]
    requests_per_batch: u64,
    /// Spans per request.
    #[arg(long, default_value_t = 8)]
    spans_per_request: u64,
    /// Fill `requests` with this many rows and time the breakdown query (0: skip). The rows
    /// are spread over the same 2500 s whatever their number, so the rollups hold the same
    /// minutes: their cost against N.
    #[arg(long, default_value_t = 0)]
    breakdown_rows: u64,
    /// Time only the breakdown from rollups (exact quantiles over 100 M rows need more memory
    /// than the API lets one query use).
    #[arg(long)]
    rollup_only: bool,
    /// Skip the ingest comparison (only the breakdown).
    #[arg(long)]
    breakdown_only: bool,
}

/// The window the generated rows fill: `[now - 3000 s, now - 500 s)`.
const FILL_SECS: u64 = 2500;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn make_batches(a: &Args, boot: &str) -> Vec<Batch> {
    synthetic_batches(
        Shape {
            batches: a.batches,
            requests_per_batch: a.requests_per_batch,
            spans_per_request: a.spans_per_request,
        },
        boot,
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ch(a: &Args, q: &str, input: Option<&[u8]>) -> anyhow::Result<(String, Duration, u64)> {
    let t0 = Instant::now();
    let mut c = Command::new("clickhouse-client")
        .args(["--port", &a.ch_port.to_string(), "--query", q])
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("clickhouse-client (scripts/setup.sh installs it)")?;
    let pid = c.id();
    let mut cpu = 0;
    if let Some(data) = input {
        let mut stdin = c.stdin.take().context("stdin")?;
        stdin.write_all(data)?;
        drop(stdin);
    }
    // CPU must be read before the process is reaped.
    loop {
        if let Some(n) = proc_cpu_ns(pid) {
            cpu = cpu.max(n);
        }
        if c.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = c.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "clickhouse-client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        t0.elapsed(),
        cpu,
    ))
}

/// Five timed calls of a breakdown URL (ms), each checked to count at least `rows` requests
/// (`hint` is added to that error).
fn time_breakdown(url: &str, rows: u64, hint: &str) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out = Command::new("curl").args(["-sf", url]).output()?;
        anyhow::ensure!(out.status.success(), "breakdown API failed ({url})");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        anyhow::ensure!(
            v["count"].as_u64().unwrap_or(0) >= rows,
            "breakdown counted {}{hint}",
            v["count"]
        );
    }
    Ok(times)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.breakdown_only {
        return breakdown_bench(&a);
    }
    let boot = format!("bench-{}", now_ns());
    let batches = make_batches(&a, &boot);
    let spans_total: u64 = a.batches * a.requests_per_batch * a.spans_per_request;
    let rows_total = spans_total + a.batches * a.requests_per_batch;

    // Baseline input: the same span rows as TSV for the spans table.
    let mut tsv = Vec::with_capacity((spans_total * 200) as usize);
    for b in &batches {
        for s in &b.resources[0].spans {
            writeln!(
                tsv,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\tbench-node\t1\t['engine.batch_size']\t['8']\t[]\t[]\tbaseline",
                s.start_unix_ns / 1_000_000_000,
                hex(&s.trace_id),
                hex(&s.span_id),
                hex(&s.parent_span_id),
                s.name,
                s.start_unix_ns,
                s.end_unix_ns
            )?;
        }
    }

    // Aggregator run.
    let cpu0 = proc_cpu_ns(a.aggregator_pid).context("aggregator pid")?;
    let t0 = Instant::now();
    stream_all(&a.grpc, a.token.as_deref(), batches).await?;
    let agg_wall = t0.elapsed();
    let agg_cpu = proc_cpu_ns(a.aggregator_pid).unwrap_or(cpu0) - cpu0;

    // Baseline run into a copy of the spans table.
    let db = &a.database;
    ch(
        &a,
        &format!("DROP TABLE IF EXISTS {db}.spans_bench_baseline"),
        None,
    )?;
    ch(
        &a,
        &format!("CREATE TABLE {db}.spans_bench_baseline AS {db}.spans"),
        None,
    )?;
    let (_, base_wall, base_cpu) = ch(
        &a,
        &format!("INSERT INTO {db}.spans_bench_baseline FORMAT TabSeparated"),
        Some(&tsv),
    )?;
    let (cnt, _, _) = ch(
        &a,
        &format!("SELECT count() FROM {db}.spans_bench_baseline"),
        None,
    )?;
    ch(
        &a,
        &format!("DROP TABLE IF EXISTS {db}.spans_bench_baseline"),
        None,
    )?;
    anyhow::ensure!(
        cnt.trim() == spans_total.to_string(),
        "baseline stored {cnt} rows"
    );

    let agg_rate = spans_total as f64 / agg_wall.as_secs_f64();
    let base_rate = spans_total as f64 / base_wall.as_secs_f64();
    let agg_per_core = spans_total as f64 / (agg_cpu as f64 / 1e9);
    let base_per_core = spans_total as f64 / (base_cpu.max(1) as f64 / 1e9);
    println!(
        "ingest-bench: {} batches, {} requests + {spans_total} spans ({rows_total} rows)",
        a.batches,
        a.batches * a.requests_per_batch
    );
    println!(
        "  aggregator (gRPC+zstd, validate, dedup, Inserter)  {:>9.0} spans/s wall  {:>9.0} spans per CPU-second of the aggregator",
        agg_rate, agg_per_core
    );
    println!(
        "  clickhouse-client TSV bulk insert (spans only)      {:>9.0} spans/s wall  {:>9.0} spans per CPU-second of the client",
        base_rate, base_per_core
    );
    println!(
        "  ratio aggregator / clickhouse-client: wall {:.2}, per core {:.2}",
        agg_rate / base_rate,
        agg_per_core / base_per_core
    );

    if a.breakdown_rows > 0 {
        breakdown_bench(&a)?;
    }
    Ok(())
}

/// Fills `requests` with `--breakdown-rows` rows (server-side, spread evenly over
/// [`FILL_SECS`]) and times the breakdown: exact, the floor under it (one exact quantile column
/// on its own), and from the rollups.
fn breakdown_bench(a: &Args) -> anyhow::Result<()> {
    let db = &a.database;
    let n = a.breakdown_rows;
    let (have, _, _) = ch(
        a,
        &format!("SELECT count() FROM {db}.requests WHERE model = 'bench-10m'"),
        None,
    )?;
    let have: u64 = have.trim().parse().unwrap_or(0);
    let now_s = now_ns() / 1_000_000_000;
    if have < n {
        let t = Instant::now();
        let spacing = FILL_SECS * 1_000_000_000 / n;
        let from = now_s - 3000;
        let q = format!(
            "INSERT INTO {db}.requests (start, start_unix_ns, end_unix_ns, trace_id, node, pid, engine, model, method, path, status, outcome, stream, \
             e2e_ns, ttft_ns, tpot_ns, frontend_ns, queue_ns, prefill_ns, decode_ns, delivery_ns, chunks, engine_steps) \
             SELECT toDateTime({from} + intDiv(number * {spacing}, 1000000000)), {from} * 1000000000 + number * {spacing}, \
             {from} * 1000000000 + number * {spacing} + 100000000, lower(hex(number)), \
             concat('node-', toString(number % 4)), 1, 'vllm', 'bench-10m', 'POST', '/v1/completions', if(number % 100 = 0, 500, 200), 'complete', 1, \
             50000000 + (number * 7919) % 400000000, 10000000 + (number * 104729) % 90000000, 5000000, 2000000 + number % 3000000, \
             (number * 31) % 50000000, 3000000 + number % 7000000, 30000000 + (number * 13) % 300000000, 1000000 + number % 2000000, 32, 32 \
             FROM system.numbers LIMIT {}",
            n - have
        );
        ch(a, &q, None)?;
        eprintln!(
            "filled {} requests in {:.1} s",
            n - have,
            t.elapsed().as_secs_f64()
        );
    }
    let url = format!(
        "{}/api/v1/breakdown?from={}&to={}&model=bench-10m&quantiles=0.5,0.9,0.99,0.999",
        a.http,
        now_s - 3700,
        now_s + 60
    );
    let span = |v: &[f64]| {
        (
            median(v),
            v.iter().cloned().fold(f64::INFINITY, f64::min),
            v.iter().cloned().fold(0.0, f64::max),
        )
    };
    if !a.rollup_only {
        let (m, lo, hi) = span(&time_breakdown(&url, n, "")?);
        println!(
            "  breakdown over {n} stored requests (p50/p90/p99/p99.9 of e2e, ttft, tpot, 5 phases, 3 gaps + cohorts): median {m:.0} ms (min {lo:.0}, max {hi:.0})"
        );
        // The floor: one exact quantile column alone, through the client (minus its start).
        let window = format!(
            "model = 'bench-10m' AND start >= toDateTime({}) AND start < toDateTime({})",
            now_s - 3700,
            now_s + 60
        );
        let mut one = Vec::new();
        let mut idle = Vec::new();
        for _ in 0..5 {
            idle.push(ch(a, "SELECT 1", None)?.1.as_secs_f64() * 1e3);
            let q = format!(
                "SELECT quantilesExact(0.5, 0.9, 0.99, 0.999)(e2e_ns) FROM {db}.requests WHERE {window}"
            );
            one.push(ch(a, &q, None)?.1.as_secs_f64() * 1e3);
        }
        let (o, olo, ohi) = span(&one);
        println!(
            "  one exact quantile column alone (e2e, same rows, clickhouse-client): median {:.0} ms (min {olo:.0}, max {ohi:.0}), of which the client's start {:.0} ms",
            o,
            median(&idle)
        );
    }
    // The same window from the per-minute rollups (filled by the materialized view as the
    // rows were inserted; a database created before the rollups has none for old rows).
    let url = format!("{url}&source=rollup");
    let (m, lo, hi) = span(&time_breakdown(
        &url,
        n,
        " (rows stored before the rollups existed are not in them: use a fresh --database)",
    )?);
    let (rows, _, _) = ch(
        a,
        &format!(
            "SELECT count() FROM (SELECT minute, model, node, engine FROM {db}.requests_1m WHERE model = 'bench-10m' GROUP BY minute, model, node, engine)"
        ),
        None,
    )?;
    println!(
        "  the same from the per-minute rollups (t-digest, p50/p90/p99/p99.9 of 8 metrics, no cohorts): median {m:.1} ms (min {lo:.1}, max {hi:.1}) over {} rollup rows",
        rows.trim()
    );
    Ok(())
}
