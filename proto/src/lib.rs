//! inferscope wire types, package `inferscope.v1`, and the `Ingest` gRPC service.
//!
//! Generated at build time from `proto/inferscope/v1/inferscope.proto` by protox + prost/tonic;
//! see the .proto file for the meaning of every field.
#![allow(missing_docs, clippy::all)]

/// Version 1 of the protocol.
pub mod v1 {
    tonic::include_proto!("inferscope.v1");
}

/// The request phases, in pipeline order: **the one declaration**. Each is a `{phase}_ns` field
/// of `Request` (and a `{phase}_ns` column of `requests`), a `{phase}` span of node-probe's
/// request tree (`delivery` is the `stream_out` span), a `{phase}_ms` value of the query API
/// (`aggregator/openapi.yaml`), the UI's `PHASES` (`query-ui/src/api.ts`) and a CLI column.
/// `aggregator/tests/model_agreement.rs` fails when any of them disagrees with this list.
pub const PHASES: [&str; 5] = ["frontend", "queue", "prefill", "decode", "delivery"];
