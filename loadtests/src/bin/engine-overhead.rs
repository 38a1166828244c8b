//! node-probe's cost on a real engine, measured side by side in one run.
//!
//! Rounds alternate the order of two conditions — the same bounded load without and with
//! node-probe attached (`--requests`, full request tracking) — so drift on a noisy machine hits
//! both alike. Per round and condition: completion tokens/s, p99 streamed TTFT and the engine's
//! CPU per request (every thread of the API server and its descendants, from schedstat); with
//! the probe also node-probe's CPU and the run time of its BPF programs (kernel BPF statistics,
//! switched on for the run). The cost of tracing is reported as a fraction of the engine's CPU
//! per request, with 95 % bootstrap intervals over rounds, next to the ratios of throughput and
//! tail latency and of the engine's own CPU (which also carries what the hooks cost inside the
//! engine's threads beyond the programs' run time).
//!
//!     sudo target/release/engine-overhead --url http://127.0.0.1:8765 --pid $(cat …/server-8765.pid)
//!
//! `--probe-b OTHER` measures a second node-probe binary in the same rounds (a third condition,
//! its order rotated too), for the before/after of a change: both binaries' CPU and BPF time
//! per request, and the per-round ratio B/A with its interval.
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::time::Duration;

use clap::Parser;
use inferscope_loadtests::openai::{run, LoadConfig, LoadResult};
use inferscope_loadtests::probe::start_probe;
use inferscope_loadtests::stats::mean_ci95;
use inferscope_loadtests::{descendants, median, proc_cpu_ns};

#[derive(Parser)]
struct Args {
    /// Engine base URL.
    #[arg(long, default_value = "http://127.0.0.1:8765")]
    url: String,
    /// Engine API-server pid (node-probe follows its children too).
    #[arg(long)]
    pid: u32,
    /// node-probe binary.
    #[arg(long, default_value = "target/release/node-probe")]
    probe: String,
    /// A second node-probe binary measured in the same rounds (A/B of a change).
    #[arg(long)]
    probe_b: Option<String>,
    /// Rounds (each runs both conditions).
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Requests per measurement.
    #[arg(long, default_value_t = 96)]
    requests: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    concurrency: u64,
    /// Tokens per completion.
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
}

/// One measurement of one condition.
#[derive(Debug, Default, Clone, Copy)]
struct Side {
    tokens_per_s: f64,
    p99_ttft_ms: f64,
    /// The engine's CPU (all its processes' threads) per request, ms.
    engine_ms: f64,
    /// node-probe's CPU per request, ms (with the probe).
    probe_ms: f64,
    /// Run time of node-probe's BPF programs per request, ms (with the probe and statistics).
    bpf_ms: Option<f64>,
}

/// Kernel BPF run-time statistics, on while this lives.
struct BpfStats {
    fd: Option<OwnedFd>,
}

impl BpfStats {
    fn enable() -> Self {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map_err(|e| {
                eprintln!("BPF statistics unavailable ({e}): kernel program time not measured")
            })
            .ok();
        Self { fd }
    }

    fn on(&self) -> bool {
        self.fd.is_some()
    }
}

/// Ids of the BPF programs loaded now.
fn program_ids() -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// Run time (ns) and run count of each program not in `before` (node-probe's, when it is the
/// only loader meanwhile), by name.
fn run_times(before: &BTreeSet<u32>) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::<String, (u64, u64)>::new();
    for p in aya::programs::loaded_programs().filter_map(Result::ok) {
        if before.contains(&p.id()) {
            continue;
        }
        let e = out
            .entry(p.name_as_str().unwrap_or("?").to_string())
            .or_default();
        e.0 += p.run_time().as_nanos() as u64;
        e.1 += p.run_count();
    }
    out
}

/// `after − before` per program, added into `into`.
fn add_delta(
    into: &mut BTreeMap<String, (u64, u64)>,
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
) {
    for (name, &(t, c)) in after {
        let (t0, c0) = before.get(name).copied().unwrap_or_default();
        let e = into.entry(name.clone()).or_default();
        e.0 += t.saturating_sub(t0);
        e.1 += c.saturating_sub(c0);
    }
}

/// CPU time (ns) of the engine: its API server and every descendant.
fn engine_cpu_ns(root: u32) -> u64 {
    std::iter::once(root)
        .chain(descendants(root))
        .filter_map(proc_cpu_ns)
        .sum()
}

fn measure(cfg: &LoadConfig) -> anyhow::Result<LoadResult> {
    let r = run(cfg);
    anyhow::ensure!(
        r.ok() == r.outcomes.len(),
        "{} requests failed",
        r.outcomes.len() - r.ok()
    );
    Ok(r)
}

/// The load without the probe.
fn without(cfg: &LoadConfig, engine: u32) -> anyhow::Result<Side> {
    let e0 = engine_cpu_ns(engine);
    let m = measure(cfg)?;
    let e1 = engine_cpu_ns(engine);
    let n = m.outcomes.len() as f64;
    Ok(Side {
        tokens_per_s: m.tokens_per_s(cfg.max_tokens),
        p99_ttft_ms: m.ttft_ms(0.99),
        engine_ms: e1.saturating_sub(e0) as f64 / 1e6 / n,
        ..Side::default()
    })
}

/// The load with node-probe attached (started before, stopped after, not measured).
fn with(
    cfg: &LoadConfig,
    (a, binary): (&Args, &str),
    stats: &BpfStats,
    programs: &mut BTreeMap<String, (u64, u64)>,
) -> anyhow::Result<Side> {
    let before = program_ids();
    let p = start_probe(
        binary,
        &["--pid".into(), a.pid.to_string(), "--requests".into()],
    )?;
    let (c0, e0, b0) = (
        proc_cpu_ns(p.id()).unwrap_or(0),
        engine_cpu_ns(a.pid),
        run_times(&before),
    );
    let m = measure(cfg)?;
    let e1 = engine_cpu_ns(a.pid);
    // The probe's share of the last requests: it reads them a poll interval later.
    std::thread::sleep(Duration::from_millis(200));
    let (c1, b1) = (proc_cpu_ns(p.id()).unwrap_or(0), run_times(&before));
    let mut delta = BTreeMap::new();
    add_delta(&mut delta, &b0, &b1);
    let bpf_ns: u64 = delta.values().map(|v| v.0).sum();
    add_delta(programs, &BTreeMap::new(), &delta);
    // SAFETY: signal to our own child.
    unsafe { libc::kill(p.id() as i32, libc::SIGTERM) };
    let mut p = p;
    let _ = p.wait();
    let n = m.outcomes.len() as f64;
    Ok(Side {
        tokens_per_s: m.tokens_per_s(cfg.max_tokens),
        p99_ttft_ms: m.ttft_ms(0.99),
        engine_ms: e1.saturating_sub(e0) as f64 / 1e6 / n,
        probe_ms: c1.saturating_sub(c0) as f64 / 1e6 / n,
        bpf_ms: stats.on().then(|| bpf_ns as f64 / 1e6 / n),
    })
}

/// "mean [lo, hi]" of `v` scaled by `k`, with `digits` decimals.
fn ci(v: &[f64], k: f64, digits: usize) -> String {
    match mean_ci95(v) {
        Some((m, lo, hi)) => format!("{:.d$} [{:.d$}, {:.d$}]", m * k, lo * k, hi * k, d = digits),
        None => format!("{:.d$}", median(v) * k, d = digits),
    }
}

/// The programs' run time per request and per run, costliest first.
fn report_programs(programs: &BTreeMap<String, (u64, u64)>, requests: f64) {
    let mut v: Vec<_> = programs.iter().filter(|(_, p)| p.1 > 0).collect();
    v.sort_by_key(|(_, p)| std::cmp::Reverse(p.0));
    for (name, (t, c)) in v.into_iter().take(10) {
        println!(
            "    {name:<28} {:8.1} µs/request  {:7.1} runs/request  {:6.0} ns/run",
            *t as f64 / 1e3 / requests,
            *c as f64 / requests,
            *t as f64 / *c as f64
        );
    }
}

/// Median over rounds of `f`.
fn m_of(rounds: &[(Side, Side)], f: impl Fn(&(Side, Side)) -> f64) -> f64 {
    median(&rounds.iter().map(f).collect::<Vec<f64>>())
}

fn report(a: &Args, rounds: &[(Side, Side)]) {
    let col = |f: fn(&(Side, Side)) -> f64| rounds.iter().map(f).collect::<Vec<f64>>();
    let m = |f: fn(&(Side, Side)) -> f64| m_of(rounds, f);
    println!(
        "engine-overhead: {} rounds x {} requests at concurrency {} ({} tokens each); medians over rounds, ratios and costs as mean [95 % bootstrap interval] over rounds",
        a.rounds, a.requests, a.concurrency, a.max_tokens
    );
    // A figure measured in both conditions: medians, and the per-round ratio with its interval.
    let both = |label: &str, digits: usize, f: fn(&Side) -> f64| {
        let (off, on) = (m_of(rounds, |r| f(&r.0)), m_of(rounds, |r| f(&r.1)));
        let ratios: Vec<f64> = rounds.iter().map(|r| f(&r.1) / f(&r.0)).collect();
        println!(
            "  {label:<24} without {off:8.d$}  with {on:8.d$}  ratio {}",
            ci(&ratios, 1.0, 3),
            d = digits
        );
    };
    both("tokens/s", 0, |s| s.tokens_per_s);
    both("p99 TTFT ms", 1, |s| s.p99_ttft_ms);
    both("engine CPU ms/request", 3, |s| s.engine_ms);
    println!(
        "  node-probe CPU/request   {:.3} ms = {} % of the engine's",
        m(|r| r.1.probe_ms),
        ci(&col(|r| r.1.probe_ms / r.0.engine_ms), 100.0, 2)
    );
    if rounds.iter().all(|r| r.1.bpf_ms.is_some()) {
        let bpf = |r: &(Side, Side)| r.1.bpf_ms.unwrap_or(0.0);
        println!(
            "  BPF programs/request     {:.3} ms = {} % of the engine's",
            median(&rounds.iter().map(bpf).collect::<Vec<_>>()),
            ci(
                &rounds
                    .iter()
                    .map(|r| bpf(r) / r.0.engine_ms)
                    .collect::<Vec<_>>(),
                100.0,
                2
            )
        );
        println!(
            "  probe cost (node-probe + BPF programs) = {} % of the engine's CPU per request",
            ci(
                &rounds
                    .iter()
                    .map(|r| (r.1.probe_ms + bpf(r)) / r.0.engine_ms)
                    .collect::<Vec<_>>(),
                100.0,
                2
            )
        );
    }
}

/// Binary A against binary B, measured in the same rounds.
fn report_ab(ab: &[(Side, Side)]) {
    let med = |f: &dyn Fn(&(Side, Side)) -> f64| median(&ab.iter().map(f).collect::<Vec<_>>());
    let ratio = |f: &dyn Fn(&Side) -> f64| {
        ci(
            &ab.iter().map(|(a, b)| f(b) / f(a)).collect::<Vec<_>>(),
            1.0,
            3,
        )
    };
    println!(
        "  A/B: node-probe CPU/request A {:.3} ms, B {:.3} ms, ratio B/A {}",
        med(&|r| r.0.probe_ms),
        med(&|r| r.1.probe_ms),
        ratio(&|s| s.probe_ms)
    );
    if ab
        .iter()
        .all(|(a, b)| a.bpf_ms.is_some() && b.bpf_ms.is_some())
    {
        let bpf = |s: &Side| s.bpf_ms.unwrap_or(0.0);
        println!(
            "  A/B: BPF programs/request A {:.3} ms, B {:.3} ms, ratio B/A {}",
            med(&|r| bpf(&r.0)),
            med(&|r| bpf(&r.1)),
            ratio(&bpf)
        );
        println!(
            "  A/B: probe cost/request A {:.3} ms, B {:.3} ms, ratio B/A {}",
            med(&|r| r.0.probe_ms + bpf(&r.0)),
            med(&|r| r.1.probe_ms + bpf(&r.1)),
            ratio(&|s| s.probe_ms + bpf(s))
        );
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let cfg = LoadConfig {
        url: a.url.trim_end_matches('/').to_string(),
        model: "tiny-llm".into(),
        requests: a.requests,
        concurrency: a.concurrency,
        max_tokens: a.max_tokens,
        timeout: Duration::from_secs(120),
        headers: Vec::new(),
    };
    let stats = BpfStats::enable();
    let mut programs = BTreeMap::new();
    measure(&LoadConfig {
        requests: a.concurrency * 2,
        ..cfg.clone()
    })?; // warm-up
    let mut rounds = Vec::new();
    let mut ab: Vec<(Side, Side)> = Vec::new();
    for r in 0..a.rounds {
        // The B binary's programs are counted apart from A's (`programs` is A's table).
        let mut b_programs = BTreeMap::new();
        let (off, on, b) = match (&a.probe_b, r % 3) {
            (None, _) if r % 2 == 0 => {
                let off = without(&cfg, a.pid)?;
                (
                    off,
                    with(&cfg, (&a, &a.probe), &stats, &mut programs)?,
                    None,
                )
            }
            (None, _) => {
                let on = with(&cfg, (&a, &a.probe), &stats, &mut programs)?;
                (without(&cfg, a.pid)?, on, None)
            }
            (Some(pb), k) => {
                let mut sides: [Option<Side>; 3] = [None; 3];
                for c in [k, (k + 1) % 3, (k + 2) % 3] {
                    sides[c as usize] = Some(match c {
                        0 => without(&cfg, a.pid)?,
                        1 => with(&cfg, (&a, &a.probe), &stats, &mut programs)?,
                        _ => with(&cfg, (&a, pb), &stats, &mut b_programs)?,
                    });
                }
                let [off, on, b] = sides.map(Option::unwrap_or_default);
                (off, on, Some(b))
            }
        };
        if let Some(b) = b {
            eprintln!(
                "round {r}: B probe {:.3} ms/request, BPF {:.3}",
                b.probe_ms,
                b.bpf_ms.unwrap_or(f64::NAN)
            );
            ab.push((on, b));
        }
        eprintln!(
            "round {r}: tokens/s off {:.0} on {:.0}; p99 TTFT ms off {:.1} on {:.1}; engine CPU ms/request off {:.3} on {:.3}; probe {:.3} ms/request, BPF {:.3}",
            off.tokens_per_s,
            on.tokens_per_s,
            off.p99_ttft_ms,
            on.p99_ttft_ms,
            off.engine_ms,
            on.engine_ms,
            on.probe_ms,
            on.bpf_ms.unwrap_or(f64::NAN)
        );
        rounds.push((off, on));
    }
    report(&a, &rounds);
    if !ab.is_empty() {
        report_ab(&ab);
    }
    if stats.on() {
        println!("  BPF programs (all rounds):");
        report_programs(&programs, (a.rounds as u64 * a.requests) as f64);
    }
    Ok(())
}
