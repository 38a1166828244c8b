use super::*;
use crate::event::{ArrivalRecord, SockRecord};
use inferscope_common::{SockInfo, SyscallId};

fn tcp(kind: EventKind, ts: u64, ret: i64, seq: u32, payload: &[u8], client_port: u16) -> Event {
    let local: (IpAddr, u16) = ("127.0.0.1".parse().unwrap(), 8000);
    let remote: (IpAddr, u16) = ("127.0.0.1".parse().unwrap(), client_port);
    Event::Sock(SockRecord {
        kind,
        syscall: SyscallId::Read,
        tgid: 100,
        tid: 101,
        cpu: 0,
        start_ns: ts,
        end_ns: ts,
        fd: 9,
        aux_fd: if kind == EventKind::SockAccept { 3 } else { -1 },
        ret,
        sock: SockInfo {
            family: AF_INET,
            sock_type: 1,
            inode: 5000 + client_port as u64,
            tcp_seq: seq,
            ..Default::default()
        },
        socket: SocketId::Inet { local, remote },
        payload: payload.to_vec(),
    })
}

fn tracker() -> Tracker {
    Tracker::new(
        TrackerConfig::default(),
        WallClock::new(),
        std::path::Path::new("/nonexistent"),
    )
}

#[test]
fn streamed_request_uses_arrival_time() {
    let mut t = tracker();
    let mut out = Vec::new();
    let req = b"POST /v1/completions HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nContent-Length: 16\r\n\r\n{\"model\":\"tiny\"}";
    t.on_event(
        &tcp(EventKind::SockAccept, 1_000, 9, 0, b"", 40000),
        &mut out,
    );
    assert!(t.take_new_ports().contains(&(0, 8000)));
    // the request arrived at 1_500 (rcv_nxt covers it) but was read at 3_000
    t.on_event(
        &Event::Arrival(ArrivalRecord {
            ts_ns: 1_500,
            local: ("127.0.0.1".parse().unwrap(), 8000),
            remote: ("127.0.0.1".parse().unwrap(), 40000),
            rcv_nxt: 10_000 + req.len() as u32,
            netns: 0,
        }),
        &mut out,
    );
    t.on_event(
        &tcp(
            EventKind::SockRecv,
            3_000,
            req.len() as i64,
            10_000 + req.len() as u32,
            req,
            40000,
        ),
        &mut out,
    );
    let head =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    t.on_event(
        &tcp(
            EventKind::SockSend,
            4_000,
            head.len() as i64,
            0,
            head,
            40000,
        ),
        &mut out,
    );
    for (i, ts) in [5_000u64, 6_000, 8_000].iter().enumerate() {
        let body = format!("data: {{\"id\":\"cmpl-x\",\"choices\":[{{\"text\":\"t{i}\"}}]}}\n\n");
        let c = format!("{:x}\r\n{body}\r\n", body.len());
        t.on_event(
            &tcp(
                EventKind::SockSend,
                *ts,
                c.len() as i64,
                0,
                c.as_bytes(),
                40000,
            ),
            &mut out,
        );
    }
    let done = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n";
    t.on_event(
        &tcp(
            EventKind::SockSend,
            9_000,
            done.len() as i64,
            0,
            done,
            40000,
        ),
        &mut out,
    );
    assert_eq!(out.len(), 1);
    let r = &out[0];
    assert_eq!(r.trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(r.parent_span_id.unwrap(), "b7ad6b7169203331");
    assert_eq!(r.start_source, "arrival");
    assert_eq!(r.read_wait_ns, 1_500);
    assert_eq!(r.ttft_ns, 3_500);
    assert_eq!(r.first_text_ns, Some(3_500));
    assert_eq!(r.e2e_ns, 7_500);
    assert_eq!(r.tpot_ns, Some(1_500));
    assert_eq!(r.max_gap_ns, 2_000);
    assert_eq!(r.chunks, 3);
    assert_eq!(r.chunk_offsets_ns, [3_500, 4_500, 6_500]);
    assert_eq!((r.status, r.outcome, r.done), (200, "complete", true));
    assert_eq!(r.model.as_deref(), Some("tiny"));
    assert_eq!(r.spans[0].name, "http.server");
    assert_eq!(r.client.as_deref(), Some("127.0.0.1:40000"));
    let j = serde_json::to_value(r).unwrap();
    assert_eq!(j["kind"], "request");
    assert_eq!(j["trace_id"].as_str().unwrap().len(), 32);
}

#[test]
fn generated_trace_id_and_close_abort() {
    let mut t = tracker();
    let mut out = Vec::new();
    t.on_event(&tcp(EventKind::SockAccept, 1, 9, 0, b"", 40001), &mut out);
    let req = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
    t.on_event(
        &tcp(EventKind::SockRecv, 2, req.len() as i64, 50, req, 40001),
        &mut out,
    );
    t.on_event(&tcp(EventKind::SockRecv, 3, 0, 50, b"", 40001), &mut out);
    t.on_event(&tcp(EventKind::SockClose, 4, 0, 0, b"", 40001), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].outcome, "client_abort");
    assert!(out[0].trace_id.is_valid());
    assert_eq!(out[0].trace_id.to_string().len(), 32);
    assert_eq!(out[0].start_source, "read");
    assert_eq!(t.conns(), 0);
}

#[test]
fn many_idle_connections_stay_bounded() {
    let mut t = Tracker::new(
        TrackerConfig {
            timeout_ns: 1_000,
            max_conns: 1_000,
            ..TrackerConfig::default()
        },
        WallClock::new(),
        std::path::Path::new("/nonexistent"),
    );
    let mut out = Vec::new();
    for i in 0..100_000u32 {
        let port = 1024 + (i % 60_000) as u16;
        let mut ev = tcp(EventKind::SockAccept, i as u64, 9, 0, b"", port);
        if let Event::Sock(s) = &mut ev {
            s.sock.inode = 1_000_000 + i as u64;
        }
        t.on_event(&ev, &mut out);
        assert!(t.conns() <= 1_000);
    }
    assert!(t.stats.conns_evicted >= 99_000);
    // half-read requests time out
    let mut ev = tcp(EventKind::SockRecv, 200_000, 10, 0, b"POST / HTT", 9);
    if let Event::Sock(s) = &mut ev {
        s.sock.inode = 42;
    }
    t.on_event(&ev, &mut out);
    t.tick(10_000_000, &mut out);
    assert!(out.is_empty(), "no method parsed yet: nothing to report");
}

#[test]
fn traceparent_validation() {
    assert!(parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_some());
    assert!(parse_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01").is_none());
    assert!(parse_traceparent("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_none());
    assert!(parse_traceparent("00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01").is_none());
    assert!(parse_traceparent("garbage").is_none());
}

#[test]
fn query_values_are_redacted_to_keys() {
    assert_eq!(redact_query("/v1/completions"), "/v1/completions");
    assert_eq!(redact_query("/v1/x?api-key=s3cret&b=2"), "/v1/x?api-key&b");
    assert_eq!(redact_query("/v1/x?flag&&k="), "/v1/x?flag&k");
    assert_eq!(redact_query("/v1/x?"), "/v1/x");
    assert_eq!(redact_query("/v1/x?a=1#frag=2"), "/v1/x?a");
}

/// A TCP event of process `tgid` on socket `inode` between `local` and `remote` (127.0.0.x).
struct Sock {
    tgid: u32,
    inode: u64,
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
}

impl Sock {
    fn ev(&self, kind: EventKind, ts: u64, payload: &[u8], seq_after: u32) -> Event {
        Event::Sock(SockRecord {
            kind,
            syscall: SyscallId::Read,
            tgid: self.tgid,
            tid: self.tgid,
            cpu: 0,
            start_ns: ts,
            end_ns: ts,
            fd: 9,
            aux_fd: if kind == EventKind::SockAccept { 3 } else { -1 },
            ret: payload.len() as i64,
            sock: SockInfo {
                family: AF_INET,
                sock_type: 1,
                inode: self.inode,
                tcp_seq: seq_after,
                ..Default::default()
            },
            socket: SocketId::Inet {
                local: self.local,
                remote: self.remote,
            },
            payload: payload.to_vec(),
        })
    }
}

fn addr(last: u8, port: u16) -> (IpAddr, u16) {
    (IpAddr::from([127, 0, 0, last]), port)
}

const UP_REQ: &[u8] = b"POST /v1/completions HTTP/1.1\r\nHost: up\r\nx-request-id: gt-1\r\nContent-Length: 16\r\n\r\n{\"model\":\"tiny\"}";
const UP_RESP: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 17\r\n\r\n{\"id\":\"cmpl-up\"}\n";
/// First sequence numbers of the upstream request and response.
const UP_SEQ: (u32, u32) = (70_000, 90_000);

#[test]
fn gateway_call_is_a_child_hop_whose_id_the_upstream_node_computes_too() {
    // The gateway's node: an inbound request, and the upstream call it makes.
    let mut gw = tracker();
    let mut out = Vec::new();
    let inbound = Sock {
        tgid: 100,
        inode: 1,
        local: addr(1, 8000),
        remote: addr(1, 40000),
    };
    let upstream = Sock {
        tgid: 100,
        inode: 2,
        local: addr(1, 50000),
        remote: addr(2, 9000),
    };
    let req = b"POST /v1/completions HTTP/1.1\r\nx-request-id: gt-1\r\nContent-Length: 16\r\n\r\n{\"model\":\"tiny\"}";
    let n = |b: &[u8]| b.len() as u32;
    for (sock, kind, ts, payload, seq) in [
        (&inbound, EventKind::SockAccept, 1_000, &b""[..], 0),
        (
            &inbound,
            EventKind::SockRecv,
            2_000,
            &req[..],
            10_000 + n(req),
        ),
        (
            &upstream,
            EventKind::SockSend,
            3_000,
            UP_REQ,
            UP_SEQ.0 + n(UP_REQ),
        ),
        (
            &upstream,
            EventKind::SockRecv,
            8_000,
            UP_RESP,
            UP_SEQ.1 + n(UP_RESP),
        ),
        (&inbound, EventKind::SockSend, 9_000, UP_RESP, 0),
    ] {
        gw.on_event(&sock.ev(kind, ts, payload, seq), &mut out);
    }
    assert_eq!(out.len(), 1, "{out:?}");
    let r = &out[0];
    let root = r.spans[0].span_id;
    let hop = r
        .spans
        .iter()
        .find(|s| s.name == "http.client")
        .expect("hop");
    assert_eq!(hop.span_id, hop_id(UP_SEQ.0, Some(UP_SEQ.1)));
    assert_eq!(hop.parent_span_id, Some(root));
    assert_eq!(hop.attributes["inferscope.hop.link"], "header");
    assert_eq!(hop.attributes["server.port"], 9000);
    assert_eq!(gw.hop_stats().hops["header"], 1);

    // The upstream's node sees the same bytes from the server side.
    let mut up = tracker();
    let mut out = Vec::new();
    let served = Sock {
        tgid: 200,
        inode: 3,
        local: addr(2, 9000),
        remote: addr(1, 50000),
    };
    for (kind, ts, payload, seq) in [
        (EventKind::SockAccept, 3_500, &b""[..], 0),
        (EventKind::SockRecv, 4_000, UP_REQ, UP_SEQ.0 + n(UP_REQ)),
        (EventKind::SockSend, 7_000, UP_RESP, UP_SEQ.1 + n(UP_RESP)),
    ] {
        up.on_event(&served.ev(kind, ts, payload, seq), &mut out);
    }
    assert_eq!(out[0].hop_id, Some(hop.span_id));
}

#[test]
fn unlinked_call_becomes_a_hop_of_its_own() {
    let mut t = tracker();
    let mut out = Vec::new();
    let upstream = Sock {
        tgid: 100,
        inode: 2,
        local: addr(1, 50000),
        remote: addr(2, 9000),
    };
    let n = |b: &[u8]| b.len() as u32;
    t.on_event(
        &upstream.ev(EventKind::SockSend, 3_000, UP_REQ, UP_SEQ.0 + n(UP_REQ)),
        &mut out,
    );
    t.on_event(
        &upstream.ev(EventKind::SockRecv, 8_000, UP_RESP, UP_SEQ.1 + n(UP_RESP)),
        &mut out,
    );
    assert!(out.is_empty(), "waits for its inbound request");
    t.tick(8_000 + hops::LINGER_NS + 1, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind, "hop");
    assert_eq!(out[0].spans[0].attributes["inferscope.hop.link"], "none");
    assert_eq!(out[0].spans[0].parent_span_id, None);
    // A non-HTTP outbound connection is not followed.
    let other = Sock {
        inode: 4,
        ..upstream
    };
    t.on_event(
        &other.ev(EventKind::SockSend, 9_000, b"\x00\x01binary", 1),
        &mut out,
    );
    assert_eq!(t.conns(), 1);
}
