//! Query API and CLI against the real local ClickHouse (`scripts/clickhouse.sh start`).
//!
//! Each test creates its own database (`test_api_<pid>_<nanos>`), fills it with synthetic
//! requests of known shape, serves the router on 127.0.0.1:0 and checks the endpoints against
//! direct SQL on the same rows. Without a server the tests print `SKIPPED …` and pass, unless
//! `INFERSCOPE_REQUIRE_BPF=1` (CI), where they fail.
use std::collections::HashSet;
use std::net::SocketAddr;

use clickhouse::Row;
use inferscope_aggregator::api::breakdown::{Breakdown, QuantileRow};
use inferscope_aggregator::api::requests::RequestList;
use inferscope_aggregator::api::trace::Trace;
use inferscope_aggregator::store::rows::{RequestRow, SpanRow, StepRow};
use inferscope_aggregator::store::Store;
use serde::Deserialize;

mod common;
use common::{cli, db_client, get, open_store, request, secs, serve, with_db, MS, S};

/// Regular synthetic requests.
const N: u64 = 3000;
/// The trace that spans two nodes.
const SPECIAL: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
/// A request with a row but no spans.
const NO_SPANS_INDEX: u64 = 10;

/// Deterministic pseudo-random numbers.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// The span context of step `s` of instance "1" on node-a: stored for even ids, derived by
/// the aggregator for odd ones (as for steps stored before migration 4).
fn step_ctx(s: u64) -> (String, String) {
    let (t, sp) = inferscope_api::step_context("node-a", "1", s);
    (t.to_string(), sp.to_string())
}

#[allow(clippy::too_many_arguments)]
fn span(
    trace: &str,
    id: u64,
    parent: u64,
    name: &str,
    node: &str,
    start: u64,
    end: u64,
    attrs: &[(&str, &str)],
) -> SpanRow {
    SpanRow {
        start: secs(start),
        trace_id: trace.into(),
        span_id: format!("{id:016x}"),
        parent_span_id: if parent == 0 {
            String::new()
        } else {
            format!("{parent:016x}")
        },
        name: name.into(),
        start_unix_ns: start,
        end_unix_ns: end,
        node: node.into(),
        pid: 4242,
        attr_keys: attrs.iter().map(|(k, _)| k.to_string()).collect(),
        attr_values: attrs.iter().map(|(_, v)| v.to_string()).collect(),
        link_trace_ids: vec![],
        link_span_ids: vec![],
        batch_id: "test/1/1".into(),
    }
}

struct Data {
    /// Window covering every in-window row: [from, to).
    from_ns: u64,
    to_ns: u64,
    /// Trace ids of the two requests batched with the special trace.
    neighbours: [String; 2],
    /// A trace with a request row and no spans.
    no_spans: String,
}

fn trace_id(i: u64) -> String {
    format!(
        "{:016x}{:016x}",
        0xfeed_0000_0000_0000u64 | i,
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}

/// Inserts the synthetic data set:
/// * N requests over 30 minutes ending 10 minutes ago; 2/3 `llama-8b`, 1/3 `qwen-0.5b`, two
///   nodes; 1 % have a huge queue (the slow cohort is queue-bound), 5 % have no phases;
///   a few 500s and client aborts;
/// * 5 requests three hours earlier (outside the default window);
/// * the special trace: a row on `proxy-1` and one on `node-a`, spans on both, 11 engine steps
///   shared with two other requests.
async fn insert_data(store: &Store) -> Data {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        * S;
    let base = now - 40 * 60 * S;
    let mut rng = Lcg(7);
    let mut rows = Vec::new();
    for i in 0..N {
        let start = base + i * 600 * MS + rng.range(0, 500) * MS;
        let model = if i % 3 == 0 { "qwen-0.5b" } else { "llama-8b" };
        let node = if i % 2 == 0 { "node-a" } else { "node-b" };
        let (status, outcome) = match i {
            _ if i % 50 == 7 => (500, "server_close"),
            _ if i % 40 == 3 => (0, "client_abort"),
            _ => (200, "complete"),
        };
        let mut q = rng.range(0, 20) * MS;
        if i % 100 == 42 {
            q += rng.range(2000, 4000) * MS;
        }
        let mut d = rng.range(100, 400) * MS;
        if i % 100 == 17 {
            d += rng.range(100, 300) * MS;
        }
        let phases = [
            rng.range(1, 4) * MS,
            q,
            rng.range(20, 60) * MS,
            d,
            rng.range(500, 2000) * 1000,
        ];
        let known = i % 20 != 5;
        rows.push(request(
            trace_id(i),
            start,
            node,
            "vllm",
            model,
            status,
            outcome,
            known.then_some(phases),
            rng.range(150, 500) * MS,
            i % 4 != 0,
            vec![],
        ));
    }
    for i in 0..5 {
        rows.push(request(
            trace_id(100_000 + i),
            base - 3 * 3600 * S + i * S,
            "node-a",
            "vllm",
            "llama-8b",
            200,
            "complete",
            Some([MS, MS, MS, MS, MS]),
            0,
            true,
            vec![],
        ));
    }
    // The special trace and its two batch neighbours, on node-a, during the window.
    let t = base + 20 * 60 * S;
    let steps: Vec<u64> = (900_000..900_011).collect();
    let neighbours = [trace_id(200_001), trace_id(200_002)];
    rows.push(request(
        SPECIAL.into(),
        t,
        "proxy-1",
        "openai-compatible",
        "llama-8b",
        200,
        "complete",
        None,
        600 * MS,
        true,
        vec![],
    ));
    rows.push(request(
        SPECIAL.into(),
        t + MS,
        "node-a",
        "vllm",
        "llama-8b",
        200,
        "complete",
        Some([2 * MS, 10 * MS, 30 * MS, 500 * MS, MS]),
        0,
        true,
        steps.clone(),
    ));
    rows.push(request(
        neighbours[0].clone(),
        t - 5 * MS,
        "node-a",
        "vllm",
        "llama-8b",
        200,
        "complete",
        Some([MS, 5 * MS, 30 * MS, 300 * MS, MS]),
        0,
        true,
        (899_990..900_003).collect(),
    ));
    rows.push(request(
        neighbours[1].clone(),
        t + 100 * MS,
        "node-a",
        "vllm",
        "llama-8b",
        200,
        "complete",
        Some([MS, 5 * MS, 30 * MS, 600 * MS, MS]),
        0,
        true,
        (900_003..900_050).collect(),
    ));

    let mut ins = db_client(store)
        .insert::<RequestRow>("requests")
        .await
        .unwrap();
    for r in &rows {
        ins.write(r).await.unwrap();
    }
    ins.end().await.unwrap();

    // Spans: the special trace on both nodes; every regular request (except one) has a root.
    let mut spans = vec![
        span(
            SPECIAL,
            1,
            0,
            "http.server",
            "proxy-1",
            t,
            t + 600 * MS,
            &[
                ("http.method", "POST"),
                ("http.target", "/v1/completions"),
                ("http.status_code", "200"),
            ],
        ),
        span(
            SPECIAL,
            2,
            1,
            "http.client",
            "proxy-1",
            t + MS / 2,
            t + 599 * MS,
            &[],
        ),
        span(
            SPECIAL,
            3,
            2,
            "http.server",
            "node-a",
            t + MS,
            t + 545 * MS,
            &[("gen_ai.request.model", "llama-8b")],
        ),
        span(SPECIAL, 4, 3, "frontend", "node-a", t + MS, t + 3 * MS, &[]),
        span(
            SPECIAL,
            5,
            3,
            "queue",
            "node-a",
            t + 3 * MS,
            t + 13 * MS,
            &[],
        ),
        span(
            SPECIAL,
            6,
            3,
            "prefill",
            "node-a",
            t + 13 * MS,
            t + 43 * MS,
            &[],
        ),
        span(
            SPECIAL,
            7,
            3,
            "decode",
            "node-a",
            t + 43 * MS,
            t + 543 * MS,
            &[],
        ),
    ];
    // The first five steps as older node-probes sent them (an `engine.step` child per request);
    // the others only linked from the root span (stored once, in engine_steps).
    for (k, s) in steps.iter().enumerate() {
        let st = t + 13 * MS + k as u64 * 40 * MS;
        if k >= 5 {
            let (lt, ls) = step_ctx(*s);
            let root = spans
                .iter_mut()
                .find(|x| x.name == "http.server" && x.node == "node-a")
                .unwrap();
            root.link_trace_ids.push(lt);
            root.link_span_ids.push(ls);
            continue;
        }
        spans.push(span(
            SPECIAL,
            100 + k as u64,
            3,
            "engine.step",
            "node-a",
            st,
            st + 30 * MS,
            &[
                ("engine.step_id", &s.to_string()),
                ("engine.batch_size", "3"),
                ("shared", "true"),
            ],
        ));
    }
    for r in rows
        .iter()
        .filter(|r| r.trace_id != SPECIAL && r.trace_id != trace_id(NO_SPANS_INDEX))
    {
        spans.push(span(
            &r.trace_id,
            1,
            0,
            "http.server",
            &r.node,
            r.start_unix_ns,
            r.end_unix_ns,
            &[],
        ));
    }
    let mut ins = db_client(store).insert::<SpanRow>("spans").await.unwrap();
    for s in &spans {
        ins.write(s).await.unwrap();
    }
    ins.end().await.unwrap();

    // Engine steps of node-a; 900001 twice (a ReplacingMergeTree duplicate not merged yet).
    // Instance "1" is the boot id in the requests' batch_id (node-probe's convention); a
    // restarted run "0-old" reused ids 900001..900003 in the same window and must not be
    // taken for them.
    let mut ins = db_client(store)
        .insert::<StepRow>("engine_steps")
        .await
        .unwrap();
    for (k, s) in (899_990..900_050u64).enumerate() {
        let st = t - 400 * MS + k as u64 * 40 * MS;
        let row = StepRow {
            start: secs(st),
            node: "node-a".into(),
            engine_instance: "1".into(),
            step_id: s,
            start_unix_ns: st,
            end_unix_ns: st + 30 * MS,
            batch_size: 3,
            trace_id: if s % 2 == 0 {
                step_ctx(s).0
            } else {
                String::new()
            },
            span_id: if s % 2 == 0 {
                step_ctx(s).1
            } else {
                String::new()
            },
            batch_unit: String::new(),
            // From 900005 on, steps the CUDA hooks saw (migration 10's columns).
            tokens: if s >= 900_005 { 12 } else { 0 },
            gpu_class: if s >= 900_005 {
                "full_graph".into()
            } else {
                String::new()
            },
            gpu_ns: (s >= 900_005).then_some(20 * MS),
            gpu_launch_ns: 40_000,
            graph_launches: 1,
            kernel_launches: 2,
            dtoh_bytes: 24,
            htod_bytes: 0,
            sync_wait_ns: 19 * MS,
            host_bound: 0,
            gpu_ranks: 1,
            gpu_upper_bound: u8::from(s == 900_006),
            // From 900007 on, collectives lined up across two ranks (migration 12's columns).
            collectives: (s >= 900_007).then_some(4),
            collective_wait_ns: if s >= 900_007 { 3 * MS } else { 0 },
            straggler_rank: (s >= 900_007).then_some(1),
            straggler_lag_ns: if s >= 900_007 { 2 * MS } else { 0 },
        };
        ins.write(&row).await.unwrap();
        if s == 900_001 {
            ins.write(&row).await.unwrap();
        }
        if (900_001..=900_003).contains(&s) {
            let other = StepRow {
                engine_instance: "0-old".into(),
                batch_size: 9,
                end_unix_ns: st + 5 * MS,
                ..row
            };
            ins.write(&other).await.unwrap();
        }
    }
    ins.end().await.unwrap();

    Data {
        from_ns: base - 60 * S,
        to_ns: now,
        neighbours,
        no_spans: trace_id(NO_SPANS_INDEX),
    }
}

async fn get_ok<T: serde::de::DeserializeOwned>(addr: SocketAddr, pq: &str) -> T {
    let (code, v) = get(addr, pq).await;
    assert_eq!(code, 200, "GET {pq}: {v}");
    serde_json::from_value(v).unwrap_or_else(|e| panic!("GET {pq}: {e}"))
}

fn window_q(d: &Data) -> String {
    format!(
        "from={}.{:09}&to={}.{:09}",
        d.from_ns / S,
        d.from_ns % S,
        d.to_ns / S,
        d.to_ns % S
    )
}

fn window_sql(d: &Data) -> String {
    format!(
        "start >= toDateTime({}) AND start <= toDateTime({}) AND start_unix_ns >= {} AND start_unix_ns < {}",
        d.from_ns / S,
        d.to_ns.div_ceil(S),
        d.from_ns,
        d.to_ns
    )
}

/// Reads one metric of a quantile row.
type Pick = fn(&QuantileRow) -> Option<f64>;

#[derive(Row, Deserialize)]
struct Direct {
    count: u64,
    values: Vec<u64>,
}

/// Checks one breakdown against per-metric SQL: `quantilesExact` over the non-null values.
async fn check_breakdown(
    store: &Store,
    addr: SocketAddr,
    d: &Data,
    api_filter: &str,
    sql_filter: &str,
) {
    let levels = "0.5,0.9,0.99,0.999";
    let b: Breakdown = get_ok(
        addr,
        &format!(
            "/api/v1/breakdown?{}&quantiles={levels}{api_filter}",
            window_q(d)
        ),
    )
    .await;
    let table = store.table("requests");
    let metrics: [(&str, Pick); 14] = [
        ("max_gap", (|q| q.gaps.max_gap)),
        ("engine_tpot", (|q| q.gaps.engine_tpot)),
        ("engine_max_gap", (|q| q.gaps.engine_max_gap)),
        ("gpu", (|q| q.resources.gpu)),
        ("gpu_host_bound", (|q| q.resources.gpu_host_bound)),
        ("collective_wait", (|q| q.resources.collective_wait)),
        ("e2e", (|q| q.e2e_ms)),
        ("ttft", (|q| q.ttft_ms)),
        ("tpot", (|q| q.tpot_ms)),
        ("frontend", (|q| q.frontend_ms)),
        ("queue", (|q| q.queue_ms)),
        ("prefill", (|q| q.prefill_ms)),
        ("decode", (|q| q.decode_ms)),
        ("delivery", (|q| q.delivery_ms)),
    ];
    let total: u64 = store
        .client()
        .query(&format!(
            "SELECT count() FROM {table} WHERE {} {sql_filter}",
            window_sql(d)
        ))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(b.count, total, "count ({api_filter})");
    assert!(total > 0);
    for (m, get_q) in &metrics {
        // A wire gap needs a stream of two or more events (the column is not Nullable).
        let has = match *m {
            "max_gap" => "stream = 1 AND chunks >= 2".to_string(),
            _ => format!("{m}_ns IS NOT NULL"),
        };
        let direct: Direct = store
            .client()
            .query(&format!(
                "SELECT count(), quantilesExact({levels})(assumeNotNull({m}_ns)) FROM {table} \
                 WHERE {} {sql_filter} AND {has}",
                window_sql(d)
            ))
            .fetch_one()
            .await
            .unwrap();
        for (i, q) in b.quantiles.iter().enumerate() {
            let want = (direct.count > 0).then(|| direct.values[i] as f64 / 1e6);
            assert_eq!(get_q(q), want, "{m} p{} ({api_filter})", q.q);
        }
    }
    assert_eq!(
        b.quantiles.iter().map(|q| q.q).collect::<Vec<_>>(),
        vec![0.5, 0.9, 0.99, 0.999]
    );
    assert!(b.samples.gaps.engine_tpot > 0 && b.samples.gaps.max_gap > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_against_clickhouse() {
    let Some(store) = open_store("api_against_clickhouse").await else {
        return;
    };
    with_db(store, |store| async move {
        let d = insert_data(&store).await;
        let addr = serve(store.clone()).await;
        breakdown_quantiles(&store, addr, &d).await;
        slow_vs_median(&store, addr, &d).await;
        request_list(&store, addr, &d).await;
        traces(addr, &d).await;
        bad_parameters(addr).await;
        misc(addr, &d).await;
        schema_doc_queries(&store).await;
    })
    .await;
}

/// (a) quantiles equal direct SQL, for several filters.
async fn breakdown_quantiles(store: &Store, addr: SocketAddr, d: &Data) {
    check_breakdown(store, addr, d, "", "").await;
    check_breakdown(store, addr, d, "&model=llama-8b", "AND model = 'llama-8b'").await;
    check_breakdown(
        store,
        addr,
        d,
        "&node=node-b&engine=vllm",
        "AND node = 'node-b' AND engine = 'vllm'",
    )
    .await;
    check_breakdown(store, addr, d, "&status=200", "AND status = 200").await;
    check_breakdown(
        store,
        addr,
        d,
        "&status=5xx",
        "AND status >= 500 AND status <= 599",
    )
    .await;
    // The default window (the last hour) holds everything but the 3-hour-old rows.
    let b: Breakdown = get_ok(addr, "/api/v1/breakdown").await;
    assert_eq!(b.count, N + 4);
    // An empty window: count 0, no values, no comparison.
    let b: Breakdown = get_ok(addr, "/api/v1/breakdown?from=1000000000&to=1000003600").await;
    assert_eq!(b.count, 0);
    assert!(b
        .quantiles
        .iter()
        .all(|q| q.e2e_ms.is_none() && q.queue_ms.is_none()));
    assert!(b.slow_vs_median.is_none());
}

#[derive(Row, Deserialize)]
struct CohortSql {
    n: u64,
    min: u64,
    sum_e2e: u64,
    sum_phases: u64,
}

/// (b) slow vs median.
async fn slow_vs_median(store: &Store, addr: SocketAddr, d: &Data) {
    let b: Breakdown = get_ok(
        addr,
        &format!("/api/v1/breakdown?{}&slow_quantile=0.99", window_q(d)),
    )
    .await;
    let c = b.slow_vs_median.expect("comparison");
    let table = store.table("requests");
    let (p40, p60, p99): (u64, u64, u64) = {
        let v: Vec<u64> = store
            .client()
            .query(&format!(
                "SELECT quantilesExact(0.4, 0.6, 0.99)(e2e_ns) FROM {table} WHERE {}",
                window_sql(d)
            ))
            .fetch_one()
            .await
            .unwrap();
        (v[0], v[1], v[2])
    };
    assert!(c.slow.definition.contains("p99"), "{}", c.slow.definition);
    // The slow cohort is exactly the requests at or above p99, and they are the slowest.
    let cohort = |cond: String| {
        let q = format!(
            "SELECT count(), min(e2e_ns), sum(e2e_ns), sum(ifNull(frontend_ns, 0) + ifNull(queue_ns, 0) + \
             ifNull(prefill_ns, 0) + ifNull(decode_ns, 0) + ifNull(delivery_ns, 0)) FROM {table} WHERE {} AND {cond}",
            window_sql(d)
        );
        let client = store.client().clone();
        async move { client.query(&q).fetch_one::<CohortSql>().await.unwrap() }
    };
    let slow = cohort(format!("e2e_ns >= {p99}")).await;
    assert_eq!(c.slow.count, slow.n);
    assert!(slow.n >= 25 && slow.n <= 40, "slow cohort of {}", slow.n);
    assert_eq!(c.slow.min_e2e_ms, slow.min as f64 / 1e6);
    let faster_max: u64 = store
        .client()
        .query(&format!(
            "SELECT max(e2e_ns) FROM {table} WHERE {} AND e2e_ns < {p99}",
            window_sql(d)
        ))
        .fetch_one()
        .await
        .unwrap();
    assert!(faster_max < slow.min);
    assert!(c.slow.min_e2e_ms >= c.median.max_e2e_ms);
    let med = cohort(format!("e2e_ns >= {p40} AND e2e_ns <= {p60}")).await;
    assert_eq!(c.median.count, med.n);
    assert!(c.median.min_e2e_ms >= p40 as f64 / 1e6 && c.median.max_e2e_ms <= p60 as f64 / 1e6);
    // Shares: each is mean phase / mean e2e; together they are the cohort's phase coverage.
    for (cohort, direct) in [(&c.slow, &slow), (&c.median, &med)] {
        let sum: f64 = cohort.phases.iter().map(|(_, p)| p.share).sum();
        assert!((sum - cohort.covered_share).abs() < 1e-9);
        let coverage = direct.sum_phases as f64 / direct.sum_e2e as f64;
        assert!(
            (cohort.covered_share - coverage).abs() < 1e-9,
            "{} vs {coverage}",
            cohort.covered_share
        );
        assert!(cohort.covered_share > 0.8 && cohort.covered_share <= 1.0 + 1e-9);
        assert!((cohort.mean_e2e_ms - direct.sum_e2e as f64 / direct.n as f64 / 1e6).abs() < 1e-6);
        let phase_ms: f64 = cohort.phases.iter().map(|(_, p)| p.mean_ms).sum();
        assert!((phase_ms + cohort.unattributed.mean_ms - cohort.mean_e2e_ms).abs() < 1e-6);
        for (_, p) in cohort.phases.iter() {
            assert!((p.share - p.mean_ms / cohort.mean_e2e_ms).abs() < 1e-9);
        }
    }
    // By construction the slow requests are queue-bound.
    assert_eq!(c.largest_difference.as_deref(), Some("queue"));
    assert!(c.slow.phases.queue.share > 0.7 && c.median.phases.queue.share < 0.1);
    assert!(
        (c.diff.queue.share - (c.slow.phases.queue.share - c.median.phases.queue.share)).abs()
            < 1e-12
    );
    assert!(c.slow.mean_e2e_ms > 5.0 * c.median.mean_e2e_ms);
}

/// (c) filters, sort and pages.
async fn request_list(store: &Store, addr: SocketAddr, d: &Data) {
    let table = store.table("requests");
    let total: u64 = store
        .client()
        .query(&format!(
            "SELECT count() FROM {table} WHERE {} AND model = 'llama-8b'",
            window_sql(d)
        ))
        .fetch_one()
        .await
        .unwrap();
    let mut seen = HashSet::new();
    let mut last = f64::INFINITY;
    let mut offset = Some(0);
    let mut pages = 0;
    while let Some(off) = offset {
        let l: RequestList = get_ok(
            addr,
            &format!(
                "/api/v1/requests?{}&model=llama-8b&limit=97&offset={off}",
                window_q(d)
            ),
        )
        .await;
        assert_eq!(l.total, total);
        assert_eq!((l.sort.as_str(), l.order.as_str()), ("e2e", "desc"));
        for r in &l.requests {
            assert_eq!(r.model, "llama-8b");
            let diff = r.first_text_ms.map(|t| t - r.ttft_ms);
            assert!(
                r.stream == diff.is_some_and(|d| (d - 1.0).abs() < 1e-6),
                "first text of {}: {:?} (ttft {})",
                r.trace_id,
                r.first_text_ms,
                r.ttft_ms
            );
            assert!(r.e2e_ms <= last, "not sorted: {} after {last}", r.e2e_ms);
            last = r.e2e_ms;
            assert!(
                seen.insert((r.trace_id, r.node.clone())),
                "page overlap: {}",
                r.trace_id
            );
        }
        offset = l.next_offset;
        pages += 1;
        assert!(pages < 100);
    }
    assert_eq!(seen.len() as u64, total);
    assert_eq!(pages, total.div_ceil(97));

    // Ascending by queue: known queues ascending, unknown ones last.
    let l: RequestList = get_ok(
        addr,
        &format!(
            "/api/v1/requests?{}&sort=queue&order=asc&limit=1000",
            window_q(d)
        ),
    )
    .await;
    let qs: Vec<Option<f64>> = l.requests.iter().map(|r| r.queue_ms).collect();
    let first_none = qs.iter().position(Option::is_none).unwrap_or(qs.len());
    assert!(qs[..first_none].windows(2).all(|w| w[0] <= w[1]));
    let l: RequestList = get_ok(
        addr,
        &format!(
            "/api/v1/requests?{}&sort=queue&order=desc&limit=1000&offset={}",
            window_q(d),
            l.total - 100
        ),
    )
    .await;
    assert!(
        l.requests.last().unwrap().queue_ms.is_none(),
        "unknown queues sort last"
    );

    // Filters.
    let l: RequestList = get_ok(
        addr,
        &format!(
            "/api/v1/requests?{}&min_e2e_ms=1500&limit=1000",
            window_q(d)
        ),
    )
    .await;
    assert!(!l.requests.is_empty() && l.requests.iter().all(|r| r.e2e_ms >= 1500.0));
    assert_eq!(l.total, l.requests.len() as u64);
    assert_eq!(l.next_offset, None);
    let l: RequestList = get_ok(
        addr,
        &format!("/api/v1/requests?{}&status=5xx&limit=1000", window_q(d)),
    )
    .await;
    assert_eq!(l.total, N.div_ceil(50));
    assert!(l
        .requests
        .iter()
        .all(|r| r.status == 500 && r.outcome == "server_close"));
    let l: RequestList = get_ok(
        addr,
        &format!(
            "/api/v1/requests?{}&outcome=client_abort&node=node-b&sort=start&order=asc",
            window_q(d)
        ),
    )
    .await;
    assert!(l
        .requests
        .iter()
        .all(|r| r.outcome == "client_abort" && r.node == "node-b" && r.status == 0));
    assert!(l
        .requests
        .windows(2)
        .all(|w| w[0].start_unix_ns <= w[1].start_unix_ns));
    // Strings are bound, not spliced: a quote is just a model that does not exist.
    let l: RequestList = get_ok(
        addr,
        &format!(
            "/api/v1/requests?{}&model=x%27%20OR%201%3D1%20--%20%3F",
            window_q(d)
        ),
    )
    .await;
    assert_eq!(l.total, 0);
    // The default page: 50 slowest in the last hour.
    let l: RequestList = get_ok(addr, "/api/v1/requests").await;
    assert_eq!(l.requests.len(), 50);
    assert_eq!(l.next_offset, Some(50));
}

/// (d) trace lookup.
async fn traces(addr: SocketAddr, d: &Data) {
    let t: Trace = get_ok(addr, &format!("/api/v1/traces/{}", SPECIAL.to_uppercase())).await;
    assert_eq!(t.trace_id, SPECIAL);
    assert_eq!(t.nodes, vec!["node-a".to_string(), "proxy-1".to_string()]);
    assert_eq!(t.requests.len(), 2);
    assert_eq!(t.spans.len(), 7 + 11);
    assert!(t
        .spans
        .windows(2)
        .all(|w| w[0].start_unix_ns <= w[1].start_unix_ns));
    assert_eq!(t.spans[0].name, "http.server");
    assert_eq!(t.spans[0].node, "proxy-1");
    assert_eq!(t.spans[0].offset_ms, 0.0);
    assert_eq!(
        t.spans[0].attributes.get("http.method").map(String::as_str),
        Some("POST")
    );
    assert!(t
        .spans
        .iter()
        .any(|s| s.node == "node-a" && s.name == "decode"));
    let engine_row = t
        .requests
        .iter()
        .find(|r| r.request.node == "node-a")
        .unwrap();
    assert_eq!(engine_row.step_ids.len(), 11);
    assert_eq!(engine_row.request.queue_ms, Some(10.0));
    // Structured endpoints and sequence numbers of the row.
    let ce = engine_row.client_endpoint.as_ref().unwrap();
    assert_eq!(
        (ce.ip.as_str(), ce.port, ce.netns),
        ("10.0.0.9", 50000, 4026531840)
    );
    assert_eq!(engine_row.server_endpoint.as_ref().unwrap().port, 8000);
    assert_eq!(
        (engine_row.req_tcp_seq, engine_row.resp_tcp_seq),
        (Some(1000), None)
    );
    // One engine.step child of the engine's root per step, whether it was stored as a span
    // (older senders) or only once in engine_steps and linked from the root.
    let root = t
        .spans
        .iter()
        .find(|s| s.node == "node-a" && s.name == "http.server")
        .unwrap();
    let step_spans: Vec<_> = t.spans.iter().filter(|s| s.name == "engine.step").collect();
    assert_eq!(step_spans.len(), 11);
    assert!(step_spans
        .iter()
        .all(|s| s.parent_span_id == Some(root.span_id)));
    for st in t.steps.iter().filter(|s| s.step_id >= 900_005) {
        let (lt, ls) = step_ctx(st.step_id);
        assert_eq!(
            (st.trace_id.unwrap(), st.span_id.unwrap()),
            (lt.parse().unwrap(), ls.parse().unwrap())
        );
        let sp = step_spans
            .iter()
            .find(|s| s.span_id == st.span_id.unwrap())
            .expect("step span");
        assert_eq!(sp.attributes["engine.step_id"], st.step_id.to_string());
        assert_eq!(sp.attributes["engine.batch_size"], "3");
        assert_eq!(sp.attributes["engine.batch_unit"], "requests");
        assert_eq!(sp.attributes["engine.tokens"], "12");
        assert_eq!(sp.attributes["gpu.class"], "full_graph");
        assert_eq!(sp.attributes["gpu.ms"], "20.000");
        assert_eq!(Some(sp.start_unix_ns), st.start_unix_ns);
        let g = st.gpu.as_ref().expect("the step's GPU side");
        assert_eq!(
            (g.class.as_str(), g.gpu_ms, g.sync_wait_ms),
            ("full_graph", 20.0, 19.0)
        );
        assert_eq!(
            (g.graph_launches, g.kernel_launches, g.dtoh_bytes),
            (1, 2, 24)
        );
        assert_eq!(g.upper_bound, st.step_id == 900_006);
        assert_eq!(st.tokens, Some(12));
        match &st.collectives {
            Some(c) => {
                assert!(st.step_id >= 900_007);
                assert_eq!(
                    (c.count, c.wait_ms, c.straggler_rank, c.straggler_lag_ms),
                    (4, 3.0, 1, 2.0)
                );
                assert_eq!(sp.attributes["nccl.straggler_rank"], "1");
            }
            None => assert!(st.step_id < 900_007),
        }
        assert!(root.links.iter().any(|l| l.span_id == sp.span_id));
    }
    // 11 steps, deduplicated, each with timing from engine_steps and its batch neighbours.
    assert_eq!(t.steps.len(), 11);
    assert!(!t.steps_truncated);
    for s in &t.steps {
        assert_eq!(
            s.engine_instance.as_deref(),
            Some("1"),
            "step {}",
            s.step_id
        );
        assert_eq!(s.batch_size, Some(3));
        assert_eq!(s.duration_ms, Some(30.0));
        assert_eq!(s.gpu.is_some(), s.step_id >= 900_005, "step {}", s.step_id);
        let want: Vec<&String> = match s.step_id {
            900_000..=900_002 => vec![&d.neighbours[0]],
            _ => vec![&d.neighbours[1]],
        };
        assert_eq!(s.shared_with_count, want.len() as u64, "step {}", s.step_id);
        assert_eq!(s.shared_with.iter().collect::<Vec<_>>(), want);
    }
    assert_eq!(t.batched_with.len(), 2);
    assert_eq!(t.batched_with[0].request.trace_id, d.neighbours[1]);
    assert_eq!(t.batched_with[0].shared_steps, 8);
    assert_eq!(t.batched_with[1].request.trace_id, d.neighbours[0]);
    assert_eq!(t.batched_with[1].shared_steps, 3);

    // A request row without spans is still found (scan of the requests table).
    let t: Trace = get_ok(addr, &format!("/api/v1/traces/{}", d.no_spans)).await;
    assert_eq!(t.requests.len(), 1);
    assert!(t.spans.is_empty());

    let (code, v) = get(addr, "/api/v1/traces/0123456789abcdef0123456789abcdef").await;
    assert_eq!(code, 404, "{v}");
    assert_eq!(v["error"]["code"], "not_found");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not found"));
    for bad in [
        "xyz",
        "0123456789abcdef0123456789abcdeg",
        "0123456789abcdef0123456789abcdef00",
    ] {
        let (code, v) = get(addr, &format!("/api/v1/traces/{bad}")).await;
        assert_eq!(code, 400, "{bad}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("trace_id"),
            "{v}"
        );
    }
}

/// (e) every bad parameter is a 400 naming it.
async fn bad_parameters(addr: SocketAddr) {
    let long = "m".repeat(257);
    let cases: Vec<(String, &str)> = vec![
        ("/api/v1/breakdown?quantiles=1.5".into(), "quantiles"),
        ("/api/v1/breakdown?quantiles=0".into(), "quantiles"),
        ("/api/v1/breakdown?quantiles=0.5,abc".into(), "quantiles"),
        (
            "/api/v1/breakdown?quantiles=0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9".into(),
            "quantiles",
        ),
        ("/api/v1/breakdown?slow_quantile=1".into(), "slow_quantile"),
        ("/api/v1/breakdown?from=yesterday".into(), "from"),
        (
            "/api/v1/breakdown?from=1700000100&to=1700000000".into(),
            "from",
        ),
        (
            "/api/v1/breakdown?from=1600000000&to=1700000000".into(),
            "to",
        ),
        ("/api/v1/breakdown?to=99999999999".into(), "to"),
        ("/api/v1/breakdown?status=abc".into(), "status"),
        (format!("/api/v1/breakdown?model={long}"), "model"),
        ("/api/v1/breakdown?limit=5".into(), "limit"),
        ("/api/v1/requests?limit=0".into(), "limit"),
        ("/api/v1/requests?limit=1001".into(), "limit"),
        ("/api/v1/requests?offset=-1".into(), "offset"),
        ("/api/v1/requests?sort=latency".into(), "sort"),
        ("/api/v1/requests?order=up".into(), "order"),
        ("/api/v1/requests?min_e2e_ms=abc".into(), "min_e2e_ms"),
        ("/api/v1/requests?min_e2e_ms=-1".into(), "min_e2e_ms"),
        (format!("/api/v1/requests?node={long}"), "node"),
        ("/api/v1/requests?model=a&model=b".into(), "model"),
        ("/api/v1/requests?colour=red".into(), "colour"),
        (
            "/api/v1/filters?from=1700000000&to=1600000000".into(),
            "from",
        ),
        (
            "/api/v1/traces/0123456789abcdef0123456789abcdef?from=x".into(),
            "from",
        ),
    ];
    for (pq, field) in cases {
        let (code, v) = get(addr, &pq).await;
        assert_eq!(code, 400, "{pq}: {v}");
        assert_eq!(v["error"]["code"], "invalid_argument", "{pq}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("\"{field}\"")), "{pq}: {msg}");
    }
    let (code, v) = get(addr, "/api/v1/nope").await;
    assert_eq!(code, 404);
    assert_eq!(v["error"]["code"], "not_found");
}

async fn misc(addr: SocketAddr, d: &Data) {
    let f: inferscope_aggregator::api::filters::FilterValues =
        get_ok(addr, &format!("/api/v1/filters?{}", window_q(d))).await;
    assert_eq!(f.models, vec!["llama-8b", "qwen-0.5b"]);
    assert_eq!(f.nodes, vec!["node-a", "node-b", "proxy-1"]);
    assert_eq!(f.engines, vec!["openai-compatible", "vllm"]);
    assert_eq!(f.statuses, vec![0, 200, 500]);
    assert_eq!(f.outcomes, vec!["client_abort", "complete", "server_close"]);
    let url = format!("http://{addr}/openapi.yaml");
    let body =
        tokio::task::spawn_blocking(move || ureq::get(&url).call().unwrap().into_string().unwrap())
            .await
            .unwrap();
    assert!(body.starts_with("openapi: 3"));
    for p in [
        "/api/v1/breakdown",
        "/api/v1/requests",
        "/api/v1/traces/{trace_id}",
        "/api/v1/filters",
        "/api/v1/groups",
        "/api/v1/samples",
    ] {
        assert!(body.contains(&format!("  {p}:")), "openapi.yaml lacks {p}");
    }
}

/// Every `sql` block of docs/schema.md runs on this server and returns rows for this data set.
async fn schema_doc_queries(store: &Store) {
    let doc = include_str!("../../docs/schema.md");
    let blocks: Vec<&str> = doc
        .split("```sql\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 11, "{} sql blocks", blocks.len());
    for (i, b) in blocks.iter().enumerate() {
        let sql = b.replace("inferscope.", &format!("{}.", store.database));
        let out = store
            .client()
            .query(&sql)
            .fetch_bytes("TabSeparated")
            .unwrap()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("docs/schema.md query {}: {e}\n{sql}", i + 1));
        assert!(
            !out.is_empty(),
            "docs/schema.md query {} returned nothing:\n{sql}",
            i + 1
        );
    }
}

// ---------------------------------------------------------------------------------------------
// CLI

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_against_server() {
    // Unreachable API: a clear message and a failure status, no ClickHouse needed.
    let (code, out, err) = cli(args(&["--api", "http://127.0.0.1:1", "breakdown"])).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("cannot reach the aggregator at http://127.0.0.1:1"),
        "{err}"
    );
    assert!(err.contains("Is it running?"), "{err}");

    let Some(store) = open_store("cli_against_server").await else {
        return;
    };
    with_db(store, |store| async move {
        let d = insert_data(&store).await;
        let addr = serve(store.clone()).await;
        let api = format!("http://{addr}");
        let from = format!("{}", d.from_ns / S);
        let to = format!("{}", d.to_ns.div_ceil(S));

        // Table output.
        let (code, out, err) = cli(args(&["--api", &api, "breakdown", "--from", &from, "--to", &to])).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("{} requests from", N + 4)), "{out}");
        for s in ["quantile", "p50", "p99.9", "queue", "slow ms", "median %", "unattributed", "largest difference: queue"] {
            assert!(out.contains(s), "breakdown table lacks {s:?}:\n{out}");
        }
        // Columns are aligned: every quantile row is as wide as the header.
        let lines: Vec<&str> = out.lines().collect();
        let head = lines.iter().position(|l| l.starts_with("quantile")).unwrap();
        for l in &lines[head + 1..head + 5] {
            assert_eq!(l.len(), lines[head].len(), "{out}");
        }

        // JSON output is the API's response.
        let (code, out, err) = cli(args(&["--api", &api, "-o", "json", "breakdown", "--from", &from, "--to", &to, "--model", "qwen-0.5b"])).await;
        assert_eq!(code, 0, "{err}");
        let b: Breakdown = serde_json::from_str(&out).unwrap();
        let direct: Breakdown = get_ok(addr, &format!("/api/v1/breakdown?from={from}&to={to}&model=qwen-0.5b&quantiles=0.5,0.9,0.99,0.999&slow_quantile=0.99")).await;
        assert_eq!(b, direct);

        let (code, out, err) = cli(args(&["--api", &api, "requests", "--from", &from, "--to", &to, "--limit", "5", "--sort", "ttft"])).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("trace_id") && out.contains("1..5 of") && out.contains("next page: --offset 5"), "{out}");
        let (code, out, _) = cli(args(&["--api", &api, "--output", "json", "requests", "--from", &from, "--to", &to, "--limit", "3", "--asc", "--sort", "start"])).await;
        assert_eq!(code, 0);
        let l: RequestList = serde_json::from_str(&out).unwrap();
        assert_eq!(l.requests.len(), 3);
        assert_eq!(l.order, "asc");

        let (code, out, err) = cli(args(&["--api", &api, "trace", SPECIAL])).await;
        assert_eq!(code, 0, "{err}");
        for s in ["proxy-1", "node-a", "engine.step x11", "engine steps (11", "batched with (2", &d.neighbours[1]] {
            assert!(out.contains(s), "trace output lacks {s:?}:\n{out}");
        }
        let (code, out, _) = cli(args(&["--api", &api, "-o", "json", "trace", SPECIAL])).await;
        assert_eq!(code, 0);
        let t: Trace = serde_json::from_str(&out).unwrap();
        assert_eq!(t.steps.len(), 11);

        let (code, out, _) = cli(args(&["--api", &api, "filters", "--since", "2h"])).await;
        assert_eq!(code, 0);
        assert!(out.contains("models:   llama-8b, qwen-0.5b"), "{out}");

        // API errors: the server's message, a failure status.
        let (code, _, err) = cli(args(&["--api", &api, "requests", "--limit", "5000"])).await;
        assert_eq!(code, 1);
        assert!(err.contains("invalid \"limit\": 5000 is outside 1..=1000 (HTTP 400)"), "{err}");
        let (code, _, err) = cli(args(&["--api", &api, "trace", "0123456789abcdef0123456789abcdef"])).await;
        assert_eq!(code, 1);
        assert!(err.contains("not found") && err.contains("HTTP 404"), "{err}");
        let (code, _, err) = cli(args(&["--api", &api, "breakdown", "--quantiles", "2"])).await;
        assert_eq!(code, 1);
        assert!(err.contains("\"quantiles\""), "{err}");
        // Usage errors are clap's (status 2).
        let (code, _, _) = cli(args(&["--api", &api, "requests", "--sort", "nope"])).await;
        assert_eq!(code, 2);
    })
    .await;
}
