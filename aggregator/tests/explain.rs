//! `GET /api/v1/explain/{trace_id}`, `GET /api/v1/explain` and `inferscope explain` against the
//! real local ClickHouse: typical requests of one engine, then a burst that queues behind them,
//! and one request whose engine step was slow; the explainer must name each cause with the
//! figures of the stored rows.
use std::net::SocketAddr;

use inferscope_aggregator::store::rows::{RequestRow, StepRow};
use serde_json::Value;

mod common;
use common::{cli, get, insert, now_s, open_store, request, serve, step_row, with_db, MS, S};

const QUEUED: u64 = 900;
const SLOW_STEP: u64 = 901;

fn id(i: u64) -> String {
    format!("{:032x}", 0xe0_0000 + i)
}

/// A request of engine instance "7:1" on node-a with its own steps `10·i …`.
fn row(i: u64, start: u64, phases: [u64; 5]) -> RequestRow {
    let mut r = request(
        id(i),
        start,
        "node-a",
        "vllm",
        "m",
        200,
        "complete",
        Some(phases),
        0,
        true,
        (i * 10..i * 10 + 4).collect(),
    );
    r.engine_instance = "7:1".into();
    r
}

fn step(i: u64, k: u64, start: u64, dur: u64) -> StepRow {
    step_row("node-a", "7:1", i * 10 + k, start, dur, 4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explainer_names_the_cause() {
    let Some(store) = open_store("explainer_names_the_cause").await else {
        return;
    };
    with_db(store, |store| async move {
        let now = now_s();
        let t0 = (now - 900) * S;
        let typical = [2 * MS, 3 * MS, 10 * MS, 40 * MS, MS];
        let mut rows: Vec<RequestRow> = (0..300)
            .map(|i| row(i, t0 + i * 500 * MS, typical))
            .collect();
        let mut steps = Vec::new();
        for r in &rows {
            let i = r.step_ids[0] / 10;
            for k in 0..4 {
                steps.push(step(
                    i,
                    k,
                    r.start_unix_ns + (5 + 10 * k) * MS,
                    if k == 0 { 10 * MS } else { 13 * MS },
                ));
            }
        }
        // A burst: 30 long requests handed over just before the queued one.
        let tb = t0 + 200 * S;
        for j in 0..30 {
            rows.push(row(
                1000 + j,
                tb - 50 * MS + j * MS,
                [2 * MS, 3 * MS, 10 * MS, 400 * MS, MS],
            ));
        }
        rows.push(row(QUEUED, tb, [2 * MS, 300 * MS, 10 * MS, 40 * MS, MS]));
        // A request with one 200 ms step among 13 ms ones.
        let ts = t0 + 100 * S;
        rows.push(row(SLOW_STEP, ts, [2 * MS, 3 * MS, 10 * MS, 240 * MS, MS]));
        for k in 0..4 {
            steps.push(step(
                SLOW_STEP,
                k,
                ts + (5 + 10 * k) * MS,
                if k == 2 { 200 * MS } else { 13 * MS },
            ));
        }
        insert(&store, "requests", &rows).await;
        insert(&store, "engine_steps", &steps).await;
        let addr = serve(store.clone()).await;
        check(addr, t0).await;
    })
    .await;
}

async fn check(addr: SocketAddr, t0: u64) {
    let (code, q) = get(addr, &format!("/api/v1/explain/{}", id(QUEUED))).await;
    assert_eq!(code, 200, "{q}");
    assert_eq!(q["dominant"], "queueing", "{q}");
    let first = &q["findings"][0];
    assert_eq!(first["typical_ms"], 3.0, "{q}");
    // The burst's 30 requests were in the engine when it arrived (the typical ones had left).
    assert!(
        first["sentence"]
            .as_str()
            .unwrap()
            .contains("30 other requests"),
        "{first}"
    );
    assert_eq!(q["reference_count"], 332);

    let (_, s) = get(addr, &format!("/api/v1/explain/{}", id(SLOW_STEP))).await;
    assert_eq!(s["dominant"], "slow_step", "{s}");
    assert!(
        s["findings"][0]["sentence"]
            .as_str()
            .unwrap()
            .contains("15.4×"),
        "{s}"
    );

    let (_, t) = get(addr, &format!("/api/v1/explain/{}", id(5))).await;
    assert!(t["summary"].as_str().unwrap().contains("not slower"), "{t}");
    let (code, _) = get(addr, &format!("/api/v1/explain/{:032x}", 1)).await;
    assert_eq!(code, 404);

    // The slow cohort of the window: the burst's long decodes.
    let w = format!("from={}&to={}", t0 / S, t0 / S + 400);
    let (code, c) = get(addr, &format!("/api/v1/explain?{w}")).await;
    assert_eq!(code, 200, "{c}");
    assert_eq!(c["dominant"], "decode", "{c}");
    let v: Value = c["slow_vs_median"]["slow"]["count"].clone();
    assert!(v.as_u64().unwrap() >= 4, "{c}");

    // The CLI prints the summary and the findings.
    let (code, out, err) = cli(vec![
        "--api".into(),
        format!("http://{addr}"),
        "explain".into(),
        id(QUEUED),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("queueing"), "{out}");
    assert!(
        out.lines().next().unwrap().contains("most of it: queueing"),
        "{out}"
    );
    let (code, out, err) = cli(vec![
        "--api".into(),
        format!("http://{addr}"),
        "explain".into(),
        "--p99".into(),
        "--from".into(),
        (t0 / S).to_string(),
        "--to".into(),
        (t0 / S + 400).to_string(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("the largest part: decode"), "{out}");
}
