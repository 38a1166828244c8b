//! `GET /api/v1/traces/{trace_id}`: a trace's requests, spans and engine steps.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{SpanId, TraceId};
use crate::requests::RequestSummary;

/// Most spans returned (decode-heavy requests have one `engine.step` span per step).
pub const MAX_SPANS: u64 = 20_000;
/// Most engine steps looked up per request row.
pub const MAX_STEPS: usize = 4096;
/// Most trace ids listed per shared step.
pub const MAX_SHARED_IDS: u64 = 32;
/// Most batched-with requests listed.
pub const MAX_NEIGHBOURS: u64 = 100;
/// Requests that shared a step started at most this long before this one.
pub const NEIGHBOUR_LOOKBACK_S: u64 = 3600;
/// Most concurrent requests examined for shared steps, per request row.
pub const MAX_CANDIDATES: u64 = 5000;
/// Most traces one `follow=hops` view gathers (the asked one included).
pub const MAX_LINKED_TRACES: usize = 16;
/// Most hops listed per trace.
pub const MAX_HOPS: usize = 256;
/// Largest relative drift assumed between two nodes' clocks, parts per million: a bound taken
/// Δt away from a hop widens by this much of Δt when it bounds that hop's offset.
pub const MAX_DRIFT_PPM: u64 = 50;
/// Other hops between the same two nodes within this distance (ns) bound a hop's offset too.
pub const CLOCK_WINDOW_NS: u64 = 30_000_000_000;

/// A span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanOut {
    /// Its trace (another trace than the asked one in a `follow=hops` view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<TraceId>,
    /// 16 hex.
    pub span_id: SpanId,
    /// 16 hex, empty for a root without a caller.
    #[serde(with = "crate::ids::empty_is_none")]
    pub parent_span_id: Option<SpanId>,
    /// `http.server`, `frontend`, `queue`, `prefill`, `decode`, `stream_out`, `engine.step`, ...
    pub name: String,
    /// Node that recorded it.
    pub node: String,
    /// Process.
    pub pid: u32,
    /// Start, Unix ns.
    pub start_unix_ns: u64,
    /// End, Unix ns.
    pub end_unix_ns: u64,
    /// Start relative to the trace's first span (ms); in a `follow=hops` view, on the asked
    /// trace's node's clock (`clock_offset_ns` taken off).
    pub offset_ms: f64,
    /// Duration (ms).
    pub duration_ms: f64,
    /// In a `follow=hops` view, for a span recorded on another node: that node's clock minus the
    /// asked trace's node's clock, the middle of its bounds (`null`: the same node, or no
    /// bound). `start_unix_ns`/`end_unix_ns` stay as recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ns: Option<i64>,
    /// How far the true offset can be from `clock_offset_ns` (half the bounds' width).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_error_ns: Option<u64>,
    /// Attributes (values as strings).
    pub attributes: BTreeMap<String, String>,
    /// Links to spans of other traces.
    pub links: Vec<SpanLinkOut>,
}

/// A span link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanLinkOut {
    /// 32 hex.
    pub trace_id: TraceId,
    /// 16 hex.
    pub span_id: SpanId,
}

/// A request row of the trace, with its per-request arrays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestDetail {
    /// The summary fields.
    #[serde(flatten)]
    pub request: RequestSummary,
    /// Engine steps it took part in.
    pub step_ids: Vec<u64>,
    /// SSE token events, offsets from the start (ms): the wire's token times.
    pub chunk_offsets_ms: Vec<f64>,
    /// The engine's outputs for it, offsets from the start (ms): the engine's token times
    /// (vLLM: output messages back in the API server; llama.cpp: `llama_decode` ends).
    #[serde(default)]
    pub engine_output_offsets_ms: Vec<f64>,
    /// The engine instance whose steps `step_ids` are (`pid:start_ticks`; `null`: unknown).
    pub engine_instance: Option<String>,
    /// The client's endpoint on the server's host (`null`: not recorded).
    pub client_endpoint: Option<Endpoint>,
    /// The server's endpoint.
    pub server_endpoint: Option<Endpoint>,
    /// TCP sequence number of the request's first byte (the client's send sequence).
    pub req_tcp_seq: Option<u32>,
    /// TCP sequence number of the response's first byte (the server's send sequence).
    pub resp_tcp_seq: Option<u32>,
    /// The exchange's hop id: the span id of the caller's `http.client` span (`null`: no
    /// sequence number, or stored before hops).
    #[serde(default)]
    pub hop_id: Option<SpanId>,
}

/// One half of a hop, as its node recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HopHalf {
    /// Node.
    pub node: String,
    /// Process.
    pub pid: u32,
    /// The trace this half is in.
    pub trace_id: Option<TraceId>,
    /// Caller: first request byte sent; server: first request byte in (Unix ns, the node's
    /// clock).
    pub start_unix_ns: u64,
    /// Caller: last response byte read; server: last response byte written.
    pub end_unix_ns: u64,
}

/// One HTTP exchange between two processes (a hop): the caller's `http.client` span and the
/// server's request, joined by hop id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HopOut {
    /// The hop id (the caller's span id).
    pub hop_id: SpanId,
    /// `outbound`: this trace made the call; `inbound`: this trace served it.
    pub direction: String,
    /// How the caller's node linked the call to the request it served: `header`,
    /// `response_id`, `body`, `timing`, `none` (`null`: the caller's half is not stored).
    pub link: Option<String>,
    /// The caller's half (`null`: its node does not trace it, or it is not stored yet).
    pub client: Option<HopHalf>,
    /// The server's half (`null`: likewise).
    pub server: Option<HopHalf>,
    /// Server start − caller start: the request's way there (network, accept wait), in ms of
    /// the two nodes' clocks as stored (not corrected for their offset).
    pub to_server_ms: Option<f64>,
    /// Caller end − server end: the response's last bytes' way back, likewise.
    pub from_server_ms: Option<f64>,
    /// Bounds of the server node's clock minus the caller node's clock at this hop (ns), from
    /// this hop and the other hops between the two nodes within [`CLOCK_WINDOW_NS`]: the
    /// request's first byte cannot arrive before it was sent, nor the response's last byte
    /// before it was written. 0 and 0 when both halves are on one node; `null` without both.
    #[serde(default)]
    pub offset_lo_ns: Option<i64>,
    /// Upper bound, likewise.
    #[serde(default)]
    pub offset_hi_ns: Option<i64>,
    /// Hops that bounded it.
    #[serde(default)]
    pub offset_samples: u64,
    /// `false` when the hops disagreed beyond [`MAX_DRIFT_PPM`] (then only this hop's own bounds
    /// are given): a clock stepped, or drift exceeds the assumption.
    #[serde(default = "yes")]
    pub offset_consistent: bool,
}

fn yes() -> bool {
    true
}

/// A node's clock against the asked trace's node's, in a `follow=hops` view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeClock {
    /// Node.
    pub node: String,
    /// Lower bound of its clock minus the reference's (ns).
    pub offset_lo_ns: i64,
    /// Upper bound.
    pub offset_hi_ns: i64,
}

/// A connection endpoint as its host's network namespace sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// IPv4 or IPv6 address, as text.
    pub ip: String,
    /// Port.
    pub port: u16,
    /// Network namespace inode (0: unknown).
    pub netns: u32,
}

/// An engine step of the trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepOut {
    /// Node.
    pub node: String,
    /// Step id (unique per node and engine instance).
    pub step_id: u64,
    /// Engine instance (`null`: the step itself was not stored).
    pub engine_instance: Option<String>,
    /// Start, Unix ns.
    pub start_unix_ns: Option<u64>,
    /// End, Unix ns.
    pub end_unix_ns: Option<u64>,
    /// Start relative to the trace's first span (ms).
    pub offset_ms: Option<f64>,
    /// Duration (ms).
    pub duration_ms: Option<f64>,
    /// Requests in the step's batch, as recorded by the engine.
    pub batch_size: Option<u32>,
    /// What `batch_size` counts: `requests` or `tokens` (`null`: not stored).
    pub batch_unit: Option<String>,
    /// The step's own span (it is exported once, as a span of its own trace; the request's
    /// root span links to it).
    pub span_id: Option<SpanId>,
    /// The step's trace.
    pub trace_id: Option<TraceId>,
    /// Tokens its requests computed in it (null: unknown).
    #[serde(default)]
    pub tokens: Option<u32>,
    /// Tokens this request computed in it: its weight in the step's GPU cost (null: unknown).
    #[serde(default)]
    pub request_tokens: Option<u32>,
    /// What the GPU did in it (null: not seen by the CUDA hooks).
    #[serde(default)]
    pub gpu: Option<StepGpuOut>,
    /// Its NCCL collectives lined up across tensor-parallel ranks (null: none seen).
    #[serde(default)]
    pub collectives: Option<StepCollOut>,
    /// Other stored requests that took part in this step.
    pub shared_with_count: u64,
    /// Their trace ids (at most 32).
    pub shared_with: Vec<TraceId>,
}

/// The GPU side of an engine step, from the CUDA hooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepGpuOut {
    /// `full_graph` (one CUDA graph: uniform decode), `piecewise` (several: mixed, prefill) or
    /// `eager` (kernels one by one).
    pub class: String,
    /// GPU time of the step (the longest rank's; an upper bound when `host_bound`).
    pub gpu_ms: f64,
    /// Host time spent launching it.
    pub launch_ms: f64,
    /// Time the host waited for its completion.
    pub sync_wait_ms: f64,
    /// CUDA graph launches.
    pub graph_launches: u32,
    /// Kernel launches outside graphs.
    pub kernel_launches: u64,
    /// Device-to-host copy bytes.
    pub dtoh_bytes: u64,
    /// Host-to-device copy bytes.
    pub htod_bytes: u64,
    /// The host paced it (a CPU-bound step).
    pub host_bound: bool,
    /// `gpu_ms` is an upper bound, not a measurement (host-bound, its wait found it done, or its
    /// GPU start unknown).
    #[serde(default)]
    pub upper_bound: bool,
    /// GPU steps merged into it (tensor-parallel ranks).
    pub ranks: u32,
}

/// The NCCL collectives of an engine step, lined up across its ranks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepCollOut {
    /// Collectives lined up.
    pub count: u32,
    /// Their summed waits for the slowest rank (last − first arrival of each).
    pub wait_ms: f64,
    /// The rank that delayed the step most.
    pub straggler_rank: u32,
    /// Its summed lag (last − second-to-last arrival of the collectives it was last at).
    pub straggler_lag_ms: f64,
}

/// Another request batched with this one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Neighbour {
    /// The request.
    #[serde(flatten)]
    pub request: RequestSummary,
    /// Steps it shared with this trace.
    pub shared_steps: u64,
}

/// The `/api/v1/traces/{trace_id}` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// The id, lowercase.
    pub trace_id: TraceId,
    /// Nodes that recorded spans or requests of this trace.
    pub nodes: Vec<String>,
    /// Request rows (one per node that served it).
    pub requests: Vec<RequestDetail>,
    /// Spans, by start time (parents before children at equal starts), across nodes.
    pub spans: Vec<SpanOut>,
    /// More than [`MAX_SPANS`] spans exist.
    pub spans_truncated: bool,
    /// Engine steps the requests took part in, by node and step id.
    pub steps: Vec<StepOut>,
    /// A request had more than [`MAX_STEPS`] steps.
    pub steps_truncated: bool,
    /// Other requests that shared steps with this trace, most shared first (at most 100).
    pub batched_with: Vec<Neighbour>,
    /// More than [`MAX_CANDIDATES`] concurrent requests were examined: `shared_with` and
    /// `batched_with` may be incomplete.
    pub batched_with_truncated: bool,
    /// Hops of this trace: the calls it made and the call it served, each with both halves
    /// where stored (at most [`MAX_HOPS`]).
    #[serde(default)]
    pub hops: Vec<HopOut>,
    /// With `follow=hops`: each node's clock against the asked trace's node's (first), composed
    /// along the hops.
    #[serde(default)]
    pub clocks: Vec<NodeClock>,
    /// With `follow=hops`: the other traces gathered across hops (their spans and requests are
    /// in `spans` and `requests`, a server's root span under the caller's `http.client` span;
    /// at most [`MAX_LINKED_TRACES`] in all).
    #[serde(default)]
    pub linked_traces: Vec<TraceId>,
}
