//! Request-latency histograms for `GET /metrics`, named after the OpenTelemetry GenAI semantic
//! conventions in Prometheus form, per (model, node, engine):
//!
//! * `gen_ai_server_time_to_first_token_seconds`: streamed requests with a 2xx status (TTFT as
//!   stored: the first SSE token event, docs/request-format.md);
//! * `gen_ai_server_time_per_output_token_seconds`: requests with a TPOT (two token events or
//!   more);
//! * `gen_ai_server_request_duration_seconds`: every request (E2E);
//! * `inferscope_request_phase_seconds{phase=…}`: each phase that was measured.
//!
//! Observed once per request when its row is committed to ClickHouse (a resent batch is not
//! observed twice), so the histograms carry the same figures as the `requests` table. Label
//! sets are bounded ([`MAX_SERIES`]); beyond, requests count under `_other` labels and in
//! `inferscope_latency_series_overflow_total`.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::store::rows::RequestRow;

/// Most distinct (model, node, engine) label sets.
pub const MAX_SERIES: usize = 512;

/// Bucket bounds (seconds) the GenAI conventions give for time to first token.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// ... for time per output token.
const TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
/// ... for request duration (also used for the phases).
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// The phases, in `RequestRow` order.
const PHASES: [&str; 5] = ["frontend", "queue", "prefill", "decode", "delivery"];

/// One histogram: cumulative counts are computed when rendering.
#[derive(Debug, Clone)]
struct Hist {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum_ns: u64,
    count: u64,
}

impl Hist {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum_ns: 0,
            count: 0,
        }
    }

    fn observe(&mut self, ns: u64) {
        let s = ns as f64 / 1e9;
        let i = self
            .bounds
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.count += 1;
    }
}

/// The histograms of one label set.
#[derive(Debug, Clone)]
struct Series {
    ttft: Hist,
    tpot: Hist,
    duration: Hist,
    phases: [Hist; 5],
}

impl Series {
    fn new() -> Self {
        Self {
            ttft: Hist::new(TTFT_BUCKETS),
            tpot: Hist::new(TPOT_BUCKETS),
            duration: Hist::new(DURATION_BUCKETS),
            phases: std::array::from_fn(|_| Hist::new(DURATION_BUCKETS)),
        }
    }
}

/// (model, node, engine).
type Labels = (String, String, String);

/// A histogram family: name, help, and which histogram of a series it renders.
type Family = (&'static str, &'static str, fn(&Series) -> &Hist);

/// What one committed request contributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    labels: Labels,
    /// TTFT when it counts (streamed, 2xx).
    ttft_ns: Option<u64>,
    tpot_ns: Option<u64>,
    e2e_ns: u64,
    phases: [Option<u64>; 5],
}

impl Sample {
    /// The sample of a stored row.
    pub fn of(r: &RequestRow) -> Self {
        let ok = (200..300).contains(&r.status);
        Self {
            labels: (r.model.clone(), r.node.clone(), r.engine.clone()),
            ttft_ns: (r.stream == 1 && ok).then_some(r.ttft_ns),
            tpot_ns: r.tpot_ns,
            e2e_ns: r.e2e_ns,
            phases: [
                r.frontend_ns,
                r.queue_ns,
                r.prefill_ns,
                r.decode_ns,
                r.delivery_ns,
            ],
        }
    }
}

/// The histograms, shared by the writer (observes) and `/metrics` (renders).
#[derive(Debug, Default)]
pub struct Latency {
    series: Mutex<HashMap<Labels, Series>>,
    overflow: AtomicU64,
}

impl Latency {
    /// Observes the requests of a commit.
    pub fn observe(&self, samples: &[Sample]) {
        if samples.is_empty() {
            return;
        }
        let mut map = self.series.lock().expect("latency lock");
        for s in samples {
            let key = if map.contains_key(&s.labels) || map.len() < MAX_SERIES {
                s.labels.clone()
            } else {
                self.overflow.fetch_add(1, Relaxed);
                let o = || "_other".to_string();
                (o(), o(), o())
            };
            let h = map.entry(key).or_insert_with(Series::new);
            if let Some(t) = s.ttft_ns {
                h.ttft.observe(t);
            }
            if let Some(t) = s.tpot_ns {
                h.tpot.observe(t);
            }
            h.duration.observe(s.e2e_ns);
            for (hist, v) in h.phases.iter_mut().zip(s.phases) {
                if let Some(v) = v {
                    hist.observe(v);
                }
            }
        }
    }

    /// Appends the histograms in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let map = self.series.lock().expect("latency lock").clone();
        let mut keys: Vec<&Labels> = map.keys().collect();
        keys.sort();
        let families: [Family; 3] = [
            (
                "gen_ai_server_time_to_first_token_seconds",
                "Time to first token of streamed 2xx requests (first SSE token event).",
                |s| &s.ttft,
            ),
            (
                "gen_ai_server_time_per_output_token_seconds",
                "Mean time per output token after the first.",
                |s| &s.tpot,
            ),
            (
                "gen_ai_server_request_duration_seconds",
                "Request duration on the wire (E2E).",
                |s| &s.duration,
            ),
        ];
        for (name, help, get) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for k in &keys {
                write_hist(out, name, &labels(k, None), get(&map[*k]));
            }
        }
        let name = "inferscope_request_phase_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Request phases (frontend, queue, prefill, decode, delivery) where measured.\n# TYPE {name} histogram"
        );
        for k in &keys {
            for (i, p) in PHASES.iter().enumerate() {
                write_hist(out, name, &labels(k, Some(p)), &map[*k].phases[i]);
            }
        }
        let _ = writeln!(
            out,
            "# HELP inferscope_latency_series_overflow_total Requests counted under `_other` labels (more than {MAX_SERIES} label sets).\n# TYPE inferscope_latency_series_overflow_total counter\ninferscope_latency_series_overflow_total {}",
            self.overflow.load(Relaxed)
        );
    }
}

/// `k="v",…` for a label set (and a phase), values escaped for the text format.
fn labels((model, node, engine): &Labels, phase: Option<&str>) -> String {
    let mut s = format!(
        "gen_ai_request_model=\"{}\",node=\"{}\",engine=\"{}\"",
        escape(model),
        escape(node),
        escape(engine)
    );
    if let Some(p) = phase {
        let _ = write!(s, ",phase=\"{p}\"");
    }
    s
}

/// Label-value escaping of the Prometheus text format: backslash, quote, line feed.
fn escape(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

fn write_hist(out: &mut String, name: &str, labels: &str, h: &Hist) {
    let mut cum = 0;
    for (i, b) in h.bounds.iter().enumerate() {
        cum += h.counts[i];
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
    }
    cum += h.counts[h.bounds.len()];
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cum}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_ns as f64 / 1e9);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(model: &str, ttft_ms: u64, stream: bool) -> Sample {
        Sample {
            labels: (model.into(), "n1".into(), "vllm".into()),
            ttft_ns: stream.then_some(ttft_ms * 1_000_000),
            tpot_ns: Some(20_000_000),
            e2e_ns: 300_000_000,
            phases: [Some(1_000_000), None, Some(50_000_000), None, None],
        }
    }

    #[test]
    fn renders_histograms_per_label_set() {
        let l = Latency::default();
        l.observe(&[
            sample("m", 30, true),
            sample("m", 300, true),
            sample("m", 5, false),
        ]);
        let mut t = String::new();
        l.render(&mut t);
        let lbl = r#"gen_ai_request_model="m",node="n1",engine="vllm""#;
        for line in [
            format!("gen_ai_server_time_to_first_token_seconds_bucket{{{lbl},le=\"0.04\"}} 1"),
            format!("gen_ai_server_time_to_first_token_seconds_bucket{{{lbl},le=\"+Inf\"}} 2"),
            format!("gen_ai_server_time_to_first_token_seconds_sum{{{lbl}}} 0.33"),
            format!("gen_ai_server_request_duration_seconds_count{{{lbl}}} 3"),
            format!("inferscope_request_phase_seconds_count{{{lbl},phase=\"prefill\"}} 3"),
            format!("inferscope_request_phase_seconds_count{{{lbl},phase=\"queue\"}} 0"),
            "inferscope_latency_series_overflow_total 0".to_string(),
        ] {
            assert!(t.contains(&line), "{line} missing in\n{t}");
        }
    }

    #[test]
    fn label_sets_are_bounded_and_values_escaped() {
        let l = Latency::default();
        let many: Vec<Sample> = (0..MAX_SERIES + 10)
            .map(|i| sample(&format!("m{i}"), 10, true))
            .collect();
        l.observe(&many);
        l.observe(&[sample("a\"b\\c\nd", 10, true)]);
        let mut t = String::new();
        l.render(&mut t);
        assert!(t.contains("inferscope_latency_series_overflow_total 11"));
        assert!(t.contains(r#"gen_ai_request_model="_other""#));
        assert!(!t.contains("a\"b"));
        let l = Latency::default();
        l.observe(&[sample("a\"b\\c\nd", 10, true)]);
        let mut t = String::new();
        l.render(&mut t);
        assert!(t.contains(r#"gen_ai_request_model="a\"b\\c\nd""#), "{t}");
    }
}
