//! [`RequestRecord`] → `inferscope.v1` messages.
//!
//! One record becomes one [`Request`] (the summary row), one [`Span`] per [`SpanJson`], and one
//! [`EngineStep`] per `engine.step` span (deduplicated per batch by [`super::batch`]). Ids are
//! decoded from hex; a record whose ids or timestamps would make the aggregator reject the whole
//! batch is refused with a [`ConvertError`] (the caller counts and skips it).
use inferscope_proto::v1::{any_value, AnyValue, EngineStep, KeyValue, Request, Span};
use serde_json::Value;

use crate::requests::{RequestRecord, SpanJson};

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
    /// The trace id is not 32 hex chars, or is all zero.
    #[error("bad trace id {0:?}: want 32 hex chars, not all zero")]
    BadTraceId(String),
    /// A span id (or parent span id) is not 16 hex chars, or is all zero.
    #[error("bad span id {id:?} in span {span}: want 16 hex chars, not all zero")]
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
    /// The summary row.
    pub request: Request,
    /// The span tree.
    pub spans: Vec<Span>,
    /// The engine steps the request took part in (one per `engine.step` span).
    pub steps: Vec<EngineStep>,
}

/// Decodes `N` bytes from exactly `2 * N` hex chars (either case).
pub fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(b[2 * i])? << 4) | nib(b[2 * i + 1])?;
    }
    Some(out)
}

fn trace_id(s: &str) -> Result<[u8; 16], ConvertError> {
    decode_hex::<16>(s)
        .filter(|b| b.iter().any(|&x| x != 0))
        .ok_or_else(|| ConvertError::BadTraceId(s.to_owned()))
}

fn span_id(span: &'static str, s: &str) -> Result<[u8; 8], ConvertError> {
    decode_hex::<8>(s)
        .filter(|b| b.iter().any(|&x| x != 0))
        .ok_or_else(|| ConvertError::BadSpanId {
            span,
            id: s.to_owned(),
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

fn attributes(span: &SpanJson) -> Vec<KeyValue> {
    span.attributes
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
    let tid = trace_id(&r.trace_id)?;
    check_time("request", r.start_unix_ns, r.end_unix_ns)?;
    let mut spans = Vec::with_capacity(r.spans.len());
    let mut steps = Vec::new();
    let mut step_ids = Vec::new();
    for s in &r.spans {
        let id = span_id(s.name, &s.span_id)?;
        let parent = match &s.parent_span_id {
            Some(p) => span_id(s.name, p)?.to_vec(),
            None => Vec::new(),
        };
        check_time(s.name, s.start_unix_ns, s.end_unix_ns)?;
        if s.name == "engine.step" {
            if let Some(step_id) = s.attributes.get("engine.step_id").and_then(Value::as_u64) {
                step_ids.push(step_id);
                let batch_size = s
                    .attributes
                    .get("engine.batch_size")
                    .and_then(Value::as_u64)
                    .map(|b| u32::try_from(b).unwrap_or(u32::MAX))
                    .unwrap_or(0);
                steps.push(EngineStep {
                    step_id,
                    engine_instance: engine_instance.to_owned(),
                    start_unix_ns: s.start_unix_ns,
                    end_unix_ns: s.end_unix_ns,
                    batch_size,
                });
            }
        }
        spans.push(Span {
            trace_id: tid.to_vec(),
            span_id: id.to_vec(),
            parent_span_id: parent,
            name: s.name.to_owned(),
            start_unix_ns: s.start_unix_ns,
            end_unix_ns: s.end_unix_ns,
            attributes: attributes(s),
            events: Vec::new(),
            links: Vec::new(),
        });
    }
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
        tpot_ns: r.tpot_ns,
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
        engine_request_id: clip_opt(&r.engine_request_id),
        gave_up: r.gave_up.unwrap_or_default().to_owned(),
        step_ids,
        chunk_offsets_ns: r.chunk_offsets_ns.clone(),
        read_wait_ns: r.read_wait_ns,
        engine_instance: clip_opt(&r.engine_instance),
        netns: r.netns,
    };
    Ok(Converted {
        request,
        spans,
        steps,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A record with a root span, a `frontend` child and `steps` engine steps (ids from
    /// `first_step`), trace id derived from `n`.
    pub(crate) fn record(n: u64, pid: u32, steps: u64, first_step: u64) -> RequestRecord {
        let start = 1_700_000_000_000_000_000 + n * 1_000;
        let end = start + 5_000_000;
        let root = format!("{:016x}", 0x1000 + n);
        let mut spans = vec![SpanJson {
            name: "http.server",
            span_id: root.clone(),
            parent_span_id: None,
            start_unix_ns: start,
            end_unix_ns: end,
            attributes: BTreeMap::from([
                ("http.method", Value::from("POST")),
                ("http.status_code", Value::from(200)),
            ]),
        }];
        spans.push(SpanJson {
            name: "frontend",
            span_id: format!("{:016x}", 0x2000 + n),
            parent_span_id: Some(root.clone()),
            start_unix_ns: start,
            end_unix_ns: start + 1_000,
            attributes: BTreeMap::new(),
        });
        for k in 0..steps {
            spans.push(SpanJson {
                name: "engine.step",
                span_id: format!("{:08x}{:08x}", 0x3000 + n, k + 1),
                parent_span_id: Some(root.clone()),
                start_unix_ns: start + 2_000 + k * 10,
                end_unix_ns: start + 2_005 + k * 10,
                attributes: BTreeMap::from([
                    ("engine.step_id", Value::from(first_step + k)),
                    ("engine.batch_size", Value::from(4)),
                    ("shared", Value::from(true)),
                ]),
            });
        }
        RequestRecord {
            kind: "request",
            trace_id: format!("{:032x}", 0xabc0_0000 + n),
            parent_span_id: None,
            x_request_id: Some(format!("req-{n}")),
            response_id: Some(format!("cmpl-{n}")),
            engine_request_id: (steps > 0).then(|| format!("cmpl-{n}-0")),
            engine: if steps > 0 {
                ENGINE_VLLM
            } else {
                ENGINE_GENERIC
            },
            engine_instance: None,
            pid,
            fd: 7,
            netns: 0,
            client: Some("127.0.0.1:5000".into()),
            server: Some("127.0.0.1:8000".into()),
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
            tpot_ns: Some(10_000),
            chunks: 3,
            max_gap_ns: 20_000,
            chunk_offsets_ns: vec![1_000_000, 1_010_000, 1_030_000],
            done: true,
            frontend_ns: (steps > 0).then_some(1_000),
            queue_ns: (steps > 0).then_some(500),
            prefill_ns: None,
            decode_ns: None,
            delivery_ns: None,
            engine_ttft_ns: None,
            engine_e2e_ns: None,
            engine_steps: steps as u32,
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
        let q = &c.request;
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
        assert_eq!(q.read_wait_ns, 1_234);
        assert_eq!(q.engine_request_id, "cmpl-1-0");
        assert_eq!(q.gave_up, "");
        assert_eq!(c.spans.len(), 4);
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
        let shared = c.spans[2]
            .attributes
            .iter()
            .find(|kv| kv.key == "shared")
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value);
        assert_eq!(shared, Some(any_value::Value::BoolValue(true)));
        assert_eq!(c.steps.len(), 2);
        assert_eq!(c.steps[0].step_id, 10);
        assert_eq!(c.steps[0].batch_size, 4);
        assert_eq!(c.steps[0].engine_instance, "boot");
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
        r.trace_id = "xyz".into();
        assert!(matches!(convert(&r, "b"), Err(ConvertError::BadTraceId(_))));
        r.trace_id = "0".repeat(32);
        assert!(matches!(convert(&r, "b"), Err(ConvertError::BadTraceId(_))));

        let mut r = record(1, 42, 1, 1);
        r.spans[1].span_id = "123".into();
        assert!(matches!(
            convert(&r, "b"),
            Err(ConvertError::BadSpanId {
                span: "frontend",
                ..
            })
        ));
        let mut r = record(1, 42, 1, 1);
        r.spans[1].parent_span_id = Some("zz".repeat(8));
        assert!(matches!(
            convert(&r, "b"),
            Err(ConvertError::BadSpanId { .. })
        ));
        let mut r = record(1, 42, 1, 1);
        r.spans[0].span_id = "0".repeat(16);
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
        r.spans[2].end_unix_ns = r.spans[2].start_unix_ns - 1;
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
        r.spans[0].parent_span_id = Some("00f067aa0ba902b7".into());
        let c = convert(&r, "b").expect("valid");
        assert_eq!(
            c.spans[0].parent_span_id,
            vec![0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
    }
}
