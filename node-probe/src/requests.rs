//! Per-request span trees from socket events.
//!
//! The [`Tracker`] owns one [`HttpConn`] per server-side TCP connection of a target process (and
//! per outbound HTTP connection: [`hops`]), the
//! wire-side arrival times of watched connections, and the engine follower. When an exchange
//! completes it is joined with what the engine did for it (by response id) and becomes a
//! [`RequestRecord`]: one trace, a root `http.server` span, phase spans and the engine steps.
//!
//! Everything is bounded: connections ([`TrackerConfig::max_conns`], idle ones evicted first),
//! arrivals per connection, exchanges per connection (see [`crate::http`]), engine state (see
//! [`crate::engine`]); exchanges not finished within the timeout are closed and marked so.
//!
//! Connections and arrivals are keyed by network namespace as well as by address: two pods
//! with the same loopback address and port are two servers.
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use inferscope_api::{hop_id, TraceId};
use inferscope_common::{EventKind, AF_INET, AF_INET6};
use serde::Serialize;
use serde_json::Value;

use crate::clock::WallClock;
use crate::engine::Engines;
use crate::event::{ArrivalRecord, Event, SockRecord, SocketId};
use crate::gpu::nccl::{Collective, CollectiveSync, Collectives, NcclStats};
use crate::gpu::steps::{GpuStep, GpuSteps, StepStats};
use crate::gpu::GpuOp;
use crate::http::{Bytes, Exchange, HttpConn, Outcome};
use phases::{engine_phases, span_id, step_link, Phases};

mod client;
pub mod hops;
mod phases;
mod record;
pub mod tenant;

pub use record::{
    parse_traceparent, redact_query, Endpoint, LinkJson, RequestRecord, SpanJson, StepJson,
};

const ECONNRESET: i64 = 104;
const EPIPE: i64 = 32;
/// Arrivals remembered per connection.
const MAX_ARRIVALS: usize = 64;

/// Tracker limits.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// An exchange not complete after this long is closed as a timeout.
    pub timeout_ns: u64,
    /// Connections followed at once.
    pub max_conns: usize,
    /// Keep request targets' query strings (`?api-key=…`); by default only their keys are kept.
    pub keep_query_strings: bool,
    /// Extract a tenant label from each request (off: `None`).
    pub tenant: Option<tenant::TenantConfig>,
    /// Follow targets' outbound HTTP calls as hops, linked to inbound requests by these
    /// methods (off: `None`).
    pub client_hops: Option<hops::LinkMethods>,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            timeout_ns: 300_000_000_000,
            max_conns: 32_768,
            keep_query_strings: false,
            tenant: None,
            client_hops: Some(hops::LinkMethods::default()),
        }
    }
}

/// Counters, exported as metrics.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TrackerStats {
    /// Requests emitted.
    pub requests: u64,
    /// Idle connections evicted to stay within `max_conns`.
    pub conns_evicted: u64,
    /// Busy connections evicted (their exchanges closed as timeouts).
    pub conns_evicted_busy: u64,
    /// Exchanges closed by the timeout.
    pub timeouts: u64,
    /// Connections that stopped being followed, per reason.
    pub gave_up: BTreeMap<&'static str, u64>,
    /// Arrival records dropped (per-connection cap).
    pub arrivals_dropped: u64,
    /// Responses whose engine request was not found.
    pub engine_unjoined: u64,
    /// Bytes servers wrote with no request to answer.
    pub unsolicited_bytes: u64,
    /// Bytes read on connections no longer followed (requests lost to a give-up).
    pub ignored_bytes: u64,
    /// Connections followed again after a give-up (at the next request head while idle).
    pub resyncs: u64,
    /// Responses that began before their request's body was read.
    pub early_responses: u64,
    /// Requests whose tenant became `_other` (the distinct-value cap was reached).
    pub tenant_overflow: u64,
    /// TCP connections classified as NCCL traffic (an NCCL thread moved bytes on them): not
    /// parsed as HTTP.
    pub nccl_conns: u64,
    /// Bytes moved on them.
    pub nccl_bytes: u64,
    /// Outbound calls (hops) and how they were linked.
    pub hops: hops::HopStats,
}

/// Threads whose NCCL-ness is remembered; beyond it the cache is cleared.
const MAX_THREAD_NAMES: usize = 65_536;
/// Connections remembered as NCCL traffic.
const MAX_NCCL_CONNS: usize = 65_536;

/// A TCP connection's addresses inside its network namespace: `(netns, local, remote)`.
type Tuple = (u32, (IpAddr, u16), (IpAddr, u16));

/// A connection's counters that [`TrackerStats`] sums.
fn conn_counters(h: &HttpConn) -> [u64; 4] {
    [
        h.unsolicited_bytes,
        h.ignored_bytes,
        h.resyncs,
        h.early_responses,
    ]
}

#[derive(Debug)]
struct Conn {
    http: HttpConn,
    /// An outbound connection of the target (it sends the requests).
    client: bool,
    pid: u32,
    fd: i32,
    tuple: Option<Tuple>,
    last_ns: u64,
    gave_up_counted: bool,
}

/// Builds request records from events.
pub struct Tracker {
    cfg: TrackerConfig,
    conns: HashMap<(u32, u64), Conn>,
    arrivals: HashMap<Tuple, VecDeque<(u32, u64)>>,
    /// Listening ports per network namespace.
    server_ports: HashSet<(u32, u16)>,
    /// Ports declared on the command line: server ports in every namespace.
    declared_ports: HashSet<u16>,
    new_ports: Vec<(u32, u16)>,
    engines: Engines,
    /// GPU steps per process from the CUDA hooks; each completed one goes to its engine
    /// follower, and to `gpu_done` for printing.
    gpu: GpuSteps,
    gpu_done: Vec<GpuStep>,
    /// NCCL communicators and collectives; collectives lined up across ranks go to the
    /// engine follower of the straggler's process, and every call to `colls_done` (printing).
    nccl: Collectives,
    colls_done: Vec<Collective>,
    synced: Vec<CollectiveSync>,
    clock: WallClock,
    exchanges: Vec<Exchange>,
    /// What makes engine-step ids unique beyond this host: its kernel boot id.
    step_scope: String,
    /// Tenant labels handed out (when extraction is on).
    tenants: Option<tenant::Tenants>,
    /// Threads seen moving TCP bytes: whether each is one of NCCL's (`comm` `NCCL …`).
    nccl_threads: HashMap<(u32, u32), bool>,
    /// Connections an NCCL thread used: NCCL traffic, never HTTP.
    nccl_conns: HashSet<(u32, u64)>,
    proc_root: std::path::PathBuf,
    /// Outbound calls and the inbound requests they serve.
    linker: hops::Linker,
    /// Counters.
    pub stats: TrackerStats,
}

fn tuple_of(s: &SockRecord) -> Option<Tuple> {
    match s.socket {
        SocketId::Inet { local, remote } => Some((s.sock.netns, local, remote)),
        _ => None,
    }
}

fn fmt_addr((ip, port): (IpAddr, u16)) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// A new random trace id (a v4 UUID: never zero).
fn new_trace_id() -> TraceId {
    TraceId::from_bytes(*uuid::Uuid::new_v4().as_bytes())
}

/// The host's kernel boot id under `proc_root` (a random id when it cannot be read).
fn host_boot_id(proc_root: &std::path::Path) -> String {
    std::fs::read_to_string(proc_root.join("sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

impl Tracker {
    /// A tracker converting times with `clock`, reading roles from `proc_root`.
    pub fn new(cfg: TrackerConfig, clock: WallClock, proc_root: &std::path::Path) -> Self {
        let tenants = cfg.tenant.map(tenant::Tenants::new);
        let cfg_hops = cfg.client_hops.unwrap_or_default();
        Self {
            cfg,
            conns: HashMap::new(),
            arrivals: HashMap::new(),
            server_ports: HashSet::new(),
            declared_ports: HashSet::new(),
            new_ports: Vec::new(),
            engines: Engines::new(proc_root),
            gpu: GpuSteps::new(),
            gpu_done: Vec::new(),
            nccl: Collectives::new(),
            colls_done: Vec::new(),
            synced: Vec::new(),
            clock,
            exchanges: Vec::new(),
            step_scope: host_boot_id(proc_root),
            tenants,
            nccl_threads: HashMap::new(),
            nccl_conns: HashSet::new(),
            proc_root: proc_root.to_owned(),
            linker: hops::Linker::new(cfg_hops),
            stats: TrackerStats::default(),
        }
    }

    /// A CUDA boundary call: completes GPU steps, which go to the process's engine follower.
    /// An NCCL call: lines collectives up across ranks.
    fn on_gpu(&mut self, g: &crate::gpu::GpuRecord) {
        if g.is_nccl() {
            self.on_nccl(g);
            return;
        }
        let Some(c) = crate::gpu::decode(g) else {
            return;
        };
        match c.op {
            GpuOp::CaptureBegin => self.nccl.on_capture(g.call.tgid, c.stream, true),
            GpuOp::CaptureEnd => self.nccl.on_capture(g.call.tgid, c.stream, false),
            _ => {}
        }
        let first = self.gpu_done.len();
        self.gpu.on_call(g, &c, &mut self.gpu_done);
        for s in &self.gpu_done[first..] {
            self.engines.on_gpu_step(s);
        }
        // Nobody prints them: keep none beyond a bound.
        if self.gpu_done.len() > 4096 {
            self.gpu_done.clear();
        }
    }

    fn on_nccl(&mut self, g: &crate::gpu::GpuRecord) {
        self.nccl.on_call(g, &mut self.colls_done, &mut self.synced);
        self.route_synced();
        if self.colls_done.len() > 4096 {
            self.colls_done.clear();
        }
    }

    fn route_synced(&mut self) {
        for s in self.synced.drain(..) {
            self.engines.on_collective(&s);
        }
    }

    /// Moves the collectives called since the last call into `out` (printing).
    pub fn take_collectives(&mut self, out: &mut Vec<Collective>) {
        out.append(&mut self.colls_done);
    }

    /// The NCCL follower's counters.
    pub fn nccl_stats(&self) -> NcclStats {
        self.nccl.stats
    }

    /// Moves the GPU steps completed since the last call into `out` (printing).
    pub fn take_gpu_steps(&mut self, out: &mut Vec<GpuStep>) {
        out.append(&mut self.gpu_done);
    }

    /// The GPU step builder's counters.
    pub fn gpu_stats(&self) -> StepStats {
        self.gpu.stats
    }

    /// Declares a server port (listening socket of a target) in network namespace `netns`.
    pub fn add_server_port(&mut self, netns: u32, port: u16) {
        if self.server_ports.insert((netns, port)) {
            self.new_ports.push((netns, port));
        }
    }

    /// Declares a server port in every network namespace (`--port`); it is watched in each
    /// namespace passed to [`Tracker::add_server_port`]'s callers via [`Tracker::declared_ports`].
    pub fn declare_port(&mut self, port: u16) {
        self.declared_ports.insert(port);
    }

    /// Ports declared for every namespace.
    pub fn declared_ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.declared_ports.iter().copied().collect();
        v.sort_unstable();
        v
    }

    fn is_server_port(&self, netns: u32, port: u16) -> bool {
        self.server_ports.contains(&(netns, port)) || self.declared_ports.contains(&port)
    }

    /// `(netns, port)` server ports learned since the last call (to watch in the kernel).
    pub fn take_new_ports(&mut self) -> Vec<(u32, u16)> {
        std::mem::take(&mut self.new_ports)
    }

    /// Connections followed.
    pub fn conns(&self) -> usize {
        self.conns.len()
    }

    /// The engine followers.
    pub fn engines(&self) -> &Engines {
        &self.engines
    }

    /// Feeds one event; finished requests are pushed to `out`.
    pub fn on_event(&mut self, ev: &Event, out: &mut Vec<RequestRecord>) {
        match ev {
            Event::Sock(s) => match s.sock.family {
                AF_INET | AF_INET6 if s.sock.sock_type == 1 => self.on_tcp(s, out),
                inferscope_common::AF_UNIX => self.engines.on_unix(s),
                _ => {}
            },
            Event::Arrival(a) => self.on_arrival(a),
            Event::Call(c) => self.engines.on_call(c),
            Event::Gpu(g) => self.on_gpu(g),
            Event::Proc(p) if p.kind == EventKind::ProcExit => {
                self.engines.forget(p.tgid);
                self.gpu.forget(p.tgid);
                self.nccl.forget(p.tgid);
                let keys: Vec<_> = self
                    .conns
                    .keys()
                    .filter(|k| k.0 == p.tgid)
                    .copied()
                    .collect();
                for k in keys {
                    if let Some(mut c) = self.conns.remove(&k) {
                        c.http.on_close(p.ts_ns, &mut self.exchanges);
                        self.drain(&c, out);
                    }
                }
            }
            // A new program: whoever claimed the old one is asked again.
            Event::Proc(p) if p.kind == EventKind::ProcExec => self.engines.forget(p.tgid),
            Event::Proc(_) => {}
        }
    }

    fn on_arrival(&mut self, a: &ArrivalRecord) {
        let q = self
            .arrivals
            .entry((a.netns, a.local, a.remote))
            .or_default();
        if q.len() >= MAX_ARRIVALS {
            q.pop_front();
            self.stats.arrivals_dropped += 1;
        }
        q.push_back((a.rcv_nxt, a.ts_ns));
        // Arrivals for connections never seen by a target are bounded by the conn cap too.
        if self.arrivals.len() > self.cfg.max_conns * 2 {
            let live: HashSet<Tuple> = self.conns.values().filter_map(|c| c.tuple).collect();
            self.arrivals.retain(|k, _| live.contains(k));
        }
    }

    /// Whether thread `tid` of `tgid` is one of NCCL's (its proxy, socket and bootstrap
    /// threads are named `NCCL …`), read once per thread from `/proc` (bounded cache).
    fn is_nccl_thread(&mut self, tgid: u32, tid: u32) -> bool {
        if let Some(&v) = self.nccl_threads.get(&(tgid, tid)) {
            return v;
        }
        if self.nccl_threads.len() >= MAX_THREAD_NAMES {
            self.nccl_threads.clear();
        }
        let comm = std::fs::read_to_string(
            self.proc_root
                .join(tgid.to_string())
                .join("task")
                .join(tid.to_string())
                .join("comm"),
        )
        .unwrap_or_default();
        let v = comm.starts_with("NCCL ");
        self.nccl_threads.insert((tgid, tid), v);
        v
    }

    /// NCCL traffic: a connection an NCCL thread moved bytes on is NCCL's from then on (its
    /// HTTP state, if any, is dropped unparsed); its bytes are counted, never parsed.
    fn on_nccl_tcp(&mut self, s: &SockRecord, key: (u32, u64)) -> bool {
        let nccl = self.nccl_conns.contains(&key)
            || (matches!(s.kind, EventKind::SockRecv | EventKind::SockSend)
                && self.is_nccl_thread(s.tgid, s.tid));
        if !nccl {
            return false;
        }
        if self.nccl_conns.len() < MAX_NCCL_CONNS && self.nccl_conns.insert(key) {
            self.stats.nccl_conns += 1;
            self.conns.remove(&key);
        }
        match s.kind {
            EventKind::SockRecv | EventKind::SockSend if s.ret > 0 => {
                self.stats.nccl_bytes += s.ret as u64;
            }
            EventKind::SockClose => {
                self.nccl_conns.remove(&key);
            }
            _ => {}
        }
        true
    }

    fn on_tcp(&mut self, s: &SockRecord, out: &mut Vec<RequestRecord>) {
        let key = (s.tgid, s.sock.inode);
        if self.on_nccl_tcp(s, key) {
            return;
        }
        let tuple = tuple_of(s);
        if s.kind == EventKind::SockAccept {
            if let Some((netns, (_, lport), _)) = tuple {
                self.add_server_port(netns, lport);
            }
            self.insert_conn(key, s.fd, tuple, s.end_ns, false, out);
            return;
        }
        if !self.conns.contains_key(&key) {
            let is_server =
                tuple.is_some_and(|(netns, (_, lport), _)| self.is_server_port(netns, lport));
            let is_client = !is_server
                && self.cfg.client_hops.is_some()
                && s.kind == EventKind::SockSend
                && tuple.is_some()
                && crate::http::starts_request_line(&s.payload);
            if !(is_server || is_client) || s.kind == EventKind::SockClose {
                return;
            }
            self.insert_conn(key, s.fd, tuple, s.end_ns, is_client, out);
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        c.last_ns = s.end_ns;
        if c.client {
            client::on_client_tcp(c, s, &mut self.exchanges);
            let (pid, tuple) = (c.pid, c.tuple);
            if s.kind == EventKind::SockClose {
                self.conns.remove(&key);
            }
            if !self.exchanges.is_empty() {
                self.emit_hops(pid, tuple, s.end_ns, out);
            }
            return;
        }
        let before = conn_counters(&c.http);
        match s.kind {
            EventKind::SockRecv => {
                if s.ret > 0 {
                    let seq =
                        (s.sock.tcp_seq != 0).then(|| s.sock.tcp_seq.wrapping_sub(s.ret as u32));
                    c.http.on_read(Bytes {
                        ts_ns: s.end_ns,
                        total: s.ret as usize,
                        captured: &s.payload,
                        seq,
                    });
                } else if s.ret == 0 || s.ret == -ECONNRESET {
                    c.http.on_client_eof(s.end_ns);
                }
            }
            EventKind::SockSend if s.ret > 0 => {
                // A send's bytes leave during the call, and on loopback the receiver is woken
                // inside it (and may preempt the sender before the call returns): its entry is
                // the closer bound of when they hit the wire.
                // `write_seq` after the call: the first byte written is `ret` before it.
                let seq = (s.sock.tcp_seq != 0).then(|| s.sock.tcp_seq.wrapping_sub(s.ret as u32));
                c.http.on_write(
                    Bytes {
                        ts_ns: s.start_ns,
                        total: s.ret as usize,
                        captured: &s.payload,
                        seq,
                    },
                    &mut self.exchanges,
                );
            }
            EventKind::SockSend if s.ret == -ECONNRESET || s.ret == -EPIPE => {
                c.http.on_client_eof(s.end_ns);
            }
            EventKind::SockClose => {
                let mut c = self.conns.remove(&key).expect("present");
                c.http.on_close(s.end_ns, &mut self.exchanges);
                self.drain(&c, out);
                if let Some(t) = c.tuple {
                    self.arrivals.remove(&t);
                }
                return;
            }
            _ => {}
        }
        let c = self.conns.get(&key).expect("present");
        let after = conn_counters(&c.http);
        let st = &mut self.stats;
        for (total, (a, b)) in [
            &mut st.unsolicited_bytes,
            &mut st.ignored_bytes,
            &mut st.resyncs,
            &mut st.early_responses,
        ]
        .into_iter()
        .zip(after.into_iter().zip(before))
        {
            *total += a - b;
        }
        if !self.exchanges.is_empty() {
            let (pid, fd, tuple) = (c.pid, c.fd, c.tuple);
            self.emit(pid, fd, tuple, out);
        }
        let c = self.conns.get_mut(&key).expect("present");
        match (c.http.gave_up, c.gave_up_counted) {
            (Some(why), false) => {
                c.gave_up_counted = true;
                *self.stats.gave_up.entry(why).or_default() += 1;
            }
            // Followed again: a later give-up counts anew.
            (None, true) => c.gave_up_counted = false,
            _ => {}
        }
    }

    fn insert_conn(
        &mut self,
        key: (u32, u64),
        fd: i32,
        tuple: Option<Tuple>,
        now: u64,
        client: bool,
        out: &mut Vec<RequestRecord>,
    ) {
        if !self.conns.contains_key(&key) && self.conns.len() >= self.cfg.max_conns {
            self.evict(out);
        }
        let c = self.conns.entry(key).or_insert_with(|| Conn {
            http: HttpConn::with_tenant(self.cfg.tenant.map(|t| t.from)),
            client,
            pid: key.0,
            fd,
            tuple,
            last_ns: now,
            gave_up_counted: false,
        });
        c.fd = fd;
        c.last_ns = now;
        if client {
            self.linker.note_caller(key.0);
        }
    }

    /// Frees 1/16 of the connection table: least recently active idle ones first, then busy
    /// ones (whose exchanges end as timeouts).
    fn evict(&mut self, out: &mut Vec<RequestRecord>) {
        let n = (self.cfg.max_conns / 16).max(1);
        let mut idle: Vec<(u64, (u32, u64))> = self
            .conns
            .iter()
            .filter(|(_, c)| c.http.idle())
            .map(|(k, c)| (c.last_ns, *k))
            .collect();
        idle.sort_unstable();
        for (_, k) in idle.into_iter().take(n) {
            if let Some(c) = self.conns.remove(&k) {
                if let Some(t) = c.tuple {
                    self.arrivals.remove(&t);
                }
                self.stats.conns_evicted += 1;
            }
        }
        if self.conns.len() >= self.cfg.max_conns {
            let mut busy: Vec<(u64, (u32, u64))> =
                self.conns.iter().map(|(k, c)| (c.last_ns, *k)).collect();
            busy.sort_unstable();
            for (_, k) in busy.into_iter().take(n) {
                if let Some(mut c) = self.conns.remove(&k) {
                    c.http.flush(Outcome::Timeout, &mut self.exchanges);
                    self.stats.conns_evicted_busy += 1;
                    self.drain(&c, out);
                }
            }
        }
    }

    /// Closes exchanges older than the timeout and expires unjoined engine requests.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<RequestRecord>) {
        let cutoff = now_ns.saturating_sub(self.cfg.timeout_ns);
        let stale: Vec<(u32, u64)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.http.oldest_start_ns().is_some_and(|t| t < cutoff))
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            if let Some(mut c) = self.conns.remove(&k) {
                c.http.flush(Outcome::Timeout, &mut self.exchanges);
                self.stats.timeouts += self.exchanges.len() as u64;
                self.drain(&c, out);
            }
        }
        let mut unlinked = Vec::new();
        self.linker.expire(now_ns, &mut unlinked);
        for ob in unlinked {
            self.push_hop(&ob, hops::LinkMethod::None, None, out);
        }
        self.engines.expire(cutoff);
        self.engines.recheck_unclaimed();
        self.nccl.settle_expired(now_ns, &mut self.synced);
        self.route_synced();
    }

    /// Ends everything (at shutdown).
    pub fn flush_all(&mut self, out: &mut Vec<RequestRecord>) {
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for k in keys {
            if let Some(mut c) = self.conns.remove(&k) {
                c.http.flush(Outcome::Timeout, &mut self.exchanges);
                self.drain(&c, out);
            }
        }
        let mut unlinked = Vec::new();
        self.linker.drain(&mut unlinked);
        for ob in unlinked {
            self.push_hop(&ob, hops::LinkMethod::None, None, out);
        }
    }

    fn drain(&mut self, c: &Conn, out: &mut Vec<RequestRecord>) {
        if c.client {
            self.emit_hops(c.pid, c.tuple, c.last_ns, out);
        } else {
            self.emit(c.pid, c.fd, c.tuple, out);
        }
    }

    fn emit(&mut self, pid: u32, fd: i32, tuple: Option<Tuple>, out: &mut Vec<RequestRecord>) {
        let exchanges = std::mem::take(&mut self.exchanges);
        for ex in exchanges {
            let rec = self.build(pid, fd, tuple, ex);
            self.stats.requests += 1;
            out.push(rec);
        }
    }

    /// Wire arrival time of the byte with sequence `seq` on `tuple`.
    fn arrival_of(&self, tuple: Option<Tuple>, seq: Option<u32>) -> Option<u64> {
        let q = self.arrivals.get(&tuple?)?;
        let seq = seq?;
        q.iter()
            .find(|(rcv_nxt, _)| (rcv_nxt.wrapping_sub(seq) as i32) > 0)
            .map(|&(_, ts)| ts)
    }

    fn build(&mut self, pid: u32, fd: i32, tuple: Option<Tuple>, ex: Exchange) -> RequestRecord {
        let clock = self.clock;
        let w = |t: u64| clock.to_wall(t);
        let arrival = self
            .arrival_of(tuple, ex.req_first_seq)
            .filter(|&a| a <= ex.req_first_read_ns);
        let start = arrival.unwrap_or(ex.req_first_read_ns);
        let end = ex.resp_last_ns.unwrap_or(ex.req_done_ns.max(start));
        let first_token = if ex.sse {
            ex.chunk_ns.first().copied().or(ex.resp_first_ns)
        } else {
            ex.resp_first_ns
        };
        let gaps: Vec<u64> = ex
            .chunk_ns
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .collect();
        let tpot = (ex.chunk_ns.len() >= 2).then(|| {
            (ex.chunk_ns[ex.chunk_ns.len() - 1] - ex.chunk_ns[0]) / (ex.chunk_ns.len() as u64 - 1)
        });
        let (trace_id, parent) = match ex.traceparent.as_deref().and_then(parse_traceparent) {
            Some((t, p)) => (t, Some(p)),
            None => (new_trace_id(), None),
        };
        let tenant = self.tenants.as_mut().and_then(|t| {
            let label = t.label(ex.tenant.as_deref());
            self.stats.tenant_overflow = t.overflow;
            label
        });
        let (engine_name, engine) = self.engines.take_trace(pid, &ex);
        if engine.is_none() && ex.response_id.is_some() && self.engines.active_for(pid) {
            self.stats.engine_unjoined += 1;
        }

        let root_id = span_id();
        let mut spans = Vec::new();
        let mut attrs = BTreeMap::new();
        attrs.insert("http.method", Value::from(ex.method.clone()));
        let path = if self.cfg.keep_query_strings {
            ex.path.clone()
        } else {
            redact_query(&ex.path)
        };
        attrs.insert("http.target", Value::from(path.clone()));
        attrs.insert("http.status_code", Value::from(ex.status.unwrap_or(0)));
        if let Some(m) = &ex.model {
            attrs.insert("gen_ai.request.model", Value::from(m.clone()));
        }
        spans.push(SpanJson {
            name: "http.server",
            span_id: root_id,
            parent_span_id: parent,
            start_unix_ns: w(start),
            end_unix_ns: w(end),
            attributes: attrs,
            links: Vec::new(),
        });
        let scope = (&self.clock, self.step_scope.as_str());
        let ph = match &engine {
            Some(er) => engine_phases(er, (start, end), root_id, scope, &mut spans),
            None => Phases::default(),
        };
        spans[0].links = ph.steps.iter().map(step_link).collect();
        if self.cfg.client_hops.is_some() {
            let ib = hops::Inbound {
                pid,
                trace_id,
                root: root_id,
                x_request_id: ex.x_request_id.clone(),
                trace_in_header: parent.map(|_| trace_id),
                response_id: ex.response_id.clone(),
                body: ex.body_digest,
                start_ns: start,
                end_ns: end,
            };
            self.linked_hops(ib, &mut spans);
        }
        let engine_output_offsets_ns = engine
            .as_ref()
            .map(|e| {
                e.output_ns
                    .iter()
                    .map(|t| t.saturating_sub(start))
                    .collect()
            })
            .unwrap_or_default();
        RequestRecord {
            kind: "request",
            trace_id,
            parent_span_id: parent,
            x_request_id: ex.x_request_id,
            tenant,
            response_id: ex.response_id,
            engine_request_id: ph.engine_id,
            engine: engine_name,
            engine_instance: engine.and_then(|e| e.instance).map(|i| i.to_string()),
            pid,
            fd,
            netns: tuple.map_or(0, |t| t.0),
            client: tuple.map(|t| fmt_addr(t.2)),
            server: tuple.map(|t| fmt_addr(t.1)),
            client_endpoint: tuple.map(|t| Endpoint {
                ip: t.2 .0,
                port: t.2 .1,
            }),
            server_endpoint: tuple.map(|t| Endpoint {
                ip: t.1 .0,
                port: t.1 .1,
            }),
            req_tcp_seq: ex.req_first_seq,
            resp_tcp_seq: ex.resp_first_seq,
            hop_id: ex.req_first_seq.map(|s| hop_id(s, ex.resp_first_seq)),
            method: ex.method,
            path,
            status: ex.status.unwrap_or(0),
            outcome: ex.outcome.unwrap_or(Outcome::Complete).as_str(),
            gave_up: ex.gave_up,
            model: ex.model,
            stream: ex.stream_requested,
            sse: ex.sse,
            req_bytes: ex.req_bytes,
            resp_bytes: ex.resp_bytes,
            start_unix_ns: w(start),
            end_unix_ns: w(end),
            start_source: if arrival.is_some() { "arrival" } else { "read" },
            read_wait_ns: ex.req_first_read_ns.saturating_sub(start),
            e2e_ns: end.saturating_sub(start),
            ttft_ns: first_token.map(|t| t.saturating_sub(start)).unwrap_or(0),
            first_text_ns: ex.first_text_ns.map(|t| t.saturating_sub(start)),
            tpot_ns: tpot,
            prompt_tokens: ex.usage.and_then(|u| u.prompt_tokens),
            completion_tokens: ex.usage.and_then(|u| u.completion_tokens),
            chunks: ex.chunks,
            max_gap_ns: gaps.iter().copied().max().unwrap_or(0),
            chunk_offsets_ns: ex
                .chunk_ns
                .iter()
                .map(|t| t.saturating_sub(start))
                .collect(),
            engine_output_offsets_ns,
            done: ex.done_marker,
            frontend_ns: ph.frontend,
            queue_ns: ph.queue,
            prefill_ns: ph.prefill,
            decode_ns: ph.decode,
            delivery_ns: ph.delivery,
            engine_ttft_ns: ph.engine_ttft,
            engine_e2e_ns: ph.engine_e2e,
            engine_steps: ph.steps.len() as u32,
            steps: ph.steps,
            step_tokens: ph.step_tokens,
            gpu_ns: ph.gpu.map(|g| g.latency_ns),
            gpu_cost_ns: ph.gpu.and_then(|g| g.cost_ns),
            gpu_host_bound_ns: ph.gpu.map(|g| g.host_bound_ns),
            gpu_upper_bound_steps: ph.gpu.map(|g| g.upper_bound_steps),
            collectives: ph.coll.map(|c| c.collectives),
            collective_wait_ns: ph.coll.map(|c| c.wait_ns),
            straggler_rank: ph.coll.map(|c| c.straggler.0),
            straggler_lag_ns: ph.coll.map(|c| c.straggler.1),
            spans,
        }
    }
}

#[cfg(test)]
mod tests;
