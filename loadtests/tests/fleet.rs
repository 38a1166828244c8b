//! Scale-out on the real engine (issue 12's drill): vLLM → node-probe exporting to two aggregator
//! replicas (`--export A --export B`) → a real ClickHouse cluster (`scripts/clickhouse-cluster.sh`:
//! ZooKeeper, shard 1 = ch1 + ch2, shard 2 = ch3; aggregator A enters through ch1, B through
//! ch2). Under continuous load (the chain test's rate), in turn: the aggregator replica in use
//! killed (SIGKILL) for 60 s; then the ClickHouse server that the replica now in use enters
//! through (a replica of shard 1) stopped for 60 s, so that replica can only answer RETRY and
//! node-probe moves to the other. Every request must end up stored exactly once on the
//! `Distributed` tables: `count()` = `uniqExact(trace_id)` = requests sent.
//!
//! Needs root, the shared engine from `scripts/test.sh`, and the cluster.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inferscope_loadtests::fidelity::figure;
use inferscope_loadtests::harness::{
    bin, engine_root_clickhouse, free_port, kill, load_for, read_trace_log, repo, required,
    start_exporting_probe_with, Sent,
};

const TOKEN: &str = "fleet-token";
const CLUSTER: &str = "inferscope_cluster";
/// The chain test's load: 16 requests every 500 ms while an outage lasts.
const ROUND: u64 = 16;
const PACE: Duration = Duration::from_millis(500);
const MAX_ROUNDS: usize = 400;
const DRAIN_LIMIT: Duration = Duration::from_secs(240);

fn node_url(n: u32) -> String {
    let base: u32 = std::env::var("INFERSCOPE_CH_CLUSTER_HTTP_BASE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(18200);
    format!("http://127.0.0.1:{}", base + n)
}

/// A query through cluster server ch3 (never stopped here).
fn csql(q: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-m", "60", "--data-binary", q, &node_url(3)])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn cluster(args: &[&str]) {
    let st = Command::new("bash")
        .arg(repo().join("scripts/clickhouse-cluster.sh"))
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("clickhouse-cluster.sh");
    assert!(st.success(), "clickhouse-cluster.sh {args:?}");
}

fn cluster_up() -> bool {
    (1..=3).all(|n| {
        Command::new("curl")
            .args(["-sf", "-m", "2", &format!("{}/ping", node_url(n))])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// One aggregator replica on the cluster, entering through server `node`.
struct Replica {
    node: u32,
    grpc: u16,
    http: u16,
    child: Option<Child>,
}

impl Replica {
    fn start(db: &str, node: u32, dir: &Path, n: usize) -> Self {
        let mut r = Self {
            node,
            grpc: free_port(),
            http: free_port(),
            child: None,
        };
        r.spawn(db, dir, n);
        r
    }

    fn spawn(&mut self, db: &str, dir: &Path, n: usize) {
        let log = std::fs::File::create(dir.join(format!("agg-ch{}-{n}.log", self.node))).unwrap();
        let child = Command::new(bin("aggregator"))
            .args(["--database", db, "--token", TOKEN, "--flush-ms", "200"])
            .args([
                "--clickhouse-url",
                &node_url(self.node),
                "--clickhouse-cluster",
                CLUSTER,
            ])
            .args(["--grpc-listen", &format!("127.0.0.1:{}", self.grpc)])
            .args(["--http-listen", &format!("127.0.0.1:{}", self.http)])
            .stderr(Stdio::from(log))
            .spawn()
            .expect("aggregator");
        self.child = Some(child);
        let t = Instant::now();
        while self.get("/readyz").as_deref() != Some("ready") {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "aggregator on ch{} not ready after 120 s",
                self.node
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn get(&self, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args([
                "-sf",
                "-m",
                "3",
                &format!("http://127.0.0.1:{}{path}", self.http),
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Batches this replica stored (its /metrics).
    fn stored(&self) -> u64 {
        self.get("/metrics")
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("inferscope_batches_stored_total "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, libc::SIGKILL);
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, libc::SIGTERM);
        }
    }
}

/// Restarts a stopped cluster server when dropped (a failing drill leaves the cluster whole).
struct ServerDown(u32);

impl Drop for ServerDown {
    fn drop(&mut self) {
        cluster(&["start", &self.0.to_string()]);
    }
}

fn stored_count(db: &str) -> (u64, u64) {
    let out = csql(&format!(
        "SELECT count(), uniqExact(trace_id) FROM {db}.requests FORMAT TSV"
    ));
    let mut it = out.split('\t').map(|v| v.trim().parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Waits until every request sent is stored; returns how long that took.
fn drain(db: &str, sent: &[Sent], what: &str) -> Duration {
    let t = Instant::now();
    let want = sent.len() as u64;
    loop {
        let (n, _) = stored_count(db);
        if n >= want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < DRAIN_LIMIT,
            "{what}: {n} of {want} requests stored"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn fleet_survives_an_aggregator_replica_and_a_clickhouse_server_down() {
    let test = "fleet_survives_an_aggregator_replica_and_a_clickhouse_server_down";
    let Some((url, pid)) = engine_root_clickhouse(test) else {
        return;
    };
    if !cluster_up() {
        assert!(
            !required(),
            "{test}: the ClickHouse cluster is required (scripts/clickhouse-cluster.sh start)"
        );
        eprintln!("SKIPPED {test}: no ClickHouse cluster");
        return;
    }
    let db = format!("test_fleet_{}", std::process::id());
    let dir: PathBuf =
        std::env::temp_dir().join(format!("inferscope-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // One after the other: the first applies the migrations (replicas starting together wait
    // for each other, but here the test wants the figures of a settled start).
    let mut reps = [
        Replica::start(&db, 1, &dir, 0),
        Replica::start(&db, 2, &dir, 0),
    ];
    let probe = start_exporting_probe_with(
        &pid.to_string(),
        reps[0].grpc,
        TOKEN,
        "fleet-node",
        &dir,
        &["--export", &format!("http://127.0.0.1:{}", reps[1].grpc)],
    );
    let mut probe = inferscope_loadtests::harness::Children(vec![probe]);

    let mut sent: Vec<Sent> = Vec::new();
    let log = dir.join("warm.jsonl");
    inferscope_loadtests::harness::load(&url, 40, 8, &log);
    sent.extend(read_trace_log(&log));
    drain(&db, &sent, "normal load");

    // Drill 1: the replica in use dies for 60 s.
    let in_use = usize::from(reps[1].stored() > reps[0].stored());
    reps[in_use].kill();
    let n = load_for(
        &url,
        Duration::from_secs(60),
        PACE,
        ROUND,
        MAX_ROUNDS,
        &dir,
        "agg-down",
    );
    sent.extend(n.iter().cloned());
    let d = drain(&db, &sent, "aggregator replica down");
    figure(&format!(
        "fleet drill: aggregator replica (via ch{}) kill -9 for 60 s under real-vLLM load: {} requests sent meanwhile, all stored through the other replica {:.1} s after the outage",
        reps[in_use].node,
        n.len(),
        d.as_secs_f64()
    ));
    reps[in_use].spawn(&db, &dir, 1);

    // Drill 2: the server the replica now in use enters through (a replica of shard 1) down
    // for 60 s: that replica answers RETRY, node-probe moves to the other, whose inserts reach
    // shard 1 through the remaining replica.
    let server = reps[1 - in_use].node;
    cluster(&["stop", &server.to_string()]);
    let down = ServerDown(server);
    let n = load_for(
        &url,
        Duration::from_secs(60),
        PACE,
        ROUND,
        MAX_ROUNDS,
        &dir,
        "ch-down",
    );
    sent.extend(n.iter().cloned());
    let d = drain(&db, &sent, "ClickHouse server down");
    drop(down);
    figure(&format!(
        "fleet drill: ClickHouse server ch{server} (shard 1 replica, the entry of the aggregator in use) stopped for 60 s under real-vLLM load: {} requests sent meanwhile, all stored through the other aggregator and replica {:.1} s after the outage",
        n.len(),
        d.as_secs_f64()
    ));

    // Exactly once, on the Distributed tables.
    std::thread::sleep(Duration::from_secs(2));
    let (total, uniq) = stored_count(&db);
    let ids: HashSet<String> = csql(&format!("SELECT trace_id FROM {db}.requests"))
        .lines()
        .map(str::to_string)
        .collect();
    let missing = sent.iter().filter(|s| !ids.contains(&s.trace_id)).count();
    eprintln!(
        "fleet: sent {} requests, stored {total} rows, {uniq} unique, {missing} missing",
        sent.len()
    );
    assert_eq!(missing, 0, "requests lost");
    assert_eq!(total, uniq, "duplicates stored");
    assert_eq!(total as usize, sent.len(), "rows not sent by the test");
    figure(&format!(
        "fleet drill: {} requests through two aggregator replicas on a 3-server cluster, an aggregator and a ClickHouse server down 60 s each: count() = uniqExact(trace_id) = sent = {total}",
        sent.len()
    ));
    probe.0.iter_mut().for_each(|c| kill(c, libc::SIGTERM));
    probe.0.clear();
    drop(reps);
    csql(&format!(
        "DROP DATABASE IF EXISTS {db} ON CLUSTER {CLUSTER}"
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
