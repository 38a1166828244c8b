//! node-probe's cost on a real engine, measured side by side in one run.
//!
//! Rounds alternate the order of two conditions — the same bounded load without and with
//! node-probe attached (`--requests`, full request tracking) — so drift on a noisy machine hits
//! both alike. Reports per condition the medians over rounds of completion tokens/s and p99
//! streamed TTFT, their ratios, and node-probe's CPU per request.
//!
//!     sudo target/release/engine-overhead --url http://127.0.0.1:8765 --pid $(cat …/server-8765.pid)
use std::time::Duration;

use clap::Parser;
use inferscope_loadtests::openai::{run, LoadConfig, LoadResult};
use inferscope_loadtests::probe::start_probe;
use inferscope_loadtests::{median, proc_cpu_ns};

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
    /// Rounds (each runs both conditions).
    #[arg(long, default_value_t = 4)]
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

fn measure(cfg: &LoadConfig) -> anyhow::Result<LoadResult> {
    let r = run(cfg);
    anyhow::ensure!(
        r.ok() == r.outcomes.len(),
        "{} requests failed",
        r.outcomes.len() - r.ok()
    );
    Ok(r)
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
    measure(&LoadConfig {
        requests: a.concurrency * 2,
        ..cfg.clone()
    })?; // warm-up
    let (mut tok_off, mut tok_on, mut p99_off, mut p99_on, mut cpu_per_req) =
        (vec![], vec![], vec![], vec![], vec![]);
    for r in 0..a.rounds {
        let mut run_off = || -> anyhow::Result<()> {
            let m = measure(&cfg)?;
            tok_off.push(m.tokens_per_s(cfg.max_tokens));
            p99_off.push(m.ttft_ms(0.99));
            Ok(())
        };
        if r % 2 == 0 {
            run_off()?;
        }
        let p = start_probe(
            &a.probe,
            &["--pid".into(), a.pid.to_string(), "--requests".into()],
        )?;
        let c0 = proc_cpu_ns(p.id()).unwrap_or(0);
        let m = measure(&cfg)?;
        std::thread::sleep(Duration::from_millis(200));
        let c1 = proc_cpu_ns(p.id()).unwrap_or(0);
        // SAFETY: signal to our own child.
        unsafe { libc::kill(p.id() as i32, libc::SIGTERM) };
        let mut p = p;
        let _ = p.wait();
        tok_on.push(m.tokens_per_s(cfg.max_tokens));
        p99_on.push(m.ttft_ms(0.99));
        cpu_per_req.push(c1.saturating_sub(c0) as f64 / 1e6 / m.outcomes.len() as f64);
        if r % 2 == 1 {
            run_off()?;
        }
        eprintln!(
            "round {r}: tokens/s off {:.0} on {:.0}; p99 TTFT ms off {:.1} on {:.1}; probe CPU {:.3} ms/request",
            tok_off.last().unwrap_or(&f64::NAN),
            tok_on.last().unwrap_or(&f64::NAN),
            p99_off.last().unwrap_or(&f64::NAN),
            p99_on.last().unwrap_or(&f64::NAN),
            cpu_per_req.last().unwrap_or(&f64::NAN)
        );
    }
    let (t0, t1, q0, q1) = (
        median(&tok_off),
        median(&tok_on),
        median(&p99_off),
        median(&p99_on),
    );
    println!(
        "engine-overhead: {} rounds x {} requests at concurrency {} ({} tokens each), medians over rounds",
        a.rounds, a.requests, a.concurrency, a.max_tokens
    );
    println!(
        "  tokens/s      without probe {t0:8.0}   with probe {t1:8.0}   ratio {:.3}",
        t1 / t0
    );
    println!(
        "  p99 TTFT ms   without probe {q0:8.1}   with probe {q1:8.1}   ratio {:.3}",
        q1 / q0
    );
    println!(
        "  node-probe CPU per request {:.3} ms (median)",
        median(&cpu_per_req)
    );
    Ok(())
}
