//! Client-side hops: a target's outbound HTTP calls (a gateway's or router's upstream calls, an
//! engine's own), and which inbound request each one serves.
//!
//! An outbound exchange is parsed by the same [`HttpConn`](crate::http::HttpConn) as the server
//! side, with the directions swapped. Its span id is [`hop_id`] of the request's and response's
//! first TCP sequence numbers, the id the server's node computes for the same exchange, so the
//! two halves join without either node knowing the other.
//!
//! Inside one process, an outbound call is linked to the inbound request it serves by the
//! [`Linker`], trying in order (each link records the method that made it):
//! 1. **header**: the same `x-request-id`, or the same trace id in `traceparent`;
//! 2. **response id**: the upstream response's `id` relayed unchanged downstream;
//! 3. **body**: the same digest of the request body's first bytes (verbatim proxies), the
//!    calls in time order (retries one after another);
//! 4. **timing**: the only outbound call of the process inside the inbound request's window,
//!    while no other inbound request of the process is in flight.
//!
//! Always inside the inbound request's window (its first byte to its last). Nothing is guessed
//! beyond that: an outbound call that no method links stays a hop of its own (`none`).
//! Everything is bounded: calls waiting for their inbound request ([`MAX_PENDING`], oldest
//! given up unlinked), inbound requests remembered for late calls ([`MAX_RECENT`]).
use std::collections::{BTreeMap, HashSet, VecDeque};

use inferscope_api::{hop_id, SpanId, TraceId};
use serde::Serialize;
use serde_json::Value;

use crate::clock::WallClock;
use crate::http::{BodyDigest, Exchange};

use super::{fmt_addr, parse_traceparent, SpanJson, Tuple};

/// Outbound calls waiting for their inbound request, all processes together.
pub const MAX_PENDING: usize = 8192;
/// Inbound requests remembered for outbound calls that finish after them.
pub const MAX_RECENT: usize = 4096;
/// How long a finished outbound call waits for its inbound request to finish (ns).
pub const LINGER_NS: u64 = 5_000_000_000;
/// How long a finished inbound request is remembered (ns).
pub const RECENT_NS: u64 = 10_000_000_000;

/// How an outbound call was linked to its inbound request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkMethod {
    /// Same `x-request-id` or `traceparent` trace id.
    Header,
    /// The upstream response id relayed downstream.
    ResponseId,
    /// Same request-body digest, in time order.
    Body,
    /// The only outbound call inside the inbound request's window.
    Timing,
    /// Not linked: a hop of its own.
    None,
}

impl LinkMethod {
    /// Every method, in the order they are tried (`None` last).
    pub const ALL: [LinkMethod; 5] = [
        Self::Header,
        Self::ResponseId,
        Self::Body,
        Self::Timing,
        Self::None,
    ];

    /// Name in records, metrics and the `--hop-links` flag.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::ResponseId => "response_id",
            Self::Body => "body",
            Self::Timing => "timing",
            Self::None => "none",
        }
    }
}

/// The link methods in use (`--hop-links`; all by default). Turning the higher ones off measures
/// the lower ones honestly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkMethods {
    /// Headers.
    pub header: bool,
    /// Response ids.
    pub response_id: bool,
    /// Body digests.
    pub body: bool,
    /// Timing.
    pub timing: bool,
}

impl Default for LinkMethods {
    fn default() -> Self {
        Self {
            header: true,
            response_id: true,
            body: true,
            timing: true,
        }
    }
}

impl LinkMethods {
    /// Parses a comma-separated list of method names (`none`: link nothing).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut m = Self {
            header: false,
            response_id: false,
            body: false,
            timing: false,
        };
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "header" => m.header = true,
                "response_id" | "response-id" => m.response_id = true,
                "body" => m.body = true,
                "timing" => m.timing = true,
                "none" => {}
                other => {
                    return Err(format!(
                    "unknown hop link method {other:?} (header, response_id, body, timing, none)"
                ))
                }
            }
        }
        Ok(m)
    }
}

/// A finished outbound exchange of process `pid` (monotonic times).
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The calling process.
    pub pid: u32,
    /// Its connection.
    pub tuple: Option<Tuple>,
    /// What was exchanged; `req_first_read_ns` is when the request's first byte was sent.
    pub ex: Exchange,
    /// When it finished.
    pub done_ns: u64,
}

impl Outbound {
    fn start_ns(&self) -> u64 {
        self.ex.req_first_read_ns
    }

    fn end_ns(&self) -> u64 {
        self.ex
            .resp_last_ns
            .unwrap_or(self.ex.req_done_ns)
            .max(self.start_ns())
    }

    fn trace_in_header(&self) -> Option<TraceId> {
        self.ex
            .traceparent
            .as_deref()
            .and_then(parse_traceparent)
            .map(|t| t.0)
    }
}

/// What links outbound calls to one inbound request of process `pid` (monotonic times).
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The serving process.
    pub pid: u32,
    /// Its trace.
    pub trace_id: TraceId,
    /// Its root span: the parent of the linked calls.
    pub root: SpanId,
    /// `x-request-id` as received.
    pub x_request_id: Option<String>,
    /// Trace id of the `traceparent` received.
    pub trace_in_header: Option<TraceId>,
    /// The response id it wrote.
    pub response_id: Option<String>,
    /// Its request body's digest.
    pub body: Option<BodyDigest>,
    /// First byte in.
    pub start_ns: u64,
    /// Last byte out.
    pub end_ns: u64,
}

impl Inbound {
    fn contains(&self, ob: &Outbound) -> bool {
        self.pid == ob.pid && (self.start_ns..=self.end_ns).contains(&ob.start_ns())
    }

    /// The first of the content methods (header, response id, body) that ties `ob` to this
    /// request.
    fn content_link(&self, ob: &Outbound, m: LinkMethods) -> Option<LinkMethod> {
        let same = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
        let header = same(&self.x_request_id, &ob.ex.x_request_id)
            || (self.trace_in_header.is_some() && self.trace_in_header == ob.trace_in_header());
        if m.header && header {
            return Some(LinkMethod::Header);
        }
        if m.response_id && same(&self.response_id, &ob.ex.response_id) {
            return Some(LinkMethod::ResponseId);
        }
        if m.body && self.body.is_some() && self.body == ob.ex.body_digest {
            return Some(LinkMethod::Body);
        }
        None
    }
}

/// Hop counters, exported as metrics.
#[derive(Debug, Default, Clone, Serialize)]
pub struct HopStats {
    /// Outbound calls emitted, per link method (`none`: unlinked).
    pub hops: BTreeMap<&'static str, u64>,
    /// Outbound calls given up waiting because [`MAX_PENDING`] were waiting (emitted unlinked).
    pub pending_full: u64,
    /// Outbound calls that more than one inbound request could have made (left unlinked).
    pub ambiguous: u64,
}

/// Links outbound calls to inbound requests, per process.
#[derive(Debug)]
pub struct Linker {
    methods: LinkMethods,
    /// Processes that opened outbound connections: only their inbound requests are linked and
    /// remembered (bounded: cleared beyond [`MAX_RECENT`]).
    callers: HashSet<u32>,
    pending: VecDeque<Outbound>,
    recent: VecDeque<(u64, Inbound)>,
    /// Counters.
    pub stats: HopStats,
}

impl Linker {
    /// A linker using `methods`.
    pub fn new(methods: LinkMethods) -> Self {
        Self {
            methods,
            callers: HashSet::new(),
            pending: VecDeque::new(),
            recent: VecDeque::new(),
            stats: HopStats::default(),
        }
    }

    /// `pid` opened an outbound connection.
    pub fn note_caller(&mut self, pid: u32) {
        if self.callers.len() >= MAX_RECENT {
            self.callers.clear();
        }
        self.callers.insert(pid);
    }

    /// Whether `pid` opened outbound connections.
    pub fn is_caller(&self, pid: u32) -> bool {
        self.callers.contains(&pid)
    }

    /// Calls waiting for their inbound request.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// A finished outbound call. Returns the inbound request it serves when that one already
    /// finished; otherwise the call waits (and `evicted` gets the oldest waiting one when full).
    /// `alone` says whether no other inbound request of the process is in flight (asked only
    /// when timing is the last method left).
    pub fn on_outbound(
        &mut self,
        ob: Outbound,
        alone: &dyn Fn(u32) -> bool,
        evicted: &mut Vec<Outbound>,
    ) -> Option<(Outbound, Inbound, LinkMethod)> {
        if let Some((ib, how)) = self.find_recent(&ob, alone) {
            return Some((ob, ib, how));
        }
        if self.pending.len() >= MAX_PENDING {
            self.stats.pending_full += 1;
            evicted.extend(self.pending.pop_front());
        }
        self.pending.push_back(ob);
        None
    }

    /// The inbound request that an outbound call finishing after it belongs to.
    fn find_recent(
        &mut self,
        ob: &Outbound,
        alone: &dyn Fn(u32) -> bool,
    ) -> Option<(Inbound, LinkMethod)> {
        let inside = || {
            self.recent
                .iter()
                .map(|(_, ib)| ib)
                .filter(|ib| ib.contains(ob))
        };
        let by_content = inside()
            .filter_map(|ib| Some((ib, ib.content_link(ob, self.methods)?)))
            .min_by_key(|(_, how)| *how);
        if let Some((ib, how)) = by_content {
            return Some((ib.clone(), how));
        }
        if !self.methods.timing {
            return None;
        }
        let mut it = inside();
        match (it.next(), it.next()) {
            (Some(ib), None) if alone(ob.pid) => Some((ib.clone(), LinkMethod::Timing)),
            (Some(_), _) => {
                self.stats.ambiguous += 1;
                None
            }
            _ => None,
        }
    }

    /// An inbound request finished: takes the waiting outbound calls it made, in time order,
    /// each with how it was linked, and remembers it for calls that finish later. `alone` as
    /// in [`Linker::on_outbound`].
    pub fn claim(
        &mut self,
        ib: Inbound,
        now_ns: u64,
        alone: &dyn Fn(u32) -> bool,
    ) -> Vec<(Outbound, LinkMethod)> {
        let m = self.methods;
        let mut taken: Vec<(usize, LinkMethod)> = Vec::new();
        let mut body_end: Option<u64> = None;
        let mut candidates = 0;
        let mut by_start: Vec<usize> = (0..self.pending.len())
            .filter(|&i| ib.contains(&self.pending[i]))
            .collect();
        by_start.sort_by_key(|&i| self.pending[i].start_ns());
        for &i in &by_start {
            candidates += 1;
            let ob = &self.pending[i];
            match ib.content_link(ob, m) {
                // Identical bodies: calls one after another (retries), not side by side.
                Some(LinkMethod::Body) if body_end.is_none_or(|e| ob.start_ns() >= e) => {
                    body_end = Some(ob.end_ns());
                    taken.push((i, LinkMethod::Body));
                }
                Some(LinkMethod::Body) | None => {}
                Some(how) => taken.push((i, how)),
            }
        }
        if taken.is_empty() && m.timing && candidates > 0 {
            if candidates == 1 && alone(ib.pid) {
                taken.push((by_start[0], LinkMethod::Timing));
            } else {
                self.stats.ambiguous += 1;
            }
        }
        taken.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        let mut out: Vec<(Outbound, LinkMethod)> = taken
            .into_iter()
            .filter_map(|(i, how)| Some((self.pending.remove(i)?, how)))
            .collect();
        out.sort_by_key(|(ob, _)| ob.start_ns());
        self.remember(ib, now_ns);
        out
    }

    fn remember(&mut self, ib: Inbound, now_ns: u64) {
        while self.recent.len() >= MAX_RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((now_ns, ib));
    }

    /// Outbound calls that waited [`LINGER_NS`] for an inbound request: unlinked. Also forgets
    /// inbound requests older than [`RECENT_NS`].
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Outbound>) {
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now_ns.saturating_sub(*t) > RECENT_NS)
        {
            self.recent.pop_front();
        }
        while self
            .pending
            .front()
            .is_some_and(|ob| now_ns.saturating_sub(ob.done_ns) > LINGER_NS)
        {
            out.extend(self.pending.pop_front());
        }
    }

    /// Every waiting call (shutdown).
    pub fn drain(&mut self, out: &mut Vec<Outbound>) {
        out.extend(self.pending.drain(..));
    }

    /// Counts one emitted hop.
    pub fn count(&mut self, how: LinkMethod) {
        *self.stats.hops.entry(how.as_str()).or_default() += 1;
    }
}

/// The `http.client` span of an outbound call: its id is the hop id when the request's first
/// sequence number is known (else a random one), its parent the inbound request's root.
pub fn client_span(
    ob: &Outbound,
    how: LinkMethod,
    attempt: usize,
    parent: Option<SpanId>,
    clock: &WallClock,
) -> SpanJson {
    let ex = &ob.ex;
    let id = ex
        .req_first_seq
        .map(|s| hop_id(s, ex.resp_first_seq))
        .unwrap_or_else(super::phases::span_id);
    let mut a: BTreeMap<&'static str, Value> = BTreeMap::new();
    a.insert("http.method", Value::from(ex.method.clone()));
    a.insert("http.target", Value::from(super::redact_query(&ex.path)));
    a.insert("http.status_code", Value::from(ex.status.unwrap_or(0)));
    if let Some((netns, local, remote)) = ob.tuple {
        a.insert("server.address", Value::from(remote.0.to_string()));
        a.insert("server.port", Value::from(remote.1));
        a.insert("client.address", Value::from(fmt_addr(local)));
        a.insert("inferscope.hop.netns", Value::from(netns));
    }
    a.insert("inferscope.hop.id", Value::from(id.to_string()));
    a.insert("inferscope.hop.link", Value::from(how.as_str()));
    a.insert("inferscope.hop.attempt", Value::from(attempt as u64));
    let outcome = ex.outcome.unwrap_or(crate::http::Outcome::Complete);
    a.insert("inferscope.hop.outcome", Value::from(outcome.as_str()));
    if let Some(s) = ex.req_first_seq {
        a.insert("inferscope.hop.req_tcp_seq", Value::from(s));
    }
    if let Some(s) = ex.resp_first_seq {
        a.insert("inferscope.hop.resp_tcp_seq", Value::from(s));
    }
    if let Some(t) = ex.resp_first_ns {
        let first = t.saturating_sub(ob.start_ns());
        a.insert("inferscope.hop.first_byte_ns", Value::from(first));
    }
    a.insert("inferscope.hop.req_bytes", Value::from(ex.req_bytes));
    a.insert("inferscope.hop.resp_bytes", Value::from(ex.resp_bytes));
    if let Some(m) = &ex.model {
        a.insert("gen_ai.request.model", Value::from(m.clone()));
    }
    if let Some(x) = &ex.x_request_id {
        a.insert("inferscope.hop.x_request_id", Value::from(x.clone()));
    }
    if let Some(r) = &ex.response_id {
        a.insert("inferscope.hop.response_id", Value::from(r.clone()));
    }
    SpanJson {
        name: "http.client",
        span_id: id,
        parent_span_id: parent,
        start_unix_ns: clock.to_wall(ob.start_ns()),
        end_unix_ns: clock.to_wall(ob.end_ns()),
        attributes: a,
        links: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
