//! The Tracker's client side: a target's outbound connections (the server side's `HttpConn`
//! with the directions swapped) and their exchanges handed to the [`hops::Linker`]; the linking
//! rules themselves are in `hops.rs`.
use std::collections::HashMap;

use inferscope_api::TraceId;
use inferscope_common::EventKind;

use super::{
    hops, new_trace_id, redact_query, Conn, RequestRecord, SpanJson, Tracker, Tuple, ECONNRESET,
    EPIPE,
};
use crate::event::SockRecord;
use crate::http::{Bytes, Exchange, Outcome};

/// Whether a server connection of `pid` has an exchange in flight (another inbound request the
/// timing link method could confuse). Only asked when content methods found nothing.
pub(super) fn busy_server(conns: &HashMap<(u32, u64), Conn>, pid: u32) -> bool {
    conns
        .values()
        .any(|c| c.pid == pid && !c.client && !c.http.idle())
}

/// An outbound connection's bytes: what the target sends is the request stream, what it reads
/// the response stream (the server side's roles, swapped). Sends are timed at entry, reads at
/// exit, as on the server side.
pub(super) fn on_client_tcp(c: &mut Conn, s: &SockRecord, exchanges: &mut Vec<Exchange>) {
    let seq = (s.sock.tcp_seq != 0).then(|| s.sock.tcp_seq.wrapping_sub(s.ret as u32));
    let bytes = |ts_ns| Bytes {
        ts_ns,
        total: s.ret as usize,
        captured: &s.payload,
        seq,
    };
    match s.kind {
        EventKind::SockSend if s.ret > 0 => c.http.on_read(bytes(s.start_ns)),
        EventKind::SockRecv if s.ret > 0 => c.http.on_write(bytes(s.end_ns), exchanges),
        // The server closed or reset the connection.
        EventKind::SockRecv if s.ret == 0 || s.ret == -ECONNRESET => {
            c.http.on_close(s.end_ns, exchanges)
        }
        EventKind::SockSend if s.ret == -ECONNRESET || s.ret == -EPIPE => {
            c.http.on_close(s.end_ns, exchanges)
        }
        // The target closed it: whatever is in flight was abandoned by the caller.
        EventKind::SockClose => {
            c.http.on_client_eof(s.end_ns);
            c.http.on_close(s.end_ns, exchanges);
        }
        _ => {}
    }
}

impl Tracker {
    /// Finished outbound exchanges of `pid`: each waits for its inbound request, or goes out
    /// now when that one already went.
    pub(super) fn emit_hops(
        &mut self,
        pid: u32,
        tuple: Option<Tuple>,
        now: u64,
        out: &mut Vec<RequestRecord>,
    ) {
        let mut evicted = Vec::new();
        for mut ex in std::mem::take(&mut self.exchanges) {
            // A call's span needs no token times: its wait must not hold 32 KiB each.
            ex.chunk_ns = Vec::new();
            let ob = hops::Outbound {
                pid,
                tuple,
                ex,
                done_ns: now,
            };
            let conns = &self.conns;
            let alone = |pid: u32| !busy_server(conns, pid);
            if let Some((ob, ib, how)) = self.linker.on_outbound(ob, &alone, &mut evicted) {
                self.push_hop(&ob, how, Some((ib.trace_id, ib.root)), out);
            }
        }
        for ob in evicted {
            self.push_hop(&ob, hops::LinkMethod::None, None, out);
        }
    }

    /// An outbound call as a record of its own (`kind` `"hop"`): in its inbound request's trace
    /// when `link` names it, else in a trace of its own.
    pub(super) fn push_hop(
        &mut self,
        ob: &hops::Outbound,
        how: hops::LinkMethod,
        link: Option<(TraceId, inferscope_api::SpanId)>,
        out: &mut Vec<RequestRecord>,
    ) {
        self.linker.count(how);
        let span = hops::client_span(ob, how, 0, link.map(|l| l.1), &self.clock);
        out.push(RequestRecord {
            kind: "hop",
            trace_id: link.map_or_else(new_trace_id, |l| l.0),
            parent_span_id: link.map(|l| l.1),
            engine: "openai-compatible",
            pid: ob.pid,
            method: ob.ex.method.clone(),
            path: redact_query(&ob.ex.path),
            status: ob.ex.status.unwrap_or(0),
            outcome: ob.ex.outcome.unwrap_or(Outcome::Complete).as_str(),
            start_unix_ns: span.start_unix_ns,
            end_unix_ns: span.end_unix_ns,
            hop_id: Some(span.span_id),
            spans: vec![span],
            ..Default::default()
        });
    }

    /// The outbound calls that `ib`, a finished inbound request, made: as `http.client` spans
    /// under its root.
    pub(super) fn linked_hops(&mut self, ib: hops::Inbound, spans: &mut Vec<SpanJson>) {
        if !self.linker.is_caller(ib.pid) {
            return;
        }
        let (root, end) = (ib.root, ib.end_ns);
        let conns = &self.conns;
        let alone = |pid: u32| !busy_server(conns, pid);
        let linked = self.linker.claim(ib, end, &alone);
        for (i, (ob, how)) in linked.iter().enumerate() {
            self.linker.count(*how);
            spans.push(hops::client_span(ob, *how, i, Some(root), &self.clock));
        }
    }

    /// Hop counters.
    pub fn hop_stats(&self) -> &hops::HopStats {
        &self.linker.stats
    }
}
