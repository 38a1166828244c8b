//! The exporter's state machine, run on its own thread (see the module docs of
//! [`crate::export`]).
//!
//! Every unacknowledged batch is a [`Slot`] in `pending`, keyed by its spool key (oldest first).
//! A slot's batch is in memory (`batch`), on disk (`on_disk`), or both; at most `window` slots
//! hold their batch in memory, and only those are sent. Acks name a sequence; `in_flight` maps
//! it back to the slot (two in-flight batches never share a sequence: spooled batches of an
//! earlier run may reuse this run's numbers, so such a batch waits for the other's ack).
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inferscope_proto::v1::{ack::Status as AckStatus, Ack, Batch};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::batch::{BatchBuilder, ClosedBatch};
use super::client::{Backoff, ConnectError, Connector, Stream};
use super::spool::{self, Spool};
use super::{add, ExportConfig, ExportSnapshot, ExportStats};
use crate::requests::RequestRecord;

/// Records taken from the queue per wake-up.
const RECV_BURST: usize = 256;
/// Period of the ack-timeout check and the stats log check.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// One unacknowledged batch.
#[derive(Debug)]
struct Slot {
    seq: u64,
    batch: Option<Batch>,
    on_disk: bool,
    sent_at: Option<Instant>,
    attempts: u32,
    not_before: Option<Instant>,
    requests: usize,
    /// It may have reached an aggregator: sent before, or found in the spool at start.
    sent_before: bool,
}

/// Why a batch is written to the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpoolWrite {
    /// It cannot stay in memory (window full, aggregator unreachable, shutdown): fsynced.
    Overflow,
    /// A write-ahead copy of a batch that stays in memory: not fsynced.
    Ahead,
}

/// With several aggregator replicas, this many RETRY answers in a row (and no success) move
/// the export to the next replica.
const RETRIES_BEFORE_FAILOVER: u32 = 3;

type Connecting = Pin<Box<dyn Future<Output = Result<Stream, ConnectError>> + Send>>;

/// The connection.
enum Conn {
    /// Not connected; the next attempt is at `Worker::retry_at`.
    Idle,
    /// An attempt is under way.
    Connecting(Connecting),
    /// A stream is open.
    Up(Box<Stream>),
}

/// What the connection did.
enum ConnEvent {
    Connected(Result<Stream, ConnectError>),
    Ack(Result<Option<Ack>, tonic::Status>),
}

async fn conn_event(conn: &mut Conn) -> ConnEvent {
    match conn {
        Conn::Idle => std::future::pending().await,
        Conn::Connecting(f) => ConnEvent::Connected(f.as_mut().await),
        Conn::Up(s) => ConnEvent::Ack(s.acks.message().await),
    }
}

/// The exporter's state.
pub(super) struct Worker {
    node_id: String,
    boot_id: String,
    run_start_ns: u64,
    next_seq: u64,
    builder: BatchBuilder,
    pending: BTreeMap<String, Slot>,
    in_flight: HashMap<u64, String>,
    mem: usize,
    window: usize,
    spool: Option<Spool>,
    write_ahead: bool,
    reachable: bool,
    connector: Connector,
    /// Endpoints failed since the last STORED/DUPLICATE (the backoff grows once per round).
    failed_in_round: usize,
    /// RETRY answers since the last STORED/DUPLICATE.
    retries_in_row: u32,
    backoff: Backoff,
    retry_backoff: Backoff,
    retry_at: Instant,
    retry_wake: Option<Instant>,
    attempts: u64,
    ack_timeout: Duration,
    stats: Arc<ExportStats>,
    stats_interval: Duration,
    last_log: Instant,
    last_logged: ExportSnapshot,
}

impl Worker {
    /// A worker for `cfg`; batches found in `spool` are queued for resending.
    pub(super) fn new(
        cfg: ExportConfig,
        connector: Connector,
        spool: Option<Spool>,
        stats: Arc<ExportStats>,
        boot_id: String,
    ) -> Self {
        let run_start_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let now = Instant::now();
        let mut w = Self {
            builder: BatchBuilder::new(&cfg.node_name, &boot_id, cfg.batch.clone())
                .with_tags(&cfg.tags),
            node_id: cfg.node_name,
            boot_id,
            run_start_ns,
            next_seq: 1,
            pending: BTreeMap::new(),
            in_flight: HashMap::new(),
            mem: 0,
            window: cfg.window.max(1),
            spool,
            write_ahead: cfg.write_ahead,
            reachable: true,
            connector,
            failed_in_round: 0,
            retries_in_row: 0,
            backoff: Backoff::new(cfg.backoff_initial, cfg.backoff_max),
            retry_backoff: Backoff::new(cfg.backoff_initial, cfg.backoff_max),
            retry_at: now,
            retry_wake: None,
            attempts: 0,
            ack_timeout: cfg.ack_timeout,
            stats,
            stats_interval: cfg.stats_interval,
            last_log: now,
            last_logged: ExportSnapshot::default(),
        };
        if let Some(sp) = w.spool.as_mut() {
            let evicted = sp.evict_over_cap();
            if !evicted.is_empty() {
                add(&w.stats.spool_evicted, evicted.len() as u64);
                warn!(
                    evicted = evicted.len(),
                    dir = %sp.dir().display(),
                    "spool over its cap at start: evicted the oldest batches"
                );
            }
            for key in sp.keys() {
                let seq = spool::key_sequence(key).unwrap_or(0);
                w.pending.insert(
                    key.to_owned(),
                    Slot {
                        seq,
                        batch: None,
                        on_disk: true,
                        sent_at: None,
                        attempts: 0,
                        not_before: None,
                        requests: 0,
                        sent_before: true,
                    },
                );
            }
            if !sp.is_empty() {
                info!(
                    batches = sp.len(),
                    bytes = sp.bytes(),
                    dir = %sp.dir().display(),
                    "resending spooled batches"
                );
            }
        }
        w.update_spool_bytes();
        w
    }

    fn update_spool_bytes(&self) {
        let b = self.spool.as_ref().map_or(0, Spool::bytes);
        self.stats.spool_bytes.store(b, Ordering::Relaxed);
    }

    fn on_record(&mut self, rec: RequestRecord, conn: &mut Conn) {
        match self.builder.push(&rec, Instant::now()) {
            Ok(true) => self.close_batch(conn),
            Ok(false) => {}
            Err(e) => {
                add(&self.stats.skipped_invalid, 1);
                debug!(error = %e, pid = rec.pid, "record not exportable; skipped");
            }
        }
    }

    /// Closes the open batch (if any) and queues it.
    fn close_batch(&mut self, conn: &mut Conn) {
        let Some(ClosedBatch {
            resources,
            requests,
        }) = self.builder.take()
        else {
            return;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        add(&self.stats.batches_closed, 1);
        let batch = Batch {
            node_id: self.node_id.clone(),
            boot_id: self.boot_id.clone(),
            sequence: seq,
            resources,
            resend: false,
        };
        let key = spool::key(self.run_start_ns, seq, &self.boot_id);
        let mut slot = Slot {
            seq,
            batch: None,
            on_disk: false,
            sent_at: None,
            attempts: 0,
            not_before: None,
            requests,
            sent_before: false,
        };
        if self.reachable && self.mem < self.window {
            if self.write_ahead && self.spool.is_some() {
                slot.on_disk = self.spool_write(&key, &batch, SpoolWrite::Ahead);
            }
            slot.batch = Some(batch);
            self.mem += 1;
        } else if self.spool_write(&key, &batch, SpoolWrite::Overflow) {
            slot.on_disk = true;
        } else if self.mem < self.window {
            slot.batch = Some(batch);
            self.mem += 1;
        } else {
            add(&self.stats.batches_dropped, 1);
            warn!(
                sequence = seq,
                requests, "no room in memory or spool: batch dropped"
            );
            return;
        }
        self.pending.insert(key, slot);
        self.pump(conn);
    }

    /// Writes `batch` to the spool; returns whether it is there. Evicted batches that were
    /// only on disk are lost (counted).
    fn spool_write(&mut self, key: &str, batch: &Batch, why: SpoolWrite) -> bool {
        let Some(sp) = self.spool.as_mut() else {
            return false;
        };
        let sync = why == SpoolWrite::Overflow;
        let res = sp.write_with(key, &batch.encode_to_vec(), sync);
        self.update_spool_bytes();
        let evicted = match res {
            Ok(ev) => ev,
            Err(e) => {
                add(&self.stats.spool_errors, 1);
                warn!(error = %e, sequence = batch.sequence, "cannot spool batch");
                return false;
            }
        };
        if !evicted.is_empty() {
            add(&self.stats.spool_evicted, evicted.len() as u64);
            let mut lost = 0;
            for k in &evicted {
                if let Some(slot) = self.pending.get_mut(k) {
                    slot.on_disk = false;
                    if slot.batch.is_none() {
                        self.pending.remove(k);
                        lost += 1;
                    }
                }
            }
            add(&self.stats.batches_dropped, lost);
            warn!(
                evicted = evicted.len(),
                lost,
                spool_bytes = self.spool.as_ref().map_or(0, Spool::bytes),
                "spool full: evicted the oldest batches"
            );
        }
        match why {
            SpoolWrite::Overflow => add(&self.stats.spooled, 1),
            SpoolWrite::Ahead => add(&self.stats.journaled, 1),
        }
        true
    }

    /// Moves every in-memory batch to the spool (those that cannot be written stay in memory).
    fn spill(&mut self) {
        let keys: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, s)| s.batch.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            let Some(slot) = self.pending.get_mut(&k) else {
                continue;
            };
            if slot.on_disk {
                slot.batch = None;
                self.mem -= 1;
                continue;
            }
            let Some(batch) = slot.batch.take() else {
                continue;
            };
            let ok = self.spool_write(&k, &batch, SpoolWrite::Overflow);
            if let Some(slot) = self.pending.get_mut(&k) {
                if ok {
                    slot.on_disk = true;
                    self.mem -= 1;
                } else {
                    slot.batch = Some(batch);
                }
            }
        }
    }

    /// Sends what can be sent now, oldest first, up to `window` in flight.
    fn pump(&mut self, conn: &mut Conn) {
        let Conn::Up(stream) = conn else {
            return;
        };
        let now = Instant::now();
        let mut bad = Vec::new();
        let mut corrupt = Vec::new();
        let mut broken = false;
        let mut wake: Option<Instant> = None;
        for (key, slot) in self.pending.iter_mut() {
            if self.in_flight.len() >= self.window {
                break;
            }
            if slot.sent_at.is_some() || self.in_flight.contains_key(&slot.seq) {
                continue;
            }
            if let Some(t) = slot.not_before.filter(|&t| t > now) {
                wake = Some(wake.map_or(t, |w| w.min(t)));
                continue;
            }
            if slot.batch.is_none() {
                // Memory is full: send the newer batches held there first (their acks make room),
                // never wait on them for this older one on disk (that wait would never end when
                // the spool could not take them: a full disk).
                if self.mem >= self.window {
                    continue;
                }
                let Some(sp) = self.spool.as_ref() else {
                    bad.push(key.clone());
                    continue;
                };
                let decoded = sp.read(key).map_err(|e| e.to_string()).and_then(|b| {
                    Batch::decode(b.as_slice()).map_err(|e| format!("decode {key}: {e}"))
                });
                match decoded {
                    Ok(b) => {
                        slot.seq = b.sequence;
                        slot.requests = b.resources.iter().map(|r| r.requests.len()).sum();
                        slot.batch = Some(b);
                        self.mem += 1;
                        if self.in_flight.contains_key(&slot.seq) {
                            continue;
                        }
                    }
                    Err(e) => {
                        add(&self.stats.spool_corrupt, 1);
                        warn!(error = %e, "unreadable spooled batch: moved to the quarantine");
                        corrupt.push(key.clone());
                        continue;
                    }
                }
            }
            let Some(b) = &slot.batch else {
                continue;
            };
            let mut b = b.clone();
            b.resend = slot.sent_before;
            if stream.tx.try_send(b).is_err() {
                broken = true;
                break;
            }
            slot.sent_before = true;
            slot.sent_at = Some(now);
            self.in_flight.insert(slot.seq, key.clone());
            add(&self.stats.batches_sent, 1);
        }
        self.retry_wake = wake;
        if let Some(sp) = self.spool.as_mut() {
            for k in &corrupt {
                self.pending.remove(k);
                match sp.quarantine(k) {
                    Ok(to) => warn!(path = %to.display(), "quarantined spool file"),
                    Err(e) => {
                        add(&self.stats.spool_errors, 1);
                        warn!(error = %e, "cannot quarantine spool file; deleted");
                    }
                }
                add(&self.stats.batches_dropped, 1);
            }
        }
        for k in bad {
            if let Some(slot) = self.pending.remove(&k) {
                if slot.batch.is_some() {
                    self.mem -= 1;
                }
            }
            if let Some(sp) = self.spool.as_mut() {
                let _ = sp.remove(&k);
            }
            add(&self.stats.batches_dropped, 1);
        }
        self.update_spool_bytes();
        if broken {
            self.disconnect(conn, "request stream closed".into());
        }
    }

    /// Removes a settled batch from memory and spool.
    fn settle(&mut self, key: &str) -> usize {
        let Some(slot) = self.pending.remove(key) else {
            return 0;
        };
        if slot.batch.is_some() {
            self.mem -= 1;
        }
        if slot.on_disk {
            if let Some(sp) = self.spool.as_mut() {
                if let Err(e) = sp.remove(key) {
                    add(&self.stats.spool_errors, 1);
                    warn!(error = %e, "cannot delete spooled batch");
                }
            }
            self.update_spool_bytes();
        }
        slot.requests
    }

    fn on_ack(&mut self, ack: Ack, conn: &mut Conn) {
        let Some(key) = self.in_flight.remove(&ack.sequence) else {
            debug!(sequence = ack.sequence, "ack for a batch not in flight");
            return;
        };
        // An ack proves the stream works: later failures start the backoff afresh.
        self.backoff.reset();
        if let Ok(AckStatus::Stored | AckStatus::Duplicate) = AckStatus::try_from(ack.status) {
            self.failed_in_round = 0;
            self.retries_in_row = 0;
        }
        match AckStatus::try_from(ack.status) {
            Ok(AckStatus::Stored) => {
                add(&self.stats.acked_stored, 1);
                let n = self.settle(&key);
                add(&self.stats.records_delivered, n as u64);
            }
            Ok(AckStatus::Duplicate) => {
                add(&self.stats.acked_duplicate, 1);
                let n = self.settle(&key);
                add(&self.stats.records_delivered, n as u64);
            }
            Ok(AckStatus::Rejected) => {
                add(&self.stats.rejected, 1);
                let n = self.settle(&key);
                warn!(
                    sequence = ack.sequence,
                    requests = n,
                    message = %ack.message,
                    "aggregator rejected batch; dropped"
                );
            }
            status => {
                add(&self.stats.retried, 1);
                if let Some(slot) = self.pending.get_mut(&key) {
                    slot.sent_at = None;
                    slot.attempts += 1;
                    let t = Instant::now() + self.retry_backoff.nth(slot.attempts);
                    slot.not_before = Some(t);
                    self.retry_wake = Some(self.retry_wake.map_or(t, |w| w.min(t)));
                    debug!(
                        sequence = ack.sequence,
                        attempts = slot.attempts,
                        status = ?status,
                        message = %ack.message,
                        "aggregator asked to retry"
                    );
                }
                // A replica that cannot store (its ClickHouse server is down) is left for the
                // next one, which may reach storage through another server.
                self.retries_in_row += 1;
                if self.retries_in_row >= RETRIES_BEFORE_FAILOVER && self.connector.endpoints() > 1
                {
                    self.retries_in_row = 0;
                    if let Some(slot) = self.pending.get_mut(&key) {
                        slot.not_before = None;
                    }
                    self.disconnect(
                        conn,
                        format!(
                            "{RETRIES_BEFORE_FAILOVER} RETRY answers in a row: {}",
                            ack.message
                        ),
                    );
                    return;
                }
            }
        }
        self.pump(conn);
    }

    fn start_connect(&mut self, conn: &mut Conn) {
        self.attempts += 1;
        if self.attempts > 1 {
            add(&self.stats.reconnects, 1);
        }
        *conn = Conn::Connecting(Box::pin(self.connector.connect()));
    }

    fn on_conn_event(&mut self, ev: ConnEvent, conn: &mut Conn) {
        match ev {
            ConnEvent::Connected(Ok(stream)) => {
                info!(
                    url = %self.connector.uri(),
                    pending = self.pending.len(),
                    "export stream open"
                );
                *conn = Conn::Up(Box::new(stream));
                self.reachable = true;
                self.pump(conn);
            }
            ConnEvent::Connected(Err(e)) => {
                if e.is_unauthenticated() {
                    add(&self.stats.unauthenticated, 1);
                }
                self.disconnect(conn, e.to_string());
            }
            ConnEvent::Ack(Ok(Some(ack))) => self.on_ack(ack, conn),
            ConnEvent::Ack(Ok(None)) => self.disconnect(conn, "stream ended by aggregator".into()),
            ConnEvent::Ack(Err(status)) => {
                if status.code() == tonic::Code::Unauthenticated {
                    add(&self.stats.unauthenticated, 1);
                }
                self.disconnect(conn, ConnectError::from(status).to_string());
            }
        }
    }

    /// Drops the connection: unacknowledged batches go to the spool, the next attempt is
    /// scheduled with backoff.
    fn disconnect(&mut self, conn: &mut Conn, reason: String) {
        *conn = Conn::Idle;
        add(&self.stats.connect_errors, 1);
        self.reachable = false;
        self.in_flight.clear();
        for slot in self.pending.values_mut() {
            slot.sent_at = None;
        }
        self.spill();
        let failed = self.connector.uri();
        // Another replica is tried at once; the backoff grows when every one has failed.
        self.failed_in_round += 1;
        let delay = if self.failed_in_round < self.connector.endpoints() {
            self.backoff.first()
        } else {
            self.failed_in_round = 0;
            self.backoff.next_delay()
        };
        if self.connector.fail_over() {
            add(&self.stats.failovers, 1);
        }
        self.retry_at = Instant::now() + delay;
        warn!(
            url = %failed,
            next_url = %self.connector.uri(),
            error = %reason,
            retry_in_ms = delay.as_millis() as u64,
            pending = self.pending.len(),
            "export to aggregator failed"
        );
    }

    fn housekeeping(&mut self, conn: &mut Conn) {
        let now = Instant::now();
        if matches!(conn, Conn::Up(_)) {
            let oldest = self
                .in_flight
                .values()
                .filter_map(|k| self.pending.get(k).and_then(|s| s.sent_at))
                .min();
            if oldest.is_some_and(|t| now.duration_since(t) >= self.ack_timeout) {
                self.disconnect(
                    conn,
                    format!("no ack within {} s", self.ack_timeout.as_secs_f64()),
                );
            }
        }
        // A safety net: whatever became sendable without an event to say so goes now.
        self.pump(conn);
        if now.duration_since(self.last_log) >= self.stats_interval {
            self.last_log = now;
            let s = self.stats.snapshot();
            if s != self.last_logged {
                self.last_logged = s;
                log_stats("export stats", &s, self.pending.len());
            }
        }
    }

    /// At exit: spools what is still in memory.
    fn finish(&mut self, mut rx: mpsc::Receiver<RequestRecord>, mut conn: Conn) {
        rx.close();
        while let Ok(rec) = rx.try_recv() {
            self.on_record(rec, &mut conn);
        }
        self.close_batch(&mut conn);
        drop(conn);
        self.reachable = false;
        self.spill();
        let unsaved = self.pending.values().filter(|s| !s.on_disk).count();
        if unsaved > 0 {
            add(&self.stats.batches_dropped, unsaved as u64);
            warn!(batches = unsaved, "unsent batches could not be spooled");
        }
        let s = self.stats.snapshot();
        log_stats("exporter stopped", &s, self.pending.len());
    }
}

fn log_stats(msg: &'static str, s: &ExportSnapshot, pending: usize) {
    info!(
        records_queued = s.records_queued,
        dropped_queue_full = s.dropped_queue_full,
        skipped_invalid = s.skipped_invalid,
        batches_closed = s.batches_closed,
        batches_sent = s.batches_sent,
        acked_stored = s.acked_stored,
        acked_duplicate = s.acked_duplicate,
        rejected = s.rejected,
        retried = s.retried,
        records_delivered = s.records_delivered,
        spooled = s.spooled,
        journaled = s.journaled,
        spool_evicted = s.spool_evicted,
        spool_bytes = s.spool_bytes,
        spool_errors = s.spool_errors,
        spool_corrupt = s.spool_corrupt,
        batches_dropped = s.batches_dropped,
        reconnects = s.reconnects,
        connect_errors = s.connect_errors,
        unauthenticated = s.unauthenticated,
        pending,
        "{msg}"
    );
}

fn sleep_until(t: Option<Instant>) -> tokio::time::Sleep {
    let t = t.unwrap_or_else(Instant::now);
    tokio::time::sleep_until(tokio::time::Instant::from_std(t))
}

/// The exporter loop: until `stop` (then drain) or until the handle is gone.
pub(super) async fn run(
    mut w: Worker,
    mut rx: mpsc::Receiver<RequestRecord>,
    mut stop: oneshot::Receiver<Duration>,
) {
    let mut conn = Conn::Idle;
    let mut tick = tokio::time::interval(HOUSEKEEPING);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rx_open = true;
    let mut drain_until: Option<Instant> = None;
    loop {
        if drain_until.is_some() && !rx_open && w.builder.is_empty() && w.pending.is_empty() {
            break;
        }
        if matches!(conn, Conn::Idle) && Instant::now() >= w.retry_at {
            w.start_connect(&mut conn);
        }
        let batch_deadline = w.builder.deadline();
        let retry_wake = w.retry_wake;
        let retry_at = matches!(conn, Conn::Idle).then_some(w.retry_at);
        tokio::select! {
            r = rx.recv(), if rx_open => match r {
                Some(rec) => {
                    w.on_record(rec, &mut conn);
                    for _ in 1..RECV_BURST {
                        match rx.try_recv() {
                            Ok(rec) => w.on_record(rec, &mut conn),
                            Err(_) => break,
                        }
                    }
                }
                None => {
                    rx_open = false;
                    w.close_batch(&mut conn);
                }
            },
            ev = conn_event(&mut conn) => w.on_conn_event(ev, &mut conn),
            _ = sleep_until(batch_deadline), if batch_deadline.is_some() => w.close_batch(&mut conn),
            _ = sleep_until(retry_wake), if retry_wake.is_some() => {
                w.retry_wake = None;
                w.pump(&mut conn);
            }
            _ = sleep_until(retry_at), if retry_at.is_some() => {}
            _ = tick.tick() => w.housekeeping(&mut conn),
            d = &mut stop, if drain_until.is_none() => {
                // The handle was dropped without `shutdown`: no drain.
                let d = d.unwrap_or(Duration::ZERO);
                drain_until = Some(Instant::now() + d);
                rx.close();
                debug!(drain_ms = d.as_millis() as u64, pending = w.pending.len(), "exporter draining");
            }
            _ = sleep_until(drain_until), if drain_until.is_some() => break,
        }
    }
    w.finish(rx, conn);
}
