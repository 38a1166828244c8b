//! inferscope's query-API types: what `GET /api/v1/…` answers, shared by the aggregator (which
//! serves them), the `inferscope` CLI (which reads them) and tests. Serde only: linking this
//! crate brings in no server (ClickHouse, tonic, axum).
//!
//! `aggregator/openapi.yaml` documents the same shapes; `aggregator/tests/model_agreement.rs`
//! checks the phase list there, in the UI and in the CLI against [`PHASES`].
pub mod breakdown;
pub mod explain;
pub mod filters;
pub mod groups;
pub mod ids;
pub mod requests;
pub mod samples;
pub mod time;
pub mod trace;
pub mod window;

pub use ids::{hop_id, step_context, SpanId, StepScope, TraceId};
pub use window::Window;

/// `s` with every control character (C0, DEL, C1) written as `\u{..}`: strings that clients of
/// the engine choose (model, path, ids, attribute values) are stored this way by the aggregator
/// and printed this way by the CLI, so that no reader's terminal or log can be steered (cursor
/// moves, colours, titles, forged lines). Text without control characters is unchanged.
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                format!("\\u{{{:x}}}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The request phases, in pipeline order: **the one declaration**. Each is a `{phase}_ns` field
/// of `Request` (and a `{phase}_ns` column of `requests`), a `{phase}` span of node-probe's
/// request tree (`delivery` is the `stream_out` span), a `{phase}_ms` value of the query API
/// (`aggregator/openapi.yaml`), the UI's `PHASES` (`query-ui/src/api.ts`) and a CLI column.
/// `aggregator/tests/model_agreement.rs` fails when any of them disagrees with this list.
pub const PHASES: [&str; 5] = ["frontend", "queue", "prefill", "decode", "delivery"];

/// What a request used on the engine's GPUs, beside its phases (they overlap them, so they do
/// not add up with them): GPU time (latency view), wall time of host-paced (CPU-bound) steps,
/// and time waiting for the slowest tensor-parallel rank in collectives. Each is the stored
/// column `<name>_ns`; the breakdown reports them as `<name>_ms`.
pub const RESOURCES: [&str; 3] = ["gpu", "gpu_host_bound", "collective_wait"];

/// Token gaps beside the wire's TPOT (`tpot`): the longest gap the client saw between two SSE
/// events of a stream, and the engine's own TPOT and longest gap between two outputs (vLLM: its
/// output messages back in the API server; llama.cpp: `llama_decode` ends). Client-perceived
/// and engine side by side: a wire gap the engine did not have is delivery, not generation.
/// Each is the stored column `<name>_ns`; the breakdown reports them as `<name>_ms`.
pub const GAPS: [&str; 3] = ["max_gap", "engine_tpot", "engine_max_gap"];

/// The request filters every request endpoint takes besides its window (`from`, `to`), as
/// query parameter names: exact `model`, `node`, `engine`, `outcome` and `tenant`; `status` a
/// code or class (`5xx`); `tag` one run tag `key=value`.
pub const FILTER_KEYS: [&str; 7] = [
    "model", "node", "engine", "status", "outcome", "tag", "tenant",
];

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_controls_only() {
        use super::escape_controls as e;
        assert_eq!(e("llama-8b"), "llama-8b");
        assert_eq!(e("模型 é"), "模型 é");
        assert_eq!(e("m\u{1b}]0;x\u{7}"), "m\\u{1b}]0;x\\u{7}");
        assert_eq!(e("a\nb\u{9b}c\u{7f}"), "a\\u{a}b\\u{9b}c\\u{7f}");
    }
}
