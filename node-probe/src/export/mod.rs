//! Shipping finished requests to the aggregator (`inferscope.v1.Ingest/Export`).
//!
//! The event loop hands [`RequestRecord`]s to [`ExportHandle::send`], which never blocks: the
//! record goes into a bounded queue or is dropped and counted. The exporter runs on its own
//! thread with a single-threaded tokio runtime:
//!
//! * records are converted ([`convert`]) and batched ([`batch`]) per resource (node, pid,
//!   engine); a batch closes by size or `max_age` after its first record and gets the next
//!   `sequence` (from 1) of this run's random `boot_id`;
//! * batches are streamed with compression and the bearer token ([`client`]); acks (possibly out
//!   of order) settle them: STORED/DUPLICATE delivered, REJECTED dropped and counted, RETRY resent
//!   later with a per-batch backoff;
//! * with write-ahead (the default) each closed batch is also written to the spool before its
//!   first send, so that a killed probe loses only its open batch;
//! * at most `window` batches are held in memory; beyond it, or while the aggregator is
//!   unreachable, batches go to the disk [`spool`] (size-capped, oldest evicted first). Spooled
//!   batches, including those of earlier runs, are resent oldest first after (re)connecting,
//!   which is done with exponential backoff and jitter. A batch leaves memory and spool only when
//!   acknowledged as STORED, DUPLICATE or REJECTED (or evicted by the cap);
//! * [`ExportHandle::shutdown`] closes the open batch, keeps sending for the drain time, then
//!   spools what is left.
//!
//! Counters are in [`ExportStats`], logged every `stats_interval` when they changed.
pub mod batch;
pub mod client;
pub mod convert;
pub mod otlp;
pub mod spool;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::requests::RequestRecord;
pub use batch::BatchLimits;

/// Primary default spool directory.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/inferscope/spool";

/// Compression of the request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// zstd (the default).
    #[default]
    Zstd,
    /// gzip.
    Gzip,
    /// None.
    None,
}

/// The exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Unusable `--export` URL.
    #[error("bad export URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The CA file could not be read.
    #[error("cannot read --export-tls-ca {path}: {source}")]
    TlsCa {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Unusable TLS settings.
    #[error("TLS: {0}")]
    Tls(String),
    /// The token cannot be sent as a header value.
    #[error("the export token must be printable ASCII")]
    Token,
    /// A token would cross the network in clear text.
    #[error("refusing to send the token over plain http:// to {host} (anyone on the path could read it): use https:// with --export-tls-ca, or pass --allow-plaintext-token")]
    PlaintextToken {
        /// The aggregator's host.
        host: String,
    },
    /// Empty or overlong node name.
    #[error("the node name must be 1 to 256 bytes, not {0:?}")]
    NodeName(String),
    /// A run tag that is not `key=value`, or too many of them.
    #[error("--tag {tag:?}: {reason}")]
    Tag {
        /// The tag as given.
        tag: String,
        /// What is wrong.
        reason: String,
    },
    /// The spool directory cannot be used.
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    /// The runtime or thread could not be created.
    #[error("cannot start the exporter thread: {0}")]
    Thread(std::io::Error),
}

/// Exporter settings. [`ExportConfig::new`] fills in the defaults.
#[derive(Clone)]
pub struct ExportConfig {
    /// Aggregator gRPC URLs, `http://HOST:PORT` or `https://HOST:PORT`: replicas behind one
    /// ClickHouse, used one at a time; a failed connection or stream moves to the next, and a
    /// batch acknowledged by any of them is done. A name that resolves to several addresses
    /// is tried address by address at each connect.
    pub urls: Vec<String>,
    /// This node's name (`Batch.node_id`, `Resource.node`).
    pub node_name: String,
    /// Bearer token (`authorization: Bearer …`).
    pub token: Option<String>,
    /// PEM CA to trust for `https://` URLs.
    pub tls_ca: Option<PathBuf>,
    /// Request compression.
    pub compression: Compression,
    /// When batches close.
    pub batch: BatchLimits,
    /// Records queued between the event loop and the exporter (beyond: dropped, counted).
    pub queue_capacity: usize,
    /// Unacknowledged batches held in memory (and in flight at once).
    pub window: usize,
    /// Spool directory (`None`: no spool; what does not fit in memory is dropped, counted).
    pub spool_dir: Option<PathBuf>,
    /// Spool size cap in bytes.
    pub spool_max_bytes: u64,
    /// Write every closed batch to the spool before its first send (without fsync): a probe
    /// killed with SIGKILL then loses only its open batch and unfinished requests; the next run
    /// resends the rest. No effect without a spool.
    pub write_ahead: bool,
    /// How long [`run`](crate::run::run) lets the exporter drain at shutdown.
    pub drain_timeout: Duration,
    /// First reconnect delay (and first resend delay after a RETRY ack).
    pub backoff_initial: Duration,
    /// Longest reconnect/resend delay.
    pub backoff_max: Duration,
    /// A stream with a batch unacknowledged this long is considered dead and reopened.
    pub ack_timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// How often the counters are logged (when they changed).
    pub stats_interval: Duration,
    /// Send the token over plain `http://` to a non-loopback aggregator (refused otherwise).
    pub allow_plaintext_token: bool,
    /// Run tags `(key, value)`: resource attributes of every batch, stored with each request
    /// (`requests.tags`) so that a run can be selected (`tag=key=value`).
    pub tags: Vec<(String, String)>,
}

/// Most run tags.
pub const MAX_TAGS: usize = 16;
/// Longest tag key (ASCII letters, digits, `_ . -`).
pub const MAX_TAG_KEY: usize = 64;
/// Longest tag value, in characters.
pub const MAX_TAG_VALUE: usize = 128;

/// Parses one `--tag key=value`.
pub fn parse_tag(s: &str) -> Result<(String, String), ExportError> {
    let bad = |reason: &str| ExportError::Tag {
        tag: s.chars().take(200).collect(),
        reason: reason.to_string(),
    };
    let (k, v) = s.split_once('=').ok_or_else(|| bad("expected key=value"))?;
    if k.is_empty() || k.len() > MAX_TAG_KEY {
        return Err(bad("the key must be 1 to 64 characters"));
    }
    if !k
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(bad(
            "the key may hold only ASCII letters, digits, '_', '.' and '-'",
        ));
    }
    if v.chars().count() > MAX_TAG_VALUE || v.chars().any(char::is_control) {
        return Err(bad(
            "the value must be at most 128 characters, none of them control characters",
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

impl ExportConfig {
    /// Defaults: zstd, 512 requests or 1 s per batch, a 65 536-record queue, 16 batches in
    /// memory, no spool, 256 MiB spool cap, write-ahead on, 5 s drain, backoff 100 ms doubling to 5 s
    /// (so that an aggregator back after an outage gets every node within about 5 s).
    pub fn new(url: impl Into<String>, node_name: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            node_name: node_name.into(),
            token: None,
            tls_ca: None,
            compression: Compression::Zstd,
            batch: BatchLimits::default(),
            queue_capacity: 65_536,
            window: 16,
            spool_dir: None,
            spool_max_bytes: 256 << 20,
            write_ahead: true,
            drain_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            stats_interval: Duration::from_secs(30),
            allow_plaintext_token: false,
            tags: Vec::new(),
        }
    }
}

/// The host of an `http://` URL when it is not a loopback address or `localhost` (a token sent
/// there crosses a network in clear text).
pub fn plaintext_remote_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let bare = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| bare.to_string())
}

impl ExportConfig {
    /// Checks the URL, TLS, token and node name (what [`Exporter::start`] checks before it
    /// touches the spool), so that a command line can be refused before anything is loaded.
    pub fn validate(&self) -> Result<(), ExportError> {
        if self.token.is_some() && !self.allow_plaintext_token {
            if let Some(host) = self.urls.iter().find_map(|u| plaintext_remote_host(u)) {
                return Err(ExportError::PlaintextToken { host });
            }
        }
        if self.node_name.is_empty() || self.node_name.len() > 256 {
            return Err(ExportError::NodeName(self.node_name.clone()));
        }
        if self.tags.len() > MAX_TAGS {
            return Err(ExportError::Tag {
                tag: format!("{} tags", self.tags.len()),
                reason: format!("at most {MAX_TAGS} tags"),
            });
        }
        for (i, (k, _)) in self.tags.iter().enumerate() {
            if self.tags[..i].iter().any(|(k2, _)| k2 == k) {
                return Err(ExportError::Tag {
                    tag: k.clone(),
                    reason: "the key is given more than once".into(),
                });
            }
        }
        client::Connector::new(self).map(|_| ())
    }
}

impl std::fmt::Debug for ExportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportConfig")
            .field("urls", &self.urls)
            .field("node_name", &self.node_name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca)
            .field("compression", &self.compression)
            .field("batch", &self.batch)
            .field("queue_capacity", &self.queue_capacity)
            .field("window", &self.window)
            .field("spool_dir", &self.spool_dir)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("write_ahead", &self.write_ahead)
            .field("drain_timeout", &self.drain_timeout)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("ack_timeout", &self.ack_timeout)
            .field("tags", &self.tags)
            .field("connect_timeout", &self.connect_timeout)
            .field("stats_interval", &self.stats_interval)
            .finish()
    }
}

macro_rules! counters {
    ($(#[doc = $doc:literal] $name:ident,)*) => {
        /// Exporter counters, shared between the exporter thread and its handle (relaxed
        /// atomics). [`ExportStats::snapshot`] reads them all.
        #[derive(Debug, Default)]
        pub struct ExportStats {
            $(#[doc = $doc] pub $name: AtomicU64,)*
        }

        /// A copy of the [`ExportStats`] counters.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
        pub struct ExportSnapshot {
            $(#[doc = $doc] pub $name: u64,)*
        }

        impl ExportStats {
            /// Reads every counter.
            pub fn snapshot(&self) -> ExportSnapshot {
                ExportSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl ExportSnapshot {
            /// Every counter as (name, description, value).
            pub fn fields(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $doc.trim(), self.$name),)*]
            }
        }

        impl std::fmt::Display for ExportSnapshot {
            /// `key=value` pairs.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut sep = "";
                $(
                    write!(f, "{sep}{}={}", stringify!($name), self.$name)?;
                    sep = " ";
                )*
                let _ = sep;
                Ok(())
            }
        }
    };
}

counters! {
    /// Records accepted into the exporter's queue.
    records_queued,
    /// Records dropped because the queue was full (or the exporter had stopped).
    dropped_queue_full,
    /// Records skipped because their ids or timestamps are invalid.
    skipped_invalid,
    /// Batches closed (each with a new sequence number).
    batches_closed,
    /// Batch sends on a stream, resends included.
    batches_sent,
    /// Batches acknowledged STORED.
    acked_stored,
    /// Batches acknowledged DUPLICATE (already stored).
    acked_duplicate,
    /// Batches acknowledged REJECTED (dropped, never resent).
    rejected,
    /// RETRY acknowledgements (the batch is resent later).
    retried,
    /// Requests in batches acknowledged STORED or DUPLICATE.
    records_delivered,
    /// Batches written to the spool because memory was full or the aggregator unreachable.
    spooled,
    /// Batches written ahead to the spool before their first send (write-ahead).
    journaled,
    /// Spool files evicted to stay within the cap (oldest first).
    spool_evicted,
    /// Bytes in the spool now.
    spool_bytes,
    /// Spool write/read/delete failures (a full disk, permissions).
    spool_errors,
    /// Spool files that failed their checks or did not decode: moved to `corrupt/`, batch dropped.
    spool_corrupt,
    /// Batches lost: no room in memory and none on disk (spool missing, failing or evicted).
    batches_dropped,
    /// Connection attempts after the first.
    reconnects,
    /// Moves to another aggregator endpoint after a failure (with several `--export` URLs).
    failovers,
    /// Failed connection attempts and broken streams.
    connect_errors,
    /// Streams refused for a missing or wrong token.
    unauthenticated,
}

/// Adds `n` to counter `c`.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Starts exporters.
#[derive(Debug)]
pub struct Exporter;

impl Exporter {
    /// Validates `cfg`, opens the spool (queueing the batches found there for resending) and
    /// starts the exporter thread, which connects at once.
    pub fn start(cfg: ExportConfig) -> Result<ExportHandle, ExportError> {
        cfg.validate()?;
        let connector = client::Connector::new(&cfg)?;
        let spool = match &cfg.spool_dir {
            Some(d) => Some(spool::Spool::open(d, cfg.spool_max_bytes)?),
            None => None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ExportError::Thread)?;
        let stats = Arc::new(ExportStats::default());
        let boot_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let w = worker::Worker::new(cfg, connector, spool, Arc::clone(&stats), boot_id.clone());
        let thread = std::thread::Builder::new()
            .name("inferscope-export".into())
            .spawn(move || {
                // Signals the handle even if the worker panics.
                struct Done(std::sync::mpsc::SyncSender<()>);
                impl Drop for Done {
                    fn drop(&mut self) {
                        let _ = self.0.try_send(());
                    }
                }
                let _done = Done(done_tx);
                rt.block_on(worker::run(w, rx, stop_rx));
            })
            .map_err(ExportError::Thread)?;
        Ok(ExportHandle {
            tx,
            stop: Some(stop_tx),
            done: done_rx,
            thread: Some(thread),
            stats,
            boot_id,
        })
    }
}

/// The running exporter. Dropping it stops the exporter without draining (what is unsent is
/// spooled).
#[derive(Debug)]
pub struct ExportHandle {
    tx: mpsc::Sender<RequestRecord>,
    stop: Option<oneshot::Sender<Duration>>,
    done: std::sync::mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<ExportStats>,
    boot_id: String,
}

impl ExportHandle {
    /// Queues a record without blocking; returns `false` (and counts it) when the queue is full.
    pub fn send(&self, record: RequestRecord) -> bool {
        match self.tx.try_send(record) {
            Ok(()) => {
                add(&self.stats.records_queued, 1);
                true
            }
            Err(_) => {
                add(&self.stats.dropped_queue_full, 1);
                false
            }
        }
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<ExportStats> {
        Arc::clone(&self.stats)
    }

    /// This run's `boot_id`.
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// Closes the open batch, keeps sending for up to `drain`, spools what is left, stops the
    /// thread and returns the final counters.
    pub fn shutdown(mut self, drain: Duration) -> ExportSnapshot {
        self.stop_and_wait(drain, Duration::from_secs(10));
        self.stats.snapshot()
    }

    fn stop_and_wait(&mut self, drain: Duration, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(drain);
        }
        let Some(thread) = self.thread.take() else {
            return;
        };
        // Bounded wait: a stuck file system must not hang node-probe's exit.
        match self.done.recv_timeout(drain + grace) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if thread.join().is_err() {
                    warn!("exporter thread panicked");
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                warn!(
                    wait_ms = (drain + grace).as_millis() as u64,
                    "exporter did not stop in time; leaving it"
                );
            }
        }
    }
}

impl Drop for ExportHandle {
    fn drop(&mut self) {
        self.stop_and_wait(Duration::ZERO, Duration::from_secs(5));
    }
}

/// The host name (`--node-name` default), `"unknown"` if it cannot be read.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates (we stop at the first NUL or the end).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..n]) {
        Ok(s) if !s.is_empty() => s.to_owned(),
        _ => "unknown".into(),
    }
}

/// The default spool directory: [`DEFAULT_SPOOL_DIR`] when it is (or can be made) writable,
/// else `$HOME/.cache/inferscope/spool`; `None` when neither is.
pub fn default_spool_dir() -> Option<PathBuf> {
    let primary = PathBuf::from(DEFAULT_SPOOL_DIR);
    if spool::writable_dir(&primary) {
        return Some(primary);
    }
    let home = std::env::var_os("HOME")?;
    let fallback = PathBuf::from(home).join(".cache/inferscope/spool");
    spool::writable_dir(&fallback).then_some(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_key_value() {
        assert_eq!(
            parse_tag("run=ci-1").unwrap(),
            ("run".into(), "ci-1".into())
        );
        assert_eq!(parse_tag("a.b=x=y").unwrap(), ("a.b".into(), "x=y".into()));
        assert_eq!(parse_tag("k=").unwrap(), ("k".into(), String::new()));
        for bad in [
            "run",
            "=x",
            "ru n=x",
            "k=a\nb",
            &format!("{}=x", "k".repeat(65)),
        ] {
            assert!(parse_tag(bad).is_err(), "{bad}");
        }
        let mut c = ExportConfig::new("http://127.0.0.1:1", "n");
        c.tags = vec![("a".into(), "1".into()), ("a".into(), "2".into())];
        assert!(c.validate().is_err());
        c.tags = (0..17).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(c.validate().is_err());
        c.tags.truncate(16);
        c.validate().unwrap();
    }

    #[test]
    fn tokens_stay_off_plaintext_networks() {
        assert_eq!(
            plaintext_remote_host("http://10.0.0.5:7070"),
            Some("10.0.0.5".into())
        );
        assert_eq!(
            plaintext_remote_host("http://agg.example/x"),
            Some("agg.example".into())
        );
        for ok in [
            "http://127.0.0.1:7070",
            "http://localhost:7070",
            "http://[::1]:7070",
            "https://agg.example",
        ] {
            assert_eq!(plaintext_remote_host(ok), None, "{ok}");
        }
        let mut c = ExportConfig::new("http://10.0.0.5:7070", "n");
        assert!(c.validate().is_ok(), "no token: nothing to leak");
        c.token = Some("t".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("refusing to send the token over plain http:// to 10.0.0.5"),
            "{e}"
        );
        c.allow_plaintext_token = true;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn snapshot_display_is_key_value() {
        let s = ExportStats::default();
        add(&s.records_queued, 3);
        add(&s.spool_bytes, 10);
        let snap = s.snapshot();
        assert_eq!(snap.records_queued, 3);
        let text = snap.to_string();
        assert!(text.starts_with("records_queued=3 dropped_queue_full=0"));
        assert!(text.contains(" spool_bytes=10 "));
    }

    #[test]
    fn debug_redacts_token() {
        let mut c = ExportConfig::new("http://x:1", "n");
        c.token = Some("secret".into());
        let d = format!("{c:?}");
        assert!(!d.contains("secret") && d.contains("<redacted>"));
    }

    #[test]
    fn queue_full_drops_and_counts() {
        let mut cfg = ExportConfig::new("http://127.0.0.1:1", "n");
        cfg.queue_capacity = 1;
        cfg.backoff_initial = Duration::from_secs(60);
        let h = Exporter::start(cfg).expect("start");
        // The worker may take the first record at once; sending many overflows anyway.
        let sent = (0..1000)
            .filter(|&i| h.send(convert::tests::record(i, 1, 0, 0)))
            .count() as u64;
        let s = h.shutdown(Duration::ZERO);
        assert_eq!(s.records_queued, sent);
        assert_eq!(s.records_queued + s.dropped_queue_full, 1000);
        assert!(s.dropped_queue_full > 0);
    }

    #[test]
    fn hostname_is_nonempty() {
        assert!(!hostname().is_empty());
    }
}
