//! `GET /api/v1/traces/{trace_id}`: one trace across nodes: its request rows, its spans, and
//! the engine steps it took part in with the other requests batched with it.
//!
//! Lookup order keeps every query on an index: `spans` is ordered by `trace_id`, so the spans
//! come first and give the trace's time range; `requests` is then read within that range (its
//! partitions and `start` key) plus `trace_id`. Only when a trace has no spans is `requests`
//! scanned by `trace_id` over the `from`/`to` window (default: the last 31 days).
use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, State};
use axum::Json;
use clickhouse::Row;
use serde::Deserialize;

use super::params::{Params, Window, WindowExt as _, MAX_WINDOW_NS};
use super::requests::{SummaryRow, SUMMARY_COLUMNS};
use super::sql::{Arg, Sql};
use super::time::now_ns;
use super::{ns_to_ms, params_of, stored_span_id, stored_trace_id, ApiState, QueryPairs};
use crate::error::{ApiError, ErrorCode};
use crate::store::Store;
use inferscope_api::{step_context, SpanId, TraceId};

pub use inferscope_api::trace::{
    Endpoint, Neighbour, RequestDetail, SpanLinkOut, SpanOut, StepCollOut, StepGpuOut, StepOut,
    Trace, MAX_CANDIDATES, MAX_NEIGHBOURS, MAX_SHARED_IDS, MAX_SPANS, MAX_STEPS,
    NEIGHBOUR_LOOKBACK_S,
};
/// Slack around a request when reading its node's engine steps (same clock: only rounding).
const STEP_SLACK_NS: u64 = 5_000_000_000;
/// Slack around the span time range when reading `requests` and `engine_steps` (clock skew
/// between nodes, the `start` column's one-second resolution).
const SLACK_S: u64 = 300;

#[derive(Row, Deserialize)]
struct SpanRowOut {
    span_id: String,
    parent_span_id: String,
    name: String,
    start_unix_ns: u64,
    end_unix_ns: u64,
    node: String,
    pid: u32,
    attr_keys: Vec<String>,
    attr_values: Vec<String>,
    link_trace_ids: Vec<String>,
    link_span_ids: Vec<String>,
}

// Nested rows are read field after field; this relies on the store's client being created
// with `with_validation(false)` (plain RowBinary), which `Store::open` does.
#[derive(Row, Deserialize, Default)]
struct DetailRow {
    summary: SummaryRow,
    step_ids: Vec<u64>,
    chunk_offsets_ns: Vec<u64>,
    batch_id: String,
    engine_instance: String,
    netns: u32,
    client_ip: String,
    client_port: u16,
    server_ip: String,
    server_port: u16,
    req_tcp_seq: Option<u32>,
    resp_tcp_seq: Option<u32>,
    hop_id: String,
    engine_output_offsets_ns: Vec<u64>,
    step_tokens: Vec<u32>,
}

#[derive(Row, Deserialize)]
struct CandidateRow {
    summary: SummaryRow,
    step_ids: Vec<u64>,
}

#[derive(Row, Deserialize)]
struct StepRowOut {
    engine_instance: String,
    step_id: u64,
    start_unix_ns: u64,
    end_unix_ns: u64,
    batch_size: u32,
    trace_id: String,
    span_id: String,
    batch_unit: String,
    tokens: u32,
    gpu_class: String,
    gpu_ns: Option<u64>,
    gpu_launch_ns: u64,
    sync_wait_ns: u64,
    graph_launches: u32,
    kernel_launches: u64,
    dtoh_bytes: u64,
    htod_bytes: u64,
    host_bound: u8,
    gpu_ranks: u32,
    gpu_upper_bound: u8,
    collectives: Option<u32>,
    collective_wait_ns: u64,
    straggler_rank: Option<u32>,
    straggler_lag_ns: u64,
}

impl StepRowOut {
    /// The GPU side, when the step has one.
    fn gpu(&self) -> Option<StepGpuOut> {
        Some(StepGpuOut {
            class: self.gpu_class.clone(),
            gpu_ms: ns_to_ms(self.gpu_ns?),
            launch_ms: ns_to_ms(self.gpu_launch_ns),
            sync_wait_ms: ns_to_ms(self.sync_wait_ns),
            graph_launches: self.graph_launches,
            kernel_launches: self.kernel_launches,
            dtoh_bytes: self.dtoh_bytes,
            htod_bytes: self.htod_bytes,
            host_bound: self.host_bound != 0,
            upper_bound: self.gpu_upper_bound != 0,
            ranks: self.gpu_ranks,
        })
    }

    /// Its collectives, when the NCCL hooks saw some.
    fn collectives(&self) -> Option<StepCollOut> {
        Some(StepCollOut {
            count: self.collectives?,
            wait_ms: ns_to_ms(self.collective_wait_ns),
            straggler_rank: self.straggler_rank?,
            straggler_lag_ms: ns_to_ms(self.straggler_lag_ns),
        })
    }

    /// The step's span context: as stored, else (steps stored before migration 4) derived
    /// from the node name, the instance and the step id.
    fn context(&self, node: &str) -> (TraceId, SpanId) {
        match (self.trace_id.parse(), self.span_id.parse()) {
            (Ok(t), Ok(s)) => (t, s),
            _ => step_context(node, &self.engine_instance, self.step_id),
        }
    }
}

/// Validates a trace id: 32 hex digits (any case), returned lowercase.
pub fn parse_trace_id(id: &str) -> Result<String, ApiError> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        let shown: String = id.chars().take(40).collect();
        Err(ApiError::new(
            ErrorCode::InvalidArgument,
            format!(
                "invalid \"trace_id\": {shown:?} is not 32 hex digits (a W3C trace id, e.g. 4bf92f3577b34da6a3ce929d0e0e4736)"
            ),
        ))
    }
}

/// Handler.
pub async fn handler(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    q: QueryPairs,
) -> Result<Json<Trace>, ApiError> {
    let id = parse_trace_id(&id)?;
    let p = params_of(q, &["from", "to", "follow"])?;
    let fallback = fallback_window(&p)?;
    let follow = match p.get("follow") {
        None | Some("") => false,
        Some("hops") => true,
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("invalid \"follow\": {other:?} (the one value is \"hops\")"),
            ))
        }
    };
    let mut t = trace(&s.store, &id, &fallback).await?;
    super::hops::attach(&s.store, &mut t).await?;
    if follow {
        super::hops::follow(&s.store, &mut t, &fallback).await?;
    }
    Ok(Json(t))
}

/// The window that bounds the scan of `requests` for a trace without spans: `from`/`to`, or the
/// widest accepted window before now.
pub fn fallback_window(p: &Params) -> Result<Window, ApiError> {
    if p.get("from").is_none() && p.get("to").is_none() {
        let now = now_ns();
        return Ok(Window::new(now.saturating_sub(MAX_WINDOW_NS), now));
    }
    Window::from_params(p)
}

fn ms_between(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e6
}

/// Looks a trace up. `fallback` bounds the scan of `requests` for traces without spans.
pub async fn trace(store: &Store, id: &str, fallback: &Window) -> Result<Trace, ApiError> {
    let client = store.client();
    let mut sql = Sql::new(
        "SELECT span_id, parent_span_id, name, start_unix_ns, end_unix_ns, node, pid, attr_keys, \
         attr_values, link_trace_ids, link_span_ids FROM ",
    );
    sql.push(&store.table("spans"))
        .push(" WHERE trace_id = ")
        .arg(Arg::Str(id.to_string()))
        .push(
            " ORDER BY start_unix_ns ASC, end_unix_ns DESC, node ASC, span_id ASC \
             LIMIT 1 BY node, span_id LIMIT ",
        )
        .arg(Arg::U64(MAX_SPANS + 1));
    let mut span_rows: Vec<SpanRowOut> = sql.fetch_all(client, "trace spans").await?;
    let spans_truncated = span_rows.len() as u64 > MAX_SPANS;
    span_rows.truncate(MAX_SPANS as usize);

    // The time range to read `requests` in.
    let (lo_s, hi_s) = if span_rows.is_empty() {
        (
            fallback.from_unix_ns / 1_000_000_000,
            fallback.to_unix_ns.div_ceil(1_000_000_000),
        )
    } else {
        let lo = span_rows.iter().map(|s| s.start_unix_ns).min().unwrap_or(0);
        let hi = span_rows.iter().map(|s| s.start_unix_ns).max().unwrap_or(0);
        (
            (lo / 1_000_000_000).saturating_sub(SLACK_S),
            hi / 1_000_000_000 + SLACK_S,
        )
    };
    let mut sql = Sql::new("SELECT ");
    sql.push(SUMMARY_COLUMNS)
        .push(
            ", step_ids, chunk_offsets_ns, batch_id, engine_instance, netns, client_ip, \
             client_port, server_ip, server_port, req_tcp_seq, resp_tcp_seq, hop_id, \
             engine_output_offsets_ns, step_tokens FROM ",
        )
        .push(&store.table("requests"))
        // Explicit PREWHERE: left to itself 18.16 moves the cheaper `start` bounds there, and
        // then reads every column of the window (the table is ordered by model and node first,
        // so the window's rows are spread over all granules).
        .push(" PREWHERE trace_id = ")
        .arg(Arg::Str(id.to_string()))
        .push(" WHERE start >= toDateTime(")
        .arg(Arg::U64(lo_s))
        .push(") AND start <= toDateTime(")
        .arg(Arg::U64(hi_s))
        .push(
            ") ORDER BY start_unix_ns ASC, node ASC LIMIT 1 BY node, pid, start_unix_ns LIMIT 100",
        );
    let rows: Vec<DetailRow> = sql.fetch_all(client, "trace requests").await?;

    if span_rows.is_empty() && rows.is_empty() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "trace {id} not found: no spans, and no request rows between {} and {}; check the id, \
                 or pass from/to if the request is older",
                fallback.from, fallback.to
            ),
        ));
    }

    let t0 = span_rows
        .iter()
        .map(|s| s.start_unix_ns)
        .chain(rows.iter().map(|r| r.summary_start()))
        .min()
        .unwrap_or(0);

    let mut steps = Vec::new();
    let mut steps_truncated = false;
    let mut neighbours: Vec<Neighbour> = Vec::new();
    let mut candidates_truncated = false;
    for r in &rows {
        if r.step_ids.is_empty() {
            continue;
        }
        let mut ids = r.step_ids.clone();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > MAX_STEPS {
            steps_truncated = true;
            ids.truncate(MAX_STEPS);
        }
        let (node, start, end) = r.node_and_times();
        let at = StepsOf {
            node: &node,
            instance: r.engine_instance(),
            start,
            end,
        };
        let (mut s, n, cut) = batch_context(store, id, &at, &ids, t0).await?;
        if r.step_tokens.len() == r.step_ids.len() {
            let mine: HashMap<u64, u32> = r
                .step_ids
                .iter()
                .copied()
                .zip(r.step_tokens.iter().copied())
                .collect();
            for st in &mut s {
                st.request_tokens = mine.get(&st.step_id).copied();
            }
        }
        steps.extend(s);
        neighbours.extend(n);
        candidates_truncated |= cut;
    }
    neighbours.sort_by(|a, b| {
        b.shared_steps
            .cmp(&a.shared_steps)
            .then(a.request.start_unix_ns.cmp(&b.request.start_unix_ns))
    });
    neighbours.truncate(MAX_NEIGHBOURS as usize);

    let mut spans: Vec<SpanOut> = span_rows
        .into_iter()
        .map(|s| SpanOut {
            trace_id: Some(stored_trace_id(id)),
            offset_ms: ms_between(t0, s.start_unix_ns),
            duration_ms: ms_between(s.start_unix_ns, s.end_unix_ns),
            clock_offset_ns: None,
            clock_error_ns: None,
            attributes: s.attr_keys.into_iter().zip(s.attr_values).collect(),
            links: s
                .link_trace_ids
                .into_iter()
                .zip(s.link_span_ids)
                .map(|(t, s)| SpanLinkOut {
                    trace_id: stored_trace_id(&t),
                    span_id: stored_span_id(&s).unwrap_or_default(),
                })
                .collect(),
            span_id: stored_span_id(&s.span_id).unwrap_or_default(),
            parent_span_id: stored_span_id(&s.parent_span_id),
            name: s.name,
            node: s.node,
            pid: s.pid,
            start_unix_ns: s.start_unix_ns,
            end_unix_ns: s.end_unix_ns,
        })
        .collect();
    step_spans(&mut spans, &steps, t0);
    let requests: Vec<RequestDetail> = rows
        .into_iter()
        .map(|r| {
            let endpoint = |ip: &str, port| {
                (!ip.is_empty()).then(|| Endpoint {
                    ip: ip.to_string(),
                    port,
                    netns: r.netns,
                })
            };
            RequestDetail {
                chunk_offsets_ms: r.chunk_offsets_ns.iter().map(|&n| ns_to_ms(n)).collect(),
                engine_output_offsets_ms: r
                    .engine_output_offsets_ns
                    .iter()
                    .map(|&n| ns_to_ms(n))
                    .collect(),
                engine_instance: r.engine_instance().map(str::to_string),
                client_endpoint: endpoint(&r.client_ip, r.client_port),
                server_endpoint: endpoint(&r.server_ip, r.server_port),
                req_tcp_seq: r.req_tcp_seq,
                resp_tcp_seq: r.resp_tcp_seq,
                hop_id: stored_span_id(&r.hop_id),
                step_ids: r.step_ids,
                request: r.summary.into(),
            }
        })
        .collect();
    let mut nodes: Vec<String> = spans
        .iter()
        .map(|s| s.node.clone())
        .chain(requests.iter().map(|r| r.request.node.clone()))
        .collect();
    nodes.sort();
    nodes.dedup();
    Ok(Trace {
        trace_id: stored_trace_id(id),
        nodes,
        requests,
        spans,
        spans_truncated,
        steps,
        steps_truncated,
        batched_with: neighbours,
        batched_with_truncated: candidates_truncated,
        hops: Vec::new(),
        clocks: Vec::new(),
        linked_traces: Vec::new(),
    })
}

impl DetailRow {
    fn summary_start(&self) -> u64 {
        self.summary.start_unix_ns
    }

    fn node_and_times(&self) -> (String, u64, u64) {
        (
            self.summary.node.clone(),
            self.summary.start_unix_ns,
            self.summary.end_unix_ns,
        )
    }

    /// The engine instance whose step ids this request's refer to: the row's own
    /// `engine_instance` (the engine process's `pid:start_ticks`), else — rows stored before
    /// that column — the boot id of the node-probe run that numbered them, the middle part of
    /// `batch_id` (`node/boot/sequence`). `None` for rows with neither.
    fn engine_instance(&self) -> Option<&str> {
        if !self.engine_instance.is_empty() {
            return Some(&self.engine_instance);
        }
        let mut parts = self.batch_id.rsplitn(3, '/');
        let (_seq, boot) = (parts.next()?, parts.next()?);
        parts.next()?;
        (!boot.is_empty()).then_some(boot)
    }
}

/// Adds an `engine.step` child span under its request's root span for each stored step that
/// has none: a step is stored once (`engine_steps`) and linked from each request's root, and
/// the trace shows it as a child of each, as when it was copied into every request.
fn step_spans(spans: &mut Vec<SpanOut>, steps: &[StepOut], t0: u64) {
    let shown: std::collections::HashSet<(String, String)> = spans
        .iter()
        .filter(|s| s.name == "engine.step")
        .filter_map(|s| Some((s.node.clone(), s.attributes.get("engine.step_id")?.clone())))
        .collect();
    let mut added = Vec::new();
    for st in steps {
        let (Some(start), Some(end), Some(span_id)) =
            (st.start_unix_ns, st.end_unix_ns, st.span_id)
        else {
            continue;
        };
        if shown.contains(&(st.node.clone(), st.step_id.to_string())) {
            continue;
        }
        // The root that links to it, else the node's root span.
        let root = spans
            .iter()
            .find(|s| s.node == st.node && s.links.iter().any(|l| l.span_id == span_id))
            .or_else(|| {
                spans
                    .iter()
                    .find(|s| s.node == st.node && s.name == "http.server")
            });
        let Some(root) = root else { continue };
        let mut attributes = BTreeMap::new();
        attributes.insert("engine.step_id".to_string(), st.step_id.to_string());
        if let Some(b) = st.batch_size {
            attributes.insert("engine.batch_size".to_string(), b.to_string());
        }
        if let Some(u) = &st.batch_unit {
            attributes.insert("engine.batch_unit".to_string(), u.clone());
        }
        if let Some(t) = st.tokens {
            attributes.insert("engine.tokens".to_string(), t.to_string());
        }
        if let Some(g) = &st.gpu {
            for (k, v) in [
                ("gpu.class", g.class.clone()),
                ("gpu.ms", format!("{:.3}", g.gpu_ms)),
                ("gpu.launch_ms", format!("{:.3}", g.launch_ms)),
                ("gpu.sync_wait_ms", format!("{:.3}", g.sync_wait_ms)),
                ("gpu.graph_launches", g.graph_launches.to_string()),
                ("gpu.kernel_launches", g.kernel_launches.to_string()),
                ("gpu.host_bound", g.host_bound.to_string()),
                ("gpu.upper_bound", g.upper_bound.to_string()),
            ] {
                attributes.insert(k.to_string(), v);
            }
        }
        if let Some(c) = &st.collectives {
            for (k, v) in [
                ("nccl.collectives", c.count.to_string()),
                ("nccl.wait_ms", format!("{:.3}", c.wait_ms)),
                ("nccl.straggler_rank", c.straggler_rank.to_string()),
                (
                    "nccl.straggler_lag_ms",
                    format!("{:.3}", c.straggler_lag_ms),
                ),
            ] {
                attributes.insert(k.to_string(), v);
            }
        }
        if let Some(i) = &st.engine_instance {
            attributes.insert("engine.instance".to_string(), i.clone());
        }
        attributes.insert("shared".to_string(), "true".to_string());
        added.push(SpanOut {
            trace_id: root.trace_id,
            span_id,
            parent_span_id: Some(root.span_id),
            name: "engine.step".to_string(),
            node: st.node.clone(),
            pid: root.pid,
            start_unix_ns: start,
            end_unix_ns: end,
            offset_ms: ms_between(t0, start),
            duration_ms: ms_between(start, end),
            clock_offset_ns: None,
            clock_error_ns: None,
            attributes,
            links: Vec::new(),
        });
    }
    if added.is_empty() {
        return;
    }
    spans.extend(added);
    // The order the spans query gives: start, longest first, node, id.
    spans.sort_by(|a, b| {
        (
            a.start_unix_ns,
            std::cmp::Reverse(a.end_unix_ns),
            &a.node,
            a.span_id,
        )
            .cmp(&(
                b.start_unix_ns,
                std::cmp::Reverse(b.end_unix_ns),
                &b.node,
                b.span_id,
            ))
    });
}

/// Where a request's engine steps are: its node and engine instance, and its time span.
struct StepsOf<'a> {
    node: &'a str,
    instance: Option<&'a str>,
    start: u64,
    end: u64,
}

/// The engine steps `ids` (sorted, deduplicated) of the request at `at`, and the other
/// requests that took part in them.
///
/// Step ids grow with time within an engine instance, so both queries select by the id range
/// `[ids[0], ids[last]]` (never `has(long_constant_array, x)`, which is a linear search per row)
/// and the exact set membership is checked here. Requests that shared a step ran at the same
/// time on the same node: the candidates are the node's requests overlapping `[start, end]`.
async fn batch_context(
    store: &Store,
    id: &str,
    at: &StepsOf<'_>,
    ids: &[u64],
    t0: u64,
) -> Result<(Vec<StepOut>, Vec<Neighbour>, bool), ApiError> {
    let (node, start, end) = (at.node, at.start, at.end);
    let client = store.client();
    let (lo, hi) = (ids[0], ids[ids.len() - 1]);
    let (from, to) = (start.saturating_sub(STEP_SLACK_NS), end + STEP_SLACK_NS);
    let mut sql = Sql::new(
        "SELECT engine_instance, step_id, start_unix_ns, end_unix_ns, batch_size, \
                  trace_id, span_id, batch_unit, tokens, gpu_class, gpu_ns, gpu_launch_ns, \
                  sync_wait_ns, graph_launches, kernel_launches, dtoh_bytes, htod_bytes, \
                  host_bound, gpu_ranks, gpu_upper_bound, collectives, collective_wait_ns, \
                  straggler_rank, straggler_lag_ns FROM ",
    );
    sql.push(&store.table("engine_steps"))
        .push(" WHERE node = ")
        .arg(Arg::Str(node.to_string()))
        .push(" AND start >= toDateTime(")
        .arg(Arg::U64(from / 1_000_000_000))
        .push(") AND start <= toDateTime(")
        .arg(Arg::U64(to.div_ceil(1_000_000_000)))
        .push(") AND step_id >= ")
        .arg(Arg::U64(lo))
        .push(" AND step_id <= ")
        .arg(Arg::U64(hi));
    // One row per step: ReplacingMergeTree duplicates survive until a merge, and step ids
    // restart with each node-probe run. Prefer the row of the request's own engine instance
    // (node-probe names it by its boot id; other senders may not), then the row that lies
    // within the request.
    sql.push(" ORDER BY step_id ASC, engine_instance = ")
        .arg(Arg::Str(at.instance.unwrap_or_default().to_string()))
        .push(" DESC, (start_unix_ns >= ")
        .arg(Arg::U64(from))
        .push(" AND start_unix_ns <= ")
        .arg(Arg::U64(to))
        .push(") DESC, engine_instance ASC LIMIT 1 BY step_id");
    let found: Vec<StepRowOut> = sql.fetch_all(client, "trace steps").await?;
    let found: BTreeMap<u64, StepRowOut> = found
        .into_iter()
        .filter(|r| ids.binary_search(&r.step_id).is_ok())
        .map(|r| (r.step_id, r))
        .collect();

    let mut sql = Sql::new("SELECT ");
    sql.push(SUMMARY_COLUMNS)
        .push(", step_ids FROM ")
        .push(&store.table("requests"))
        .push(" WHERE node = ")
        .arg(Arg::Str(node.to_string()))
        .push(" AND start >= toDateTime(")
        .arg(Arg::U64(
            (start / 1_000_000_000).saturating_sub(NEIGHBOUR_LOOKBACK_S),
        ))
        .push(") AND start <= toDateTime(")
        .arg(Arg::U64(end.div_ceil(1_000_000_000)))
        .push(") AND start_unix_ns <= ")
        .arg(Arg::U64(end))
        .push(" AND end_unix_ns >= ")
        .arg(Arg::U64(start))
        .push(" AND trace_id != ")
        .arg(Arg::Str(id.to_string()))
        .push(" AND arrayExists(x -> x >= ")
        .arg(Arg::U64(lo))
        .push(" AND x <= ")
        .arg(Arg::U64(hi))
        .push(", step_ids) ORDER BY start_unix_ns ASC, trace_id ASC LIMIT ")
        .arg(Arg::U64(MAX_CANDIDATES + 1));
    let mut cands: Vec<CandidateRow> = sql.fetch_all(client, "trace batch neighbours").await?;
    let truncated = cands.len() as u64 > MAX_CANDIDATES;
    cands.truncate(MAX_CANDIDATES as usize);

    let mut shared: BTreeMap<u64, (u64, Vec<String>)> = BTreeMap::new();
    let mut neighbours = Vec::new();
    for mut c in cands {
        c.step_ids.sort_unstable();
        c.step_ids.dedup();
        let mut n = 0;
        for sid in &c.step_ids {
            if ids.binary_search(sid).is_ok() {
                n += 1;
                let e = shared.entry(*sid).or_default();
                e.0 += 1;
                if (e.1.len() as u64) < MAX_SHARED_IDS {
                    e.1.push(c.summary.trace_id.clone());
                }
            }
        }
        if n > 0 {
            neighbours.push(Neighbour {
                shared_steps: n,
                request: c.summary.into(),
            });
        }
    }

    let steps = ids
        .iter()
        .map(|&step_id| {
            let f = found.get(&step_id);
            let s = shared.remove(&step_id).unwrap_or_default();
            StepOut {
                node: node.to_string(),
                step_id,
                engine_instance: f.map(|f| f.engine_instance.clone()),
                start_unix_ns: f.map(|f| f.start_unix_ns),
                end_unix_ns: f.map(|f| f.end_unix_ns),
                offset_ms: f.map(|f| ms_between(t0, f.start_unix_ns)),
                duration_ms: f.map(|f| ms_between(f.start_unix_ns, f.end_unix_ns)),
                batch_size: f.map(|f| f.batch_size),
                batch_unit: f.map(|f| {
                    if f.batch_unit.is_empty() {
                        "requests".to_string()
                    } else {
                        f.batch_unit.clone()
                    }
                }),
                span_id: f.map(|f| f.context(node).1),
                trace_id: f.map(|f| f.context(node).0),
                tokens: f.map(|f| f.tokens).filter(|&t| t > 0),
                request_tokens: None,
                gpu: f.and_then(StepRowOut::gpu),
                collectives: f.and_then(StepRowOut::collectives),
                shared_with_count: s.0,
                shared_with: s.1.iter().map(|t| stored_trace_id(t)).collect(),
            }
        })
        .collect();
    Ok((steps, neighbours, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_instance_from_batch_id() {
        let row = |b: &str| DetailRow {
            summary: SummaryRow::default(),
            step_ids: vec![],
            chunk_offsets_ns: vec![],
            batch_id: b.into(),
            engine_instance: String::new(),
            ..DetailRow::default()
        };
        assert_eq!(row("node-a/3bc8-41/17").engine_instance(), Some("3bc8-41"));
        let mut with = row("node-a/3bc8-41/17");
        with.engine_instance = "4242:99".into();
        assert_eq!(with.engine_instance(), Some("4242:99"));
        assert_eq!(row("").engine_instance(), None);
        assert_eq!(row("x/17").engine_instance(), None);
        assert_eq!(row("n//1").engine_instance(), None);
    }

    #[test]
    fn trace_ids() {
        assert_eq!(
            parse_trace_id("4BF92F3577B34DA6A3CE929D0E0E4736").unwrap(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for bad in [
            "",
            "xyz",
            "4bf92f3577b34da6a3ce929d0e0e473",
            "4bf92f3577b34da6a3ce929d0e0e473g",
        ] {
            let e = parse_trace_id(bad).err().unwrap();
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert!(e.message.contains("trace_id"));
        }
    }
}
