//! The engine side of one request: its phase spans (children of the root), their durations and
//! its engine steps, from the [`EngineTrace`] a follower handed over.
use std::collections::BTreeMap;

use inferscope_api::SpanId;
use serde_json::Value;

use super::record::{LinkJson, SpanJson, StepCollJson, StepGpuJson, StepJson};
use crate::clock::WallClock;
use crate::engine::{EngineTrace, Step, StepColl, StepGpu};
use crate::gpu::steps::StepClass;

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
    pub(super) step_tokens: Vec<u32>,
    pub(super) gpu: Option<GpuTime>,
    pub(super) coll: Option<CollTime>,
    pub(super) engine_id: Option<String>,
}

/// A request's collectives from the steps it was in that the NCCL hooks saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct CollTime {
    /// Collectives lined up.
    pub(super) collectives: u32,
    /// Their summed waits for the slowest rank.
    pub(super) wait_ns: u64,
    /// The rank with the largest lag summed over the steps, and that sum.
    pub(super) straggler: (u32, u64),
}

/// The collectives of a request's `steps`: the rank that delayed it most is the one whose
/// lags, summed over the steps it led, are the largest.
pub(super) fn coll_time(steps: &[Step]) -> Option<CollTime> {
    let mut t = CollTime::default();
    let mut lags: Vec<(u32, u64)> = Vec::new();
    for c in steps.iter().filter_map(|s| s.coll) {
        t.collectives = t.collectives.saturating_add(c.collectives);
        t.wait_ns = t.wait_ns.saturating_add(c.wait_ns);
        match lags.iter_mut().find(|l| l.0 == c.straggler_rank) {
            Some(l) => l.1 = l.1.saturating_add(c.straggler_lag_ns),
            None => lags.push((c.straggler_rank, c.straggler_lag_ns)),
        }
    }
    t.straggler = lags
        .into_iter()
        .max_by_key(|l| (l.1, std::cmp::Reverse(l.0)))?;
    Some(t)
}

fn coll_json(c: &StepColl) -> StepCollJson {
    StepCollJson {
        collectives: c.collectives,
        collective_wait_ns: c.wait_ns,
        straggler_rank: c.straggler_rank,
        straggler_lag_ns: c.straggler_lag_ns,
    }
}

/// A request's GPU time from the steps it was in that the CUDA hooks saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct GpuTime {
    /// Latency view: the sum of those steps' GPU spans.
    pub(super) latency_ns: u64,
    /// Cost view: each span times the request's tokens in the step over the step's tokens;
    /// `None` when a step's tokens are unknown.
    pub(super) cost_ns: Option<u64>,
    /// Wall time of those steps that the host paced.
    pub(super) host_bound_ns: u64,
    /// Those steps whose GPU time is an upper bound.
    pub(super) upper_bound_steps: u32,
}

/// The GPU time of a request in `steps` (with its `tokens` in each, same order, or none).
pub(super) fn gpu_time(steps: &[Step], tokens: &[u32]) -> Option<GpuTime> {
    let mut t = GpuTime {
        cost_ns: Some(0),
        ..GpuTime::default()
    };
    let mut seen = false;
    for (k, s) in steps.iter().enumerate() {
        let Some(g) = s.gpu else { continue };
        seen = true;
        t.latency_ns += g.gpu_ns;
        if g.host_bound {
            t.host_bound_ns += s.end_ns.saturating_sub(s.start_ns);
        }
        t.upper_bound_steps += u32::from(g.upper_bound);
        t.cost_ns = match (t.cost_ns, tokens.get(k)) {
            (Some(c), Some(&mine)) if s.tokens > 0 => {
                let share =
                    u128::from(g.gpu_ns) * u128::from(mine.min(s.tokens)) / u128::from(s.tokens);
                Some(c + share as u64)
            }
            _ => None,
        };
    }
    seen.then_some(t)
}

fn gpu_json(g: &StepGpu) -> StepGpuJson {
    StepGpuJson {
        gpu_class: match g.class {
            StepClass::FullGraph => "full_graph",
            StepClass::Piecewise => "piecewise",
            StepClass::Eager => "eager",
        },
        gpu_ns: g.gpu_ns,
        gpu_launch_ns: g.launch_ns,
        graph_launches: g.graph_launches,
        kernel_launches: g.kernel_launches,
        dtoh_bytes: g.dtoh_bytes,
        htod_bytes: g.htod_bytes,
        sync_wait_ns: g.sync_wait_ns,
        host_bound: g.host_bound,
        gpu_upper_bound: g.upper_bound,
        gpu_ranks: g.ranks,
    }
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
    let scope = inferscope_api::StepScope::new(step_scope, &instance);
    let steps = er
        .steps
        .iter()
        .map(|s| {
            let (trace_id, span_id) = scope.context(s.id);
            StepJson {
                step_id: s.id,
                trace_id,
                span_id,
                start_unix_ns: w(s.start_ns),
                end_unix_ns: w(s.end_ns.max(s.start_ns)),
                batch_size: s.batch,
                batch_unit: er.batch_unit,
                tokens: s.tokens,
                gpu: s.gpu.as_ref().map(gpu_json),
                coll: s.coll.as_ref().map(coll_json),
            }
        })
        .collect();
    let step_tokens = if er.step_tokens.len() == er.steps.len() {
        er.step_tokens.clone()
    } else {
        Vec::new()
    };
    Phases {
        frontend: Some(handed.saturating_sub(start)),
        queue: q,
        prefill: p,
        decode: d,
        delivery,
        engine_ttft: er.first_output_ns.map(|f| f.saturating_sub(handed)),
        engine_e2e: er.last_output_ns.map(|l| l.saturating_sub(handed)),
        gpu: gpu_time(&er.steps, &step_tokens),
        coll: coll_time(&er.steps),
        steps,
        step_tokens,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: u64, start: u64, end: u64, tokens: u32, gpu_ns: Option<u64>) -> Step {
        Step {
            id,
            start_ns: start,
            end_ns: end,
            batch: 2,
            tokens,
            gpu: gpu_ns.map(|n| StepGpu {
                class: StepClass::FullGraph,
                gpu_ns: n,
                launch_ns: 5,
                graph_launches: 1,
                kernel_launches: 0,
                dtoh_bytes: 8,
                htod_bytes: 0,
                sync_wait_ns: 1,
                host_bound: id == 3,
                upper_bound: id == 3,
                ranks: 1,
            }),
            coll: None,
        }
    }

    #[test]
    fn the_rank_with_the_most_lag_delayed_the_request() {
        let coll = |rank, lag| {
            Some(StepColl {
                collectives: 4,
                wait_ns: lag + 10,
                straggler_rank: rank,
                straggler_lag_ns: lag,
            })
        };
        let mut steps = vec![step(1, 0, 10, 3, Some(5)), step(2, 10, 20, 1, Some(5))];
        assert_eq!(coll_time(&steps), None);
        steps[0].coll = coll(1, 5_000);
        steps[1].coll = coll(0, 3_000);
        steps.push(step(3, 20, 30, 1, Some(5)));
        steps[2].coll = coll(0, 3_000);
        let t = coll_time(&steps).unwrap();
        assert_eq!(t.collectives, 12);
        assert_eq!(t.wait_ns, 11_030);
        assert_eq!(t.straggler, (0, 6_000), "summed over the steps it led");
    }

    /// Two requests share steps 1 and 2: their cost shares add up to each step's GPU time;
    /// each waited for the whole of every step it was in.
    #[test]
    fn cost_shares_add_up_to_the_step() {
        let steps = [
            step(1, 0, 100, 10, Some(90)),
            step(2, 100, 200, 2, Some(60)),
            step(3, 200, 400, 1, Some(150)),
        ];
        let a = gpu_time(&steps, &[7, 1, 1]).unwrap();
        let b = gpu_time(&steps[..2], &[3, 1]).unwrap();
        assert_eq!(a.latency_ns, 300);
        assert_eq!(b.latency_ns, 150);
        assert_eq!(a.cost_ns, Some(63 + 30 + 150));
        assert_eq!(b.cost_ns, Some(27 + 30));
        assert_eq!(a.cost_ns.unwrap() + b.cost_ns.unwrap(), 300);
        assert_eq!((a.host_bound_ns, b.host_bound_ns), (200, 0));
        // Unknown weights: no cost view; no GPU step: nothing.
        assert_eq!(gpu_time(&steps, &[]).unwrap().cost_ns, None);
        assert!(gpu_time(&[step(9, 0, 1, 1, None)], &[1]).is_none());
    }
}
