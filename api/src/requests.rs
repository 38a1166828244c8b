//! `GET /api/v1/requests`: one request's summary and a page of them.
use serde::{Deserialize, Serialize};

use crate::ids::TraceId;
use crate::window::Window;

/// One request, durations in milliseconds (`null`: unknown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestSummary {
    /// W3C trace id (32 hex).
    pub trace_id: TraceId,
    /// Start, RFC 3339.
    pub start: String,
    /// Start, Unix ns.
    pub start_unix_ns: u64,
    /// End, Unix ns.
    pub end_unix_ns: u64,
    /// Node.
    pub node: String,
    /// Server process.
    pub pid: u32,
    /// Engine kind.
    pub engine: String,
    /// Model.
    pub model: String,
    /// HTTP method.
    pub method: String,
    /// HTTP path.
    pub path: String,
    /// HTTP status (0: no response).
    pub status: u16,
    /// `complete`, `client_abort`, `server_close`, `timeout`, `lost`.
    pub outcome: String,
    /// Streamed response requested.
    pub stream: bool,
    /// End to end.
    pub e2e_ms: f64,
    /// Time to first token.
    pub ttft_ms: f64,
    /// Time per output token.
    pub tpot_ms: Option<f64>,
    /// Frontend phase.
    pub frontend_ms: Option<f64>,
    /// Queue phase.
    pub queue_ms: Option<f64>,
    /// Prefill phase.
    pub prefill_ms: Option<f64>,
    /// Decode phase.
    pub decode_ms: Option<f64>,
    /// Delivery phase.
    pub delivery_ms: Option<f64>,
    /// Engine: handed over → first output back.
    pub engine_ttft_ms: Option<f64>,
    /// Time to first visible text (first SSE event with non-empty text or a tool call; `ttft_ms`
    /// counts the first event carrying a token, empty or not). Streams only.
    #[serde(default)]
    pub first_text_ms: Option<f64>,
    /// Engine: handed over → last output back.
    pub engine_e2e_ms: Option<f64>,
    /// Time in the socket before the server read the request.
    pub read_wait_ms: f64,
    /// Request bytes.
    pub req_bytes: u64,
    /// Response bytes.
    pub resp_bytes: u64,
    /// SSE content events.
    pub chunks: u32,
    /// Engine steps taken part in.
    pub engine_steps: u32,
    /// Largest gap between content events.
    pub max_gap_ms: f64,
    /// Client `addr:port`.
    pub client: String,
    /// Server `addr:port`.
    pub server: String,
    /// Response `id`.
    pub response_id: String,
    /// `x-request-id` header.
    pub x_request_id: String,
    /// Engine's request id.
    pub engine_request_id: String,
    /// Why following stopped, if it did.
    pub gave_up: String,
    /// Prompt tokens from the response's `usage` (null when the server sent none: streams that
    /// did not ask for `stream_options.include_usage`).
    #[serde(default)]
    pub prompt_tokens: Option<u32>,
    /// Completion tokens from the response's `usage`, as `prompt_tokens`.
    #[serde(default)]
    pub completion_tokens: Option<u32>,
    /// GPU time, latency view: the GPU time of every engine step it was in (null: no step
    /// seen by the CUDA hooks).
    #[serde(default)]
    pub gpu_ms: Option<f64>,
    /// GPU time, cost view: each step's GPU time split across its requests by the tokens each
    /// computed in it.
    #[serde(default)]
    pub gpu_cost_ms: Option<f64>,
    /// Wall time of its steps that the host paced (CPU-bound steps).
    #[serde(default)]
    pub gpu_host_bound_ms: Option<f64>,
    /// Its steps whose GPU time is only an upper bound (0: `gpu_ms` and `gpu_cost_ms` are
    /// measurements).
    #[serde(default)]
    pub gpu_upper_bound_steps: Option<u32>,
    /// NCCL collectives of its steps lined up across tensor-parallel ranks (null: none seen).
    #[serde(default)]
    pub collectives: Option<u32>,
    /// Their summed waits for the slowest rank (last − first arrival of each).
    #[serde(default)]
    pub collective_wait_ms: Option<f64>,
    /// The rank that delayed the request most: the largest lag (last − second-to-last
    /// arrival) summed over its steps.
    #[serde(default)]
    pub straggler_rank: Option<u32>,
    /// That rank's summed lag.
    #[serde(default)]
    pub straggler_lag_ms: Option<f64>,
}

/// The `/api/v1/requests` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestList {
    /// The window queried.
    pub window: Window,
    /// Requests matching the filters (all pages).
    pub total: u64,
    /// Offset of this page.
    pub offset: u64,
    /// Page size asked for.
    pub limit: u64,
    /// Offset of the next page; `null` on the last one (or past the largest accepted offset).
    pub next_offset: Option<u64>,
    /// Sort key.
    pub sort: String,
    /// `desc` or `asc`.
    pub order: String,
    /// This page.
    pub requests: Vec<RequestSummary>,
}
