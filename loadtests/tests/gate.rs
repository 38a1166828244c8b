//! `inferscope gate` on the real vLLM: runs of the same load, told apart by their time
//! windows and selected by the probe's run tag. A/A pairs (two unchanged runs) must pass at least
//! 9 times in 10; a run with the engine starved of CPU (its EngineCore stopped 30 ms once in
//! every 70–130 ms, as a noisy neighbour or a CPU-throttled pod would) must fail every time, naming
//! engine-side metrics and never the frontend or delivery. False-positive and detection rates and
//! the minimum detectable effects are figures.
//!
//! Needs root, the shared engine from `scripts/test.sh`, and the local ClickHouse.
//! `INFERSCOPE_GATE_REPS` (default 10) and `INFERSCOPE_GATE_RUN_S` (default 8) size it.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use inferscope_loadtests::fidelity::figure;
use inferscope_loadtests::harness::{
    bin, engine_root_clickhouse, free_port, load_for, sql, start_aggregator,
    start_exporting_probe_with, unix_ns, wait_count, Children,
};
use serde_json::Value;

const TOKEN: &str = "gate-token";
/// A `loadgen` round of 16 requests every 0.5 s: 32 requests/s while the engine keeps up.
const ROUND: u64 = 16;
const PACE: Duration = Duration::from_millis(500);
const MAX_ROUNDS: usize = 200;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One run: the window its requests started in, and how many were sent.
#[derive(Debug, Clone, Copy)]
struct Run {
    from_ns: u64,
    to_ns: u64,
    sent: usize,
}

fn secs(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e9)
}

/// The engine's descendants (EngineCore and anything it started): the processes to starve.
fn descendants(root: u32) -> Vec<i32> {
    let mut parent = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": the comm may hold spaces, so split after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent.push((pid, ppid));
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out.into_iter().skip(1).map(|p| p as i32).collect()
}

/// Stops `pids` for `stop` once in every period until dropped, the periods drawn uniformly
/// from `period ± 30 %` (a fixed sequence): a period commensurate with the load's pace would
/// always pause the same moment of every round, idle or busy. Always leaves them running.
struct Starve {
    quit: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Starve {
    fn start(pids: Vec<i32>, stop: Duration, period: Duration) -> Self {
        let quit = Arc::new(AtomicBool::new(false));
        let q = Arc::clone(&quit);
        let thread = std::thread::spawn(move || {
            let signal = |sig| {
                for &p in &pids {
                    // SAFETY: signals to the test's own engine processes.
                    unsafe { libc::kill(p, sig) };
                }
            };
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            while !q.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let p = period.mul_f64(0.7 + 0.6 * (x % 1000) as f64 / 1000.0);
                signal(libc::SIGSTOP);
                std::thread::sleep(stop);
                signal(libc::SIGCONT);
                std::thread::sleep(p.saturating_sub(stop));
            }
            signal(libc::SIGCONT);
        });
        Self {
            quit,
            thread: Some(thread),
        }
    }
}

impl Drop for Starve {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Bench {
    url: String,
    dir: PathBuf,
    api: String,
    tag: String,
    run_for: Duration,
    runs: usize,
}

impl Bench {
    fn run(&mut self, label: &str) -> Run {
        self.runs += 1;
        let from_ns = unix_ns();
        let name = format!("{label}-{}", self.runs);
        let sent = load_for(
            &self.url,
            self.run_for,
            PACE,
            ROUND,
            MAX_ROUNDS,
            &self.dir,
            &name,
        )
        .len();
        let to_ns = unix_ns();
        // Requests of the next run start after this one's last has ended.
        std::thread::sleep(Duration::from_millis(200));
        Run {
            from_ns,
            to_ns,
            sent,
        }
    }

    /// `inferscope gate` of `cand` against `base`: (exit status, JSON report).
    fn gate(&self, base: Run, cand: Run) -> (i32, Value) {
        let filter = format!("tag={}", self.tag);
        let out = Command::new(bin("inferscope"))
            .args(["--api", &self.api, "--output", "json", "gate"])
            .args([
                "--baseline-from",
                &secs(base.from_ns),
                "--baseline-to",
                &secs(base.to_ns),
            ])
            .args([
                "--candidate-from",
                &secs(cand.from_ns),
                "--candidate-to",
                &secs(cand.to_ns),
            ])
            .args(["--baseline-filter", &filter, "--candidate-filter", &filter])
            .output()
            .expect("inferscope gate");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "gate output: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), report)
    }
}

fn regressed(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|c| c["verdict"] == "regression")
                .map(|c| c["metric"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The metric of the regressed check with the largest relative change.
fn largest_regression(report: &Value) -> Option<String> {
    report["checks"]
        .as_array()?
        .iter()
        .filter(|c| c["verdict"] == "regression")
        .max_by(|a, b| {
            let ch = |c: &Value| c["change"].as_f64().unwrap_or(0.0);
            ch(a).total_cmp(&ch(b))
        })
        .and_then(|c| c["metric"].as_str().map(str::to_string))
}

/// The minimum detectable effect of `metric` at level `q`, relative to the baseline.
fn detectable(report: &Value, metric: &str, q: f64) -> Option<f64> {
    let c = report["checks"]
        .as_array()?
        .iter()
        .find(|c| c["metric"] == metric && c["q"].as_f64() == Some(q))?;
    Some(c["detectable_ms"].as_f64()? / c["baseline_ms"].as_f64()?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[test]
fn gate_on_the_real_engine() {
    let Some((url, pid)) = engine_root_clickhouse("gate_on_the_real_engine") else {
        return;
    };
    let starve_pids = descendants(pid);
    assert!(
        !starve_pids.is_empty(),
        "the engine {pid} has no EngineCore child"
    );
    let reps = env_or("INFERSCOPE_GATE_REPS", 10) as usize;
    let db = format!("test_gate_{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("inferscope-gate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (grpc, http) = (free_port(), free_port());
    let agg = start_aggregator(&db, grpc, http, TOKEN, Some(&dir.join("agg.log")));
    let mut children = Children(vec![agg]);
    let tag = format!("run=gate-{}", std::process::id());
    let probe = start_exporting_probe_with(
        &pid.to_string(),
        grpc,
        TOKEN,
        "gate-node",
        &dir,
        &["--tag", &tag],
    );
    children.0.push(probe);
    let mut b = Bench {
        url,
        dir: dir.clone(),
        api: format!("http://127.0.0.1:{http}"),
        tag,
        run_for: Duration::from_secs(env_or("INFERSCOPE_GATE_RUN_S", 8)),
        runs: 0,
    };
    b.run("warm-up");
    let mut reps_runs = Vec::new();
    for _ in 0..reps {
        let a = b.run("a");
        let a2 = b.run("a2");
        let s = {
            let _starve = Starve::start(
                starve_pids.clone(),
                Duration::from_millis(30),
                Duration::from_millis(100),
            );
            b.run("starved")
        };
        reps_runs.push((a, a2, s));
    }
    let total = reps_runs
        .iter()
        .map(|(a, a2, s)| a.sent + a2.sent + s.sent)
        .sum::<usize>();
    wait_count(&db, total as u64, Duration::from_secs(120));
    judge(&b, &reps_runs, &dir);
    drop(children);
    sql(&format!("DROP DATABASE IF EXISTS {db}"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn judge(b: &Bench, reps: &[(Run, Run, Run)], dir: &Path) {
    let n = reps.len();
    let (mut aa_pass, mut caught) = (0, 0);
    let (mut mde_e2e, mut mde_ttft) = (Vec::new(), Vec::new());
    let mut named = std::collections::BTreeMap::<String, usize>::new();
    for (i, &(a, a2, s)) in reps.iter().enumerate() {
        let (code, aa) = b.gate(a, a2);
        assert!(code == 0 || code == 1, "A/A {i}: exit {code}: {aa}");
        aa_pass += usize::from(code == 0);
        if code != 0 {
            eprintln!("A/A {i} failed: {}", aa["summary"]);
            std::fs::write(dir.join(format!("aa-{i}.json")), aa.to_string()).ok();
        }
        mde_e2e.extend(detectable(&aa, "e2e", 0.5));
        mde_ttft.extend(detectable(&aa, "ttft", 0.5));
        let (code, slow) = b.gate(a, s);
        let names = regressed(&slow);
        eprintln!("starved {i}: exit {code}: {}", slow["summary"]);
        std::fs::write(dir.join(format!("starved-{i}.json")), slow.to_string()).ok();
        if code == 1 {
            caught += 1;
            // Engine-side metrics are named, and the largest change is one of them (a starved
            // engine also slows the frontend a little: its backlog of outputs lands at once).
            assert!(
                names.iter().any(|m| m != "frontend" && m != "delivery"),
                "starved {i}: {names:?}"
            );
            let top = largest_regression(&slow);
            assert!(
                top.as_deref()
                    .is_some_and(|m| m != "frontend" && m != "delivery"),
                "starved {i}: the largest regression is {top:?}"
            );
        }
        // Runs that named each metric (at any quantile).
        for m in names.into_iter().collect::<std::collections::BTreeSet<_>>() {
            *named.entry(m).or_default() += 1;
        }
    }
    let sizes: Vec<String> = reps
        .iter()
        .map(|(a, a2, s)| format!("{}/{}/{}", a.sent, a2.sent, s.sent))
        .collect();
    figure(&format!(
        "gate on real vLLM ({n} reps of {} s runs, requests per A/A'/starved run {}): A/A passed {aa_pass}/{n}; engine starved 30 % of the time failed {caught}/{n}; metrics named (runs): {named:?}; minimum detectable effect (median over A/A) e2e p50 {:.1} %, ttft p50 {:.1} %",
        b.run_for.as_secs(),
        sizes.join(" "),
        median(mde_e2e) * 100.0,
        median(mde_ttft) * 100.0,
    ));
    assert!(aa_pass * 10 >= n * 9, "A/A passed only {aa_pass} of {n}");
    assert_eq!(
        caught, n,
        "the starved engine failed the gate {caught} of {n} times"
    );
}
