//! A multi-host test fleet on one machine: network namespaces as hosts, joined by a bridge in
//! a namespace of its own (nothing is added to the root namespace; traffic stays inside the
//! namespaces created here, all deleted on drop), and node-probes whose `--requests` lines are
//! collected. Ground-truth scoring of gateway hops lives in [`score`].
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::bin;

/// Network namespaces `<tag>-<host>` with one address each, `<net>.<last>/24`, on a bridge in
/// `<tag>-sw`.
pub struct Fleet {
    tag: String,
}

impl Fleet {
    /// Creates the hosts (name, last octet) on `net` (`a.b.c`).
    pub fn new(net: &str, hosts: &[(&str, u8)]) -> Self {
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
            let addr = format!("{net}.{last}/24");
            run("ip", &["-n", &ns, "addr", "add", &addr, "dev", &b]);
            run("ip", &["-n", &ns, "link", "set", &b, "up"]);
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        f
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.tag)
    }

    /// `program args…` inside `host`'s namespace (`ip netns exec` execs it: same pid).
    pub fn cmd(&self, host: &str, program: &str, args: &[&str]) -> Command {
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

/// Runs a command that must succeed.
pub fn run(program: &str, args: &[&str]) {
    let st = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(st.success(), "{program} {args:?}");
}

/// Whether `program` is on the PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A node-probe fixture file of the repository.
pub fn fixture(name: &str) -> PathBuf {
    crate::harness::repo()
        .join("node-probe/tests/fixtures")
        .join(name)
}

/// A child whose stdout is read as JSON lines.
pub struct Lines {
    /// The process.
    pub child: Child,
    rx: Receiver<Value>,
    /// Every line read so far.
    pub seen: Vec<Value>,
}

impl Lines {
    /// Spawns `cmd` (stdout piped).
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&l) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Self {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits up to `t` for a line matching `pred`.
    pub fn wait_for(&mut self, what: &str, t: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("timed out after {t:?} waiting for {what}"),
            }
        }
    }

    /// Collects what arrives within `d`.
    pub fn drain_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Ok(v) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(v);
        }
    }

    /// Reads until nothing new came for a second (bounded by `t`).
    pub fn settle(&mut self, t: Duration) {
        let deadline = Instant::now() + t;
        loop {
            let before = self.seen.len();
            self.drain_for(Duration::from_secs(1));
            if self.seen.len() == before || Instant::now() >= deadline {
                return;
            }
        }
    }

    /// [`Lines::settle`]s, stops it with SIGTERM (a node-probe then sends what it still holds),
    /// and returns every line.
    pub fn finish(mut self, t: Duration) -> Vec<Value> {
        self.settle(t);
        let deadline = Instant::now() + t;
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            self.drain_for(Duration::from_millis(200));
        }
        self.drain_for(Duration::from_millis(300));
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

/// node-probe on `pids`, printing request records, with `extra` arguments; waits until it is
/// attached.
pub fn probe(pids: &[u32], extra: &[String], t: Duration) -> Lines {
    let mut cmd = Command::new(bin("node-probe"));
    for p in pids {
        cmd.args(["--pid", &p.to_string()]);
    }
    cmd.args(["--requests", "--poll-ms", "5", "--nvml-ms", "0"])
        .args(extra)
        .env("RUST_LOG", "warn");
    let mut l = Lines::spawn(cmd);
    l.wait_for("node-probe ready", t, |v| v["kind"] == "ready");
    l
}

/// Reads a JSON-lines file.
pub fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The clock error a node-probe was started with (its ready line's `test_clock`), as a function
/// of true Unix time: what it adds to every time it reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Skew {
    offset_ns: i64,
    drift_ppb: i64,
    origin_unix_ns: i64,
}

impl Skew {
    /// From a ready line (no skew when it has none).
    pub fn of_ready(ready: &Value) -> Self {
        let k = &ready["test_clock"];
        Self {
            offset_ns: k["offset_ns"].as_i64().unwrap_or(0),
            drift_ppb: k["drift_ppb"].as_i64().unwrap_or(0),
            origin_unix_ns: k["origin_unix_ns"].as_i64().unwrap_or(0),
        }
    }

    /// The error at true time `t`.
    pub fn at(&self, t: u64) -> i64 {
        let since = t as i128 - self.origin_unix_ns as i128;
        (self.offset_ns as i128 + since * self.drift_ppb as i128 / 1_000_000_000) as i64
    }
}

/// One `http.client` span as recorded, with the trace it is in.
pub struct Call<'a> {
    /// Its trace.
    pub trace: &'a str,
    /// The span.
    pub span: &'a Value,
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
pub struct Gateway<'a> {
    inbound: Vec<&'a Value>,
    calls: Vec<Call<'a>>,
}

impl<'a> Gateway<'a> {
    /// From a gateway node-probe's lines.
    pub fn of(records: &'a [Value]) -> Self {
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
        Self { inbound, calls }
    }
}

/// Records by an address field, each with its start, for [`latest`].
type ByAddr<'a> = HashMap<&'a str, Vec<(u64, &'a Value)>>;

fn by_addr<'a>(items: impl Iterator<Item = (&'a str, &'a Value)>) -> ByAddr<'a> {
    let mut m: ByAddr = HashMap::new();
    for (addr, v) in items {
        m.entry(addr).or_default().push((n(&v["start_unix_ns"]), v));
    }
    m
}

/// The last record of `addr` that started by `by` (on one connection, exchanges follow each
/// other: the one in progress at `by`).
fn latest<'a>(m: &ByAddr<'a>, addr: &str, by: u64) -> Option<&'a Value> {
    m.get(addr)?
        .iter()
        .filter(|(start, _)| *start <= by)
        .max_by_key(|(start, _)| *start)
        .map(|(_, v)| *v)
}

/// What [`score`] found.
pub struct Score {
    /// Correct links / links emitted.
    pub precision: f64,
    /// Correct links / true upstream calls.
    pub recall: f64,
    /// Upstream calls whose `http.client` span id equals the upstream node's `hop_id`.
    pub join: f64,
    /// True upstream calls.
    pub calls: usize,
    /// Why some were not joined or linked wrongly (for the failure message).
    pub unjoined: Vec<String>,
}

/// What the upstream hosts saw: their servers' logs and their node-probes' records, with each
/// node-probe's injected clock error.
pub struct Upstreams<'a> {
    /// Server log lines (`peer`, `nonce`, `t_ns`), all upstreams.
    pub truth: &'a [Value],
    /// Request records of all upstream node-probes, each with its probe's skew.
    pub served: Vec<(&'a Value, Skew)>,
}

/// Precision and recall of one gateway node-probe's links on the upstream calls of `run`
/// (nonces `gt-<run>-…`), and the share joined with the upstream nodes' halves. `client` maps
/// each nonce to the client's log line (`local`, `t0_ns`).
pub fn score(gw: &Gateway, up: &Upstreams, client: &HashMap<String, Value>, run: &str) -> Score {
    let prefix = format!("gt-{run}-");
    let truth: Vec<&Value> = up
        .truth
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
    let inbound = by_addr(
        gw.inbound
            .iter()
            .map(|r| (r["client"].as_str().unwrap_or(""), *r)),
    );
    // Upstream records on true time (their node-probe's injected error taken off).
    let mut served: HashMap<&str, Vec<(u64, &Value)>> = HashMap::new();
    for (r, k) in &up.served {
        let start = n(&r["start_unix_ns"]);
        let truth_t = (start as i128 - k.at(start) as i128) as u64;
        served
            .entry(r["client"].as_str().unwrap_or(""))
            .or_default()
            .push((truth_t, r));
    }
    let (mut correct, mut wrong, mut joined) = (0usize, 0usize, 0usize);
    let mut unjoined = Vec::new();
    let mut used = HashSet::new();
    for u in &truth {
        let (peer, t) = (u["peer"].as_str().unwrap_or(""), n(&u["t_ns"]));
        let Some(span) = latest(&calls, peer, t + slack) else {
            unjoined.push(format!("{u}: no call recorded"));
            continue;
        };
        used.insert(span as *const Value);
        // The upstream's half of the same request: same gateway address, read at about `t`.
        let q = latest(&served, peer, t + slack);
        if q.is_some_and(|q| q["hop_id"] == span["span_id"]) {
            joined += 1;
        } else {
            let q = q.map(|q| (&q["hop_id"], &q["req_tcp_seq"], &q["outcome"]));
            unjoined.push(format!("{u}: call {} vs served {q:?}", span["attributes"]));
        }
        let Some(c) = u["nonce"].as_str().and_then(|g| client.get(g)) else {
            wrong += 1;
            continue;
        };
        // On a keep-alive connection the request is the one that arrived while the client was
        // in this exchange (its first byte cannot come before the client started sending;
        // 1 ms for the two clocks' conversions).
        let local = c["local"].as_str().unwrap_or("");
        let (t0, t1) = (n(&c["t0_ns"]), n(&c["t1_ns"]));
        let r = inbound.get(local).and_then(|v| {
            v.iter()
                .filter(|(start, _)| (t0.saturating_sub(1_000_000)..=t1).contains(start))
                .min_by_key(|(start, _)| *start)
                .map(|(_, r)| *r)
        });
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
            (_, false) => {
                wrong += 1;
                let got = r.map(|r| (&r["trace_id"], &r["start_unix_ns"], &r["outcome"]));
                unjoined.push(format!(
                    "wrong link: {u}: call in trace {} parent {}, by {link}; the request: {got:?} ({c})",
                    trace_of[&(span as *const Value)],
                    span["parent_span_id"]
                ));
            }
        }
    }
    // Links emitted on this run's upstream calls that no upstream request accounts for are
    // wrong too.
    let peers: HashSet<&str> = truth.iter().filter_map(|u| u["peer"].as_str()).collect();
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
