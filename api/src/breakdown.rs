//! `GET /api/v1/breakdown`: quantiles and the slow-vs-median phase comparison.
use serde::{Deserialize, Serialize};

use crate::window::Window;
use crate::{GAPS, PHASES, RESOURCES};

/// One value per phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Phases<T> {
    /// Request arrival → handed to the engine.
    pub frontend: T,
    /// Waiting for the scheduler.
    pub queue: T,
    /// The first step that produced output.
    pub prefill: T,
    /// After prefill → the last step that produced output.
    pub decode: T,
    /// Last output received by the frontend → last byte written.
    pub delivery: T,
}

impl<T> Phases<T> {
    /// From values in [`PHASES`] order (`None`: fewer than five).
    pub fn from_vec(v: Vec<T>) -> Option<Self> {
        let mut it = v.into_iter();
        Some(Self {
            frontend: it.next()?,
            queue: it.next()?,
            prefill: it.next()?,
            decode: it.next()?,
            delivery: it.next()?,
        })
    }

    /// `(name, value)` in pipeline order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &T)> {
        PHASES.into_iter().zip([
            &self.frontend,
            &self.queue,
            &self.prefill,
            &self.decode,
            &self.delivery,
        ])
    }
}

/// One value per resource ([`RESOURCES`]): what a request used on the GPUs, beside its phases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Resources<T> {
    /// GPU time, latency view: the GPU spans of its steps.
    pub gpu: T,
    /// Wall time of its host-paced (CPU-bound) steps.
    pub gpu_host_bound: T,
    /// Time its steps' collectives waited for the slowest tensor-parallel rank.
    pub collective_wait: T,
}

impl<T> Resources<T> {
    /// From values in [`RESOURCES`] order (`None`: fewer than three).
    pub fn from_vec(v: Vec<T>) -> Option<Self> {
        let mut it = v.into_iter();
        Some(Self {
            gpu: it.next()?,
            gpu_host_bound: it.next()?,
            collective_wait: it.next()?,
        })
    }

    /// `(name, value)` in [`RESOURCES`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &T)> {
        RESOURCES
            .into_iter()
            .zip([&self.gpu, &self.gpu_host_bound, &self.collective_wait])
    }
}

/// One value per token-gap metric ([`GAPS`]): the client's view beside the engine's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TokenGaps<T> {
    /// Longest gap between two SSE events of a stream, as the client saw it (streams with two
    /// or more events).
    pub max_gap: T,
    /// The engine's TPOT: mean gap between its outputs after the first (compare `tpot`).
    pub engine_tpot: T,
    /// Longest gap between two engine outputs (compare `max_gap`).
    pub engine_max_gap: T,
}

impl<T> TokenGaps<T> {
    /// From values in [`GAPS`] order (`None`: fewer than three).
    pub fn from_vec(v: Vec<T>) -> Option<Self> {
        let mut it = v.into_iter();
        Some(Self {
            max_gap: it.next()?,
            engine_tpot: it.next()?,
            engine_max_gap: it.next()?,
        })
    }

    /// `(name, value)` in [`GAPS`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &T)> {
        GAPS.into_iter()
            .zip([&self.max_gap, &self.engine_tpot, &self.engine_max_gap])
    }
}

/// How many requests of the window have each metric (phases are unknown when the engine was
/// not followed; `tpot` needs two or more content events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricCounts {
    /// Requests with e2e (all).
    pub e2e: u64,
    /// Requests with ttft (all).
    pub ttft: u64,
    /// Requests with tpot.
    pub tpot: u64,
    /// Requests with each phase.
    #[serde(flatten)]
    pub phases: Phases<u64>,
    /// Requests with each resource (GPU hooks, NCCL hooks).
    #[serde(default)]
    pub resources: Resources<u64>,
    /// Requests with each token-gap metric (`null` counts as 0 from rollups, which keep none).
    #[serde(default)]
    pub gaps: TokenGaps<u64>,
}

/// The value of every metric at one quantile level, in milliseconds (`null`: no request in the
/// window has that metric).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantileRow {
    /// The level, e.g. 0.99.
    pub q: f64,
    /// End to end.
    pub e2e_ms: Option<f64>,
    /// Time to first token.
    pub ttft_ms: Option<f64>,
    /// Time per output token.
    pub tpot_ms: Option<f64>,
    /// Phases.
    pub frontend_ms: Option<f64>,
    /// Queue.
    pub queue_ms: Option<f64>,
    /// Prefill.
    pub prefill_ms: Option<f64>,
    /// Decode.
    pub decode_ms: Option<f64>,
    /// Delivery.
    pub delivery_ms: Option<f64>,
    /// Resources ([`RESOURCES`]): GPU time, CPU-bound time, collective wait (`null`: no
    /// request of the window has it).
    #[serde(default)]
    pub resources: Resources<Option<f64>>,
    /// Token gaps ([`GAPS`]): the wire's longest gap, the engine's TPOT and longest gap
    /// (`null`: no request of the window has it; always `null` from rollups).
    #[serde(default)]
    pub gaps: TokenGaps<Option<f64>>,
}

/// A phase in a cohort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PhaseMean {
    /// Sum of the phase over the cohort / cohort size (a request without the phase adds 0).
    pub mean_ms: f64,
    /// `mean_ms / mean_e2e_ms` of the cohort.
    pub share: f64,
    /// Requests of the cohort that have the phase.
    pub requests: u64,
}

/// A set of requests selected by e2e.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cohort {
    /// How it was selected, e.g. `e2e >= p99 (812.40 ms)`.
    pub definition: String,
    /// Requests.
    pub count: u64,
    /// Smallest e2e in the cohort (ms).
    pub min_e2e_ms: f64,
    /// Largest e2e in the cohort (ms).
    pub max_e2e_ms: f64,
    /// Mean e2e (ms).
    pub mean_e2e_ms: f64,
    /// Each phase's mean and share of `mean_e2e_ms`.
    pub phases: Phases<PhaseMean>,
    /// Sum of the phase shares: how much of e2e the phases explain.
    pub covered_share: f64,
    /// `mean_e2e_ms` minus the phase means (time outside every known phase), and its share.
    pub unattributed: PhaseMean,
    /// Each resource's mean over the cohort and share of `mean_e2e_ms` (they overlap the
    /// phases: not in `covered_share`).
    #[serde(default)]
    pub resources: Resources<PhaseMean>,
}

/// Slow minus median, for one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PhaseDiff {
    /// Difference of the means (ms).
    pub mean_ms: f64,
    /// Difference of the shares (fraction: 0.25 = 25 points).
    pub share: f64,
}

/// What is different about the slow requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlowVsMedian {
    /// The level that defines the slow cohort.
    pub slow_quantile: f64,
    /// Requests with e2e at or above the slow quantile.
    pub slow: Cohort,
    /// Requests with e2e between p40 and p60.
    pub median: Cohort,
    /// `slow - median` per phase.
    pub diff: Phases<PhaseDiff>,
    /// `slow - median` of the unattributed time.
    pub unattributed_diff: PhaseDiff,
    /// `slow - median` per resource.
    #[serde(default)]
    pub resources_diff: Resources<PhaseDiff>,
    /// The phase (or `unattributed`) whose share grew the most in the slow cohort.
    pub largest_difference: Option<String>,
}

/// The `/api/v1/breakdown` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    /// The window queried.
    pub window: Window,
    /// Requests in the window (after filters).
    pub count: u64,
    /// Requests that have each metric.
    pub samples: MetricCounts,
    /// One row per requested level, in the order requested.
    pub quantiles: Vec<QuantileRow>,
    /// Slow cohort vs median cohort; `null` when the window is empty (and from rollups).
    pub slow_vs_median: Option<SlowVsMedian>,
    /// What answered: `raw` (every stored request, exact quantiles) or `rollup` (the
    /// per-minute t-digest rollups: whole minutes, approximate quantiles).
    #[serde(default = "raw")]
    pub source: String,
    /// How far a `rollup` answer may be from the exact one (`null` for `raw`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approximation: Option<String>,
}

fn raw() -> String {
    "raw".into()
}

/// `0.99` → `99`, `0.999` → `99.9`.
pub fn level_name(q: f64) -> String {
    let s = format!("{:.4}", q * 100.0);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
