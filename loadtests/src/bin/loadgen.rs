//! Bounded OpenAI-compatible load (see `inferscope_loadtests::openai`): prints client-side TTFT
//! and end-to-end percentiles; `--trace-log` writes one JSON line per request with its trace id
//! and the client's timings, to match against inferscope's and the engine's own records.
use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use inferscope_loadtests::openai::{run, LoadConfig};

#[derive(Parser)]
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
    /// An extra request header, `NAME: VALUE` (repeatable), e.g. a tenant or A/B arm label.
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not NAME: VALUE"))?;
    let k = k.trim();
    let valid = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return Err(format!("{k:?} is not a header name"));
    }
    Ok((k.to_string(), v.trim().to_string()))
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        a.concurrency > 0 && a.requests > 0,
        "--requests and --concurrency must be positive"
    );
    let cfg = LoadConfig {
        url: a.url.trim_end_matches('/').to_string(),
        model: a.model,
        requests: a.requests,
        concurrency: a.concurrency,
        max_tokens: a.max_tokens,
        timeout: Duration::from_secs(a.timeout_s),
        headers: a.headers,
    };
    let r = run(&cfg);
    if let Some(p) = &a.trace_log {
        let mut f = std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?;
        for o in &r.outcomes {
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
    let n = r.outcomes.len();
    println!(
        "loadgen: {n} requests ({} ok, {} failed) at concurrency {} in {:.1} s = {:.1} req/s, {:.0} tokens/s",
        r.ok(),
        n - r.ok(),
        cfg.concurrency,
        r.wall.as_secs_f64(),
        n as f64 / r.wall.as_secs_f64(),
        r.tokens_per_s(cfg.max_tokens)
    );
    println!(
        "  client TTFT (streamed) ms: p50 {:.1}  p99 {:.1} | E2E ms: p50 {:.1}  p99 {:.1}",
        r.ttft_ms(0.5),
        r.ttft_ms(0.99),
        r.e2e_ms(0.5),
        r.e2e_ms(0.99)
    );
    anyhow::ensure!(r.ok() == n, "{} requests failed", n - r.ok());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_header;

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("x-arm: a2").unwrap(),
            ("x-arm".to_string(), "a2".to_string())
        );
        assert_eq!(
            parse_header("x:").unwrap(),
            ("x".to_string(), String::new())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": v").is_err());
        assert!(parse_header("bad name: v").is_err());
    }
}
