//! OTLP straight from node-probe (`--otlp-endpoint`), for users without an aggregator or beside
//! one: finished requests are batched per resource exactly as for the aggregator
//! ([`BatchBuilder`], the same node name, run tags and limits) and every closed batch goes to
//! the shared OTLP export ([`inferscope_otlp`]), so that the spans carry the same names and
//! figures as the aggregator's export of the same requests.
//!
//! It runs on its own thread (a single-threaded tokio runtime) and never blocks the event loop:
//! [`OtlpExport::send`] puts a record into a bounded queue or drops it (counted as
//! `inferscope_probe_otlp_records_dropped_total`); past the queue, the export's own span budget
//! drops and counts (`inferscope_otlp_spans_dropped_total`). Delivery is at most once: there is
//! no spool (a collector that is down loses the spans of its outage).
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use inferscope_otlp::{OtlpConfig, OtlpError, OtlpMetrics, OtlpSink};
use inferscope_proto::v1::Batch;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::batch::{BatchBuilder, BatchLimits, ClosedBatch};
use crate::requests::RequestRecord;

/// What to export and how to batch it.
#[derive(Debug, Clone)]
pub struct OtlpExportConfig {
    /// The collector and transport.
    pub otlp: OtlpConfig,
    /// Node name of every resource.
    pub node_name: String,
    /// Run tags: attributes of every resource.
    pub tags: Vec<(String, String)>,
    /// When a batch closes.
    pub batch: BatchLimits,
    /// Finished requests waiting to be batched at most.
    pub queue_capacity: usize,
}

/// The event loop's end of the OTLP export.
pub struct OtlpExport {
    tx: Option<mpsc::Sender<RequestRecord>>,
    metrics: Arc<OtlpMetrics>,
    records_dropped: AtomicU64,
    thread: Option<JoinHandle<()>>,
}

impl OtlpExport {
    /// Checks the configuration, builds the exporter and starts the thread.
    pub fn start(cfg: OtlpExportConfig) -> Result<Self, OtlpError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| OtlpError::Config(format!("runtime: {e}")))?;
        let metrics = Arc::new(OtlpMetrics::default());
        let (sink, task) = {
            let _in_runtime = rt.enter();
            OtlpSink::start(&cfg.otlp, Arc::clone(&metrics))?
        };
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let boot_id = uuid::Uuid::new_v4().to_string();
        let builder =
            BatchBuilder::new(&cfg.node_name, &boot_id, cfg.batch.clone()).with_tags(&cfg.tags);
        let batcher = Batcher {
            builder,
            node_id: cfg.node_name,
            boot_id,
            next_seq: 1,
            sink,
        };
        let thread = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                rt.block_on(async move {
                    batcher.run(rx).await;
                    // Every sink is gone: the task exports what is queued, then ends.
                    let _ = task.await;
                });
            })
            .map_err(|e| OtlpError::Config(format!("thread: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            metrics,
            records_dropped: AtomicU64::new(0),
            thread: Some(thread),
        })
    }

    /// Hands a finished request over, or drops it (counted) when the queue is full.
    pub fn send(&self, r: RequestRecord) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(r).is_err() {
            self.records_dropped.fetch_add(1, Relaxed);
        }
    }

    /// The export's counters.
    pub fn metrics(&self) -> Arc<OtlpMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Prometheus text of the export's counters.
    pub fn render(&self, s: &mut String) {
        use std::fmt::Write as _;
        self.metrics.render(s);
        let _ = writeln!(
            s,
            "# HELP inferscope_probe_otlp_records_dropped_total Finished requests not exported over OTLP because its queue was full.\n\
             # TYPE inferscope_probe_otlp_records_dropped_total counter\n\
             inferscope_probe_otlp_records_dropped_total {}",
            self.records_dropped.load(Relaxed)
        );
    }

    /// Closes the open batch, exports what is queued for at most `drain`, then stops; the
    /// counters at the end.
    pub fn shutdown(mut self, drain: Duration) -> OtlpExportStats {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + drain;
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                warn!(
                    queued_spans = self.metrics.queued.load(Relaxed),
                    "OTLP export still busy at shutdown; its queued spans are lost"
                );
            }
        }
        let m = &self.metrics;
        OtlpExportStats {
            spans_exported: m.exported.load(Relaxed),
            spans_dropped: m.dropped_queue_full.load(Relaxed)
                + m.dropped_export_failed.load(Relaxed)
                + m.queued.load(Relaxed),
            export_errors: m.export_errors.load(Relaxed),
            records_dropped: self.records_dropped.load(Relaxed),
        }
    }
}

/// The OTLP export's counters at shutdown (for the stop log line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OtlpExportStats {
    /// Spans the collector accepted.
    pub spans_exported: u64,
    /// Spans lost: queue full, failed export calls, or still queued at the end of the drain.
    pub spans_dropped: u64,
    /// Failed export calls.
    pub export_errors: u64,
    /// Finished requests not handed to the export (its queue was full).
    pub records_dropped: u64,
}

/// The thread's side: records into batches, batches to the sink.
struct Batcher {
    builder: BatchBuilder,
    node_id: String,
    boot_id: String,
    next_seq: u64,
    sink: OtlpSink,
}

impl Batcher {
    async fn run(mut self, mut rx: mpsc::Receiver<RequestRecord>) {
        loop {
            let deadline = self.builder.deadline();
            let sleep = sleep_until(deadline);
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => self.push(&r),
                    None => break,
                },
                () = sleep, if deadline.is_some() => self.close(),
            }
        }
        self.close();
    }

    fn push(&mut self, r: &RequestRecord) {
        match self.builder.push(r, Instant::now()) {
            Ok(true) => self.close(),
            Ok(false) => {}
            Err(e) => debug!(error = %e, pid = r.pid, "record not exportable; skipped"),
        }
    }

    fn close(&mut self) {
        let Some(ClosedBatch { resources, .. }) = self.builder.take() else {
            return;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let batch = Batch {
            node_id: self.node_id.clone(),
            boot_id: self.boot_id.clone(),
            sequence: seq,
            resend: false,
            resources,
        };
        self.sink.offer(batch, format!("{}/{seq}", self.boot_id));
    }
}

fn sleep_until(t: Option<Instant>) -> tokio::time::Sleep {
    let at = t.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
    tokio::time::sleep_until(at.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::convert::tests::record;
    use inferscope_otlp::Protocol;

    fn config(queue: usize) -> OtlpExportConfig {
        let mut otlp = OtlpConfig::new("http://127.0.0.1:9", Protocol::HttpProtobuf);
        otlp.timeout = Duration::from_millis(200);
        OtlpExportConfig {
            otlp,
            node_name: "n".into(),
            tags: Vec::new(),
            batch: BatchLimits::default(),
            queue_capacity: queue,
        }
    }

    #[test]
    fn bad_configuration_is_refused_up_front() {
        let mut c = config(4);
        c.otlp.endpoint = "127.0.0.1:4318".into();
        assert!(OtlpExport::start(c).is_err());
    }

    #[test]
    fn an_unreachable_collector_costs_spans_counted_never_the_loop() {
        let x = OtlpExport::start(config(4)).expect("start");
        let m = x.metrics();
        let t = Instant::now();
        for i in 0..50 {
            x.send(record(i, 1, 0, 0));
        }
        assert!(t.elapsed() < Duration::from_millis(100), "send waited");
        let mut page = String::new();
        x.render(&mut page);
        assert!(
            page.contains("inferscope_probe_otlp_records_dropped_total"),
            "{page}"
        );
        x.shutdown(Duration::from_secs(5));
        let dropped = m.dropped_export_failed.load(Relaxed) + m.dropped_queue_full.load(Relaxed);
        assert_eq!(m.exported.load(Relaxed), 0);
        assert!(dropped > 0, "no span counted as dropped");
    }
}
