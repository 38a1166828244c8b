//! Cross-node hops at scale: what stitching costs, and how long a cross-node trace takes to
//! read with many stored requests.
//!
//! Stitching happens in ClickHouse: two materialized views copy each half into `hops` as it is
//! inserted (the caller's `http.client` span, the server's request row), and reads merge by hop
//! id. The aggregator's own part is one hash per request (`hop_id`). So the cost is measured
//! where it is, side by side in one run:
//!
//! 1. Fills `--hops` hops generated server-side: per hop a gateway request with its root span
//!    and its `http.client` span, and an upstream request with its root span (2 × hops
//!    requests, 3 × hops spans), into the aggregator's database (views on).
//! 2. Inserts the same `http.client` spans and upstream requests again into plain copies of the
//!    tables (no views): the difference in the ClickHouse server's CPU time is the views' work,
//!    stated as joined hops per second per core.
//! 3. Merges every hop (`GROUP BY hop_id` over `hops`, both halves present): CPU and wall.
//! 4. Times `GET /api/v1/traces/{id}?follow=hops` (the gateway trace, the upstream trace
//!    gathered across the hop, clock bounds from the hops around it) and the plain trace
//!    lookup, on 15 gateway traces spread over the range.
//!
//! ```text
//! target/release/hop-bench --database hopbench --http http://127.0.0.1:7071 \
//!     --clickhouse-pid $(pgrep -f clickhouse-server | head -1) --hops 5000000
//! ```
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use inferscope_loadtests::{median, proc_cpu_ticks_ns};

#[derive(Parser)]
struct Args {
    /// Aggregator HTTP address (its database is `--database`, already migrated).
    #[arg(long, default_value = "http://127.0.0.1:7071")]
    http: String,
    /// The aggregator's database.
    #[arg(long, default_value = "hopbench")]
    database: String,
    /// ClickHouse HTTP URL.
    #[arg(long, default_value = "http://127.0.0.1:18123")]
    clickhouse: String,
    /// The clickhouse-server process (for its CPU time).
    #[arg(long)]
    clickhouse_pid: u32,
    /// Hops to store (twice as many requests).
    #[arg(long, default_value_t = 5_000_000)]
    hops: u64,
}

/// The generated rows' window: `[now - 3000 s, now - 500 s)`.
const FILL_SECS: u64 = 2500;

fn ch(a: &Args, q: &str) -> anyhow::Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "--data-binary", q, &a.clickhouse])
        .output()
        .context("curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || text.contains("Exception") {
        bail!("ClickHouse: {text}");
    }
    Ok(text)
}

/// Runs `q` and returns (wall, ClickHouse CPU: the server's user + system time, which keeps
/// the time of threads that ended; 10 ms ticks).
fn timed(a: &Args, q: &str) -> anyhow::Result<(Duration, Duration)> {
    let cpu0 = proc_cpu_ticks_ns(a.clickhouse_pid).context("clickhouse-server CPU")?;
    let t = Instant::now();
    ch(a, q)?;
    let wall = t.elapsed();
    let cpu1 = proc_cpu_ticks_ns(a.clickhouse_pid).context("clickhouse-server CPU")?;
    Ok((wall, Duration::from_nanos(cpu1.saturating_sub(cpu0))))
}

/// A 32-hex trace id, a 16-hex span id, from `number` and a salt (SQL).
fn ids(salt: &str) -> (String, String) {
    (
        format!("lower(hex(sipHash128(concat(toString(number), '{salt}'))))"),
        format!("lower(substring(hex(sipHash128(concat(toString(number), '{salt}s'))), 1, 16))"),
    )
}

/// The inserts of one fill: gateway requests and root spans, the `http.client` spans, the
/// upstream requests and root spans. `spans`/`requests` name the target tables.
fn fill_sql(db: &str, n: u64, from_s: u64, (spans, requests): (&str, &str)) -> [String; 3] {
    let spacing = FILL_SECS * 1_000_000_000 / n;
    let t = format!("({from_s} * 1000000000 + number * {spacing})");
    let (gw_trace, gw_root) = ids("gw");
    let (up_trace, up_root) = ids("up");
    let (_, hop) = ids("hop");
    let req_cols =
        "start, start_unix_ns, end_unix_ns, trace_id, node, pid, engine, model, method, \
                    path, status, outcome, stream, e2e_ns, ttft_ns, chunks, engine_steps, hop_id";
    let span_cols = "start, trace_id, span_id, parent_span_id, name, start_unix_ns, end_unix_ns, \
                     node, pid, attr_keys, attr_values";
    let req = |node: &str, trace: &str, off: u64, e2e: u64, hop_id: &str| {
        format!(
            "SELECT toDateTime(intDiv({t} + {off}, 1000000000)), {t} + {off}, {t} + {off} + {e2e}, {trace}, \
             '{node}', 1, 'openai-compatible', 'hop-bench', 'POST', '/v1/completions', 200, 'complete', 1, \
             {e2e}, {e2e} / 2, 8, 0, {hop_id} FROM system.numbers LIMIT {n}"
        )
    };
    let span = |node: &str,
                trace: &str,
                id: &str,
                parent: &str,
                name: &str,
                off: u64,
                dur: u64,
                attrs: &str| {
        format!(
            "SELECT toDateTime(intDiv({t} + {off}, 1000000000)), {trace}, {id}, {parent}, '{name}', \
             {t} + {off}, {t} + {off} + {dur}, '{node}', 1, {attrs} FROM system.numbers LIMIT {n}"
        )
    };
    let none = "[], []";
    let link = "['inferscope.hop.link'], ['header']";
    [
        format!(
            "INSERT INTO {db}.{requests} ({req_cols}) {} UNION ALL {}",
            req("gw", &gw_trace, 0, 40_000_000, "''"),
            req("up", &up_trace, 2_000_000, 30_000_000, &hop)
        ),
        format!(
            "INSERT INTO {db}.{spans} ({span_cols}) {} UNION ALL {}",
            span(
                "gw",
                &gw_trace,
                &gw_root,
                "''",
                "http.server",
                0,
                40_000_000,
                none
            ),
            span(
                "up",
                &up_trace,
                &up_root,
                "''",
                "http.server",
                2_000_000,
                30_000_000,
                none
            )
        ),
        format!(
            "INSERT INTO {db}.{spans} ({span_cols}) {}",
            span(
                "gw",
                &gw_trace,
                &hop,
                &gw_root,
                "http.client",
                1_000_000,
                38_000_000,
                link
            )
        ),
    ]
}

fn get_ms(url: &str) -> anyhow::Result<(f64, serde_json::Value)> {
    let t = Instant::now();
    let out = Command::new("curl").args(["-sf", url]).output()?;
    ensure!(out.status.success(), "GET {url} failed");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    Ok((ms, serde_json::from_slice(&out.stdout)?))
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let db = &a.database;
    let n = a.hops;
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let from_s = now_s - 3000;
    let have: u64 = ch(
        &a,
        &format!("SELECT count() FROM {db}.requests WHERE model = 'hop-bench'"),
    )?
    .trim()
    .parse()
    .unwrap_or(0);
    ensure!(
        have == 0,
        "{db} already holds hop-bench rows: use a fresh database"
    );

    // 1 and 2: the same rows with the views (the real tables) and without (plain copies).
    for t in ["spans", "requests"] {
        ch(&a, &format!("DROP TABLE IF EXISTS {db}.{t}_plain"))?;
        ch(&a, &format!("CREATE TABLE {db}.{t}_plain AS {db}.{t}"))?;
    }
    let with = fill_sql(db, n, from_s, ("spans", "requests"));
    let plain = fill_sql(db, n, from_s, ("spans_plain", "requests_plain"));
    let mut cpu = [Duration::ZERO; 2];
    let mut wall = [Duration::ZERO; 2];
    for (i, (q_with, q_plain)) in with.iter().zip(&plain).enumerate() {
        let (w1, c1) = timed(&a, q_with)?;
        let (w0, c0) = timed(&a, q_plain)?;
        eprintln!(
            "insert {i}: with views {:.1} s wall {:.1} s CPU; plain {:.1} s wall {:.1} s CPU",
            w1.as_secs_f64(),
            c1.as_secs_f64(),
            w0.as_secs_f64(),
            c0.as_secs_f64()
        );
        (cpu[0], cpu[1]) = (cpu[0] + c1, cpu[1] + c0);
        (wall[0], wall[1]) = (wall[0] + w1, wall[1] + w0);
    }
    for t in ["spans", "requests"] {
        ch(&a, &format!("DROP TABLE IF EXISTS {db}.{t}_plain"))?;
    }
    let extra = cpu[0].saturating_sub(cpu[1]).as_secs_f64();
    println!(
        "hop-bench: {n} hops ({} requests, {} spans) inserted with the hops views: {:.1} s CPU \
         ({:.1} s wall), without: {:.1} s CPU ({:.1} s wall), ratio {:.2}",
        2 * n,
        3 * n,
        cpu[0].as_secs_f64(),
        wall[0].as_secs_f64(),
        cpu[1].as_secs_f64(),
        wall[1].as_secs_f64(),
        cpu[0].as_secs_f64() / cpu[1].as_secs_f64().max(1e-9)
    );
    println!(
        "  stitching at insert (the views' extra CPU): {:.0} ns per hop, {:.0} joined hops/s per core",
        extra * 1e9 / n as f64,
        n as f64 / extra.max(1e-9)
    );

    // 3: every hop merged.
    let q = format!(
        "SELECT count() FROM (SELECT hop_id, countIf(side = 'client') AS c, \
         countIf(side = 'server') AS s FROM {db}.hops GROUP BY hop_id) WHERE c > 0 AND s > 0"
    );
    let joined: u64 = ch(&a, &q)?.trim().parse().unwrap_or(0);
    ensure!(joined == n, "joined {joined} of {n} hops");
    let (w, c) = timed(&a, &q)?;
    println!(
        "  merging all {n} hops at read: {:.1} s wall, {:.1} s CPU: {:.0} joined hops/s per core",
        w.as_secs_f64(),
        c.as_secs_f64(),
        n as f64 / c.as_secs_f64().max(1e-9)
    );

    // 4: cross-node traces, read back.
    let mut follow = Vec::new();
    let mut single = Vec::new();
    for k in 0..15u64 {
        let i = k * (n / 15) + 7;
        let id = ch(
            &a,
            &format!("SELECT lower(hex(sipHash128(concat(toString({i}), 'gw'))))"),
        )?;
        let base = format!("{}/api/v1/traces/{}", a.http, id.trim());
        let (ms, v) = get_ms(&format!("{base}?follow=hops"))?;
        ensure!(
            v["linked_traces"].as_array().is_some_and(|l| l.len() == 1)
                && v["hops"][0]["offset_lo_ns"].is_i64(),
            "trace {i}: no linked upstream or no clock bounds: {v}"
        );
        follow.push(ms);
        single.push(get_ms(&base)?.0);
    }
    let span = |v: &[f64]| {
        (
            median(v),
            v.iter().cloned().fold(f64::INFINITY, f64::min),
            v.iter().cloned().fold(0.0, f64::max),
        )
    };
    let ((f, flo, fhi), (s, slo, shi)) = (span(&follow), span(&single));
    println!(
        "  cross-node trace with {} stored requests: follow=hops median {f:.0} ms (min {flo:.0}, \
         max {fhi:.0}); the gateway trace alone median {s:.0} ms (min {slo:.0}, max {shi:.0})",
        2 * n
    );
    Ok(())
}
