//! `GET /api/v1/requests`: filtered, sorted, paged request list (slowest first by default).
use axum::extract::State;
use axum::Json;
use clickhouse::Row;
use serde::Deserialize;

use super::params::{Filters, Params};
use super::sql::{Arg, Sql};
use super::time::format_rfc3339;
use super::{ns_to_ms, params_of, ApiState, QueryPairs};
use crate::error::ApiError;
use crate::store::Store;

pub use inferscope_api::requests::{RequestList, RequestSummary};

/// Rows per page when `limit` is not given.
pub const DEFAULT_LIMIT: u64 = 50;
/// Largest `limit`.
pub const MAX_LIMIT: u64 = 1000;
/// Largest `offset` (deeper pages: narrow the window or raise `min_e2e_ms`).
pub const MAX_OFFSET: u64 = 100_000;
/// Sort keys and their columns.
pub const SORTS: [(&str, &str); 6] = [
    ("e2e", "e2e_ns"),
    ("ttft", "ttft_ns"),
    ("start", "start_unix_ns"),
    ("queue", "queue_ns"),
    ("prefill", "prefill_ns"),
    ("decode", "decode_ns"),
];

/// Validated parameters.
#[derive(Debug, Clone)]
pub struct RequestsQuery {
    /// Which requests.
    pub filters: Filters,
    /// Only requests with e2e at least this (ns).
    pub min_e2e_ns: Option<u64>,
    /// Sort key (a key of [`SORTS`]).
    pub sort: &'static str,
    /// Descending?
    pub descending: bool,
    /// Page size.
    pub limit: u64,
    /// Rows to skip.
    pub offset: u64,
}

impl RequestsQuery {
    /// Accepted parameter names.
    pub const PARAMS: &'static [&'static str] = &[
        "from",
        "to",
        "model",
        "node",
        "engine",
        "status",
        "outcome",
        "tag",
        "tenant",
        "min_e2e_ms",
        "sort",
        "order",
        "limit",
        "offset",
    ];

    /// Validates.
    pub fn from_params(p: &Params) -> Result<Self, ApiError> {
        let keys: Vec<&'static str> = SORTS.iter().map(|(k, _)| *k).collect();
        Ok(Self {
            filters: Filters::from_params(p)?,
            min_e2e_ns: p
                .float("min_e2e_ms", 0.0, 1e9)?
                .map(|ms| (ms * 1e6).round() as u64),
            sort: p.choice("sort", &keys)?.unwrap_or("e2e"),
            descending: p.choice("order", &["desc", "asc"])?.unwrap_or("desc") == "desc",
            limit: p.uint("limit", 1..=MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT),
            offset: p.uint("offset", 0..=MAX_OFFSET)?.unwrap_or(0),
        })
    }
}

/// The columns read for a [`RequestSummary`], in [`SummaryRow`] order.
pub(crate) const SUMMARY_COLUMNS: &str =
    "trace_id, start_unix_ns, end_unix_ns, node, pid, engine, \
model, method, path, status, outcome, stream, e2e_ns, ttft_ns, tpot_ns, frontend_ns, queue_ns, \
prefill_ns, decode_ns, delivery_ns, engine_ttft_ns, engine_e2e_ns, read_wait_ns, req_bytes, \
resp_bytes, chunks, engine_steps, max_gap_ns, client, server, response_id, x_request_id, \
engine_request_id, gave_up, first_text_ns, prompt_tokens, completion_tokens, gpu_ns, \
gpu_cost_ns, gpu_host_bound_ns, gpu_upper_bound_steps, collectives, collective_wait_ns, \
straggler_rank, straggler_lag_ns";

/// A row read with [`SUMMARY_COLUMNS`].
#[derive(Debug, Default, Row, Deserialize)]
pub(crate) struct SummaryRow {
    pub(crate) trace_id: String,
    pub(crate) start_unix_ns: u64,
    pub(crate) end_unix_ns: u64,
    pub(crate) node: String,
    pub(crate) pid: u32,
    pub(crate) engine: String,
    pub(crate) model: String,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) status: u16,
    pub(crate) outcome: String,
    pub(crate) stream: u8,
    pub(crate) e2e_ns: u64,
    pub(crate) ttft_ns: u64,
    pub(crate) tpot_ns: Option<u64>,
    pub(crate) frontend_ns: Option<u64>,
    pub(crate) queue_ns: Option<u64>,
    pub(crate) prefill_ns: Option<u64>,
    pub(crate) decode_ns: Option<u64>,
    pub(crate) delivery_ns: Option<u64>,
    pub(crate) engine_ttft_ns: Option<u64>,
    pub(crate) engine_e2e_ns: Option<u64>,
    pub(crate) read_wait_ns: u64,
    pub(crate) req_bytes: u64,
    pub(crate) resp_bytes: u64,
    pub(crate) chunks: u32,
    pub(crate) engine_steps: u32,
    pub(crate) max_gap_ns: u64,
    pub(crate) client: String,
    pub(crate) server: String,
    pub(crate) response_id: String,
    pub(crate) x_request_id: String,
    pub(crate) engine_request_id: String,
    pub(crate) gave_up: String,
    pub(crate) first_text_ns: Option<u64>,
    pub(crate) prompt_tokens: Option<u32>,
    pub(crate) completion_tokens: Option<u32>,
    pub(crate) gpu_ns: Option<u64>,
    pub(crate) gpu_cost_ns: Option<u64>,
    pub(crate) gpu_host_bound_ns: Option<u64>,
    pub(crate) gpu_upper_bound_steps: Option<u32>,
    pub(crate) collectives: Option<u32>,
    pub(crate) collective_wait_ns: Option<u64>,
    pub(crate) straggler_rank: Option<u32>,
    pub(crate) straggler_lag_ns: Option<u64>,
}

impl From<SummaryRow> for RequestSummary {
    fn from(r: SummaryRow) -> Self {
        let opt = |v: Option<u64>| v.map(ns_to_ms);
        Self {
            start: format_rfc3339(r.start_unix_ns),
            trace_id: super::stored_trace_id(&r.trace_id),
            start_unix_ns: r.start_unix_ns,
            end_unix_ns: r.end_unix_ns,
            node: r.node,
            pid: r.pid,
            engine: r.engine,
            model: r.model,
            method: r.method,
            path: r.path,
            status: r.status,
            outcome: r.outcome,
            stream: r.stream != 0,
            e2e_ms: ns_to_ms(r.e2e_ns),
            ttft_ms: ns_to_ms(r.ttft_ns),
            tpot_ms: opt(r.tpot_ns),
            frontend_ms: opt(r.frontend_ns),
            queue_ms: opt(r.queue_ns),
            prefill_ms: opt(r.prefill_ns),
            decode_ms: opt(r.decode_ns),
            delivery_ms: opt(r.delivery_ns),
            engine_ttft_ms: opt(r.engine_ttft_ns),
            first_text_ms: opt(r.first_text_ns),
            engine_e2e_ms: opt(r.engine_e2e_ns),
            read_wait_ms: ns_to_ms(r.read_wait_ns),
            req_bytes: r.req_bytes,
            resp_bytes: r.resp_bytes,
            chunks: r.chunks,
            engine_steps: r.engine_steps,
            max_gap_ms: ns_to_ms(r.max_gap_ns),
            client: r.client,
            server: r.server,
            response_id: r.response_id,
            x_request_id: r.x_request_id,
            engine_request_id: r.engine_request_id,
            gave_up: r.gave_up,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            gpu_ms: opt(r.gpu_ns),
            gpu_cost_ms: opt(r.gpu_cost_ns),
            gpu_host_bound_ms: opt(r.gpu_host_bound_ns),
            gpu_upper_bound_steps: r.gpu_upper_bound_steps,
            collectives: r.collectives,
            collective_wait_ms: opt(r.collective_wait_ns),
            straggler_rank: r.straggler_rank,
            straggler_lag_ms: opt(r.straggler_lag_ns),
        }
    }
}

/// Handler.
pub async fn handler(
    State(s): State<ApiState>,
    q: QueryPairs,
) -> Result<Json<RequestList>, ApiError> {
    let p = params_of(q, RequestsQuery::PARAMS)?;
    let rq = RequestsQuery::from_params(&p)?;
    Ok(Json(list(&s.store, &rq).await?))
}

fn push_where(q: &RequestsQuery, sql: &mut Sql) {
    q.filters.push_where(sql);
    if let Some(min) = q.min_e2e_ns {
        sql.push(" AND e2e_ns >= ").arg(Arg::U64(min));
    }
}

/// Runs the list query and the count.
pub async fn list(store: &Store, q: &RequestsQuery) -> Result<RequestList, ApiError> {
    let table = store.table("requests");
    let col = SORTS
        .iter()
        .find(|(k, _)| *k == q.sort)
        .map_or("e2e_ns", |(_, c)| *c);
    let dir = if q.descending { "DESC" } else { "ASC" };
    let mut count = Sql::new("SELECT count() FROM ");
    count.push(&table).push(" WHERE ");
    push_where(q, &mut count);
    let total: u64 = count.fetch_one(store.client(), "requests count").await?;

    let mut sql = Sql::new("SELECT ");
    sql.push(SUMMARY_COLUMNS)
        .push(" FROM ")
        .push(&table)
        .push(" WHERE ");
    push_where(q, &mut sql);
    // Unknown phases sort last in both directions; the tie-breakers make pages stable.
    sql.push(&format!(
        " ORDER BY {col} {dir} NULLS LAST, trace_id ASC, node ASC, start_unix_ns ASC LIMIT "
    ))
    .arg(Arg::U64(q.limit))
    .push(" OFFSET ")
    .arg(Arg::U64(q.offset));
    let rows: Vec<SummaryRow> = sql.fetch_all(store.client(), "requests page").await?;
    let next = q.offset + rows.len() as u64;
    Ok(RequestList {
        window: q.filters.window.clone(),
        total,
        offset: q.offset,
        limit: q.limit,
        next_offset: (rows.len() as u64 == q.limit && next < total && next <= MAX_OFFSET)
            .then_some(next),
        sort: q.sort.to_string(),
        order: if q.descending { "desc" } else { "asc" }.to_string(),
        requests: rows.into_iter().map(RequestSummary::from).collect(),
    })
}
