//! Bounded OpenAI-compatible load: a fixed number of requests at a fixed concurrency, mixing
//! `/v1/completions` and `/v1/chat/completions`, streamed and not. Prints client-side TTFT and
//! end-to-end percentiles. Every request carries a W3C `traceparent`, so its trace id can be
//! matched to what inferscope (and the engine's own tracing) report; `--trace-log` writes one
//! JSON line per request with that id and the client's timings.
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use inferscope_loadtests::median;

#[derive(Parser, Clone)]
struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8765")]
    url: String,
    /// Model name sent in requests.
    #[arg(long, default_value = "tiny-llm")]
    model: String,
    /// Total requests.
    #[arg(long, default_value_t = 40)]
    requests: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    concurrency: u64,
    /// Tokens per completion (fixed with ignore_eos).
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
    /// Write one JSON line per request here.
    #[arg(long)]
    trace_log: Option<std::path::PathBuf>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
}

#[derive(Debug, Clone)]
struct Outcome {
    trace_id: String,
    kind: &'static str,
    stream: bool,
    status: u16,
    start_unix_ns: u128,
    ttft_ns: u64,
    e2e_ns: u64,
    chunks: u64,
}

fn trace_id(i: u64) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    format!(
        "{:016x}{:016x}",
        t ^ 0x5eed_1f5c_0be0_0000,
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
    )
}

fn one(agent: &ureq::Agent, a: &Args, i: u64) -> Outcome {
    let chat = i % 2 == 1;
    let stream = (i / 2).is_multiple_of(2);
    let tid = trace_id(i);
    let (path, body) = if chat {
        (
            "/v1/chat/completions",
            (format!(
                r#"{{"model":"{}","messages":[{{"role":"user","content":"request {i}: say something"}}],"max_tokens":{},"ignore_eos":true,"stream":{stream}}}"#,
                a.model, a.max_tokens
            )),
        )
    } else {
        (
            "/v1/completions",
            (format!(
                r#"{{"model":"{}","prompt":"request {i}: once upon a time","max_tokens":{},"ignore_eos":true,"stream":{stream}}}"#,
                a.model, a.max_tokens
            )),
        )
    };
    let start_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let t0 = Instant::now();
    let mut out = Outcome {
        trace_id: tid.clone(),
        kind: if chat { "chat" } else { "completions" },
        stream,
        status: 0,
        start_unix_ns,
        ttft_ns: 0,
        e2e_ns: 0,
        chunks: 0,
    };
    let resp = agent
        .post(&format!("{}{path}", a.url))
        .set("Content-Type", "application/json")
        .set("traceparent", &format!("00-{tid}-{:016x}-01", i + 1))
        .set("x-request-id", &format!("loadgen-{i}"))
        .send_string(&body);
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(code, _)) => {
            out.status = code;
            out.e2e_ns = t0.elapsed().as_nanos() as u64;
            return out;
        }
        Err(_) => {
            out.e2e_ns = t0.elapsed().as_nanos() as u64;
            return out;
        }
    };
    out.status = resp.status();
    let mut reader = BufReader::new(resp.into_reader());
    if stream {
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let l = line.trim();
            if let Some(data) = l.strip_prefix("data:") {
                if data.trim() == "[DONE]" {
                    break;
                }
                if out.chunks == 0 {
                    out.ttft_ns = t0.elapsed().as_nanos() as u64;
                }
                out.chunks += 1;
            }
        }
    } else {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut s);
        out.ttft_ns = t0.elapsed().as_nanos() as u64;
        out.chunks = 1;
    }
    out.e2e_ns = t0.elapsed().as_nanos() as u64;
    out
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        a.concurrency > 0 && a.requests > 0,
        "--requests and --concurrency must be positive"
    );
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(a.timeout_s))
        .max_idle_connections_per_host(a.concurrency as usize)
        .build();
    let next = Arc::new(AtomicU64::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..a.concurrency.min(a.requests))
        .map(|_| {
            let (agent, a, next, results) =
                (agent.clone(), a.clone(), next.clone(), results.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= a.requests {
                    break;
                }
                let o = one(&agent, &a, i);
                results.lock().expect("results lock").push(o);
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let wall = t0.elapsed();
    let results = results.lock().expect("results lock").clone();
    if let Some(p) = &a.trace_log {
        let mut f = std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?;
        for o in &results {
            writeln!(
                f,
                r#"{{"trace_id":"{}","kind":"{}","stream":{},"status":{},"start_unix_ns":{},"ttft_ns":{},"e2e_ns":{},"chunks":{}}}"#,
                o.trace_id,
                o.kind,
                o.stream,
                o.status,
                o.start_unix_ns,
                o.ttft_ns,
                o.e2e_ns,
                o.chunks
            )?;
        }
    }
    let ok: Vec<&Outcome> = results.iter().filter(|o| o.status == 200).collect();
    let mut ttft: Vec<f64> = ok
        .iter()
        .filter(|o| o.stream)
        .map(|o| o.ttft_ns as f64 / 1e6)
        .collect();
    let mut e2e: Vec<f64> = ok.iter().map(|o| o.e2e_ns as f64 / 1e6).collect();
    println!(
        "loadgen: {} requests ({} ok, {} failed) at concurrency {} in {:.1} s = {:.1} req/s",
        results.len(),
        ok.len(),
        results.len() - ok.len(),
        a.concurrency,
        wall.as_secs_f64(),
        results.len() as f64 / wall.as_secs_f64()
    );
    println!(
        "  client TTFT (streamed) ms: p50 {:.1}  p99 {:.1} | E2E ms: p50 {:.1}  p99 {:.1}  median {:.1}",
        pct(&mut ttft, 50.0),
        pct(&mut ttft, 99.0),
        pct(&mut e2e, 50.0),
        pct(&mut e2e, 99.0),
        median(&e2e)
    );
    anyhow::ensure!(
        ok.len() == results.len(),
        "{} requests failed",
        results.len() - ok.len()
    );
    Ok(())
}
