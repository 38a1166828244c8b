//! Tests for `wire`: pcap bytes are written by hand (global header + records), so every field
//! the reader depends on is pinned here.
use super::*;

const T0: u64 = 1_700_000_000_000_000_000;
const US: u64 = 1_000;
const SERVER_PORT: u16 = 8000;

// ---- pcap writing ----------------------------------------------------------------------------

/// A classic pcap file being written.
struct Pcap {
    buf: Vec<u8>,
    nanos: bool,
    big: bool,
    snaplen: u32,
}

impl Pcap {
    fn new(linktype: u32, nanos: bool, big: bool, snaplen: u32) -> Self {
        let mut p = Self {
            buf: Vec::new(),
            nanos,
            big,
            snaplen,
        };
        p.u32(if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 });
        p.u16(2);
        p.u16(4);
        p.u32(0); // thiszone
        p.u32(0); // sigfigs
        p.u32(snaplen);
        p.u32(linktype);
        p
    }

    fn u16(&mut self, v: u16) {
        let b = if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.buf.extend_from_slice(&b);
    }

    fn u32(&mut self, v: u32) {
        let b = if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.buf.extend_from_slice(&b);
    }

    fn record(&mut self, ts_ns: u64, frame: &[u8]) {
        let incl = frame.len().min(self.snaplen as usize);
        self.u32((ts_ns / 1_000_000_000) as u32);
        let frac = ts_ns % 1_000_000_000;
        self.u32(if self.nanos { frac } else { frac / 1000 } as u32);
        self.u32(incl as u32);
        self.u32(frame.len() as u32);
        self.buf.extend_from_slice(&frame[..incl]);
    }
}

// ---- packet building -------------------------------------------------------------------------

/// A TCP header with 12 bytes of options (NOP NOP timestamps), as Linux sends, then payload.
fn tcp(sport: u16, dport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(32 + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes()); // ack number
    t.push(8 << 4); // data offset: 8 words
    t.push(flags);
    t.extend_from_slice(&0xffffu16.to_be_bytes()); // window
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    t.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    t.extend_from_slice(payload);
    t
}

fn ipv4(l4: &[u8]) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, 6, 0, 0]); // id, DF, ttl, tcp, csum
    p.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    p.extend_from_slice(l4);
    p
}

fn ipv6(l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(&[6, 64]); // next header TCP, hop limit
    let lo = Ipv6Addr::LOCALHOST.octets();
    p.extend_from_slice(&lo);
    p.extend_from_slice(&lo);
    p.extend_from_slice(l4);
    p
}

fn ether_type(ip: &[u8]) -> [u8; 2] {
    if ip[0] >> 4 == 6 {
        [0x86, 0xdd]
    } else {
        [0x08, 0x00]
    }
}

/// Wraps an IP packet in a frame of link type `lt`.
fn frame(lt: u32, ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    match lt {
        1 => {
            f.extend_from_slice(&[0; 12]); // lo: all-zero MACs
            f.extend_from_slice(&ether_type(ip));
        }
        113 => {
            f.extend_from_slice(&[0, 0, 0x03, 0x04, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0]);
            f.extend_from_slice(&ether_type(ip));
        }
        276 => {
            f.extend_from_slice(&ether_type(ip));
            f.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0x03, 0x04, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        0 => f.extend_from_slice(&2u32.to_le_bytes()),
        108 => f.extend_from_slice(&2u32.to_be_bytes()),
        101 => {}
        _ => unreachable!(),
    }
    f.extend_from_slice(ip);
    f
}

/// One TCP conversation being scripted: packets as (capture time, IP packet).
struct Conv {
    pkts: Vec<(u64, Vec<u8>)>,
    cport: u16,
    cseq: u32,
    sseq: u32,
    v6: bool,
}

impl Conv {
    fn new(cport: u16, cisn: u32, sisn: u32, v6: bool) -> Self {
        Self {
            pkts: Vec::new(),
            cport,
            cseq: cisn,
            sseq: sisn,
            v6,
        }
    }

    fn ip(&self, l4: &[u8]) -> Vec<u8> {
        if self.v6 {
            ipv6(l4)
        } else {
            ipv4(l4)
        }
    }

    /// Client sends; returns the sequence number used.
    fn c(&mut self, ts: u64, flags: u8, payload: &[u8]) -> u32 {
        let seq = self.cseq;
        let p = self.ip(&tcp(self.cport, SERVER_PORT, seq, flags, payload));
        self.pkts.push((ts, p));
        let ctl = u32::from(flags & (SYN | FIN) != 0);
        self.cseq = seq.wrapping_add(payload.len() as u32 + ctl);
        seq
    }

    /// Server sends; returns the sequence number used.
    fn s(&mut self, ts: u64, flags: u8, payload: &[u8]) -> u32 {
        let seq = self.sseq;
        self.s_at(ts, seq, flags, payload);
        let ctl = u32::from(flags & (SYN | FIN) != 0);
        self.sseq = seq.wrapping_add(payload.len() as u32 + ctl);
        seq
    }

    /// Server sends at an explicit sequence number (a retransmit).
    fn s_at(&mut self, ts: u64, seq: u32, flags: u8, payload: &[u8]) {
        let p = self.ip(&tcp(SERVER_PORT, self.cport, seq, flags, payload));
        self.pkts.push((ts, p));
    }

    fn c_at(&mut self, ts: u64, seq: u32, flags: u8, payload: &[u8]) {
        let p = self.ip(&tcp(self.cport, SERVER_PORT, seq, flags, payload));
        self.pkts.push((ts, p));
    }
}

// ---- the scripted exchange -------------------------------------------------------------------

const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

fn event(i: usize) -> String {
    format!(
        "data: {{\"id\":\"cmpl-0123abcd\",\"object\":\"text_completion\",\"model\":\"m\",\
         \"choices\":[{{\"index\":0,\"text\":\" tok{i}\",\"finish_reason\":null}}]}}\n\n"
    )
}

fn chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

const JSON_BODY: &str =
    r#"{"id":"cmpl-77","object":"text_completion","choices":[{"index":0,"text":" tok0 tok1"}]}"#;

fn json_response() -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{JSON_BODY}",
        JSON_BODY.len()
    )
}

/// Expected times of the scripted exchange.
struct Expect {
    req0: (u64, u64, u64), // first, last, bytes
    headers: u64,
    ev0: u64,
    ev1: u64,
    done: u64,
    zero: u64,
    req1: (u64, u64, u64),
    json: u64,
    ev0_offset: u64,
    ev0_chunk_len: u64,
}

/// Connection 40000 (IPv4): a streamed completion (SSE, chunked) with one event split across
/// two segments and that segment retransmitted, a retransmitted request segment, then a
/// non-streamed request on the same connection. The server's sequence numbers wrap past 2^32
/// inside the first event. `drop_ev0` leaves the first event's segment out of the capture.
fn exchange(drop_ev0: bool) -> (Vec<(u64, Vec<u8>)>, Expect) {
    let mut c = Conv::new(40000, 1000, 0xffff_ffc0, false);
    c.c(T0, SYN, b"");
    c.s(T0 + 10 * US, SYN | ACK, b"");
    c.c(T0 + 20 * US, ACK, b"");
    let req = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n\
                {\"prompt\":\"hi\",\"max_tokens\":2,\"stream\":1}";
    let (r1, r2) = req.split_at(40);
    c.c(T0 + 100 * US, ACK, r1);
    let r2_seq = c.c(T0 + 110 * US, ACK | 0x08, r2);
    c.s(T0 + 1000 * US, ACK | 0x08, SSE_HEAD.as_bytes());
    let e0 = chunk(&event(0));
    if drop_ev0 {
        c.sseq = c.sseq.wrapping_add(e0.len() as u32);
    } else {
        c.s(T0 + 2000 * US, ACK | 0x08, e0.as_bytes());
    }
    let e1 = chunk(&event(1));
    let (e1a, e1b) = e1.split_at(70);
    c.s(T0 + 3000 * US, ACK, e1a.as_bytes());
    let e1b_seq = c.s(T0 + 3100 * US, ACK | 0x08, e1b.as_bytes());
    c.c_at(T0 + 3500 * US, r2_seq, ACK | 0x08, r2); // client retransmit
    c.s(
        T0 + 4000 * US,
        ACK | 0x08,
        chunk("data: [DONE]\n\n").as_bytes(),
    );
    c.s(T0 + 4100 * US, ACK | 0x08, b"0\r\n\r\n");
    c.s_at(T0 + 9000 * US, e1b_seq, ACK | 0x08, e1b.as_bytes()); // server retransmit
    let req2 = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
    c.c(T0 + 10_000 * US, ACK | 0x08, req2);
    c.s(T0 + 12_000 * US, ACK | 0x08, json_response().as_bytes());
    c.c(T0 + 20_000 * US, ACK | FIN, b"");
    c.s(T0 + 20_010 * US, ACK | FIN, b"");
    let expect = Expect {
        req0: (T0 + 100 * US, T0 + 110 * US, req.len() as u64),
        headers: T0 + 1000 * US,
        ev0: T0 + 2000 * US,
        ev1: T0 + 3000 * US,
        done: T0 + 4000 * US,
        zero: T0 + 4100 * US,
        req1: (T0 + 10_000 * US, T0 + 10_000 * US, req2.len() as u64),
        json: T0 + 12_000 * US,
        ev0_offset: (SSE_HEAD.len() + format!("{:x}\r\n", event(0).len()).len()) as u64,
        ev0_chunk_len: e0.len() as u64,
    };
    (c.pkts, expect)
}

/// Connection 40001 (IPv6), interleaved: one short SSE response.
fn exchange_v6() -> Vec<(u64, Vec<u8>)> {
    let mut c = Conv::new(40001, 7, 9, true);
    c.c(T0 + 500 * US, SYN, b"");
    c.s(T0 + 510 * US, SYN | ACK, b"");
    c.c(
        T0 + 600 * US,
        ACK | 0x08,
        b"POST /v1/chat/completions HTTP/1.1\r\n\r\n",
    );
    let body = format!(
        "{SSE_HEAD}{}{}0\r\n\r\n",
        chunk(&event(5)),
        chunk("data: [DONE]\n\n")
    );
    c.s(T0 + 2500 * US, ACK | 0x08, body.as_bytes());
    c.pkts
}

/// Packets that must be skipped: another port's TCP, UDP, ARP (Ethernet only).
fn noise() -> Vec<(u64, Vec<u8>)> {
    let other = ipv4(&tcp(5555, 6666, 1, ACK | 0x08, b"not ours"));
    let mut udp = ipv4(&[0x1f, 0x40, 0x1f, 0x40, 0, 12, 0, 0, 1, 2, 3, 4]);
    udp[9] = 17;
    vec![(T0 + 50 * US, other), (T0 + 60 * US, udp)]
}

fn write_pcap(lt: u32, nanos: bool, big: bool, snaplen: u32, pkts: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut sorted: Vec<&(u64, Vec<u8>)> = pkts.iter().collect();
    sorted.sort_by_key(|p| p.0); // capture order
    let mut p = Pcap::new(lt, nanos, big, snaplen);
    for (ts, ip) in sorted {
        p.record(*ts, &frame(lt, ip));
    }
    p.buf
}

fn all_packets(drop_ev0: bool) -> (Vec<(u64, Vec<u8>)>, Expect) {
    let (mut pkts, e) = exchange(drop_ev0);
    pkts.extend(exchange_v6());
    pkts.extend(noise());
    (pkts, e)
}

fn check_exchange(tl: &SseTimeline, e: &Expect) {
    assert_eq!(tl.lost_sync_at, None);
    assert_eq!(tl.missing_bytes, 0);
    assert_eq!(tl.first_byte_unix_ns, Some(e.headers));
    assert_eq!(tl.last_byte_unix_ns, Some(e.json));
    assert_eq!(tl.responses.len(), 2, "{tl:#?}");
    let r = &tl.responses[0];
    assert_eq!(
        (r.status, r.chunked, r.event_stream, r.complete),
        (200, true, true, true)
    );
    assert!(!r.resynced);
    assert_eq!(r.offset, 0);
    assert_eq!(r.first_byte_unix_ns, e.headers);
    assert_eq!(r.last_byte_unix_ns, e.zero);
    let got: Vec<(u64, SseKind)> = r.events.iter().map(|ev| (ev.ts_unix_ns, ev.kind)).collect();
    assert_eq!(
        got,
        vec![
            (e.ev0, SseKind::Data),
            (e.ev1, SseKind::Data),
            (e.done, SseKind::Done)
        ]
    );
    assert_eq!(r.events[0].offset, e.ev0_offset);
    assert_eq!(r.first_data().map(|x| x.ts_unix_ns), Some(e.ev0));
    assert_eq!(r.done().map(|x| x.ts_unix_ns), Some(e.done));
    assert_eq!(r.data_events().count(), 2);
    assert_eq!(
        r.body_len,
        (event(0).len() + event(1).len() + "data: [DONE]\n\n".len()) as u64
    );
    let j = &tl.responses[1];
    assert_eq!(
        (j.status, j.chunked, j.event_stream, j.complete),
        (200, false, false, true)
    );
    assert_eq!(
        (j.first_byte_unix_ns, j.last_byte_unix_ns),
        (e.json, e.json)
    );
    assert_eq!(j.body_len, JSON_BODY.len() as u64);
    assert!(j.events.is_empty());
}

fn check_capture(cap: &Capture, e: &Expect) {
    assert_eq!(cap.connections.len(), 2);
    assert!(cap.reused.is_empty());
    let c = &cap.connections[&40000];
    assert_eq!(c.client_port, 40000);
    assert_eq!(c.client_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(c.syn_unix_ns, Some(T0));
    assert_eq!(
        (c.client_isn, c.server_isn),
        (Some(1000), Some(0xffff_ffc0))
    );
    assert_eq!(c.client_fin_unix_ns, Some(T0 + 20_000 * US));
    assert_eq!(c.server_fin_unix_ns, Some(T0 + 20_010 * US));
    assert_eq!(c.rst_unix_ns, None);
    assert_eq!(c.client.len(), 4); // 2 request segments, 1 retransmit, request 2
    assert_eq!(
        c.client[0],
        ClientSegment {
            ts_unix_ns: e.req0.0,
            seq: 1001,
            len: 40
        }
    );
    assert_eq!(c.client[1].seq, 1041);
    assert_eq!(c.client[2].seq, 1041); // the retransmit
    assert_eq!(c.server.len(), 8); // headers, event 0, event 1 in 2, DONE, 0, retransmit, json
    assert_eq!(c.server[0].seq, 0xffff_ffc1);
    assert_eq!(c.server[0].len as usize, SSE_HEAD.len());
    assert!(c.server[1].seq < 0x100, "wrapped: {:#x}", c.server[1].seq);
    let tl = sse_timeline(&c.server);
    check_exchange(&tl, e);
    let req = request_times(&c.client, &tl.responses);
    assert_eq!(
        req,
        vec![
            Some(RequestTiming {
                first_byte_unix_ns: e.req0.0,
                last_byte_unix_ns: e.req0.1,
                bytes: e.req0.2,
                first_seq: 1001,
            }),
            Some(RequestTiming {
                first_byte_unix_ns: e.req1.0,
                last_byte_unix_ns: e.req1.1,
                bytes: e.req1.2,
                first_seq: 1001 + e.req0.2 as u32,
            }),
        ]
    );
    // The server stream starts at its ISN + 1, across the wrap.
    let segs: Vec<(u64, u32, u32)> = c
        .server
        .iter()
        .map(|s| (s.ts_unix_ns, s.seq, s.len))
        .collect();
    assert_eq!(stream_base_seq(&segs), Some(0xffff_ffc1));

    let v6 = &cap.connections[&40001];
    assert_eq!(v6.client_ip, IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(v6.server.len(), 1);
    let tl6 = sse_timeline(&v6.server);
    assert_eq!(tl6.responses.len(), 1);
    let r = &tl6.responses[0];
    let kinds: Vec<SseKind> = r.events.iter().map(|e| e.kind).collect();
    if v6.server[0].head.len() == v6.server[0].len as usize {
        assert!(r.complete);
        assert_eq!(tl6.lost_sync_at, None);
        assert_eq!(kinds, vec![SseKind::Data, SseKind::Done]);
    } else {
        // The whole response is one segment and only its head is stored: the chunk after the
        // first event cannot be framed, and that is reported, not guessed.
        assert!(!r.complete);
        assert!(tl6.lost_sync_at.is_some());
        let first_event_stored = v6.server[0].head.len() > SSE_HEAD.len() + 10;
        assert_eq!(kinds.len(), usize::from(first_event_stored));
    }
    assert!(r.events.iter().all(|e| e.ts_unix_ns == T0 + 2500 * US));
}

#[test]
fn ethernet_capture_full_exchange() {
    let (pkts, e) = all_packets(false);
    let bytes = write_pcap(1, false, false, 262_144, &pkts);
    let cap = read_pcap(&bytes[..], SERVER_PORT, DEFAULT_HEAD_BYTES).unwrap();
    assert_eq!(cap.link_type, LinkType::Ethernet);
    assert!(!cap.nanosecond);
    assert_eq!(cap.stats.packets, pkts.len() as u64);
    assert_eq!(cap.stats.other_ports, 1);
    assert_eq!(cap.stats.undecoded, 1);
    assert_eq!(cap.stats.matched, pkts.len() as u64 - 2);
    assert_eq!(cap.stats.cut_payloads, 0);
    assert!(!cap.stats.truncated_file);
    check_capture(&cap, &e);
}

#[test]
fn every_link_type_byte_order_and_resolution() {
    let (pkts, e) = all_packets(false);
    for (lt, want) in [
        (0, LinkType::Null),
        (1, LinkType::Ethernet),
        (101, LinkType::Raw),
        (108, LinkType::Loop),
        (113, LinkType::LinuxSll),
        (276, LinkType::LinuxSll2),
    ] {
        for (nanos, big) in [(false, false), (true, false), (false, true), (true, true)] {
            let bytes = write_pcap(lt, nanos, big, 65_535, &pkts);
            let cap = read_pcap(&bytes[..], SERVER_PORT, usize::MAX)
                .unwrap_or_else(|err| panic!("link {lt}: {err:#}"));
            assert_eq!((cap.link_type, cap.nanosecond), (want, nanos));
            check_capture(&cap, &e);
        }
    }
}

#[test]
fn nanosecond_timestamps_are_kept() {
    let mut c = Conv::new(41000, 1, 1, false);
    c.s(T0 + 123_456_789, ACK, b"HTTP/1.1 204 No Content\r\n\r\n");
    let bytes = write_pcap(1, true, false, 65_535, &c.pkts);
    let cap = read_pcap(&bytes[..], SERVER_PORT, 64).unwrap();
    let conn = &cap.connections[&41000];
    assert_eq!(conn.server[0].ts_unix_ns, T0 + 123_456_789);
    let tl = sse_timeline(&conn.server);
    assert_eq!(tl.responses.len(), 1);
    assert_eq!(tl.responses[0].status, 204);
    // µs files scale to ns
    let bytes = write_pcap(1, false, false, 65_535, &c.pkts);
    let cap = read_pcap(&bytes[..], SERVER_PORT, 64).unwrap();
    assert_eq!(
        cap.connections[&41000].server[0].ts_unix_ns,
        T0 + 123_456_000
    );
}

#[test]
fn short_heads_still_locate_events() {
    // 100 stored bytes per segment: headers fit, event JSON does not.
    let (pkts, e) = all_packets(false);
    let bytes = write_pcap(1, false, false, 262_144, &pkts);
    let cap = read_pcap(&bytes[..], SERVER_PORT, 100).unwrap();
    assert!(cap.connections[&40000]
        .server
        .iter()
        .all(|s| s.head.len() <= 100));
    check_capture(&cap, &e);
}

#[test]
fn snaplen_cut_packets_keep_true_lengths() {
    // Ethernet 14 + IPv4 20 + TCP 32 = 66 header bytes; 100 payload bytes captured.
    let (pkts, e) = all_packets(false);
    let bytes = write_pcap(1, false, false, 166, &pkts);
    let cap = read_pcap(&bytes[..], SERVER_PORT, usize::MAX).unwrap();
    assert!(cap.stats.cut_payloads > 0);
    let c = &cap.connections[&40000];
    assert_eq!(c.server[1].len as usize, chunk(&event(0)).len()); // true length
    assert_eq!(c.server[1].head.len(), 100);
    check_capture(&cap, &e);
}

#[test]
fn lost_segment_resynchronises_at_next_chunk() {
    let (pkts, e) = exchange(true);
    let bytes = write_pcap(1, false, false, 65_535, &pkts);
    let cap = read_pcap(&bytes[..], SERVER_PORT, DEFAULT_HEAD_BYTES).unwrap();
    let tl = sse_timeline(&cap.connections[&40000].server);
    assert_eq!(tl.missing_bytes, e.ev0_chunk_len);
    assert_eq!(tl.lost_sync_at, None);
    assert_eq!(tl.responses.len(), 2);
    let r = &tl.responses[0];
    assert!(r.resynced && r.complete);
    let got: Vec<(u64, SseKind)> = r.events.iter().map(|ev| (ev.ts_unix_ns, ev.kind)).collect();
    assert_eq!(got, vec![(e.ev1, SseKind::Data), (e.done, SseKind::Done)]);
    assert_eq!(tl.responses[1].first_byte_unix_ns, e.json);
}

#[test]
fn reused_client_port_keeps_both_connections() {
    let mut a = Conv::new(42000, 100, 200, false);
    a.c(T0, SYN, b"");
    a.c(T0 + US, ACK | 0x08, b"GET / HTTP/1.1\r\n\r\n");
    a.c(T0 + 2 * US, ACK | FIN, b"");
    let mut b = Conv::new(42000, 5000, 6000, false);
    b.c(T0 + 10 * US, SYN, b"");
    b.c_at(T0 + 11 * US, 5000, SYN, b""); // SYN retransmit: same connection
    b.c_at(T0 + 12 * US, 5001, ACK | 0x08, b"GET /x HTTP/1.1\r\n\r\n");
    let mut pkts = a.pkts;
    pkts.extend(b.pkts);
    let bytes = write_pcap(1, false, false, 65_535, &pkts);
    let cap = read_pcap(&bytes[..], SERVER_PORT, 16).unwrap();
    assert_eq!(cap.reused.len(), 1);
    assert_eq!(cap.reused[0].client_isn, Some(100));
    assert_eq!(cap.reused[0].client.len(), 1);
    let now = &cap.connections[&42000];
    assert_eq!(
        (now.client_isn, now.syn_unix_ns),
        (Some(5000), Some(T0 + 10 * US))
    );
    assert_eq!(now.client.len(), 1);
}

#[test]
fn truncated_file_and_bad_headers() {
    let (pkts, _) = exchange(false);
    let bytes = write_pcap(1, false, false, 65_535, &pkts);
    let cut = &bytes[..bytes.len() - 3];
    let cap = read_pcap(cut, SERVER_PORT, 256).unwrap();
    assert!(cap.stats.truncated_file);
    assert_eq!(cap.stats.packets, pkts.len() as u64 - 1);

    let err = read_pcap(&[0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0][..], 1, 1).unwrap_err();
    assert!(format!("{err:#}").contains("shorter"), "{err:#}");
    let mut ng = vec![0x0a, 0x0d, 0x0d, 0x0a];
    ng.resize(24, 0);
    let err = read_pcap(&ng[..], 1, 1).unwrap_err();
    assert!(format!("{err:#}").contains("pcapng"), "{err:#}");
    let mut p = Pcap::new(147, false, false, 65_535); // a user DLT
    p.record(T0, b"xx");
    let err = read_pcap(&p.buf[..], 1, 1).unwrap_err();
    assert!(format!("{err:#}").contains("link type 147"), "{err:#}");
}

// ---- sse_timeline on hand-made segments -------------------------------------------------------

/// Server segments from (ts, bytes), contiguous from sequence number `isn`.
fn segs(isn: u32, parts: &[(u64, &[u8])]) -> Vec<ServerSegment> {
    let mut seq = isn;
    parts
        .iter()
        .map(|(ts, b)| {
            let s = ServerSegment {
                ts_unix_ns: *ts,
                seq,
                len: b.len() as u32,
                head: b.to_vec(),
            };
            seq = seq.wrapping_add(b.len() as u32);
            s
        })
        .collect()
}

#[test]
fn events_spanning_chunks_and_several_per_chunk() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n\
                transfer-encoding: chunked\r\n\r\n";
    // chunk A: a whole event (CRLF line ends) and the start of another; chunk B: its end and
    // a [DONE] without the space; then the zero chunk with a trailer.
    let a = "data: {\"x\":1}\r\n\r\ndat";
    let b = "a: {\"x\":2}\n\nevent: end\ndata:[DONE]\n\n";
    let body = format!("{head}{}{}0\r\nx-trailer: 1\r\n\r\n", chunk(a), chunk(b));
    let bytes = body.as_bytes();
    let cut = head.len() + 10;
    let cut2 = head.len() + chunk(a).len() + 3;
    let s = segs(
        77,
        &[
            (1, &bytes[..cut]),
            (2, &bytes[cut..cut2]),
            (3, &bytes[cut2..]),
        ],
    );
    let tl = sse_timeline(&s);
    assert_eq!(tl.lost_sync_at, None);
    let r = &tl.responses[0];
    assert!(r.complete && r.event_stream && r.chunked);
    let got: Vec<(u64, SseKind)> = r.events.iter().map(|e| (e.ts_unix_ns, e.kind)).collect();
    assert_eq!(
        got,
        vec![(1, SseKind::Data), (2, SseKind::Data), (3, SseKind::Done)]
    );
    assert_eq!(r.last_byte_unix_ns, 3);
    assert_eq!(r.body_len, (a.len() + b.len()) as u64);
}

#[test]
fn continue_then_close_delimited_stream() {
    let text =
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                \r\ndata: a\n\ndata: [DONE]\n\n";
    let split = text.find("data: [DONE]").unwrap();
    let s = segs(
        5,
        &[
            (10, &text.as_bytes()[..split]),
            (20, &text.as_bytes()[split..]),
        ],
    );
    let tl = sse_timeline(&s);
    assert_eq!(tl.responses.len(), 2);
    assert_eq!(tl.responses[0].status, 100);
    assert!(tl.responses[0].events.is_empty());
    let r = &tl.responses[1];
    assert_eq!((r.status, r.chunked, r.complete), (200, false, true));
    let got: Vec<(u64, SseKind)> = r.events.iter().map(|e| (e.ts_unix_ns, e.kind)).collect();
    assert_eq!(got, vec![(10, SseKind::Data), (20, SseKind::Done)]);
    assert_eq!((r.first_byte_unix_ns, r.last_byte_unix_ns), (10, 20));
}

#[test]
fn stream_cut_short_and_garbage() {
    let text = format!("{SSE_HEAD}{}", chunk(&event(0)));
    let s = segs(1, &[(1, text.as_bytes())]);
    let tl = sse_timeline(&s);
    let r = &tl.responses[0];
    assert!(!r.complete);
    assert_eq!(r.events.len(), 1);
    assert_eq!(tl.lost_sync_at, None);

    let s = segs(1, &[(1, b"SSH-2.0-OpenSSH\r\n")]);
    let tl = sse_timeline(&s);
    assert!(tl.responses.is_empty());
    assert_eq!(tl.lost_sync_at, Some(0));
    assert_eq!(sse_timeline(&[]), SseTimeline::default());
}

#[test]
fn capture_gaps_before_a_response_resynchronise_at_the_next_one() {
    let sse = format!(
        "{SSE_HEAD}{}{}0\r\n\r\n",
        chunk(&event(0)),
        chunk("data: [DONE]\n\n")
    );
    let json = json_response();
    // Capture began mid-response: the first stored bytes are a chunk, not a status line.
    let tail = &sse.as_bytes()[SSE_HEAD.len()..];
    let s = segs(100, &[(1, tail), (2, json.as_bytes())]);
    let tl = sse_timeline(&s);
    assert_eq!(tl.lost_sync_at, None);
    assert_eq!(tl.responses.len(), 1);
    assert!(tl.responses[0].resynced && tl.responses[0].complete);
    assert_eq!(tl.responses[0].first_byte_unix_ns, 2);

    // Keep-alive: response 2's head segment was never captured.
    let parts: Vec<(u64, &[u8])> = vec![
        (1, sse.as_bytes()),
        (2, SSE_HEAD.as_bytes()),
        (3, &sse.as_bytes()[SSE_HEAD.len()..]),
        (4, json.as_bytes()),
    ];
    let mut s = segs(7, &parts);
    s.remove(1);
    let tl = sse_timeline(&s);
    assert_eq!(tl.missing_bytes, SSE_HEAD.len() as u64);
    assert_eq!(tl.lost_sync_at, None);
    let got: Vec<(u64, bool, usize)> = tl
        .responses
        .iter()
        .map(|r| (r.first_byte_unix_ns, r.resynced, r.events.len()))
        .collect();
    assert_eq!(got, vec![(1, false, 2), (4, true, 0)]);
}

#[test]
fn reassembly_keeps_first_transmission_of_each_byte() {
    // (ts, seq, len): [100,110) at t=1, [120,130) at t=2, [105,125) at t=3 fills [110,120);
    // [90,100) captured last, before the base sequence number.
    let items = [
        (1, 100, 10),
        (2, 120, 10),
        (3, 105, 20),
        (4, 90, 10),
        (5, 100, 30),
    ];
    let offs = stream_offsets(&items);
    assert_eq!(offs, vec![10, 30, 15, 0, 10]);
    let spans = first_transmissions(&items, &offs);
    let got: Vec<(usize, u64, u64)> = spans.iter().map(|s| (s.seg, s.start, s.end)).collect();
    assert_eq!(got, vec![(3, 0, 10), (0, 10, 20), (2, 20, 30), (1, 30, 40)]);
    // across the 2^32 wrap
    let items = [(1, u32::MAX - 4, 10), (2, 5, 10)];
    assert_eq!(stream_offsets(&items), vec![0, 10]);
}

/// A real capture, when one is named: INFERSCOPE_WIRE_PCAP=FILE INFERSCOPE_WIRE_PORT=PORT
/// (e.g. `tcpdump -i lo -w FILE 'tcp port PORT'` around streamed requests to openai_server.py).
#[test]
fn real_capture_if_given() {
    let (Ok(path), Ok(port)) = (
        std::env::var("INFERSCOPE_WIRE_PCAP"),
        std::env::var("INFERSCOPE_WIRE_PORT"),
    ) else {
        eprintln!(
            "skipped: set INFERSCOPE_WIRE_PCAP and INFERSCOPE_WIRE_PORT to check a real capture"
        );
        return;
    };
    if !Path::new(&path).exists() {
        eprintln!("skipped: {path} does not exist");
        return;
    }
    let cap = read_pcap_file(&path, port.parse().unwrap(), DEFAULT_HEAD_BYTES).unwrap();
    assert!(
        !cap.connections.is_empty(),
        "no connection to port {port} in {path}"
    );
    let mut sse = 0;
    for c in cap.connections.values() {
        let tl = sse_timeline(&c.server);
        assert_eq!(tl.lost_sync_at, None, "port {}: {tl:#?}", c.client_port);
        for r in tl.responses.iter().filter(|r| r.event_stream) {
            sse += 1;
            assert!(r.complete);
            assert_eq!(r.events.last().map(|e| e.kind), Some(SseKind::Done));
            assert_eq!(
                r.events.iter().filter(|e| e.kind == SseKind::Done).count(),
                1
            );
            assert!(r.first_byte_unix_ns <= r.events[0].ts_unix_ns);
            assert!(r
                .events
                .windows(2)
                .all(|w| w[0].ts_unix_ns <= w[1].ts_unix_ns));
            assert!(r.events.last().unwrap().ts_unix_ns <= r.last_byte_unix_ns);
        }
    }
    assert!(sse > 0, "no SSE response in {path}");
}
