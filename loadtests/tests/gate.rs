//! `inferscope gate` on the real vLLM: A/A pairs (two arms of unchanged load) must pass at least
//! 9 times in 10; an arm with the engine starved of CPU (its EngineCore and Worker stopped 30 ms
//! once in every 70–130 ms, as a noisy neighbour or a CPU-throttled pod would) must fail every
//! time, naming engine-side metrics and never the frontend or delivery. False-positive and
//! detection rates and the minimum detectable effects are figures.
//!
//! Each repetition interleaves its three arms (A, A', starved) round by round, in a random order
//! within every block of three rounds, each request labelled with its arm in a header the probe
//! stores as the tenant; the gate compares the arms' label sets over the repetition's window.
//! Runs one after another would not do on a shared 2-core machine: a few seconds of someone
//! else's CPU (a ClickHouse merge, another test's leftovers) move a whole 8 s run by up to 2.5×,
//! which no within-run statistic can tell from a regression (measured: A/A e2e p50 41–189 ms
//! between back-to-back runs of a full suite). Interleaving spreads such drift over every arm —
//! the design `deploy/ci/` recommends for CI runners too.
//!
//! Needs root, the shared engine from `scripts/test.sh`, and the local ClickHouse.
//! `INFERSCOPE_GATE_REPS` (default 10) and `INFERSCOPE_GATE_RUN_S` (seconds of load per arm,
//! default 8) size it.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inferscope_loadtests::descendants;
use inferscope_loadtests::fidelity::figure;
use inferscope_loadtests::harness::{
    bin, engine_root_clickhouse, free_port, load_for, load_with, sql, start_aggregator,
    start_exporting_probe_with, unix_ns, wait_count, Children,
};
use serde_json::Value;

const TOKEN: &str = "gate-token";
/// A `loadgen` round of 16 requests every 0.5 s: 32 requests/s while the engine keeps up.
const ROUND: u64 = 16;
const PACE: Duration = Duration::from_millis(500);
/// The request header that carries a request's arm (the probe's `--tenant-header`).
const ARM_HEADER: &str = "x-gate-arm";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The arms of a repetition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    A,
    A2,
    Starved,
}

impl Arm {
    const ALL: [Arm; 3] = [Arm::A, Arm::A2, Arm::Starved];

    /// The arm's label (the header value, stored as the tenant).
    fn label(self) -> &'static str {
        match self {
            Arm::A => "a",
            Arm::A2 => "a2",
            Arm::Starved => "starved",
        }
    }
}

/// A fixed xorshift sequence: the schedule is the same in every run of the test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `blocks` blocks of three rounds, each block the three arms in a random order.
fn schedule(blocks: usize, rng: &mut Rng) -> Vec<Arm> {
    let mut out = Vec::with_capacity(blocks * 3);
    for _ in 0..blocks {
        let mut b = Arm::ALL;
        for i in (1..b.len()).rev() {
            b.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        out.extend(b);
    }
    out
}

/// One repetition: the window its requests started in, how many each arm sent, and each arm's
/// client-side e2e median (ms; to tell a gate's verdict from what the client saw).
#[derive(Debug, Clone, Copy)]
struct Rep {
    from_ns: u64,
    to_ns: u64,
    sent: [usize; 3],
    client_e2e_p50_ms: [f64; 3],
}

fn secs(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e9)
}

/// Stops `pids` for `stop` once in every period until dropped, the periods drawn uniformly
/// from `period ± 30 %` after a random first phase: a period commensurate with the load's pace
/// would always pause the same moment of every round, idle or busy. Always leaves them running; a drop
/// ends it at once (the thread is unparked), so the next round starts unstarved and on time.
struct Starve {
    quit: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Starve {
    fn start(pids: Vec<i32>, stop: Duration, period: Duration, rng: &mut Rng) -> Self {
        let quit = Arc::new(AtomicBool::new(false));
        let q = Arc::clone(&quit);
        let mut x = rng.next() | 1;
        let thread = std::thread::spawn(move || {
            let signal = |sig| {
                for &p in &pids {
                    // SAFETY: signals to the test's own engine processes.
                    unsafe { libc::kill(p, sig) };
                }
            };
            // Sleeps `d` unless told to quit; false when told.
            let nap = |d: Duration| {
                let until = Instant::now() + d;
                while !q.load(Ordering::Relaxed) {
                    let Some(left) = until.checked_duration_since(Instant::now()) else {
                        return true;
                    };
                    std::thread::park_timeout(left);
                }
                false
            };
            // A random phase: pauses fall anywhere in the round, not always at its start
            // (where `loadgen` is still starting and no request is in flight yet).
            if !nap(period.mul_f64((x % 1000) as f64 / 1000.0)) {
                return;
            }
            loop {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let p = period.mul_f64(0.7 + 0.6 * (x % 1000) as f64 / 1000.0);
                signal(libc::SIGSTOP);
                let go_on = nap(stop);
                signal(libc::SIGCONT);
                if !go_on || !nap(p.saturating_sub(stop)) {
                    break;
                }
            }
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
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

struct Bench {
    url: String,
    dir: PathBuf,
    api: String,
    tag: String,
    /// Rounds per arm in a repetition.
    rounds: usize,
    starve_pids: Vec<i32>,
    rng: Rng,
}

impl Bench {
    /// One repetition: its arms interleaved round by round, the starved arm's rounds with the
    /// engine starved from before its first request to after its last response.
    fn rep(&mut self, i: usize) -> Rep {
        let order = schedule(self.rounds, &mut self.rng);
        let from_ns = unix_ns();
        let t = Instant::now();
        let mut e2e_ms: [Vec<f64>; 3] = Default::default();
        for (k, &arm) in order.iter().enumerate() {
            std::thread::sleep((PACE * k as u32).saturating_sub(t.elapsed()));
            let log = self.dir.join(format!("rep{i}-{k}-{}.jsonl", arm.label()));
            let header = format!("{ARM_HEADER}: {}", arm.label());
            let _starve = (arm == Arm::Starved).then(|| {
                Starve::start(
                    self.starve_pids.clone(),
                    Duration::from_millis(30),
                    Duration::from_millis(100),
                    &mut self.rng,
                )
            });
            let sent = load_with(&self.url, ROUND, 8, &log, &[&header]);
            e2e_ms[arm as usize].extend(
                sent.iter()
                    .map(|r| r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6),
            );
        }
        std::thread::sleep((PACE * order.len() as u32).saturating_sub(t.elapsed()));
        let to_ns = unix_ns();
        // The next repetition's requests start after this one's last has ended.
        std::thread::sleep(Duration::from_millis(200));
        Rep {
            from_ns,
            to_ns,
            sent: e2e_ms.each_ref().map(Vec::len),
            client_e2e_p50_ms: e2e_ms.map(median),
        }
    }

    /// `inferscope gate` of arm `cand` against arm `base` over `rep`'s window: (exit status,
    /// JSON report).
    fn gate(&self, rep: Rep, base: Arm, cand: Arm) -> (i32, Value) {
        let filter = |arm: Arm| format!("tag={},tenant={}", self.tag, arm.label());
        let out = Command::new(bin("inferscope"))
            .args(["--api", &self.api, "--output", "json", "gate"])
            .args(["--baseline-from", &secs(rep.from_ns)])
            .args(["--baseline-to", &secs(rep.to_ns)])
            .args(["--candidate-from", &secs(rep.from_ns)])
            .args(["--candidate-to", &secs(rep.to_ns)])
            .args(["--baseline-filter", &filter(base)])
            .args(["--candidate-filter", &filter(cand)])
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
    let starve_pids: Vec<i32> = descendants(pid).into_iter().map(|p| p as i32).collect();
    assert!(
        !starve_pids.is_empty(),
        "the engine {pid} has no EngineCore child"
    );
    let reps = env_or("INFERSCOPE_GATE_REPS", 10) as usize;
    let run_for = Duration::from_secs(env_or("INFERSCOPE_GATE_RUN_S", 8));
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
        &["--tag", &tag, "--tenant-header", ARM_HEADER],
    );
    children.0.push(probe);
    let mut b = Bench {
        url,
        dir: dir.clone(),
        api: format!("http://127.0.0.1:{http}"),
        tag,
        rounds: (run_for.as_millis() / PACE.as_millis()).max(1) as usize,
        starve_pids,
        rng: Rng(0x9e37_79b9_7f4a_7c15),
    };
    let warm = load_for(
        &b.url,
        Duration::from_secs(4),
        PACE,
        ROUND,
        8,
        &dir,
        "warm-up",
    )
    .len();
    let runs: Vec<Rep> = (0..reps).map(|i| b.rep(i)).collect();
    let total = warm + runs.iter().flat_map(|r| r.sent).sum::<usize>();
    wait_count(&db, total as u64, Duration::from_secs(120));
    let clean = judge(&b, &runs, run_for, &dir);
    drop(children);
    sql(&format!("DROP DATABASE IF EXISTS {db}"));
    // A failed A/A's reports and request logs stay for a look (the test still passes).
    if clean {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("reports and request logs kept in {}", dir.display());
    }
}

/// Judges every repetition (panics below the bars); whether every A/A passed.
fn judge(b: &Bench, reps: &[Rep], run_for: Duration, dir: &Path) -> bool {
    let n = reps.len();
    let (mut aa_pass, mut caught) = (0, 0);
    let (mut mde_e2e, mut mde_ttft) = (Vec::new(), Vec::new());
    let mut named = std::collections::BTreeMap::<String, usize>::new();
    for (i, &rep) in reps.iter().enumerate() {
        let (code, aa) = b.gate(rep, Arm::A, Arm::A2);
        assert!(code == 0 || code == 1, "A/A {i}: exit {code}: {aa}");
        aa_pass += usize::from(code == 0);
        if code != 0 {
            let c = rep.client_e2e_p50_ms;
            eprintln!(
                "A/A {i} failed: {} (client e2e p50 A {:.1} ms, A' {:.1} ms)",
                aa["summary"], c[0], c[1]
            );
            std::fs::write(dir.join(format!("aa-{i}.json")), aa.to_string()).ok();
        }
        mde_e2e.extend(detectable(&aa, "e2e", 0.5));
        mde_ttft.extend(detectable(&aa, "ttft", 0.5));
        let (code, slow) = b.gate(rep, Arm::A, Arm::Starved);
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
        .map(|r| format!("{}/{}/{}", r.sent[0], r.sent[1], r.sent[2]))
        .collect();
    figure(&format!(
        "gate on real vLLM ({n} reps, each {} s of load per arm with the arms interleaved round by round; requests per A/A'/starved arm {}): A/A passed {aa_pass}/{n}; engine starved 30 % of the time failed {caught}/{n}; metrics named (runs): {named:?}; minimum detectable effect (median over A/A) e2e p50 {:.1} %, ttft p50 {:.1} %",
        run_for.as_secs(),
        sizes.join(" "),
        median(mde_e2e) * 100.0,
        median(mde_ttft) * 100.0,
    ));
    assert!(aa_pass * 10 >= n * 9, "A/A passed only {aa_pass} of {n}");
    assert_eq!(
        caught, n,
        "the starved engine failed the gate {caught} of {n} times"
    );
    aa_pass == n
}
