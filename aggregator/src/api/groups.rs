//! `GET /api/v1/groups`: latency quantiles per value of one dimension over the filtered
//! window, in one ClickHouse scan grouped by that column.
use axum::extract::State;
use axum::Json;
use clickhouse::Row;
use serde::Deserialize;

use super::params::{invalid, Filters, Params, FILTER_PARAMS};
use super::sql::{Arg, Sql};
use super::{ns_to_ms, params_of, ApiState, QueryPairs};
use crate::error::ApiError;
use crate::store::Store;

pub use inferscope_api::groups::{Group, Groups, GROUP_BY};

/// Quantile levels when `quantiles` is not given.
pub const DEFAULT_QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];
/// Groups returned when `limit` is not given.
pub const DEFAULT_LIMIT: u64 = 50;
/// Largest `limit`.
pub const MAX_LIMIT: u64 = 1000;

/// Validated parameters.
#[derive(Debug, Clone)]
pub struct GroupsQuery {
    /// Which requests.
    pub filters: Filters,
    /// One of [`GROUP_BY`].
    pub by: &'static str,
    /// Quantile levels, in (0, 1).
    pub quantiles: Vec<f64>,
    /// Most groups returned.
    pub limit: u64,
}

impl GroupsQuery {
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
        "by",
        "quantiles",
        "limit",
    ];

    /// Validates.
    pub fn from_params(p: &Params) -> Result<Self, ApiError> {
        debug_assert!(FILTER_PARAMS.iter().all(|f| Self::PARAMS.contains(f)));
        let by = p.get("by").unwrap_or("tenant");
        let Some(by) = GROUP_BY.iter().copied().find(|g| *g == by) else {
            return Err(invalid(
                "by",
                format!("want one of {}", GROUP_BY.join(", ")),
            ));
        };
        let quantiles = p
            .quantiles("quantiles", 8)?
            .unwrap_or_else(|| DEFAULT_QUANTILES.to_vec());
        if quantiles.is_empty() {
            return Err(invalid("quantiles", "no levels given"));
        }
        Ok(Self {
            filters: Filters::from_params(p)?,
            by,
            quantiles,
            limit: p.uint("limit", 1..=MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT),
        })
    }
}

#[derive(Row, Deserialize)]
struct GroupRow {
    value: String,
    count: u64,
    errors: u64,
    e2e: Vec<u64>,
    ttft: Vec<u64>,
    tpot_n: u64,
    tpot: Vec<u64>,
}

/// Handler.
pub async fn handler(State(s): State<ApiState>, q: QueryPairs) -> Result<Json<Groups>, ApiError> {
    let p = params_of(q, GroupsQuery::PARAMS)?;
    Ok(Json(
        groups(&s.store, &GroupsQuery::from_params(&p)?).await?,
    ))
}

/// Runs the grouping.
pub async fn groups(store: &Store, q: &GroupsQuery) -> Result<Groups, ApiError> {
    let levels = &q.quantiles;
    let mut sql = Sql::new("SELECT toString(");
    sql.push(q.by)
        .push(") AS value, count() AS n, countIf(status >= 500), quantilesExact(")
        .arg_list(levels)
        .push(")(e2e_ns), quantilesExact(")
        .arg_list(levels)
        .push(")(ttft_ns), count(tpot_ns), quantilesExactIf(")
        .arg_list(levels)
        .push(")(ifNull(tpot_ns, 0), isNotNull(tpot_ns)) FROM ")
        .push(&store.table("requests"))
        .push(" WHERE ");
    q.filters.push_where(&mut sql);
    sql.push(" GROUP BY value ORDER BY n DESC, value LIMIT ")
        .arg(Arg::U64(q.limit + 1));
    let mut rows: Vec<GroupRow> = sql.fetch_all(store.client(), "groups").await?;
    let truncated = rows.len() as u64 > q.limit;
    rows.truncate(q.limit as usize);
    let pick = |v: &[u64], n: u64| -> Vec<Option<f64>> {
        (0..levels.len())
            .map(|i| (n > 0).then(|| v.get(i).copied().map(ns_to_ms)).flatten())
            .collect()
    };
    let count = if truncated {
        let mut c = Sql::new("SELECT count() FROM ");
        c.push(&store.table("requests")).push(" WHERE ");
        q.filters.push_where(&mut c);
        c.fetch_one(store.client(), "groups count").await?
    } else {
        rows.iter().map(|r| r.count).sum()
    };
    Ok(Groups {
        window: q.filters.window.clone(),
        by: q.by.to_owned(),
        quantiles: levels.clone(),
        count,
        groups: rows
            .into_iter()
            .map(|r| Group {
                e2e_ms: pick(&r.e2e, r.count),
                ttft_ms: pick(&r.ttft, r.count),
                tpot_ms: pick(&r.tpot, r.tpot_n),
                value: r.value,
                count: r.count,
                errors: r.errors,
            })
            .collect(),
        truncated,
    })
}
