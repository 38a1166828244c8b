//! HTTP API (axum): the query endpoints under `/api/v1`, the OpenAPI description, metrics and
//! health.
//!
//! * [`breakdown`] — `GET /api/v1/breakdown`: quantiles of e2e, ttft, tpot and every phase, and
//!   the slow cohort compared with the median cohort;
//! * [`requests`] — `GET /api/v1/requests`: filtered, sorted, paged request list;
//! * [`trace`] — `GET /api/v1/traces/{trace_id}`: one trace across nodes, its spans and engine
//!   steps;
//! * [`filters`] — `GET /api/v1/filters`: distinct values for dropdowns;
//! * [`groups`] — `GET /api/v1/groups`: e2e/ttft/tpot quantiles per tenant, model, node, …;
//! * [`timeseries`] — `GET /api/v1/timeseries`: count and e2e/ttft/tpot quantiles per time bucket;
//! * [`histogram`] — `GET /api/v1/histogram`: distribution of one metric (log or linear buckets);
//! * [`explain`] — `GET /api/v1/explain/{trace_id}` and `GET /api/v1/explain`: why a request
//!   (or a window's slow cohort) was slow, in sentences with their figures;
//! * [`samples`] — `GET /api/v1/samples`: per-request metric values (`inferscope gate`);
//! * [`ui`] — `GET /` and `/assets/…`: the web UI (`query-ui/`), embedded at compile time;
//! * `GET /openapi.yaml` — the OpenAPI 3 description (`aggregator/openapi.yaml`).
//!
//! Errors are [`ApiError`]s: `{"error": {"code", "message"}}` with the matching HTTP status.
//! Parameters are validated in [`params`]; user values reach ClickHouse only as bound literals
//! ([`sql`]).
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::{routing::get, Router};

use crate::error::{ApiError, ErrorCode};
use crate::metrics::Metrics;
use crate::store::Store;

pub mod access;
pub mod breakdown;
pub mod clocks;
pub mod explain;
pub mod filters;
pub mod groups;
pub mod histogram;
pub mod hops;
pub mod limit;
pub mod params;
pub mod requests;
pub mod rollup;
pub mod samples;
pub mod sql;
pub mod time;
pub mod timeseries;
pub mod trace;
pub mod ui;

/// The OpenAPI 3 description served at `/openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct ApiState {
    /// Storage.
    pub store: Store,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// The raw query string as name/value pairs (validated by [`params::Params`]).
pub type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// Decodes and checks the parameter names of a query string.
pub fn params_of(q: QueryPairs, known: &[&str]) -> Result<params::Params, ApiError> {
    let Query(pairs) = q.map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!("malformed query string: {}", e.body_text()),
        )
    })?;
    params::Params::new(pairs, known)
}

/// Nanoseconds → milliseconds.
pub fn ns_to_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// A stored trace id as its type. Ingest stores only validated ids, so this parses; a row
/// written around ingest shows as the all-zero id rather than failing the query.
pub fn stored_trace_id(s: &str) -> inferscope_api::TraceId {
    s.parse().unwrap_or_default()
}

/// A stored span id as its type (`None` for `""`, a root without a caller; see
/// [`stored_trace_id`]).
pub fn stored_span_id(s: &str) -> Option<inferscope_api::SpanId> {
    s.parse().ok()
}

/// All HTTP routes, open to anyone who can reach them with an allowed `Host` (see
/// [`router_with_access`]).
pub fn router(state: ApiState) -> Router {
    router_with_access(state, access::Access::default())
}

/// All HTTP routes behind [`access::check`], the query routes behind the default
/// [`limit::QueryLimit`].
pub fn router_with_access(state: ApiState, a: access::Access) -> Router {
    router_with_limits(state, a, limit::QueryLimit::default())
}

/// Readiness: 200 when ClickHouse answers within 2 s (a replica behind a load balancer gets
/// traffic only then), else 503 saying why. Open like `/healthz`.
async fn readyz(State(state): State<ApiState>) -> (StatusCode, String) {
    let ping = state.store.client().query("SELECT 1").fetch_one::<u8>();
    match tokio::time::timeout(std::time::Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready".into()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("clickhouse: {e}")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "clickhouse: no answer within 2 s".into(),
        ),
    }
}

/// All HTTP routes behind [`access::check`], the query routes behind `q`.
pub fn router_with_limits(state: ApiState, a: access::Access, q: limit::QueryLimit) -> Router {
    let v1 = Router::new()
        .route("/breakdown", get(breakdown::handler))
        .route("/requests", get(requests::handler))
        .route("/traces/{trace_id}", get(trace::handler))
        .route("/filters", get(filters::handler))
        .route("/groups", get(groups::handler))
        .route("/timeseries", get(timeseries::handler))
        .route("/histogram", get(histogram::handler))
        .route("/samples", get(samples::handler))
        .route("/explain", get(explain::cohort_handler))
        .route("/explain/{trace_id}", get(explain::request_handler))
        .fallback(api_not_found)
        .layer(axum::middleware::from_fn_with_state(q, limit::limit));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.yaml", get(openapi))
        .route("/", get(ui::index))
        .route("/assets/{*path}", get(ui::assets))
        .nest("/api/v1", v1)
        .with_state(state)
        .route(
            "/login",
            get(access::login_page)
                .post(access::login)
                .with_state(a.clone()),
        )
        .layer(axum::middleware::from_fn_with_state(a, access::check))
}

async fn api_not_found(uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!(
            "no endpoint {}; see /openapi.yaml for the API (breakdown, requests, traces/{{trace_id}}, filters, timeseries, histogram, samples, explain)",
            uri.path()
        ),
    )
}

async fn openapi() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/yaml")],
        OPENAPI_YAML,
    )
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
