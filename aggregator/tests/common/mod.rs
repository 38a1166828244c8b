//! Helpers shared by the integration tests that run against the local ClickHouse.
#![allow(dead_code)]
pub mod ingest;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use inferscope_aggregator::api::{router, ApiState};
use inferscope_aggregator::metrics::Metrics;
use inferscope_aggregator::store::rows::{RequestRow, StepRow};
use inferscope_aggregator::store::{Store, StoreConfig};
use serde_json::Value;

/// A millisecond in ns.
pub const MS: u64 = 1_000_000;
/// A second in ns.
pub const S: u64 = 1_000_000_000;

pub fn clickhouse_url() -> String {
    std::env::var("INFERSCOPE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

/// A store on a fresh database, or `None` (test skipped) when ClickHouse is unreachable.
pub async fn open_store(test: &str) -> Option<Store> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let cfg = StoreConfig {
        url: clickhouse_url(),
        database: format!("test_api_{}_{nanos}", std::process::id()),
        user: None,
        password: None,
        retention_days: 0,
        cluster: None,
    };
    match Store::open(&cfg, Duration::from_secs(2)).await {
        Ok(s) => Some(s),
        Err(e) => {
            if std::env::var("INFERSCOPE_REQUIRE_BPF").as_deref() == Ok("1") {
                panic!(
                    "ClickHouse at {} is required (INFERSCOPE_REQUIRE_BPF=1): {e}",
                    cfg.url
                );
            }
            eprintln!(
                "SKIPPED {test}: ClickHouse not reachable at {} ({e}); start it with `scripts/clickhouse.sh start`",
                cfg.url
            );
            None
        }
    }
}

/// A client whose default database is the store's: inserts escape the table name as one
/// identifier, so `db.table` cannot be passed.
pub fn db_client(store: &Store) -> clickhouse::Client {
    store.client().clone().with_database(&store.database)
}

pub async fn drop_db(store: &Store) {
    let _ = store
        .client()
        .query(&format!("DROP DATABASE IF EXISTS {}", store.database))
        .execute()
        .await;
}

/// Runs `body`, drops the database whatever happens, and re-raises a failure.
pub async fn with_db<F, Fut>(store: Store, body: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let res = tokio::spawn(body(store.clone())).await;
    drop_db(&store).await;
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}

pub async fn serve(store: Store) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(ApiState {
        store,
        metrics: Arc::new(Metrics::default()),
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// GET → (status, JSON body).
pub async fn get(addr: SocketAddr, path_and_query: &str) -> (u16, Value) {
    let url = format!("http://{addr}{path_and_query}");
    tokio::task::spawn_blocking(move || {
        let (code, body) = match ureq::get(&url).call() {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
            Err(e) => panic!("GET {url}: {e}"),
        };
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"));
        (code, v)
    })
    .await
    .unwrap()
}

/// The `inferscope` binary of this build (crate `inferscope-cli`, which links no server code):
/// next to this test's `deps/` folder. `cargo test --workspace` builds it (the crate has
/// integration tests of its own).
pub fn cli_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("inferscope"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p inferscope-cli` (or test the workspace)",
        bin.display()
    );
    bin
}

pub async fn cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(cli_binary())
            .args(&args)
            .env_remove("INFERSCOPE_API")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        );
        // Shown by the test harness when a test fails (or with --nocapture).
        println!("$ inferscope {}\n{stdout}{stderr}", args.join(" "));
        (out.status.code().unwrap_or(-1), stdout, stderr)
    })
    .await
    .unwrap()
}

pub fn secs(ns: u64) -> u32 {
    (ns / S) as u32
}

/// A synthetic request row: `phases` (frontend, queue, prefill, decode, delivery) make up
/// its e2e; without them, e2e is `e2e_if_unknown`.
#[allow(clippy::too_many_arguments)]
pub fn request(
    trace_id: String,
    start: u64,
    node: &str,
    engine: &str,
    model: &str,
    status: u16,
    outcome: &str,
    phases: Option<[u64; 5]>,
    e2e_if_unknown: u64,
    stream: bool,
    step_ids: Vec<u64>,
) -> RequestRow {
    let (e2e, ttft, frontend, queue, prefill, decode, delivery, eng) = match phases {
        Some([f, q, p, d, dl]) => {
            let eng = q + p + d + MS; // one ms between the phases, unattributed
            (
                f + eng + dl,
                f + q + p + 2 * MS,
                Some(f),
                Some(q),
                Some(p),
                Some(d),
                Some(dl),
                Some(eng),
            )
        }
        None => (
            e2e_if_unknown,
            e2e_if_unknown / 3,
            None,
            None,
            None,
            None,
            None,
            None,
        ),
    };
    RequestRow {
        start: secs(start),
        start_unix_ns: start,
        end_unix_ns: start + e2e,
        trace_id,
        node: node.into(),
        pid: 4242,
        engine: engine.into(),
        model: model.into(),
        method: "POST".into(),
        path: "/v1/completions".into(),
        status,
        outcome: outcome.into(),
        stream: u8::from(stream),
        e2e_ns: e2e,
        ttft_ns: ttft,
        tpot_ns: (stream && decode.is_some()).then(|| decode.unwrap_or(0) / 64),
        frontend_ns: frontend,
        queue_ns: queue,
        prefill_ns: prefill,
        decode_ns: decode,
        delivery_ns: delivery,
        engine_ttft_ns: queue.map(|q| q + prefill.unwrap_or(0)),
        engine_e2e_ns: eng,
        read_wait_ns: 20_000,
        req_bytes: 512,
        resp_bytes: 4096,
        chunks: if stream { 64 } else { 0 },
        engine_steps: step_ids.len() as u32,
        max_gap_ns: 5 * MS,
        client: "10.0.0.9:50000".into(),
        server: "10.0.0.1:8000".into(),
        response_id: "cmpl-1".into(),
        x_request_id: String::new(),
        engine_request_id: String::new(),
        gave_up: String::new(),
        step_ids,
        chunk_offsets_ns: if stream {
            vec![ttft, ttft + MS]
        } else {
            vec![]
        },
        batch_id: "test/1/1".into(),
        engine_instance: String::new(),
        netns: 4026531840,
        client_ip: "10.0.0.9".into(),
        client_port: 50000,
        server_ip: "10.0.0.1".into(),
        server_port: 8000,
        req_tcp_seq: Some(1000),
        resp_tcp_seq: None,
        // Streams: visible text one ms after the first token.
        first_text_ns: stream.then_some(ttft + MS),
        engine_output_offsets_ns: Vec::new(),
        // Streams the engine was followed for: its own gaps, a little under the wire's.
        engine_tpot_ns: (stream && decode.is_some()).then(|| decode.unwrap_or(0) * 9 / 640),
        engine_max_gap_ns: (stream && decode.is_some()).then(|| decode.unwrap_or(0) / 16),
        tags: Vec::new(),
        tenant: String::new(),
        // Non-streamed bodies carry usage.
        prompt_tokens: (!stream).then_some(9),
        completion_tokens: (!stream).then_some(64),
        // Requests with engine phases carry a GPU side (from their prefill and decode), and
        // those with a long decode waited in collectives.
        gpu_ns: prefill.zip(decode).map(|(p, d)| (p + d) * 3 / 4),
        gpu_cost_ns: prefill.zip(decode).map(|(p, d)| (p + d) / 4),
        gpu_host_bound_ns: prefill.map(|p| p / 10),
        gpu_upper_bound_steps: prefill.map(|_| 0),
        step_tokens: Vec::new(),
        collectives: decode.filter(|&d| d > 50 * MS).map(|_| 4),
        collective_wait_ns: decode.filter(|&d| d > 50 * MS).map(|d| d / 20),
        straggler_rank: decode.filter(|&d| d > 50 * MS).map(|_| 1),
        straggler_lag_ns: decode.filter(|&d| d > 50 * MS).map(|d| d / 40),
        hop_id: String::new(),
    }
}

/// Unix time now, in seconds.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Inserts `rows` into `table` of the store's database in one block.
pub async fn insert<T>(store: &Store, table: &str, rows: &[T])
where
    T: for<'a> clickhouse::Row<Value<'a> = T> + serde::Serialize + 'static,
{
    let mut ins = db_client(store).insert::<T>(table).await.unwrap();
    for r in rows {
        ins.write(r).await.unwrap();
    }
    ins.end().await.unwrap();
}

/// An engine step without span context (as steps stored before migration 4), in `requests`
/// batch units.
pub fn step_row(
    node: &str,
    instance: &str,
    step_id: u64,
    start_ns: u64,
    dur_ns: u64,
    batch_size: u32,
) -> StepRow {
    StepRow {
        start: (start_ns / S) as u32,
        node: node.into(),
        engine_instance: instance.into(),
        step_id,
        start_unix_ns: start_ns,
        end_unix_ns: start_ns + dur_ns,
        batch_size,
        trace_id: String::new(),
        span_id: String::new(),
        batch_unit: "requests".into(),
        tokens: 0,
        gpu_class: String::new(),
        gpu_ns: None,
        gpu_launch_ns: 0,
        graph_launches: 0,
        kernel_launches: 0,
        dtoh_bytes: 0,
        htod_bytes: 0,
        sync_wait_ns: 0,
        host_bound: 0,
        gpu_ranks: 0,
        gpu_upper_bound: 0,
        collectives: None,
        collective_wait_ns: 0,
        straggler_rank: None,
        straggler_lag_ns: 0,
    }
}
