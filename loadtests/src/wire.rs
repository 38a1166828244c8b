//! Wire truth from packet captures: what crossed the socket, and when.
//!
//! [`read_pcap`] reads a classic pcap file, as written by `tcpdump -i lo -w FILE 'tcp port P'`,
//! and groups the TCP payload segments to and from server port `P` per connection (keyed by the
//! client port). [`sse_timeline`] then reassembles one connection's server→client byte stream
//! in sequence order and finds the HTTP/1.1 responses in it and the SSE `data:` events inside
//! them (chunked or not), each with the capture time of the segment that carried its first byte.
//! [`request_times`] pairs the client's request bytes with those responses. Benchmarks and
//! tests use this as the reference that inferscope's own request timings are checked against.
//!
//! Link types: Ethernet (what `-i lo` gives on Linux), Linux cooked v1 and v2 (`-i any`),
//! BSD loopback (NULL/LOOP) and raw IP. IPv4 and IPv6. Timestamps are ns since the Unix epoch,
//! at the file's resolution: µs unless captured with `--time-stamp-precision=nano`.
//! pcapng is not read (`tcpdump -w` writes classic pcap; convert others with
//! `editcap -F pcap`).
//!
//! Payload lengths come from the IP header, so a capture cut short by a small snap length
//! (`-s`) still gives exact lengths and sequence numbers; only the stored bytes are fewer. The
//! SSE locator copes with bytes it does not have as long as each HTTP chunk header and each
//! `data:` prefix lies in stored bytes, which holds for servers that write one event per send
//! when `head_bytes` is at least a few dozen bytes.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// How many payload bytes of each server→client segment [`read_pcap_file`] keeps by default.
pub const DEFAULT_HEAD_BYTES: usize = 256;

/// Largest pcap record accepted; larger means a corrupt file.
const MAX_RECORD: usize = 256 << 20;

/// Link-layer header type of a pcap file (the `LINKTYPE_*` values this reader understands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// `LINKTYPE_NULL` (0): 4-byte address family in host byte order, then IP.
    Null,
    /// `LINKTYPE_ETHERNET` (1, `DLT_EN10MB`), what Linux `lo` captures are; VLAN tags skipped.
    Ethernet,
    /// `LINKTYPE_RAW` (101), `LINKTYPE_IPV4` (228), `LINKTYPE_IPV6` (229): the frame is IP.
    Raw,
    /// `LINKTYPE_LOOP` (108): 4-byte address family in network byte order, then IP.
    Loop,
    /// `LINKTYPE_LINUX_SLL` (113): Linux cooked capture v1 (16-byte header).
    LinuxSll,
    /// `LINKTYPE_LINUX_SLL2` (276): Linux cooked capture v2 (20-byte header), `-i any`.
    LinuxSll2,
}

impl LinkType {
    /// The link type for a pcap header's link-type value; `None` if not understood.
    pub fn from_linktype(value: u32) -> Option<Self> {
        // The upper bits of the field may carry FCS information; the type is the low 16 bits.
        Some(match value & 0xffff {
            0 => Self::Null,
            1 => Self::Ethernet,
            101 | 228 | 229 => Self::Raw,
            108 => Self::Loop,
            113 => Self::LinuxSll,
            276 => Self::LinuxSll2,
            _ => return None,
        })
    }

    /// The IP packet inside a frame of this link type, if it carries IPv4 or IPv6.
    fn ip_packet(self, frame: &[u8]) -> Option<&[u8]> {
        let ether_payload = |ether_type: u16, off: usize| match ether_type {
            0x0800 | 0x86dd => frame.get(off..),
            _ => None,
        };
        match self {
            Self::Raw => Some(frame),
            // The family value differs between systems; the IP version nibble decides.
            Self::Null | Self::Loop => frame.get(4..),
            Self::LinuxSll => ether_payload(be16(frame.get(14..16)?), 16),
            Self::LinuxSll2 => ether_payload(be16(frame.get(0..2)?), 20),
            Self::Ethernet => {
                let mut off = 12;
                let mut ether_type = be16(frame.get(off..off + 2)?);
                // 802.1Q / 802.1ad / QinQ tags: 4 bytes each.
                while matches!(ether_type, 0x8100 | 0x88a8 | 0x9100) {
                    off += 4;
                    ether_type = be16(frame.get(off..off + 2)?);
                }
                ether_payload(ether_type, off + 2)
            }
        }
    }
}

/// One client→server TCP segment that carried payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSegment {
    /// Capture time, ns since the Unix epoch.
    pub ts_unix_ns: u64,
    /// TCP sequence number of the first payload byte.
    pub seq: u32,
    /// Payload length in bytes (from the IP header: exact even when the capture was cut short).
    pub len: u32,
}

/// One server→client TCP segment that carried payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSegment {
    /// Capture time, ns since the Unix epoch.
    pub ts_unix_ns: u64,
    /// TCP sequence number of the first payload byte.
    pub seq: u32,
    /// Payload length in bytes (from the IP header: exact even when the capture was cut short).
    pub len: u32,
    /// The first payload bytes: up to the `head_bytes` given to [`read_pcap`], fewer when the
    /// capture's snap length cut the packet.
    pub head: Vec<u8>,
}

/// Everything seen on one TCP connection to the server port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The client's port (the key of [`Capture::connections`]).
    pub client_port: u16,
    /// The client's address.
    pub client_ip: IpAddr,
    /// The server's address.
    pub server_ip: IpAddr,
    /// Capture time of the client's (first) SYN, if it was captured.
    pub syn_unix_ns: Option<u64>,
    /// The client's initial sequence number, from its SYN.
    pub client_isn: Option<u32>,
    /// The server's initial sequence number, from its SYN-ACK.
    pub server_isn: Option<u32>,
    /// Capture time of the client's first FIN.
    pub client_fin_unix_ns: Option<u64>,
    /// Capture time of the server's first FIN.
    pub server_fin_unix_ns: Option<u64>,
    /// Capture time of the first RST in either direction.
    pub rst_unix_ns: Option<u64>,
    /// Client→server payload segments, in capture order (retransmits included).
    pub client: Vec<ClientSegment>,
    /// Server→client payload segments, in capture order (retransmits included).
    pub server: Vec<ServerSegment>,
}

impl Connection {
    fn new(client_port: u16, client_ip: IpAddr, server_ip: IpAddr) -> Self {
        Self {
            client_port,
            client_ip,
            server_ip,
            syn_unix_ns: None,
            client_isn: None,
            server_isn: None,
            client_fin_unix_ns: None,
            server_fin_unix_ns: None,
            rst_unix_ns: None,
            client: Vec::new(),
            server: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.client_isn.is_none()
            && self.client.is_empty()
            && self.server.is_empty()
            && self.client_fin_unix_ns.is_none()
            && self.server_fin_unix_ns.is_none()
    }
}

/// Packet counts of one [`read_pcap`] run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Records read.
    pub packets: u64,
    /// TCP packets to or from the server port (payload or not).
    pub matched: u64,
    /// Records that are not a whole IPv4/IPv6 TCP header (other protocols, IP fragments,
    /// headers cut by the snap length, malformed).
    pub undecoded: u64,
    /// TCP packets between other ports.
    pub other_ports: u64,
    /// Server segments whose stored head is shorter than asked because the snap length cut them.
    pub cut_payloads: u64,
    /// The file ended inside a record (e.g. tcpdump killed while writing); earlier records count.
    pub truncated_file: bool,
}

/// The connections to one server port found in a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The file's link type.
    pub link_type: LinkType,
    /// Whether the file has ns timestamps (else µs, scaled to ns).
    pub nanosecond: bool,
    /// Connections keyed by client port; where a port was reused, the latest connection.
    pub connections: BTreeMap<u16, Connection>,
    /// Earlier connections whose client port was later reused within the capture.
    pub reused: Vec<Connection>,
    /// Packet counts.
    pub stats: CaptureStats,
}

/// [`read_pcap`] on a file.
///
/// # Errors
/// The file cannot be opened or read, or [`read_pcap`] fails.
pub fn read_pcap_file(
    path: impl AsRef<Path>,
    server_port: u16,
    head_bytes: usize,
) -> Result<Capture> {
    let path = path.as_ref();
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    read_pcap(f, server_port, head_bytes).with_context(|| format!("read {}", path.display()))
}

/// Reads a classic pcap stream and collects, per TCP connection to `server_port`, the payload
/// segments of both directions. Server segments keep their first `head_bytes` payload bytes
/// (`usize::MAX`: all of them; [`DEFAULT_HEAD_BYTES`] is enough for one-event-per-send SSE).
///
/// A record cut off at the end of the stream ends the read without an error
/// ([`CaptureStats::truncated_file`]).
///
/// # Errors
/// A read error, a missing or bad global header (pcapng included), an unsupported link type,
/// or an implausible record length.
pub fn read_pcap<R: Read>(reader: R, server_port: u16, head_bytes: usize) -> Result<Capture> {
    let mut r = BufReader::with_capacity(1 << 16, reader);
    let mut gh = [0u8; 24];
    if read_full(&mut r, &mut gh)? < gh.len() {
        bail!("not a pcap file: shorter than the 24-byte global header");
    }
    let magic = u32::from_le_bytes([gh[0], gh[1], gh[2], gh[3]]);
    let (little, nanosecond) = match magic {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        0xd4c3_b2a1 => (false, false),
        0x4d3c_b2a1 => (false, true),
        0x0a0d_0d0a => bail!("pcapng is not supported: capture with `tcpdump -w` (classic pcap) or convert with `editcap -F pcap`"),
        m => bail!("not a pcap file (magic {m:#010x})"),
    };
    let rd32 = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let linktype = rd32(&gh[20..24]);
    let link_type = LinkType::from_linktype(linktype)
        .with_context(|| format!("unsupported pcap link type {linktype}"))?;

    let mut cap = Capture {
        link_type,
        nanosecond,
        connections: BTreeMap::new(),
        reused: Vec::new(),
        stats: CaptureStats::default(),
    };
    let mut frame = Vec::new();
    let mut rh = [0u8; 16];
    loop {
        match read_full(&mut r, &mut rh)? {
            0 => break,
            16 => {}
            _ => {
                cap.stats.truncated_file = true;
                break;
            }
        }
        let (ts_sec, ts_frac, incl) = (rd32(&rh[0..4]), rd32(&rh[4..8]), rd32(&rh[8..12]));
        let incl = incl as usize;
        if incl > MAX_RECORD {
            bail!(
                "record {}: implausible captured length {incl} (corrupt file?)",
                cap.stats.packets + 1
            );
        }
        frame.resize(incl, 0);
        if read_full(&mut r, &mut frame)? < incl {
            cap.stats.truncated_file = true;
            break;
        }
        cap.stats.packets += 1;
        let frac_ns = if nanosecond {
            u64::from(ts_frac)
        } else {
            u64::from(ts_frac) * 1000
        };
        let ts = u64::from(ts_sec) * 1_000_000_000 + frac_ns;
        let Some(t) = link_type.ip_packet(&frame).and_then(decode_ip_tcp) else {
            cap.stats.undecoded += 1;
            continue;
        };
        add_packet(&mut cap, &t, ts, server_port, head_bytes);
    }
    Ok(cap)
}

/// Fills `buf` as far as the reader allows; returns the bytes read (short only at EOF).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// The parts of an IP/TCP packet this module uses.
struct TcpPacket<'a> {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    flags: u8,
    /// Payload length from the IP header.
    payload_len: u32,
    /// The captured part of the payload.
    payload: &'a [u8],
}

/// Decodes an IPv4 or IPv6 packet carrying a whole TCP header.
fn decode_ip_tcp(ip: &[u8]) -> Option<TcpPacket<'_>> {
    let (src, dst, l4, l4_len) = match ip.first()? >> 4 {
        4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ihl < 20 || ip.len() < ihl || ip[9] != 6 {
                return None;
            }
            if be16(&ip[6..8]) & 0x3fff != 0 {
                return None; // a fragment (MF set or offset != 0)
            }
            let total = usize::from(be16(&ip[2..4]));
            // total == 0: a GSO super-packet longer than 64 KiB; the capture is the length.
            let l4_len = if total == 0 {
                ip.len() - ihl
            } else {
                total.checked_sub(ihl)?
            };
            let end = (ihl + l4_len).min(ip.len());
            let src = Ipv4Addr::from(be32(&ip[12..16]));
            let dst = Ipv4Addr::from(be32(&ip[16..20]));
            (IpAddr::V4(src), IpAddr::V4(dst), &ip[ihl..end], l4_len)
        }
        6 => {
            if ip.len() < 40 {
                return None;
            }
            let plen = usize::from(be16(&ip[4..6]));
            let end_all = if plen == 0 { ip.len() } else { 40 + plen }; // 0: jumbogram
            let mut next = ip[6];
            let mut off = 40;
            while next != 6 {
                let h = ip.get(off..off + 2)?;
                let len = match next {
                    0 | 43 | 60 => (usize::from(h[1]) + 1) * 8, // hop-by-hop, routing, dst opts
                    51 => (usize::from(h[1]) + 2) * 4,          // AH
                    _ => return None,                           // fragment, no-next-header, not TCP
                };
                next = h[0];
                off += len;
            }
            if off > end_all || off > ip.len() {
                return None;
            }
            let src = <[u8; 16]>::try_from(&ip[8..24]).ok()?;
            let dst = <[u8; 16]>::try_from(&ip[24..40]).ok()?;
            let end = end_all.min(ip.len());
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                &ip[off..end],
                end_all - off,
            )
        }
        _ => return None,
    };
    if l4.len() < 20 {
        return None;
    }
    let doff = usize::from(l4[12] >> 4) * 4;
    if doff < 20 || l4.len() < doff || l4_len < doff {
        return None;
    }
    Some(TcpPacket {
        src,
        dst,
        sport: be16(&l4[0..2]),
        dport: be16(&l4[2..4]),
        seq: be32(&l4[4..8]),
        flags: l4[13],
        payload_len: u32::try_from(l4_len - doff).ok()?,
        payload: &l4[doff..],
    })
}

fn add_packet(cap: &mut Capture, t: &TcpPacket<'_>, ts: u64, server_port: u16, head_bytes: usize) {
    let (client_port, to_server) = if t.dport == server_port && t.sport != server_port {
        (t.sport, true)
    } else if t.sport == server_port && t.dport != server_port {
        (t.dport, false)
    } else {
        cap.stats.other_ports += 1;
        return;
    };
    cap.stats.matched += 1;
    let (client_ip, server_ip) = if to_server {
        (t.src, t.dst)
    } else {
        (t.dst, t.src)
    };
    let syn = t.flags & SYN != 0;
    let ack = t.flags & ACK != 0;
    if to_server && syn && !ack {
        // A SYN with a new ISN on a port already seen: the port was reused.
        if let Some(old) = cap.connections.get(&client_port) {
            if old.client_isn != Some(t.seq) && !old.is_empty() {
                let old = cap.connections.remove(&client_port).expect("present");
                cap.reused.push(old);
            }
        }
    }
    let c = cap
        .connections
        .entry(client_port)
        .or_insert_with(|| Connection::new(client_port, client_ip, server_ip));
    if syn {
        if to_server && !ack {
            c.syn_unix_ns.get_or_insert(ts);
            c.client_isn = Some(t.seq);
        } else if !to_server && ack {
            c.server_isn.get_or_insert(t.seq);
        }
    }
    if t.flags & FIN != 0 {
        let at = if to_server {
            &mut c.client_fin_unix_ns
        } else {
            &mut c.server_fin_unix_ns
        };
        at.get_or_insert(ts);
    }
    if t.flags & RST != 0 {
        c.rst_unix_ns.get_or_insert(ts);
    }
    if t.payload_len == 0 {
        return;
    }
    // Data on a SYN (TCP Fast Open) starts after the SYN's sequence number.
    let seq = if syn { t.seq.wrapping_add(1) } else { t.seq };
    if to_server {
        c.client.push(ClientSegment {
            ts_unix_ns: ts,
            seq,
            len: t.payload_len,
        });
    } else {
        let keep = t.payload.len().min(head_bytes);
        if keep < head_bytes && t.payload.len() < t.payload_len as usize {
            cap.stats.cut_payloads += 1;
        }
        c.server.push(ServerSegment {
            ts_unix_ns: ts,
            seq,
            len: t.payload_len,
            head: t.payload[..keep].to_vec(),
        });
    }
}

// ---- reassembly ------------------------------------------------------------------------------

/// A byte range `[start, end)` of a reassembled stream first carried by segment `seg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    seg: usize,
    start: u64,
    end: u64,
}

/// The TCP sequence number of stream offset 0 of [`stream_offsets`] (the lowest seen).
pub fn stream_base_seq(items: &[(u64, u32, u32)]) -> Option<u32> {
    let first = items.iter().min_by_key(|x| x.0)?;
    let lo = items
        .iter()
        .map(|x| x.1.wrapping_sub(first.1) as i32)
        .min()
        .unwrap_or(0);
    Some(first.1.wrapping_add(lo as u32))
}

/// Stream offsets of segments given as `(ts, seq, len)`: sequence numbers unwrapped relative to
/// the earliest-captured segment, shifted so that the lowest is 0.
fn stream_offsets(items: &[(u64, u32, u32)]) -> Vec<u64> {
    let Some(first) = items.iter().min_by_key(|x| x.0) else {
        return Vec::new();
    };
    let base = first.1;
    let rel: Vec<i64> = items
        .iter()
        .map(|x| i64::from(x.1.wrapping_sub(base) as i32))
        .collect();
    let lo = rel.iter().copied().min().unwrap_or(0);
    rel.iter().map(|r| (r - lo) as u64).collect()
}

/// Which segment first carried each byte: segments are taken in capture-time order and only
/// bytes not already covered count (retransmits and duplicates add nothing). The result is
/// sorted by offset and non-overlapping; holes are bytes no segment carried.
fn first_transmissions(items: &[(u64, u32, u32)], offsets: &[u64]) -> Vec<Span> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items[i].0); // stable: capture order on equal times
    let mut spans: Vec<Span> = Vec::with_capacity(items.len());
    for i in order {
        let (s, e) = (offsets[i], offsets[i] + u64::from(items[i].2));
        if s == e {
            continue;
        }
        if spans.last().is_none_or(|l| s >= l.end) {
            spans.push(Span {
                seg: i,
                start: s,
                end: e,
            });
            continue;
        }
        // Fill only the parts of [s, e) no earlier segment covered.
        let mut cur = s;
        let mut k = spans.partition_point(|p| p.end <= s);
        while cur < e {
            if k < spans.len() && spans[k].start <= cur {
                cur = cur.max(spans[k].end);
                k += 1;
                continue;
            }
            let stop = spans.get(k).map_or(e, |p| p.start.min(e));
            spans.insert(
                k,
                Span {
                    seg: i,
                    start: cur,
                    end: stop,
                },
            );
            k += 1;
            cur = stop;
        }
    }
    spans
}

/// A run of the reassembled stream: `[start, end)` first carried by a segment captured at
/// `ts`, of which the first `data.len()` bytes are stored.
struct Piece<'a> {
    start: u64,
    end: u64,
    ts: u64,
    data: &'a [u8],
}

/// What the stream holds at an offset.
enum Run<'a> {
    /// Stored bytes from the offset to the end of its piece.
    Known(&'a [u8]),
    /// This many bytes that were not stored (cut head) or never captured (hole).
    Unknown(u64),
    /// The offset is at or past the end of the stream.
    End,
}

/// How reading a line went.
enum Line {
    /// The line was read; the offset just past its LF.
    Ok(u64),
    /// A byte of it was not stored (or never captured).
    Unstored,
    /// It is longer than the limit.
    TooLong,
    /// The stream ended before the LF.
    End,
}

/// A server→client byte stream reassembled from segments.
struct Stream<'a> {
    pieces: Vec<Piece<'a>>,
    end: u64,
}

impl<'a> Stream<'a> {
    fn new(segs: &'a [ServerSegment]) -> Self {
        let items: Vec<(u64, u32, u32)> =
            segs.iter().map(|s| (s.ts_unix_ns, s.seq, s.len)).collect();
        let offsets = stream_offsets(&items);
        let pieces: Vec<Piece<'a>> = first_transmissions(&items, &offsets)
            .into_iter()
            .map(|sp| {
                let seg = &segs[sp.seg];
                let o = (sp.start - offsets[sp.seg]) as usize;
                let l = (sp.end - sp.start) as usize;
                let h = &seg.head;
                Piece {
                    start: sp.start,
                    end: sp.end,
                    ts: seg.ts_unix_ns,
                    data: &h[o.min(h.len())..(o + l).min(h.len())],
                }
            })
            .collect();
        let end = pieces.last().map_or(0, |p| p.end);
        Self { pieces, end }
    }

    /// Index of the piece containing `off`.
    fn piece(&self, off: u64) -> Option<usize> {
        let i = self.pieces.partition_point(|p| p.end <= off);
        (i < self.pieces.len() && self.pieces[i].start <= off).then_some(i)
    }

    /// Capture time of the segment that first carried byte `off`; for a hole, of the last
    /// segment before it.
    fn ts_at(&self, off: u64) -> Option<u64> {
        match self.piece(off) {
            Some(i) => Some(self.pieces[i].ts),
            None => {
                let i = self.pieces.partition_point(|p| p.start <= off);
                i.checked_sub(1).map(|i| self.pieces[i].ts)
            }
        }
    }

    fn run(&self, off: u64) -> Run<'a> {
        if off >= self.end {
            return Run::End;
        }
        let i = self.pieces.partition_point(|p| p.end <= off);
        let p = &self.pieces[i]; // exists: off < end
        if p.start > off {
            return Run::Unknown(p.start - off); // hole
        }
        let k = (off - p.start) as usize;
        if k < p.data.len() {
            Run::Known(&p.data[k..])
        } else {
            Run::Unknown(p.end - off)
        }
    }

    fn byte(&self, off: u64) -> Option<u8> {
        match self.run(off) {
            Run::Known(d) => Some(d[0]),
            _ => None,
        }
    }

    fn starts_with(&self, off: u64, pat: &[u8]) -> bool {
        (0..pat.len()).all(|i| self.byte(off + i as u64) == Some(pat[i]))
    }

    /// Reads the line at `off` into `buf` without its CR LF (at most `max` bytes).
    fn read_line(&self, mut off: u64, buf: &mut Vec<u8>, max: usize) -> Line {
        buf.clear();
        loop {
            match self.run(off) {
                Run::End => return Line::End,
                Run::Unknown(_) => return Line::Unstored,
                Run::Known(d) => {
                    // Look no further than the limit (plus CR LF).
                    let room = (max + 2).saturating_sub(buf.len());
                    if let Some(i) = d[..d.len().min(room)].iter().position(|&b| b == b'\n') {
                        buf.extend_from_slice(&d[..i]);
                        if buf.last() == Some(&b'\r') {
                            buf.pop();
                        }
                        return if buf.len() > max {
                            Line::TooLong
                        } else {
                            Line::Ok(off + i as u64 + 1)
                        };
                    }
                    if d.len() >= room {
                        return Line::TooLong;
                    }
                    buf.extend_from_slice(d);
                    off += d.len() as u64;
                }
            }
        }
    }

    /// Offsets at which a stored piece begins, after `off`.
    fn known_starts_after(&self, off: u64) -> impl Iterator<Item = u64> + '_ {
        let i = self.pieces.partition_point(|p| p.start <= off);
        self.pieces[i..]
            .iter()
            .filter(|p| !p.data.is_empty())
            .map(|p| p.start)
    }
}

// ---- SSE -------------------------------------------------------------------------------------

/// What an SSE `data:` line carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseKind {
    /// Content: anything but `[DONE]`.
    Data,
    /// The OpenAI end-of-stream marker `data: [DONE]`.
    Done,
}

/// One SSE `data:` line found in a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent {
    /// Capture time of the segment that first carried the `d` of `data:`.
    pub ts_unix_ns: u64,
    /// Offset of that `d` in the reassembled server stream (0 = first captured byte).
    pub offset: u64,
    /// Content or `[DONE]`.
    pub kind: SseKind,
    /// A content event carrying a generated token ([`event_payload`]).
    pub token: bool,
    /// A content event carrying visible text or a tool call.
    pub visible: bool,
}

/// What one `data:` value carries, read as JSON (an oracle written apart from node-probe's
/// bounded scanner): (token, visible). A token is a `text` or a `delta` `content`,
/// `reasoning_content` or `reasoning` string of some choice (empty or not), or a non-empty
/// `delta.tool_calls`; visible: one of those strings non-empty, or a tool call. A value that is
/// not JSON, or was not captured whole (`None`), counts as a token of unknown visibility.
pub fn event_payload(value: Option<&[u8]>) -> (bool, bool) {
    let Some(v) = value.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok()) else {
        return (true, false);
    };
    let (mut token, mut visible) = (false, false);
    let choices = v["choices"].as_array().cloned().unwrap_or_default();
    for c in &choices {
        let delta = &c["delta"];
        let texts = [
            &c["text"],
            &delta["content"],
            &delta["reasoning_content"],
            &delta["reasoning"],
        ];
        for t in texts.iter().filter_map(|t| t.as_str()) {
            token = true;
            visible |= !t.is_empty();
        }
        if delta["tool_calls"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            token = true;
            visible = true;
        }
    }
    (token, visible)
}

/// One HTTP/1.x response found in a server stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Offset of its first byte (the `H` of the status line) in the server stream.
    pub offset: u64,
    /// Status code.
    pub status: u16,
    /// Capture time of the segment that first carried the first byte of the status line.
    pub first_byte_unix_ns: u64,
    /// Capture time of the segment that first carried its last byte (the last byte of the
    /// terminating chunk / body); where the stream ended early, its last captured byte.
    pub last_byte_unix_ns: u64,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// `Content-Type: text/event-stream`.
    pub event_stream: bool,
    /// Body length without chunk framing (as far as the stream went).
    pub body_len: u64,
    /// The `data:` lines of the body in stream order (any body is scanned; a JSON body has none).
    pub events: Vec<SseEvent>,
    /// The whole response is in the stream (it did not end early).
    pub complete: bool,
    /// Framing was lost to bytes never captured or not stored, and parsing went on at a later
    /// segment that starts with a chunk header (events in between are missing) or, before this
    /// response, at the segment that starts it (earlier responses may be missing).
    pub resynced: bool,
}

impl HttpResponse {
    /// The content events (all but `[DONE]`).
    pub fn data_events(&self) -> impl Iterator<Item = &SseEvent> + '_ {
        self.events.iter().filter(|e| e.kind == SseKind::Data)
    }

    /// The token events (content events carrying a generated token).
    pub fn token_events(&self) -> impl Iterator<Item = &SseEvent> + '_ {
        self.data_events().filter(|e| e.token)
    }

    /// The first token event: the wire's time to first token.
    pub fn first_data(&self) -> Option<&SseEvent> {
        self.token_events().next()
    }

    /// The first event with visible text: the wire's time to first visible text.
    pub fn first_text(&self) -> Option<&SseEvent> {
        self.data_events().find(|e| e.visible)
    }

    /// The `data: [DONE]` event, if any.
    pub fn done(&self) -> Option<&SseEvent> {
        self.events.iter().find(|e| e.kind == SseKind::Done)
    }
}

/// The HTTP responses and SSE events of one connection's server→client stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseTimeline {
    /// Responses in stream order.
    pub responses: Vec<HttpResponse>,
    /// Capture time of the first stream byte.
    pub first_byte_unix_ns: Option<u64>,
    /// Capture time of the segment that first carried the last stream byte.
    pub last_byte_unix_ns: Option<u64>,
    /// Stream length in bytes, from the lowest to the highest sequence number seen.
    pub stream_len: u64,
    /// Bytes inside the stream that no captured segment carried (capture drops).
    pub missing_bytes: u64,
    /// Where parsing had to stop because HTTP framing could not be read (bytes not captured or
    /// not stored, or not HTTP); `None` when the whole stream was parsed.
    pub lost_sync_at: Option<u64>,
}

/// Finds SSE `data:` lines across a body, fed in byte ranges of the stream.
struct SseScanner {
    state: ScanState,
    events: Vec<ScannedEvent>,
    /// The current `data:` value, up to [`MAX_VALUE`] bytes; `None` once bytes were lost or it
    /// grew beyond.
    value: Option<Vec<u8>>,
}

/// A `data:` line: where it began, its kind, (token, visible).
type ScannedEvent = (u64, SseKind, (bool, bool));

/// Longest `data:` value kept for [`event_payload`].
const MAX_VALUE: usize = 1 << 16;

#[derive(Clone, Copy)]
enum ScanState {
    /// At the start of a line.
    LineStart,
    /// Inside a line that is not a `data:` line.
    Mid,
    /// After bytes that were not stored: line position unknown until the next LF or chunk.
    Unknown,
    /// `n` bytes of `data:` matched at line start `start`.
    Field { start: u64, n: u8 },
    /// In the value of a `data:` line that began at `start`; its first `n` bytes in `buf`.
    Value { start: u64, buf: [u8; 8], n: u8 },
}

const DATA_FIELD: &[u8; 5] = b"data:";

impl SseScanner {
    fn new() -> Self {
        Self {
            state: ScanState::LineStart,
            events: Vec::new(),
            value: Some(Vec::new()),
        }
    }

    fn classify(v: &[u8]) -> SseKind {
        if v.trim_ascii() == b"[DONE]" {
            SseKind::Done
        } else {
            SseKind::Data
        }
    }

    /// Ends the `data:` line that began at `start` (its first bytes in `head`).
    fn end_value(&mut self, start: u64, head: &[u8]) {
        let kind = Self::classify(head);
        let payload = match kind {
            SseKind::Done => (false, false),
            SseKind::Data => event_payload(self.value.as_deref()),
        };
        self.events.push((start, kind, payload));
        self.value = Some(Vec::new());
    }

    /// Feeds body bytes `[a, b)` of the stream. `boundary`: `a` starts an HTTP chunk, where an
    /// unknown line position resynchronises (servers write one event per chunk).
    fn feed(&mut self, s: &Stream<'_>, a: u64, b: u64, boundary: bool) {
        if boundary && matches!(self.state, ScanState::Unknown) {
            self.state = ScanState::LineStart;
        }
        let mut off = a;
        while off < b {
            match s.run(off) {
                Run::End => break,
                Run::Unknown(n) => {
                    self.unknown();
                    off += n.min(b - off);
                }
                Run::Known(d) => {
                    let d = &d[..d.len().min((b - off) as usize)];
                    let mut i = 0;
                    while i < d.len() {
                        if matches!(self.state, ScanState::Mid | ScanState::Unknown) {
                            // Skip to the end of the line.
                            match d[i..].iter().position(|&c| c == b'\n' || c == b'\r') {
                                Some(k) => {
                                    i += k + 1;
                                    self.state = ScanState::LineStart;
                                }
                                None => i = d.len(),
                            }
                            continue;
                        }
                        self.byte(off + i as u64, d[i]);
                        i += 1;
                    }
                    off += d.len() as u64;
                }
            }
        }
    }

    fn byte(&mut self, off: u64, c: u8) {
        let newline = c == b'\n' || c == b'\r';
        self.state = match self.state {
            ScanState::LineStart | ScanState::Mid | ScanState::Unknown if newline => {
                ScanState::LineStart
            }
            ScanState::LineStart if c == DATA_FIELD[0] => ScanState::Field { start: off, n: 1 },
            ScanState::LineStart | ScanState::Mid => ScanState::Mid,
            ScanState::Unknown => ScanState::Unknown,
            ScanState::Field { start, n } if c == DATA_FIELD[usize::from(n)] => {
                if usize::from(n) + 1 == DATA_FIELD.len() {
                    self.value = Some(Vec::new());
                    ScanState::Value {
                        start,
                        buf: [0; 8],
                        n: 0,
                    }
                } else {
                    ScanState::Field { start, n: n + 1 }
                }
            }
            ScanState::Field { .. } if newline => ScanState::LineStart,
            ScanState::Field { .. } => ScanState::Mid,
            ScanState::Value { start, buf, n } if newline => {
                self.end_value(start, &buf[..usize::from(n)]);
                ScanState::LineStart
            }
            ScanState::Value { start, mut buf, n } => {
                if let Some(v) = self.value.as_mut() {
                    if v.len() < MAX_VALUE {
                        v.push(c);
                    } else {
                        self.value = None;
                    }
                }
                if usize::from(n) < buf.len() {
                    buf[usize::from(n)] = c;
                    ScanState::Value {
                        start,
                        buf,
                        n: n + 1,
                    }
                } else {
                    // Longer than any `[DONE]` line: content; its bytes go on into `value`.
                    ScanState::Value { start, buf, n }
                }
            }
        };
    }

    /// Bytes that were not stored follow.
    fn unknown(&mut self) {
        if let ScanState::Value { start, buf, n } = self.state {
            self.value = None;
            self.end_value(start, &buf[..usize::from(n)]);
        }
        self.state = ScanState::Unknown;
    }

    /// The body ended: an event without a final line break still counts.
    fn finish(&mut self) -> Vec<ScannedEvent> {
        if let ScanState::Value { start, buf, n } = self.state {
            self.end_value(start, &buf[..usize::from(n)]);
        }
        self.state = ScanState::LineStart;
        std::mem::take(&mut self.events)
    }
}

/// Parsed status line and headers of one response.
struct Head {
    status: u16,
    content_length: Option<u64>,
    chunked: bool,
    event_stream: bool,
    /// Offset just past the blank line.
    body: u64,
}

enum HeadResult {
    Ok(Head),
    /// The stream ended inside the head.
    End,
    /// A byte of it was not stored (or never captured).
    Unstored,
    /// Not an HTTP/1.x response head.
    NotHttp,
}

const MAX_LINE: usize = 16 * 1024;

fn parse_head(s: &Stream<'_>, off: u64, line: &mut Vec<u8>) -> HeadResult {
    let mut off = match s.read_line(off, line, MAX_LINE) {
        Line::Ok(n) => n,
        Line::End => return HeadResult::End,
        Line::Unstored => return HeadResult::Unstored,
        Line::TooLong => return HeadResult::NotHttp,
    };
    // "HTTP/1.1 200 OK"
    let status = line
        .strip_prefix(b"HTTP/")
        .and_then(|l| l.splitn(3, |&c| c == b' ').nth(1))
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u16>().ok());
    let Some(status) = status else {
        return HeadResult::NotHttp;
    };
    let mut head = Head {
        status,
        content_length: None,
        chunked: false,
        event_stream: false,
        body: 0,
    };
    loop {
        off = match s.read_line(off, line, MAX_LINE) {
            Line::Ok(n) => n,
            Line::End => return HeadResult::End,
            Line::Unstored => return HeadResult::Unstored,
            Line::TooLong => return HeadResult::NotHttp,
        };
        if line.is_empty() {
            head.body = off;
            return HeadResult::Ok(head);
        }
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            continue; // not a header line: ignore, as lenient clients do
        };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            head.content_length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // chunked is the last coding when present
            let last = value
                .rsplit(|&c| c == b',')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            head.chunked = last.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"content-type") {
            let ct = value
                .split(|&c| c == b';')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            head.event_stream = ct.eq_ignore_ascii_case(b"text/event-stream");
        }
    }
}

/// A chunk-size line: hex digits, optional extensions after `;`.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|&c| c == b';').next()?.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    let s = std::str::from_utf8(digits).ok()?;
    u64::from_str_radix(s, 16).ok()
}

/// How a chunked body ended.
enum BodyEnd {
    /// At this offset (just past the last trailer line).
    At(u64),
    /// The stream ended first.
    StreamEnd,
    /// Framing lost at this offset; if a later segment starts a new response, resume there.
    Lost { at: u64, next_response: Option<u64> },
}

/// Parses a chunked body starting at `off`, feeding chunk data to `scan`.
fn chunked_body(
    s: &Stream<'_>,
    mut off: u64,
    scan: &mut SseScanner,
    line: &mut Vec<u8>,
    body_len: &mut u64,
    resynced: &mut bool,
) -> BodyEnd {
    loop {
        let size = match s.read_line(off, line, MAX_LINE) {
            Line::End => return BodyEnd::StreamEnd,
            Line::Ok(next) => match chunk_size(line) {
                Some(n) => {
                    off = next;
                    n
                }
                None => {
                    return BodyEnd::Lost {
                        at: off,
                        next_response: None,
                    }
                }
            },
            Line::TooLong => {
                return BodyEnd::Lost {
                    at: off,
                    next_response: None,
                }
            }
            Line::Unstored => {
                // Resynchronise at the next stored segment start that holds a chunk-size line,
                // unless a new response starts first.
                let mut found = None;
                for p in s.known_starts_after(off) {
                    if s.starts_with(p, b"HTTP/1.") {
                        return BodyEnd::Lost {
                            at: off,
                            next_response: Some(p),
                        };
                    }
                    if let Line::Ok(next) = s.read_line(p, line, 32) {
                        if let Some(n) = chunk_size(line) {
                            found = Some((next, n));
                            break;
                        }
                    }
                }
                let Some((next, n)) = found else {
                    return BodyEnd::Lost {
                        at: off,
                        next_response: None,
                    };
                };
                *resynced = true;
                off = next;
                n
            }
        };
        if size == 0 {
            // Trailer lines up to the blank line.
            loop {
                match s.read_line(off, line, MAX_LINE) {
                    Line::Ok(next) => {
                        off = next;
                        if line.is_empty() {
                            return BodyEnd::At(off);
                        }
                    }
                    Line::End => return BodyEnd::StreamEnd,
                    Line::Unstored | Line::TooLong => {
                        return BodyEnd::Lost {
                            at: off,
                            next_response: None,
                        }
                    }
                }
            }
        }
        let end = off.saturating_add(size);
        scan.feed(s, off, end.min(s.end), true);
        *body_len += end.min(s.end) - off;
        off = end;
        // The CRLF after the chunk data; unstored bytes are trusted to be it.
        match (s.byte(off), s.byte(off + 1)) {
            (Some(b'\r'), Some(b'\n')) => off += 2,
            (Some(b'\n'), _) => off += 1,
            (None, _) if off + 2 <= s.end => off += 2,
            (None, _) => return BodyEnd::StreamEnd,
            (Some(b'\r'), None) if off + 2 > s.end => return BodyEnd::StreamEnd,
            (Some(b'\r'), None) => off += 2,
            _ => {
                return BodyEnd::Lost {
                    at: off,
                    next_response: None,
                }
            }
        }
    }
}

/// Reassembles one connection's server→client stream (segments in any order; sequence order
/// decides, the earliest capture of each byte wins, retransmits and duplicates add nothing) and
/// locates the HTTP/1.x responses in it and the SSE `data:` lines in their bodies.
///
/// Chunked, `Content-Length` and close-delimited bodies are understood; 1xx, 204 and 304
/// responses have none; after a 101 the rest of the stream is the body. Parsing stops
/// ([`SseTimeline::lost_sync_at`]) where the framing cannot be read.
pub fn sse_timeline(server: &[ServerSegment]) -> SseTimeline {
    let s = Stream::new(server);
    let mut tl = SseTimeline {
        stream_len: s.end,
        first_byte_unix_ns: s.ts_at(0).filter(|_| s.end > 0),
        last_byte_unix_ns: s.end.checked_sub(1).and_then(|o| s.ts_at(o)),
        missing_bytes: s.end - s.pieces.iter().map(|p| p.end - p.start).sum::<u64>(),
        ..SseTimeline::default()
    };
    let mut line = Vec::with_capacity(256);
    let mut scan = SseScanner::new();
    let mut off = 0;
    let mut resync = false;
    while off < s.end {
        let head = match parse_head(&s, off, &mut line) {
            HeadResult::Ok(h) => h,
            HeadResult::End => break,
            HeadResult::NotHttp | HeadResult::Unstored => {
                // Bytes not captured or not stored, or a capture that began mid-response: go
                // on at the next stored segment that starts a response, if any.
                match s
                    .known_starts_after(off)
                    .find(|&p| s.starts_with(p, b"HTTP/1."))
                {
                    Some(n) => {
                        off = n;
                        resync = true;
                        continue;
                    }
                    None => {
                        tl.lost_sync_at = Some(off);
                        break;
                    }
                }
            }
        };
        let mut resp = HttpResponse {
            offset: off,
            status: head.status,
            first_byte_unix_ns: s.ts_at(off).unwrap_or_default(),
            last_byte_unix_ns: 0,
            chunked: head.chunked,
            event_stream: head.event_stream,
            body_len: 0,
            events: Vec::new(),
            complete: true,
            resynced: std::mem::take(&mut resync),
        };
        let no_body = (100..200).contains(&head.status) && head.status != 101
            || head.status == 204
            || head.status == 304;
        let mut resume: Option<u64> = None; // where the next response starts
        let end = if no_body {
            head.body
        } else if head.chunked && head.status != 101 {
            match chunked_body(
                &s,
                head.body,
                &mut scan,
                &mut line,
                &mut resp.body_len,
                &mut resp.resynced,
            ) {
                BodyEnd::At(e) => e,
                BodyEnd::StreamEnd => {
                    resp.complete = false;
                    s.end
                }
                BodyEnd::Lost { at, next_response } => {
                    resp.complete = false;
                    match next_response {
                        Some(n) => {
                            resume = Some(n);
                            n
                        }
                        None => {
                            tl.lost_sync_at = Some(at);
                            s.end
                        }
                    }
                }
            }
        } else {
            let end = match head.content_length {
                Some(n) if head.status != 101 => head.body.saturating_add(n),
                _ => u64::MAX, // close-delimited (or upgraded): to the end of the stream
            };
            let stop = end.min(s.end);
            scan.feed(&s, head.body, stop, true);
            resp.body_len = stop - head.body;
            if end > s.end && end != u64::MAX {
                resp.complete = false;
            }
            end
        };
        let stop = end.min(s.end);
        resp.last_byte_unix_ns = stop
            .checked_sub(1)
            .and_then(|o| s.ts_at(o))
            .unwrap_or_default();
        resp.events = scan
            .finish()
            .into_iter()
            .filter_map(|(offset, kind, (token, visible))| {
                Some(SseEvent {
                    ts_unix_ns: s.ts_at(offset)?,
                    offset,
                    kind,
                    token,
                    visible,
                })
            })
            .collect();
        tl.responses.push(resp);
        if tl.lost_sync_at.is_some() {
            break;
        }
        off = resume.unwrap_or(end);
        if end >= s.end {
            break;
        }
    }
    tl
}

/// The client bytes of one request, as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTiming {
    /// Capture time of the segment that first carried the request's first byte.
    pub first_byte_unix_ns: u64,
    /// Capture time of the segment that first carried its last byte.
    pub last_byte_unix_ns: u64,
    /// Request bytes (first transmissions only).
    pub bytes: u64,
    /// TCP sequence number of its first byte.
    pub first_seq: u32,
}

/// Pairs client→server bytes with `responses` (from [`sse_timeline`] on the same connection):
/// element `i` is what the client sent after response `i - 1` began and before response `i`
/// began, which on an HTTP/1.1 connection without pipelining is request `i`; `None` if nothing.
/// Retransmits are ignored. The result has one element per response. With µs timestamps a
/// request sent within the same µs as the previous response's first byte is counted with that
/// response's request; capture with `--time-stamp-precision=nano` where that matters.
pub fn request_times(
    client: &[ClientSegment],
    responses: &[HttpResponse],
) -> Vec<Option<RequestTiming>> {
    let items: Vec<(u64, u32, u32)> = client
        .iter()
        .map(|c| (c.ts_unix_ns, c.seq, c.len))
        .collect();
    let offsets = stream_offsets(&items);
    let base = stream_base_seq(&items).unwrap_or(0);
    // In sequence order, which is send order.
    let spans = first_transmissions(&items, &offsets);
    let mut out: Vec<Option<RequestTiming>> = vec![None; responses.len()];
    let mut k = 0;
    for sp in spans {
        let ts = client[sp.seg].ts_unix_ns;
        // `>`: with µs timestamps a request's last segment and its response's first can share
        // a tick; the response cannot come first.
        while k < responses.len() && ts > responses[k].first_byte_unix_ns {
            k += 1;
        }
        let Some(slot) = out.get_mut(k) else {
            break; // sent after the last response began: no response captured for it
        };
        let len = sp.end - sp.start;
        match slot {
            Some(r) => {
                r.last_byte_unix_ns = r.last_byte_unix_ns.max(ts);
                r.bytes += len;
            }
            None => {
                *slot = Some(RequestTiming {
                    first_byte_unix_ns: ts,
                    last_byte_unix_ns: ts,
                    bytes: len,
                    first_seq: base.wrapping_add(sp.start as u32),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
