//! Typed events decoded from ring-buffer records.
//!
//! Decoding never trusts the record: sizes are checked against the header's kind, unknown kinds
//! and syscalls are errors (counted by the caller, never a panic), and the payload length is
//! bounded by both the record and [`MAX_PAYLOAD`].
use std::mem::offset_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use inferscope_common::{
    ArrivalEvent, EventHeader, EventKind, ProcEvent, SockEvent, SockInfo, SyscallId, UprobeEvent,
    AF_INET, AF_INET6, AF_UNIX, MAX_PAYLOAD, UPROBE_ARGS, UPROBE_STACK_WORDS,
};
use serde::Serialize;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its kind's fixed part.
    #[error("record of {got} bytes is shorter than the {need} its kind needs")]
    Short {
        /// Bytes required.
        need: usize,
        /// Bytes present.
        got: usize,
    },
    /// Kind value unknown to this build.
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    /// Syscall id unknown to this build.
    #[error("unknown syscall id {0}")]
    UnknownSyscall(u32),
    /// A uprobe record whose hook id is out of range.
    #[error("unknown hook id {0}")]
    UnknownHook(u32),
    /// `payload_len` larger than the record or the maximum.
    #[error("payload length {len} exceeds the {avail} bytes available")]
    PayloadOverrun {
        /// Claimed length.
        len: usize,
        /// Bytes actually available.
        avail: usize,
    },
}

/// A socket of a traced syscall, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketId {
    /// TCP/UDP over IPv4 or IPv6.
    Inet {
        /// Local address.
        local: (IpAddr, u16),
        /// Remote address.
        remote: (IpAddr, u16),
    },
    /// Unix-domain socket: its inode and its peer's (0 when unconnected or unknown).
    Unix {
        /// This end's inode.
        inode: u64,
        /// The peer's inode.
        peer: u64,
    },
    /// Another family (netlink, …): only the inode.
    Other {
        /// Family number.
        family: u16,
    },
}

impl SocketId {
    fn from_info(s: &SockInfo) -> Self {
        match s.family {
            AF_INET => Self::Inet {
                local: (IpAddr::V4(v4(&s.laddr)), s.lport),
                remote: (IpAddr::V4(v4(&s.raddr)), s.rport),
            },
            AF_INET6 => Self::Inet {
                local: (IpAddr::V6(Ipv6Addr::from(s.laddr)), s.lport),
                remote: (IpAddr::V6(Ipv6Addr::from(s.raddr)), s.rport),
            },
            AF_UNIX => Self::Unix {
                inode: s.inode,
                peer: s.peer_inode,
            },
            f => Self::Other { family: f },
        }
    }
}

fn v4(b: &[u8; 16]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// One socket syscall by a target.
#[derive(Debug, Clone)]
pub struct SockRecord {
    /// Accept, connect, recv, send or close.
    pub kind: EventKind,
    /// The syscall.
    pub syscall: SyscallId,
    /// Process.
    pub tgid: u32,
    /// Thread.
    pub tid: u32,
    /// CPU.
    pub cpu: u32,
    /// Entry, monotonic ns.
    pub start_ns: u64,
    /// Exit, monotonic ns.
    pub end_ns: u64,
    /// fd used (the new fd for accept).
    pub fd: i32,
    /// Listening fd for accept, else -1.
    pub aux_fd: i32,
    /// Return value.
    pub ret: i64,
    /// Raw socket identity.
    pub sock: SockInfo,
    /// Decoded socket identity.
    pub socket: SocketId,
    /// First bytes moved (may be empty).
    pub payload: Vec<u8>,
}

/// One process lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcRecord {
    /// Exec, fork or exit.
    pub kind: EventKind,
    /// The process the event is about.
    pub tgid: u32,
    /// Thread that caused it.
    pub tid: u32,
    /// Monotonic ns.
    pub ts_ns: u64,
    /// Fork: parent tgid.
    pub parent_tgid: u32,
    /// `comm`.
    pub comm: String,
}

/// Data arrived on a watched TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrivalRecord {
    /// Monotonic ns.
    pub ts_ns: u64,
    /// Local address and port.
    pub local: (IpAddr, u16),
    /// Remote address and port.
    pub remote: (IpAddr, u16),
    /// `rcv_nxt` after the arrival.
    pub rcv_nxt: u32,
    /// Network namespace inode of the socket (0 when unknown).
    pub netns: u32,
}

/// One probed user-space call by a target (a uprobe hook of the hook table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// Hook id ([`crate::hooks::HookId`] value).
    pub hook: u16,
    /// Process.
    pub tgid: u32,
    /// Thread.
    pub tid: u32,
    /// Entry, monotonic ns.
    pub start_ns: u64,
    /// Return, monotonic ns (the entry time for hooks without a return probe).
    pub end_ns: u64,
    /// Whether a return probe completed the call (`ret` is meaningful).
    pub paired: bool,
    /// Return value.
    pub ret: u64,
    /// Argument registers at entry.
    pub args: [u64; UPROBE_ARGS],
    /// Stack words at entry, from the first stack argument slot.
    pub stack: [u64; UPROBE_STACK_WORDS],
}

/// A decoded record.
#[derive(Debug, Clone)]
pub enum Event {
    /// Socket syscall.
    Sock(SockRecord),
    /// Process lifecycle.
    Proc(ProcRecord),
    /// Wire-side data arrival.
    Arrival(ArrivalRecord),
    /// A probed user-space call.
    Call(CallRecord),
    /// A CUDA boundary call (GPU ring).
    Gpu(crate::gpu::GpuRecord),
}

impl Event {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Sock(s) => s.kind,
            Event::Proc(p) => p.kind,
            Event::Arrival(_) => EventKind::SockArrival,
            Event::Call(_) => EventKind::UprobeCall,
            Event::Gpu(g) if g.is_nccl() => EventKind::NcclCall,
            Event::Gpu(_) => EventKind::GpuCall,
        }
    }

    /// When its record was written (monotonic ns): the syscall's or call's return, else the
    /// event's time.
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Sock(s) => s.end_ns,
            Event::Proc(p) => p.ts_ns,
            Event::Arrival(a) => a.ts_ns,
            Event::Call(c) => c.end_ns,
            Event::Gpu(g) => g.call.end_ns,
        }
    }
}

/// Merges the records of the GPU ring into those of the main ring by time, keeping each
/// ring's own order: a step's synchronize return (GPU ring) must be seen before the output
/// message its process sent after it (main ring), and a process's last GPU calls before its
/// exit. `main` is drained first and `gpu` after, so every GPU record written before the last
/// main record is here.
pub fn merge_by_time(main: &mut Vec<Event>, gpu: &mut Vec<Event>, out: &mut Vec<Event>) {
    if gpu.is_empty() {
        out.append(main);
        return;
    }
    out.reserve(main.len() + gpu.len());
    let mut g = gpu.drain(..).peekable();
    for m in main.drain(..) {
        let t = m.ts_ns();
        while let Some(e) = g.next_if(|e| e.ts_ns() <= t) {
            out.push(e);
        }
        out.push(m);
    }
    out.extend(g);
}

/// The fields of a [`SockEvent`] before its payload.
struct SockFixed {
    start_ns: u64,
    ret: i64,
    syscall: u32,
    fd: i32,
    aux_fd: i32,
    payload_len: u32,
    sock: SockInfo,
}

pub(crate) fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            need,
            got: bytes.len(),
        });
    }
    // SAFETY: length checked; T is a repr(C) plain-data type; read_unaligned copes with the
    // ring's 8-byte alignment not matching T's.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The kind of a raw record, read from its header.
pub fn peek_kind(bytes: &[u8]) -> Result<u32, DecodeError> {
    Ok(read::<EventHeader>(bytes)?.kind)
}

fn comm_str(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let h = read::<EventHeader>(bytes)?;
    let kind = EventKind::from_u32(h.kind).ok_or(DecodeError::UnknownKind(h.kind))?;
    match kind {
        EventKind::SockAccept
        | EventKind::SockConnect
        | EventKind::SockRecv
        | EventKind::SockSend
        | EventKind::SockClose => {
            if bytes.len() < SockEvent::FIXED_SIZE {
                return Err(DecodeError::Short {
                    need: SockEvent::FIXED_SIZE,
                    got: bytes.len(),
                });
            }
            // Field by field from the fixed part (the record is cut after its payload, so the
            // whole `SockEvent` is never there to read at once).
            let fixed = &bytes[..SockEvent::FIXED_SIZE];
            let field = |off: usize| &fixed[off..];
            let ev = SockFixed {
                start_ns: read(field(offset_of!(SockEvent, start_ns)))?,
                ret: read(field(offset_of!(SockEvent, ret)))?,
                syscall: read(field(offset_of!(SockEvent, syscall)))?,
                fd: read(field(offset_of!(SockEvent, fd)))?,
                aux_fd: read(field(offset_of!(SockEvent, aux_fd)))?,
                payload_len: read(field(offset_of!(SockEvent, payload_len)))?,
                sock: read(field(offset_of!(SockEvent, sock)))?,
            };
            let syscall =
                SyscallId::from_u32(ev.syscall).ok_or(DecodeError::UnknownSyscall(ev.syscall))?;
            let len = ev.payload_len as usize;
            let avail = bytes.len() - SockEvent::FIXED_SIZE;
            if len > avail || len > MAX_PAYLOAD {
                return Err(DecodeError::PayloadOverrun { len, avail });
            }
            let payload = bytes[SockEvent::FIXED_SIZE..SockEvent::FIXED_SIZE + len].to_vec();
            Ok(Event::Sock(SockRecord {
                kind,
                syscall,
                tgid: h.tgid,
                tid: h.tid,
                cpu: h.cpu,
                start_ns: ev.start_ns,
                end_ns: h.ts_ns,
                fd: ev.fd,
                aux_fd: ev.aux_fd,
                ret: ev.ret,
                sock: ev.sock,
                socket: SocketId::from_info(&ev.sock),
                payload,
            }))
        }
        EventKind::SockArrival => {
            let ev = read::<ArrivalEvent>(bytes)?;
            let (local, remote) = if ev.family == AF_INET6 {
                (
                    IpAddr::V6(Ipv6Addr::from(ev.laddr)),
                    IpAddr::V6(Ipv6Addr::from(ev.raddr)),
                )
            } else {
                (IpAddr::V4(v4(&ev.laddr)), IpAddr::V4(v4(&ev.raddr)))
            };
            Ok(Event::Arrival(ArrivalRecord {
                ts_ns: h.ts_ns,
                local: (local, ev.lport),
                remote: (remote, ev.rport),
                rcv_nxt: ev.rcv_nxt,
                netns: ev.netns,
            }))
        }
        EventKind::UprobeCall => {
            let ev = read::<UprobeEvent>(bytes)?;
            let hook = u16::try_from(ev.hook).map_err(|_| DecodeError::UnknownHook(ev.hook))?;
            Ok(Event::Call(CallRecord {
                hook,
                tgid: h.tgid,
                tid: h.tid,
                start_ns: if ev.paired != 0 { ev.start_ns } else { h.ts_ns },
                end_ns: h.ts_ns,
                paired: ev.paired != 0,
                ret: ev.ret,
                args: ev.args,
                stack: ev.stack,
            }))
        }
        EventKind::GpuCall | EventKind::NcclCall => {
            Ok(Event::Gpu(crate::gpu::decode_record(&h, bytes)?))
        }
        EventKind::ProcExec | EventKind::ProcFork | EventKind::ProcExit => {
            let ev = read::<ProcEvent>(bytes)?;
            Ok(Event::Proc(ProcRecord {
                kind,
                tgid: h.tgid,
                tid: h.tid,
                ts_ns: h.ts_ns,
                parent_tgid: ev.parent_tgid,
                comm: comm_str(&ev.comm),
            }))
        }
    }
}

/// Short lowercase name of a kind, as printed and exported.
pub fn kind_name(k: EventKind) -> &'static str {
    match k {
        EventKind::SockAccept => "accept",
        EventKind::SockConnect => "connect",
        EventKind::SockRecv => "recv",
        EventKind::SockSend => "send",
        EventKind::SockClose => "close",
        EventKind::SockArrival => "arrival",
        EventKind::ProcExec => "exec",
        EventKind::ProcFork => "fork",
        EventKind::ProcExit => "exit",
        EventKind::UprobeCall => "call",
        EventKind::GpuCall => "gpu",
        EventKind::NcclCall => "nccl",
    }
}

/// JSON form of an event (`--print-events --format json`): one object per line.
#[derive(Debug, Serialize)]
pub struct EventJson<'a> {
    /// `accept`, `connect`, `recv`, `send`, `close`, `exec`, `fork`, `exit`.
    pub kind: &'static str,
    /// Wall-clock ns (Unix epoch) when the event completed.
    pub ts_unix_ns: u64,
    /// Syscall duration in ns (socket events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dur_ns: Option<u64>,
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// Syscall name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<&'static str>,
    /// fd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// Listening fd (accept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_fd: Option<i32>,
    /// Return value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret: Option<i64>,
    /// `tcp4`, `tcp6`, `udp4`, `unix`, … (socket events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Local `addr:port` (inet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    /// Remote `addr:port` (inet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Socket inode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
    /// Peer socket inode (unix).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_inode: Option<u64>,
    /// TCP sequence after the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_seq: Option<u32>,
    /// Bytes of payload captured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captured: Option<usize>,
    /// Captured payload, hex (only with `--print-payload`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
    /// Fork: parent pid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    /// Call: argument registers at entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<[u64; UPROBE_ARGS]>,
    /// Call: stack words at entry (from the first stack argument slot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<[u64; UPROBE_STACK_WORDS]>,
    /// Process name (for a `call` or `gpu`: the hook's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<&'a str>,
    /// GPU: the decoded call (API, operation, stream, launches before it, result).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<crate::gpu::GpuCall>,
    /// NCCL: the decoded call (communicator set-up, collective, group).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nccl: Option<crate::gpu::nccl::NcclCall>,
}

fn proto_name(s: &SockInfo) -> String {
    let t = match s.sock_type {
        1 => "tcp",
        2 => "udp",
        5 => "seqpacket",
        3 => "raw",
        _ => "sock",
    };
    match s.family {
        AF_INET => format!("{t}4"),
        AF_INET6 => format!("{t}6"),
        AF_UNIX => match s.sock_type {
            2 => "unix-dgram".into(),
            5 => "unix-seqpacket".into(),
            _ => "unix".into(),
        },
        f => format!("family{f}"),
    }
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

impl<'a> EventJson<'a> {
    /// Builds the JSON form; `to_wall` converts monotonic ns to Unix ns.
    pub fn new(ev: &'a Event, to_wall: impl Fn(u64) -> u64, with_payload: bool) -> Self {
        match ev {
            Event::Sock(s) => {
                let (local, remote, inode, peer) = match s.socket {
                    SocketId::Inet { local, remote } => (
                        Some(fmt_addr(local)),
                        Some(fmt_addr(remote)),
                        Some(s.sock.inode),
                        None,
                    ),
                    SocketId::Unix { inode, peer } => (None, None, Some(inode), Some(peer)),
                    SocketId::Other { .. } => (None, None, Some(s.sock.inode), None),
                };
                let is_tcp = matches!(s.sock.family, AF_INET | AF_INET6) && s.sock.sock_type == 1;
                EventJson {
                    kind: kind_name(s.kind),
                    ts_unix_ns: to_wall(s.end_ns),
                    dur_ns: Some(s.end_ns.saturating_sub(s.start_ns)),
                    pid: s.tgid,
                    tid: s.tid,
                    syscall: Some(s.syscall.name()),
                    fd: Some(s.fd),
                    listen_fd: (s.aux_fd >= 0).then_some(s.aux_fd),
                    ret: Some(s.ret),
                    proto: Some(proto_name(&s.sock)),
                    local,
                    remote,
                    inode,
                    peer_inode: peer,
                    tcp_seq: is_tcp.then_some(s.sock.tcp_seq),
                    captured: Some(s.payload.len()),
                    payload_hex: with_payload.then(|| hex(&s.payload)),
                    ppid: None,
                    args: None,
                    stack: None,
                    comm: None,
                    gpu: None,
                    nccl: None,
                }
            }
            Event::Arrival(a) => EventJson {
                kind: "arrival",
                ts_unix_ns: to_wall(a.ts_ns),
                dur_ns: None,
                pid: 0,
                tid: 0,
                syscall: None,
                fd: None,
                listen_fd: None,
                ret: None,
                proto: Some("tcp".into()),
                local: Some(fmt_addr(a.local)),
                remote: Some(fmt_addr(a.remote)),
                inode: None,
                peer_inode: None,
                tcp_seq: Some(a.rcv_nxt),
                captured: None,
                payload_hex: None,
                ppid: None,
                args: None,
                stack: None,
                comm: None,
                gpu: None,
                nccl: None,
            },
            Event::Gpu(g) if g.is_nccl() => EventJson {
                kind: "nccl",
                nccl: crate::gpu::nccl::decode(g),
                ..Self::call(&g.call, to_wall)
            },
            Event::Gpu(g) => EventJson {
                kind: "gpu",
                gpu: crate::gpu::decode(g),
                ..Self::call(&g.call, to_wall)
            },
            Event::Call(c) => Self::call(c, to_wall),
            Event::Proc(p) => EventJson {
                kind: kind_name(p.kind),
                ts_unix_ns: to_wall(p.ts_ns),
                dur_ns: None,
                pid: p.tgid,
                tid: p.tid,
                syscall: None,
                fd: None,
                listen_fd: None,
                ret: None,
                proto: None,
                local: None,
                remote: None,
                inode: None,
                peer_inode: None,
                tcp_seq: None,
                captured: None,
                payload_hex: None,
                ppid: (p.kind == EventKind::ProcFork).then_some(p.parent_tgid),
                args: None,
                stack: None,
                comm: Some(&p.comm),
                gpu: None,
                nccl: None,
            },
        }
    }
    /// The JSON form of a probed call (`call`; `gpu` records start from it).
    fn call(c: &CallRecord, to_wall: impl Fn(u64) -> u64) -> EventJson<'static> {
        EventJson {
            kind: "call",
            ts_unix_ns: to_wall(c.end_ns),
            dur_ns: c.paired.then(|| c.end_ns.saturating_sub(c.start_ns)),
            pid: c.tgid,
            tid: c.tid,
            syscall: None,
            fd: None,
            listen_fd: None,
            ret: c.paired.then_some(c.ret as i64),
            proto: None,
            local: None,
            remote: None,
            inode: None,
            peer_inode: None,
            tcp_seq: None,
            captured: None,
            payload_hex: None,
            ppid: None,
            args: Some(c.args),
            stack: Some(c.stack),
            comm: crate::hooks::hook_name(c.hook),
            gpu: None,
            nccl: None,
        }
    }
}

fn fmt_addr((ip, port): (IpAddr, u16)) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a repr(C) value.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
                .to_vec()
        }
    }

    fn sock_event(kind: EventKind, payload: &[u8]) -> Vec<u8> {
        let mut ev = SockEvent {
            header: EventHeader {
                kind: kind as u32,
                tgid: 10,
                tid: 11,
                cpu: 1,
                ts_ns: 2_000,
            },
            start_ns: 1_500,
            ret: payload.len() as i64,
            syscall: SyscallId::Sendto as u32,
            fd: 7,
            aux_fd: -1,
            payload_len: payload.len() as u32,
            sock: SockInfo {
                family: AF_INET,
                sock_type: 1,
                lport: 8080,
                rport: 40000,
                laddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                raddr: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                inode: 99,
                peer_inode: 0,
                tcp_seq: 1234,
                netns: 0,
            },
            payload: [0; MAX_PAYLOAD],
        };
        ev.payload[..payload.len()].copy_from_slice(payload);
        let mut b = as_bytes(&ev);
        // The kernel writes the record truncated after the payload, rounded up to 8 by the ring.
        b.truncate(SockEvent::FIXED_SIZE + payload.len().div_ceil(8) * 8);
        b
    }

    #[test]
    fn decodes_truncated_sock_event() {
        let b = sock_event(EventKind::SockSend, b"GET / HTTP/1.1\r\n");
        let Event::Sock(s) = decode(&b).unwrap() else {
            panic!("not a sock event")
        };
        assert_eq!(s.kind, EventKind::SockSend);
        assert_eq!(s.syscall, SyscallId::Sendto);
        assert_eq!((s.tgid, s.tid, s.fd, s.ret), (10, 11, 7, 16));
        assert_eq!(s.payload, b"GET / HTTP/1.1\r\n");
        assert_eq!(
            s.socket,
            SocketId::Inet {
                local: ("127.0.0.1".parse().unwrap(), 8080),
                remote: ("127.0.0.2".parse().unwrap(), 40000)
            }
        );
        let j = serde_json::to_value(EventJson::new(&Event::Sock(s), |t| t + 1, true)).unwrap();
        assert_eq!(j["local"], "127.0.0.1:8080");
        assert_eq!(j["proto"], "tcp4");
        assert_eq!(j["dur_ns"], 500);
        assert_eq!(j["ts_unix_ns"], 2_001);
        assert_eq!(j["tcp_seq"], 1234);
        assert_eq!(j["payload_hex"], hex(b"GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn rejects_bad_records() {
        assert!(matches!(decode(&[0u8; 3]), Err(DecodeError::Short { .. })));
        let mut b = sock_event(EventKind::SockRecv, b"abc");
        b[0..4].copy_from_slice(&77u32.to_le_bytes());
        assert_eq!(decode(&b).unwrap_err(), DecodeError::UnknownKind(77));
        // payload_len claims more than the record holds
        let mut b = sock_event(EventKind::SockRecv, b"abc");
        let off = std::mem::offset_of!(SockEvent, payload_len);
        b[off..off + 4].copy_from_slice(&100u32.to_le_bytes());
        assert!(matches!(
            decode(&b),
            Err(DecodeError::PayloadOverrun { len: 100, .. })
        ));
        // unknown syscall
        let mut b = sock_event(EventKind::SockRecv, b"");
        let off = std::mem::offset_of!(SockEvent, syscall);
        b[off..off + 4].copy_from_slice(&999u32.to_le_bytes());
        assert_eq!(decode(&b).unwrap_err(), DecodeError::UnknownSyscall(999));
        // fixed part cut short
        let b = sock_event(EventKind::SockRecv, b"");
        assert!(matches!(decode(&b[..40]), Err(DecodeError::Short { .. })));
    }

    #[test]
    fn decodes_proc_and_unix() {
        let ev = ProcEvent {
            header: EventHeader {
                kind: EventKind::ProcFork as u32,
                tgid: 5,
                tid: 4,
                cpu: 0,
                ts_ns: 9,
            },
            parent_tgid: 4,
            exit_code: 0,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
        };
        let Event::Proc(p) = decode(&as_bytes(&ev)).unwrap() else {
            panic!()
        };
        assert_eq!((p.tgid, p.parent_tgid, p.comm.as_str()), (5, 4, "python3"));

        let mut b = sock_event(EventKind::SockRecv, b"x");
        let off = std::mem::offset_of!(SockEvent, sock);
        let mut info: SockInfo = read(&b[off..]).unwrap();
        info.family = AF_UNIX;
        info.inode = 1000;
        info.peer_inode = 1001;
        b[off..off + std::mem::size_of::<SockInfo>()].copy_from_slice(&as_bytes(&info));
        let Event::Sock(s) = decode(&b).unwrap() else {
            panic!()
        };
        assert_eq!(
            s.socket,
            SocketId::Unix {
                inode: 1000,
                peer: 1001
            }
        );
    }

    #[test]
    fn never_panics_on_random_bytes() {
        // A small deterministic fuzz: every prefix and bit-flip of a valid record decodes or
        // errors, never panics.
        let base = sock_event(EventKind::SockSend, b"hello world");
        for cut in 0..base.len() {
            let _ = decode(&base[..cut]);
        }
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            let mut b = base.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % b.len();
                b[i] = (x >> 32) as u8;
            }
            let _ = decode(&b);
        }
    }
}
