//! The exporter against an in-process fake aggregator (a tonic `Ingest` server on 127.0.0.1),
//! through the library API only: no eBPF, no root.
//!
//! The fake records every batch it receives, stores each (node, boot, sequence) once (a second
//! STORED answer becomes DUPLICATE, as in the real aggregator), and answers acks as scripted,
//! after a per-sequence delay so that acks arrive out of order.
mod common;

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use inferscope_api::{SpanId, TraceId};
use inferscope_proto::v1::ingest_server::{Ingest, IngestServer};
use inferscope_proto::v1::{ack::Status as AckStatus, Ack, Batch};
use node_probe::export::{Compression, ExportConfig, ExportHandle, Exporter};
use node_probe::requests::{LinkJson, RequestRecord, SpanJson, StepJson};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status, Streaming};

type BatchId = (String, String, u64);
type Script = Box<dyn Fn(&Batch, u32) -> AckStatus + Send + Sync>;

#[derive(Default)]
struct Log {
    /// Every batch received, resends included.
    received: Vec<Batch>,
    /// Stored batches, once each.
    stored: BTreeMap<BatchId, Batch>,
    /// Receipts per batch.
    seen: HashMap<BatchId, u32>,
    /// Times of refused streams.
    unauthenticated: Vec<Instant>,
    /// `grpc-encoding` of each accepted stream.
    encodings: Vec<String>,
}

struct Fake {
    token: Option<String>,
    /// Ack status for a batch received for the n-th time (1-based); `Unspecified`: no ack at
    /// all (a hung aggregator).
    script: Script,
    max_ack_delay_ms: u64,
    log: Mutex<Log>,
}

impl Fake {
    fn new(script: Script) -> Arc<Self> {
        Self::with_token(None, script)
    }

    fn with_token(token: Option<&str>, script: Script) -> Arc<Self> {
        Arc::new(Self {
            token: token.map(str::to_owned),
            script,
            max_ack_delay_ms: 15,
            log: Mutex::default(),
        })
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().expect("log lock")
    }

    /// Trace ids (hex) of every stored request, in storage order.
    fn stored_trace_ids(&self) -> Vec<String> {
        self.log()
            .stored
            .values()
            .flat_map(|b| b.resources.iter())
            .flat_map(|r| r.requests.iter())
            .map(|q| hex(&q.trace_id))
            .collect()
    }
}

fn stored() -> Script {
    Box::new(|_, _| AckStatus::Stored)
}

#[derive(Clone)]
struct Svc(Arc<Fake>);

#[tonic::async_trait]
impl Ingest for Svc {
    type ExportStream = ReceiverStream<Result<Ack, Status>>;

    async fn export(
        &self,
        req: Request<Streaming<Batch>>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let f = Arc::clone(&self.0);
        {
            let mut log = f.log();
            if let Some(want) = &f.token {
                let got = req
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok());
                if got != Some(format!("Bearer {want}").as_str()) {
                    log.unauthenticated.push(Instant::now());
                    return Err(Status::unauthenticated("missing or wrong bearer token"));
                }
            }
            let enc = req
                .metadata()
                .get("grpc-encoding")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("identity")
                .to_owned();
            log.encodings.push(enc);
        }
        let mut stream = req.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Ok(Some(b)) = stream.message().await {
                let id = (b.node_id.clone(), b.boot_id.clone(), b.sequence);
                let status = {
                    let mut log = f.log();
                    log.received.push(b.clone());
                    let n = log.seen.entry(id.clone()).or_default();
                    *n += 1;
                    let n = *n;
                    let mut st = (f.script)(&b, n);
                    if st == AckStatus::Stored {
                        match log.stored.entry(id) {
                            Entry::Occupied(_) => st = AckStatus::Duplicate,
                            Entry::Vacant(e) => {
                                e.insert(b.clone());
                            }
                        }
                    }
                    st
                };
                // Pseudo-random delay per sequence: acks overtake each other.
                let delay = if f.max_ack_delay_ms > 0 {
                    (b.sequence.wrapping_mul(7919) ^ 0x5555) % f.max_ack_delay_ms
                } else {
                    0
                };
                if status == AckStatus::Unspecified {
                    continue;
                }
                let tx = tx.clone();
                let sequence = b.sequence;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let _ = tx
                        .send(Ok(Ack {
                            sequence,
                            status: status as i32,
                            message: format!("scripted {status:?}"),
                        }))
                        .await;
                });
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A fake aggregator on its own runtime; dropping it kills it abruptly (connections reset).
struct Server {
    rt: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
}

impl Server {
    fn start(fake: &Arc<Fake>, addr: SocketAddr) -> Self {
        Self::start_with(fake, addr, None)
    }

    /// With `tls`: (certificate PEM, key PEM).
    fn start_with(fake: &Arc<Fake>, addr: SocketAddr, tls: Option<(Vec<u8>, Vec<u8>)>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let svc = IngestServer::new(Svc(Arc::clone(fake)))
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip);
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key)) = tls {
            builder = builder
                .tls_config(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(tonic::transport::Identity::from_pem(cert, key)),
                )
                .expect("server TLS");
        }
        rt.spawn(
            builder
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        Self { rt: Some(rt), addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Waits for its tasks (and sockets) to be dropped, so the port can be reused.
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// A local address nothing listens on (yet).
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
}

/// A finished request: a root span and one shared engine step.
fn record(n: u64) -> RequestRecord {
    let start = now_ns();
    let end = start + 3_000_000;
    let root = SpanId::from_bytes((0x1_0000 + n).to_be_bytes());
    let (step_trace, step_span) = inferscope_api::step_context("host", "1:1", n / 3);
    let step = StepJson {
        step_id: n / 3,
        trace_id: step_trace,
        span_id: step_span,
        start_unix_ns: start + 10,
        end_unix_ns: start + 20,
        batch_size: 3,
        batch_unit: "requests",
        tokens: 0,
        gpu: None,
        coll: None,
    };
    let spans = vec![
        SpanJson {
            name: "http.server",
            span_id: root,
            parent_span_id: None,
            start_unix_ns: start,
            end_unix_ns: end,
            attributes: BTreeMap::from([("http.method", Value::from("POST"))]),
            links: vec![LinkJson {
                trace_id: step_trace,
                span_id: step_span,
                attributes: BTreeMap::from([("engine.step_id", Value::from(n / 3))]),
            }],
        },
        SpanJson {
            name: "frontend",
            span_id: SpanId::from_bytes((0x2_0000 + n).to_be_bytes()),
            parent_span_id: Some(root),
            start_unix_ns: start,
            end_unix_ns: start + 1_000,
            attributes: BTreeMap::new(),
            links: Vec::new(),
        },
    ];
    RequestRecord {
        kind: "request",
        trace_id: trace_id(n),
        parent_span_id: None,
        x_request_id: None,
        tenant: None,
        response_id: Some(format!("cmpl-{n}")),
        engine_request_id: Some(format!("cmpl-{n}-0")),
        engine: "vllm",
        engine_instance: None,
        pid: 100 + (n % 2) as u32,
        fd: 9,
        netns: 0,
        client: Some("127.0.0.1:40000".into()),
        server: Some("127.0.0.1:8000".into()),
        client_endpoint: None,
        server_endpoint: None,
        req_tcp_seq: None,
        resp_tcp_seq: None,
        hop_id: None,
        method: "POST".into(),
        path: "/v1/completions".into(),
        status: 200,
        outcome: "complete",
        gave_up: None,
        model: Some("tiny".into()),
        stream: Some(false),
        sse: false,
        req_bytes: 120,
        resp_bytes: 800,
        start_unix_ns: start,
        end_unix_ns: end,
        start_source: "read",
        read_wait_ns: 0,
        e2e_ns: end - start,
        ttft_ns: 2_000_000,
        first_text_ns: Some(2_500_000),
        tpot_ns: None,
        prompt_tokens: None,
        completion_tokens: None,
        chunks: 0,
        max_gap_ns: 0,
        chunk_offsets_ns: Vec::new(),
        engine_output_offsets_ns: Vec::new(),
        done: false,
        frontend_ns: Some(1_000),
        queue_ns: None,
        prefill_ns: None,
        decode_ns: None,
        delivery_ns: None,
        engine_ttft_ns: None,
        engine_e2e_ns: None,
        engine_steps: 1,
        steps: vec![step],
        step_tokens: Vec::new(),
        gpu_ns: None,
        gpu_cost_ns: None,
        gpu_host_bound_ns: None,
        gpu_upper_bound_steps: None,
        collectives: None,
        collective_wait_ns: None,
        straggler_rank: None,
        straggler_lag_ns: None,
        spans,
    }
}

fn trace_id(n: u64) -> TraceId {
    format!("{:032x}", 0xfeed_0000_0000u64 + n).parse().unwrap()
}

fn cfg(url: &str) -> ExportConfig {
    let mut c = ExportConfig::new(url, "test-node");
    c.batch.max_requests = 10;
    c.batch.max_age = Duration::from_millis(50);
    c.window = 4;
    c.backoff_initial = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.stats_interval = Duration::from_millis(500);
    c
}

/// Exporter logs go to the test's captured output (shown when it fails).
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("node_probe=debug")),
        )
        .try_init();
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn send_all(h: &ExportHandle, ns: impl IntoIterator<Item = u64>) {
    for n in ns {
        assert!(h.send(record(n)), "queue full");
    }
}

fn spool_files(dir: &Path) -> usize {
    if dir.is_dir() {
        spool_paths(dir).len()
    } else {
        0
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn expect_ids(ns: impl IntoIterator<Item = u64>) -> Vec<String> {
    sorted(ns.into_iter().map(|n| trace_id(n).to_string()).collect())
}

/// Sends 205 records (21 batches) at once with `window` batches in memory: beyond it they are
/// spooled, and still delivered exactly once.
fn deliver_all_once(compression: Compression, want_encoding: &str, window: usize) {
    init_logs();
    let fake = Fake::new(stored());
    let server = Server::start(&fake, "127.0.0.1:0".parse().expect("addr"));
    let spool = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(&server.url());
    c.compression = compression;
    c.window = window;
    c.spool_dir = Some(spool.path().to_owned());
    let h = Exporter::start(c).expect("start");
    let boot = h.boot_id().to_owned();
    send_all(&h, 0..205);
    let stats = h.stats();
    wait_until("delivery", Duration::from_secs(20), || {
        stats.snapshot().records_delivered == 205
    });
    let s = h.shutdown(Duration::from_secs(5));

    // Every record stored exactly once, nothing resent.
    let ids = fake.stored_trace_ids();
    assert_eq!(ids.len(), 205);
    assert_eq!(sorted(ids), expect_ids(0..205));
    let log = fake.log();
    assert_eq!(log.received.len(), log.stored.len());
    // Sequences 1..=n of one boot id, grouped by resource, steps deduplicated.
    let seqs: Vec<u64> = log.stored.keys().map(|k| k.2).collect();
    assert_eq!(seqs, (1..=s.batches_closed).collect::<Vec<_>>());
    assert!(s.batches_closed >= 21, "{s}");
    for b in log.stored.values() {
        assert_eq!(b.node_id, "test-node");
        assert_eq!(b.boot_id, boot);
        for r in &b.resources {
            let res = r.resource.as_ref().expect("resource");
            assert_eq!(res.node, "test-node");
            assert_eq!(res.engine, "vllm");
            assert!(r.spans.len() == 2 * r.requests.len());
            let steps: HashSet<u64> = r.steps.iter().map(|s| s.step_id).collect();
            assert_eq!(steps.len(), r.steps.len());
            assert!(r.steps.iter().all(|s| s.engine_instance == boot));
            assert!(r.requests.iter().all(|q| q.step_ids.len() == 1));
        }
    }
    assert!(
        log.encodings.iter().all(|e| e == want_encoding),
        "{:?}",
        log.encodings
    );
    assert!(!log.encodings.is_empty());
    assert_eq!(s.records_queued, 205);
    assert_eq!(s.records_delivered, 205);
    assert_eq!(s.acked_stored, s.batches_closed);
    assert_eq!(s.batches_sent, s.batches_closed);
    assert_eq!(
        (s.rejected, s.retried, s.batches_dropped, s.skipped_invalid),
        (0, 0, 0, 0),
        "{s}"
    );
    if window >= 21 {
        assert_eq!(s.spooled, 0, "{s}");
    } else {
        assert!(s.spooled > 0, "{s}");
    }
    assert_eq!(s.spool_bytes, 0);
    assert_eq!(spool_files(spool.path()), 0);
}

/// (a) Normal delivery, with each compression: every record exactly once.
#[test]
fn normal_delivery_zstd() {
    init_logs();
    deliver_all_once(Compression::Zstd, "zstd", 32);
}

#[test]
fn normal_delivery_gzip() {
    init_logs();
    deliver_all_once(Compression::Gzip, "gzip", 32);
}

#[test]
fn normal_delivery_uncompressed() {
    init_logs();
    deliver_all_once(Compression::None, "identity", 32);
}

/// A burst beyond the in-memory window goes through the spool.
#[test]
fn burst_beyond_window_is_spooled_then_delivered() {
    init_logs();
    deliver_all_once(Compression::Zstd, "zstd", 2);
}

/// (b) The aggregator is down for a while, then comes up: batches wait in the spool, then are
/// all delivered once and the spool is emptied.
#[test]
fn server_down_then_up() {
    init_logs();
    let addr = free_addr();
    let spool = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(&format!("http://{addr}"));
    c.spool_dir = Some(spool.path().to_owned());
    let h = Exporter::start(c).expect("start");
    let stats = h.stats();
    send_all(&h, 0..50);
    wait_until("5 batches spooled", Duration::from_secs(10), || {
        let s = stats.snapshot();
        s.batches_closed == 5 && spool_files(spool.path()) == 5
    });
    // Keep it down through a few reconnect attempts.
    wait_until("reconnect attempts", Duration::from_secs(10), || {
        stats.snapshot().reconnects >= 3
    });
    let s = stats.snapshot();
    // Batches closed before the first connect failure are written ahead (`journaled`), the
    // rest because the aggregator is unreachable (`spooled`): all five are on disk.
    assert!(
        s.spooled + s.journaled >= 5 && s.spool_bytes > 0 && s.connect_errors >= 3,
        "{s}"
    );
    assert_eq!(s.records_delivered, 0);

    let fake = Fake::new(stored());
    let _server = Server::start(&fake, addr);
    wait_until("delivery", Duration::from_secs(10), || {
        stats.snapshot().records_delivered == 50
    });
    send_all(&h, 50..60);
    wait_until("delivery", Duration::from_secs(10), || {
        stats.snapshot().records_delivered == 60
    });
    let s = h.shutdown(Duration::from_secs(5));
    assert_eq!(sorted(fake.stored_trace_ids()), expect_ids(0..60));
    assert_eq!(s.spool_bytes, 0, "{s}");
    assert_eq!(spool_files(spool.path()), 0);
    assert_eq!(s.batches_dropped, 0);
    assert_eq!(s.acked_duplicate, 0);
}

/// (b') The aggregator dies mid-stream: unacknowledged batches are spooled and resent after it
/// comes back; nothing is lost, and what was stored twice is acknowledged DUPLICATE.
#[test]
fn server_restart_mid_stream() {
    init_logs();
    let fake = Fake::new(stored());
    let server = Server::start(&fake, "127.0.0.1:0".parse().expect("addr"));
    let addr = server.addr;
    let spool = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(&server.url());
    c.spool_dir = Some(spool.path().to_owned());
    let h = Exporter::start(c).expect("start");
    let stats = h.stats();
    send_all(&h, 0..30);
    wait_until("first delivery", Duration::from_secs(10), || {
        stats.snapshot().records_delivered == 30
    });
    drop(server);
    send_all(&h, 30..60);
    wait_until("stream loss noticed", Duration::from_secs(10), || {
        stats.snapshot().connect_errors >= 1 && stats.snapshot().batches_closed == 6
    });
    let _server = Server::start(&fake, addr);
    wait_until("delivery after restart", Duration::from_secs(15), || {
        stats.snapshot().records_delivered == 60
    });
    let s = h.shutdown(Duration::from_secs(5));
    assert_eq!(sorted(fake.stored_trace_ids()), expect_ids(0..60));
    // A batch says when it may have reached an aggregator before (so that one looks in storage).
    let mut receipts: HashMap<u64, usize> = HashMap::new();
    for b in &fake.log().received {
        let n = receipts.entry(b.sequence).or_default();
        *n += 1;
        if *n > 1 {
            assert!(b.resend, "receipt {n} of batch {} not flagged", b.sequence);
        } else if b.sequence <= 3 {
            assert!(!b.resend, "first send of batch {} flagged", b.sequence);
        }
    }
    assert_eq!(spool_files(spool.path()), 0);
    assert_eq!(s.batches_dropped, 0, "{s}");
}

/// (b'') Two aggregator replicas: when the one in use dies, the next batches go to the other at
/// once (no backoff while another replica is untried); when that one dies too and the first is
/// back, they go there. Every record is stored, none lost.
#[test]
fn fails_over_between_replicas() {
    init_logs();
    let fakes = [Fake::new(stored()), Fake::new(stored())];
    let mut servers: Vec<Option<Server>> = fakes
        .iter()
        .map(|f| Some(Server::start(f, "127.0.0.1:0".parse().expect("addr"))))
        .collect();
    let addrs: Vec<SocketAddr> = servers.iter().flatten().map(|s| s.addr).collect();
    let spool = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(&format!("http://{}", addrs[0]));
    c.urls.push(format!("http://{}", addrs[1]));
    c.spool_dir = Some(spool.path().to_owned());
    let h = Exporter::start(c).expect("start");
    let stats = h.stats();
    send_all(&h, 0..30);
    wait_until("first delivery", Duration::from_secs(10), || {
        stats.snapshot().records_delivered == 30
    });
    let first = usize::from(fakes[0].stored_trace_ids().is_empty());
    let other = 1 - first;
    assert!(
        fakes[other].stored_trace_ids().is_empty(),
        "one replica at a time"
    );
    servers[first] = None;
    let t = Instant::now();
    send_all(&h, 30..60);
    wait_until(
        "delivery through the other replica",
        Duration::from_secs(10),
        || stats.snapshot().records_delivered == 60,
    );
    let failover = t.elapsed();
    // Batches in flight when the first died are resent to the other: a lost ack may store one
    // twice across replicas (the aggregators recognise it through ClickHouse), never lose one.
    let mut all: Vec<String> = fakes.iter().flat_map(|f| f.stored_trace_ids()).collect();
    all.dedup();
    assert_eq!(sorted(all).into_iter().collect::<HashSet<_>>().len(), 60);
    assert!(fakes[other].stored_trace_ids().len() >= 30);
    // And back: the other dies, the first returns on its address.
    servers[other] = None;
    servers[first] = Some(Server::start(&fakes[first], addrs[first]));
    send_all(&h, 60..70);
    wait_until(
        "delivery after the first came back",
        Duration::from_secs(15),
        || stats.snapshot().records_delivered == 70,
    );
    let s = h.shutdown(Duration::from_secs(5));
    let ids: HashSet<String> = fakes.iter().flat_map(|f| f.stored_trace_ids()).collect();
    assert_eq!(ids, expect_ids(0..70).into_iter().collect::<HashSet<_>>());
    assert!(s.failovers >= 2, "{s}");
    assert_eq!(s.batches_dropped, 0, "{s}");
    assert_eq!(spool_files(spool.path()), 0);
    eprintln!("failover: 30 records delivered through the other replica {failover:?} after the first died");
}

/// (b''') A replica that answers only RETRY (its ClickHouse server is down) is left for the
/// other after a few answers; everything is stored there.
#[test]
fn leaves_a_replica_that_cannot_store() {
    init_logs();
    let stuck = Fake::new(Box::new(|_, _| AckStatus::Retry));
    let good = Fake::new(stored());
    let servers = [
        Server::start(&stuck, "127.0.0.1:0".parse().expect("addr")),
        Server::start(&good, "127.0.0.1:0".parse().expect("addr")),
    ];
    let spool = tempfile::tempdir().expect("tempdir");
    // Both orders: whichever replica a node starts on, the batches end up stored.
    for (i, urls) in [[0, 1], [1, 0]].into_iter().enumerate() {
        let mut c = cfg(&servers[urls[0]].url());
        c.urls.push(servers[urls[1]].url());
        c.spool_dir = Some(spool.path().to_owned());
        let h = Exporter::start(c).expect("start");
        let stats = h.stats();
        let ids = (i as u64 * 30)..(i as u64 * 30 + 30);
        send_all(&h, ids);
        wait_until(
            "delivery through the replica that stores",
            Duration::from_secs(15),
            || stats.snapshot().records_delivered == 30,
        );
        let s = h.shutdown(Duration::from_secs(5));
        assert_eq!(s.batches_dropped, 0, "{s}");
    }
    assert!(stuck.stored_trace_ids().is_empty());
    assert_eq!(sorted(good.stored_trace_ids()), expect_ids(0..60));
}

/// (c) RETRY twice, then STORED: each batch is resent and stored once.
#[test]
fn retry_then_stored() {
    init_logs();
    let fake = Fake::new(Box::new(|_, n| {
        if n <= 2 {
            AckStatus::Retry
        } else {
            AckStatus::Stored
        }
    }));
    let server = Server::start(&fake, "127.0.0.1:0".parse().expect("addr"));
    let h = Exporter::start(cfg(&server.url())).expect("start");
    let stats = h.stats();
    send_all(&h, 0..30);
    wait_until("delivery", Duration::from_secs(15), || {
        stats.snapshot().records_delivered == 30
    });
    let s = h.shutdown(Duration::from_secs(5));
    assert_eq!(sorted(fake.stored_trace_ids()), expect_ids(0..30));
    let log = fake.log();
    assert_eq!(log.stored.len(), 3);
    assert!(log.seen.values().all(|&n| n == 3), "{:?}", log.seen);
    assert_eq!(log.received.len(), 9);
    assert_eq!(
        (s.retried, s.batches_sent, s.acked_stored),
        (6, 9, 3),
        "{s}"
    );
    assert_eq!(s.connect_errors, 0);
}

/// (d) REJECTED: the batch is dropped, counted and never resent; the others are stored.
#[test]
fn rejected_is_dropped_and_counted() {
    init_logs();
    let fake = Fake::new(Box::new(|b, _| {
        if b.sequence == 2 {
            AckStatus::Rejected
        } else {
            AckStatus::Stored
        }
    }));
    let server = Server::start(&fake, "127.0.0.1:0".parse().expect("addr"));
    let h = Exporter::start(cfg(&server.url())).expect("start");
    let stats = h.stats();
    send_all(&h, 0..30);
    wait_until("acks", Duration::from_secs(10), || {
        let s = stats.snapshot();
        s.acked_stored == 2 && s.rejected == 1
    });
    // Give a resend (which must not happen) a chance.
    std::thread::sleep(Duration::from_millis(300));
    let s = h.shutdown(Duration::from_secs(5));
    assert_eq!(s.rejected, 1, "{s}");
    assert_eq!(s.records_delivered, 20);
    let log = fake.log();
    let rejected: Vec<_> = log.received.iter().filter(|b| b.sequence == 2).collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(log.received.len(), 3);
    assert_eq!(log.stored.len(), 2);
}

/// (e) Wrong token: refused streams are counted and retried with growing delays; nothing is
/// delivered, nothing crashes, the batches wait in the spool.
#[test]
fn wrong_token_is_retried_with_backoff() {
    init_logs();
    let fake = Fake::with_token(Some("right"), stored());
    let server = Server::start(&fake, "127.0.0.1:0".parse().expect("addr"));
    let spool = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(&server.url());
    c.token = Some("wrong".into());
    c.backoff_initial = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(400);
    c.spool_dir = Some(spool.path().to_owned());
    let h = Exporter::start(c).expect("start");
    let stats = h.stats();
    send_all(&h, 0..10);
    wait_until("refusals", Duration::from_secs(10), || {
        stats.snapshot().unauthenticated >= 6
    });
    let s = h.shutdown(Duration::from_millis(200));
    assert!(s.unauthenticated >= 6 && s.reconnects >= 5, "{s}");
    assert_eq!(s.records_delivered, 0);
    assert!(
        s.spooled + s.journaled >= 1 && spool_files(spool.path()) == 1,
        "{s}"
    );
    let log = fake.log();
    assert!(log.stored.is_empty() && log.received.is_empty());
    // Backoff: the delays between attempts grow (20 ms doubling, jittered to [d/2, d]).
    let gaps: Vec<Duration> = log
        .unauthenticated
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect();
    assert!(gaps[0] >= Duration::from_millis(10), "{gaps:?}");
    assert!(gaps[4] >= Duration::from_millis(160), "{gaps:?}");

    // The right token delivers what was spooled.
    let mut c = cfg(&server.url());
    c.token = Some("right".into());
    c.spool_dir = Some(spool.path().to_owned());
    drop(log);
    let h = Exporter::start(c).expect("start");
    let stats = h.stats();
    wait_until("delivery", Duration::from_secs(10), || {
        stats.snapshot().records_delivered == 10
    });
    h.shutdown(Duration::from_secs(1));
    assert_eq!(sorted(fake.stored_trace_ids()), expect_ids(0..10));
    assert_eq!(spool_files(spool.path()), 0);
}

/// (f) Spool cap: beyond it the oldest batches are evicted (counted); the newest survive and
/// are delivered once the aggregator is up.
#[test]
fn spool_cap_evicts_oldest() {
    init_logs();
    let addr = free_addr();
    let spool = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(&format!("http://{addr}"));
    c.batch.max_requests = 1;
    c.spool_dir = Some(spool.path().to_owned());
    c.spool_max_bytes = 3_000;
    let h = Exporter::start(c).expect("start");
    let stats = h.stats();
    wait_until("first connect failure", Duration::from_secs(5), || {
        stats.snapshot().connect_errors >= 1
    });
    send_all(&h, 0..20);
    wait_until("20 batches spooled", Duration::from_secs(10), || {
        stats.snapshot().spooled == 20
    });
    let s = stats.snapshot();
    assert!(s.spool_evicted > 0, "{s}");
    assert!(s.spool_bytes <= 3_000, "{s}");
    assert_eq!(s.batches_dropped, s.spool_evicted, "{s}");
    let kept = 20 - s.spool_evicted;
    assert_eq!(spool_files(spool.path()) as u64, kept);
    let on_disk: u64 = std::fs::read_dir(spool.path())
        .expect("list")
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    assert!(on_disk <= 3_000);

    let fake = Fake::new(stored());
    let _server = Server::start(&fake, addr);
    wait_until("delivery", Duration::from_secs(10), || {
        stats.snapshot().records_delivered == kept
    });
    let s = h.shutdown(Duration::from_secs(5));
    // The newest `kept` records survived.
    assert_eq!(sorted(fake.stored_trace_ids()), expect_ids(20 - kept..20));
    assert_eq!(s.spool_bytes, 0);
}

/// Spool files left by an earlier run are resent by the next one with their own boot id and
/// sequence numbers (which collide with the new run's).
#[test]
fn spool_survives_restart() {
    init_logs();
    let addr = free_addr();
    let spool = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(&format!("http://{addr}"));
    c.spool_dir = Some(spool.path().to_owned());
    let h = Exporter::start(c.clone()).expect("start");
    let first_boot = h.boot_id().to_owned();
    send_all(&h, 0..25);
    // Shut down without a reachable aggregator: the open batch is closed and spooled too.
    let s = h.shutdown(Duration::from_millis(100));
    assert_eq!(s.batches_closed, 3, "{s}");
    assert_eq!(spool_files(spool.path()), 3);
    assert_eq!(s.batches_dropped, 0);

    let fake = Fake::new(stored());
    let _server = Server::start(&fake, addr);
    let h = Exporter::start(c).expect("restart");
    let second_boot = h.boot_id().to_owned();
    assert_ne!(first_boot, second_boot);
    send_all(&h, 100..125);
    let stats = h.stats();
    wait_until("delivery", Duration::from_secs(10), || {
        stats.snapshot().records_delivered == 50
    });
    h.shutdown(Duration::from_secs(5));
    let ids = fake.stored_trace_ids();
    assert_eq!(sorted(ids), expect_ids((0..25).chain(100..125)));
    let log = fake.log();
    let first: Vec<u64> = log
        .stored
        .keys()
        .filter(|k| k.1 == first_boot)
        .map(|k| k.2)
        .collect();
    let second: Vec<u64> = log
        .stored
        .keys()
        .filter(|k| k.1 == second_boot)
        .map(|k| k.2)
        .collect();
    assert_eq!(first, vec![1, 2, 3]);
    assert_eq!(second, vec![1, 2, 3]);
    assert_eq!(spool_files(spool.path()), 0);
}

/// Invalid records are skipped and counted; the rest of their batch is delivered.
#[test]
fn invalid_records_are_skipped() {
    init_logs();
    let fake = Fake::new(stored());
    let server = Server::start(&fake, "127.0.0.1:0".parse().expect("addr"));
    let h = Exporter::start(cfg(&server.url())).expect("start");
    let mut bad = record(1);
    bad.trace_id = TraceId::default();
    h.send(bad);
    let mut bad = record(2);
    bad.spans[1].parent_span_id = Some(SpanId::default());
    h.send(bad);
    send_all(&h, 3..8);
    let stats = h.stats();
    wait_until("delivery", Duration::from_secs(10), || {
        stats.snapshot().records_delivered == 5
    });
    let s = h.shutdown(Duration::from_secs(5));
    assert_eq!(s.skipped_invalid, 2);
    assert_eq!(sorted(fake.stored_trace_ids()), expect_ids(3..8));
}

/// A bad `--export` URL is refused at start with one clear line (before anything is loaded).
#[test]
fn cli_rejects_bad_export_settings() {
    init_logs();
    let run = |args: &[&str]| {
        let pid = std::process::id().to_string();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_node-probe"))
            .args(["--pid", &pid])
            .args(args)
            .env("RUST_LOG", "off")
            .env_remove("INFERSCOPE_TOKEN")
            .output()
            .expect("run node-probe");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().to_string_lossy().into_owned();
    let (code, err) = run(&["--export", "ftp://x:1", "--spool-dir", &spool]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("bad export URL"), "{err}");
    // Every replica's URL is checked, comma-separated or repeated.
    let (code, err) = run(&["--export", "http://x:1,ftp://y:2", "--spool-dir", &spool]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("bad export URL") && err.contains("ftp://y:2"),
        "{err}"
    );
    let (code, err) = run(&[
        "--export",
        "http://127.0.0.1:1",
        "--export",
        "http://10.0.0.9:7070",
        "--token",
        "t",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("10.0.0.9"), "{err}");
    let (code, err) = run(&["--export", "https://x:1", "--spool-dir", &spool]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--export-tls-ca"), "{err}");
    let (code, err) = run(&["--export", "http://x:1", "--export-compression", "lz4"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = run(&["--export", "http://x:1", "--batch-max-requests", "0"]);
    assert_eq!(code, Some(2), "{err}");
}

/// TLS with a private CA (`tests/fixtures/tls/`: a P-256 CA and a server certificate for
/// `localhost` and 127.0.0.1, valid until 2126, made with `openssl req -x509` / `openssl x509
/// -req`): delivered; and refused by a client that does not trust that CA's server.
#[test]
fn tls_with_private_ca() {
    init_logs();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let read = |f: &str| std::fs::read(dir.join(f)).expect("fixture");
    let fake = Fake::with_token(Some("s3cret"), stored());
    let server = Server::start_with(
        &fake,
        "127.0.0.1:0".parse().expect("addr"),
        Some((read("server.pem"), read("server.key"))),
    );
    let mut c = cfg(&format!("https://localhost:{}", server.addr.port()));
    c.tls_ca = Some(dir.join("ca.pem"));
    c.token = Some("s3cret".into());
    let h = Exporter::start(c).expect("start");
    send_all(&h, 0..15);
    let stats = h.stats();
    wait_until("delivery over TLS", Duration::from_secs(10), || {
        stats.snapshot().records_delivered == 15
    });
    let s = h.shutdown(Duration::from_secs(5));
    assert_eq!(s.connect_errors, 0, "{s}");
    assert_eq!(sorted(fake.stored_trace_ids()), expect_ids(0..15));

    // The server certificate is not a CA: trusting it alone does not verify the chain.
    let mut c = cfg(&format!("https://localhost:{}", server.addr.port()));
    c.tls_ca = Some(dir.join("server.pem"));
    c.token = Some("s3cret".into());
    let h = Exporter::start(c).expect("start");
    let stats = h.stats();
    wait_until("refused handshakes", Duration::from_secs(10), || {
        stats.snapshot().connect_errors >= 2
    });
    let s = h.shutdown(Duration::ZERO);
    assert_eq!(s.records_delivered, 0, "{s}");
}

/// Shutdown closes the open batch (long before its time limit) and delivers it within the
/// drain time.
#[test]
fn shutdown_drains_open_batch() {
    init_logs();
    let fake = Fake::new(stored());
    let server = Server::start(&fake, "127.0.0.1:0".parse().expect("addr"));
    let spool = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(&server.url());
    c.batch.max_age = Duration::from_secs(3600);
    c.batch.max_requests = 1000;
    c.spool_dir = Some(spool.path().to_owned());
    let h = Exporter::start(c).expect("start");
    send_all(&h, 0..7);
    let s = h.shutdown(Duration::from_secs(5));
    assert_eq!(s.records_delivered, 7, "{s}");
    assert_eq!(sorted(fake.stored_trace_ids()), expect_ids(0..7));
    assert_eq!(spool_files(spool.path()), 0);
}

/// An aggregator that stops acknowledging: after the ack timeout the stream is reopened and the
/// batch resent; it is stored once.
#[test]
fn missing_ack_reopens_the_stream() {
    init_logs();
    let fake = Fake::new(Box::new(|_, n| {
        if n == 1 {
            AckStatus::Unspecified
        } else {
            AckStatus::Stored
        }
    }));
    let server = Server::start(&fake, "127.0.0.1:0".parse().expect("addr"));
    let mut c = cfg(&server.url());
    c.ack_timeout = Duration::from_millis(300);
    let h = Exporter::start(c).expect("start");
    send_all(&h, 0..10);
    let stats = h.stats();
    wait_until("delivery", Duration::from_secs(10), || {
        stats.snapshot().records_delivered == 10
    });
    let s = h.shutdown(Duration::from_secs(5));
    assert!(s.connect_errors >= 1 && s.batches_sent >= 2, "{s}");
    assert_eq!(sorted(fake.stored_trace_ids()), expect_ids(0..10));
    assert_eq!(
        fake.log().seen.values().copied().collect::<Vec<_>>(),
        vec![2]
    );
}

/// Spool files of `dir`, oldest first.
fn spool_paths(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "batch"))
        .collect();
    v.sort();
    v
}

/// Drill: spool files truncated, overwritten with garbage and emptied between two runs are
/// refused by their checks, moved to `corrupt/` and counted; the intact ones are delivered once.
#[test]
fn damaged_spool_files_are_quarantined_and_the_rest_delivered() {
    init_logs();
    let addr = free_addr();
    let spool = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(&format!("http://{addr}"));
    c.spool_dir = Some(spool.path().to_owned());
    let h = Exporter::start(c.clone()).expect("start");
    send_all(&h, 0..50);
    let s = h.shutdown(Duration::from_millis(100));
    assert_eq!(s.batches_closed, 5, "{s}");
    let files = spool_paths(spool.path());
    assert_eq!(files.len(), 5);
    // One cut in the middle of its payload (a prefix of a protobuf can still decode), one
    // overwritten with garbage of the same length, one emptied (a full disk at a bad moment).
    let len = std::fs::metadata(&files[1]).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&files[1])
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate");
    std::fs::write(&files[2], vec![0xff; len as usize]).expect("garbage");
    std::fs::write(&files[3], b"").expect("empty");

    let fake = Fake::new(stored());
    let _server = Server::start(&fake, addr);
    let h = Exporter::start(c).expect("restart");
    let stats = h.stats();
    wait_until("delivery and quarantine", Duration::from_secs(10), || {
        let s = stats.snapshot();
        s.records_delivered == 20 && s.spool_corrupt == 3
    });
    let s = h.shutdown(Duration::from_secs(5));
    assert_eq!(
        sorted(fake.stored_trace_ids()),
        expect_ids((0..10).chain(40..50))
    );
    assert_eq!((s.spool_corrupt, s.batches_dropped), (3, 3), "{s}");
    assert_eq!(spool_files(spool.path()), 0);
    let quarantined = spool_paths(&spool.path().join("corrupt"));
    let names = |v: &[std::path::PathBuf]| -> Vec<_> {
        v.iter()
            .map(|p| p.file_name().map(|n| n.to_owned()))
            .collect()
    };
    assert_eq!(names(&quarantined), names(&files[1..4]));
}

/// Drill: a full disk under the spool (a 16 KiB tmpfs) while the aggregator is away. Writes that
/// fail are counted, batches stay in memory while the window has room, the rest are dropped and
/// counted; every batch not counted as dropped is delivered once the aggregator is back. Needs
/// root (mount); required when `INFERSCOPE_REQUIRE_BPF=1`.
#[test]
fn full_disk_under_the_spool_is_counted_not_silent() {
    init_logs();
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var("INFERSCOPE_REQUIRE_BPF").as_deref() != Ok("1"),
            "full-disk drill required but not root"
        );
        eprintln!("SKIPPED full_disk_under_the_spool_is_counted_not_silent: needs root");
        return;
    }
    let mnt = tempfile::tempdir().expect("tempdir");
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k,mode=0700", "inferscope-full"])
        .arg(mnt.path())
        .status()
        .expect("mount")
        .success();
    assert!(ok, "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mnt.path().to_owned());
    let addr = free_addr();
    let mut c = cfg(&format!("http://{addr}"));
    c.spool_dir = Some(mnt.path().join("spool"));
    c.spool_max_bytes = 1 << 30;
    let h = Exporter::start(c).expect("start");
    let stats = h.stats();
    wait_until("first connect failure", Duration::from_secs(5), || {
        stats.snapshot().connect_errors >= 1
    });
    const N: u64 = 400;
    send_all(&h, 0..N);
    wait_until("all batches closed", Duration::from_secs(10), || {
        stats.snapshot().batches_closed == N / 10
    });
    let s = stats.snapshot();
    assert!(s.spool_errors >= 1, "the disk never filled: {s}");
    assert!(s.batches_dropped >= 1, "{s}");
    let fake = Fake::new(stored());
    let _server = Server::start(&fake, addr);
    // The last batch's drop may be counted just after its close: read the count as it ends up.
    wait_until("delivery", Duration::from_secs(15), || {
        let s = stats.snapshot();
        s.records_delivered > 0 && s.records_delivered == N - 10 * s.batches_dropped
    });
    let s = h.shutdown(Duration::from_secs(5));
    let want = N - 10 * s.batches_dropped;
    let ids = fake.stored_trace_ids();
    assert_eq!(ids.len() as u64, want, "{s}");
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "duplicates stored");
    common::figure(&format!(
        "full-disk drill: {N} records, {} batches spooled, {} spool write errors, {} batches dropped (counted), {want} delivered",
        s.spooled, s.spool_errors, s.batches_dropped
    ));
}

/// Copies the spool files of `from` into `to` (what a SIGKILL would leave on disk).
fn snapshot_spool(from: &Path, to: &Path) {
    for p in spool_paths(from) {
        std::fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
    }
}

/// Write-ahead: every closed batch is on disk while it waits for its ack, so a probe killed at
/// that moment loses nothing closed: the next run (here, on a copy of the spool taken while
/// the batches were in flight) resends them. Without write-ahead, nothing is on disk.
#[test]
fn written_ahead_batches_survive_a_kill() {
    init_logs();
    for write_ahead in [true, false] {
        let hung = Fake::new(Box::new(|_, _| AckStatus::Unspecified));
        let server = Server::start(&hung, "127.0.0.1:0".parse().expect("addr"));
        let spool = tempfile::tempdir().expect("tempdir");
        let mut c = cfg(&server.url());
        c.spool_dir = Some(spool.path().to_owned());
        c.write_ahead = write_ahead;
        let h = Exporter::start(c.clone()).expect("start");
        send_all(&h, 0..25);
        let stats = h.stats();
        wait_until("3 batches sent", Duration::from_secs(10), || {
            stats.snapshot().batches_sent == 3
        });
        let s = stats.snapshot();
        let left = tempfile::tempdir().expect("tempdir");
        snapshot_spool(spool.path(), left.path());
        h.shutdown(Duration::from_millis(50));
        drop(server);
        if !write_ahead {
            assert_eq!((s.journaled, spool_files(left.path())), (0, 0), "{s}");
            continue;
        }
        assert_eq!((s.journaled, s.spooled), (3, 0), "{s}");
        assert_eq!(spool_files(left.path()), 3);

        let fake = Fake::new(stored());
        let server = Server::start(&fake, "127.0.0.1:0".parse().expect("addr"));
        c.urls = vec![server.url()];
        c.spool_dir = Some(left.path().to_owned());
        let h = Exporter::start(c).expect("restart");
        let stats = h.stats();
        wait_until("resent", Duration::from_secs(10), || {
            stats.snapshot().records_delivered == 25
        });
        h.shutdown(Duration::from_secs(5));
        assert_eq!(sorted(fake.stored_trace_ids()), expect_ids(0..25));
        assert_eq!(
            spool_files(left.path()),
            0,
            "settled batches leave the spool"
        );
    }
}
