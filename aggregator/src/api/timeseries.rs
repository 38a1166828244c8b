//! `GET /api/v1/timeseries`: request count and latency quantiles (e2e, ttft, tpot) per time
//! bucket, for the UI's percentiles-over-time charts.
//!
//! One scan of the filtered window, grouped in ClickHouse by
//! `intDiv(toUInt32(start), step_s) * step_s` (buckets aligned to multiples of `step_s` since the
//! Unix epoch, so the first and last bucket may be partly outside the window), with
//! `quantilesExact` per bucket, like the breakdown. Buckets without requests are returned with
//! `count: 0` and `null` quantiles, so a chart shows gaps rather than interpolating over them.
use axum::extract::State;
use axum::Json;
use clickhouse::Row;
use serde::{Deserialize, Serialize};

use super::params::{invalid, Filters, Params, Window, FILTER_PARAMS};
use super::sql::{Arg, Sql};
use super::time::format_rfc3339;
use super::{ns_to_ms, params_of, ApiState, QueryPairs};
use crate::error::{ApiError, ErrorCode};
use crate::store::Store;

/// Quantile levels when `quantiles` is not given.
pub const DEFAULT_QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];
/// Most quantile levels per call.
pub const MAX_QUANTILES: usize = 8;
/// Most buckets per call.
pub const MAX_BUCKETS: u64 = 2000;
/// Largest bucket width (one day).
pub const MAX_STEP_S: u64 = 86_400;
/// When `step_s` is not given, the smallest of [`NICE_STEPS_S`] that gives at most this many
/// buckets.
pub const TARGET_BUCKETS: u64 = 120;
/// Bucket widths chosen automatically (seconds).
pub const NICE_STEPS_S: [u64; 19] = [
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 64_800,
    86_400,
];

const NS: u64 = 1_000_000_000;

/// Validated parameters.
#[derive(Debug, Clone)]
pub struct TimeseriesQuery {
    /// Which requests.
    pub filters: Filters,
    /// Bucket width in seconds.
    pub step_s: u64,
    /// Quantile levels, in (0, 1).
    pub quantiles: Vec<f64>,
}

/// First and last bucket start (Unix seconds, multiples of `step`) of `w`.
pub fn bucket_range(w: &Window, step: u64) -> (u64, u64) {
    let first = w.from_unix_ns / NS / step * step;
    // `to` is exclusive.
    let last = w.to_unix_ns.saturating_sub(1) / NS / step * step;
    (first, last.max(first))
}

/// Number of buckets of width `step` that cover `w`.
pub fn bucket_count(w: &Window, step: u64) -> u64 {
    let (first, last) = bucket_range(w, step);
    (last - first) / step + 1
}

/// The bucket width used when `step_s` is not given: the smallest "nice" width that covers the
/// window in at most [`TARGET_BUCKETS`] buckets.
pub fn auto_step(w: &Window) -> u64 {
    NICE_STEPS_S
        .iter()
        .copied()
        .find(|&s| bucket_count(w, s) <= TARGET_BUCKETS)
        .unwrap_or(MAX_STEP_S)
}

impl TimeseriesQuery {
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
        "step_s",
        "quantiles",
    ];

    /// Validates.
    pub fn from_params(p: &Params) -> Result<Self, ApiError> {
        debug_assert!(FILTER_PARAMS.iter().all(|f| Self::PARAMS.contains(f)));
        let filters = Filters::from_params(p)?;
        let quantiles = p
            .quantiles("quantiles", MAX_QUANTILES)?
            .unwrap_or_else(|| DEFAULT_QUANTILES.to_vec());
        let step_s = match p.uint("step_s", 1..=MAX_STEP_S)? {
            Some(s) => {
                let n = bucket_count(&filters.window, s);
                if n > MAX_BUCKETS {
                    let w_s =
                        (filters.window.to_unix_ns - filters.window.from_unix_ns).div_ceil(NS);
                    return Err(invalid(
                        "step_s",
                        format!(
                            "{s} s buckets over a {w_s} s window make {n} buckets; at most \
                             {MAX_BUCKETS} are allowed (use step_s >= {})",
                            w_s.div_ceil(MAX_BUCKETS - 1)
                        ),
                    ));
                }
                s
            }
            None => auto_step(&filters.window),
        };
        Ok(Self {
            filters,
            step_s,
            quantiles,
        })
    }
}

/// One time bucket. Quantiles are in the order of [`Timeseries::quantiles`], in milliseconds;
/// `null` when the bucket has no request with the metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Bucket start, RFC 3339 UTC.
    pub start: String,
    /// Bucket start, Unix seconds (a multiple of `step_s`).
    pub start_unix_s: u64,
    /// Requests that started in the bucket (and the window).
    pub count: u64,
    /// End-to-end quantiles.
    pub e2e_ms: Option<Vec<f64>>,
    /// Time-to-first-token quantiles.
    pub ttft_ms: Option<Vec<f64>>,
    /// Time-per-output-token quantiles (requests with two or more content events).
    pub tpot_ms: Option<Vec<f64>>,
    /// Requests with a tpot.
    pub tpot_count: u64,
}

/// The `/api/v1/timeseries` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeseries {
    /// The window queried.
    pub window: Window,
    /// Bucket width, seconds.
    pub step_s: u64,
    /// The quantile levels of every bucket's arrays.
    pub quantiles: Vec<f64>,
    /// Requests in the window (sum of the bucket counts).
    pub count: u64,
    /// Every bucket that overlaps the window, oldest first, empty ones included.
    pub buckets: Vec<Bucket>,
}

#[derive(Row, Deserialize)]
struct TsRow {
    t: u64,
    count: u64,
    e2e: Vec<u64>,
    ttft: Vec<u64>,
    tpot_n: u64,
    tpot: Vec<u64>,
}

/// Handler.
pub async fn handler(
    State(s): State<ApiState>,
    q: QueryPairs,
) -> Result<Json<Timeseries>, ApiError> {
    let p = params_of(q, TimeseriesQuery::PARAMS)?;
    let tq = TimeseriesQuery::from_params(&p)?;
    Ok(Json(timeseries(&s.store, &tq).await?))
}

/// Runs the query.
pub async fn timeseries(store: &Store, q: &TimeseriesQuery) -> Result<Timeseries, ApiError> {
    let levels = &q.quantiles;
    let mut sql = Sql::new("SELECT toUInt64(intDiv(toUInt32(start), ");
    sql.arg(Arg::U64(q.step_s))
        .push(") * ")
        .arg(Arg::U64(q.step_s))
        .push(") AS t, count(), quantilesExact(")
        .arg_list(levels)
        .push(")(e2e_ns), quantilesExact(")
        .arg_list(levels)
        .push(")(ttft_ns), count(tpot_ns), quantilesExactIf(")
        .arg_list(levels)
        // ifNull + If: a non-Nullable argument, so the result is Array(UInt64) on every
        // server version (as in the breakdown).
        .push(")(ifNull(tpot_ns, 0), isNotNull(tpot_ns)) FROM ")
        .push(&store.table("requests"))
        .push(" WHERE ");
    q.filters.push_where(&mut sql);
    sql.push(" GROUP BY t ORDER BY t LIMIT ")
        .arg(Arg::U64(MAX_BUCKETS + 1));
    let rows: Vec<TsRow> = sql.fetch_all(store.client(), "timeseries").await?;
    let n = levels.len();
    if rows
        .iter()
        .any(|r| r.e2e.len() != n || r.ttft.len() != n || r.tpot.len() != n)
    {
        return Err(ApiError::new(
            ErrorCode::Internal,
            "unexpected result shape from ClickHouse (timeseries)",
        ));
    }
    Ok(fill(&q.filters.window, q.step_s, levels, rows))
}

/// Dense buckets from the non-empty ones ClickHouse returned.
fn fill(w: &Window, step: u64, levels: &[f64], rows: Vec<TsRow>) -> Timeseries {
    let (first, last) = bucket_range(w, step);
    let ms = |v: &[u64]| v.iter().map(|&x| ns_to_ms(x)).collect::<Vec<_>>();
    let mut rows = rows.into_iter().peekable();
    let mut buckets = Vec::with_capacity(((last - first) / step + 1) as usize);
    let mut total = 0;
    let mut t = first;
    while t <= last {
        // Rows arrive sorted by t; anything outside [first, last] cannot match the window.
        while rows.peek().is_some_and(|r| r.t < t) {
            rows.next();
        }
        let b = match rows.peek() {
            Some(r) if r.t == t => {
                let r = rows.next().expect("peeked");
                total += r.count;
                Bucket {
                    start: format_rfc3339(t * NS),
                    start_unix_s: t,
                    count: r.count,
                    e2e_ms: (r.count > 0).then(|| ms(&r.e2e)),
                    ttft_ms: (r.count > 0).then(|| ms(&r.ttft)),
                    tpot_ms: (r.tpot_n > 0).then(|| ms(&r.tpot)),
                    tpot_count: r.tpot_n,
                }
            }
            _ => Bucket {
                start: format_rfc3339(t * NS),
                start_unix_s: t,
                count: 0,
                e2e_ms: None,
                ttft_ms: None,
                tpot_ms: None,
                tpot_count: 0,
            },
        };
        buckets.push(b);
        t += step;
    }
    Timeseries {
        window: w.clone(),
        step_s: step,
        quantiles: levels.to_vec(),
        count: total,
        buckets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &[(&str, &str)]) -> Params {
        Params::new(
            q.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            TimeseriesQuery::PARAMS,
        )
        .unwrap()
    }

    #[test]
    fn buckets_are_aligned_and_capped() {
        let w = Window::new(1_700_000_005 * NS + 1, 1_700_000_065 * NS);
        assert_eq!(bucket_range(&w, 10), (1_700_000_000, 1_700_000_060));
        assert_eq!(bucket_count(&w, 10), 7);
        // `to` exclusive: a window ending exactly on a boundary does not open a new bucket.
        let w = Window::new(1_699_999_980 * NS, 1_700_000_040 * NS);
        assert_eq!(bucket_count(&w, 60), 1);
        assert_eq!(auto_step(&w), 1);
        let hour = Window::new(1_700_000_000 * NS, 1_700_003_600 * NS);
        assert_eq!(auto_step(&hour), 60);
        let month = Window::new(1_700_000_000 * NS, (1_700_000_000 + 31 * 86_400) * NS);
        assert!(bucket_count(&month, auto_step(&month)) <= TARGET_BUCKETS);

        let q = TimeseriesQuery::from_params(&params(&[
            ("from", "1700000000"),
            ("to", "1700003600"),
            ("step_s", "60"),
        ]))
        .unwrap();
        assert_eq!(q.step_s, 60);
        assert_eq!(q.quantiles, DEFAULT_QUANTILES.to_vec());
        let e = TimeseriesQuery::from_params(&params(&[
            ("from", "1700000000"),
            ("to", "1700086400"),
            ("step_s", "1"),
        ]))
        .err()
        .unwrap();
        assert!(e.message.contains("\"step_s\""), "{}", e.message);
        assert!(e.message.contains("at most 2000"), "{}", e.message);
        for bad in ["0", "86401", "x"] {
            assert!(TimeseriesQuery::from_params(&params(&[("step_s", bad)])).is_err());
        }
    }

    #[test]
    fn fill_makes_dense_buckets() {
        let w = Window::new(1_700_000_000 * NS, 1_700_000_030 * NS);
        let rows = vec![
            TsRow {
                t: 1_700_000_010,
                count: 2,
                e2e: vec![5_000_000, 9_000_000],
                ttft: vec![1_000_000, 2_000_000],
                tpot_n: 0,
                tpot: vec![0, 0],
            },
            TsRow {
                t: 1_700_000_999,
                count: 1,
                e2e: vec![1, 1],
                ttft: vec![1, 1],
                tpot_n: 1,
                tpot: vec![1, 1],
            },
        ];
        let ts = fill(&w, 10, &[0.5, 0.99], rows);
        assert_eq!(ts.buckets.len(), 3);
        assert_eq!(ts.count, 2);
        assert_eq!(ts.buckets[0].count, 0);
        assert_eq!(ts.buckets[0].e2e_ms, None);
        assert_eq!(ts.buckets[1].e2e_ms, Some(vec![5.0, 9.0]));
        assert_eq!(ts.buckets[1].tpot_ms, None);
        assert_eq!(ts.buckets[1].start, "2023-11-14T22:13:30Z");
        assert_eq!(ts.buckets[2].start_unix_s, 1_700_000_020);
    }
}
