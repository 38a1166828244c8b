//! `inferscope explain` on the real vLLM, on requests slowed by a known cause: a burst of 64
//! requests on an engine that runs 16 at a time (the slowest of the burst queued: the explainer
//! must say so, with how many requests were ahead), and a long prompt (~1900 tokens, its prefill
//! ~40 ms against ~3 ms) sent just before 8 short requests: they wait for its prefill and then
//! share its batch, and the explainer must name the long prompt as the dominant cause for at
//! least 6 of the 8. The causes found and their figures are printed.
//!
//! Needs root, the shared engine from `scripts/test.sh`, and the local ClickHouse.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use inferscope_loadtests::fidelity::figure;
use inferscope_loadtests::harness::{
    bin, engine_root_clickhouse, free_port, load, read_trace_log, sql, start_aggregator,
    start_exporting_probe, Children,
};
use serde_json::Value;

const TOKEN: &str = "explain-token";

/// Tokens per request of the typical traffic, the burst and the short requests: enough that a
/// request holds its slot in the engine (with 8, the Python frontend, not the scheduler, is
/// what a burst waits for on this CPU engine).
const TOKENS: u32 = 64;

/// `n` requests of [`TOKENS`] tokens from `clients` concurrent clients; the trace ids sent.
fn burst(url: &str, n: u64, clients: u64, log: &Path) -> Vec<String> {
    let st = Command::new(bin("loadgen"))
        .args(["--url", url, "--requests", &n.to_string()])
        .args(["--concurrency", &clients.to_string()])
        .args(["--max-tokens", &TOKENS.to_string()])
        .arg("--trace-log")
        .arg(log)
        .stdout(Stdio::null())
        .status()
        .expect("loadgen");
    assert!(st.success(), "loadgen failed");
    read_trace_log(log)
        .into_iter()
        .map(|s| s.trace_id)
        .collect()
}

/// Waits until every id of `ids` is stored.
fn wait_stored(db: &str, ids: &[String]) {
    let list = ids
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(",");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: usize = sql(&format!(
            "SELECT uniqExact(trace_id) FROM {db}.requests WHERE trace_id IN ({list})"
        ))
        .parse()
        .unwrap_or(0);
        if n >= ids.len() || Instant::now() > deadline {
            assert_eq!(n, ids.len(), "stored requests");
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn explain(api: &str, id: &str) -> Value {
    let out = Command::new(bin("inferscope"))
        .args(["--api", api, "--output", "json", "explain", id])
        .output()
        .expect("inferscope explain");
    assert!(
        out.status.success(),
        "explain {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("explain JSON")
}

/// Words of the long prompt: about 1930 tokens (3 per word), near the engine's
/// `--max-model-len 2048`; its prefill step takes ~50 ms against ~12 ms for a short request.
const LONG_WORDS: usize = 640;

/// A completion whose prompt is `words` words long, sent with trace id `tid`. The prompt starts
/// with the trace id, so that vLLM's prefix cache cannot serve it from an earlier attempt (a
/// cached prompt costs no prefill).
fn long_prompt(url: &str, tid: &str, words: usize) -> u16 {
    let prompt = format!("{tid} {}", "hello ".repeat(words));
    let body = format!(
        r#"{{"model":"tiny-llm","prompt":"{prompt}","max_tokens":8,"ignore_eos":true,"stream":true}}"#
    );
    match ureq::post(&format!("{url}/v1/completions"))
        .set("Content-Type", "application/json")
        .set("traceparent", &format!("00-{tid}-00000000000000a1-01"))
        .send_string(&body)
    {
        Ok(r) => {
            let _ = r.into_string();
            200
        }
        Err(ureq::Error::Status(c, _)) => c,
        Err(e) => panic!("long prompt: {e}"),
    }
}

#[test]
fn explain_names_injected_causes() {
    let Some((url, pid)) = engine_root_clickhouse("explain_names_injected_causes") else {
        return;
    };
    let db = format!("test_explain_{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("inferscope-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (grpc, http) = (free_port(), free_port());
    let agg = start_aggregator(&db, grpc, http, TOKEN, Some(&dir.join("agg.log")));
    let mut children = Children(vec![agg]);
    children.0.push(start_exporting_probe(
        &pid.to_string(),
        grpc,
        TOKEN,
        "explain-node",
        &dir,
    ));
    let api = format!("http://127.0.0.1:{http}");

    // Typical traffic first: the reference the explainer compares with.
    let mut typical = Vec::new();
    for k in 0..6 {
        typical.extend(load(
            &url,
            32,
            TOKENS,
            &dir.join(format!("typical-{k}.jsonl")),
        ));
    }
    wait_stored(&db, &typical);
    queueing(&url, &db, &api, &dir);
    long_prompt_in_batch(&url, &db, &api, &dir);
    drop(children);
    sql(&format!("DROP DATABASE IF EXISTS {db}"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// 64 requests at once on an engine that runs 16: the one that queued longest.
fn queueing(url: &str, db: &str, api: &str, dir: &Path) {
    std::thread::sleep(Duration::from_secs(1));
    let ids = burst(url, 64, 64, &dir.join("burst.jsonl"));
    wait_stored(db, &ids);
    let list = ids
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(",");
    let worst = sql(&format!(
        "SELECT trace_id FROM {db}.requests WHERE trace_id IN ({list}) ORDER BY queue_ns DESC LIMIT 1"
    ));
    let x = explain(api, &worst);
    let first = &x["findings"][0];
    figure(&format!(
        "explain on real vLLM, burst of 64 (16 run at once): the longest-queued request: dominant {}; {}",
        x["dominant"], first["sentence"]
    ));
    assert_eq!(x["dominant"], "queueing", "{x}");
    let sentence = first["sentence"].as_str().unwrap_or_default();
    let ahead: u64 = sentence
        .split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ahead >= 16, "{sentence}");
}

/// One long prompt sent just before eight short requests: the long prompt must be the
/// dominant cause of at least 6 of them (3 attempts).
fn long_prompt_in_batch(url: &str, db: &str, api: &str, dir: &Path) {
    for attempt in 0..3 {
        std::thread::sleep(Duration::from_secs(1));
        // Unique per run and attempt: the prompt starts with it (no prefix-cache hit).
        let tid = format!(
            "{:016x}{:08x}{:08x}",
            0x1_0a0c_0000_u64 + attempt,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let (u, t) = (url.to_string(), tid.clone());
        let long = std::thread::spawn(move || long_prompt(&u, &t, LONG_WORDS));
        let short = burst(url, 8, 8, &dir.join(format!("short-{attempt}.jsonl")));
        assert_eq!(long.join().unwrap(), 200, "the long prompt was refused");
        let mut all = short.clone();
        all.push(tid.clone());
        wait_stored(db, &all);
        let xs: Vec<Value> = short.iter().map(|id| explain(api, id)).collect();
        let causes: Vec<String> = xs
            .iter()
            .map(|x| {
                let f = &x["findings"][0];
                format!(
                    "{} ({:+.1} ms)",
                    f["cause"],
                    f["excess_ms"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        // The long prompt named by a short request's finding (queue: they arrived during its
        // prefill; prefill: they shared its step; decode: its prefill stalled them).
        let named: Vec<&Value> = xs
            .iter()
            .filter_map(|x| {
                x["findings"]
                    .as_array()?
                    .iter()
                    .find(|f| f["cause"] == "long_prompt_in_batch")
            })
            .collect();
        let dominant = xs
            .iter()
            .filter(|x| x["dominant"] == "long_prompt_in_batch")
            .count();
        eprintln!(
            "attempt {attempt}: the long prompt named for {} of 8 short requests, dominant for {dominant}; top causes {causes:?}",
            named.len()
        );
        if dominant >= 6 {
            let f = named.first().expect("named where dominant");
            let sentence = f["sentence"].as_str().unwrap_or_default();
            figure(&format!(
                "explain on real vLLM, a {LONG_WORDS}-word (about {}-token) prompt sent with 8 short ones: named in a finding of {} of 8 short requests, the dominant cause of {dominant} (attempt {}); top causes {causes:?}; {sentence}",
                LONG_WORDS * 3,
                named.len(),
                attempt + 1
            ));
            assert!(sentence.contains(&tid), "{sentence}");
            return;
        }
    }
    panic!("the long prompt was not the dominant cause for 6 of 8 short requests in 3 attempts");
}
