//! `GET /api/v1/samples`: per-request values of the latency metrics over a filtered window, for
//! clients that compute their own statistics (`inferscope gate`'s bootstrap) or keep a baseline
//! in a file.
use serde::{Deserialize, Serialize};

use crate::window::Window;

/// The metrics a sample set holds: **the one declaration** (name, what it is). Each is the
/// `{name}_ns` column of `requests` but `max_gap` (`max_gap_ns`, the longest wait between two
/// SSE events of a stream, i.e. the worst inter-token gap the client saw).
pub const SAMPLE_METRICS: [(&str, &str); 10] = [
    ("e2e", "end to end"),
    ("ttft", "time to first token"),
    ("first_text", "time to first visible text"),
    ("tpot", "time per output token"),
    ("max_gap", "longest inter-token gap"),
    ("frontend", "frontend phase"),
    ("queue", "queue phase"),
    ("prefill", "prefill phase"),
    ("decode", "decode phase"),
    ("delivery", "delivery phase"),
];

/// The values of one metric, in milliseconds, one per request that has it (requests without
/// the metric, e.g. `tpot` of a one-token answer or phases of an unfollowed engine, are left
/// out), in the order the requests started: neighbours in the list were served close together
/// and share the engine's state (its batch, its queue), which the gate's block bootstrap keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSamples {
    /// A name of [`SAMPLE_METRICS`].
    pub metric: String,
    /// Values (ms).
    pub values_ms: Vec<f64>,
}

/// The `/api/v1/samples` response; also the format of a saved baseline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    /// The window queried.
    pub window: Window,
    /// The filters applied, as `key=value` pairs (empty: none).
    #[serde(default)]
    pub filters: Vec<String>,
    /// Requests in the window after filters.
    pub count: u64,
    /// Requests returned: `count`, or `limit` when the window holds more; then the rows are a
    /// uniform pseudo-random subset (chosen by a hash of the trace id, so the same every time).
    pub returned: u64,
    /// `returned < count`.
    pub sampled: bool,
    /// One entry per metric, in [`SAMPLE_METRICS`] order.
    pub metrics: Vec<MetricSamples>,
}

impl Samples {
    /// The values of `metric` (empty when absent).
    pub fn values(&self, metric: &str) -> &[f64] {
        self.metrics
            .iter()
            .find(|m| m.metric == metric)
            .map_or(&[], |m| m.values_ms.as_slice())
    }
}
