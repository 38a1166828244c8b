//! The aggregator on a real ClickHouse cluster (`scripts/clickhouse-cluster.sh`: ZooKeeper,
//! shard 1 = replicas ch1 + ch2, shard 2 = ch3): two aggregator replicas entering the cluster
//! through different servers, against one aggregator on a single server holding the same data.
//!
//! - Every query answers the same on the cluster and on the single server.
//! - The same batches resent crosswise through the other replica are stored once
//!   (`count()` = `uniqExact(trace_id)` = requests sent).
//! - With a replica of shard 1 down, inserts go on (the other replica takes them) and the
//!   stopped one catches up; with an aggregator's own entry server down, that aggregator answers
//!   RETRY and the other replica stores the batches (what node-probe's failover does).
//!
//! One test, in phases: it stops and starts cluster servers, which no other test may see.
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::ingest::*;
use inferscope_proto::v1::{ack::Status as AckStatus, Ack, Batch};
use serde_json::Value;

const CLUSTER: &str = "inferscope_cluster";

fn node_url(n: u32) -> String {
    let base: u32 = std::env::var("INFERSCOPE_CH_CLUSTER_HTTP_BASE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(18200);
    format!("http://127.0.0.1:{}", base + n)
}

fn cluster_script(args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/clickhouse-cluster.sh");
    let st = Command::new("bash")
        .arg(script)
        .args(args)
        .status()
        .expect("run clickhouse-cluster.sh");
    assert!(st.success(), "clickhouse-cluster.sh {args:?} failed");
}

fn cluster_available() -> bool {
    let ok = (1..=3).all(|n| {
        Command::new("curl")
            .args(["-sf", "-m", "2", &format!("{}/ping", node_url(n))])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        if std::env::var("INFERSCOPE_REQUIRE_BPF").as_deref() == Ok("1") {
            panic!("the ClickHouse cluster is required: start it with scripts/clickhouse-cluster.sh start");
        }
        eprintln!("SKIPPED: no ClickHouse cluster (scripts/clickhouse-cluster.sh start)");
    }
    ok
}

/// A query on server `n` of the cluster (or the single server: `n` = 0).
fn ch(n: u32, q: &str) -> String {
    let url = if n == 0 { ch_url() } else { node_url(n) };
    let out = Command::new("curl")
        .args(["-sS", "--data-binary", q, &format!("{url}/")])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn one(grpc: std::net::SocketAddr, b: Batch) -> AckStatus {
    let acks: Vec<Ack> = send(grpc, Some("s3cret"), vec![b]).await.unwrap();
    AckStatus::try_from(acks[0].status).unwrap()
}

/// The API's answer as JSON.
fn api(http: std::net::SocketAddr, path: &str) -> Value {
    let body = ureq_get(&format!("http://{http}{path}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

async fn start_on_cluster(name: &str, node: u32, db: Option<String>) -> Agg {
    Agg::start_with(name, move |c| {
        c.store.url = node_url(node);
        c.store.cluster = Some(CLUSTER.into());
        if let Some(db) = db {
            c.store.database = db;
        }
    })
    .await
}

/// Waits until server `n` holds `want` rows of `db.table_local`.
fn wait_local(n: u32, table: &str, want: u64) {
    let t = Instant::now();
    loop {
        let got = ch(n, &format!("SELECT count() FROM {table}"));
        if got == want.to_string() {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "ch{n}: {table} holds {got}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_answers_like_one_server_stores_once_and_survives_a_replica() {
    if !(ch_available() && cluster_available()) {
        return;
    }
    let t_start = Instant::now();
    let a = start_on_cluster("cl_a", 1, None).await;
    let b = start_on_cluster("cl_b", 3, Some(a.db.clone())).await;
    let single = Agg::start("cl_single").await;
    let db = a.db.clone();
    eprintln!(
        "cluster schema applied and replicas up in {:?}",
        t_start.elapsed()
    );

    // Phase 1: the same batches, split over the two replicas, and all to the single server.
    let t0 = now_ns() - 600_000_000_000;
    let batches: Vec<Batch> = (1..=6).map(|s| varied_batch(s, 60, t0)).collect();
    for (i, x) in batches.iter().enumerate() {
        let via = if i % 2 == 0 { a.grpc } else { b.grpc };
        assert_eq!(one(via, x.clone()).await, AckStatus::Stored);
        assert_eq!(one(single.grpc, x.clone()).await, AckStatus::Stored);
    }
    // Resent crosswise, flagged as node-probe flags a resend: stored once.
    for (i, x) in batches.iter().enumerate() {
        let via = if i % 2 == 0 { b.grpc } else { a.grpc };
        let mut again = x.clone();
        again.resend = true;
        assert_eq!(
            one(via, again).await,
            AckStatus::Duplicate,
            "batch {}",
            i + 1
        );
    }
    let sent = 360;
    let q = format!("SELECT count(), uniqExact(trace_id) FROM {db}.requests FORMAT TSV");
    assert_eq!(ch(1, &q), format!("{sent}\t{sent}"));
    assert_eq!(
        ch(3, &q),
        format!("{sent}\t{sent}"),
        "the same through another server"
    );
    assert_eq!(
        ch(1, &format!("SELECT count() FROM {db}.spans")),
        sent.to_string()
    );
    // Both shards hold data; shard 1's replicas hold the same.
    let l1 = ch(1, &format!("SELECT count() FROM {db}.requests_local"));
    let l3 = ch(3, &format!("SELECT count() FROM {db}.requests_local"));
    assert!(l1 != "0" && l3 != "0", "{l1} + {l3}");
    wait_local(2, &format!("{db}.requests_local"), l1.parse().unwrap());

    // Every query answers the same on the cluster and on one server.
    let w = format!(
        "from={}&to={}",
        t0 / 1_000_000_000 - 60,
        t0 / 1_000_000_000 + 3600
    );
    let trace = "c1c1c1c1c1c1c1c100000000000003ea"; // request 1002 (batch 1)
    let paths = [
        format!("/api/v1/breakdown?{w}"),
        format!("/api/v1/breakdown?{w}&model=m-large&quantiles=0.5,0.9,0.99"),
        format!("/api/v1/requests?{w}&limit=1000&sort=e2e&order=desc"),
        format!("/api/v1/requests?{w}&status=5xx&node=node-b"),
        format!("/api/v1/filters?{w}"),
        format!("/api/v1/groups?{w}&by=model"),
        format!("/api/v1/groups?{w}&by=node"),
        format!("/api/v1/timeseries?{w}"),
        format!("/api/v1/histogram?{w}"),
        format!("/api/v1/explain?{w}"),
        format!("/api/v1/traces/{trace}"),
    ];
    for p in &paths {
        let (on_cluster, on_one) = (api(a.http, p), api(single.http, p));
        // Not an empty answer on both sides: each path selects data.
        let text = on_one.to_string();
        assert!(
            ["m-small", "m-large", "node-b", "\"count\":"]
                .iter()
                .any(|w| text.contains(w)),
            "{p}: {text}"
        );
        assert_eq!(on_cluster, on_one, "{p}");
        assert_eq!(api(b.http, p), on_one, "{p} through the other replica");
    }
    eprintln!(
        "{} queries: identical answers on the cluster and on one server",
        paths.len()
    );
    // The rollups (a materialized view on every server over its local table) count each
    // request once, as on one server.
    let p = format!("/api/v1/breakdown?{w}&source=rollup");
    let (on_cluster, on_one) = (api(a.http, &p), api(single.http, &p));
    assert_eq!(on_cluster["count"], sent, "{on_cluster}");
    assert_eq!(on_one["count"], sent, "{on_one}");
    assert_eq!(on_cluster["samples"], on_one["samples"]);

    // Phase 2: a replica of shard 1 down: inserts go on, it catches up when back.
    cluster_script(&["stop", "2"]);
    for s in 7..=8 {
        assert_eq!(
            one(a.grpc, varied_batch(s, 60, t0)).await,
            AckStatus::Stored
        );
    }
    cluster_script(&["start", "2"]);
    let l1 = ch(1, &format!("SELECT count() FROM {db}.requests_local"));
    wait_local(2, &format!("{db}.requests_local"), l1.parse().unwrap());

    // Phase 3: aggregator A's own server down: A cannot store (RETRY, nothing acknowledged);
    // the batch goes to B, whose inserts reach shard 1 through ch2.
    cluster_script(&["stop", "1"]);
    let x = varied_batch(9, 60, t0);
    assert_eq!(one(a.grpc, x.clone()).await, AckStatus::Retry);
    let mut again = x;
    again.resend = true;
    assert_eq!(one(b.grpc, again).await, AckStatus::Stored);
    cluster_script(&["start", "1"]);
    let sent = 540;
    let q = format!("SELECT count(), uniqExact(trace_id) FROM {db}.requests FORMAT TSV");
    assert_eq!(ch(3, &q), format!("{sent}\t{sent}"));
    let l2 = ch(2, &format!("SELECT count() FROM {db}.requests_local"));
    wait_local(1, &format!("{db}.requests_local"), l2.parse().unwrap());
    // Rolled up once each through the failures too (replicas fetch parts, they do not re-run
    // the view).
    let roll = api(b.http, &format!("/api/v1/breakdown?{w}&source=rollup"));
    assert_eq!(roll["count"], sent, "{roll}");
    eprintln!(
        "cluster: {sent} requests stored once each through replica and server failures in {:?}",
        t_start.elapsed()
    );
    single.stop().await;
    b.stop().await;
    // A drops the database on a cluster server it reaches: ON CLUSTER for the others.
    let _ = a.stop.send(());
    let _ = a.server.await;
    ch(
        1,
        &format!("DROP DATABASE IF EXISTS {db} ON CLUSTER {CLUSTER}"),
    );
}
