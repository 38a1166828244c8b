//! The single writer task: batches from the ingest queue go into one `clickhouse::Inserter` per
//! table; all four are committed together when the requests inserter holds `max_rows` rows or
//! its period has elapsed, and only then are the batches in that commit acknowledged.
//!
//! On a failed commit every batch of the commit is answered RETRY (the nodes keep and resend
//! them) and the inserters are recreated. Tables are committed in a fixed order, steps → spans →
//! requests → batch markers; the writer remembers how many of them a failed commit got through
//! for each of its batches, so that a resend writes only the tables still missing and never
//! stores a row twice. (That memory is the process's own: an aggregator that dies between two
//! table commits can still store the earlier tables' rows twice on resend.)
//!
//! With OTLP export on, each batch is handed to the [`OtlpSink`] once its commit has stored
//! every table, so that a batch is exported once, and only what ClickHouse holds.
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clickhouse::inserter::Inserter;
use inferscope_proto::v1::Batch;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::dedup::Dedup;
use crate::latency::Sample;
use crate::metrics::Metrics;
use crate::otlp::OtlpSink;
use crate::store::rows::{BatchRow, RequestRow, SpanRow, StepRow};
use crate::store::Store;

/// ClickHouse `priority` of inserts: more urgent than any query.
pub const INGEST_PRIORITY: u32 = 1;

/// Longest wait for ClickHouse to take one chunk of an insert.
const INSERT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for ClickHouse to confirm an insert.
const INSERT_END_TIMEOUT: Duration = Duration::from_secs(60);

/// A validated batch on its way to storage.
pub struct WriteJob {
    /// The batch.
    pub batch: Batch,
    /// `node_id/boot_id/sequence`.
    pub batch_id: String,
    /// Receives `Ok` once stored, `Err(message)` when it must be resent.
    pub done: oneshot::Sender<Result<(), String>>,
    /// The batch's share of the queue's byte budget, given back when its commit ends.
    pub budget: tokio::sync::OwnedSemaphorePermit,
    /// The tables storage already holds this batch's rows in (a resend, looked up).
    pub stored: Stage,
}

/// Commit policy.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Commit when this many request rows are pending.
    pub max_rows: u64,
    /// Commit when this many bytes are pending.
    pub max_bytes: u64,
    /// Commit at least this often while anything is pending.
    pub period: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_rows: 50_000,
            max_bytes: 32 << 20,
            period: Duration::from_millis(500),
        }
    }
}

struct Inserters {
    requests: Inserter<RequestRow>,
    spans: Inserter<SpanRow>,
    steps: Inserter<StepRow>,
    batches: Inserter<BatchRow>,
}

impl Inserters {
    fn new(store: &Store, cfg: &WriterConfig) -> Self {
        // Inserters escape the table name as one identifier: set the database on the client.
        // Ingest outranks queries (see crate::api::sql::QUERY_PRIORITY).
        let c = store
            .insert_client()
            .with_setting("priority", INGEST_PRIORITY.to_string());
        // A hung ClickHouse (frozen host, dropped packets) fails the commit instead of stalling
        // the writer, and with it every node's acks, for as long as TCP keeps trying.
        let t = (Some(INSERT_SEND_TIMEOUT), Some(INSERT_END_TIMEOUT));
        Self {
            requests: c
                .inserter("requests")
                .with_max_rows(cfg.max_rows)
                .with_max_bytes(cfg.max_bytes)
                .with_period(Some(cfg.period))
                .with_timeouts(t.0, t.1),
            spans: c.inserter("spans").with_timeouts(t.0, t.1),
            steps: c.inserter("engine_steps").with_timeouts(t.0, t.1),
            batches: c.inserter("ingested_batches").with_timeouts(t.0, t.1),
        }
    }
}

fn now_secs() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

struct Pending {
    batch_id: String,
    done: oneshot::Sender<Result<(), String>>,
    _budget: tokio::sync::OwnedSemaphorePermit,
    /// Rows buffered for this commit, per table (0 for tables a failed commit already stored).
    requests: u64,
    spans: u64,
    steps: u64,
    /// What its request rows add to the latency histograms once stored.
    samples: Vec<Sample>,
    /// The batch itself, kept for OTLP export once stored (only when export is on).
    batch: Option<Batch>,
}

impl Pending {
    /// Counts the rows of the tables up to `stored` as stored.
    fn count_stored(&self, stored: Stage, m: &Metrics) {
        if stored >= Stage::Steps {
            m.steps_stored.fetch_add(self.steps, Relaxed);
        }
        if stored >= Stage::Spans {
            m.spans_stored.fetch_add(self.spans, Relaxed);
        }
        if stored >= Stage::Requests {
            m.requests_stored.fetch_add(self.requests, Relaxed);
            m.latency.observe(&self.samples);
        }
    }
}

/// Runs until the queue closes.
pub async fn run_writer(
    store: Store,
    mut rx: mpsc::Receiver<WriteJob>,
    metrics: Arc<Metrics>,
    dedup: Arc<Dedup>,
    cfg: WriterConfig,
    otlp: Option<OtlpSink>,
) {
    let mut ins = Inserters::new(&store, &cfg);
    let mut pending: Vec<Pending> = Vec::new();
    // For batches of a failed commit: how many tables (in commit order) that commit stored.
    let mut partly_stored: HashMap<String, Stage> = HashMap::new();
    let mut first_pending: Option<Instant> = None;
    loop {
        let wait = match first_pending {
            Some(t) => cfg.period.saturating_sub(t.elapsed()),
            None => Duration::from_secs(3600),
        };
        let job = tokio::select! {
            j = rx.recv() => j,
            _ = tokio::time::sleep(wait) => None,
        };
        let closed = job.is_none() && rx.is_closed();
        if let Some(job) = job {
            metrics.queue_depth.fetch_sub(1, Relaxed);
            let stored = partly_stored
                .get(&job.batch_id)
                .copied()
                .unwrap_or(Stage::None)
                .max(job.stored);
            match write_job(&mut ins, &job, stored).await {
                Ok(p) => {
                    first_pending.get_or_insert_with(Instant::now);
                    pending.push(Pending {
                        batch_id: job.batch_id,
                        done: job.done,
                        _budget: job.budget,
                        requests: p.requests,
                        spans: p.spans,
                        steps: p.steps,
                        samples: p.samples,
                        batch: otlp.is_some().then_some(job.batch),
                    });
                }
                Err(e) => {
                    // The inserters hold part of this job and may be broken: drop them, and
                    // with them every pending batch, which the nodes resend.
                    metrics.insert_errors.fetch_add(1, Relaxed);
                    warn!(error = %e, batches = pending.len() + 1, "clickhouse insert failed while buffering; batches will be resent");
                    dedup.unmark_inflight(&job.batch_id);
                    let _ = job.done.send(Err(format!("storage unavailable: {e}")));
                    let msg = format!("storage unavailable: {e}");
                    let shared = (&*dedup, &*metrics);
                    fail(&mut pending, Stage::None, &mut partly_stored, shared, &msg);
                    ins = Inserters::new(&store, &cfg);
                    first_pending = None;
                }
            }
        }
        let due = first_pending.is_some_and(|t| t.elapsed() >= cfg.period)
            || ins.requests.pending().rows >= cfg.max_rows
            || ins.requests.pending().bytes + ins.spans.pending().bytes >= cfg.max_bytes;
        if !pending.is_empty() && (due || closed) {
            let t0 = Instant::now();
            match commit(&mut ins).await {
                Ok(()) => {
                    metrics.observe_insert(t0.elapsed().as_secs_f64());
                    for p in pending.drain(..) {
                        partly_stored.remove(&p.batch_id);
                        dedup.mark_stored(&p.batch_id);
                        metrics.batches_stored.fetch_add(1, Relaxed);
                        p.count_stored(Stage::Requests, &metrics);
                        let _ = p.done.send(Ok(()));
                        if let (Some(sink), Some(b)) = (&otlp, p.batch) {
                            sink.offer(b, p.batch_id);
                        }
                    }
                }
                Err((stored, e)) => {
                    metrics.insert_errors.fetch_add(1, Relaxed);
                    warn!(failed_at = stored.next_table(), error = %e, batches = pending.len(), "clickhouse insert failed; batches will be resent");
                    let msg = format!("storage unavailable: {e}");
                    let shared = (&*dedup, &*metrics);
                    fail(&mut pending, stored, &mut partly_stored, shared, &msg);
                    ins = Inserters::new(&store, &cfg);
                }
            }
            first_pending = None;
        }
        if closed {
            debug!("writer queue closed");
            return;
        }
    }
}

/// Answers every pending batch RETRY, remembering for each which tables are already stored.
fn fail(
    pending: &mut Vec<Pending>,
    stored: Stage,
    partly_stored: &mut HashMap<String, Stage>,
    (dedup, metrics): (&Dedup, &Metrics),
    msg: &str,
) {
    for p in pending.drain(..) {
        p.count_stored(stored, metrics);
        // A batch resent after an earlier failure skipped what that one stored.
        let before = partly_stored
            .get(&p.batch_id)
            .copied()
            .unwrap_or(Stage::None);
        if stored.max(before) > Stage::None {
            partly_stored.insert(p.batch_id.clone(), stored.max(before));
        }
        dedup.unmark_inflight(&p.batch_id);
        let _ = p.done.send(Err(msg.to_owned()));
    }
    if partly_stored.len() > 1_000_000 {
        partly_stored.clear();
    }
}

/// How far a commit got: the tables, in commit order, that it stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Nothing.
    None,
    /// `engine_steps`.
    Steps,
    /// `engine_steps` and `spans`.
    Spans,
    /// Every data table (the batch marker is what is left).
    Requests,
}

impl Stage {
    /// The table a commit that stored up to `self` failed on.
    fn next_table(self) -> &'static str {
        match self {
            Stage::None => "engine_steps",
            Stage::Steps => "spans",
            Stage::Spans => "requests",
            Stage::Requests => "ingested_batches",
        }
    }
}

/// Buffers one batch's rows for the tables not yet `stored`; returns the rows buffered per
/// table (requests, spans, steps).
async fn write_job(
    ins: &mut Inserters,
    job: &WriteJob,
    stored: Stage,
) -> Result<Written, clickhouse::error::Error> {
    let mut samples = Vec::new();
    let (mut nr, mut ns) = (0u64, 0u64);
    let (mut wr, mut ws, mut wst) = (0u64, 0u64, 0u64);
    for rd in &job.batch.resources {
        let Some(res) = &rd.resource else { continue };
        nr += rd.requests.len() as u64;
        ns += rd.spans.len() as u64;
        if stored < Stage::Steps {
            wst += rd.steps.len() as u64;
            for s in &rd.steps {
                ins.steps.write(&StepRow::from_proto(s, res)).await?;
            }
        }
        if stored < Stage::Spans {
            ws += rd.spans.len() as u64;
            for s in &rd.spans {
                ins.spans
                    .write(&SpanRow::from_proto(s, res, &job.batch_id))
                    .await?;
            }
        }
        if stored < Stage::Requests {
            wr += rd.requests.len() as u64;
            for r in &rd.requests {
                let row = RequestRow::from_proto(r, res, &job.batch_id);
                samples.push(Sample::of(&row));
                ins.requests.write(&row).await?;
            }
        }
    }
    ins.batches
        .write(&BatchRow {
            received: now_secs(),
            node_id: job.batch.node_id.clone(),
            boot_id: job.batch.boot_id.clone(),
            sequence: job.batch.sequence,
            requests: nr as u32,
            spans: ns as u32,
        })
        .await?;
    Ok(Written {
        requests: wr,
        spans: ws,
        steps: wst,
        samples,
    })
}

/// What [`write_job`] buffered: rows per table, and the requests' latency samples.
struct Written {
    requests: u64,
    spans: u64,
    steps: u64,
    samples: Vec<Sample>,
}

/// Commits every table in order; on failure says which tables were stored before it.
async fn commit(ins: &mut Inserters) -> Result<(), (Stage, clickhouse::error::Error)> {
    ins.steps
        .force_commit()
        .await
        .map_err(|e| (Stage::None, e))?;
    ins.spans
        .force_commit()
        .await
        .map_err(|e| (Stage::Steps, e))?;
    ins.requests
        .force_commit()
        .await
        .map_err(|e| (Stage::Spans, e))?;
    ins.batches
        .force_commit()
        .await
        .map_err(|e| (Stage::Requests, e))?;
    Ok(())
}
