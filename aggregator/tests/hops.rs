//! Hops across nodes, through ingest: a gateway node's request with its `http.client` span and
//! the upstream node's request with the same TCP sequence numbers are joined by hop id in
//! `hops`, whichever half is stored first and through whichever aggregator replica; the trace
//! API lists the hop on both traces and, with `follow=hops`, shows one waterfall across both
//! nodes with the upstream's root under the caller's span.
use inferscope_api::hop_id;
use inferscope_proto::v1::ack::Status as AckStatus;
use inferscope_proto::v1::{
    any_value, AnyValue, Batch, KeyValue, Request, Resource, ResourceData, Span,
};
use serde_json::Value;

mod common;
use common::ingest::*;

const SEQ: (u32, u32) = (70_000, 4_000_000_000);

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    }
}

/// One node's batch: a request of `trace` (root span `root`) served by `pid`, and the extra
/// spans given.
fn half(
    node: &str,
    (trace, root): ([u8; 16], [u8; 8]),
    (start, e2e): (u64, u64),
    req: Request,
    extra: Vec<Span>,
) -> Batch {
    let mut spans = vec![Span {
        trace_id: trace.to_vec(),
        span_id: root.to_vec(),
        name: "http.server".into(),
        start_unix_ns: start,
        end_unix_ns: start + e2e,
        ..Default::default()
    }];
    spans.extend(extra);
    Batch {
        node_id: node.into(),
        boot_id: format!("boot-{node}"),
        sequence: 1,
        resend: false,
        resources: vec![ResourceData {
            resource: Some(Resource {
                node: node.into(),
                pid: if node == "gw" { 100 } else { 200 },
                engine: "openai-compatible".into(),
                ..Default::default()
            }),
            requests: vec![Request {
                trace_id: trace.to_vec(),
                method: "POST".into(),
                path: "/v1/completions".into(),
                status: 200,
                outcome: "complete".into(),
                start_unix_ns: start,
                end_unix_ns: start + e2e,
                e2e_ns: e2e,
                ..req
            }],
            spans,
            steps: vec![],
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halves_join_late_and_across_replicas_and_the_trace_follows_them() {
    if !ch_available() {
        return;
    }
    let agg = Agg::start("hops").await;
    let t0 = now_ns() - 10_000_000_000;
    let (gw_trace, up_trace) = ([0x11; 16], [0x22; 16]);
    let hop = hop_id(SEQ.0, Some(SEQ.1));
    let call = Span {
        trace_id: gw_trace.to_vec(),
        span_id: hop.to_bytes().to_vec(),
        parent_span_id: vec![0x1a; 8],
        name: "http.client".into(),
        start_unix_ns: t0 + 2_000_000,
        end_unix_ns: t0 + 38_000_000,
        attributes: vec![kv("inferscope.hop.link", "header")],
        ..Default::default()
    };
    // The gateway's half first.
    let gw = half(
        "gw",
        (gw_trace, [0x1a; 8]),
        (t0, 40_000_000),
        Request::default(),
        vec![call],
    );
    let acks = send(agg.grpc, Some("s3cret"), vec![gw]).await.unwrap();
    assert_eq!(acks[0].status, AckStatus::Stored as i32, "{acks:?}");
    let (code, t) = agg.get(&format!("/api/v1/traces/{}", hex(&gw_trace)));
    assert_eq!(code, 200, "{t}");
    assert_eq!(t["hops"][0]["hop_id"], hop.to_string(), "{t}");
    assert_eq!(t["hops"][0]["direction"], "outbound");
    assert_eq!(t["hops"][0]["link"], "header");
    assert!(t["hops"][0]["server"].is_null(), "not stored yet: {t}");

    // The upstream's half, late, through another aggregator replica.
    let replica = agg.replica("hops_b").await;
    let req = Request {
        req_tcp_seq: Some(SEQ.0),
        resp_tcp_seq: Some(SEQ.1),
        ..Default::default()
    };
    // The upstream served it in 30 ms of the 36 ms the gateway waited: its clock is between
    // 5 ms behind and 1 ms ahead of the gateway's.
    let up = half(
        "up",
        (up_trace, [0x2a; 8]),
        (t0 + 3_000_000, 30_000_000),
        req,
        vec![],
    );
    let acks = send(replica.grpc, Some("s3cret"), vec![up]).await.unwrap();
    assert_eq!(acks[0].status, AckStatus::Stored as i32, "{acks:?}");

    let (_, t) = agg.get(&format!("/api/v1/traces/{}", hex(&gw_trace)));
    let h = &t["hops"][0];
    assert_eq!(h["server"]["node"], "up", "{t}");
    assert_eq!(h["server"]["trace_id"], hex(&up_trace));
    assert_eq!(h["client"]["node"], "gw");
    assert_eq!(h["to_server_ms"], 1.0);
    assert_eq!(h["from_server_ms"], 5.0);
    assert_eq!(h["offset_lo_ns"], -5_000_000);
    assert_eq!(h["offset_hi_ns"], 1_000_000);
    assert_eq!(h["offset_consistent"], true);
    assert!(t["linked_traces"].as_array().unwrap().is_empty());

    let (_, u) = agg.get(&format!("/api/v1/traces/{}", hex(&up_trace)));
    assert_eq!(u["requests"][0]["hop_id"], hop.to_string(), "{u}");
    assert_eq!(u["hops"][0]["direction"], "inbound");
    assert_eq!(u["hops"][0]["client"]["trace_id"], hex(&gw_trace));

    let (_, f) = agg.get(&format!("/api/v1/traces/{}?follow=hops", hex(&gw_trace)));
    assert_eq!(
        f["linked_traces"],
        serde_json::json!([hex(&up_trace)]),
        "{f}"
    );
    assert_eq!(f["nodes"], serde_json::json!(["gw", "up"]));
    let spans = f["spans"].as_array().unwrap();
    let up_root = spans
        .iter()
        .find(|s| s["node"] == "up" && s["name"] == "http.server")
        .expect("upstream root in the view");
    assert_eq!(up_root["parent_span_id"], hop.to_string(), "{f}");
    // On the gateway's clock: 2 ms later, ± 3 ms, inside the call that waited for it.
    assert_eq!(up_root["clock_offset_ns"], -2_000_000);
    assert_eq!(up_root["clock_error_ns"], 3_000_000);
    let call_span = spans.iter().find(|s| s["name"] == "http.client").unwrap();
    let ms = |v: &Value| v.as_f64().unwrap();
    assert!(
        ms(&up_root["offset_ms"]) >= ms(&call_span["offset_ms"]),
        "{f}"
    );
    assert!(
        ms(&up_root["offset_ms"]) + ms(&up_root["duration_ms"])
            <= ms(&call_span["offset_ms"]) + ms(&call_span["duration_ms"]),
        "{f}"
    );
    assert_eq!(f["clocks"][1]["node"], "up");
    assert_eq!(f["clocks"][1]["offset_lo_ns"], -5_000_000);
    assert_eq!(up_root["trace_id"], hex(&up_trace));
    assert_eq!(f["requests"].as_array().unwrap().len(), 2);

    let (code, e) = agg.get(&format!("/api/v1/traces/{}?follow=all", hex(&gw_trace)));
    assert_eq!(code, 400, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("hops"),
        "{e}"
    );
    replica.stop().await;
    agg.stop().await;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
