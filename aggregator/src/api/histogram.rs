//! `GET /api/v1/histogram`: the distribution of one latency metric (e2e, ttft or tpot) over the
//! filtered window, for the UI's histogram.
//!
//! Two scans, both aggregated in ClickHouse: the first finds the count and the range
//! (`min`, `max`), the second counts requests per bucket. Buckets span `[min, max]` and are
//! either of equal width (`scale=linear`) or of equal width in `ln(x)` (`scale=log`, the default:
//! latency distributions are long-tailed). The last bucket includes `max`.
use axum::extract::State;
use axum::Json;
use clickhouse::Row;
use serde::{Deserialize, Serialize};

use super::params::{Filters, Params, Window, FILTER_PARAMS};
use super::sql::{Arg, Sql};
use super::{ns_to_ms, params_of, ApiState, QueryPairs};
use crate::error::ApiError;
use crate::store::Store;

/// Buckets when `buckets` is not given.
pub const DEFAULT_BUCKETS: u64 = 40;
/// Most buckets.
pub const MAX_BUCKETS: u64 = 200;
/// Metrics and their columns (`tpot_ns` is Nullable: requests without it are left out).
pub const METRICS: [(&str, &str); 3] = [
    ("e2e", "e2e_ns"),
    ("ttft", "ttft_ns"),
    ("tpot", "assumeNotNull(tpot_ns)"),
];

/// Validated parameters.
#[derive(Debug, Clone)]
pub struct HistogramQuery {
    /// Which requests.
    pub filters: Filters,
    /// `e2e`, `ttft` or `tpot`.
    pub metric: &'static str,
    /// Number of buckets.
    pub buckets: u64,
    /// Logarithmic buckets?
    pub log: bool,
}

impl HistogramQuery {
    /// Accepted parameter names.
    pub const PARAMS: &'static [&'static str] = &[
        "from", "to", "model", "node", "engine", "status", "outcome", "tag", "tenant", "metric",
        "buckets", "scale",
    ];

    /// Validates.
    pub fn from_params(p: &Params) -> Result<Self, ApiError> {
        debug_assert!(FILTER_PARAMS.iter().all(|f| Self::PARAMS.contains(f)));
        let names: Vec<&'static str> = METRICS.iter().map(|(k, _)| *k).collect();
        Ok(Self {
            filters: Filters::from_params(p)?,
            metric: p.choice("metric", &names)?.unwrap_or("e2e"),
            buckets: p
                .uint("buckets", 1..=MAX_BUCKETS)?
                .unwrap_or(DEFAULT_BUCKETS),
            log: p.choice("scale", &["log", "linear"])?.unwrap_or("log") == "log",
        })
    }

    fn column(&self) -> &'static str {
        METRICS
            .iter()
            .find(|(k, _)| *k == self.metric)
            .map_or("e2e_ns", |(_, c)| *c)
    }
}

/// One bucket: requests with `lo_ms <= value < hi_ms` (the last one also `value == hi_ms`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistBucket {
    /// Lower edge (ms).
    pub lo_ms: f64,
    /// Upper edge (ms).
    pub hi_ms: f64,
    /// Requests.
    pub count: u64,
}

/// The `/api/v1/histogram` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// The window queried.
    pub window: Window,
    /// `e2e`, `ttft` or `tpot`.
    pub metric: String,
    /// `log` or `linear`.
    pub scale: String,
    /// Requests with the metric in the window (sum of the bucket counts).
    pub count: u64,
    /// Smallest value (ms); `null` when `count` is 0.
    pub min_ms: Option<f64>,
    /// Largest value (ms); `null` when `count` is 0.
    pub max_ms: Option<f64>,
    /// Buckets from `min_ms` to `max_ms`, empty ones included; none when `count` is 0.
    pub buckets: Vec<HistBucket>,
}

#[derive(Row, Deserialize)]
struct RangeRow {
    count: u64,
    min: u64,
    max: u64,
}

#[derive(Row, Deserialize)]
struct BucketRow {
    b: u32,
    count: u64,
}

/// Handler.
pub async fn handler(
    State(s): State<ApiState>,
    q: QueryPairs,
) -> Result<Json<Histogram>, ApiError> {
    let p = params_of(q, HistogramQuery::PARAMS)?;
    let hq = HistogramQuery::from_params(&p)?;
    Ok(Json(histogram(&s.store, &hq).await?))
}

fn push_from(q: &HistogramQuery, table: &str, sql: &mut Sql) {
    sql.push(" FROM ").push(table).push(" WHERE ");
    q.filters.push_where(sql);
    if q.metric == "tpot" {
        sql.push(" AND tpot_ns IS NOT NULL");
    }
}

/// Bucket edges in ns: `n + 1` values from `lo` to `hi`.
pub fn edges(lo: u64, hi: u64, n: u64, log: bool) -> Vec<f64> {
    let (lo_f, hi_f) = (lo as f64, hi as f64);
    let mut e: Vec<f64> = (0..=n)
        .map(|i| {
            let f = i as f64 / n as f64;
            if log {
                let l = lo_f.max(1.0).ln();
                (l + (hi_f.max(1.0).ln() - l) * f).exp()
            } else {
                lo_f + (hi_f - lo_f) * f
            }
        })
        .collect();
    // Exact ends, whatever the floating-point rounding.
    e[0] = lo_f;
    e[n as usize] = hi_f;
    e
}

/// Runs the two queries.
pub async fn histogram(store: &Store, q: &HistogramQuery) -> Result<Histogram, ApiError> {
    let table = store.table("requests");
    let col = q.column();
    let mut sql = Sql::new("SELECT count(), ");
    sql.push(&format!("min({col}), max({col})"));
    push_from(q, &table, &mut sql);
    let r: RangeRow = sql.fetch_one(store.client(), "histogram range").await?;
    let mut out = Histogram {
        window: q.filters.window.clone(),
        metric: q.metric.to_string(),
        scale: if q.log { "log" } else { "linear" }.to_string(),
        count: r.count,
        min_ms: (r.count > 0).then(|| ns_to_ms(r.min)),
        max_ms: (r.count > 0).then(|| ns_to_ms(r.max)),
        buckets: Vec::new(),
    };
    if r.count == 0 {
        return Ok(out);
    }
    // All values equal: one bucket.
    let n = if r.max > r.min { q.buckets } else { 1 };
    let e = edges(r.min, r.max, n, q.log);
    let mut counts = vec![0u64; n as usize];
    if n == 1 {
        counts[0] = r.count;
    } else {
        // Bucket index = floor((f(x) - f(lo)) / width), clamped to [0, n - 1]; f = ln or identity.
        let (x, lo, width) = if q.log {
            let lo = (r.min.max(1) as f64).ln();
            (
                format!("log(greatest(toFloat64({col}), 1.))"),
                lo,
                ((r.max.max(1) as f64).ln() - lo) / n as f64,
            )
        } else {
            (
                format!("toFloat64({col})"),
                r.min as f64,
                (r.max - r.min) as f64 / n as f64,
            )
        };
        let mut sql = Sql::new("SELECT toUInt32(least(greatest(floor((");
        sql.push(&x)
            .push(" - ")
            .arg(Arg::F64(lo))
            .push(") / ")
            .arg(Arg::F64(width))
            .push("), 0), ")
            .arg(Arg::U64(n - 1))
            .push(")) AS b, count()");
        push_from(q, &table, &mut sql);
        sql.push(" GROUP BY b ORDER BY b");
        let rows: Vec<BucketRow> = sql.fetch_all(store.client(), "histogram buckets").await?;
        for row in rows {
            if let Some(c) = counts.get_mut(row.b as usize) {
                *c += row.count;
            }
        }
    }
    out.count = counts.iter().sum();
    out.buckets = counts
        .into_iter()
        .enumerate()
        .map(|(i, count)| HistBucket {
            lo_ms: e[i] / 1e6,
            hi_ms: e[i + 1] / 1e6,
            count,
        })
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_cover_the_range() {
        let e = edges(1_000_000, 1_000_000_000, 3, true);
        assert_eq!(e.len(), 4);
        assert_eq!(e[0], 1e6);
        assert!((e[1] - 1e7).abs() < 1.0 && (e[2] - 1e8).abs() < 10.0);
        assert_eq!(e[3], 1e9);
        let e = edges(10, 50, 4, false);
        assert_eq!(e, vec![10.0, 20.0, 30.0, 40.0, 50.0]);
        // A zero minimum in log scale still gives finite edges.
        assert!(edges(0, 100, 5, true).iter().all(|x| x.is_finite()));
    }

    #[test]
    fn parameters() {
        let p = |q: &[(&str, &str)]| {
            Params::new(
                q.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                HistogramQuery::PARAMS,
            )
            .unwrap()
        };
        let q = HistogramQuery::from_params(&p(&[])).unwrap();
        assert_eq!((q.metric, q.buckets, q.log), ("e2e", DEFAULT_BUCKETS, true));
        let q = HistogramQuery::from_params(&p(&[
            ("metric", "tpot"),
            ("buckets", "7"),
            ("scale", "linear"),
        ]))
        .unwrap();
        assert_eq!(
            (q.column(), q.buckets, q.log),
            ("assumeNotNull(tpot_ns)", 7, false)
        );
        for (k, v) in [
            ("metric", "p99"),
            ("buckets", "0"),
            ("buckets", "201"),
            ("scale", "exp"),
        ] {
            let e = HistogramQuery::from_params(&p(&[(k, v)])).err().unwrap();
            assert!(e.message.contains(&format!("\"{k}\"")), "{}", e.message);
        }
    }
}
