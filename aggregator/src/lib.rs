//! inferscope aggregator: receives span batches from node-probes over gRPC, stores them in
//! ClickHouse, and answers latency questions over HTTP.
//!
//! * [`ingest`] — the `inferscope.v1.Ingest` service: authentication, validation, dedup of
//!   resent batches, a bounded queue to the writer, acks only after a successful insert;
//! * [`store`] — ClickHouse connection, versioned migrations (18.16 … current), row types;
//! * [`metrics`] — counters and the Prometheus text exposition;
//! * [`otlp`] — export of stored batches to an OpenTelemetry collector;
//! * [`error`] — the error codes shared by gRPC and HTTP.
pub mod api;
pub mod error;
pub mod ingest;
pub mod latency;
pub mod metrics;
pub use inferscope_otlp as otlp;
pub mod server;
pub mod store;
