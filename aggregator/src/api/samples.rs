//! `GET /api/v1/samples`: every request's latency metrics over the filtered window (up to
//! `limit` requests, a deterministic uniform subset beyond), for clients that compute their own
//! statistics: `inferscope gate` bootstraps quantile differences from them and saves them as a
//! baseline file.
use axum::extract::State;
use axum::Json;
use clickhouse::Row;
use serde::Deserialize;

use super::params::{Filters, Params, FILTER_PARAMS};
use super::sql::{Arg, Sql};
use super::{ns_to_ms, params_of, ApiState, QueryPairs};
use crate::error::ApiError;
use crate::store::Store;

pub use inferscope_api::samples::{MetricSamples, Samples, SAMPLE_METRICS};

/// Requests returned when `limit` is not given.
pub const DEFAULT_LIMIT: u64 = 20_000;
/// Largest `limit` (about 8 MB of JSON).
pub const MAX_LIMIT: u64 = 100_000;

/// Validated parameters.
#[derive(Debug, Clone)]
pub struct SamplesQuery {
    /// Which requests.
    pub filters: Filters,
    /// Most requests returned.
    pub limit: u64,
}

impl SamplesQuery {
    /// Accepted parameter names.
    pub const PARAMS: &'static [&'static str] = &[
        "from", "to", "model", "node", "engine", "status", "outcome", "tag", "tenant", "limit",
    ];

    /// Validates.
    pub fn from_params(p: &Params) -> Result<Self, ApiError> {
        debug_assert!(FILTER_PARAMS.iter().all(|f| Self::PARAMS.contains(f)));
        Ok(Self {
            filters: Filters::from_params(p)?,
            limit: p.uint("limit", 1..=MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT),
        })
    }
}

/// One request's metrics (columns in [`SAMPLE_METRICS`] order, then what decides `max_gap`).
#[derive(Row, Deserialize)]
struct SampleRow {
    e2e_ns: u64,
    ttft_ns: u64,
    first_text_ns: Option<u64>,
    tpot_ns: Option<u64>,
    max_gap_ns: u64,
    frontend_ns: Option<u64>,
    queue_ns: Option<u64>,
    prefill_ns: Option<u64>,
    decode_ns: Option<u64>,
    delivery_ns: Option<u64>,
    stream: u8,
    chunks: u32,
}

const COLUMNS: &str =
    "e2e_ns, ttft_ns, first_text_ns, tpot_ns, max_gap_ns, frontend_ns, queue_ns, \
                       prefill_ns, decode_ns, delivery_ns, stream, chunks";

impl SampleRow {
    /// Values in [`SAMPLE_METRICS`] order (`None`: the request does not have the metric; a
    /// gap needs a stream of two or more events).
    fn values(&self) -> [Option<u64>; SAMPLE_METRICS.len()] {
        let gap = (self.stream == 1 && self.chunks >= 2).then_some(self.max_gap_ns);
        [
            Some(self.e2e_ns),
            Some(self.ttft_ns),
            self.first_text_ns,
            self.tpot_ns,
            gap,
            self.frontend_ns,
            self.queue_ns,
            self.prefill_ns,
            self.decode_ns,
            self.delivery_ns,
        ]
    }
}

/// Handler.
pub async fn handler(State(s): State<ApiState>, q: QueryPairs) -> Result<Json<Samples>, ApiError> {
    let p = params_of(q, SamplesQuery::PARAMS)?;
    let sq = SamplesQuery::from_params(&p)?;
    Ok(Json(samples(&s.store, &sq).await?))
}

/// Runs the count and the sample query.
pub async fn samples(store: &Store, q: &SamplesQuery) -> Result<Samples, ApiError> {
    let table = store.table("requests");
    let mut count = Sql::new("SELECT count() FROM ");
    count.push(&table).push(" WHERE ");
    q.filters.push_where(&mut count);
    let total: u64 = count.fetch_one(store.client(), "samples count").await?;

    // A hash of the trace id orders the rows pseudo-randomly but the same on every call, so a
    // capped result is a uniform, reproducible subset; the subset is returned in start order
    // (the gate's block bootstrap resamples runs of neighbouring requests).
    let mut sql = Sql::new("SELECT ");
    sql.push(COLUMNS)
        .push(" FROM (SELECT ")
        .push(COLUMNS)
        .push(", start_unix_ns, trace_id FROM ")
        .push(&table)
        .push(" WHERE ");
    q.filters.push_where(&mut sql);
    sql.push(" ORDER BY cityHash64(trace_id), start_unix_ns LIMIT ")
        .arg(Arg::U64(q.limit))
        .push(") ORDER BY start_unix_ns, trace_id");
    let rows: Vec<SampleRow> = sql.fetch_all(store.client(), "samples").await?;
    let mut metrics: Vec<MetricSamples> = SAMPLE_METRICS
        .iter()
        .map(|(name, _)| MetricSamples {
            metric: (*name).to_string(),
            values_ms: Vec::new(),
        })
        .collect();
    for r in &rows {
        for (m, v) in metrics.iter_mut().zip(r.values()) {
            m.values_ms.extend(v.map(ns_to_ms));
        }
    }
    Ok(Samples {
        window: q.filters.window.clone(),
        filters: q.filters.describe(),
        count: total,
        returned: rows.len() as u64,
        sampled: (rows.len() as u64) < total,
        metrics,
    })
}
