//! Clock bounds between nodes, from the hops they share, for the trace API. Stored times are
//! never rewritten: bounds are derived from the stored halves when a trace is read.
//!
//! For a hop from a caller on node A to a server on node B, with θ = clock_B − clock_A:
//! - the request's first byte reached B (B's `start`) after A sent it (A's `start`), so
//!   θ ≤ B.start − A.start;
//! - A read the response's last byte (A's `end`) after B wrote it (B's `end`), so
//!   θ ≥ B.end − A.end.
//!
//! Every hop between A and B within [`CLOCK_WINDOW_NS`] of a hop bounds that hop's θ too, each
//! widened by the drift allowed over the time between them ([`MAX_DRIFT_PPM`]); the
//! intersection is the tightest interval (NTP's error bound with Paxson's minimum filter, over
//! every exchange). Hops that disagree beyond the drift allowed make the intersection empty:
//! then only the hop's own bounds are given, marked inconsistent.
//!
//! In a `follow=hops` view the nodes' offsets are composed along the hops from the asked
//! trace's node (interval arithmetic), and spans are placed on that node's clock by the middle
//! of their node's interval, half its width being the error.
use std::collections::{BTreeMap, HashMap};

use clickhouse::Row;
use serde::Deserialize;

use super::sql::{Arg, Sql};
use crate::error::ApiError;
use crate::store::Store;
use inferscope_api::trace::{HopOut, NodeClock, Trace, CLOCK_WINDOW_NS, MAX_DRIFT_PPM};

/// Most other hops read per node pair.
const MAX_SAMPLES: u64 = 4096;

#[derive(Row, Deserialize)]
struct Sample {
    t: u64,
    lo: i64,
    hi: i64,
}

/// θ's bounds at time `t` from `samples` (at `t_i`, θ ∈ [`lo_i`, `hi_i`]), each widened by the
/// drift allowed over `|t − t_i|`. `None` when they disagree (empty intersection) or there
/// are none.
pub fn interval_at(samples: &[(u64, i64, i64)], t: u64) -> Option<(i64, i64)> {
    let mut out: Option<(i64, i64)> = None;
    for &(ti, lo, hi) in samples {
        let widen = (t.abs_diff(ti) as u128 * u128::from(MAX_DRIFT_PPM) / 1_000_000) as i64;
        let (l, h) = (lo.saturating_sub(widen), hi.saturating_add(widen));
        out = Some(match out {
            None => (l, h),
            Some((a, b)) => (a.max(l), b.min(h)),
        });
    }
    out.filter(|(lo, hi)| lo <= hi)
}

/// The bounds one hop gives by itself: (time, lo, hi).
fn own(h: &HopOut) -> Option<(u64, i64, i64)> {
    let (c, s) = (h.client.as_ref()?, h.server.as_ref()?);
    let d = |a: u64, b: u64| (i128::from(a) - i128::from(b)) as i64;
    Some((
        c.start_unix_ns,
        d(s.end_unix_ns, c.end_unix_ns),
        d(s.start_unix_ns, c.start_unix_ns),
    ))
}

/// Other joined hops from node `a`'s callers to node `b`'s servers starting in `[from, to]`.
async fn samples(
    store: &Store,
    (a, b): (&str, &str),
    (from, to): (u64, u64),
) -> Result<Vec<(u64, i64, i64)>, ApiError> {
    let mut sql = Sql::new(
        "SELECT t, lo, hi FROM (SELECT hop_id, anyIf(node, side = 'client') AS cn, \
         anyIf(node, side = 'server') AS sn, minIf(start_ns, side = 'client') AS t, \
         toInt64(maxIf(end_ns, side = 'server')) - toInt64(maxIf(end_ns, side = 'client')) AS lo, \
         toInt64(minIf(start_ns, side = 'server')) - toInt64(minIf(start_ns, side = 'client')) AS hi, \
         countIf(side = 'client') AS ch, countIf(side = 'server') AS sh FROM ",
    );
    // `start` is each half's minute: two minutes of slack on each side covers both halves.
    sql.push(&store.table("hops"))
        .push(" WHERE start >= toDateTime(")
        .arg(Arg::U64((from / 1_000_000_000).saturating_sub(120)))
        .push(") AND start <= toDateTime(")
        .arg(Arg::U64(to / 1_000_000_000 + 120))
        .push(") GROUP BY hop_id) WHERE ch > 0 AND sh > 0 AND cn = ")
        .arg(Arg::Str(a.to_string()))
        .push(" AND sn = ")
        .arg(Arg::Str(b.to_string()))
        .push(" AND t >= ")
        .arg(Arg::U64(from))
        .push(" AND t <= ")
        .arg(Arg::U64(to))
        .push(" LIMIT ")
        .arg(Arg::U64(MAX_SAMPLES));
    let rows: Vec<Sample> = sql.fetch_all(store.client(), "clock samples").await?;
    Ok(rows.into_iter().map(|s| (s.t, s.lo, s.hi)).collect())
}

/// Gives every cross-node hop with both halves its clock bounds.
pub async fn bound_hops(store: &Store, hops: &mut [HopOut]) -> Result<(), ApiError> {
    let mut pairs: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, h) in hops.iter().enumerate() {
        if let (Some(c), Some(s)) = (&h.client, &h.server) {
            if c.node != s.node {
                pairs
                    .entry((c.node.clone(), s.node.clone()))
                    .or_default()
                    .push(i);
            }
        }
    }
    for ((a, b), idx) in pairs {
        let times: Vec<u64> = idx
            .iter()
            .filter_map(|&i| own(&hops[i]))
            .map(|o| o.0)
            .collect();
        let lo = times.iter().min().copied().unwrap_or(0);
        let hi = times.iter().max().copied().unwrap_or(0);
        let window = (lo.saturating_sub(CLOCK_WINDOW_NS), hi + CLOCK_WINDOW_NS);
        let found = samples(store, (&a, &b), window).await?;
        for i in idx {
            let Some(mine) = own(&hops[i]) else { continue };
            let near: Vec<(u64, i64, i64)> = found
                .iter()
                .copied()
                .filter(|s| s.0.abs_diff(mine.0) <= CLOCK_WINDOW_NS)
                .chain([mine])
                .collect();
            let h = &mut hops[i];
            match interval_at(&near, mine.0) {
                Some((l, u)) => {
                    (h.offset_lo_ns, h.offset_hi_ns) = (Some(l), Some(u));
                    h.offset_samples = near.len() as u64;
                }
                None => {
                    (h.offset_lo_ns, h.offset_hi_ns) = (Some(mine.1), Some(mine.2));
                    h.offset_samples = 1;
                    h.offset_consistent = false;
                }
            }
        }
    }
    Ok(())
}

/// The node whose clock a `follow=hops` view is on: the asked trace's first request's (else
/// its first span's).
fn reference_node(t: &Trace) -> Option<String> {
    t.requests
        .iter()
        .find(|r| r.request.trace_id == t.trace_id)
        .map(|r| r.request.node.clone())
        .or_else(|| {
            t.spans
                .iter()
                .find(|s| s.trace_id.is_none_or(|id| id == t.trace_id))
                .map(|s| s.node.clone())
        })
}

/// Each node's clock against the reference node's, composed along the view's hops.
pub fn node_clocks(t: &Trace) -> Vec<NodeClock> {
    let Some(reference) = reference_node(t) else {
        return Vec::new();
    };
    let mut known: HashMap<String, (i64, i64)> = HashMap::from([(reference.clone(), (0, 0))]);
    let mut order = vec![reference];
    loop {
        let mut grew = false;
        for h in &t.hops {
            let (Some(c), Some(s), Some(lo), Some(hi)) =
                (&h.client, &h.server, h.offset_lo_ns, h.offset_hi_ns)
            else {
                continue;
            };
            let (kc, ks) = (known.get(&c.node).copied(), known.get(&s.node).copied());
            let (node, v) = match (kc, ks) {
                (Some((a, b)), None) => (&s.node, (a + lo, b + hi)),
                (None, Some((a, b))) => (&c.node, (a - hi, b - lo)),
                _ => continue,
            };
            known.insert(node.clone(), v);
            order.push(node.clone());
            grew = true;
        }
        if !grew {
            break;
        }
    }
    order
        .into_iter()
        .map(|node| {
            let (lo, hi) = known[&node];
            NodeClock {
                node,
                offset_lo_ns: lo,
                offset_hi_ns: hi,
            }
        })
        .collect()
}

/// Places the view's spans and steps on the reference node's clock and re-times them from the
/// view's first span.
pub fn correct_spans(t: &mut Trace) {
    let mid: HashMap<&str, (i64, u64)> = t
        .clocks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let m = ((i128::from(c.offset_lo_ns) + i128::from(c.offset_hi_ns)) / 2) as i64;
            let err = c.offset_hi_ns.abs_diff(c.offset_lo_ns) / 2;
            (c.node.as_str(), if i == 0 { (0, 0) } else { (m, err) })
        })
        .collect();
    let shift = |node: &str, ns: u64| {
        let m = mid.get(node).map_or(0, |v| v.0);
        (i128::from(ns) - i128::from(m)).max(0) as u64
    };
    let t0 = t
        .spans
        .iter()
        .map(|s| shift(&s.node, s.start_unix_ns))
        .min()
        .unwrap_or(0);
    for s in &mut t.spans {
        if let Some(&(m, err)) = mid.get(s.node.as_str()).filter(|v| **v != (0, 0)) {
            (s.clock_offset_ns, s.clock_error_ns) = (Some(m), Some(err));
        }
        s.offset_ms = shift(&s.node, s.start_unix_ns).saturating_sub(t0) as f64 / 1e6;
    }
    for st in &mut t.steps {
        st.offset_ms = st
            .start_unix_ns
            .map(|ns| shift(&st.node, ns).saturating_sub(t0) as f64 / 1e6);
    }
    t.spans.sort_by(|a, b| {
        a.offset_ms
            .total_cmp(&b.offset_ms)
            .then(b.end_unix_ns.cmp(&a.end_unix_ns))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn intersects_and_widens_by_drift() {
        // θ = 50 ms: each sample's [lo, hi] holds it.
        let th = 50_000_000i64;
        let samples = [
            (10 * S, th - 300_000, th + 200_000),
            (20 * S, th - 100_000, th + 900_000),
        ];
        let (lo, hi) = interval_at(&samples, 10 * S).unwrap();
        // The second sample, 10 s away, widens by 50 ppm × 10 s = 500 µs.
        assert_eq!((lo, hi), (th - 300_000, th + 200_000));
        assert!(lo <= th && th <= hi);
        let (lo, _) = interval_at(&samples, 20 * S).unwrap();
        assert_eq!(lo, th - 100_000);
    }

    #[test]
    fn disagreement_beyond_drift_is_none() {
        let samples = [(S, 0, 10), (S, 20, 30)];
        assert!(interval_at(&samples, S).is_none());
        assert!(interval_at(&[], S).is_none());
    }
}
