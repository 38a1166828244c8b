//! The `--requests` record (docs/request-format.md): one finished request, its span tree and
//! its engine steps, and the text rules applied to what a client sent (`traceparent`, query
//! strings).
use std::collections::BTreeMap;
use std::net::IpAddr;

use inferscope_api::{SpanId, TraceId};
use serde::Serialize;
use serde_json::Value;

/// One span of a request's tree.
#[derive(Debug, Clone, Serialize)]
pub struct SpanJson {
    /// `http.server`, `frontend`, `queue`, `prefill`, `decode`, `stream_out`.
    pub name: &'static str,
    /// 16 hex chars in JSON.
    pub span_id: SpanId,
    /// Parent span (absent for the root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<SpanId>,
    /// Start, Unix ns.
    pub start_unix_ns: u64,
    /// End, Unix ns.
    pub end_unix_ns: u64,
    /// Attributes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<&'static str, Value>,
    /// Links to the engine steps the request took part in (root span only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkJson>,
}

/// A link from a request's span to an engine step's span.
#[derive(Debug, Clone, Serialize)]
pub struct LinkJson {
    /// The step's trace.
    pub trace_id: TraceId,
    /// The step's span.
    pub span_id: SpanId,
    /// `engine.step_id`.
    pub attributes: BTreeMap<&'static str, Value>,
}

/// One engine step, exported once (by [`crate::export`]) however many requests it served;
/// each of them lists it here and links to it from its root span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepJson {
    /// Unique per engine instance.
    pub step_id: u64,
    /// The step's own trace and span ([`inferscope_api::step_context`]).
    pub trace_id: TraceId,
    /// The step's span.
    pub span_id: SpanId,
    /// Start, Unix ns.
    pub start_unix_ns: u64,
    /// End, Unix ns.
    pub end_unix_ns: u64,
    /// Requests (vLLM) or tokens (llama.cpp) in the step.
    pub batch_size: u32,
    /// What `batch_size` counts: `requests` or `tokens`.
    pub batch_unit: &'static str,
    /// Tokens its requests computed in it, as far as known (0: unknown): the denominator of
    /// each request's share of its GPU time.
    #[serde(skip_serializing_if = "is_zero")]
    pub tokens: u32,
    /// What the GPU did in it (CUDA hooks), when seen.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<StepGpuJson>,
    /// Its collectives lined up across ranks (NCCL hooks), when seen.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub coll: Option<StepCollJson>,
}

/// The collectives of one engine step (`engine::StepColl`), in the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepCollJson {
    /// Collectives lined up across the step's ranks.
    pub collectives: u32,
    /// Their summed waits: last − first arrival of each.
    pub collective_wait_ns: u64,
    /// The rank that delayed the step most.
    pub straggler_rank: u32,
    /// Its summed lag: last − second-to-last arrival of the collectives it was last at.
    pub straggler_lag_ns: u64,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// The GPU side of one engine step (`engine::StepGpu`), in the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepGpuJson {
    /// `full_graph`, `piecewise` or `eager`.
    pub gpu_class: &'static str,
    /// GPU span of the step (the longest rank's).
    pub gpu_ns: u64,
    /// Host time spent launching it.
    pub gpu_launch_ns: u64,
    /// CUDA graph launches.
    pub graph_launches: u32,
    /// Kernel launches outside graphs.
    pub kernel_launches: u64,
    /// Device-to-host copy bytes.
    pub dtoh_bytes: u64,
    /// Host-to-device copy bytes.
    pub htod_bytes: u64,
    /// Time the host waited in the synchronize.
    pub sync_wait_ns: u64,
    /// Paced by the host (a CPU-bound step).
    pub host_bound: bool,
    /// `gpu_ns` is an upper bound (host-bound, a synchronize that found it done, or an unknown
    /// GPU start), not a measurement.
    pub gpu_upper_bound: bool,
    /// GPU steps (ranks) merged into it.
    pub gpu_ranks: u16,
}

/// A connection endpoint inside its network namespace (the record's `netns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Address.
    pub ip: IpAddr,
    /// Port.
    pub port: u16,
}

/// One finished request: the documented `--requests` output (one JSON object per line).
///
/// `kind` `"hop"`: an outbound call that is not inside a request's record (not linked to any,
/// or finished after its request's record went out). Only `trace_id`, `parent_span_id`, `pid`,
/// the times and `spans` (its one `http.client` span) are filled; it is exported as that span.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestRecord {
    /// `"request"`, or `"hop"`.
    pub kind: &'static str,
    /// 32 lowercase hex chars in JSON: from the incoming `traceparent`, else generated.
    pub trace_id: TraceId,
    /// Parent span id from `traceparent`, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<SpanId>,
    /// Incoming `x-request-id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_request_id: Option<String>,
    /// Tenant label (`--tenant-header`/`--tenant-field`), bounded in cardinality.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `id` of the response (e.g. `cmpl-…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
    /// Engine request id, when the engine was followed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_request_id: Option<String>,
    /// Engine name, from the follower that claimed the server process (`vllm`, `llama.cpp`),
    /// else `openai-compatible`.
    pub engine: &'static str,
    /// Engine instance whose steps the request took part in: the engine process's
    /// `pid:start_ticks` (absent when no step was seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_instance: Option<String>,
    /// Server process.
    pub pid: u32,
    /// Server fd of the connection.
    pub fd: i32,
    /// Network namespace inode of the connection (0 when unknown).
    pub netns: u32,
    /// Client `addr:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Server `addr:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The client's address, structured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_endpoint: Option<Endpoint>,
    /// The server's address, structured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_endpoint: Option<Endpoint>,
    /// TCP sequence number of the request's first byte (the client's send sequence), when
    /// known: with the connection's endpoints it names the same bytes on both hosts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub req_tcp_seq: Option<u32>,
    /// TCP sequence number of the response's first byte (the server's send sequence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resp_tcp_seq: Option<u32>,
    /// The exchange's hop id ([`inferscope_api::hop_id`] of the two sequence numbers): the span
    /// id of the caller's `http.client` span when the caller's node traces it too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hop_id: Option<SpanId>,
    /// HTTP method.
    pub method: String,
    /// HTTP path.
    pub path: String,
    /// Response status (0 when none was sent).
    pub status: u16,
    /// `complete`, `client_abort`, `server_close`, `timeout`, `lost`.
    pub outcome: &'static str,
    /// Why the content stopped being followed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gave_up: Option<&'static str>,
    /// Model from the request body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `stream` from the request body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Response was `text/event-stream`.
    pub sse: bool,
    /// Request bytes.
    pub req_bytes: u64,
    /// Response bytes.
    pub resp_bytes: u64,
    /// Wire start: the request's first byte reached the host (or was first read).
    pub start_unix_ns: u64,
    /// Last response byte written.
    pub end_unix_ns: u64,
    /// Where `start_unix_ns` comes from: `arrival` (kernel receive path) or `read`.
    pub start_source: &'static str,
    /// Time the request waited in the socket before the server read it.
    pub read_wait_ns: u64,
    /// Wire end-to-end.
    pub e2e_ns: u64,
    /// Wire time to first token: start → first SSE event carrying a generated token, empty or
    /// not (never a role-only or usage-only event; non-streamed: first response byte).
    pub ttft_ns: u64,
    /// Wire time to first visible text: start → first SSE event with non-empty text or a tool
    /// call (streams only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_text_ns: Option<u64>,
    /// Mean time per output chunk after the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpot_ns: Option<u64>,
    /// `usage.prompt_tokens` the server reported (non-streamed bodies; streams that asked for
    /// `stream_options.include_usage`), when the response's end was captured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u32>,
    /// `usage.completion_tokens`, as `prompt_tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u32>,
    /// SSE token events.
    pub chunks: u64,
    /// Largest gap between consecutive chunks.
    pub max_gap_ns: u64,
    /// Offsets of the SSE token events from `start_unix_ns` (first 4096).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chunk_offsets_ns: Vec<u64>,
    /// Offsets from `start_unix_ns` of the engine's outputs for this request (vLLM: each output
    /// message back in the frontend; llama.cpp: each `llama_decode` end; first 4096): the
    /// engine-side token times beside `chunk_offsets_ns`, the wire's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub engine_output_offsets_ns: Vec<u64>,
    /// `data: [DONE]` seen.
    pub done: bool,
    /// Start → handed to the engine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frontend_ns: Option<u64>,
    /// Arrived at the scheduler → first step it ran in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_ns: Option<u64>,
    /// The step that produced its first token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_ns: Option<u64>,
    /// First token's step end → last token's step end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_ns: Option<u64>,
    /// Last output received by the frontend → last byte written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_ns: Option<u64>,
    /// Handed to the engine → first output back in the frontend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_ttft_ns: Option<u64>,
    /// Handed to the engine → last output back in the frontend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_e2e_ns: Option<u64>,
    /// Engine steps the request took part in.
    pub engine_steps: u32,
    /// Those steps, in order (the root span links to each).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepJson>,
    /// Tokens this request computed in each of `steps` (same order; empty when unknown): the
    /// weights of `gpu_cost_ns`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub step_tokens: Vec<u32>,
    /// GPU time, latency view: the GPU spans of the steps it was in (it waited for each whole).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_ns: Option<u64>,
    /// GPU time, cost view: each step's GPU span times its tokens in the step over the
    /// step's tokens, so the requests of a batch add up to the step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_cost_ns: Option<u64>,
    /// Wall time of its steps that the host paced (CPU-bound steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_host_bound_ns: Option<u64>,
    /// Steps whose GPU time is only an upper bound (see `StepGpuJson::gpu_upper_bound`): the
    /// GPU figures above are exact when 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_upper_bound_steps: Option<u32>,
    /// Collectives lined up across ranks in its steps (NCCL hooks; absent when none seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collectives: Option<u32>,
    /// Their summed waits for the slowest rank.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collective_wait_ns: Option<u64>,
    /// The rank that delayed it most: the largest lag summed over its steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub straggler_rank: Option<u32>,
    /// That rank's summed lag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub straggler_lag_ns: Option<u64>,
    /// The span tree.
    pub spans: Vec<SpanJson>,
}

/// A request target with its query's values removed: `/v1/x?api-key=s3&b=2` → `/v1/x?api-key&b`
/// (values can be credentials; keys say what was passed). Fragments are dropped too.
pub fn redact_query(target: &str) -> String {
    let target = target.split('#').next().unwrap_or(target);
    let Some((path, query)) = target.split_once('?') else {
        return target.to_owned();
    };
    let keys: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split('=').next().unwrap_or(kv))
        .collect();
    if keys.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", keys.join("&"))
    }
}

/// Parses a W3C `traceparent`: returns (trace id, parent span id) when valid.
pub fn parse_traceparent(v: &str) -> Option<(TraceId, SpanId)> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    if parts.len() < 4 || parts[0].len() != 2 || parts[0] == "ff" {
        return None;
    }
    Some((parts[1].parse().ok()?, parts[2].parse().ok()?))
}
