//! Hops through a real gateway, on a fleet of hosts made of network namespaces: a client host,
//! an nginx gateway host and two upstream hosts (the OpenAI-compatible stand-in server), joined
//! by a bridge that lives in a namespace of its own (nothing is added to the root namespace;
//! traffic stays inside the namespaces this test creates, deleted at the end). One node-probe
//! per host, as on a real fleet: the gateway's node-probe links each upstream call to the
//! inbound request it serves; each upstream's node-probe records the server half.
//!
//! Ground truth is independent of node-probe: the client names every request
//! (`gt-<run>-<worker>-<i>`, as X-Request-Id and as a nonce at the start of the prompt) and logs
//! its own end of the connection; each upstream server logs the gateway's address and the
//! nonce of every request it reads. From these, each upstream call has one true inbound request.
//!
//! Figures, at 16 concurrent clients:
//! - link precision and recall of each link method measured alone (`--hop-links header`,
//!   `response_id`, `body`: one gateway node-probe each, side by side on the same traffic), and
//!   of all methods together;
//! - the cross-node join: the share of upstream calls whose `http.client` span id equals the
//!   upstream node's `hop_id` for the same request;
//! - the same through DNAT (the gateway calls a virtual address that iptables rewrites to a
//!   third upstream, reached only that way, so that conntrack never remaps a source port):
//!   addresses differ between the two halves, sequence numbers do not.
//!
//! Every node-probe attaches before the gateway's first request: a blocking read that is
//! already waiting when node-probe attaches (the stand-in server's idle keep-alive
//! connections) loses that one message, counted as a kernel drop (`inflight_missing`).
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);
/// The fleet's subnet: .2 client, .3 gateway, .4 and .5 upstreams, .6 the upstream behind
/// .100, the DNAT address.
const NET: &str = "10.213.7";
const UPSTREAM_PORT: u16 = 9000;
const CLIENTS: usize = 16;
const REQUESTS: usize = 100;
const DNAT_REQUESTS: usize = 40;
/// What the figures must reach.
const GOAL: f64 = 0.999;

/// Network namespaces `<tag>-<host>` with one address each on a bridge in `<tag>-sw`.
struct Fleet {
    tag: String,
}

impl Fleet {
    fn new(hosts: &[(&str, u8)]) -> Self {
        let tag = format!("isg{}", std::process::id() % 100_000);
        let f = Self { tag };
        f.cleanup();
        let sw = f.ns("sw");
        run("ip", &["netns", "add", &sw]);
        run("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", &sw, "link", "set", "br0", "up"]);
        for (i, (host, last)) in hosts.iter().enumerate() {
            let ns = f.ns(host);
            run("ip", &["netns", "add", &ns]);
            let (a, b) = (format!("{}h{i}", f.tag), format!("{}n{i}", f.tag));
            run(
                "ip",
                &["link", "add", &a, "type", "veth", "peer", "name", &b],
            );
            run("ip", &["link", "set", &a, "netns", &sw]);
            run("ip", &["link", "set", &b, "netns", &ns]);
            run("ip", &["-n", &sw, "link", "set", &a, "master", "br0", "up"]);
            let addr = format!("{NET}.{last}/24");
            run("ip", &["-n", &ns, "addr", "add", &addr, "dev", &b]);
            run("ip", &["-n", &ns, "link", "set", &b, "up"]);
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        f
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.tag)
    }

    /// `program args…` inside `host`'s namespace (`ip netns exec` execs it: same pid).
    fn cmd(&self, host: &str, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host), program])
            .args(args);
        c
    }

    fn cleanup(&self) {
        let out = Command::new("ip").args(["netns", "list"]).output();
        let list = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        for line in list.unwrap_or_default().lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(&format!("{}-", self.tag)) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn run(program: &str, args: &[&str]) {
    let st = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(st.success(), "{program} {args:?}");
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// nginx with two servers: :8080 to the two upstreams, :8081 to the DNAT address.
fn nginx_conf(dir: &Path) -> PathBuf {
    let conf = dir.join("nginx.conf");
    let text = format!(
        "worker_processes 2;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n\
         client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
         upstream replicas {{ server {NET}.4:{UPSTREAM_PORT}; server {NET}.5:{UPSTREAM_PORT}; keepalive 32; }}\n\
         upstream vip {{ server {NET}.100:{UPSTREAM_PORT}; keepalive 32; }}\n\
         server {{ listen {NET}.3:8080; location / {{ proxy_pass http://replicas; \
         proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }} }}\n\
         server {{ listen {NET}.3:8081; location / {{ proxy_pass http://vip; \
         proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }} }}\n}}\n",
        dir = dir.display()
    );
    std::fs::write(&conf, text).unwrap();
    conf
}

/// node-probe printing request records for `pids`, linking with `links`.
fn probe(pids: &[u32], links: &str) -> JsonChild {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_node-probe"));
    for p in pids {
        cmd.args(["--pid", &p.to_string()]);
    }
    cmd.args([
        "--requests",
        "--hop-links",
        links,
        "--poll-ms",
        "5",
        "--nvml-ms",
        "0",
    ])
    .env(
        "RUST_LOG",
        std::env::var("FLEET_LOG").unwrap_or("warn".into()),
    );
    JsonChild::spawn(cmd)
}

/// Stops a probe (its pending calls go out unlinked) and returns every record it printed.
fn finish(mut p: JsonChild) -> Vec<Value> {
    // A probe that lags (debug builds, six probes on two cores) catches up first.
    let deadline = Instant::now() + T;
    loop {
        let before = p.seen.len();
        p.drain_for(Duration::from_secs(1));
        if p.seen.len() == before || Instant::now() >= deadline {
            break;
        }
    }
    unsafe { libc::kill(p.pid() as i32, libc::SIGTERM) };
    while p.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        p.drain_for(Duration::from_millis(200));
    }
    p.drain_for(Duration::from_millis(500));
    std::mem::take(&mut p.seen)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// One `http.client` span as recorded, with the trace it is in.
struct Call<'a> {
    trace: &'a str,
    span: &'a Value,
}

impl Call<'_> {
    fn link(&self) -> &str {
        self.span["attributes"]["inferscope.hop.link"]
            .as_str()
            .unwrap_or("")
    }
    fn local(&self) -> &str {
        self.span["attributes"]["client.address"]
            .as_str()
            .unwrap_or("")
    }
}

/// What one gateway node-probe recorded: inbound requests and upstream calls.
struct Gateway<'a> {
    inbound: Vec<&'a Value>,
    calls: Vec<Call<'a>>,
}

fn gateway(records: &[Value]) -> Gateway<'_> {
    let inbound = records.iter().filter(|r| r["kind"] == "request").collect();
    let mut calls = Vec::new();
    for r in records
        .iter()
        .filter(|r| r["kind"] == "request" || r["kind"] == "hop")
    {
        let trace = r["trace_id"].as_str().unwrap_or("");
        for s in r["spans"].as_array().into_iter().flatten() {
            if s["name"] == "http.client" {
                calls.push(Call { trace, span: s });
            }
        }
    }
    Gateway { inbound, calls }
}

/// Records by an address field, each with its start, for [`nearest`].
type ByAddr<'a> = HashMap<&'a str, Vec<(u64, &'a Value)>>;

fn by_addr<'a>(items: impl Iterator<Item = (&'a str, &'a Value)>) -> ByAddr<'a> {
    let mut m: ByAddr = HashMap::new();
    for (addr, v) in items {
        m.entry(addr).or_default().push((n(&v["start_unix_ns"]), v));
    }
    m
}

/// The record of `addr` whose start is closest to `at` (and not after `before`, when given).
fn nearest<'a>(m: &ByAddr<'a>, addr: &str, at: u64, before: Option<u64>) -> Option<&'a Value> {
    m.get(addr)?
        .iter()
        .filter(|(start, _)| before.is_none_or(|b| *start <= b))
        .min_by_key(|(start, _)| start.abs_diff(at))
        .map(|(_, v)| *v)
}

/// What [`score`] found.
struct Score {
    precision: f64,
    recall: f64,
    join: f64,
    calls: usize,
    unjoined: Vec<String>,
}

/// Precision and recall of one gateway probe's links on the upstream calls of `run`, and the
/// share joined with the upstream node's half.
fn score(
    gw: &Gateway,
    truth_up: &[Value],
    client: &HashMap<String, Value>,
    upstream: &[Value],
    run: &str,
) -> Score {
    let prefix = format!("gt-{run}-");
    let truth: Vec<&Value> = truth_up
        .iter()
        .filter(|u| u["nonce"].as_str().is_some_and(|g| g.starts_with(&prefix)))
        .collect();
    let slack = 2_000_000;
    let calls = by_addr(gw.calls.iter().map(|c| (c.local(), c.span)));
    let trace_of: HashMap<*const Value, &str> = gw
        .calls
        .iter()
        .map(|c| (c.span as *const Value, c.trace))
        .collect();
    let served = by_addr(
        upstream
            .iter()
            .filter(|r| r["kind"] == "request")
            .map(|r| (r["client"].as_str().unwrap_or(""), r)),
    );
    let inbound = by_addr(
        gw.inbound
            .iter()
            .map(|r| (r["client"].as_str().unwrap_or(""), *r)),
    );
    let (mut correct, mut wrong, mut joined) = (0usize, 0usize, 0usize);
    let mut unjoined = Vec::new();
    let mut used = std::collections::HashSet::new();
    for u in &truth {
        let (peer, t) = (u["peer"].as_str().unwrap(), n(&u["t_ns"]));
        let Some(span) = nearest(&calls, peer, t, Some(t + slack)) else {
            unjoined.push(format!("{u}: no call recorded"));
            continue;
        };
        used.insert(span as *const Value);
        // The upstream's half of the same request: same gateway address, read at about `t`.
        let q = nearest(&served, peer, t, Some(t + slack));
        if q.is_some_and(|q| q["hop_id"] == span["span_id"]) {
            joined += 1;
        } else {
            let q = q.map(|q| {
                (
                    &q["hop_id"],
                    &q["req_tcp_seq"],
                    &q["resp_tcp_seq"],
                    &q["outcome"],
                )
            });
            let all: Vec<String> = upstream
                .iter()
                .filter(|v| n(&v["start_unix_ns"]).abs_diff(t) < 30_000_000)
                .take(40)
                .map(|v| {
                    format!(
                        "{} {} {} {} {} {}",
                        v["client"],
                        v["start_unix_ns"],
                        v["hop_id"],
                        v["outcome"],
                        v["req_tcp_seq"],
                        v["x_request_id"]
                    )
                })
                .collect();
            unjoined.push(format!(
                "{u}: call {} vs served {q:?}; from that address: {all:?}",
                span["attributes"]
            ));
        }
        let c = &client[u["nonce"].as_str().unwrap()];
        let r = nearest(&inbound, c["local"].as_str().unwrap(), n(&c["t0_ns"]), None);
        let root = r.and_then(|r| r["spans"][0]["span_id"].as_str());
        let right = r.is_some_and(|r| r["trace_id"] == trace_of[&(span as *const Value)])
            && root.is_some()
            && span["parent_span_id"].as_str() == root;
        let link = span["attributes"]["inferscope.hop.link"]
            .as_str()
            .unwrap_or("");
        match (link, right) {
            ("none", _) => {}
            (_, true) => correct += 1,
            (_, false) => wrong += 1,
        }
    }
    // Links emitted on this run's upstream calls that no upstream request accounts for are
    // wrong too.
    let peers: std::collections::HashSet<&str> =
        truth.iter().filter_map(|u| u["peer"].as_str()).collect();
    let (lo, hi) = truth.iter().fold((u64::MAX, 0), |(lo, hi), u| {
        (lo.min(n(&u["t_ns"])), hi.max(n(&u["t_ns"])))
    });
    let stray = gw
        .calls
        .iter()
        .filter(|c| c.link() != "none" && peers.contains(c.local()))
        .filter(|c| !used.contains(&(c.span as *const Value)))
        .filter(|c| (lo.saturating_sub(slack)..=hi).contains(&n(&c.span["start_unix_ns"])))
        .count();
    let emitted = correct + wrong + stray;
    let total = truth.len().max(1) as f64;
    Score {
        precision: if emitted == 0 {
            0.0
        } else {
            correct as f64 / emitted as f64
        },
        recall: correct as f64 / total,
        join: joined as f64 / total,
        calls: truth.len(),
        unjoined,
    }
}

#[test]
fn gateway_calls_are_linked_and_joined_across_hosts() {
    if !bpf_or_skip("gateway_calls_are_linked_and_joined_across_hosts") {
        return;
    }
    let required = std::env::var(REQUIRE_ENV).as_deref() == Ok("1");
    if !(have("nginx") && have("iptables")) {
        assert!(
            !required,
            "nginx and iptables are required (scripts/setup.sh base)"
        );
        eprintln!("SKIPPED gateway fleet: nginx or iptables missing (scripts/setup.sh base)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fleet = Fleet::new(&[("cl", 2), ("gw", 3), ("r1", 4), ("r2", 5), ("r3", 6)]);
    // DNAT on the gateway host: the virtual address is upstream r3.
    let vip = format!("{NET}.100");
    let to = format!("{NET}.6:{UPSTREAM_PORT}");
    let port = UPSTREAM_PORT.to_string();
    let ok = fleet
        .cmd(
            "gw",
            "iptables",
            &["-t", "nat", "-A", "OUTPUT", "-d", &vip, "-p", "tcp"],
        )
        .args(["--dport", &port, "-j", "DNAT", "--to-destination", &to])
        .status()
        .unwrap();
    assert!(ok.success(), "iptables DNAT in the gateway namespace");

    let fixture_path = fixture("openai_server.py");
    let fx = fixture_path.to_str().unwrap();
    let mut upstreams = Vec::new();
    for (host, last) in [("r1", 4), ("r2", 5), ("r3", 6)] {
        let log = d.join(format!("{host}.log"));
        let host_ip = format!("{NET}.{last}");
        let mut c = fleet.cmd(host, "python3", &["-u", fx, "--host", &host_ip]);
        c.args(["--port", &port, "--token-delay-ms", "1", "--log"])
            .arg(&log);
        let mut s = JsonChild::spawn(c);
        let pid = s.wait_for("upstream pid", T, |v| v.get("pid").is_some())["pid"]
            .as_u64()
            .unwrap() as u32;
        upstreams.push((s, pid, log));
    }
    let conf = nginx_conf(d);
    let conf_s = conf.to_str().unwrap();
    let mut nginx = fleet
        .cmd("gw", "nginx", &["-c", conf_s, "-g", "daemon off;"])
        .spawn()
        .expect("nginx");
    let gw_pid = nginx.id();
    // One node-probe per host; on the gateway, one per link method and one with all of them.
    let methods = [
        "header,response_id,body,timing",
        "header",
        "response_id",
        "body",
    ];
    let mut gw_probes: Vec<JsonChild> = methods.iter().map(|m| probe(&[gw_pid], m)).collect();
    let mut up_probes: Vec<JsonChild> = upstreams
        .iter()
        .map(|(_, pid, _)| probe(&[*pid], "header"))
        .collect();
    for p in gw_probes.iter_mut().chain(up_probes.iter_mut()) {
        p.wait_for("probe ready", T, |v| v["kind"] == "ready");
    }

    // Wait until the gateway answers (a GET: the upstreams log generation requests only).
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
            break;
        }
        assert!(Instant::now() < deadline, "the gateway never answered");
        std::thread::sleep(Duration::from_millis(200));
    }

    let client_log = d.join("client.log");
    let load = |port: u16, run: &str, requests: usize| {
        let (host, port_s, reqs) = (format!("{NET}.3"), port.to_string(), requests.to_string());
        let clients = CLIENTS.to_string();
        let out = fleet
            .cmd(
                "cl",
                "python3",
                &["-u", fixture("gt_client.py").to_str().unwrap()],
            )
            .args(["--host", &host, "--port", &port_s, "--clients", &clients])
            .args(["--requests", &reqs, "--run", run, "--log"])
            .arg(&client_log)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("gt_client: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(n(&v["errors"]), 0, "client errors: {v}");
        assert_eq!(n(&v["done"]) as usize, CLIENTS * requests);
    };
    load(8080, "lb", REQUESTS);
    load(8081, "nat", DNAT_REQUESTS);
    // Let the last records out (the probes poll every 5 ms, hops linger at most 5 s).
    std::thread::sleep(Duration::from_millis(500));

    let gw_records: Vec<Vec<Value>> = gw_probes.into_iter().map(finish).collect();
    let up_records: Vec<Value> = up_probes.into_iter().flat_map(finish).collect();
    unsafe { libc::kill(gw_pid as i32, libc::SIGQUIT) };
    let _ = nginx.wait();
    let truth_up: Vec<Value> = upstreams.iter().flat_map(|u| lines(&u.2)).collect();
    let client: HashMap<String, Value> = lines(&client_log)
        .into_iter()
        .map(|c| (c["gt"].as_str().unwrap().to_string(), c))
        .collect();
    assert_eq!(client.len(), CLIENTS * (REQUESTS + DNAT_REQUESTS));

    let mut failures = Vec::new();
    for (run, label) in [
        ("lb", "nginx → 2 upstreams"),
        ("nat", "nginx → DNAT → upstream"),
    ] {
        for (m, records) in methods.iter().zip(&gw_records) {
            let gw = gateway(records);
            let sc = score(&gw, &truth_up, &client, &up_records, run);
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
    assert!(failures.is_empty(), "below {GOAL}: {failures:?}");
    drop(upstreams);
    drop(fleet);
}
