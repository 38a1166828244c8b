//! inferscope's query-API types: what `GET /api/v1/…` answers, shared by the aggregator (which
//! serves them), the `inferscope` CLI (which reads them) and tests. Serde only: linking this
//! crate brings in no server (ClickHouse, tonic, axum).
//!
//! `aggregator/openapi.yaml` documents the same shapes; `aggregator/tests/model_agreement.rs`
//! checks the phase list there, in the UI and in the CLI against [`PHASES`].
pub mod breakdown;
pub mod filters;
pub mod ids;
pub mod requests;
pub mod time;
pub mod trace;
pub mod window;

pub use ids::{step_context, SpanId, TraceId};
pub use window::Window;

/// The request phases, in pipeline order: **the one declaration**. Each is a `{phase}_ns` field
/// of `Request` (and a `{phase}_ns` column of `requests`), a `{phase}` span of node-probe's
/// request tree (`delivery` is the `stream_out` span), a `{phase}_ms` value of the query API
/// (`aggregator/openapi.yaml`), the UI's `PHASES` (`query-ui/src/api.ts`) and a CLI column.
/// `aggregator/tests/model_agreement.rs` fails when any of them disagrees with this list.
pub const PHASES: [&str; 5] = ["frontend", "queue", "prefill", "decode", "delivery"];
