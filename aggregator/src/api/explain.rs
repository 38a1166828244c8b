//! `GET /api/v1/explain/{trace_id}` ("why was this request slow") and `GET /api/v1/explain`
//! (why the window's slow cohort is slow). The data comes from the trace and breakdown queries
//! plus one count (requests in the engine when the request arrived); the rules and sentences are
//! `inferscope_api::explain`.
use axum::extract::{Path, State};
use axum::Json;

use super::breakdown::{breakdown, BreakdownQuery};
use super::params::{Filters, Window};
use super::sql::{Arg, Sql};
use super::trace::{fallback_window, parse_trace_id, trace};
use super::{params_of, ApiState, QueryPairs};
use crate::error::{ApiError, ErrorCode};
use crate::store::Store;

pub use inferscope_api::explain::{
    explain_cohort, explain_request, CohortExplanation, Context, Finding, RequestExplanation,
};
use inferscope_api::trace::RequestDetail;

/// Half-width of the reference window around a request.
pub const REFERENCE_HALF_NS: u64 = 1800 * 1_000_000_000;

/// `GET /api/v1/explain/{trace_id}`.
pub async fn request_handler(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    q: QueryPairs,
) -> Result<Json<RequestExplanation>, ApiError> {
    let id = parse_trace_id(&id)?;
    let p = params_of(q, &["from", "to"])?;
    let fallback = fallback_window(&p)?;
    Ok(Json(explain(&s.store, &id, &fallback).await?))
}

/// `GET /api/v1/explain?from&to&filters&slow_quantile`.
pub async fn cohort_handler(
    State(s): State<ApiState>,
    q: QueryPairs,
) -> Result<Json<CohortExplanation>, ApiError> {
    let p = params_of(q, BreakdownQuery::PARAMS)?;
    let mut bq = BreakdownQuery::from_params(&p)?;
    bq.quantiles = vec![0.5];
    let b = breakdown(&s.store, &bq).await?;
    let svm = b.slow_vs_median.ok_or_else(|| {
        ApiError::new(ErrorCode::NotFound, "no requests in the window to explain")
    })?;
    Ok(Json(explain_cohort(&svm)))
}

/// The request of a trace that says most: the one with the most phases known.
fn subject(requests: &[RequestDetail]) -> Option<&RequestDetail> {
    requests.iter().max_by_key(|r| {
        let s = &r.request;
        [
            s.frontend_ms,
            s.queue_ms,
            s.prefill_ms,
            s.decode_ms,
            s.delivery_ms,
        ]
        .iter()
        .filter(|x| x.is_some())
        .count()
    })
}

/// Explains one trace's request.
pub async fn explain(
    store: &Store,
    id: &str,
    fallback: &Window,
) -> Result<RequestExplanation, ApiError> {
    let t = trace(store, id, fallback).await?;
    let r = subject(&t.requests).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("trace {id} has no request row to explain"),
        )
    })?;
    let start = r.request.start_unix_ns;
    let window = Window::new(
        start.saturating_sub(REFERENCE_HALF_NS),
        start.saturating_add(REFERENCE_HALF_NS),
    );
    let bq = BreakdownQuery {
        filters: Filters {
            window,
            model: Some(r.request.model.clone()).filter(|m| !m.is_empty()),
            node: None,
            engine: Some(r.request.engine.clone()),
            status: None,
            outcome: None,
            tag: None,
            tenant: None,
        },
        quantiles: vec![0.5],
        slow_quantile: 0.99,
        rollup: false,
    };
    let b = breakdown(store, &bq).await?;
    let ctx = Context {
        typical: b.quantiles.first().cloned().filter(|_| b.count > 0),
        reference_count: b.count,
        in_flight_at_arrival: in_flight(store, r).await?,
    };
    Ok(explain_request(r, &t.steps, &t.batched_with, &ctx))
}

/// Requests of the same engine instance that were in the engine (handed over, not yet done)
/// when `r` was handed over; `None` when `r`'s engine was not followed.
async fn in_flight(store: &Store, r: &RequestDetail) -> Result<Option<u64>, ApiError> {
    let s = &r.request;
    let (Some(frontend), Some(instance)) = (s.frontend_ms, r.engine_instance.as_ref()) else {
        return Ok(None);
    };
    let arrival = s.start_unix_ns + (frontend * 1e6) as u64;
    let arrival_s = arrival / 1_000_000_000;
    let mut sql = Sql::new("SELECT count() FROM ");
    sql.push(&store.table("requests"))
        .push(" WHERE node = ")
        .arg(Arg::Str(s.node.clone()))
        .push(" AND engine_instance = ")
        .arg(Arg::Str(instance.clone()))
        .push(" AND start >= toDateTime(")
        .arg(Arg::U64(arrival_s.saturating_sub(3600)))
        .push(") AND start <= toDateTime(")
        .arg(Arg::U64(arrival_s + 1))
        .push(") AND trace_id != ")
        .arg(Arg::Str(s.trace_id.to_string()))
        .push(" AND start_unix_ns + ifNull(frontend_ns, 0) <= ")
        .arg(Arg::U64(arrival))
        .push(" AND start_unix_ns + ifNull(frontend_ns, 0) + ifNull(engine_e2e_ns, e2e_ns) > ")
        .arg(Arg::U64(arrival));
    Ok(Some(
        sql.fetch_one(store.client(), "explain in-flight").await?,
    ))
}
