//! `GET /api/v1/samples`, run tags and `inferscope gate` against the real local ClickHouse:
//! three runs told apart by their tag (a baseline, an unchanged rerun, and a run whose queue
//! phase is slower), the samples endpoint checked against SQL, the gate's verdicts and exit
//! statuses from the aggregator and from saved files.
use std::net::SocketAddr;

use inferscope_aggregator::api::samples::Samples;
use inferscope_aggregator::store::rows::RequestRow;
use inferscope_aggregator::store::Store;
use serde_json::Value;

mod common;
use common::{cli, get, insert, now_s, open_store, request, serve, with_db, MS, S};

/// Requests per run.
const N: u64 = 700;

/// Deterministic pseudo-random numbers in [0, 1).
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Around `ms` milliseconds, spread by a factor of about 1.5 each way, in ns.
    fn around(&mut self, ms: f64) -> u64 {
        (ms * MS as f64 * (0.66 + 0.9 * self.unit() * self.unit())) as u64
    }
}

/// One run: `N` streamed requests from `t0`, tagged `run=<run>`; `slow_queue` multiplies the
/// queue phase.
fn run(run: &str, t0: u64, seed: u64, slow_queue: f64) -> Vec<RequestRow> {
    let mut rng = Rng(seed);
    (0..N)
        .map(|i| {
            let phases = [
                rng.around(2.0),
                (rng.around(20.0) as f64 * slow_queue) as u64,
                rng.around(30.0),
                rng.around(150.0),
                rng.around(1.0),
            ];
            let mut r = request(
                format!("{:016x}{:016x}", seed, i),
                t0 + i * 10 * MS,
                "node-a",
                "vllm",
                "m",
                200,
                "complete",
                Some(phases),
                0,
                i % 10 != 0,
                Vec::new(),
            );
            r.tags = vec![format!("run={run}"), "pool=ci".into()];
            r
        })
        .collect()
}

async fn sql_sorted(store: &Store, q: &str) -> Vec<f64> {
    let mut v: Vec<u64> = store
        .client()
        .query(q)
        .fetch_all()
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"));
    v.sort_unstable();
    v.into_iter().map(|ns| ns as f64 / 1e6).collect()
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_tags_and_gate() {
    let Some(store) = open_store("samples_tags_and_gate").await else {
        return;
    };
    with_db(store, |store| async move {
        let t0 = (now_s() - 600) * S;
        insert(&store, "requests", &run("base", t0, 1, 1.0)).await;
        insert(&store, "requests", &run("same", t0, 2, 1.0)).await;
        insert(&store, "requests", &run("slow", t0, 3, 3.0)).await;
        let addr = serve(store.clone()).await;
        let w = format!("from={}&to={}", t0 / S, t0 / S + 60);
        samples_agree_with_sql(&store, addr, &w).await;
        filters_list_tags(addr, &w).await;
        gate_verdicts(addr, t0).await;
    })
    .await;
}

async fn samples_agree_with_sql(store: &Store, addr: SocketAddr, w: &str) {
    let (code, v) = get(addr, &format!("/api/v1/samples?{w}&tag=run%3Dbase")).await;
    assert_eq!(code, 200, "{v}");
    let s: Samples = serde_json::from_value(v).unwrap();
    assert_eq!((s.count, s.returned, s.sampled), (N, N, false));
    assert_eq!(s.filters, ["tag=run=base"]);
    let db = &store.database;
    let base = format!("FROM {db}.requests WHERE has(tags, 'run=base')");
    for (metric, col, cond) in [
        ("e2e", "e2e_ns", ""),
        (
            "queue",
            "assumeNotNull(queue_ns)",
            " AND queue_ns IS NOT NULL",
        ),
        (
            "first_text",
            "assumeNotNull(first_text_ns)",
            " AND first_text_ns IS NOT NULL",
        ),
        ("max_gap", "max_gap_ns", " AND stream = 1 AND chunks >= 2"),
    ] {
        let want = sql_sorted(store, &format!("SELECT {col} {base}{cond}")).await;
        assert_eq!(sorted(s.values(metric)), want, "{metric}");
    }
    // In start order (the block bootstrap relies on it).
    let q = format!("SELECT e2e_ns {base} ORDER BY start_unix_ns");
    let in_order: Vec<u64> = store.client().query(&q).fetch_all().await.unwrap();
    let in_order: Vec<f64> = in_order.into_iter().map(|ns| ns as f64 / 1e6).collect();
    assert_eq!(s.values("e2e"), in_order.as_slice());
    // Non-streamed requests have no gap or visible-text time.
    assert_eq!(s.values("max_gap").len() as u64, N - N / 10);
    // A capped result is a fixed subset.
    let q = format!("/api/v1/samples?{w}&tag=run%3Dbase&limit=100");
    let (a, b) = (get(addr, &q).await.1, get(addr, &q).await.1);
    assert_eq!(a, b);
    let a: Samples = serde_json::from_value(a).unwrap();
    assert_eq!((a.count, a.returned, a.sampled), (N, 100, true));
    // Both tags of the rows select them; a tag without '=' is refused, naming the parameter.
    let (_, v) = get(addr, &format!("/api/v1/samples?{w}&tag=pool%3Dci&limit=1")).await;
    assert_eq!(v["count"], 3 * N);
    let (code, v) = get(addr, &format!("/api/v1/samples?{w}&tag=run")).await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("\"tag\""),
        "{v}"
    );
    let (_, v) = get(addr, &format!("/api/v1/breakdown?{w}&tag=run%3Dslow")).await;
    assert_eq!(v["count"], N);
}

async fn filters_list_tags(addr: SocketAddr, w: &str) {
    let (_, v) = get(addr, &format!("/api/v1/filters?{w}")).await;
    let tags: Vec<&str> = v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(tags, ["pool=ci", "run=base", "run=same", "run=slow"]);
}

fn gate_args(addr: SocketAddr, t0: u64, base: &str, cand: &str) -> Vec<String> {
    let (from, to) = ((t0 / S).to_string(), (t0 / S + 60).to_string());
    let mut a: Vec<String> = vec!["--api".into(), format!("http://{addr}"), "gate".into()];
    for (k, v) in [
        ("--baseline-from", &from),
        ("--baseline-to", &to),
        ("--candidate-from", &from),
        ("--candidate-to", &to),
    ] {
        a.extend([k.to_string(), v.clone()]);
    }
    a.extend([
        "--baseline-filter".into(),
        format!("tag=run={base}"),
        "--candidate-filter".into(),
        format!("tag=run={cand},model=m"),
    ]);
    a
}

fn regressed(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] == "regression")
        .map(|c| format!("{} {}", c["metric"].as_str().unwrap(), c["q"]))
        .collect()
}

async fn gate_verdicts(addr: SocketAddr, t0: u64) {
    // An unchanged rerun passes.
    let (code, out, err) = cli(gate_args(addr, t0, "base", "same")).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("### inferscope gate: PASS"), "{out}");
    assert!(out.contains("| e2e | p99 |"), "{out}");

    // The slower queue fails the gate, naming the queue phase (and what it drags along).
    let dir = std::env::temp_dir().join(format!("inferscope-gate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (file, json) = (dir.join("base.json"), dir.join("report.json"));
    let mut a = gate_args(addr, t0, "base", "slow");
    a.extend(["--save-baseline".into(), file.display().to_string()]);
    a.extend(["--report-json".into(), json.display().to_string()]);
    let (code, out, err) = cli(a).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("### inferscope gate: REGRESSION"), "{out}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let names = regressed(&report);
    assert!(names.contains(&"queue 0.5".to_string()), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("prefill") && !n.starts_with("decode")),
        "{names:?}"
    );

    // The saved baseline gives the same checks offline; JSON on stdout with --output json.
    let (from, to) = ((t0 / S).to_string(), (t0 / S + 60).to_string());
    let offline: Vec<String> = [
        "--api",
        &format!("http://{addr}"),
        "--output",
        "json",
        "gate",
        "--baseline-file",
        &file.display().to_string(),
        "--candidate-from",
        &from,
        "--candidate-to",
        &to,
        "--candidate-filter",
        "tag=run=slow",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, out, err) = cli(offline).await;
    assert_eq!(code, 1, "{err}");
    let again: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again["checks"], report["checks"]);
    assert_eq!(again["outcome"], "regression");

    // Too few requests: no verdict (2), never a pass.
    let mut a = gate_args(addr, t0, "base", "same");
    a.extend(["--min-requests".into(), "5000".into()]);
    let (code, out, _) = cli(a).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("NOT ENOUGH DATA"), "{out}");
    // A usage error and an unreadable baseline file are "no verdict" too.
    let (code, _, err) = cli(vec![
        "gate".into(),
        "--baseline-file".into(),
        "/nonexistent".into(),
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    let a: Vec<String> = gate_args(addr, t0, "base", "same")
        .into_iter()
        .map(|x| {
            if x == "tag=run=base" {
                "runn=1".into()
            } else {
                x
            }
        })
        .collect();
    let (code, _, err) = cli(a).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown key \"runn\""), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
