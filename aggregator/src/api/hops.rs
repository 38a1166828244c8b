//! The hops of a trace, for `/api/v1/traces/{trace_id}`: each HTTP call the trace made (its
//! `http.client` spans) and the call it served (its request rows' `hop_id`), with both halves
//! as the `hops` table joined them (migration 15); and, with `follow=hops`, the traces on the
//! other side of those hops gathered into one view, hop after hop.
//!
//! Every lookup is on `hops`' key (`hop_id IN (…)`), then on the linked traces' own indexes
//! (see `trace.rs`), so a cross-node trace costs one key lookup per round plus one trace
//! lookup per linked trace, bounded by [`MAX_LINKED_TRACES`].
use std::collections::{HashMap, HashSet, VecDeque};

use clickhouse::Row;
use serde::Deserialize;

use super::params::Window;
use super::sql::{Arg, Sql};
use super::stored_span_id;
use crate::error::{ApiError, ErrorCode};
use crate::store::Store;
use inferscope_api::trace::{HopHalf, HopOut, Trace, MAX_HOPS, MAX_LINKED_TRACES};
use inferscope_api::{SpanId, TraceId};

#[derive(Row, Deserialize)]
struct HopRow {
    hop_id: String,
    client_node: String,
    client_pid: u32,
    client_trace_id: String,
    client_link: String,
    client_start_ns: u64,
    client_end_ns: u64,
    client_halves: u64,
    server_node: String,
    server_pid: u32,
    server_trace_id: String,
    server_start_ns: u64,
    server_end_ns: u64,
    server_halves: u64,
}

/// Both halves of each hop, merged by hop id (one row per half in `hops`).
const HOP_SELECT: &str = "SELECT hop_id, \
     anyIf(node, side = 'client') AS client_node, anyIf(pid, side = 'client') AS client_pid, \
     anyIf(trace_id, side = 'client') AS client_trace_id, anyIf(link, side = 'client') AS client_link, \
     minIf(start_ns, side = 'client') AS client_start_ns, maxIf(end_ns, side = 'client') AS client_end_ns, \
     countIf(side = 'client') AS client_halves, \
     anyIf(node, side = 'server') AS server_node, anyIf(pid, side = 'server') AS server_pid, \
     anyIf(trace_id, side = 'server') AS server_trace_id, \
     minIf(start_ns, side = 'server') AS server_start_ns, maxIf(end_ns, side = 'server') AS server_end_ns, \
     countIf(side = 'server') AS server_halves FROM ";

/// Signed difference `to − from` in ms (two nodes' clocks may put it below zero).
fn signed_ms(from: u64, to: u64) -> f64 {
    (i128::from(to) - i128::from(from)) as f64 / 1e6
}

impl HopRow {
    fn into_out(self, outbound: bool) -> Option<HopOut> {
        let half = |present: bool, node: String, pid, trace: &str, start, end| {
            present.then(|| HopHalf {
                node,
                pid,
                trace_id: trace.parse().ok(),
                start_unix_ns: start,
                end_unix_ns: end,
            })
        };
        let client = half(
            self.client_halves > 0,
            self.client_node,
            self.client_pid,
            &self.client_trace_id,
            self.client_start_ns,
            self.client_end_ns,
        );
        let server = half(
            self.server_halves > 0,
            self.server_node,
            self.server_pid,
            &self.server_trace_id,
            self.server_start_ns,
            self.server_end_ns,
        );
        let both = client.as_ref().zip(server.as_ref());
        let same_node = both.is_some_and(|(c, s)| c.node == s.node);
        Some(HopOut {
            offset_lo_ns: same_node.then_some(0),
            offset_hi_ns: same_node.then_some(0),
            offset_samples: 0,
            offset_consistent: true,
            hop_id: stored_span_id(&self.hop_id)?,
            direction: if outbound { "outbound" } else { "inbound" }.to_string(),
            link: client.as_ref().map(|_| self.client_link),
            to_server_ms: both.map(|(c, s)| signed_ms(c.start_unix_ns, s.start_unix_ns)),
            from_server_ms: both.map(|(c, s)| signed_ms(s.end_unix_ns, c.end_unix_ns)),
            client,
            server,
        })
    }
}

/// The calls `t` made and the calls it served, with the halves stored for each.
async fn hops_of(store: &Store, t: &Trace) -> Result<Vec<HopOut>, ApiError> {
    let outbound: HashSet<SpanId> = t
        .spans
        .iter()
        .filter(|s| s.name == "http.client" && s.trace_id.is_none_or(|id| id == t.trace_id))
        .map(|s| s.span_id)
        .collect();
    let mut ids: Vec<SpanId> = outbound.iter().copied().collect();
    ids.extend(t.requests.iter().filter_map(|r| r.hop_id));
    ids.sort_unstable();
    ids.dedup();
    ids.truncate(MAX_HOPS);
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = Sql::new(HOP_SELECT);
    sql.push(&store.table("hops")).push(" WHERE hop_id IN (");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.arg(Arg::Str(id.to_string()));
    }
    sql.push(") GROUP BY hop_id");
    let rows: Vec<HopRow> = sql.fetch_all(store.client(), "trace hops").await?;
    let mut out: Vec<HopOut> = rows
        .into_iter()
        .filter_map(|r| {
            let outbound = stored_span_id(&r.hop_id).is_some_and(|h| outbound.contains(&h));
            r.into_out(outbound)
        })
        .collect();
    out.sort_by_key(|h| {
        let c = h.client.as_ref().map(|c| c.start_unix_ns);
        (c.or(h.server.as_ref().map(|s| s.start_unix_ns)), h.hop_id)
    });
    Ok(out)
}

/// Fills `t.hops`, each cross-node hop with its clock bounds.
pub async fn attach(store: &Store, t: &mut Trace) -> Result<(), ApiError> {
    t.hops = hops_of(store, t).await?;
    super::clocks::bound_hops(store, &mut t.hops).await
}

/// The trace on the other side of `h`, seen from `from`.
fn other_side(h: &HopOut, from: TraceId) -> Option<TraceId> {
    let c = h.client.as_ref().and_then(|c| c.trace_id);
    let s = h.server.as_ref().and_then(|s| s.trace_id);
    match (c, s) {
        (Some(c), Some(s)) if c == from => Some(s),
        (Some(c), Some(s)) if s == from => Some(c),
        _ => None,
    }
}

/// Gathers the traces across `t`'s hops, hop after hop (at most [`MAX_LINKED_TRACES`] in all),
/// into `t`: their spans, requests, steps, nodes and hops. In the view (never in storage) a
/// server's root `http.server` span without a parent in the view hangs under the caller's
/// `http.client` span, so one waterfall runs from the first caller to the last server.
pub async fn follow(store: &Store, t: &mut Trace, fallback: &Window) -> Result<(), ApiError> {
    let mut seen: HashSet<TraceId> = HashSet::from([t.trace_id]);
    let mut queue: VecDeque<TraceId> = t
        .hops
        .iter()
        .filter_map(|h| other_side(h, t.trace_id))
        .collect();
    let mut hop_ids: HashSet<SpanId> = t.hops.iter().map(|h| h.hop_id).collect();
    while let Some(next) = queue.pop_front() {
        if seen.len() >= MAX_LINKED_TRACES {
            break;
        }
        if !seen.insert(next) {
            continue;
        }
        let id = next.to_string();
        let mut other = match super::trace::trace(store, &id, fallback).await {
            Ok(o) => o,
            Err(e) if e.code == ErrorCode::NotFound => continue,
            Err(e) => return Err(e),
        };
        attach(store, &mut other).await?;
        for h in other.hops {
            if hop_ids.insert(h.hop_id) {
                queue.extend(other_side(&h, next));
                t.hops.push(h);
            }
        }
        t.linked_traces.push(next);
        t.spans.extend(other.spans);
        t.requests.extend(other.requests);
        t.steps.extend(other.steps);
        t.nodes.extend(other.nodes);
    }
    t.nodes.sort();
    t.nodes.dedup();
    hang_servers_under_callers(t);
    t.clocks = super::clocks::node_clocks(t);
    super::clocks::correct_spans(t);
    Ok(())
}

/// Re-parents each server root of a joined hop under the caller's span.
fn hang_servers_under_callers(t: &mut Trace) {
    let in_view: HashSet<SpanId> = t.spans.iter().map(|s| s.span_id).collect();
    let callers: HashMap<(TraceId, &str, u32), SpanId> = t
        .hops
        .iter()
        .filter(|h| in_view.contains(&h.hop_id))
        .filter_map(|h| {
            let s = h.server.as_ref()?;
            Some(((s.trace_id?, s.node.as_str(), s.pid), h.hop_id))
        })
        .collect();
    let mut parents: Vec<(usize, SpanId)> = Vec::new();
    for (i, s) in t.spans.iter().enumerate() {
        let orphan = s.parent_span_id.is_none_or(|p| !in_view.contains(&p));
        if s.name != "http.server" || !orphan {
            continue;
        }
        let key = (s.trace_id.unwrap_or(t.trace_id), s.node.as_str(), s.pid);
        if let Some(&hop) = callers.get(&key) {
            parents.push((i, hop));
        }
    }
    for (i, hop) in parents {
        t.spans[i].parent_span_id = Some(hop);
    }
}
