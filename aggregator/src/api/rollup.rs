//! The breakdown from the per-minute rollups (`requests_1m`, kept by a materialized view from
//! every insert into `requests`): `source=rollup`. One small aggregation over at most one row
//! per minute, model, node and engine, whatever the number of requests, so its cost grows with
//! the window's minutes, not with its requests. Quantiles are ClickHouse's t-digest (merged
//! states), so they are approximate; the window is widened to whole minutes; the filters are
//! the rollup's dimensions (model, node, engine); there are no cohorts (they need the raw
//! rows). The answer says so (`source`, `approximation`, the window actually used).
use clickhouse::Row;
use serde::Deserialize;

use super::breakdown::{quantile_rows, BreakdownQuery, MetricCounts, Phases, Resources, TokenGaps};
use super::params::invalid;
use super::sql::{Arg, Sql};
use crate::error::ApiError;
use crate::store::schema::ROLLUP_NULLABLE;
use crate::store::Store;
use inferscope_api::breakdown::Breakdown;
use inferscope_api::Window;

/// What a rollup answer says about its error.
pub const APPROXIMATION: &str = "t-digest quantiles (ClickHouse quantilesTDigest) merged from \
per-minute states over whole minutes: a quantile is typically within 1 % of the exact value, \
less exact in the extreme tail of small samples; counts are exact";

const NS_PER_MIN: u64 = 60_000_000_000;

#[derive(Row, Deserialize)]
struct RollupRow {
    count: u64,
    e2e: Vec<u64>,
    ttft: Vec<u64>,
    /// tpot, then the phases ([`ROLLUP_NULLABLE`] order).
    present: Vec<u64>,
    values: Vec<Vec<u64>>,
}

/// Refuses filters the rollup does not keep.
pub fn check(q: &BreakdownQuery) -> Result<(), ApiError> {
    let f = &q.filters;
    for (name, set) in [
        ("status", f.status.is_some()),
        ("outcome", f.outcome.is_some()),
        ("tag", f.tag.is_some()),
        ("tenant", f.tenant.is_some()),
    ] {
        if set {
            return Err(invalid(
                name,
                "source=rollup filters by model, node and engine only: drop this filter, or \
                 ask source=raw",
            ));
        }
    }
    Ok(())
}

/// `t-digest merge of `col` at `levels`, as whole nanoseconds.
fn merged(sql: &mut Sql, func: &str, levels: &[f64], col: &str) {
    sql.push("arrayMap(x -> toUInt64(greatest(x, 0)), ")
        .push(func)
        .push("(")
        .arg_list(levels)
        .push(")(")
        .push(col)
        .push("))");
}

/// The breakdown of `q` from the rollups.
pub async fn breakdown(store: &Store, q: &BreakdownQuery) -> Result<Breakdown, ApiError> {
    check(q)?;
    let w = &q.filters.window;
    let from = w.from_unix_ns / NS_PER_MIN * NS_PER_MIN;
    let to = w.to_unix_ns.div_ceil(NS_PER_MIN) * NS_PER_MIN;
    let levels = &q.quantiles;
    let mut sql = Sql::new("SELECT countMerge(requests), ");
    merged(&mut sql, "quantilesTDigestMerge", levels, "e2e");
    sql.push(", ");
    merged(&mut sql, "quantilesTDigestMerge", levels, "ttft");
    sql.push(", [");
    for (i, m) in ROLLUP_NULLABLE.iter().enumerate() {
        sql.push(if i > 0 { ", " } else { "" })
            .push(&format!("countIfMerge({m}_n)"));
    }
    sql.push("], [");
    for (i, m) in ROLLUP_NULLABLE.iter().enumerate() {
        sql.push(if i > 0 { ", " } else { "" });
        merged(&mut sql, "quantilesTDigestIfMerge", levels, m);
    }
    sql.push("] FROM ")
        .push(&store.table("requests_1m"))
        .push(" WHERE minute >= toDateTime(")
        .arg(Arg::U64(from / 1_000_000_000))
        .push(") AND minute < toDateTime(")
        .arg(Arg::U64(to / 1_000_000_000))
        .push(")");
    for (col, v) in [
        ("model", &q.filters.model),
        ("node", &q.filters.node),
        ("engine", &q.filters.engine),
    ] {
        if let Some(v) = v {
            sql.push(" AND ")
                .push(col)
                .push(" = ")
                .arg(Arg::Str(v.clone()));
        }
    }
    let r: RollupRow = sql
        .fetch_one(store.client(), "breakdown from rollups")
        .await?;
    let n = ROLLUP_NULLABLE.len();
    if r.e2e.len() != levels.len()
        || r.ttft.len() != levels.len()
        || r.present.len() != n
        || r.values.len() != n
        || r.values.iter().any(|v| v.len() != levels.len())
    {
        return Err(ApiError::new(
            crate::error::ErrorCode::Internal,
            "unexpected result shape from ClickHouse (rollups)",
        ));
    }
    let quantiles = quantile_rows(levels, (&r.e2e, &r.ttft, r.count), &r.present, &r.values);
    Ok(Breakdown {
        window: Window::new(from, to),
        count: r.count,
        samples: MetricCounts {
            e2e: r.count,
            ttft: r.count,
            tpot: r.present[0],
            phases: Phases::from_vec(r.present[1..].to_vec()).unwrap_or_default(),
            resources: Resources::default(),
            gaps: TokenGaps::default(),
        },
        quantiles,
        slow_vs_median: None,
        source: "rollup".into(),
        approximation: Some(APPROXIMATION.into()),
    })
}
