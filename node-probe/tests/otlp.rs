//! OTLP straight from node-probe (no aggregator) into a real OTLP receiver
//! (scripts/otlp_collector.py, on the reference `opentelemetry-proto` and `grpcio` packages), over
//! OTLP/HTTP and over OTLP/gRPC: every request the probe reports arrives once as a SERVER root
//! span in the current HTTP and GenAI conventions, with exactly the figures of the probe's own
//! request record, and the resource carries the node name and the run tag.
#[path = "../../otlp/tests/support/collector.rs"]
mod collector;
mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use collector::{otlp_python, Collector};
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const REQUESTS: usize = 12;

/// Root spans (no parent in the trace) received over `transport`, by trace id.
fn roots(c: &Collector, transport: &str) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    for s in c.spans(transport) {
        if s["kind"] == 2 {
            out.entry(s["trace_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(s);
        }
    }
    out
}

/// `REQUESTS` requests on keep-alive connections: streamed and not, completions and chat.
fn load(port: u16) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    for i in 0..REQUESTS {
        let stream = i % 2 == 0;
        let (path, body) = if i % 3 == 0 {
            (
                "/v1/chat/completions",
                format!(
                    r#"{{"model":"m-{i}","messages":[{{"role":"user","content":"x"}}],"max_tokens":3,"stream":{stream}}}"#
                ),
            )
        } else {
            (
                "/v1/completions",
                format!(r#"{{"model":"m-{i}","prompt":"hi","max_tokens":4,"stream":{stream}}}"#),
            )
        };
        c.write_all(post(path, &body, "").as_bytes()).unwrap();
        assert!(read_response(&mut c).starts_with(b"HTTP/1.1 200"));
    }
}

/// One probe exporting over `protocol` to `endpoint` (kept running: its open batch goes out
/// within `--batch-max-ms`), and the request records it printed.
fn run_probe(
    server_pid: u64,
    port: u16,
    protocol: &str,
    endpoint: &str,
) -> (JsonChild, Vec<Value>) {
    let mut probe = start_probe(&[
        "--pid",
        &server_pid.to_string(),
        "--requests",
        "--node-name",
        "otlp-node",
        "--tag",
        "run=otlp-test",
        "--batch-max-ms",
        "200",
        "--otlp-protocol",
        protocol,
        "--otlp-endpoint",
        endpoint,
    ]);
    load(port);
    let deadline = Instant::now() + T;
    let n = |p: &JsonChild| p.seen.iter().filter(|v| v["kind"] == "request").count();
    while n(&probe) < REQUESTS && Instant::now() < deadline {
        probe.drain_for(Duration::from_millis(200));
    }
    let records = probe
        .seen
        .iter()
        .filter(|v| v["kind"] == "request")
        .cloned()
        .collect();
    (probe, records)
}

/// Each record's root span: once, SERVER, with the record's own figures and names.
fn check(records: &[Value], roots: &HashMap<String, Vec<Value>>, transport: &str) {
    assert_eq!(records.len(), REQUESTS, "{transport}: request records");
    for r in records {
        let id = r["trace_id"].as_str().expect("trace_id");
        let got = roots.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(got.len(), 1, "{transport}: root spans of {id}: {got:?}");
        let (a, res) = (&got[0]["attributes"], &got[0]["resource"]);
        for (k, field) in [
            ("inferscope.e2e_ns", "e2e_ns"),
            ("inferscope.ttft_ns", "ttft_ns"),
            ("http.response.status_code", "status"),
        ] {
            assert_eq!(a[k], r[field], "{transport} {id}: {k}");
        }
        assert_eq!(a["gen_ai.request.model"], r["model"], "{transport} {id}");
        assert_eq!(
            a["gen_ai.response.id"], r["response_id"],
            "{transport} {id}"
        );
        assert_eq!(a["url.path"], r["path"], "{transport} {id}");
        assert_eq!(a["inferscope.stream"], r["stream"], "{transport} {id}");
        assert_eq!(res["host.name"], "otlp-node", "{transport}: {res}");
        assert_eq!(res["run"], "otlp-test", "{transport}: {res}");
    }
}

#[test]
fn requests_go_out_as_otlp_spans_without_an_aggregator() {
    if !bpf_or_skip("requests_go_out_as_otlp_spans_without_an_aggregator") {
        return;
    }
    let Some(python) = otlp_python("") else {
        assert!(
            std::env::var("INFERSCOPE_REQUIRE_BPF").as_deref() != Ok("1"),
            "no Python with opentelemetry-proto and grpcio (set OTLP_PYTHON)"
        );
        eprintln!("SKIPPED: no Python with opentelemetry-proto and grpcio (set OTLP_PYTHON)");
        return;
    };
    let collector = Collector::start(&python);
    let mut srv = start_fixture(
        "openai_server.py",
        &["--port", "0", "--token-delay-ms", "2"],
    );
    let hello = srv.wait_for("server pid/port", T, |v| v.get("port").is_some());
    let (pid, port) = (
        hello["pid"].as_u64().unwrap(),
        hello["port"].as_u64().unwrap() as u16,
    );
    for (protocol, transport, endpoint) in [
        (
            "http/protobuf",
            "http",
            format!("http://127.0.0.1:{}", collector.http),
        ),
        (
            "grpc",
            "grpc",
            format!("http://127.0.0.1:{}", collector.grpc),
        ),
    ] {
        let (_probe, records) = run_probe(pid, port, protocol, &endpoint);
        collector.wait_for(transport, records.len(), |s| s["kind"] == 2);
        check(&records, &roots(&collector, transport), transport);
    }
}
