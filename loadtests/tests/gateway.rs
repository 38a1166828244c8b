//! One request followed through a real gateway across hosts, and how far cross-node times can
//! be trusted. The hosts are network namespaces (`inferscope_loadtests::fleet`): a client, an
//! nginx gateway, and three upstreams running the OpenAI-compatible stand-in server; upstream
//! r3 is reached only through DNAT (the gateway calls a virtual address that iptables rewrites,
//! so that the two halves of a hop see different addresses and conntrack never remaps a source
//! port). One node-probe per host, as on a real fleet, exporting to an aggregator on the local
//! ClickHouse; the upstream hosts' node-probes convert times with an injected clock error
//! (±50 ms offset, ±20 ppm drift, test-only flags) whose value is known exactly.
//!
//! Ground truth is independent of node-probe: the client names every request
//! (`gt-<run>-<worker>-<i>`, as X-Request-Id and as a nonce at the start of the prompt) and logs
//! its own end of the connection; each upstream server logs the gateway's address and the
//! nonce of every request it reads.
//!
//! Figures and goals, at 16 concurrent clients:
//! - link precision and recall ≥ 99.9 % for each link method measured alone (one gateway
//!   node-probe per method, side by side on the same traffic, `--hop-links header`,
//!   `response_id`, `body`) and for all together, direct and through DNAT;
//! - the cross-node join (the call's span id equals the upstream node's `hop_id`) ≥ 99.9 %, in
//!   the records and in ClickHouse's `hops`;
//! - restarts lose no hop: between the two runs the gateway's exporting node-probe is
//!   restarted, and the aggregator is killed and stays down for the whole second run (the
//!   halves stored late are joined);
//! - clock bounds on 100 % of the cross-node hops of the traces read back with
//!   `follow=hops`, every bound holding the injected truth, and every upstream root, placed on
//!   the gateway's clock, inside the gateway's call.
//!
//! Every node-probe attaches before the gateway's first request: a blocking read that is
//! already waiting when node-probe attaches (the stand-in's idle keep-alive connections) loses
//! that one message, counted as a kernel drop (`inflight_missing`).
use std::collections::HashMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use inferscope_loadtests::fidelity::figure;
use inferscope_loadtests::fleet::{
    fixture, have, json_lines, probe, score, Fleet, Gateway, Lines, Skew, Upstreams,
};
use inferscope_loadtests::harness::{
    clickhouse_up, free_port, is_root, kill, skip, sql, start_aggregator, wait_count,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);
/// The fleet's subnet: .2 client, .3 gateway, .4 .5 .6 upstreams, .100 the DNAT address (→ .6).
const NET: &str = "10.213.7";
const UPSTREAM_PORT: u16 = 9000;
const CLIENTS: usize = 16;
const REQUESTS: usize = 100;
const DNAT_REQUESTS: usize = 40;
/// What the stitching figures must reach.
const GOAL: f64 = 0.999;
/// The upstream hosts and their node-probes' injected clock error (offset ns, drift ppb).
const UPSTREAMS: [(&str, u8, i64, i64); 3] = [
    ("r1", 4, 50_000_000, 20_000),
    ("r2", 5, -50_000_000, -20_000),
    ("r3", 6, 50_000_000, 0),
];
/// Gateway traces read back through the API.
const TRACES_CHECKED: usize = 64;
/// Two node-probes on one host convert to wall time each with their own reading of the
/// clocks: how far apart their conversions may be (beyond the injected error).
const CONVERSION_SLACK_NS: i64 = 100_000;
const TOKEN: &str = "gateway-token";

/// nginx with two servers: :8080 to r1 and r2, :8081 to the DNAT address.
fn nginx_conf(dir: &Path) -> std::path::PathBuf {
    let conf = dir.join("nginx.conf");
    let loc = "proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off;";
    let text = format!(
        "worker_processes 2;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n\
         client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
         upstream replicas {{ server {NET}.4:{UPSTREAM_PORT}; server {NET}.5:{UPSTREAM_PORT}; keepalive 32; }}\n\
         upstream vip {{ server {NET}.100:{UPSTREAM_PORT}; keepalive 32; }}\n\
         server {{ listen {NET}.3:8080; location / {{ proxy_pass http://replicas; {loc} }} }}\n\
         server {{ listen {NET}.3:8081; location / {{ proxy_pass http://vip; {loc} }} }}\n}}\n",
        dir = dir.display()
    );
    std::fs::write(&conf, text).unwrap();
    conf
}

/// Whether everything the test needs is here (else it is skipped, or fails when required).
fn can_run() -> bool {
    let test = "gateway fleet";
    if !is_root() || !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return !skip(test, "needs root and kernel BTF (eBPF)");
    }
    if !(have("nginx") && have("iptables")) {
        return !skip(test, "nginx and iptables missing (scripts/setup.sh base)");
    }
    if !clickhouse_up() {
        return !skip(
            test,
            "the local ClickHouse is not running (scripts/clickhouse.sh start)",
        );
    }
    true
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// `--export` arguments of a node-probe for node `node`.
fn export_args(grpc: u16, node: &str, dir: &Path) -> Vec<String> {
    vec![
        "--export".into(),
        format!("http://127.0.0.1:{grpc}"),
        "--token".into(),
        TOKEN.into(),
        "--node-name".into(),
        node.into(),
        "--batch-max-ms".into(),
        "200".into(),
        "--spool-dir".into(),
        dir.join(format!("spool-{node}")).display().to_string(),
    ]
}

/// Runs the client on the gateway's `port`: `requests` per client, nonces `gt-<run>-…`.
fn load(fleet: &Fleet, port: u16, run: &str, requests: usize, log: &Path) {
    let (host, port, reqs) = (format!("{NET}.3"), port.to_string(), requests.to_string());
    let clients = CLIENTS.to_string();
    let client = fixture("gt_client.py");
    let out = fleet
        .cmd("cl", "python3", &["-u", client.to_str().unwrap()])
        .args(["--host", &host, "--port", &port, "--clients", &clients])
        .args(["--requests", &reqs, "--run", run, "--log"])
        .arg(log)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("gt_client: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(n(&v["errors"]), 0, "client errors: {v}");
    assert_eq!(n(&v["done"]) as usize, CLIENTS * requests);
}

/// Waits until the gateway answers (a GET: the upstreams log generation requests only).
fn wait_for_gateway(fleet: &Fleet) {
    let deadline = Instant::now() + T;
    loop {
        let out = fleet
            .cmd(
                "cl",
                "curl",
                &["-s", "-o", "/dev/null", "-w", "%{http_code}"],
            )
            .arg(format!("http://{NET}.3:8080/health"))
            .output()
            .unwrap();
        if out.stdout == b"200" {
            return;
        }
        assert!(Instant::now() < deadline, "the gateway never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get(http: u16, path: &str) -> Value {
    let url = format!("http://127.0.0.1:{http}{path}");
    let body = ureq::get(&url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .into_string()
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

/// Clock checks on one `follow=hops` view: (cross-node hops, with bounds, holding the truth,
/// upstream roots nested in their calls), given each node's injected error.
fn check_clocks(view: &Value, skews: &HashMap<String, Skew>, out: &mut [usize; 4]) {
    for h in view["hops"].as_array().into_iter().flatten() {
        let (c, s) = (&h["client"], &h["server"]);
        if c.is_null() || s.is_null() || c["node"] == s["node"] {
            continue;
        }
        out[0] += 1;
        let (Some(lo), Some(hi)) = (h["offset_lo_ns"].as_i64(), h["offset_hi_ns"].as_i64()) else {
            continue;
        };
        out[1] += 1;
        let t = n(&c["start_unix_ns"]);
        let skew = |node: &Value| skews[node.as_str().unwrap()].at(t);
        let truth = skew(&s["node"]) - skew(&c["node"]);
        if lo - CONVERSION_SLACK_NS <= truth && truth <= hi + CONVERSION_SLACK_NS {
            out[2] += 1;
        }
    }
    let spans = view["spans"].as_array().cloned().unwrap_or_default();
    let end = |s: &Value| s["offset_ms"].as_f64().unwrap() + s["duration_ms"].as_f64().unwrap();
    for root in spans.iter().filter(|s| s["name"] == "http.server") {
        let Some(call) = spans
            .iter()
            .find(|c| c["name"] == "http.client" && c["span_id"] == root["parent_span_id"])
        else {
            continue;
        };
        // Rounding of offsets to f64 ms: a nanosecond of slack.
        let inside = root["offset_ms"].as_f64().unwrap()
            >= call["offset_ms"].as_f64().unwrap() - 1e-6
            && end(root) <= end(call) + 1e-6;
        out[3] += usize::from(inside);
    }
}

/// The whole run's processes, stopped however the test ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            kill(c, libc::SIGTERM);
        }
    }
}

#[test]
fn gateway_hops_are_linked_joined_and_clock_bounded() {
    if !can_run() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("inferscope-gateway-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.as_path();
    let mut hosts = vec![("cl", 2), ("gw", 3)];
    hosts.extend(UPSTREAMS.iter().map(|u| (u.0, u.1)));
    let fleet = Fleet::new(NET, &hosts);
    let (vip, to) = (format!("{NET}.100"), format!("{NET}.6:{UPSTREAM_PORT}"));
    let port = UPSTREAM_PORT.to_string();
    let ok = fleet
        .cmd("gw", "iptables", &["-t", "nat", "-A", "OUTPUT", "-d", &vip])
        .args([
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ])
        .status()
        .unwrap();
    assert!(ok.success(), "iptables DNAT in the gateway namespace");

    let db = format!("test_gateway_{}", std::process::id());
    let (grpc, http) = (free_port(), free_port());
    let mut procs = Procs(vec![start_aggregator(
        &db,
        grpc,
        http,
        TOKEN,
        Some(&d.join("aggregator.log")),
    )]);
    let server = fixture("openai_server.py");
    let mut upstreams: Vec<(Lines, u32)> = Vec::new();
    for (host, last, _, _) in UPSTREAMS {
        let ip = format!("{NET}.{last}");
        let log = d.join(format!("{host}.log"));
        let mut c = fleet.cmd(host, "python3", &["-u", server.to_str().unwrap()]);
        c.args([
            "--host",
            &ip,
            "--port",
            &port,
            "--token-delay-ms",
            "1",
            "--log",
        ])
        .arg(&log);
        let mut s = Lines::spawn(c);
        let pid = n(&s.wait_for("upstream pid", T, |v| v.get("pid").is_some())["pid"]) as u32;
        upstreams.push((s, pid));
    }
    let conf = nginx_conf(d);
    let nginx = fleet
        .cmd(
            "gw",
            "nginx",
            &["-c", conf.to_str().unwrap(), "-g", "daemon off;"],
        )
        .spawn()
        .expect("nginx");
    let gw_pid = nginx.id();
    procs.0.push(nginx);

    // One node-probe per host; on the gateway, one per link method besides the exporting one
    // with all methods. All attach before the first request.
    let methods = [
        "header,response_id,body,timing",
        "header",
        "response_id",
        "body",
    ];
    let gw_args = |i: usize| {
        let mut extra = vec!["--hop-links".to_string(), methods[i].to_string()];
        if i == 0 {
            extra.extend(export_args(grpc, "gw", d));
        }
        extra
    };
    let mut gw_probes: Vec<Lines> = (0..methods.len())
        .map(|i| probe(&[gw_pid], &gw_args(i), T))
        .collect();
    let mut up_probes: Vec<Lines> = UPSTREAMS
        .iter()
        .zip(&upstreams)
        .map(|((host, _, off, drift), (_, pid))| {
            let mut extra = export_args(grpc, host, d);
            extra.extend([
                format!("--test-clock-offset-ns={off}"),
                format!("--test-clock-drift-ppb={drift}"),
            ]);
            probe(&[*pid], &extra, T)
        })
        .collect();
    let mut skews: HashMap<String, Skew> = HashMap::from([("gw".to_string(), Skew::default())]);
    for ((host, ..), p) in UPSTREAMS.iter().zip(&up_probes) {
        let ready = p.seen.iter().find(|v| v["kind"] == "ready").unwrap();
        skews.insert(host.to_string(), Skew::of_ready(ready));
    }
    wait_for_gateway(&fleet);

    let client_log = d.join("client.log");
    load(&fleet, 8080, "lb", REQUESTS, &client_log);
    // Restarts between the runs: the gateway's exporting node-probe (stopped, started again:
    // a new boot), then the aggregator, killed and down for the whole second run (the
    // node-probes spool and resend; the halves stored late must still join).
    let first = std::mem::replace(&mut gw_probes[0], probe(&[gw_pid], &gw_args(0), T));
    let mut gw_before = first.finish(T);
    kill(&mut procs.0[0], libc::SIGKILL);
    load(&fleet, 8081, "nat", DNAT_REQUESTS, &client_log);
    procs.0[0] = start_aggregator(&db, grpc, http, TOKEN, Some(&d.join("aggregator-2.log")));
    // The exporting node-probes stay up until what they spooled meanwhile is stored.
    let mut exporting = gw_before.iter().filter(|r| r["kind"] == "request").count();
    for p in std::iter::once(&mut gw_probes[0]).chain(up_probes.iter_mut()) {
        p.settle(T);
        exporting += p.seen.iter().filter(|r| r["kind"] == "request").count();
    }
    let caught_up = wait_count(&db, exporting as u64, Duration::from_secs(180));
    assert_eq!(
        caught_up, exporting as u64,
        "stored after the aggregator's restart"
    );

    let mut gw_records: Vec<Vec<Value>> = gw_probes.into_iter().map(|p| p.finish(T)).collect();
    gw_before.append(&mut gw_records[0]);
    gw_records[0] = gw_before;
    let up_records: Vec<(Vec<Value>, Skew)> = up_probes
        .into_iter()
        .zip(UPSTREAMS)
        .map(|(p, (host, ..))| (p.finish(T), skews[host]))
        .collect();
    let truth: Vec<Value> = UPSTREAMS
        .iter()
        .flat_map(|(host, ..)| json_lines(&d.join(format!("{host}.log"))))
        .collect();
    let client: HashMap<String, Value> = json_lines(&client_log)
        .into_iter()
        .filter_map(|c| Some((c["gt"].as_str()?.to_string(), c)))
        .collect();
    assert_eq!(client.len(), CLIENTS * (REQUESTS + DNAT_REQUESTS));
    let up = Upstreams {
        truth: &truth,
        served: up_records
            .iter()
            .flat_map(|(rs, k)| {
                rs.iter()
                    .filter(|r| r["kind"] == "request")
                    .map(|r| (r, *k))
            })
            .collect(),
    };

    let mut failures = Vec::new();
    for (run, label) in [
        ("lb", "nginx → 2 upstreams"),
        ("nat", "nginx → DNAT → upstream"),
    ] {
        for (m, records) in methods.iter().zip(&gw_records) {
            let sc = score(&Gateway::of(records), &up, &client, run);
            let (p, r, j) = (sc.precision, sc.recall, sc.join);
            let name = if m.contains(',') { "all" } else { m };
            figure(&format!(
                "gateway hops ({label}, {CLIENTS} clients, {} upstream calls), links by {name}: \
                 precision {p:.4}, recall {r:.4}; cross-node join {j:.4}",
                sc.calls
            ));
            for u in sc.unjoined.iter().take(3) {
                eprintln!("  not joined: {u}");
            }
            if p < GOAL || r < GOAL || j < GOAL {
                failures.push(format!(
                    "{label} / {name}: precision {p:.4} recall {r:.4} join {j:.4}"
                ));
            }
        }
    }

    // Through storage: every request stored, every hop joined in `hops`.
    let stored_want = gw_records[0]
        .iter()
        .chain(up_records.iter().flat_map(|(rs, _)| rs))
        .filter(|r| r["kind"] == "request")
        .count() as u64;
    let stored = wait_count(&db, stored_want, Duration::from_secs(120));
    assert_eq!(stored, stored_want, "requests stored");
    let joined: usize = sql(&format!(
        "SELECT count() FROM (SELECT hop_id, countIf(side = 'client') AS c, \
         countIf(side = 'server') AS s FROM {db}.hops GROUP BY hop_id) WHERE c > 0 AND s > 0"
    ))
    .parse()
    .unwrap_or(0);
    // Every upstream request is a hop from the gateway: the generation calls of the truth and
    // the health checks that waited for the gateway to answer.
    let hops_want = up.served.len();
    let join_stored = joined as f64 / hops_want as f64;
    figure(&format!(
        "gateway hops joined in ClickHouse: {joined} of {hops_want} upstream requests \
         ({join_stored:.4}; {} generation calls, the rest health checks)",
        truth.len()
    ));
    if join_stored < GOAL {
        failures.push(format!("joined in ClickHouse: {join_stored:.4}"));
    }

    // Clock bounds, read back: [cross-node hops, with bounds, holding the truth, nested roots].
    let gw_traces: Vec<&str> = gw_records[0]
        .iter()
        .filter(|r| r["kind"] == "request")
        .filter_map(|r| r["trace_id"].as_str())
        .collect();
    let step = (gw_traces.len() / TRACES_CHECKED).max(1);
    let mut c = [0usize; 4];
    let mut widths = Vec::new();
    for id in gw_traces.iter().step_by(step).take(TRACES_CHECKED) {
        let view = get(http, &format!("/api/v1/traces/{id}?follow=hops"));
        check_clocks(&view, &skews, &mut c);
        for h in view["hops"].as_array().into_iter().flatten() {
            if let (Some(lo), Some(hi)) = (h["offset_lo_ns"].as_i64(), h["offset_hi_ns"].as_i64()) {
                widths.push((hi - lo) as f64 / 1e3);
            }
        }
    }
    let [hops, bounded, hold, nested] = c;
    figure(&format!(
        "gateway clock bounds ({TRACES_CHECKED} traces, injected ±50 ms, ±20 ppm): \
         {bounded}/{hops} cross-node hops bounded, {hold} hold the injected offset, \
         {nested} upstream roots inside their calls; median width {:.0} µs",
        inferscope_loadtests::median(&widths)
    ));
    if hops == 0 || bounded != hops || hold != hops || nested != hops {
        failures.push(format!(
            "clock bounds: {bounded} bounded, {hold} hold, {nested} nested of {hops}"
        ));
    }
    drop(procs);
    drop(upstreams);
    sql(&format!("DROP DATABASE IF EXISTS {db}"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{failures:?}");
    drop(fleet);
}
