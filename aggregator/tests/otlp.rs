//! OTLP export against a real OTLP receiver (scripts/otlp_collector.py, on the reference
//! `opentelemetry-proto` and `grpcio` packages), over gRPC and over HTTP: every stored span is
//! exported once, a resent batch adds nothing, and the request roots carry exactly the figures
//! of the `requests` table and of the `/metrics` histograms. A collector that is down costs
//! spans (counted), never ingest.
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use inferscope_aggregator::otlp::{OtlpConfig, Protocol};
use inferscope_aggregator::store::rows::RequestRow;
use inferscope_proto::v1::{
    ack::Status as AckStatus, any_value, AnyValue, Batch, Endpoint, EngineStep, KeyValue, Span,
    SpanEvent, SpanLink,
};
use serde_json::Value;

mod common;
use common::ingest::*;
#[path = "../../otlp/tests/support/collector.rs"]
mod collector;
use collector::{otlp_python, Collector};

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
    }
}

const STEPS: u64 = 3;

fn step(k: u64, at: u64) -> EngineStep {
    let mut trace_id = vec![0xee; 16];
    trace_id[8..].copy_from_slice(&k.to_be_bytes());
    EngineStep {
        step_id: k,
        engine_instance: "11:22".into(),
        start_unix_ns: at,
        end_unix_ns: at + 1_000,
        batch_size: 2,
        trace_id,
        span_id: (k + 1).to_be_bytes().to_vec(),
        batch_unit: "tokens".into(),
        ..Default::default()
    }
}

/// `n` requests with varied figures, each root with a `queue` child (one event) and a link to
/// one of [`STEPS`] engine steps, which every batch carries again.
fn rich_batch(seq: u64, n: usize) -> Batch {
    let mut b = batch(seq, n, 9);
    let rd = &mut b.resources[0];
    rd.resource.as_mut().unwrap().attributes =
        vec![kv("cluster", any_value::Value::StringValue("east".into()))];
    let at = rd.requests[0].start_unix_ns;
    rd.steps = (0..STEPS).map(|k| step(k, at)).collect();
    let mut children = Vec::new();
    for (i, (r, s)) in rd.requests.iter_mut().zip(&mut rd.spans).enumerate() {
        let i = i as u64 + seq * 100;
        r.model = if i.is_multiple_of(3) { "m-a" } else { "m-b" }.into();
        r.path = if i.is_multiple_of(2) {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        }
        .into();
        r.stream = i.is_multiple_of(2);
        r.status = if i % 10 == 9 { 503 } else { 200 };
        r.ttft_ns = 1_000_000 + i * 7_300_000 % 900_000_000;
        r.e2e_ns = r.ttft_ns + i * 1_100_000;
        r.start_unix_ns = r.end_unix_ns - r.e2e_ns;
        r.tpot_ns = r.stream.then_some(5_000_000 + i * 900_000);
        if r.stream {
            r.engine_output_offsets_ns =
                vec![r.ttft_ns, r.ttft_ns + 3_000_000 + i, r.ttft_ns + 9_000_000];
        }
        r.queue_ns = (!i.is_multiple_of(4)).then_some(i * 2_000);
        r.req_bytes = 100 + i;
        r.resp_bytes = 1_000 + i;
        r.chunks = i as u32;
        r.x_request_id = format!("xr-{i}");
        r.response_id = format!("cmpl-{i}");
        r.engine_request_id = format!("cmpl-{i}-0");
        r.engine_instance = "11:22".into();
        r.tenant = if i.is_multiple_of(2) {
            "acme".into()
        } else {
            String::new()
        };
        // Usage as servers report it: non-streamed bodies, some streams.
        if !r.stream || i.is_multiple_of(4) {
            r.prompt_tokens = Some(5 + i as u32 % 7);
            r.completion_tokens = Some(i as u32);
        }
        r.client_endpoint = Some(Endpoint {
            ip: vec![127, 0, 0, 1],
            port: 40_000 + i as u32,
            netns: 0,
        });
        r.server_endpoint = Some(Endpoint {
            ip: std::net::Ipv6Addr::LOCALHOST.octets().to_vec(),
            port: 8000,
            netns: 0,
        });
        s.start_unix_ns = r.start_unix_ns;
        s.attributes = vec![
            kv("http.method", any_value::Value::StringValue("POST".into())),
            kv(
                "http.status_code",
                any_value::Value::IntValue(r.status.into()),
            ),
        ];
        let st = step(i % STEPS, at);
        s.links = vec![SpanLink {
            trace_id: st.trace_id,
            span_id: st.span_id,
            attributes: vec![kv(
                "engine.step_id",
                any_value::Value::IntValue(st.step_id as i64),
            )],
        }];
        children.push(Span {
            trace_id: r.trace_id.clone(),
            span_id: vec![8; 8],
            parent_span_id: s.span_id.clone(),
            name: "queue".into(),
            start_unix_ns: r.start_unix_ns,
            end_unix_ns: r.start_unix_ns + 1_000,
            attributes: vec![kv("queue.position", any_value::Value::IntValue(3))],
            events: vec![SpanEvent {
                name: "scheduled".into(),
                time_unix_ns: r.start_unix_ns + 500,
                attributes: Vec::new(),
            }],
            links: Vec::new(),
        });
    }
    rd.spans.extend(children);
    b
}

async fn stored_rows(db: &str) -> Vec<RequestRow> {
    clickhouse::Client::default()
        .with_url(ch_url())
        .with_database(db)
        .with_validation(false)
        .query("SELECT ?fields FROM requests")
        .fetch_all::<RequestRow>()
        .await
        .expect("requests rows")
}

/// The attributes a root must carry for its stored row, exactly.
fn expected_attributes(r: &RequestRow) -> BTreeMap<String, Value> {
    let mut e: BTreeMap<String, Value> = BTreeMap::new();
    let mut put = |k: &str, v: Value| {
        e.insert(k.to_string(), v);
    };
    put("http.request.method", r.method.clone().into());
    put("url.path", r.path.clone().into());
    put("http.response.status_code", r.status.into());
    put("gen_ai.request.model", r.model.clone().into());
    put("gen_ai.response.id", r.response_id.clone().into());
    put(
        "http.request.header.x-request-id",
        vec![r.x_request_id.clone()].into(),
    );
    put(
        "inferscope.engine.request_id",
        r.engine_request_id.clone().into(),
    );
    put(
        "inferscope.engine.instance",
        r.engine_instance.clone().into(),
    );
    put("inferscope.outcome", r.outcome.clone().into());
    if !r.tenant.is_empty() {
        put("inferscope.tenant", r.tenant.clone().into());
    }
    if r.stream != 0 {
        put(
            "gen_ai.response.time_to_first_chunk",
            (r.ttft_ns as f64 / 1e9).into(),
        );
    }
    for (k, v) in [
        ("gen_ai.usage.input_tokens", r.prompt_tokens),
        ("gen_ai.usage.output_tokens", r.completion_tokens),
    ] {
        if let Some(v) = v {
            put(k, i64::from(v).into());
        }
    }
    put("client.address", r.client_ip.clone().into());
    put("client.port", r.client_port.into());
    put("server.address", r.server_ip.clone().into());
    put("server.port", r.server_port.into());
    put("inferscope.stream", (r.stream != 0).into());
    for (k, v) in [
        ("e2e_ns", r.e2e_ns),
        ("ttft_ns", r.ttft_ns),
        ("max_gap_ns", r.max_gap_ns),
        ("read_wait_ns", r.read_wait_ns),
        ("request.bytes", r.req_bytes),
        ("response.bytes", r.resp_bytes),
        ("response.chunks", r.chunks.into()),
        ("engine.steps", r.engine_steps.into()),
    ] {
        put(&format!("inferscope.{k}"), v.into());
    }
    for (k, v) in [
        ("tpot_ns", r.tpot_ns),
        ("first_text_ns", r.first_text_ns),
        ("phase.frontend_ns", r.frontend_ns),
        ("phase.queue_ns", r.queue_ns),
        ("phase.prefill_ns", r.prefill_ns),
        ("phase.decode_ns", r.decode_ns),
        ("phase.delivery_ns", r.delivery_ns),
        ("engine.ttft_ns", r.engine_ttft_ns),
        ("engine.e2e_ns", r.engine_e2e_ns),
        ("engine.tpot_ns", r.engine_tpot_ns),
        ("engine.max_gap_ns", r.engine_max_gap_ns),
    ] {
        if let Some(v) = v {
            put(&format!("inferscope.{k}"), v.into());
        }
    }
    let op = if r.path == "/v1/chat/completions" {
        "chat"
    } else {
        "text_completion"
    };
    put("gen_ai.operation.name", op.into());
    e
}

/// Each stored request has one SERVER root with its row's figures, status and resource.
fn check_roots(rows: &[RequestRow], spans: &[Value]) {
    let roots: HashMap<&str, &Value> = spans
        .iter()
        .filter(|s| s["kind"] == 2)
        .map(|s| (s["trace_id"].as_str().unwrap(), s))
        .collect();
    assert_eq!(roots.len(), rows.len(), "one SERVER span per request");
    assert!(
        rows.iter().any(|r| r.prompt_tokens.is_some()),
        "usage stored"
    );
    for r in rows {
        let s = roots[r.trace_id.as_str()];
        let got: BTreeMap<String, Value> = serde_json::from_value(s["attributes"].clone()).unwrap();
        assert_eq!(got, expected_attributes(r), "root of {}", r.trace_id);
        let op = got["gen_ai.operation.name"].as_str().unwrap();
        assert_eq!(s["name"], format!("{op} {}", r.model));
        assert_eq!(s["start_unix_ns"], r.start_unix_ns);
        assert_eq!(s["end_unix_ns"], r.end_unix_ns);
        let error = if r.status >= 500 { 2 } else { 0 };
        assert_eq!(s["status"]["code"], error, "{}", r.status);
        assert_eq!(s["links"].as_array().unwrap().len(), 1);
        assert_eq!(s["resource"]["service.name"], "vllm");
        assert_eq!(s["resource"]["host.name"], r.node);
        assert_eq!(s["resource"]["cluster"], "east");
        assert_eq!(s["scope"], "inferscope");
    }
}

/// Children keep their parent, attributes and events; steps go once each.
fn check_children_and_steps(rows: &[RequestRow], spans: &[Value]) {
    let queue: Vec<&Value> = spans.iter().filter(|s| s["name"] == "queue").collect();
    assert_eq!(queue.len(), rows.len());
    for q in &queue {
        assert_eq!(q["kind"], 1);
        assert_eq!(q["parent_span_id"], "0707070707070707");
        assert_eq!(q["attributes"]["queue.position"], 3);
        assert_eq!(q["events"][0]["name"], "scheduled");
    }
    let steps: Vec<&Value> = spans
        .iter()
        .filter(|s| s["name"] == "engine.step")
        .collect();
    assert_eq!(
        steps.len() as u64,
        STEPS,
        "each step once, though every batch carries it"
    );
    for s in steps {
        assert_eq!(s["attributes"]["inferscope.step.batch_unit"], "tokens");
        assert_eq!(s["attributes"]["inferscope.step.batch_size"], 2);
    }
}

/// Per model: count and sum of E2E and of TTFT (streamed 2xx) on `/metrics` equal those of
/// the exported roots.
fn check_histograms(python: &str, metrics: &str, spans: &[Value]) {
    let prom = parse_with_prometheus_client(python, metrics);
    let mut per_model: BTreeMap<String, [f64; 4]> = BTreeMap::new();
    for s in spans.iter().filter(|s| s["kind"] == 2) {
        let a = &s["attributes"];
        let m = per_model
            .entry(a["gen_ai.request.model"].as_str().unwrap().to_string())
            .or_default();
        m[0] += 1.0;
        m[1] += a["inferscope.e2e_ns"].as_f64().unwrap() / 1e9;
        let code = a["http.response.status_code"].as_u64().unwrap();
        if a["inferscope.stream"] == true && (200..300).contains(&code) {
            m[2] += 1.0;
            m[3] += a["inferscope.ttft_ns"].as_f64().unwrap() / 1e9;
        }
    }
    for (model, [n, e2e, ttft_n, ttft]) in per_model {
        let key =
            |name: &str| format!("{name}{{engine=vllm,gen_ai_request_model={model},node=node-a}}");
        let got = |name: &str| {
            *prom
                .get(&key(name))
                .unwrap_or_else(|| panic!("{}", key(name)))
        };
        assert_eq!(got("gen_ai_server_request_duration_seconds_count"), n);
        assert!((got("gen_ai_server_request_duration_seconds_sum") - e2e).abs() < 1e-6);
        assert_eq!(
            got("gen_ai_server_time_to_first_token_seconds_count"),
            ttft_n
        );
        assert!((got("gen_ai_server_time_to_first_token_seconds_sum") - ttft).abs() < 1e-6);
    }
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in /metrics"))
}

async fn export_through(c: &Collector, python: &str, protocol: Protocol) {
    let (url, transport) = match protocol {
        Protocol::Grpc => (format!("http://127.0.0.1:{}", c.grpc), "grpc"),
        Protocol::HttpProtobuf => (format!("http://127.0.0.1:{}", c.http), "http"),
    };
    let agg = Agg::start_with(&format!("otlp_{transport}"), |cfg| {
        cfg.otlp = Some(OtlpConfig::new(url, protocol));
    })
    .await;
    let (b1, b2) = (rich_batch(1, 30), rich_batch(2, 30));
    send_twice(agg.grpc, b1).await;
    send_twice(agg.grpc, b2).await;
    let rows = stored_rows(&agg.db).await;
    assert_eq!(rows.len(), 60);
    // 60 roots, 60 children, each step once.
    let want = 120 + STEPS as usize;
    let spans = c.wait_for(transport, want, |_| true);
    assert_eq!(spans.len(), want, "exported once each, resends not again");
    check_roots(&rows, &spans);
    check_children_and_steps(&rows, &spans);
    let text = ureq_get(&format!("http://{}/metrics", agg.http));
    check_histograms(python, &text, &spans);
    assert_eq!(
        metric(&text, "inferscope_otlp_spans_exported_total "),
        want as f64
    );
    assert_eq!(
        metric(&text, "inferscope_otlp_steps_deduplicated_total "),
        STEPS as f64
    );
    for reason in ["queue_full", "export_failed"] {
        let l = format!("inferscope_otlp_spans_dropped_total{{reason=\"{reason}\"}} ");
        assert_eq!(metric(&text, &l), 0.0);
    }
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_what_clickhouse_stores_over_grpc_and_http() {
    if !ch_available() {
        return;
    }
    let Some(python) = otlp_python("prometheus_client") else {
        assert!(
            std::env::var("INFERSCOPE_REQUIRE_BPF").as_deref() != Ok("1"),
            "no Python with opentelemetry-proto, grpcio and prometheus_client (set OTLP_PYTHON)"
        );
        eprintln!("SKIPPED: no Python with opentelemetry-proto and grpcio (set OTLP_PYTHON)");
        return;
    };
    let c = Collector::start(&python);
    export_through(&c, &python, Protocol::Grpc).await;
    export_through(&c, &python, Protocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_spans_not_ingest() {
    if !ch_available() {
        return;
    }
    let closed = free_addr();
    let agg = Agg::start_with("otlp_down", |cfg| {
        let mut o = OtlpConfig::new(format!("http://{closed}"), Protocol::Grpc);
        o.timeout = Duration::from_secs(1);
        cfg.otlp = Some(o);
    })
    .await;
    let acks = send(agg.grpc, Some("s3cret"), vec![rich_batch(1, 10)])
        .await
        .unwrap();
    assert_eq!(acks[0].status, AckStatus::Stored as i32, "{acks:?}");
    assert_eq!(count(&agg.db, "requests").await, 10);
    let t = Instant::now();
    let line = "inferscope_otlp_spans_dropped_total{reason=\"export_failed\"} ";
    let mut dropped = 0.0;
    while dropped == 0.0 && t.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        dropped = metric(&ureq_get(&format!("http://{}/metrics", agg.http)), line);
    }
    assert_eq!(
        dropped,
        20.0 + STEPS as f64,
        "every span of the batch counted as dropped"
    );
    agg.stop().await;
}
