//! Internal metrics, rendered in the Prometheus text format on `GET /metrics`.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Upper bounds (seconds) of the insert-latency histogram buckets.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// All aggregator counters. Shared behind an `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Batches received.
    pub batches_received: AtomicU64,
    /// Batches stored.
    pub batches_stored: AtomicU64,
    /// Resent batches recognised and not stored again.
    pub batches_duplicate: AtomicU64,
    /// Batches answered RETRY (storage failure or full queue).
    pub batches_retry: AtomicU64,
    /// Resent batches (`Batch.resend`) looked up in storage before writing.
    pub resend_lookups: AtomicU64,
    /// Resent batches that storage held in part (only the missing tables were written).
    pub resend_partly_stored: AtomicU64,
    /// Batches dropped because the writer queue was full (subset of retry).
    pub queue_full_drops: AtomicU64,
    /// Requests stored.
    pub requests_stored: AtomicU64,
    /// Spans stored.
    pub spans_stored: AtomicU64,
    /// Engine steps stored.
    pub steps_stored: AtomicU64,
    /// Failed insert attempts.
    pub insert_errors: AtomicU64,
    /// Batches waiting for the writer.
    pub queue_depth: AtomicU64,
    /// Rejected batches per reason.
    rejects: Mutex<BTreeMap<String, u64>>,
    /// Unauthenticated streams.
    pub unauthenticated: AtomicU64,
    /// Ingest streams that ended because the client went away (reset, cancel).
    pub streams_broken: AtomicU64,
    /// Request-latency histograms (GenAI names), observed as requests are committed.
    pub latency: crate::latency::Latency,
    /// OTLP export counters.
    pub otlp: std::sync::Arc<crate::otlp::OtlpMetrics>,
    insert_hist: [AtomicU64; BUCKETS.len() + 1],
    insert_sum_us: AtomicU64,
    insert_count: AtomicU64,
}

impl Metrics {
    /// Counts a rejected batch.
    pub fn reject(&self, reason: &str) {
        *self
            .rejects
            .lock()
            .expect("metrics lock")
            .entry(reason.to_string())
            .or_default() += 1;
    }

    /// Rejections so far, per reason.
    pub fn rejects(&self) -> BTreeMap<String, u64> {
        self.rejects.lock().expect("metrics lock").clone()
    }

    /// Records one insert (commit) latency.
    pub fn observe_insert(&self, secs: f64) {
        let i = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.insert_hist[i].fetch_add(1, Relaxed);
        self.insert_sum_us.fetch_add((secs * 1e6) as u64, Relaxed);
        self.insert_count.fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut c = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP inferscope_{name} {help}\n# TYPE inferscope_{name} {kind}\ninferscope_{name} {v}");
        };
        c(
            "batches_received_total",
            "Batches received.",
            "counter",
            self.batches_received.load(Relaxed),
        );
        c(
            "batches_stored_total",
            "Batches stored in ClickHouse.",
            "counter",
            self.batches_stored.load(Relaxed),
        );
        c(
            "batches_duplicate_total",
            "Resent batches acknowledged without storing again.",
            "counter",
            self.batches_duplicate.load(Relaxed),
        );
        c(
            "batches_retry_total",
            "Batches answered RETRY.",
            "counter",
            self.batches_retry.load(Relaxed),
        );
        c(
            "resend_lookups_total",
            "Resent batches looked up in storage before writing (recognised across replicas and restarts).",
            "counter",
            self.resend_lookups.load(Relaxed),
        );
        c(
            "resend_partly_stored_total",
            "Resent batches found partly stored: only the missing tables were written.",
            "counter",
            self.resend_partly_stored.load(Relaxed),
        );
        c(
            "queue_full_drops_total",
            "Batches not queued because the writer queue was full.",
            "counter",
            self.queue_full_drops.load(Relaxed),
        );
        c(
            "requests_stored_total",
            "Requests stored.",
            "counter",
            self.requests_stored.load(Relaxed),
        );
        c(
            "spans_stored_total",
            "Spans stored.",
            "counter",
            self.spans_stored.load(Relaxed),
        );
        c(
            "engine_steps_stored_total",
            "Engine steps stored.",
            "counter",
            self.steps_stored.load(Relaxed),
        );
        c(
            "insert_errors_total",
            "Failed ClickHouse inserts.",
            "counter",
            self.insert_errors.load(Relaxed),
        );
        c(
            "ingest_streams_broken_total",
            "Ingest streams ended by the client going away (reset, cancel).",
            "counter",
            self.streams_broken.load(Relaxed),
        );
        c(
            "unauthenticated_total",
            "Streams refused for missing or wrong credentials.",
            "counter",
            self.unauthenticated.load(Relaxed),
        );
        c(
            "queue_depth",
            "Batches waiting for the writer.",
            "gauge",
            self.queue_depth.load(Relaxed),
        );
        let _ = writeln!(s, "# HELP inferscope_batches_rejected_total Batches rejected, by reason.\n# TYPE inferscope_batches_rejected_total counter");
        for (r, n) in self.rejects() {
            let _ = writeln!(s, "inferscope_batches_rejected_total{{reason=\"{r}\"}} {n}");
        }
        let _ = writeln!(s, "# HELP inferscope_insert_seconds ClickHouse insert (commit) latency.\n# TYPE inferscope_insert_seconds histogram");
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.insert_hist[i].load(Relaxed);
            let _ = writeln!(s, "inferscope_insert_seconds_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.insert_hist[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(s, "inferscope_insert_seconds_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            s,
            "inferscope_insert_seconds_sum {}",
            self.insert_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "inferscope_insert_seconds_count {}",
            self.insert_count.load(Relaxed)
        );
        self.latency.render(&mut s);
        self.otlp.render(&mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.batches_received.fetch_add(3, Relaxed);
        m.reject("bad_trace_id");
        m.observe_insert(0.02);
        m.observe_insert(20.0);
        let t = m.render();
        assert!(t.contains("inferscope_batches_received_total 3"));
        assert!(t.contains("inferscope_batches_rejected_total{reason=\"bad_trace_id\"} 1"));
        assert!(t.contains("inferscope_insert_seconds_bucket{le=\"0.025\"} 1"));
        assert!(t.contains("inferscope_insert_seconds_bucket{le=\"+Inf\"} 2"));
    }
}
