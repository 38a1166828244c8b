//! The web UI (query-ui/) in a real browser: headless Debian Chromium driven by playwright-core
//! (`query-ui/tests/browser.mjs`) against an aggregator that serves the embedded UI.
//!
//! * `ui_on_the_real_engine`: a fresh database, node-probe exporting from the shared real vLLM,
//!   a bounded load, plus one request whose span attributes, model and `x-request-id` are
//!   hostile markup (sent through the aggregator's gRPC ingest). The browser walks overview →
//!   slowest requests → trace, checks the numbers shown against the API, checks that the hostile
//!   strings render as literal text and never execute, and saves screenshots.
//! * `ui_responsive_with_1m_requests`: a separate database filled server-side with 1 M synthetic
//!   requests; the timeseries and histogram endpoints are checked against direct SQL, and the
//!   browser measures the time until the overview and the requests table are rendered.
//!
//! Screenshots go to `$INFERSCOPE_ARTIFACTS` (default `target/ui-artifacts`). Needs the built UI
//! (`scripts/setup.sh ui`, before building the aggregator), Chromium (`scripts/setup.sh
//! browser`), the local ClickHouse, and for the first test root and the engine env of
//! `scripts/test.sh`. Without them the tests print `SKIPPED …`, or fail when
//! `INFERSCOPE_REQUIRE_BPF=1`.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use inferscope_loadtests::harness::{
    ch_url, free_port, kill, load, repo, skip, sql, start_exporting_probe, wait_count,
};
use inferscope_proto::v1::{
    ack::Status as AckStatus, any_value::Value as Av, ingest_client::IngestClient, AnyValue, Batch,
    EngineStep, KeyValue, Request, Resource, ResourceData, Span,
};
use serde_json::Value;
use tokio_stream::StreamExt;

fn start_aggregator(db: &str, grpc: u16, http: u16, log: &Path) -> Child {
    inferscope_loadtests::harness::start_aggregator(db, grpc, http, TOKEN, Some(log))
}

/// The two tests load the machine (1 M rows, a browser): never at the same time.
static SERIAL: Mutex<()> = Mutex::new(());

const TOKEN: &str = "ui-token";
const HOSTILE_SCRIPT: &str = "<script>window.__xss=1</script>";
const HOSTILE_ATTR: &str = "\"><img src=x onerror=\"window.__xss=2\">";
/// The hostile request's trace id.
const HOSTILE_TRACE: &str = "3c3c3c3c3c3c3c3c3e3e3e3e3e3e3e3e";
/// A request on a (simulated) tensor-parallel GPU engine: three steps the CUDA hooks saw, two
/// of them with collectives lined up across ranks.
const GPU_TRACE: &str = "6770756770756770756770756770752a";
/// A gateway's request and the upstream call it made, traced on two nodes (a hop).
const HOPS_TRACE: &str = "686f7073686f7073686f7073686f7001";
const UPSTREAM_TRACE: &str = "686f7073686f7073686f7073686f7002";

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn chromium() -> PathBuf {
    std::env::var_os("INFERSCOPE_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// What the browser test needs besides the aggregator: Chromium, Node and playwright-core.
fn browser_missing() -> Option<String> {
    if !chromium().exists() {
        return Some(format!(
            "{} not found (scripts/setup.sh browser installs Debian's chromium)",
            chromium().display()
        ));
    }
    let node = Command::new("node").arg("--version").output();
    if !node.map(|o| o.status.success()).unwrap_or(false) {
        return Some("node not found (scripts/setup.sh ui installs it)".into());
    }
    if !repo()
        .join("query-ui/node_modules/playwright-core/package.json")
        .exists()
    {
        return Some("query-ui/node_modules missing (scripts/setup.sh ui runs npm ci)".into());
    }
    None
}

fn artifacts() -> PathBuf {
    let d = std::env::var_os("INFERSCOPE_ARTIFACTS")
        .map_or_else(|| repo().join("target/ui-artifacts"), PathBuf::from);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn http_get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

fn get_json(url: &str) -> Value {
    let (code, body) = http_get(url);
    assert_eq!(code, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The aggregator serves the built UI at `/` (not the "not built" page).
fn ui_built(http: u16) -> bool {
    let (code, body) = http_get(&format!("http://127.0.0.1:{http}/"));
    code == 200 && body.contains("<div id=\"app\"")
}

/// Runs the browser script; prints its output; returns whether it passed.
fn browser(http: u16, args: &[&str]) -> bool {
    let out = Command::new("node")
        .arg(repo().join("query-ui/tests/browser.mjs"))
        .args(["--base", &format!("http://127.0.0.1:{http}"), "--out"])
        .arg(artifacts())
        .args(["--chromium"])
        .arg(chromium())
        .args(args)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("node");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        eprintln!("browser.mjs stderr: {err}");
    }
    out.status.success()
}

fn kv(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Av::StringValue(v.into())),
        }),
    }
}

/// One request whose model, path, `x-request-id` and span attributes are hostile markup, stored
/// through the aggregator's gRPC ingest like a node-probe's.
fn ingest_hostile(grpc: u16) {
    let trace: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&HOSTILE_TRACE[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let start = now - 2_000_000_000;
    let e2e = 12_000_000;
    let root = vec![1, 2, 3, 4, 5, 6, 7, 8];
    let span = |id: u8, parent: &[u8], name: &str, off: u64, dur: u64, attrs: Vec<KeyValue>| Span {
        trace_id: trace.clone(),
        span_id: vec![9, 9, 9, 9, 9, 9, 9, id],
        parent_span_id: parent.to_vec(),
        name: name.into(),
        start_unix_ns: start + off,
        end_unix_ns: start + off + dur,
        attributes: attrs,
        ..Default::default()
    };
    let mut root_span = span(
        0,
        &[],
        "http.server",
        0,
        e2e,
        vec![
            kv("http.method", "POST"),
            kv("http.target", &format!("/v1/completions?q={HOSTILE_ATTR}")),
            kv("http.status_code", "200"),
            kv("gen_ai.request.model", HOSTILE_SCRIPT),
            kv("prompt", HOSTILE_SCRIPT),
            kv("note", HOSTILE_ATTR),
        ],
    );
    root_span.span_id = root.clone();
    let spans = vec![
        root_span,
        span(
            1,
            &root,
            "frontend",
            0,
            2_000_000,
            vec![kv("user", HOSTILE_ATTR)],
        ),
        span(2, &root, "stream_out", 10_000_000, 2_000_000, vec![]),
    ];
    let request = Request {
        trace_id: trace.clone(),
        method: "POST".into(),
        path: format!("/v1/completions?q={HOSTILE_ATTR}"),
        status: 200,
        outcome: "complete".into(),
        model: HOSTILE_SCRIPT.into(),
        stream: true,
        start_unix_ns: start,
        end_unix_ns: start + e2e,
        e2e_ns: e2e,
        ttft_ns: 10_000_000,
        frontend_ns: Some(2_000_000),
        x_request_id: HOSTILE_ATTR.into(),
        tenant: HOSTILE_SCRIPT.into(),
        chunks: 2,
        chunk_offsets_ns: vec![10_000_000, 11_000_000],
        ..Default::default()
    };
    let batch = Batch {
        node_id: "hostile-node".into(),
        boot_id: format!("hostile-{now}"),
        sequence: 1,
        resend: false,
        resources: vec![ResourceData {
            resource: Some(Resource {
                node: "hostile-node".into(),
                pid: 4242,
                engine: "openai-compatible".into(),
                ..Default::default()
            }),
            requests: vec![request],
            spans,
            steps: vec![],
        }],
    };
    send_batch(grpc, batch);
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// One request on a tensor-parallel GPU engine, as node-probe would send it: three engine
/// steps with their GPU side (the last host-bound), the first two with collectives whose
/// straggler is rank 1, and the request's GPU time, CPU-bound time, collective wait and
/// straggler.
fn ingest_gpu(grpc: u16) {
    let trace = hex_bytes(GPU_TRACE);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let start = now - 3_000_000_000;
    let ms = 1_000_000u64;
    let root = vec![7, 7, 7, 7, 7, 7, 7, 1];
    let steps: Vec<EngineStep> = (0..3u64)
        .map(|k| EngineStep {
            step_id: 5_000 + k,
            engine_instance: "77:1".into(),
            start_unix_ns: start + (2 + 10 * k) * ms,
            end_unix_ns: start + (11 + 10 * k) * ms,
            batch_size: 2,
            trace_id: vec![0x70; 15].into_iter().chain([k as u8 + 1]).collect(),
            span_id: vec![0x71, 0x71, 0x71, 0x71, 0x71, 0x71, 0x71, k as u8 + 1],
            batch_unit: "requests".into(),
            tokens: 40,
            gpu_class: if k == 0 { "piecewise" } else { "full_graph" }.into(),
            gpu_ns: Some((6 + k) * ms),
            gpu_launch_ns: ms / 2,
            graph_launches: 1,
            kernel_launches: 3,
            dtoh_bytes: 16,
            sync_wait_ns: 5 * ms,
            host_bound: k == 2,
            gpu_ranks: 2,
            collectives: (k < 2).then_some(4),
            collective_wait_ns: if k < 2 { 3 * ms } else { 0 },
            straggler_rank: (k < 2).then_some(1),
            straggler_lag_ns: if k < 2 { 2 * ms } else { 0 },
            ..Default::default()
        })
        .collect();
    let mut root_span = Span {
        trace_id: trace.clone(),
        span_id: root.clone(),
        name: "http.server".into(),
        start_unix_ns: start,
        end_unix_ns: start + 32 * ms,
        attributes: vec![kv("http.method", "POST"), kv("http.status_code", "200")],
        ..Default::default()
    };
    root_span.links = steps
        .iter()
        .map(|s| inferscope_proto::v1::SpanLink {
            trace_id: s.trace_id.clone(),
            span_id: s.span_id.clone(),
            attributes: vec![kv("engine.step_id", &s.step_id.to_string())],
        })
        .collect();
    let request = Request {
        trace_id: trace,
        method: "POST".into(),
        path: "/v1/completions".into(),
        status: 200,
        outcome: "complete".into(),
        model: "tp-gpu-model".into(),
        stream: true,
        start_unix_ns: start,
        end_unix_ns: start + 32 * ms,
        e2e_ns: 32 * ms,
        ttft_ns: 12 * ms,
        step_ids: steps.iter().map(|s| s.step_id).collect(),
        engine_steps: 3,
        engine_instance: "77:1".into(),
        gpu_ns: Some(21 * ms),
        gpu_cost_ns: Some(10 * ms),
        gpu_host_bound_ns: Some(9 * ms),
        gpu_upper_bound_steps: Some(1),
        collectives: Some(8),
        collective_wait_ns: Some(6 * ms),
        straggler_rank: Some(1),
        straggler_lag_ns: Some(4 * ms),
        ..Default::default()
    };
    send_batch(
        grpc,
        Batch {
            node_id: "gpu-node".into(),
            boot_id: format!("gpu-{now}"),
            sequence: 1,
            resend: false,
            resources: vec![ResourceData {
                resource: Some(Resource {
                    node: "gpu-node".into(),
                    pid: 77,
                    engine: "vllm".into(),
                    ..Default::default()
                }),
                requests: vec![request],
                spans: vec![root_span],
                steps,
            }],
        },
    );
}

/// A gateway's request on node `gw-node` with its upstream call (`http.client`, linked by
/// header) and the upstream's request on node `up-node` (30 ms of the 36 ms call, starting 1 ms
/// before the call on its own clock: that clock is between 7 and 1 ms behind): the two halves
/// of one hop, as two node-probes would send them.
fn ingest_hops(grpc: u16) {
    let ms = 1_000_000u64;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let t0 = now - 2_000_000_000;
    let (req_seq, resp_seq) = (1_000, 2_000);
    let hop = inferscope_api::hop_id(req_seq, Some(resp_seq));
    let one = |node: &str, trace: &str, root: u8, (start, e2e): (u64, u64), extra: Vec<Span>| {
        let tid = hex_bytes(trace);
        let mut spans = vec![Span {
            trace_id: tid.clone(),
            span_id: vec![root; 8],
            name: "http.server".into(),
            start_unix_ns: start,
            end_unix_ns: start + e2e,
            ..Default::default()
        }];
        spans.extend(extra);
        let upstream = node == "up-node";
        Batch {
            node_id: node.into(),
            boot_id: format!("{node}-{now}"),
            sequence: 1,
            resend: false,
            resources: vec![ResourceData {
                resource: Some(Resource {
                    node: node.into(),
                    pid: if upstream { 81 } else { 80 },
                    engine: "openai-compatible".into(),
                    ..Default::default()
                }),
                requests: vec![Request {
                    trace_id: tid,
                    method: "POST".into(),
                    path: "/v1/completions".into(),
                    status: 200,
                    outcome: "complete".into(),
                    model: "hop-model".into(),
                    start_unix_ns: start,
                    end_unix_ns: start + e2e,
                    e2e_ns: e2e,
                    ttft_ns: e2e / 2,
                    req_tcp_seq: upstream.then_some(req_seq),
                    resp_tcp_seq: upstream.then_some(resp_seq),
                    ..Default::default()
                }],
                spans,
                steps: vec![],
            }],
        }
    };
    let call = Span {
        trace_id: hex_bytes(HOPS_TRACE),
        span_id: hop.to_bytes().to_vec(),
        parent_span_id: vec![0x61; 8],
        name: "http.client".into(),
        start_unix_ns: t0 + 2 * ms,
        end_unix_ns: t0 + 38 * ms,
        attributes: vec![
            kv("inferscope.hop.link", "header"),
            kv("server.port", "9000"),
        ],
        ..Default::default()
    };
    send_batch(
        grpc,
        one("gw-node", HOPS_TRACE, 0x61, (t0, 40 * ms), vec![call]),
    );
    send_batch(
        grpc,
        one("up-node", UPSTREAM_TRACE, 0x62, (t0 + ms, 30 * ms), vec![]),
    );
}

/// Sends one batch over gRPC and waits for its ack (stored).
fn send_batch(grpc: u16, batch: Batch) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = IngestClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .expect("connect to the aggregator's gRPC");
        let mut req = tonic::Request::new(tokio_stream::iter(vec![batch]));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let mut acks = client.export(req).await.expect("export").into_inner();
        let ack = tokio::time::timeout(Duration::from_secs(30), acks.next())
            .await
            .expect("ack in time")
            .expect("an ack")
            .expect("ack ok");
        assert_eq!(ack.status, AckStatus::Stored as i32, "batch: {ack:?}");
    });
}

#[test]
fn ui_on_the_real_engine() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const TEST: &str = "ui_on_the_real_engine";
    let (Ok(url), Ok(pid)) = (
        std::env::var("INFERSCOPE_ENGINE_URL"),
        std::env::var("INFERSCOPE_ENGINE_PID"),
    ) else {
        skip(
            TEST,
            "the engine env (INFERSCOPE_ENGINE_URL/PID) is missing: run through scripts/test.sh as root",
        );
        return;
    };
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        skip(TEST, "node-probe needs root");
        return;
    }
    if sql("SELECT 1") != "1" {
        skip(TEST, &format!("ClickHouse not reachable at {}", ch_url()));
        return;
    }
    if let Some(why) = browser_missing() {
        skip(TEST, &why);
        return;
    }
    let db = format!("test_ui_{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("inferscope-ui-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut agg = start_aggregator(&db, grpc, http, &dir.join("aggregator.log"));
    let run = || -> Result<(), String> {
        if !ui_built(http) {
            return Err(
                "the aggregator serves no UI: run scripts/setup.sh ui, then rebuild".into(),
            );
        }
        let mut probe = start_exporting_probe(&pid, grpc, TOKEN, "ui-node", &dir);
        load(&url, 40, 16, &dir.join("load.jsonl"));
        let n = wait_count(&db, 40, Duration::from_secs(60));
        kill(&mut probe, libc::SIGTERM);
        if n < 40 {
            return Err(format!("only {n} of 40 requests stored"));
        }
        ingest_hostile(grpc);
        ingest_gpu(grpc);
        ingest_hops(grpc);
        if wait_count(&db, 44, Duration::from_secs(30)) < 44 {
            return Err("the hostile, GPU or hop requests were not stored".into());
        }
        let from: u64 = sql(&format!(
            "SELECT toUnixTimestamp(min(start)) - 1 FROM {db}.requests"
        ))
        .parse()
        .unwrap();
        let to: u64 = sql(&format!(
            "SELECT toUnixTimestamp(max(start)) + 2 FROM {db}.requests"
        ))
        .parse()
        .unwrap();
        let ok = browser(
            http,
            &[
                "--from",
                &from.to_string(),
                "--to",
                &to.to_string(),
                "--hostile",
                HOSTILE_TRACE,
                "--gpu",
                GPU_TRACE,
                "--hops",
                HOPS_TRACE,
                "--compare-model",
                "tiny-llm",
            ],
        );
        if !ok {
            return Err("browser checks failed (see the output above)".into());
        }
        eprintln!("screenshots in {}", artifacts().display());
        Ok(())
    };
    finish(TEST, run(), &mut agg, &db, &dir);
}

/// Rows of synthetic requests: 1 M over the 3000 s before `base_s`, 4 nodes, 3 models.
fn fill_synthetic(db: &str, n: u64, base_s: u64) {
    let q = format!(
        "INSERT INTO {db}.requests (start, start_unix_ns, end_unix_ns, trace_id, node, pid, engine, model, method, \
         path, status, outcome, stream, e2e_ns, ttft_ns, tpot_ns, frontend_ns, queue_ns, prefill_ns, decode_ns, \
         delivery_ns, chunks, engine_steps) \
         SELECT toDateTime(intDiv(s, 1000000000)), s, s + e2e, lower(hex(sipHash128(toString(number)))), \
         concat('node-', toString(number % 4)), 1, 'vllm', concat('model-', toString(number % 3)), 'POST', \
         '/v1/completions', if(number % 200 = 0, 503, 200), 'complete', 1, e2e, \
         10000000 + (number * 104729) % 90000000, if(number % 10 = 0, NULL, 4000000 + (number * 7) % 4000000), \
         2000000 + number % 3000000, (number * 31) % 50000000 + if(number % 100 = 0, 400000000, 0), \
         3000000 + number % 7000000, 30000000 + (number * 13) % 300000000, 1000000 + number % 2000000, 32, 32 \
         FROM (SELECT number, ({start}) * 1000000000 + number * {step_ns} AS s, \
         50000000 + (number * 7919) % 400000000 + if(number % 100 = 0, 400000000, 0) AS e2e \
         FROM system.numbers LIMIT {n})",
        start = base_s - 3000,
        step_ns = 3_000_000_000_000 / n,
    );
    let out = sql(&q);
    assert!(out.is_empty(), "fill failed: {out}");
}

#[test]
fn ui_responsive_with_1m_requests() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const TEST: &str = "ui_responsive_with_1m_requests";
    if sql("SELECT 1") != "1" {
        skip(TEST, &format!("ClickHouse not reachable at {}", ch_url()));
        return;
    }
    if let Some(why) = browser_missing() {
        skip(TEST, &why);
        return;
    }
    let n: u64 = std::env::var("INFERSCOPE_UI_PERF_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let bound_ms = std::env::var("INFERSCOPE_UI_BOUND_MS").unwrap_or_else(|_| "5000".into());
    let db = format!("test_ui_perf_{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("inferscope-ui-perf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut agg = start_aggregator(&db, grpc, http, &dir.join("aggregator.log"));
    let run = || -> Result<(), String> {
        if !ui_built(http) {
            return Err(
                "the aggregator serves no UI: run scripts/setup.sh ui, then rebuild".into(),
            );
        }
        let base = now_s();
        let t = Instant::now();
        fill_synthetic(&db, n, base);
        let stored: u64 = sql(&format!("SELECT count() FROM {db}.requests"))
            .parse()
            .unwrap_or(0);
        eprintln!(
            "filled {stored} synthetic requests in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        if stored != n {
            return Err(format!("stored {stored} of {n} rows"));
        }
        let (from, to) = (base - 3600, base + 60);
        let api = format!("http://127.0.0.1:{http}/api/v1");

        // Timeseries against SQL: every bucket's count, and one bucket's quantiles.
        let ts = get_json(&format!("{api}/timeseries?from={from}&to={to}&step_s=300"));
        let buckets = ts["buckets"].as_array().unwrap();
        let total: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        if total != n {
            return Err(format!("timeseries counted {total} of {n}"));
        }
        let busy = buckets
            .iter()
            .find(|b| b["count"].as_u64().unwrap() > 1000)
            .unwrap();
        let t0 = busy["start_unix_s"].as_u64().unwrap();
        let want = sql(&format!(
            "SELECT count(), arrayStringConcat(arrayMap(x -> toString(x), quantilesExact(0.5, 0.9, 0.99)(e2e_ns)), ',') \
             FROM {db}.requests WHERE start >= toDateTime({t0}) AND start < toDateTime({t0} + 300)"
        ));
        let (cnt, qs) = want.split_once('\t').unwrap();
        let want_q: Vec<f64> = qs
            .split(',')
            .map(|x| x.parse::<f64>().unwrap() / 1e6)
            .collect();
        let got_q: Vec<f64> = busy["e2e_ms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        if busy["count"].as_u64().unwrap().to_string() != cnt
            || got_q.iter().zip(&want_q).any(|(g, w)| (g - w).abs() > 1e-6)
        {
            return Err(format!(
                "timeseries bucket {t0}: {busy} vs SQL count {cnt}, e2e {want_q:?}"
            ));
        }
        eprintln!(
            "timeseries: {} buckets of 300 s agree with SQL",
            buckets.len()
        );

        // Histogram against SQL: the total and one bucket's count.
        let hist = get_json(&format!(
            "{api}/histogram?from={from}&to={to}&metric=e2e&scale=linear&buckets=20"
        ));
        let hb = hist["buckets"].as_array().unwrap();
        let hsum: u64 = hb.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        let b3 = &hb[3];
        let (lo, hi) = (
            (b3["lo_ms"].as_f64().unwrap() * 1e6).round() as u64,
            (b3["hi_ms"].as_f64().unwrap() * 1e6).round() as u64,
        );
        let direct: u64 = sql(&format!(
            "SELECT count() FROM {db}.requests WHERE e2e_ns >= {lo} AND e2e_ns < {hi}"
        ))
        .parse()
        .unwrap();
        let got = b3["count"].as_u64().unwrap();
        // Edges are rounded to whole ns here: allow the values that sit exactly on them.
        if hsum != n || got.abs_diff(direct) > 2 {
            return Err(format!(
                "histogram: sum {hsum} of {n}, bucket 3 {got} vs SQL {direct}"
            ));
        }
        eprintln!("histogram: 20 linear buckets agree with SQL");

        let ok = browser(
            http,
            &[
                "--perf",
                "--from",
                &from.to_string(),
                "--to",
                &to.to_string(),
                "--bound-ms",
                &bound_ms,
            ],
        );
        if !ok {
            return Err("browser responsiveness checks failed (see the output above)".into());
        }
        Ok(())
    };
    finish(TEST, run(), &mut agg, &db, &dir);
}

/// Stops the aggregator, drops the test database, and removes the work folder on success or
/// fails the test naming the aggregator's log.
fn finish(test: &str, res: Result<(), String>, agg: &mut Child, db: &str, dir: &Path) {
    kill(agg, libc::SIGTERM);
    sql(&format!("DROP DATABASE IF EXISTS {db}"));
    match res {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(dir);
        }
        Err(e) => panic!(
            "{test}: {e} (aggregator log: {})",
            dir.join("aggregator.log").display()
        ),
    }
}
