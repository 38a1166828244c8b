//! The explainer's rules on hand-built traces.
use super::*;
use serde_json::json;

fn summary(id: u8, phases: [f64; 5], req_bytes: u64) -> RequestSummary {
    let e2e: f64 = phases.iter().sum();
    serde_json::from_value(json!({
        "trace_id": format!("{id:032x}"), "start": "", "start_unix_ns": 1_000_000_000u64,
        "end_unix_ns": 2_000_000_000u64, "node": "n", "pid": 1, "engine": "vllm", "model": "m",
        "method": "POST", "path": "/v1/completions", "status": 200, "outcome": "complete",
        "stream": true, "e2e_ms": e2e, "ttft_ms": phases[0] + phases[1] + phases[2],
        "tpot_ms": null, "frontend_ms": phases[0], "queue_ms": phases[1],
        "prefill_ms": phases[2], "decode_ms": phases[3], "delivery_ms": phases[4],
        "engine_ttft_ms": null, "engine_e2e_ms": null, "read_wait_ms": 0.02,
        "req_bytes": req_bytes, "resp_bytes": 100, "chunks": 8, "engine_steps": 3,
        "max_gap_ms": 1.0, "client": "", "server": "", "response_id": "", "x_request_id": "",
        "engine_request_id": "", "gave_up": ""
    }))
    .unwrap()
}

fn detail(s: RequestSummary, steps: Vec<u64>) -> RequestDetail {
    RequestDetail {
        request: s,
        step_ids: steps,
        chunk_offsets_ms: vec![],
        engine_output_offsets_ms: vec![],
        engine_instance: Some("1:2".into()),
        client_endpoint: None,
        server_endpoint: None,
        req_tcp_seq: None,
        resp_tcp_seq: None,
        hop_id: None,
    }
}

fn step(id: u64, dur: f64, shared: &[u8]) -> StepOut {
    StepOut {
        node: "n".into(),
        step_id: id,
        engine_instance: Some("1:2".into()),
        start_unix_ns: Some(id * 1_000_000),
        end_unix_ns: None,
        offset_ms: None,
        duration_ms: Some(dur),
        batch_size: Some(shared.len() as u32 + 1),
        batch_unit: Some("requests".into()),
        span_id: None,
        trace_id: None,
        tokens: None,
        request_tokens: None,
        gpu: None,
        collectives: None,
        shared_with_count: shared.len() as u64,
        shared_with: shared
            .iter()
            .map(|i| format!("{i:032x}").parse().unwrap())
            .collect(),
    }
}

fn typical() -> QuantileRow {
    QuantileRow {
        q: 0.5,
        e2e_ms: Some(60.0),
        ttft_ms: Some(15.0),
        tpot_ms: None,
        frontend_ms: Some(2.0),
        queue_ms: Some(3.0),
        prefill_ms: Some(10.0),
        decode_ms: Some(40.0),
        delivery_ms: Some(1.0),
        resources: Default::default(),
        gaps: Default::default(),
    }
}

fn ctx(n: u64) -> Context {
    Context {
        typical: Some(typical()),
        reference_count: 500,
        in_flight_at_arrival: Some(n),
    }
}

#[test]
fn queueing_behind_a_burst() {
    let r = detail(
        summary(1, [2.0, 250.0, 11.0, 41.0, 1.0], 300),
        vec![1, 2, 3],
    );
    let steps = [step(1, 11.0, &[]), step(2, 5.0, &[]), step(3, 5.0, &[])];
    let x = explain_request(&r, &steps, &[], &ctx(40));
    assert_eq!(x.dominant.as_deref(), Some("queueing"));
    assert!(
        x.findings[0].sentence.contains("40 other requests"),
        "{}",
        x.findings[0].sentence
    );
    assert!(x.summary.contains("+247 ms"), "{}", x.summary);
}

#[test]
fn a_long_prompt_in_the_same_batch() {
    let r = detail(summary(1, [2.0, 3.0, 200.0, 41.0, 1.0], 300), vec![1, 2]);
    let big = Neighbour {
        request: summary(9, [2.0, 3.0, 200.0, 41.0, 1.0], 9000),
        shared_steps: 1,
    };
    let steps = [step(1, 200.0, &[9]), step(2, 5.0, &[])];
    let x = explain_request(&r, &steps, &[big], &ctx(1));
    assert_eq!(x.dominant.as_deref(), Some("long_prompt_in_batch"));
    assert!(
        x.findings[0].sentence.contains("30.0× this one's"),
        "{}",
        x.findings[0].sentence
    );
}

#[test]
fn queued_behind_a_long_prefill() {
    // Arrived 2 ms in, waited 40 ms; the big request's prefill ran from 2 to 47 ms.
    let r = detail(summary(1, [2.0, 40.0, 11.0, 41.0, 1.0], 400), vec![2, 3]);
    let big = Neighbour {
        request: summary(9, [1.0, 1.0, 45.0, 41.0, 1.0], 4000),
        shared_steps: 2,
    };
    let steps = [step(2, 11.0, &[9]), step(3, 5.0, &[9])];
    let x = explain_request(&r, &steps, std::slice::from_ref(&big), &ctx(1));
    assert_eq!(x.dominant.as_deref(), Some("long_prompt_in_batch"), "{x:?}");
    let f = &x.findings[0];
    assert_eq!(f.phase, "queue");
    assert!(f.sentence.contains("40.0 ms of it"), "{}", f.sentence);
    assert!(
        f.sentence.contains("10.0× this one's 400"),
        "{}",
        f.sentence
    );
    // A neighbour of the same size is not a long prompt: plain queueing.
    let same = Neighbour {
        request: summary(9, [1.0, 1.0, 45.0, 41.0, 1.0], 500),
        shared_steps: 2,
    };
    let x = explain_request(&r, &steps, &[same], &ctx(1));
    assert_eq!(x.dominant.as_deref(), Some("queueing"));
}

#[test]
fn decode_stalled_by_a_long_prefill() {
    let r = detail(
        summary(1, [2.0, 3.0, 10.0, 70.0, 1.0], 300),
        vec![1, 2, 3, 4, 5],
    );
    // The big request's prefill ran from 20 to 50 ms, inside step 3.
    let big = Neighbour {
        request: summary(9, [10.0, 10.0, 30.0, 41.0, 1.0], 6000),
        shared_steps: 3,
    };
    let mut slow = step(3, 30.0, &[9]);
    slow.start_unix_ns = Some(1_000_000_000 + 20_000_000);
    let steps = [
        step(1, 10.0, &[]),
        step(2, 5.0, &[]),
        slow,
        step(4, 5.0, &[9]),
        step(5, 5.0, &[9]),
    ];
    let x = explain_request(&r, &steps, &[big], &ctx(1));
    assert_eq!(x.dominant.as_deref(), Some("long_prompt_in_batch"), "{x:?}");
    assert!(
        x.findings[0].sentence.contains("step 3"),
        "{}",
        x.findings[0].sentence
    );
    assert!(
        x.findings[0].sentence.contains("20.0× this one's"),
        "{}",
        x.findings[0].sentence
    );
}

#[test]
fn a_slow_decode_step() {
    let r = detail(
        summary(1, [2.0, 3.0, 10.0, 240.0, 1.0], 300),
        vec![1, 2, 3, 4, 5],
    );
    let steps = [
        step(1, 10.0, &[]),
        step(2, 5.0, &[]),
        step(3, 200.0, &[4, 5]),
        step(4, 5.0, &[]),
        step(5, 5.0, &[]),
    ];
    let x = explain_request(&r, &steps, &[], &ctx(1));
    assert_eq!(x.dominant.as_deref(), Some("slow_step"));
    assert!(
        x.findings[0].sentence.contains("step 3"),
        "{}",
        x.findings[0].sentence
    );
}

#[test]
fn not_slow_and_no_reference() {
    let r = detail(summary(1, [2.0, 3.0, 10.0, 30.0, 1.0], 300), vec![]);
    let x = explain_request(&r, &[], &[], &ctx(0));
    assert!(x.summary.contains("not slower"), "{}", x.summary);
    let x = explain_request(&r, &[], &[], &Context::default());
    assert!(x.findings.is_empty());
    assert_eq!(x.dominant, None);
}
