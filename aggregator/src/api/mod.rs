//! HTTP API (axum): query endpoints, metrics, health.
use std::sync::Arc;

use axum::{extract::State, routing::get, Router};

use crate::metrics::Metrics;
use crate::store::Store;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct ApiState {
    /// Storage.
    pub store: Store,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// All HTTP routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(
    State(s): State<ApiState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(),
    )
}
