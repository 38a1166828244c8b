//! The engine side of one request: its phase spans (children of the root), their durations and
//! its engine steps, from the [`EngineTrace`] a follower handed over.
use std::collections::BTreeMap;

use inferscope_api::SpanId;
use serde_json::Value;

use super::record::{LinkJson, SpanJson, StepJson};
use crate::clock::WallClock;
use crate::engine::EngineTrace;

/// Engine-side phase durations of one request.
#[derive(Debug, Default)]
pub(super) struct Phases {
    pub(super) frontend: Option<u64>,
    pub(super) queue: Option<u64>,
    pub(super) prefill: Option<u64>,
    pub(super) decode: Option<u64>,
    pub(super) delivery: Option<u64>,
    pub(super) engine_ttft: Option<u64>,
    pub(super) engine_e2e: Option<u64>,
    pub(super) steps: Vec<StepJson>,
    pub(super) engine_id: Option<String>,
}

/// A new random span id (never zero: a v4 UUID has fixed non-zero version bits in its second
/// half, and the first half is random).
pub(super) fn span_id() -> SpanId {
    let b = *uuid::Uuid::new_v4().as_bytes();
    let id = SpanId::from_slice(&b[..8]).expect("8 bytes");
    if id.is_valid() {
        id
    } else {
        SpanId::from_slice(&b[8..]).expect("8 bytes")
    }
}

/// The engine-side phase spans of one request (children of `root`), their durations and the
/// request's engine steps (ids scoped by `step_scope`, see [`inferscope_api::step_context`]).
pub(super) fn engine_phases(
    er: &EngineTrace,
    (start, end): (u64, u64),
    root: SpanId,
    (clock, step_scope): (&WallClock, &str),
    spans: &mut Vec<SpanJson>,
) -> Phases {
    let w = |t: u64| clock.to_wall(t);
    let mut child =
        |name: &'static str, a: u64, b: u64, attributes: BTreeMap<&'static str, Value>| {
            spans.push(SpanJson {
                name,
                span_id: span_id(),
                parent_span_id: Some(root),
                start_unix_ns: w(a),
                end_unix_ns: w(b.max(a)),
                attributes,
                links: Vec::new(),
            });
        };
    let handed = er.handed_ns;
    child("frontend", start, handed, BTreeMap::new());
    let queued = er.core_recv_ns.unwrap_or(handed);
    let (q, p, d) = match (er.steps.first(), er.steps.last(), er.first_output_ns) {
        (Some(f), Some(l), _) => {
            child("queue", queued, f.start_ns, BTreeMap::new());
            child("prefill", f.start_ns, f.end_ns, BTreeMap::new());
            child("decode", f.end_ns, l.end_ns, BTreeMap::new());
            (
                Some(f.start_ns.saturating_sub(queued)),
                Some(f.end_ns.saturating_sub(f.start_ns)),
                Some(l.end_ns.saturating_sub(f.end_ns)),
            )
        }
        (_, _, Some(fo)) => {
            let lo = er.last_output_ns.unwrap_or(fo);
            child("prefill", queued, fo, BTreeMap::new());
            child("decode", fo, lo, BTreeMap::new());
            (
                None,
                Some(fo.saturating_sub(queued)),
                Some(lo.saturating_sub(fo)),
            )
        }
        _ => (None, None, None),
    };
    let delivery = er.last_output_ns.map(|lo| {
        child("stream_out", lo, end, BTreeMap::new());
        end.saturating_sub(lo)
    });
    let instance = er.instance.map(|i| i.to_string()).unwrap_or_default();
    let steps = er
        .steps
        .iter()
        .map(|s| {
            let (trace_id, span_id) = inferscope_api::step_context(step_scope, &instance, s.id);
            StepJson {
                step_id: s.id,
                trace_id,
                span_id,
                start_unix_ns: w(s.start_ns),
                end_unix_ns: w(s.end_ns.max(s.start_ns)),
                batch_size: s.batch,
                batch_unit: er.batch_unit,
            }
        })
        .collect();
    Phases {
        frontend: Some(handed.saturating_sub(start)),
        queue: q,
        prefill: p,
        decode: d,
        delivery,
        engine_ttft: er.first_output_ns.map(|f| f.saturating_sub(handed)),
        engine_e2e: er.last_output_ns.map(|l| l.saturating_sub(handed)),
        steps,
        engine_id: er.request_id.clone(),
    }
}

/// The link from a request's root span to one of its steps.
pub(super) fn step_link(s: &StepJson) -> LinkJson {
    let mut attributes = BTreeMap::new();
    attributes.insert("engine.step_id", Value::from(s.step_id));
    LinkJson {
        trace_id: s.trace_id,
        span_id: s.span_id,
        attributes,
    }
}
