//! "Why was it slow": `GET /api/v1/explain/{trace_id}` for one request and
//! `GET /api/v1/explain` for a window's slow cohort. The rules are here, as pure functions of
//! what the trace and breakdown endpoints return, so the CLI, the UI and tests read one answer.
//!
//! One request is compared with the *typical* request of the same model around it (the medians
//! of the hour around its start): each phase's excess over its median is a finding, and each
//! finding names the system cause the stored data shows — how many requests were in the engine
//! when it arrived (queueing), the step that ran its prefill and the largest prompt it shared
//! that step with (a long prompt in the same batch), its slowest engine step against its median
//! step (a slow step and its batch), the frontend's time and the socket wait, delivery. Findings
//! are ranked by excess; the first with a positive excess is the dominant cause.
use serde::{Deserialize, Serialize};

use crate::breakdown::{QuantileRow, SlowVsMedian};
use crate::ids::TraceId;
use crate::requests::RequestSummary;
use crate::trace::{Neighbour, RequestDetail, StepOut};
use crate::PHASES;

/// Why one part of the request took longer than typical.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// `queueing`, `long_prompt_in_batch`, `prefill`, `slow_step`, `decode`, `frontend`,
    /// `delivery`, `unattributed`, `ttft`.
    pub cause: String,
    /// The phase it is measured on (a [`PHASES`] name, `unattributed` or `ttft`).
    pub phase: String,
    /// This request's value (ms).
    pub value_ms: f64,
    /// The typical value (ms): the median around it.
    pub typical_ms: f64,
    /// `value − typical` (ms).
    pub excess_ms: f64,
    /// The sentence, with the figures behind it.
    pub sentence: String,
}

/// The `/api/v1/explain/{trace_id}` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestExplanation {
    /// The request.
    pub trace_id: TraceId,
    /// Its node.
    pub node: String,
    /// Its model.
    pub model: String,
    /// Its e2e (ms).
    pub e2e_ms: f64,
    /// The median e2e of the reference requests (ms).
    pub typical_e2e_ms: Option<f64>,
    /// Reference requests: same model, the hour around the request.
    pub reference_count: u64,
    /// One line: the verdict and the dominant cause.
    pub summary: String,
    /// The cause of the largest positive excess.
    pub dominant: Option<String>,
    /// Every finding, largest excess first.
    pub findings: Vec<Finding>,
}

/// The `/api/v1/explain` response: the slow cohort of a window against its median cohort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortExplanation {
    /// The comparison it is read from (the breakdown's).
    pub slow_vs_median: SlowVsMedian,
    /// One line.
    pub summary: String,
    /// The phase (or `unattributed`) that grew most, in ms.
    pub dominant: Option<String>,
    /// One finding per phase, largest mean difference first.
    pub findings: Vec<Finding>,
}

/// What the aggregator knows around one request besides its trace.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Context {
    /// Medians (q = 0.5) of the reference requests.
    pub typical: Option<QuantileRow>,
    /// Reference requests.
    pub reference_count: u64,
    /// Requests of the same engine instance in flight when this one reached the engine.
    pub in_flight_at_arrival: Option<u64>,
}

fn phase_value(r: &RequestDetail, p: &str) -> Option<f64> {
    let s = &r.request;
    match p {
        "frontend" => s.frontend_ms,
        "queue" => s.queue_ms,
        "prefill" => s.prefill_ms,
        "decode" => s.decode_ms,
        "delivery" => s.delivery_ms,
        _ => None,
    }
}

fn typical_value(t: &QuantileRow, p: &str) -> Option<f64> {
    match p {
        "frontend" => t.frontend_ms,
        "queue" => t.queue_ms,
        "prefill" => t.prefill_ms,
        "decode" => t.decode_ms,
        "delivery" => t.delivery_ms,
        _ => None,
    }
}

fn ms(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0} ms")
    } else if x.abs() >= 10.0 {
        format!("{x:.1} ms")
    } else {
        format!("{x:.2} ms")
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// The request's steps that have a duration, in time order.
fn timed_steps<'a>(r: &RequestDetail, steps: &'a [StepOut]) -> Vec<&'a StepOut> {
    let mut v: Vec<&StepOut> = steps
        .iter()
        .filter(|s| r.step_ids.contains(&s.step_id) && s.duration_ms.is_some())
        .collect();
    v.sort_by_key(|s| s.start_unix_ns.unwrap_or(0));
    v
}

/// `1 other request`, `3 other requests`.
fn others(n: u64) -> String {
    format!("{n} other request{}", if n == 1 { "" } else { "s" })
}

fn batch_words(s: &StepOut) -> String {
    match (s.batch_size, s.batch_unit.as_deref()) {
        (Some(b), Some(u)) if !u.is_empty() => format!("a batch of {b} {u}"),
        (Some(b), _) => format!("a batch of {b}"),
        _ => "a batch of unknown size".into(),
    }
}

/// From a neighbour's hand-off to the engine to its first output (absolute ns): its prefill,
/// and the steps before that computed its prompt in chunks (vLLM's chunked prefill: a chunk
/// that produces no output is not yet one of the request's steps, so its queue phase holds
/// it). `None` when the engine was not followed.
fn prefill_window(r: &RequestSummary) -> Option<(f64, f64)> {
    let from = r.start_unix_ns as f64 + r.frontend_ms? * 1e6;
    let to = match r.engine_ttft_ms {
        Some(t) => from + t * 1e6,
        None => from + (r.queue_ms? + r.prefill_ms?) * 1e6,
    };
    Some((from, to))
}

/// The neighbour with a long prompt (a request at least twice this one's bytes) whose
/// [`prefill_window`] covered most of `window` (absolute ns), and how long it overlapped it
/// (ms). Such a prefill holds the engine's step: requests that arrive during it queue, and
/// those decoding wait for it.
fn long_prefill_during(
    window: (f64, f64),
    mine_bytes: u64,
    neighbours: &[Neighbour],
) -> Option<(&Neighbour, f64)> {
    let len = window.1 - window.0;
    neighbours
        .iter()
        .filter(|n| n.request.req_bytes >= 2 * mine_bytes.max(1))
        .filter_map(|n| {
            let (a, b) = prefill_window(&n.request)?;
            let overlap = b.min(window.1) - a.max(window.0);
            (len > 0.0 && overlap >= 0.5 * len).then_some((n, overlap / 1e6))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// `<id> (its request 4170 bytes, 10.0× this one's 416)`.
fn big_words(n: &Neighbour, mine: u64) -> String {
    format!(
        "{} (its request {} bytes, {:.1}× this one's {})",
        n.request.trace_id,
        n.request.req_bytes,
        n.request.req_bytes as f64 / mine.max(1) as f64,
        mine
    )
}

/// The queue finding: behind a long prompt's prefill, or behind the requests in the engine.
fn queue_finding(
    v: f64,
    t: f64,
    r: &RequestDetail,
    neighbours: &[Neighbour],
    ctx: &Context,
) -> (String, String) {
    let s = &r.request;
    let from = s.start_unix_ns as f64 + s.frontend_ms.unwrap_or(0.0) * 1e6;
    if let Some((n, overlap)) = long_prefill_during((from, from + v * 1e6), s.req_bytes, neighbours)
    {
        return (
            "long_prompt_in_batch".into(),
            format!(
                "It waited {} for the scheduler (typical {}), {} of it while the engine prefilled {}, \
                 which then shared its batch: a long prompt in the same batch.",
                ms(v),
                ms(t),
                ms(overlap),
                big_words(n, s.req_bytes)
            ),
        );
    }
    let n = ctx.in_flight_at_arrival.map_or_else(String::new, |n| {
        let verb = if n == 1 { "was" } else { "were" };
        format!(": {} {verb} in the engine when it arrived", others(n))
    });
    (
        "queueing".into(),
        format!(
            "It waited {} for the scheduler (typical {}){n}.",
            ms(v),
            ms(t)
        ),
    )
}

/// The decode finding: a slow step (and the long prompt prefilled in it, if any), or decode
/// as a whole.
fn decode_finding(
    v: f64,
    t: f64,
    r: &RequestDetail,
    steps: &[&StepOut],
    neighbours: &[Neighbour],
) -> (String, String) {
    let durs: Vec<f64> = steps.iter().filter_map(|s| s.duration_ms).collect();
    let slowest = steps.iter().max_by(|a, b| {
        a.duration_ms
            .unwrap_or(0.0)
            .total_cmp(&b.duration_ms.unwrap_or(0.0))
    });
    let m = median(durs.clone());
    if let (Some(s), Some(m)) = (slowest, m) {
        let dur = s.duration_ms.unwrap_or(0.0);
        if m > 0.0 && dur >= 3.0 * m {
            let head = format!(
                "Decode took {} (typical {}) over {} steps; its slowest step (step {}) took {}, {:.1}× \
                 its median step of {}",
                ms(v),
                ms(t),
                durs.len(),
                s.step_id,
                ms(dur),
                dur / m,
                ms(m)
            );
            let mine = r.request.req_bytes;
            let stalled = s.start_unix_ns.and_then(|a| {
                let a = a as f64;
                long_prefill_during((a, a + dur * 1e6), mine, neighbours)
            });
            return match stalled {
                Some((n, _)) => (
                    "long_prompt_in_batch".into(),
                    format!(
                        "{head}, while it carried the prefill of {}: a long prompt in the same batch.",
                        big_words(n, mine)
                    ),
                ),
                None => (
                    "slow_step".into(),
                    format!(
                        "{head}, in {} shared with {}.",
                        batch_words(s),
                        others(s.shared_with_count)
                    ),
                ),
            };
        }
    }
    (
        "decode".into(),
        format!(
            "Decode took {} (typical {}) over {} steps{}.",
            ms(v),
            ms(t),
            durs.len(),
            m.map_or_else(String::new, |m| format!(" of {} each (median)", ms(m)))
        ),
    )
}

/// The cause and sentence of one phase's excess.
fn phase_finding(
    p: &str,
    v: f64,
    t: f64,
    r: &RequestDetail,
    steps: &[&StepOut],
    neighbours: &[Neighbour],
    ctx: &Context,
) -> (String, String) {
    let base = format!("{p} took {} (typical {})", ms(v), ms(t));
    match p {
        "queue" => queue_finding(v, t, r, neighbours, ctx),
        "prefill" => {
            let Some(first) = steps.first() else {
                return ("prefill".into(), format!("{base}."));
            };
            let mine = r.request.req_bytes.max(1);
            let big = neighbours
                .iter()
                .filter(|n| first.shared_with.contains(&n.request.trace_id))
                .max_by_key(|n| n.request.req_bytes);
            match big {
                Some(n) if n.request.req_bytes >= 2 * mine => (
                    "long_prompt_in_batch".into(),
                    format!(
                        "Its prefill step took {} (typical prefill {}) in {} shared with {}, \
                         among them {} whose request was {} bytes, {:.1}× this one's {} bytes: a long prompt \
                         in the same batch.",
                        ms(v),
                        ms(t),
                        batch_words(first),
                        others(first.shared_with_count),
                        n.request.trace_id,
                        n.request.req_bytes,
                        n.request.req_bytes as f64 / mine as f64,
                        r.request.req_bytes
                    ),
                ),
                _ => (
                    "prefill".into(),
                    format!(
                        "Its prefill step took {} (typical {}) in {} ({} bytes of request).",
                        ms(v),
                        ms(t),
                        batch_words(first),
                        r.request.req_bytes
                    ),
                ),
            }
        }
        "decode" => decode_finding(v, t, r, steps, neighbours),
        "frontend" => (
            "frontend".into(),
            format!(
                "The server took {} before handing it to the engine (typical {}); it sat {} in the socket \
                 before the server read it.",
                ms(v),
                ms(t),
                ms(r.request.read_wait_ms)
            ),
        ),
        "delivery" => (
            "delivery".into(),
            format!(
                "Writing the response after the engine's last output took {} (typical {}): the client or \
                 the network read slowly.",
                ms(v),
                ms(t)
            ),
        ),
        _ => (p.to_string(), format!("{base}.")),
    }
}

/// Explains one request of a trace (the one with the most phases known).
pub fn explain_request(
    r: &RequestDetail,
    steps: &[StepOut],
    neighbours: &[Neighbour],
    ctx: &Context,
) -> RequestExplanation {
    let timed = timed_steps(r, steps);
    let mut findings = Vec::new();
    if let Some(t) = &ctx.typical {
        for p in PHASES {
            if let (Some(v), Some(tv)) = (phase_value(r, p), typical_value(t, p)) {
                let (cause, sentence) = phase_finding(p, v, tv, r, &timed, neighbours, ctx);
                findings.push(Finding {
                    cause,
                    phase: p.to_string(),
                    value_ms: v,
                    typical_ms: tv,
                    excess_ms: v - tv,
                    sentence,
                });
            }
        }
        if findings.is_empty() {
            // No phases (the engine was not followed): time to first token is what is known.
            if let Some(tt) = t.ttft_ms {
                let v = r.request.ttft_ms;
                findings.push(Finding {
                    cause: "ttft".into(),
                    phase: "ttft".into(),
                    value_ms: v,
                    typical_ms: tt,
                    excess_ms: v - tt,
                    sentence: format!(
                        "The first token came after {} (typical {}); the engine was not followed, so \
                         its phases are unknown.",
                        ms(v),
                        ms(tt)
                    ),
                });
            }
        }
    }
    findings.sort_by(|a, b| b.excess_ms.total_cmp(&a.excess_ms));
    let typical_e2e = ctx.typical.as_ref().and_then(|t| t.e2e_ms);
    let e2e = r.request.e2e_ms;
    let dominant = findings
        .iter()
        .find(|f| f.excess_ms > 0.0)
        .map(|f| f.cause.clone());
    let summary = match (typical_e2e, findings.first()) {
        (None, _) => format!("e2e {}: no reference requests to compare with.", ms(e2e)),
        (Some(t), _) if e2e <= t => {
            format!("e2e {} is not slower than typical ({}).", ms(e2e), ms(t))
        }
        (Some(t), Some(f)) if f.excess_ms > 0.0 => format!(
            "e2e {} against a typical {} (+{}); most of it: {} (+{}). {}",
            ms(e2e),
            ms(t),
            ms(e2e - t),
            f.cause.replace('_', " "),
            ms(f.excess_ms),
            f.sentence
        ),
        (Some(t), _) => format!(
            "e2e {} against a typical {}; no measured phase explains the difference.",
            ms(e2e),
            ms(t)
        ),
    };
    RequestExplanation {
        trace_id: r.request.trace_id,
        node: r.request.node.clone(),
        model: r.request.model.clone(),
        e2e_ms: e2e,
        typical_e2e_ms: typical_e2e,
        reference_count: ctx.reference_count,
        summary,
        dominant,
        findings,
    }
}

/// Explains a window's slow cohort from the breakdown's slow-vs-median comparison.
pub fn explain_cohort(svm: &SlowVsMedian) -> CohortExplanation {
    let mut findings: Vec<Finding> = svm
        .slow
        .phases
        .iter()
        .zip(svm.median.phases.iter())
        .map(|((p, s), (_, m))| Finding {
            cause: p.to_string(),
            phase: p.to_string(),
            value_ms: s.mean_ms,
            typical_ms: m.mean_ms,
            excess_ms: s.mean_ms - m.mean_ms,
            sentence: format!(
                "{p}: {} on average in the slow cohort against {} in the median one ({:+.0} points of e2e).",
                ms(s.mean_ms),
                ms(m.mean_ms),
                (s.share - m.share) * 100.0
            ),
        })
        .collect();
    findings.push(Finding {
        cause: "unattributed".into(),
        phase: "unattributed".into(),
        value_ms: svm.slow.unattributed.mean_ms,
        typical_ms: svm.median.unattributed.mean_ms,
        excess_ms: svm.unattributed_diff.mean_ms,
        sentence: format!(
            "time outside every measured phase: {} against {}.",
            ms(svm.slow.unattributed.mean_ms),
            ms(svm.median.unattributed.mean_ms)
        ),
    });
    findings.sort_by(|a, b| b.excess_ms.total_cmp(&a.excess_ms));
    let dominant = findings
        .iter()
        .find(|f| f.excess_ms > 0.0)
        .map(|f| f.cause.clone());
    let summary = match findings.first().filter(|f| f.excess_ms > 0.0) {
        Some(f) => format!(
            "The {} requests at or above e2e p{} ({} mean) take {} longer than the median cohort ({} mean); \
             the largest part: {} (+{}).",
            svm.slow.count,
            crate::breakdown::level_name(svm.slow_quantile),
            ms(svm.slow.mean_e2e_ms),
            ms(svm.slow.mean_e2e_ms - svm.median.mean_e2e_ms),
            ms(svm.median.mean_e2e_ms),
            f.cause,
            ms(f.excess_ms)
        ),
        None => "The slow cohort is not slower in any measured phase.".into(),
    };
    CohortExplanation {
        slow_vs_median: svm.clone(),
        summary,
        dominant,
        findings,
    }
}

#[cfg(test)]
mod tests;
