//! [`RequestRecord`] → `inferscope.v1` messages.
//!
//! One record becomes one [`Request`] (the summary row), one [`Span`] per [`SpanJson`] (the
//! root's links to the request's steps included), and one [`EngineStep`] per step it took part
//! in (deduplicated per batch by [`super::batch`]: a step is sent once however many of the
//! batch's requests it served). A record whose ids or timestamps would make the aggregator
//! reject the whole batch is refused with a [`ConvertError`] (the caller counts and skips it).
use std::net::IpAddr;

use inferscope_proto::v1::{
    any_value, AnyValue, Endpoint, EngineStep, KeyValue, Request, Span, SpanLink,
};
use serde_json::Value;

use crate::requests::{self, RequestRecord, SpanJson};

/// Longest string sent (the aggregator rejects longer ones); longer values are cut at a UTF-8
/// boundary.
pub const MAX_STRING: usize = 4096;

/// `Resource.engine` of vLLM's requests.
pub const ENGINE_VLLM: &str = "vllm";
/// `Resource.engine` for every server no engine follower claimed.
pub const ENGINE_GENERIC: &str = crate::engine::GENERIC_ENGINE;

/// Why a record cannot be exported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The trace id is all zero.
    #[error("bad trace id {0}: all zero")]
    BadTraceId(String),
    /// A span id (or parent span id) is all zero.
    #[error("bad span id {id} in span {span}: all zero")]
    BadSpanId {
        /// Span name.
        span: &'static str,
        /// The offending id.
        id: String,
    },
    /// A start time of zero or an end before the start.
    #[error("bad timestamps in {what}: start {start}, end {end}")]
    BadTimestamps {
        /// `request` or the span name.
        what: &'static str,
        /// Start, Unix ns.
        start: u64,
        /// End, Unix ns.
        end: u64,
    },
}

/// One record, converted.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The summary row (`None` for a `"hop"` record: an outbound call is its span only).
    pub request: Option<Request>,
    /// The span tree.
    pub spans: Vec<Span>,
    /// The engine steps the request took part in (one per `engine.step` span).
    pub steps: Vec<EngineStep>,
}

/// Decodes `N` bytes from exactly `2 * N` hex chars (either case).
pub use inferscope_api::ids::decode_hex;

fn trace_id(t: inferscope_api::TraceId) -> Result<[u8; 16], ConvertError> {
    t.is_valid()
        .then(|| t.to_bytes())
        .ok_or_else(|| ConvertError::BadTraceId(t.to_string()))
}

fn span_id(span: &'static str, id: inferscope_api::SpanId) -> Result<[u8; 8], ConvertError> {
    id.is_valid()
        .then(|| id.to_bytes())
        .ok_or_else(|| ConvertError::BadSpanId {
            span,
            id: id.to_string(),
        })
}

/// The wire form of an endpoint.
fn endpoint(e: &Option<requests::Endpoint>, netns: u32) -> Option<Endpoint> {
    e.map(|e| Endpoint {
        ip: match e.ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        },
        port: u32::from(e.port),
        netns,
    })
}

fn check_time(what: &'static str, start: u64, end: u64) -> Result<(), ConvertError> {
    if start == 0 || end < start {
        return Err(ConvertError::BadTimestamps { what, start, end });
    }
    Ok(())
}

/// `s` cut to at most [`MAX_STRING`] bytes at a char boundary.
fn clip(mut s: String) -> String {
    if s.len() > MAX_STRING {
        let mut n = MAX_STRING;
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        s.truncate(n);
    }
    s
}

fn clip_opt(s: &Option<String>) -> String {
    s.as_deref().map(|s| clip(s.to_owned())).unwrap_or_default()
}

/// The `AnyValue` of a JSON attribute value: strings, integers, floats and booleans map to their
/// variant; integers beyond `i64` and arrays/objects become strings; `null` is dropped.
pub fn any_value(v: &Value) -> Option<AnyValue> {
    use any_value::Value as V;
    let value = match v {
        Value::Null => return None,
        Value::Bool(b) => V::BoolValue(*b),
        Value::String(s) => V::StringValue(clip(s.clone())),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                V::IntValue(i)
            } else if let Some(u) = n.as_u64() {
                V::StringValue(u.to_string())
            } else {
                V::DoubleValue(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::Array(_) | Value::Object(_) => V::StringValue(clip(v.to_string())),
    };
    Some(AnyValue { value: Some(value) })
}

fn attributes(attrs: &std::collections::BTreeMap<&'static str, Value>) -> Vec<KeyValue> {
    attrs
        .iter()
        .filter_map(|(k, v)| {
            any_value(v).map(|value| KeyValue {
                key: (*k).to_owned(),
                value: Some(value),
            })
        })
        .collect()
}

/// `Resource.engine` for `r`: the engine follower's name (never guessed from the fields).
pub fn engine_of(r: &RequestRecord) -> &'static str {
    r.engine
}

/// Converts one record. Its engine steps carry the record's `engine_instance` (the engine
/// process's `pid:start_ticks`); `fallback_instance` (node-probe's boot id) names them for a
/// record that has none.
pub fn convert(r: &RequestRecord, fallback_instance: &str) -> Result<Converted, ConvertError> {
    let engine_instance = r.engine_instance.as_deref().unwrap_or(fallback_instance);
    let tid = trace_id(r.trace_id)?;
    check_time("request", r.start_unix_ns, r.end_unix_ns)?;
    let mut spans = Vec::with_capacity(r.spans.len());
    for s in &r.spans {
        spans.push(span(tid, s)?);
    }
    let mut steps = Vec::with_capacity(r.steps.len());
    for s in &r.steps {
        check_time("engine.step", s.start_unix_ns, s.end_unix_ns)?;
        steps.push(EngineStep {
            step_id: s.step_id,
            engine_instance: engine_instance.to_owned(),
            start_unix_ns: s.start_unix_ns,
            end_unix_ns: s.end_unix_ns,
            batch_size: s.batch_size,
            trace_id: s.trace_id.to_bytes().to_vec(),
            span_id: s.span_id.to_bytes().to_vec(),
            batch_unit: s.batch_unit.to_owned(),
            tokens: s.tokens,
            gpu_class: s.gpu.map(|g| g.gpu_class).unwrap_or_default().to_owned(),
            gpu_ns: s.gpu.map(|g| g.gpu_ns),
            gpu_launch_ns: s.gpu.map_or(0, |g| g.gpu_launch_ns),
            graph_launches: s.gpu.map_or(0, |g| g.graph_launches),
            kernel_launches: s.gpu.map_or(0, |g| g.kernel_launches),
            dtoh_bytes: s.gpu.map_or(0, |g| g.dtoh_bytes),
            htod_bytes: s.gpu.map_or(0, |g| g.htod_bytes),
            sync_wait_ns: s.gpu.map_or(0, |g| g.sync_wait_ns),
            host_bound: s.gpu.is_some_and(|g| g.host_bound),
            gpu_upper_bound: s.gpu.is_some_and(|g| g.gpu_upper_bound),
            gpu_ranks: s.gpu.map_or(0, |g| u32::from(g.gpu_ranks)),
            collectives: s.coll.map(|c| c.collectives),
            collective_wait_ns: s.coll.map_or(0, |c| c.collective_wait_ns),
            straggler_rank: s.coll.map(|c| c.straggler_rank),
            straggler_lag_ns: s.coll.map_or(0, |c| c.straggler_lag_ns),
        });
    }
    if r.kind == "hop" {
        return Ok(Converted {
            request: None,
            spans,
            steps,
        });
    }
    let step_ids = r.steps.iter().map(|s| s.step_id).collect();
    let request = Request {
        trace_id: tid.to_vec(),
        method: clip(r.method.clone()),
        path: clip(r.path.clone()),
        status: u32::from(r.status),
        outcome: r.outcome.to_owned(),
        model: clip_opt(&r.model),
        // The body's `stream` flag when it was captured; an SSE response means it was set.
        stream: r.stream.unwrap_or(r.sse),
        start_unix_ns: r.start_unix_ns,
        end_unix_ns: r.end_unix_ns,
        e2e_ns: r.e2e_ns,
        ttft_ns: r.ttft_ns,
        first_text_ns: r.first_text_ns,
        tpot_ns: r.tpot_ns,
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        frontend_ns: r.frontend_ns,
        queue_ns: r.queue_ns,
        prefill_ns: r.prefill_ns,
        decode_ns: r.decode_ns,
        delivery_ns: r.delivery_ns,
        engine_ttft_ns: r.engine_ttft_ns,
        engine_e2e_ns: r.engine_e2e_ns,
        req_bytes: r.req_bytes,
        resp_bytes: r.resp_bytes,
        chunks: u32::try_from(r.chunks).unwrap_or(u32::MAX),
        engine_steps: r.engine_steps,
        max_gap_ns: r.max_gap_ns,
        client: clip_opt(&r.client),
        server: clip_opt(&r.server),
        response_id: clip_opt(&r.response_id),
        x_request_id: clip_opt(&r.x_request_id),
        tenant: clip_opt(&r.tenant),
        engine_request_id: clip_opt(&r.engine_request_id),
        gave_up: r.gave_up.unwrap_or_default().to_owned(),
        step_ids,
        chunk_offsets_ns: r.chunk_offsets_ns.clone(),
        engine_output_offsets_ns: r.engine_output_offsets_ns.clone(),
        read_wait_ns: r.read_wait_ns,
        engine_instance: clip_opt(&r.engine_instance),
        netns: r.netns,
        client_endpoint: endpoint(&r.client_endpoint, r.netns),
        server_endpoint: endpoint(&r.server_endpoint, r.netns),
        req_tcp_seq: r.req_tcp_seq,
        resp_tcp_seq: r.resp_tcp_seq,
        gpu_ns: r.gpu_ns,
        gpu_cost_ns: r.gpu_cost_ns,
        gpu_host_bound_ns: r.gpu_host_bound_ns,
        gpu_upper_bound_steps: r.gpu_upper_bound_steps,
        step_tokens: r.step_tokens.clone(),
        collectives: r.collectives,
        collective_wait_ns: r.collective_wait_ns,
        straggler_rank: r.straggler_rank,
        straggler_lag_ns: r.straggler_lag_ns,
    };
    Ok(Converted {
        request: Some(request),
        spans,
        steps,
    })
}

/// One span of the tree, its links included.
fn span(tid: [u8; 16], s: &SpanJson) -> Result<Span, ConvertError> {
    let id = span_id(s.name, s.span_id)?;
    let parent = match s.parent_span_id {
        Some(p) => span_id(s.name, p)?.to_vec(),
        None => Vec::new(),
    };
    check_time(s.name, s.start_unix_ns, s.end_unix_ns)?;
    Ok(Span {
        trace_id: tid.to_vec(),
        span_id: id.to_vec(),
        parent_span_id: parent,
        name: s.name.to_owned(),
        start_unix_ns: s.start_unix_ns,
        end_unix_ns: s.end_unix_ns,
        attributes: attributes(&s.attributes),
        events: Vec::new(),
        links: s
            .links
            .iter()
            .map(|l| SpanLink {
                trace_id: l.trace_id.to_bytes().to_vec(),
                span_id: l.span_id.to_bytes().to_vec(),
                attributes: attributes(&l.attributes),
            })
            .collect(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use inferscope_api::{SpanId, TraceId};

    use super::*;
    use crate::requests::{LinkJson, StepJson};

    fn sid(n: u64) -> SpanId {
        SpanId::from_bytes(n.to_be_bytes())
    }

    /// A record with a root span (linking to its steps), a `frontend` child and `steps` engine
    /// steps (ids from `first_step`), trace id derived from `n`.
    pub(crate) fn record(n: u64, pid: u32, steps: u64, first_step: u64) -> RequestRecord {
        let start = 1_700_000_000_000_000_000 + n * 1_000;
        let end = start + 5_000_000;
        let root = sid(0x1000 + n);
        let steps: Vec<StepJson> = (0..steps)
            .map(|k| {
                let (trace_id, span_id) =
                    inferscope_api::step_context("host", "1:2", first_step + k);
                StepJson {
                    step_id: first_step + k,
                    trace_id,
                    span_id,
                    start_unix_ns: start + 2_000 + k * 10,
                    end_unix_ns: start + 2_005 + k * 10,
                    batch_size: 4,
                    batch_unit: "requests",
                    tokens: 0,
                    gpu: None,
                    coll: None,
                }
            })
            .collect();
        let links = steps
            .iter()
            .map(|s| LinkJson {
                trace_id: s.trace_id,
                span_id: s.span_id,
                attributes: BTreeMap::from([("engine.step_id", Value::from(s.step_id))]),
            })
            .collect();
        let spans = vec![
            SpanJson {
                name: "http.server",
                span_id: root,
                parent_span_id: None,
                start_unix_ns: start,
                end_unix_ns: end,
                attributes: BTreeMap::from([
                    ("http.method", Value::from("POST")),
                    ("http.status_code", Value::from(200)),
                ]),
                links,
            },
            SpanJson {
                name: "frontend",
                span_id: sid(0x2000 + n),
                parent_span_id: Some(root),
                start_unix_ns: start,
                end_unix_ns: start + 1_000,
                attributes: BTreeMap::new(),
                links: Vec::new(),
            },
        ];
        let mut tid = [0u8; 16];
        tid[8..].copy_from_slice(&(0xabc0_0000 + n).to_be_bytes());
        RequestRecord {
            kind: "request",
            trace_id: TraceId::from_bytes(tid),
            parent_span_id: None,
            x_request_id: Some(format!("req-{n}")),
            tenant: Some("acme".into()),
            response_id: Some(format!("cmpl-{n}")),
            engine_request_id: (!steps.is_empty()).then(|| format!("cmpl-{n}-0")),
            engine: if steps.is_empty() {
                ENGINE_GENERIC
            } else {
                ENGINE_VLLM
            },
            engine_instance: None,
            pid,
            fd: 7,
            netns: 4026531840,
            client: Some("127.0.0.1:5000".into()),
            server: Some("127.0.0.1:8000".into()),
            client_endpoint: Some(requests::Endpoint {
                ip: IpAddr::from([127, 0, 0, 1]),
                port: 5000,
            }),
            server_endpoint: Some(requests::Endpoint {
                ip: "::1".parse().unwrap(),
                port: 8000,
            }),
            req_tcp_seq: Some(77),
            resp_tcp_seq: None,
            hop_id: None,
            method: "POST".into(),
            path: "/v1/completions".into(),
            status: 200,
            outcome: "complete",
            gave_up: None,
            model: Some("tiny".into()),
            stream: Some(true),
            sse: true,
            req_bytes: 100,
            resp_bytes: 2_000,
            start_unix_ns: start,
            end_unix_ns: end,
            start_source: "arrival",
            read_wait_ns: 1_234,
            e2e_ns: end - start,
            ttft_ns: 1_000_000,
            first_text_ns: Some(1_500_000),
            tpot_ns: Some(10_000),
            prompt_tokens: Some(9),
            completion_tokens: Some(3),
            chunks: 3,
            max_gap_ns: 20_000,
            chunk_offsets_ns: vec![1_000_000, 1_010_000, 1_030_000],
            engine_output_offsets_ns: vec![990_000, 1_005_000],
            done: true,
            frontend_ns: (!steps.is_empty()).then_some(1_000),
            queue_ns: (!steps.is_empty()).then_some(500),
            prefill_ns: None,
            decode_ns: None,
            delivery_ns: None,
            engine_ttft_ns: None,
            engine_e2e_ns: None,
            engine_steps: steps.len() as u32,
            steps,
            step_tokens: Vec::new(),
            gpu_ns: None,
            gpu_cost_ns: None,
            gpu_host_bound_ns: None,
            gpu_upper_bound_steps: None,
            collectives: None,
            collective_wait_ns: None,
            straggler_rank: None,
            straggler_lag_ns: None,
            spans,
        }
    }

    #[test]
    fn hex_decoding() {
        assert_eq!(decode_hex::<2>("0aFf"), Some([0x0a, 0xff]));
        assert_eq!(decode_hex::<2>("0aF"), None);
        assert_eq!(decode_hex::<2>("0aFg"), None);
        assert_eq!(decode_hex::<2>("0aFf0"), None);
        assert_eq!(decode_hex::<1>("é"), None);
    }

    #[test]
    fn converts_request_spans_and_steps() {
        let r = record(1, 42, 2, 10);
        let c = convert(&r, "boot").expect("valid");
        let q = c.request.as_ref().expect("a request");
        assert_eq!(q.trace_id.len(), 16);
        assert_eq!(q.trace_id[12..], [0xab, 0xc0, 0x00, 0x01]);
        assert_eq!(q.method, "POST");
        assert_eq!(q.status, 200);
        assert_eq!(q.outcome, "complete");
        assert_eq!(q.model, "tiny");
        assert!(q.stream);
        assert_eq!(q.tpot_ns, Some(10_000));
        assert_eq!(q.frontend_ns, Some(1_000));
        assert_eq!(q.prefill_ns, None);
        assert_eq!(q.step_ids, vec![10, 11]);
        assert_eq!(q.chunk_offsets_ns, vec![1_000_000, 1_010_000, 1_030_000]);
        assert_eq!(q.engine_output_offsets_ns, vec![990_000, 1_005_000]);
        assert_eq!(q.first_text_ns, Some(1_500_000));
        assert_eq!(q.read_wait_ns, 1_234);
        assert_eq!(q.engine_request_id, "cmpl-1-0");
        assert_eq!(q.tenant, "acme");
        assert_eq!((q.prompt_tokens, q.completion_tokens), (Some(9), Some(3)));
        assert_eq!(q.gave_up, "");
        // Structured endpoints beside the text ones, and the first bytes' sequence numbers.
        assert_eq!(q.client, "127.0.0.1:5000");
        let ce = q.client_endpoint.as_ref().unwrap();
        assert_eq!(
            (ce.ip.as_slice(), ce.port, ce.netns),
            (&[127, 0, 0, 1][..], 5000, 4026531840)
        );
        let se = q.server_endpoint.as_ref().unwrap();
        assert_eq!((se.ip.len(), se.ip[15], se.port), (16, 1, 8000));
        assert_eq!((q.req_tcp_seq, q.resp_tcp_seq), (Some(77), None));
        // No per-request copy of a step: the root links to each, the step goes once.
        assert_eq!(c.spans.len(), 2);
        let root = &c.spans[0];
        assert_eq!(root.span_id, vec![0, 0, 0, 0, 0, 0, 0x10, 0x01]);
        assert!(root.parent_span_id.is_empty());
        assert_eq!(c.spans[1].parent_span_id, root.span_id);
        assert!(c.spans.iter().all(|s| s.trace_id == q.trace_id));
        let status = root
            .attributes
            .iter()
            .find(|kv| kv.key == "http.status_code")
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value);
        assert_eq!(status, Some(any_value::Value::IntValue(200)));
        assert_eq!(c.steps.len(), 2);
        assert_eq!(c.steps[0].step_id, 10);
        assert_eq!(c.steps[0].batch_size, 4);
        assert_eq!(c.steps[0].batch_unit, "requests");
        assert_eq!(c.steps[0].engine_instance, "boot");
        assert_eq!(root.links.len(), 2);
        for (l, st) in root.links.iter().zip(&c.steps) {
            assert_eq!((&l.trace_id, &l.span_id), (&st.trace_id, &st.span_id));
            assert_eq!(l.trace_id.len(), 16);
            assert_eq!(l.attributes[0].key, "engine.step_id");
        }
        assert_eq!(engine_of(&r), ENGINE_VLLM);
        assert_eq!(engine_of(&record(2, 42, 0, 0)), ENGINE_GENERIC);
    }

    #[test]
    fn attribute_values() {
        use any_value::Value as V;
        let v = |j: Value| any_value(&j).and_then(|a| a.value);
        assert_eq!(v(Value::from("x")), Some(V::StringValue("x".into())));
        assert_eq!(v(Value::from(-3)), Some(V::IntValue(-3)));
        assert_eq!(
            v(Value::from(u64::MAX)),
            Some(V::StringValue(u64::MAX.to_string()))
        );
        assert_eq!(v(Value::from(1.5)), Some(V::DoubleValue(1.5)));
        assert_eq!(v(Value::from(false)), Some(V::BoolValue(false)));
        assert_eq!(v(Value::Null), None);
        assert_eq!(
            v(serde_json::json!([1, 2])),
            Some(V::StringValue("[1,2]".into()))
        );
        assert_eq!(
            v(Value::from("é".repeat(3000))).map(|x| match x {
                V::StringValue(s) => s.len(),
                _ => 0,
            }),
            Some(MAX_STRING)
        );
    }

    #[test]
    fn bad_ids_and_times_are_errors() {
        let mut r = record(1, 42, 1, 1);
        r.trace_id = TraceId::default();
        assert!(matches!(convert(&r, "b"), Err(ConvertError::BadTraceId(_))));

        let mut r = record(1, 42, 1, 1);
        r.spans[1].span_id = SpanId::default();
        assert!(matches!(
            convert(&r, "b"),
            Err(ConvertError::BadSpanId {
                span: "frontend",
                ..
            })
        ));
        let mut r = record(1, 42, 1, 1);
        r.spans[1].parent_span_id = Some(SpanId::default());
        assert!(matches!(
            convert(&r, "b"),
            Err(ConvertError::BadSpanId { .. })
        ));

        let mut r = record(1, 42, 1, 1);
        r.start_unix_ns = 0;
        assert!(matches!(
            convert(&r, "b"),
            Err(ConvertError::BadTimestamps {
                what: "request",
                ..
            })
        ));
        let mut r = record(1, 42, 1, 1);
        r.steps[0].end_unix_ns = r.steps[0].start_unix_ns - 1;
        assert!(matches!(
            convert(&r, "b"),
            Err(ConvertError::BadTimestamps {
                what: "engine.step",
                ..
            })
        ));
    }

    #[test]
    fn caller_parent_is_kept() {
        let mut r = record(1, 42, 0, 0);
        r.spans[0].parent_span_id = Some("00f067aa0ba902b7".parse().unwrap());
        let c = convert(&r, "b").expect("valid");
        assert_eq!(
            c.spans[0].parent_span_id,
            vec![0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
    }
}
