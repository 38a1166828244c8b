//! inferscope wire types, package `inferscope.v1`, and the `Ingest` gRPC service.
//!
//! Generated at build time from `proto/inferscope/v1/inferscope.proto` by protox + prost/tonic;
//! see the .proto file for the meaning of every field.

pub mod codec;

/// Version 1 of the protocol (generated).
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("inferscope.v1");
}

/// The request phases, in pipeline order (declared once, in `inferscope_api`).
pub use inferscope_api::PHASES;
