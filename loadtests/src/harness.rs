//! Shared pieces of the end-to-end tests under `loadtests/tests/`: locating the workspace's
//! binaries, the local ClickHouse, the shared real engine started by `scripts/test.sh`, and
//! starting/stopping an aggregator.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A binary of the workspace, next to the running test (`target/<profile>/NAME`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").join(name)
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// ClickHouse HTTP URL (`INFERSCOPE_CLICKHOUSE_URL`, default the local one).
pub fn ch_url() -> String {
    std::env::var("INFERSCOPE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

/// Runs one SQL statement over HTTP; the trimmed body (an error text on failure).
pub fn sql(q: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-m", "60", "--data-binary", q, &ch_url()])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether the local ClickHouse answers.
pub fn clickhouse_up() -> bool {
    sql("SELECT 1") == "1"
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `INFERSCOPE_REQUIRE_BPF=1` (set by `.ci/run`): a test that cannot run must fail.
pub fn required() -> bool {
    std::env::var("INFERSCOPE_REQUIRE_BPF").as_deref() == Ok("1")
}

/// Running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The shared real engine from `scripts/test.sh`: (base URL, API-server pid).
pub fn engine_env() -> Option<(String, u32)> {
    let url = std::env::var("INFERSCOPE_ENGINE_URL").ok()?;
    let pid = std::env::var("INFERSCOPE_ENGINE_PID").ok()?.parse().ok()?;
    Some((url, pid))
}

/// Skips a test with a message (returns `true`), or fails it when [`required`].
pub fn skip(test: &str, why: &str) -> bool {
    assert!(
        !required(),
        "{test} required (INFERSCOPE_REQUIRE_BPF=1): {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
    true
}

/// The shared engine `(url, API-server pid)` for a test that also needs root and the local
/// ClickHouse; `None` (the test skipped, or failed when [`required`]) otherwise.
pub fn engine_root_clickhouse(test: &str) -> Option<(String, u32)> {
    let Some(env) = engine_env() else {
        skip(test, "run through scripts/test.sh (the shared engine)");
        return None;
    };
    if !is_root() || sql("SELECT 1") != "1" {
        skip(test, "needs root and the local ClickHouse");
        return None;
    }
    Some(env)
}

/// Child processes (an aggregator, a probe) killed with SIGTERM however the test ends, a
/// panic included, so that they never outlive it.
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            kill(c, libc::SIGTERM);
        }
    }
}

/// Starts an aggregator on `db` with `token`, waiting until its HTTP port answers; stderr goes
/// to `log` (or is discarded).
pub fn start_aggregator(db: &str, grpc: u16, http: u16, token: &str, log: Option<&Path>) -> Child {
    let stderr = match log {
        Some(p) => Stdio::from(std::fs::File::create(p).expect("aggregator log")),
        None => Stdio::null(),
    };
    let mut c = Command::new(bin("aggregator"))
        .args([
            "--database",
            db,
            "--token",
            token,
            "--flush-ms",
            "200",
            "--retention-days",
            "0",
        ])
        .args([
            "--grpc-listen",
            &format!("127.0.0.1:{grpc}"),
            "--http-listen",
            &format!("127.0.0.1:{http}"),
        ])
        .args(["--clickhouse-url", &ch_url()])
        .stderr(stderr)
        .spawn()
        .expect("aggregator");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", http)).is_ok() {
            return c;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = c.kill();
    let _ = c.wait();
    panic!("aggregator did not start (log: {log:?})");
}

/// Starts node-probe on `pid` (and its children) exporting to the aggregator's gRPC port, with
/// 200 ms batches and a spool under `dir`; returns once it has attached (its log, under `dir`,
/// says so). Its log is kept as `dir/probe-PID.log`.
pub fn start_exporting_probe(pid: &str, grpc: u16, token: &str, node: &str, dir: &Path) -> Child {
    start_exporting_probe_with(pid, grpc, token, node, dir, &[])
}

/// [`start_exporting_probe`] with `extra` arguments (e.g. `--tag run=1`).
pub fn start_exporting_probe_with(
    pid: &str,
    grpc: u16,
    token: &str,
    node: &str,
    dir: &Path,
    extra: &[&str],
) -> Child {
    use std::io::{BufRead, Write};
    let mut c = Command::new(bin("node-probe"))
        .args([
            "--pid",
            pid,
            "--export",
            &format!("http://127.0.0.1:{grpc}"),
            "--token",
            token,
        ])
        .args(["--batch-max-ms", "200", "--node-name", node])
        .arg("--spool-dir")
        .arg(dir.join("spool"))
        .args(extra)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node-probe");
    let err = c.stderr.take().expect("stderr");
    let log = dir.join(format!("probe-{}.log", c.id()));
    let (tx, rx) = std::sync::mpsc::channel();
    let path = log.clone();
    std::thread::spawn(move || {
        let mut f = std::fs::File::create(path).ok();
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("node-probe attached") {
                let _ = tx.send(());
            }
            if let Some(f) = f.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = c.kill();
        let _ = c.wait();
        panic!(
            "node-probe did not attach within 60 s (log {})",
            log.display()
        );
    }
    c
}

/// Sends `sig` and reaps the child.
pub fn kill(c: &mut Child, sig: i32) {
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(c.id() as i32, sig) };
    let _ = c.wait();
}

/// Waits until `db.requests` holds at least `want` rows; returns the last count.
pub fn wait_count(db: &str, want: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let n: u64 = sql(&format!("SELECT count() FROM {db}.requests"))
            .parse()
            .unwrap_or(0);
        if n >= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The `loadgen` command against `url` (8 clients, `max_tokens` each), its per-request log to
/// `log`.
fn loadgen(url: &str, n: u64, max_tokens: u32, log: &Path) -> Command {
    loadgen_with(url, n, max_tokens, log, &[])
}

/// [`loadgen`] with extra request headers (`NAME: VALUE`).
fn loadgen_with(url: &str, n: u64, max_tokens: u32, log: &Path, headers: &[&str]) -> Command {
    let mut c = Command::new(bin("loadgen"));
    c.args([
        "--url",
        url,
        "--requests",
        &n.to_string(),
        "--concurrency",
        "8",
    ])
    .args(["--max-tokens", &max_tokens.to_string()])
    .arg("--trace-log")
    .arg(log)
    .stdout(Stdio::null());
    for h in headers {
        c.args(["--header", h]);
    }
    c
}

/// Runs `loadgen` against `url` (8 clients, `max_tokens` each), writing its per-request log to
/// `log`; returns the trace ids sent, in the log's order.
pub fn load(url: &str, n: u64, max_tokens: u32, log: &Path) -> Vec<String> {
    let st = loadgen(url, n, max_tokens, log).status().expect("loadgen");
    assert!(st.success(), "loadgen failed");
    read_trace_log(log)
        .into_iter()
        .map(|s| s.trace_id)
        .collect()
}

/// [`load`] with extra request headers (`NAME: VALUE`) on every request; returns what was sent.
pub fn load_with(url: &str, n: u64, max_tokens: u32, log: &Path, headers: &[&str]) -> Vec<Sent> {
    let st = loadgen_with(url, n, max_tokens, log, headers)
        .status()
        .expect("loadgen");
    assert!(st.success(), "loadgen failed");
    read_trace_log(log)
}

/// One request of a `loadgen --trace-log` file: its trace id and client-side wall-clock span.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The trace id the client sent.
    pub trace_id: String,
    /// When the client started it (Unix ns).
    pub start_ns: u64,
    /// When the client saw its end (Unix ns).
    pub end_ns: u64,
}

/// Reads a `loadgen --trace-log` file.
pub fn read_trace_log(log: &Path) -> Vec<Sent> {
    std::fs::read_to_string(log)
        .expect("loadgen log")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let start_ns = v["start_unix_ns"].as_u64()?;
            Some(Sent {
                trace_id: v["trace_id"].as_str()?.to_string(),
                start_ns,
                end_ns: start_ns + v["e2e_ns"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

/// Keeps the engine under load for `dur`: a `loadgen` round of `per_round` requests every
/// `pace` (at most `max_rounds` rounds), logs under `dir` named `tag-N.jsonl`; returns every
/// request sent. Returns no earlier than `dur`, however fast the engine answers.
pub fn load_for(
    url: &str,
    dur: Duration,
    pace: Duration,
    per_round: u64,
    max_rounds: usize,
    dir: &Path,
    tag: &str,
) -> Vec<Sent> {
    let t = Instant::now();
    let mut sent = Vec::new();
    for round in 0..max_rounds {
        let due = pace * round as u32;
        if due >= dur {
            break;
        }
        std::thread::sleep(due.saturating_sub(t.elapsed()));
        let log = dir.join(format!("{tag}-{round}.jsonl"));
        load(url, per_round, 8, &log);
        sent.extend(read_trace_log(&log));
    }
    std::thread::sleep(dur.saturating_sub(t.elapsed()));
    sent
}

/// Unix time now in ns.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
