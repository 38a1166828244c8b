//! `GET /api/v1/breakdown`: latency quantiles per metric and phase, and what is different about
//! the slowest requests compared with typical ones.
//!
//! Two scans of the filtered window, both aggregated in ClickHouse: the first computes every
//! quantile (`quantilesExact`, so results are exact and reproducible in SQL), the cohort
//! thresholds (p40, p60 and the slow quantile of e2e) in the same pass over e2e; the second sums each phase over the slow
//! cohort (`e2e >= p_slow`) and the median cohort (`p40 <= e2e <= p60`).
use axum::extract::State;
use axum::Json;
use clickhouse::Row;
use serde::Deserialize;

use super::params::{invalid, Filters, Params, FILTER_PARAMS};
use super::sql::{Arg, Sql};
use super::{ns_to_ms, params_of, ApiState, QueryPairs};
use crate::error::ApiError;
use crate::store::Store;

/// Quantile levels when `quantiles` is not given.
pub const DEFAULT_QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];
/// Slow-cohort level when `slow_quantile` is not given.
pub const DEFAULT_SLOW_QUANTILE: f64 = 0.99;
/// Most quantile levels per call.
pub const MAX_QUANTILES: usize = 8;
/// The median cohort: e2e between these quantiles.
pub const MEDIAN_COHORT: (f64, f64) = (0.4, 0.6);

/// The phase columns, in pipeline order (declared once, in the proto crate).
pub use inferscope_api::breakdown::{
    level_name, Breakdown, Cohort, MetricCounts, PhaseDiff, PhaseMean, Phases, QuantileRow,
    Resources, SlowVsMedian, TokenGaps,
};
pub use inferscope_api::{GAPS, PHASES, RESOURCES};

/// The metrics quantiled besides e2e and ttft: tpot, the phases, the resources, the token
/// gaps; each with its value and the condition for a request to have it.
fn partial_metrics() -> impl Iterator<Item = (&'static str, String, String)> + Clone {
    ["tpot"]
        .into_iter()
        .chain(PHASES)
        .chain(RESOURCES)
        .chain(GAPS)
        .map(|m| match m {
            // Not Nullable: a stream's gap needs two events (as `/api/v1/samples` decides).
            "max_gap" => (m, "max_gap_ns".into(), "stream = 1 AND chunks >= 2".into()),
            _ => (
                m,
                format!("ifNull({m}_ns, 0)"),
                format!("isNotNull({m}_ns)"),
            ),
        })
}

/// tpot + phases + resources + gaps.
const PARTIAL: usize = 1 + PHASES.len() + RESOURCES.len() + GAPS.len();
/// Where the resources start in the partial metrics.
const RESOURCES_AT: usize = 1 + PHASES.len();
/// Where the gaps start.
const GAPS_AT: usize = RESOURCES_AT + RESOURCES.len();

/// The columns summed per cohort: the phases, then the resources.
fn cohort_metrics() -> impl Iterator<Item = &'static str> + Clone {
    PHASES.into_iter().chain(RESOURCES)
}

/// Validated parameters.
#[derive(Debug, Clone)]
pub struct BreakdownQuery {
    /// Which requests.
    pub filters: Filters,
    /// Quantile levels, in (0, 1).
    pub quantiles: Vec<f64>,
    /// Level above which a request is in the slow cohort.
    pub slow_quantile: f64,
    /// `source=rollup`: answer from the per-minute rollups ([`super::rollup`]).
    pub rollup: bool,
}

impl BreakdownQuery {
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
        "quantiles",
        "slow_quantile",
        "source",
    ];

    /// Validates.
    pub fn from_params(p: &Params) -> Result<Self, ApiError> {
        debug_assert!(FILTER_PARAMS.iter().all(|f| Self::PARAMS.contains(f)));
        let quantiles = p
            .quantiles("quantiles", MAX_QUANTILES)?
            .unwrap_or_else(|| DEFAULT_QUANTILES.to_vec());
        if quantiles.is_empty() {
            return Err(invalid("quantiles", "no levels given"));
        }
        Ok(Self {
            filters: Filters::from_params(p)?,
            quantiles,
            slow_quantile: p
                .quantile("slow_quantile")?
                .unwrap_or(DEFAULT_SLOW_QUANTILE),
            rollup: match p.string("source")?.as_deref() {
                None | Some("raw") => false,
                Some("rollup") => true,
                Some(_) => {
                    return Err(invalid(
                        "source",
                        "want raw (exact) or rollup (approximate)",
                    ))
                }
            },
        })
    }
}

#[derive(Row, Deserialize)]
struct QuantilesRow {
    count: u64,
    e2e: Vec<u64>,
    ttft: Vec<u64>,
    /// tpot, the phases, the resources, the gaps ([`partial_metrics`]).
    present: Vec<u64>,
    values: Vec<Vec<u64>>,
}

#[derive(Row, Deserialize)]
struct CohortsRow {
    slow_n: u64,
    slow_sum: u64,
    slow_min: u64,
    slow_max: u64,
    slow_phase_sums: Vec<u64>,
    slow_phase_n: Vec<u64>,
    med_n: u64,
    med_sum: u64,
    med_min: u64,
    med_max: u64,
    med_phase_sums: Vec<u64>,
    med_phase_n: Vec<u64>,
}

/// Handler.
pub async fn handler(
    State(s): State<ApiState>,
    q: QueryPairs,
) -> Result<Json<Breakdown>, ApiError> {
    let p = params_of(q, BreakdownQuery::PARAMS)?;
    let bq = BreakdownQuery::from_params(&p)?;
    if bq.rollup {
        return Ok(Json(super::rollup::breakdown(&s.store, &bq).await?));
    }
    Ok(Json(breakdown(&s.store, &bq).await?))
}

fn quantiles_expr(sql: &mut Sql, levels: &[f64], func: &str, args: &str) {
    sql.push(func)
        .push("(")
        .arg_list(levels)
        .push(")(")
        .push(args)
        .push(")");
}

/// One [`QuantileRow`] per level from the quantile arrays: e2e and ttft (`count` requests
/// have them), then per partial metric (tpot, the phases, then any resources and gaps) its
/// requests and its values; a metric no request has (or that is not given) is `null`.
pub(super) fn quantile_rows(
    levels: &[f64],
    (e2e, ttft, count): (&[u64], &[u64], u64),
    present: &[u64],
    values: &[Vec<u64>],
) -> Vec<QuantileRow> {
    let pick = |vals: &[u64], n: u64, i: usize| (n > 0).then(|| ns_to_ms(vals[i]));
    let range = |from: usize, len: usize, i: usize| -> Vec<Option<f64>> {
        (from..(from + len).min(present.len()))
            .map(|k| pick(&values[k], present[k], i))
            .collect()
    };
    levels
        .iter()
        .enumerate()
        .map(|(i, &lv)| QuantileRow {
            q: lv,
            e2e_ms: pick(e2e, count, i),
            ttft_ms: pick(ttft, count, i),
            tpot_ms: pick(&values[0], present[0], i),
            frontend_ms: pick(&values[1], present[1], i),
            queue_ms: pick(&values[2], present[2], i),
            prefill_ms: pick(&values[3], present[3], i),
            decode_ms: pick(&values[4], present[4], i),
            delivery_ms: pick(&values[5], present[5], i),
            resources: Resources::from_vec(range(RESOURCES_AT, RESOURCES.len(), i))
                .unwrap_or_default(),
            gaps: TokenGaps::from_vec(range(GAPS_AT, GAPS.len(), i)).unwrap_or_default(),
        })
        .collect()
}

/// Runs the breakdown.
pub async fn breakdown(store: &Store, q: &BreakdownQuery) -> Result<Breakdown, ApiError> {
    let table = store.table("requests");
    let levels = &q.quantiles;
    let mut sql = Sql::new("SELECT count(), ");
    // e2e at the requested levels, then at the cohort thresholds: one pass over the column.
    let e2e_levels: Vec<f64> = levels
        .iter()
        .copied()
        .chain([MEDIAN_COHORT.0, MEDIAN_COHORT.1, q.slow_quantile])
        .collect();
    quantiles_expr(&mut sql, &e2e_levels, "quantilesExact", "e2e_ns");
    sql.push(", ");
    quantiles_expr(&mut sql, levels, "quantilesExact", "ttft_ns");
    let partial = partial_metrics();
    sql.push(", [");
    for (i, (_, _, has)) in partial.clone().enumerate() {
        sql.push(if i > 0 { ", " } else { "" })
            .push(&format!("countIf({has})"));
    }
    sql.push("], [");
    for (i, (_, value, has)) in partial.enumerate() {
        sql.push(if i > 0 { ", " } else { "" });
        // ifNull + If: a non-Nullable argument, so the result is Array(UInt64) on every
        // server version; rows without the metric are skipped, as quantilesExact(x) would.
        quantiles_expr(
            &mut sql,
            levels,
            "quantilesExactIf",
            &format!("{value}, {has}"),
        );
    }
    sql.push("]");
    sql.push(" FROM ").push(&table).push(" WHERE ");
    q.filters.push_where(&mut sql);
    let r: QuantilesRow = sql.fetch_one(store.client(), "breakdown quantiles").await?;

    let expect = levels.len();
    if r.e2e.len() != expect + 3
        || r.ttft.len() != expect
        || r.present.len() != PARTIAL
        || r.values.len() != PARTIAL
        || r.values.iter().any(|v| v.len() != expect)
    {
        return Err(ApiError::new(
            crate::error::ErrorCode::Internal,
            "unexpected result shape from ClickHouse (quantiles)",
        ));
    }
    let quantiles = quantile_rows(levels, (&r.e2e, &r.ttft, r.count), &r.present, &r.values);
    let samples = MetricCounts {
        e2e: r.count,
        ttft: r.count,
        tpot: r.present[0],
        phases: Phases::from_vec(r.present[1..RESOURCES_AT].to_vec()).unwrap_or_default(),
        resources: Resources::from_vec(r.present[RESOURCES_AT..GAPS_AT].to_vec())
            .unwrap_or_default(),
        gaps: TokenGaps::from_vec(r.present[GAPS_AT..].to_vec()).unwrap_or_default(),
    };
    let slow_vs_median = if r.count == 0 {
        None
    } else {
        let t = &r.e2e[expect..];
        let (p40, p60, p_slow) = (t[0], t[1], t[2]);
        Some(cohorts(store, q, &table, p40, p60, p_slow).await?)
    };
    Ok(Breakdown {
        window: q.filters.window.clone(),
        count: r.count,
        samples,
        quantiles,
        slow_vs_median,
        source: "raw".into(),
        approximation: None,
    })
}

async fn cohorts(
    store: &Store,
    q: &BreakdownQuery,
    table: &str,
    p40: u64,
    p60: u64,
    p_slow: u64,
) -> Result<SlowVsMedian, ApiError> {
    let mut sql = Sql::new("WITH ");
    sql.arg(Arg::U64(p_slow))
        .push(" AS slow_min, ")
        .arg(Arg::U64(p40))
        .push(" AS med_lo, ")
        .arg(Arg::U64(p60))
        .push(" AS med_hi, e2e_ns >= slow_min AS in_slow, e2e_ns >= med_lo AND e2e_ns <= med_hi AS in_med SELECT ");
    for c in ["in_slow", "in_med"] {
        if c == "in_med" {
            sql.push(", ");
        }
        sql.push(&format!(
            "countIf({c}), sumIf(e2e_ns, {c}), minIf(e2e_ns, {c}), maxIf(e2e_ns, {c}), ["
        ));
        for (i, ph) in cohort_metrics().enumerate() {
            sql.push(if i > 0 { ", " } else { "" })
                .push(&format!("sumIf(ifNull({ph}_ns, 0), {c})"));
        }
        sql.push("], [");
        for (i, ph) in cohort_metrics().enumerate() {
            sql.push(if i > 0 { ", " } else { "" })
                .push(&format!("countIf(isNotNull({ph}_ns) AND {c})"));
        }
        sql.push("]");
    }
    sql.push(" FROM ").push(table).push(" WHERE ");
    q.filters.push_where(&mut sql);
    sql.push(" AND (e2e_ns >= ")
        .arg(Arg::U64(p_slow))
        .push(" OR (e2e_ns >= ")
        .arg(Arg::U64(p40))
        .push(" AND e2e_ns <= ")
        .arg(Arg::U64(p60))
        .push("))");
    let r: CohortsRow = sql.fetch_one(store.client(), "breakdown cohorts").await?;
    let slow = cohort(
        format!(
            "e2e >= p{} ({:.2} ms)",
            level_name(q.slow_quantile),
            ns_to_ms(p_slow)
        ),
        (r.slow_n, r.slow_sum, r.slow_min, r.slow_max),
        &r.slow_phase_sums,
        &r.slow_phase_n,
    );
    let median = cohort(
        format!(
            "p40 <= e2e <= p60 ({:.2} .. {:.2} ms)",
            ns_to_ms(p40),
            ns_to_ms(p60)
        ),
        (r.med_n, r.med_sum, r.med_min, r.med_max),
        &r.med_phase_sums,
        &r.med_phase_n,
    );
    let d = |a: &PhaseMean, b: &PhaseMean| PhaseDiff {
        mean_ms: a.mean_ms - b.mean_ms,
        share: a.share - b.share,
    };
    let diff = Phases {
        frontend: d(&slow.phases.frontend, &median.phases.frontend),
        queue: d(&slow.phases.queue, &median.phases.queue),
        prefill: d(&slow.phases.prefill, &median.phases.prefill),
        decode: d(&slow.phases.decode, &median.phases.decode),
        delivery: d(&slow.phases.delivery, &median.phases.delivery),
    };
    let unattributed_diff = d(&slow.unattributed, &median.unattributed);
    let resources_diff = Resources {
        gpu: d(&slow.resources.gpu, &median.resources.gpu),
        gpu_host_bound: d(
            &slow.resources.gpu_host_bound,
            &median.resources.gpu_host_bound,
        ),
        collective_wait: d(
            &slow.resources.collective_wait,
            &median.resources.collective_wait,
        ),
    };
    let largest_difference = diff
        .iter()
        .map(|(n, v)| (n, v.share))
        .chain([("unattributed", unattributed_diff.share)])
        .filter(|(_, s)| *s > 0.0)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(n, _)| n.to_string());
    Ok(SlowVsMedian {
        slow_quantile: q.slow_quantile,
        slow,
        median,
        diff,
        unattributed_diff,
        resources_diff,
        largest_difference,
    })
}

fn cohort(
    definition: String,
    (n, sum, min, max): (u64, u64, u64, u64),
    sums: &[u64],
    counts: &[u64],
) -> Cohort {
    let mean_e2e = if n > 0 { sum as f64 / n as f64 } else { 0.0 };
    let share = |x: f64| if mean_e2e > 0.0 { x / mean_e2e } else { 0.0 };
    let phase = |i: usize| {
        let mean = if n > 0 {
            sums.get(i).copied().unwrap_or(0) as f64 / n as f64
        } else {
            0.0
        };
        PhaseMean {
            mean_ms: mean / 1e6,
            share: share(mean),
            requests: counts.get(i).copied().unwrap_or(0),
        }
    };
    let phases = Phases {
        frontend: phase(0),
        queue: phase(1),
        prefill: phase(2),
        decode: phase(3),
        delivery: phase(4),
    };
    let resources = Resources::from_vec(
        (PHASES.len()..PHASES.len() + RESOURCES.len())
            .map(phase)
            .collect(),
    )
    .unwrap_or_default();
    let covered: f64 = phases.iter().map(|(_, p)| p.share).sum();
    let covered_ms: f64 = phases.iter().map(|(_, p)| p.mean_ms).sum();
    let unattributed_ms = mean_e2e / 1e6 - covered_ms;
    Cohort {
        definition,
        count: n,
        min_e2e_ms: if n > 0 { ns_to_ms(min) } else { 0.0 },
        max_e2e_ms: if n > 0 { ns_to_ms(max) } else { 0.0 },
        mean_e2e_ms: mean_e2e / 1e6,
        phases,
        covered_share: covered,
        unattributed: PhaseMean {
            mean_ms: unattributed_ms,
            share: if n > 0 && mean_e2e > 0.0 {
                1.0 - covered
            } else {
                0.0
            },
            requests: n,
        },
        resources,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_names() {
        assert_eq!(level_name(0.99), "99");
        assert_eq!(level_name(0.999), "99.9");
        assert_eq!(level_name(0.5), "50");
    }

    #[test]
    fn cohort_shares_add_up() {
        let c = cohort(
            "x".into(),
            (2, 200_000_000, 50_000_000, 150_000_000),
            &[
                10_000_000,
                40_000_000,
                20_000_000,
                100_000_000,
                10_000_000,
                60_000_000,
                0,
                4_000_000,
            ],
            &[2, 2, 2, 2, 2, 2, 0, 1],
        );
        assert_eq!(c.resources.gpu.mean_ms, 30.0);
        assert_eq!(c.resources.collective_wait.requests, 1);
        assert_eq!(c.mean_e2e_ms, 100.0);
        assert_eq!(c.phases.queue.mean_ms, 20.0);
        assert!((c.covered_share - 0.9).abs() < 1e-12);
        assert!((c.unattributed.mean_ms - 10.0).abs() < 1e-9);
    }
}
