//! Resent batches (`Batch.resend`): before a batch that may have reached an aggregator before is
//! written, storage itself is asked which of its tables already hold its rows, so that a resend
//! to another replica, or to this one after a restart, is stored once.
//!
//! The answer comes from the rows, not from any aggregator's memory: each table's rows of one
//! batch arrive in one insert (atomic per table), and a commit writes the tables in a fixed order
//! (steps → spans → requests → batch marker), so the last table that holds rows of the batch
//! tells what is left to write. A first send (`resend == false`) costs no lookup.
use clickhouse::Row;
use inferscope_proto::v1::Batch;
use serde::Deserialize;

use super::writer::Stage;
use crate::api::sql::{Arg, Sql};
use crate::store::rows::{RequestRow, SpanRow, StepRow};
use crate::store::Store;

/// What storage already holds of a resent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Its marker: the whole batch is stored (acknowledge DUPLICATE).
    All,
    /// The tables up to this stage (write the rest).
    Upto(Stage),
}

#[derive(Row, Deserialize)]
struct TableCount {
    t: String,
    n: u64,
}

/// Asks storage what it holds of `b` (`batch_id` is `node/boot/sequence`): one query, each
/// table looked up by its sort key (marker by its key, requests by node and time, spans by
/// trace id, steps by node, instance and id) and the batch id.
pub async fn stored(store: &Store, b: &Batch, batch_id: &str) -> Result<Found, String> {
    let (sql, steps) = lookup_sql(store, b, batch_id);
    let rows: Vec<TableCount> = sql
        .fetch_all(store.client(), "resent batch lookup")
        .await
        .map_err(|e| e.message)?;
    // Steps carry no batch id and may repeat across batches: they count as stored only when
    // every one of the batch's is there.
    let has = |t: &str| {
        rows.iter()
            .any(|r| r.t == t && r.n > 0 && (t != "steps" || r.n >= steps))
    };
    Ok(if has("batches") {
        Found::All
    } else if has("requests") {
        Found::Upto(Stage::Requests)
    } else if has("spans") {
        Found::Upto(Stage::Spans)
    } else if has("steps") {
        Found::Upto(Stage::Steps)
    } else {
        Found::Upto(Stage::None)
    })
}

/// The lookup: `SELECT table, count()` per table, `UNION ALL` (valid on 18.16 and current),
/// and how many distinct steps the batch has.
fn lookup_sql(store: &Store, b: &Batch, batch_id: &str) -> (Sql, u64) {
    let (mut requests, mut spans, mut steps) = (Vec::new(), Vec::new(), Vec::new());
    for rd in &b.resources {
        let Some(res) = &rd.resource else { continue };
        requests.extend(
            rd.requests
                .iter()
                .map(|r| RequestRow::from_proto(r, res, batch_id)),
        );
        spans.extend(
            rd.spans
                .iter()
                .map(|s| SpanRow::from_proto(s, res, batch_id)),
        );
        steps.extend(rd.steps.iter().map(|s| StepRow::from_proto(s, res)));
    }
    let mut q = Sql::new("SELECT 'batches' AS t, count() AS n FROM ");
    q.push(&store.table("ingested_batches"))
        .push(" WHERE node_id = ")
        .arg(Arg::Str(b.node_id.clone()))
        .push(" AND boot_id = ")
        .arg(Arg::Str(b.boot_id.clone()))
        .push(" AND sequence = ")
        .arg(Arg::U64(b.sequence));
    if let (Some(lo), Some(hi)) = (
        requests.iter().map(|r| r.start).min(),
        requests.iter().map(|r| r.start).max(),
    ) {
        q.push(" UNION ALL SELECT 'requests' AS t, count() AS n FROM ")
            .push(&store.table("requests"))
            .push(" WHERE node IN (");
        in_list(&mut q, requests.iter().map(|r| r.node.clone()), Arg::Str);
        q.push(") AND start >= toDateTime(")
            .arg(Arg::U64(lo.into()))
            .push(") AND start <= toDateTime(")
            .arg(Arg::U64(hi.into()))
            .push(") AND batch_id = ")
            .arg(Arg::Str(batch_id.to_owned()));
    }
    if !spans.is_empty() {
        q.push(" UNION ALL SELECT 'spans' AS t, count() AS n FROM ")
            .push(&store.table("spans"))
            .push(" WHERE trace_id IN (");
        in_list(&mut q, spans.iter().map(|s| s.trace_id.clone()), Arg::Str);
        q.push(") AND batch_id = ")
            .arg(Arg::Str(batch_id.to_owned()));
    }
    let keys: std::collections::BTreeSet<(String, String, u64)> = steps
        .iter()
        .map(|s| (s.node.clone(), s.engine_instance.clone(), s.step_id))
        .collect();
    if !keys.is_empty() {
        // By node and step id (the sort key), then the exact (node, instance, id) triples.
        q.push(
            " UNION ALL SELECT 'steps' AS t, uniqExact(node, engine_instance, step_id) AS n FROM ",
        )
        .push(&store.table("engine_steps"))
        .push(" WHERE node IN (");
        in_list(&mut q, keys.iter().map(|k| k.0.clone()), Arg::Str);
        q.push(") AND step_id IN (");
        in_list(&mut q, keys.iter().map(|k| k.2), Arg::U64);
        q.push(") AND (node, engine_instance, step_id) IN (");
        for (i, (node, inst, id)) in keys.iter().enumerate() {
            q.push(if i > 0 { ", (" } else { "(" })
                .arg(Arg::Str(node.clone()))
                .push(", ")
                .arg(Arg::Str(inst.clone()))
                .push(", ")
                .arg(Arg::U64(*id))
                .push(")");
        }
        q.push(")");
    }
    (q, keys.len() as u64)
}

/// Appends `?, ?, …` bound to the distinct `values`.
fn in_list<T: Ord>(q: &mut Sql, values: impl Iterator<Item = T>, arg: fn(T) -> Arg) {
    let distinct: std::collections::BTreeSet<T> = values.collect();
    for (i, v) in distinct.into_iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.arg(arg(v));
    }
}
