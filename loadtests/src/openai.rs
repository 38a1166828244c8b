//! A bounded OpenAI-compatible load: a fixed number of requests at a fixed concurrency, mixing
//! `/v1/completions` and `/v1/chat/completions`, streamed and not (request `i`: chat when odd,
//! streamed when `i/2` is even; streams ask for a final `usage` event when `i % 8 < 2`). Every
//! request carries a W3C `traceparent` and an `x-request-id`.
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Base URL of the server.
    pub url: String,
    /// Model name.
    pub model: String,
    /// Total requests.
    pub requests: u64,
    /// Concurrent clients.
    pub concurrency: u64,
    /// Tokens per completion (fixed with `ignore_eos`).
    pub max_tokens: u32,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Extra request headers (name, value), e.g. a label a probe extracts as the tenant.
    pub headers: Vec<(String, String)>,
}

/// One request's client-side view.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// 32-hex trace id sent in `traceparent`.
    pub trace_id: String,
    /// `completions` or `chat`.
    pub kind: &'static str,
    /// Streamed.
    pub stream: bool,
    /// HTTP status (0: no response).
    pub status: u16,
    /// Client send time, Unix ns.
    pub start_unix_ns: u128,
    /// Time to first SSE data event (non-streamed: whole body).
    pub ttft_ns: u64,
    /// End to end.
    pub e2e_ns: u64,
    /// SSE data events (non-streamed: 1).
    pub chunks: u64,
}

/// A finished load run.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Every request, in completion order.
    pub outcomes: Vec<Outcome>,
    /// Wall time of the run.
    pub wall: Duration,
}

impl LoadResult {
    /// Requests with status 200.
    pub fn ok(&self) -> usize {
        self.outcomes.iter().filter(|o| o.status == 200).count()
    }

    /// Completion tokens per second (streamed: one token per event; non-streamed: max_tokens).
    pub fn tokens_per_s(&self, max_tokens: u32) -> f64 {
        let toks: u64 = self
            .outcomes
            .iter()
            .filter(|o| o.status == 200)
            .map(|o| {
                if o.stream {
                    o.chunks
                } else {
                    u64::from(max_tokens)
                }
            })
            .sum();
        toks as f64 / self.wall.as_secs_f64()
    }

    /// Quantile `q` (0..=1) of streamed TTFT in ms.
    pub fn ttft_ms(&self, q: f64) -> f64 {
        let v: Vec<f64> = self
            .outcomes
            .iter()
            .filter(|o| o.status == 200 && o.stream)
            .map(|o| o.ttft_ns as f64 / 1e6)
            .collect();
        quantile(&v, q)
    }

    /// Quantile `q` of E2E in ms.
    pub fn e2e_ms(&self, q: f64) -> f64 {
        let v: Vec<f64> = self
            .outcomes
            .iter()
            .filter(|o| o.status == 200)
            .map(|o| o.e2e_ns as f64 / 1e6)
            .collect();
        quantile(&v, q)
    }
}

/// Nearest-rank quantile of `v` (NaN when empty).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[(((s.len() - 1) as f64) * q).round() as usize]
}

fn trace_id(i: u64) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mix = |mut x: u64| {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    };
    format!(
        "{:016x}{:016x}",
        mix(t ^ i),
        mix(i.wrapping_add(t.rotate_left(17))) | 1
    )
}

fn one(agent: &ureq::Agent, c: &LoadConfig, i: u64) -> Outcome {
    let chat = i % 2 == 1;
    let stream = (i / 2).is_multiple_of(2);
    let tid = trace_id(i);
    let usage = if stream && i % 8 < 2 {
        r#","stream_options":{"include_usage":true}"#
    } else {
        ""
    };
    let (path, body) = if chat {
        (
            "/v1/chat/completions",
            format!(
                r#"{{"model":"{}","messages":[{{"role":"user","content":"request {i}: say something"}}],"max_tokens":{},"ignore_eos":true,"stream":{stream}{usage}}}"#,
                c.model, c.max_tokens
            ),
        )
    } else {
        (
            "/v1/completions",
            format!(
                r#"{{"model":"{}","prompt":"request {i}: once upon a time","max_tokens":{},"ignore_eos":true,"stream":{stream}{usage}}}"#,
                c.model, c.max_tokens
            ),
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
    let mut req = agent
        .post(&format!("{}{path}", c.url))
        .set("Content-Type", "application/json");
    for (k, v) in &c.headers {
        req = req.set(k, v);
    }
    let resp = req
        .set("traceparent", &format!("00-{tid}-{:016x}-01", i + 1))
        // A UUID (the trace id's digits): llama-cpp-python's server refuses any other form
        // with 400; vLLM takes it as its request id.
        .set(
            "x-request-id",
            &format!(
                "{}-{}-{}-{}-{}",
                &tid[..8],
                &tid[8..12],
                &tid[12..16],
                &tid[16..20],
                &tid[20..]
            ),
        )
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
            if let Some(data) = line.trim().strip_prefix("data:") {
                if data.trim() == "[DONE]" {
                    break;
                }
                // Token events only, as node-probe counts them (docs/request-format.md).
                let (token, _) = crate::wire::event_payload(Some(data.trim().as_bytes()));
                if !token {
                    continue;
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
    // Read the response to its end (the chunked terminator after `[DONE]`), as a well-behaved
    // client does: the connection goes back to the pool instead of being dropped mid-response.
    let _ = std::io::copy(&mut reader, &mut std::io::sink());
    out
}

/// Runs the load to completion.
pub fn run(c: &LoadConfig) -> LoadResult {
    let agent = ureq::AgentBuilder::new()
        .timeout(c.timeout)
        .max_idle_connections_per_host(c.concurrency as usize)
        .build();
    let next = Arc::new(AtomicU64::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..c.concurrency.min(c.requests))
        .map(|_| {
            let (agent, c, next, results) =
                (agent.clone(), c.clone(), next.clone(), results.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= c.requests {
                    break;
                }
                let o = one(&agent, &c, i);
                results.lock().expect("results lock").push(o);
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let wall = t0.elapsed();
    let outcomes = results.lock().expect("results lock").clone();
    LoadResult { outcomes, wall }
}
