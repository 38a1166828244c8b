//! Types shared between the inferscope kernel programs (`probe-ebpf`) and userspace (`node-probe`).
//!
//! Everything here is `#[repr(C)]`, free of `bool` and of pointers, and checked by const size
//! assertions so that a change on one side that the other side does not see fails to compile.
//! Every record written to the ring buffer starts with an [`EventHeader`] whose `kind` is one of
//! the stable [`EventKind`] values; userspace dispatches on it before it looks at the rest.
#![no_std]

/// Ring buffer carrying all events to userspace.
pub const MAP_EVENTS: &str = "EVENTS";
/// `tgid -> TargetInfo`: the processes being traced. Kept current in the kernel on fork/exit and
/// by userspace on exec and at start.
pub const MAP_TARGETS: &str = "TARGETS";
/// Single-entry array holding [`ProbeConfig`].
pub const MAP_CONFIG: &str = "CONFIG";
/// Per-CPU array of `u64`, indexed by [`EventKind`] value: events lost because the ring was full.
pub const MAP_LOSS: &str = "LOSS";
/// `pid_tgid -> InFlight`: syscall arguments saved at entry, consumed at exit.
pub const MAP_INFLIGHT: &str = "INFLIGHT";
/// Per-CPU scratch space where a [`SockEvent`] is assembled before it is copied to the ring.
pub const MAP_SCRATCH: &str = "SCRATCH";

/// `watch_key(netns, local port) -> 1`: TCP ports, per network namespace, on which data arrivals
/// are timestamped ([`EventKind::SockArrival`]).
pub const MAP_WATCH_PORTS: &str = "WATCH_PORTS";
/// Per-CPU array of `u64`, indexed by [`DropReason`] value: what the kernel side dropped without
/// a ring record (a full map, an evicted entry).
pub const MAP_DROPS: &str = "DROPS";
/// `UprobeKey -> UprobeInflight`: a probed call's entry, consumed by its return probe (LRU).
pub const MAP_UPROBE_INFLIGHT: &str = "UPROBE_INFLIGHT";
/// Capacity of [`MAP_UPROBE_INFLIGHT`] (threads concurrently inside a probed call).
pub const MAX_UPROBE_INFLIGHT: u32 = 16384;
/// Ring buffer of GPU call records ([`GpuCallEvent`]), apart from [`MAP_EVENTS`] so that a
/// launch storm never crowds out socket events.
pub const MAP_GPU_EVENTS: &str = "GPU_EVENTS";
/// `GpuStreamKey -> GpuLaunches`: kernel launches per (process, API, stream) since the last
/// boundary call on that stream, and when the first of them was made (LRU).
pub const MAP_GPU_LAUNCHES: &str = "GPU_LAUNCHES";
/// Capacity of [`MAP_GPU_LAUNCHES`] (streams with launches not yet reported).
pub const MAX_GPU_STREAMS: u32 = 65536;
/// Array `syscall number -> SyscallId value` (0: not traced), read by the raw `sys_enter` /
/// `sys_exit` programs. Userspace fills it with the host architecture's numbers.
pub const MAP_SYSCALLS: &str = "SYSCALLS";
/// Capacity of [`MAP_SYSCALLS`]: syscall numbers at or above it are never traced.
pub const MAX_SYSCALL_NR: u32 = 512;

/// Capacity of [`MAP_WATCH_PORTS`].
pub const MAX_WATCH_PORTS: u32 = 256;

/// Slots in [`MAP_LOSS`]; every [`EventKind`] value is below this.
pub const LOSS_SLOTS: u32 = 128;
/// Slots in [`MAP_DROPS`]; every [`DropReason`] value is below this.
pub const DROP_SLOTS: u32 = 16;
/// Largest payload prefix a [`SockEvent`] can carry. A power of two.
pub const MAX_PAYLOAD: usize = 4096;
/// Default payload prefix captured per socket syscall.
pub const DEFAULT_PAYLOAD_CAP: u32 = 4096;
/// Maximum number of iovec entries whose bytes are copied for readv/writev/sendmsg/recvmsg.
pub const MAX_IOV: usize = 4;
/// Capacity of [`MAP_TARGETS`].
pub const MAX_TARGETS: u32 = 8192;
/// Capacity of [`MAP_INFLIGHT`] (threads concurrently inside a traced syscall).
pub const MAX_INFLIGHT: u32 = 16384;
/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;

/// Stable event kinds. Values are part of the kernel/user ABI: never renumber, only append.
///
/// Reserved ranges, one per hook family (a new kind goes in its family's range):
///
/// | range | family |
/// |---|---|
/// | 1–15 | sockets (syscalls, arrivals) |
/// | 16–31 | process lifecycle |
/// | 32–47 | user-space calls (uprobes on engine libraries) |
/// | 48–95 | GPU runtime and driver (CUDA) |
/// | 96–111 | collectives (NCCL) |
/// | 112–127 | reserved |
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `accept`/`accept4` returned a new socket.
    SockAccept = 1,
    /// `connect` returned (0 or `-EINPROGRESS`).
    SockConnect = 2,
    /// Bytes were received: `read`, `readv`, `recvfrom`, `recvmsg` on a socket.
    SockRecv = 3,
    /// Bytes were sent: `write`, `writev`, `sendto`, `sendmsg` on a socket.
    SockSend = 4,
    /// `close` of a socket fd.
    SockClose = 5,
    /// Data arrived on a TCP socket whose local port is watched (softirq context; no process).
    SockArrival = 6,
    /// A process called `execve` (any process; userspace matches it against the target patterns).
    ProcExec = 16,
    /// A target process forked a new process, which the kernel added to the target set.
    ProcFork = 17,
    /// A target process exited and was removed from the target set.
    ProcExit = 18,
    /// A probed user-space function was called by a target ([`UprobeEvent`]): at its return for
    /// hooks with a return probe, else at its entry.
    UprobeCall = 32,
    /// A probed CUDA driver or runtime call that bounds GPU work (graph launch, async copy,
    /// event record/synchronize, stream/context synchronize, stream wait), with the kernel
    /// launches counted on its stream since the previous one ([`GpuCallEvent`], in
    /// [`MAP_GPU_EVENTS`]).
    GpuCall = 48,
    /// A probed NCCL call (communicator set-up, collective, point-to-point, group), in the
    /// [`GpuCallEvent`] layout and in [`MAP_GPU_EVENTS`]: `stream` is the call's stream, `out`
    /// what an output argument points to at the return (the new communicator of an init).
    NcclCall = 96,
}

/// First value of each reserved [`EventKind`] range.
pub mod kind_range {
    /// Sockets: 1–15.
    pub const SOCKETS: u32 = 1;
    /// Process lifecycle: 16–31.
    pub const PROCESS: u32 = 16;
    /// User-space calls (uprobes): 32–47.
    pub const UPROBES: u32 = 32;
    /// GPU runtime and driver: 48–95.
    pub const GPU: u32 = 48;
    /// Collectives: 96–111.
    pub const COLLECTIVES: u32 = 96;
    /// Reserved: 112–127.
    pub const RESERVED: u32 = 112;
}

impl EventKind {
    /// Decodes a raw kind value; `None` for values this build does not know.
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::SockAccept,
            2 => Self::SockConnect,
            3 => Self::SockRecv,
            4 => Self::SockSend,
            5 => Self::SockClose,
            6 => Self::SockArrival,
            16 => Self::ProcExec,
            17 => Self::ProcFork,
            18 => Self::ProcExit,
            32 => Self::UprobeCall,
            48 => Self::GpuCall,
            96 => Self::NcclCall,
            _ => return None,
        })
    }
}

/// Why the kernel side dropped something without writing a record: slots of [`MAP_DROPS`].
/// Stable values, as [`EventKind`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A target's child could not join `TARGETS` at fork (the map was full): it is not traced
    /// until a rescan adds it.
    TargetsFull = 1,
    /// A target's socket syscall returned without its saved entry (`INFLIGHT` evicted it under
    /// pressure, or it was entered before node-probe attached): that syscall was not reported.
    InflightMissing = 2,
    /// A probed call returned without its saved entry (`UPROBE_INFLIGHT` evicted it).
    UprobeInflightMissing = 3,
    /// A readv/writev/sendmsg/recvmsg moved data in more than [`MAX_IOV`] iovecs: the payload
    /// prefix holds only the first ones.
    IovecsTruncated = 4,
}

impl DropReason {
    /// Every reason, for reporting.
    pub const ALL: [DropReason; 4] = [
        Self::TargetsFull,
        Self::InflightMissing,
        Self::UprobeInflightMissing,
        Self::IovecsTruncated,
    ];

    /// Metric label.
    pub const fn name(self) -> &'static str {
        match self {
            Self::TargetsFull => "targets_full",
            Self::InflightMissing => "inflight_missing",
            Self::UprobeInflightMissing => "uprobe_inflight_missing",
            Self::IovecsTruncated => "iovecs_truncated",
        }
    }
}

/// Which syscall produced a socket event. Stable values, as [`EventKind`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallId {
    /// `read(2)`
    Read = 1,
    /// `write(2)`
    Write = 2,
    /// `readv(2)`
    Readv = 3,
    /// `writev(2)`
    Writev = 4,
    /// `recvfrom(2)` (also what `recv(2)` becomes)
    Recvfrom = 5,
    /// `sendto(2)` (also what `send(2)` becomes)
    Sendto = 6,
    /// `recvmsg(2)`
    Recvmsg = 7,
    /// `sendmsg(2)`
    Sendmsg = 8,
    /// `accept(2)`
    Accept = 9,
    /// `accept4(2)`
    Accept4 = 10,
    /// `connect(2)`
    Connect = 11,
    /// `close(2)`
    Close = 12,
}

impl SyscallId {
    /// Decodes a raw syscall id; `None` for values this build does not know.
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Read,
            2 => Self::Write,
            3 => Self::Readv,
            4 => Self::Writev,
            5 => Self::Recvfrom,
            6 => Self::Sendto,
            7 => Self::Recvmsg,
            8 => Self::Sendmsg,
            9 => Self::Accept,
            10 => Self::Accept4,
            11 => Self::Connect,
            12 => Self::Close,
            _ => return None,
        })
    }

    /// The syscall's name as in `man 2`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Readv => "readv",
            Self::Writev => "writev",
            Self::Recvfrom => "recvfrom",
            Self::Sendto => "sendto",
            Self::Recvmsg => "recvmsg",
            Self::Sendmsg => "sendmsg",
            Self::Accept => "accept",
            Self::Accept4 => "accept4",
            Self::Connect => "connect",
            Self::Close => "close",
        }
    }

    /// How the payload pointer argument is to be read.
    pub const fn buffer_shape(self) -> BufferShape {
        match self {
            Self::Read | Self::Write | Self::Recvfrom | Self::Sendto => BufferShape::Flat,
            Self::Readv | Self::Writev => BufferShape::Iovec,
            Self::Recvmsg | Self::Sendmsg => BufferShape::Msghdr,
            Self::Accept | Self::Accept4 | Self::Connect | Self::Close => BufferShape::None,
        }
    }
}

/// Shape of a syscall's data argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferShape {
    /// `(fd, buf, len)`.
    Flat,
    /// `(fd, iov, iovcnt)`.
    Iovec,
    /// `(fd, msghdr, flags)`.
    Msghdr,
    /// No payload.
    None,
}

/// First field of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] value.
    pub kind: u32,
    /// Thread-group id (the process id as userspace sees it).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU the event was produced on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event completed.
    pub ts_ns: u64,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 24);

/// Address families as in `<sys/socket.h>`.
pub const AF_UNIX: u16 = 1;
/// IPv4.
pub const AF_INET: u16 = 2;
/// IPv6.
pub const AF_INET6: u16 = 10;

/// Identity of the socket behind an fd, read from the kernel's `struct sock`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockInfo {
    /// `AF_UNIX`, `AF_INET`, `AF_INET6`, or another family (then only `inode` is set).
    pub family: u16,
    /// `SOCK_STREAM` (1), `SOCK_DGRAM` (2), `SOCK_SEQPACKET` (5), …
    pub sock_type: u16,
    /// Local port, host byte order (inet only).
    pub lport: u16,
    /// Remote port, host byte order (inet only).
    pub rport: u16,
    /// Local address: 4 bytes for IPv4 (rest zero), 16 for IPv6, network order.
    pub laddr: [u8; 16],
    /// Remote address, as `laddr`.
    pub raddr: [u8; 16],
    /// Inode number of this socket (`sockfs`), as `/proc/PID/fd/N -> socket:[inode]` shows.
    pub inode: u64,
    /// Inode of the connected peer socket (unix sockets only; 0 when unknown or unconnected).
    pub peer_inode: u64,
    /// TCP only: `write_seq` after a send, `copied_seq` after a receive (0 otherwise).
    pub tcp_seq: u32,
    /// Inode number of the socket's network namespace (`/proc/PID/ns/net -> net:[N]`); 0 when
    /// unknown (a kernel without network namespaces).
    pub netns: u32,
}
const _: () = assert!(core::mem::size_of::<SockInfo>() == 64);

/// A socket syscall by a target process. Written to the ring truncated after
/// `payload[..payload_len]`; readers must use [`SockEvent::FIXED_SIZE`] + `payload_len`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockEvent {
    /// Common header; `kind` is one of the `Sock*` kinds.
    pub header: EventHeader,
    /// Syscall entry time (monotonic ns). `header.ts_ns` is the exit time.
    pub start_ns: u64,
    /// Syscall return value: bytes moved, the new fd for accept, or `-errno`.
    pub ret: i64,
    /// A [`SyscallId`] value.
    pub syscall: u32,
    /// The socket's fd (for accept, the new fd).
    pub fd: i32,
    /// accept: the listening fd; otherwise -1.
    pub aux_fd: i32,
    /// Bytes of payload copied into `payload`.
    pub payload_len: u32,
    /// The socket the syscall used.
    pub sock: SockInfo,
    /// First bytes of the data moved (up to the configured cap).
    pub payload: [u8; MAX_PAYLOAD],
}

impl SockEvent {
    /// Size of everything before `payload`.
    pub const FIXED_SIZE: usize = core::mem::size_of::<SockEvent>() - MAX_PAYLOAD;
}
const _: () = assert!(SockEvent::FIXED_SIZE == 24 + 8 + 8 + 4 + 4 + 4 + 4 + 64);
const _: () = assert!(SockEvent::FIXED_SIZE.is_multiple_of(8));

/// Data arrived on a watched TCP socket (`sock:sk_data_ready`): the wire-side time of a request's
/// bytes, before the server gets round to reading them. `rcv_nxt` tells which bytes: everything
/// before it has arrived, so a read whose first byte has sequence `s` was served by the first
/// arrival with `rcv_nxt > s`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArrivalEvent {
    /// Common header; `tgid`/`tid` are 0 (no process context).
    pub header: EventHeader,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Reserved, zero.
    pub _pad: u16,
    /// Local port, host order.
    pub lport: u16,
    /// Remote port, host order.
    pub rport: u16,
    /// Local address (as [`SockInfo::laddr`]).
    pub laddr: [u8; 16],
    /// Remote address.
    pub raddr: [u8; 16],
    /// `tcp_sock.rcv_nxt` after the arrival.
    pub rcv_nxt: u32,
    /// Network namespace inode (as [`SockInfo::netns`]).
    pub netns: u32,
}
const _: () = assert!(core::mem::size_of::<ArrivalEvent>() == 72);

/// A process lifecycle event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEvent {
    /// Common header: the process the event is about (`tgid`) and the thread that caused it.
    pub header: EventHeader,
    /// Fork: the parent's tgid. Exec/exit: 0.
    pub parent_tgid: u32,
    /// Exit: the exit code as `wait(2)` encodes it. Otherwise 0.
    pub exit_code: u32,
    /// `comm` of the process after the event.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<ProcEvent>() == 48);

/// Argument registers saved by a uprobe (x86-64 SysV: rdi, rsi, rdx, rcx, r8, r9).
pub const UPROBE_ARGS: usize = 6;
/// Stack words saved by a uprobe, from the first argument slot above the return address
/// (x86-64: `rsp + 8`, `rsp + 16`, …): where arguments passed by value in memory live.
pub const UPROBE_STACK_WORDS: usize = 4;

/// The attach cookie of a uprobe: which hook of node-probe's hook table it is, whether a
/// return probe completes the call, (GPU hooks) where the call's stream handle is and which
/// argument register points to an output read at the return. Packed as
/// `hook | flags << 16 | stream location << 24 | output register + 1 << 32`.
pub mod uprobe_cookie {
    /// Bits of the hook id.
    pub const HOOK_MASK: u64 = 0xffff;
    /// The call is completed by a return probe: the entry is saved, the record written at the
    /// return.
    pub const PAIRED: u64 = 1 << 16;
    /// Shift of the stream location byte ([`crate::stream_at`]).
    pub const STREAM_SHIFT: u64 = 24;
    /// Packs a cookie.
    pub const fn pack(hook: u16, paired: bool) -> u64 {
        hook as u64 | if paired { PAIRED } else { 0 }
    }
    /// Packs a cookie with a stream location.
    pub const fn pack_gpu(hook: u16, paired: bool, stream: u8) -> u64 {
        pack(hook, paired) | (stream as u64) << STREAM_SHIFT
    }
    /// The stream location of a cookie.
    pub const fn stream(cookie: u64) -> u8 {
        (cookie >> STREAM_SHIFT) as u8
    }
    /// Shift of the output-register byte ([`with_out`]).
    pub const OUT_SHIFT: u64 = 32;
    /// Adds to a cookie: at the return, read the 8 bytes that argument register `reg` (0–5)
    /// pointed to at the entry (`ncclCommInitRank`'s `ncclComm_t *comm`: the new handle).
    pub const fn with_out(cookie: u64, reg: u8) -> u64 {
        cookie | ((reg as u64 + 1) & 0x7) << OUT_SHIFT
    }
    /// The output register of a cookie: `Some(i)` for argument register `i`.
    pub const fn out(cookie: u64) -> Option<u8> {
        match (cookie >> OUT_SHIFT) & 0x7 {
            0 => None,
            r => Some(r as u8 - 1),
        }
    }
}

/// Where a GPU call's stream handle is, as one byte of the attach cookie.
pub mod stream_at {
    /// The call has no stream (event and context synchronize).
    pub const NONE: u8 = 0;
    /// Argument register `i` (0-based, at most 5).
    pub const fn reg(i: u8) -> u8 {
        1 + i
    }
    /// Stack word `i` from the first stack argument slot (at most 3).
    pub const fn stack(i: u8) -> u8 {
        8 + i
    }
    /// The 8-byte word `i` of the struct that argument 0 points to (launch configs:
    /// `CUlaunchConfig.hStream` and `cudaLaunchConfig_t.stream` are word 4), at most 15.
    pub const fn config_word(i: u8) -> u8 {
        16 + i
    }
}

/// Key of [`MAP_GPU_LAUNCHES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuStreamKey {
    /// Process.
    pub tgid: u32,
    /// Which API counted: 0 the driver, 1 the runtime, 2 NCCL ([`gpu_api`]); a runtime call
    /// may reach the driver's probed entry points too, so the two are never added. NCCL
    /// launches nothing itself that is counted (its kernels go through the driver), so its
    /// calls find no launches under their key.
    pub api: u32,
    /// Stream handle (0: the legacy default stream; per-thread default streams are 2).
    pub stream: u64,
}

/// The API of a GPU hook id: 1 for the CUDA runtime's range (200–299), 2 for NCCL's
/// (300–399), else 0 (driver).
pub const fn gpu_api(hook: u32) -> u32 {
    match hook {
        200..=299 => 1,
        300..=399 => 2,
        _ => 0,
    }
}

/// The record kind of a GPU-ring hook: [`EventKind::NcclCall`] for NCCL's range (300–399),
/// else [`EventKind::GpuCall`].
pub const fn gpu_kind(hook: u32) -> EventKind {
    match hook {
        300..=399 => EventKind::NcclCall,
        _ => EventKind::GpuCall,
    }
}

/// Value of [`MAP_GPU_LAUNCHES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuLaunches {
    /// Launches counted.
    pub count: u64,
    /// Entry time of the first of them (monotonic ns).
    pub first_ns: u64,
}

/// One GPU boundary call by a target ([`EventKind::GpuCall`]): the generic uprobe fields, the
/// stream handle read where the cookie says, and the kernel launches counted on that stream
/// since the previous boundary call on it (taken at this call's entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuCallEvent {
    /// The call, as for any uprobe (`call.header.kind` is [`EventKind::GpuCall`]).
    pub call: UprobeEvent,
    /// Stream handle (0 when the call has none, or for the default stream).
    pub stream: u64,
    /// Kernel launches on `stream` since the previous boundary call on it.
    pub launches: u64,
    /// Entry time of the first of those launches (0 when none).
    pub first_launch_ns: u64,
    /// Hooks with an output register ([`uprobe_cookie::with_out`]): the 8 bytes it pointed to,
    /// read at the return (0 otherwise, or when unreadable).
    pub out: u64,
}
const _: () = assert!(core::mem::size_of::<GpuCallEvent>() == 128 + 32);

/// One probed user-space call by a target ([`EventKind::UprobeCall`]). `header.ts_ns` is the
/// return time for paired hooks (the entry time otherwise).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UprobeEvent {
    /// Common header.
    pub header: EventHeader,
    /// Hook id (node-probe's hook table), from the attach cookie.
    pub hook: u32,
    /// 1 when `ret` and `start_ns` come from a return probe, else 0.
    pub paired: u32,
    /// Entry time (monotonic ns).
    pub start_ns: u64,
    /// Return value (`rax`), 0 when unpaired.
    pub ret: u64,
    /// Argument registers at entry.
    pub args: [u64; UPROBE_ARGS],
    /// Stack words at entry, from the first stack argument slot.
    pub stack: [u64; UPROBE_STACK_WORDS],
}
const _: () = assert!(core::mem::size_of::<UprobeEvent>() == 24 + 8 + 8 + 8 + 48 + 32);

/// Key of [`MAP_UPROBE_INFLIGHT`]: one thread inside one hooked function.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UprobeKey {
    /// `bpf_get_current_pid_tgid()`.
    pub pid_tgid: u64,
    /// Hook id.
    pub hook: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// Value of [`MAP_UPROBE_INFLIGHT`]: what the entry saw.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UprobeInflight {
    /// Entry time.
    pub start_ns: u64,
    /// Argument registers.
    pub args: [u64; UPROBE_ARGS],
    /// Stack words.
    pub stack: [u64; UPROBE_STACK_WORDS],
    /// GPU calls: the stream handle and the launches taken at entry (0 otherwise).
    pub stream: u64,
    /// GPU calls: launches counted on `stream` before this call.
    pub launches: u64,
    /// GPU calls: entry time of the first of them.
    pub first_launch_ns: u64,
}

/// Key of [`MAP_WATCH_PORTS`] for a local port in a network namespace.
pub const fn watch_key(netns: u32, port: u16) -> u64 {
    ((netns as u64) << 16) | port as u64
}

/// Why a process is in [`MAP_TARGETS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetReason {
    /// Named by pid on the command line.
    Pid = 1,
    /// Its command line matched a pattern.
    Pattern = 2,
    /// Descendant of a target, added by the kernel at fork.
    Child = 3,
}

/// Value of [`MAP_TARGETS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetInfo {
    /// A [`TargetReason`] value.
    pub reason: u32,
    /// 1 when descendants are to be added at fork, else 0.
    pub follow_children: u32,
}
const _: () = assert!(core::mem::size_of::<TargetInfo>() == 8);

/// Syscall arguments saved at entry, keyed by `pid_tgid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Entry time.
    pub start_ns: u64,
    /// Buffer, iovec array or msghdr pointer (user address).
    pub buf: u64,
    /// Length, iovec count, or flags.
    pub len: u64,
    /// A [`SyscallId`] value.
    pub syscall: u32,
    /// The fd argument.
    pub fd: i32,
}
const _: () = assert!(core::mem::size_of::<InFlight>() == 32);

/// Kernel struct member offsets, in bytes, read from the running kernel's BTF by userspace.
/// The kernel programs never hard-code a layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.files`
    pub task_files: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.pid`
    pub task_pid: u32,
    /// `task_struct.comm`
    pub task_comm: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.max_fds`
    pub fdtable_max_fds: u32,
    /// `fdtable.fd`
    pub fdtable_fd: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `file.private_data`
    pub file_private_data: u32,
    /// `inode.i_mode`
    pub inode_mode: u32,
    /// `inode.i_ino`
    pub inode_ino: u32,
    /// `socket.type`
    pub socket_type: u32,
    /// `socket.sk`
    pub socket_sk: u32,
    /// `socket_alloc.vfs_inode` (the inode that follows a `struct socket`)
    pub socket_alloc_inode: u32,
    /// `sock.sk_socket`
    pub sock_socket: u32,
    /// `sock.__sk_common.skc_family`
    pub skc_family: u32,
    /// `sock.__sk_common.skc_num` (local port, host order)
    pub skc_num: u32,
    /// `sock.__sk_common.skc_dport` (remote port, network order)
    pub skc_dport: u32,
    /// `sock.__sk_common.skc_rcv_saddr`
    pub skc_rcv_saddr: u32,
    /// `sock.__sk_common.skc_daddr`
    pub skc_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr`
    pub skc_v6_rcv_saddr: u32,
    /// `sock.__sk_common.skc_v6_daddr`
    pub skc_v6_daddr: u32,
    /// `unix_sock.peer`
    pub unix_peer: u32,
    /// `tcp_sock.write_seq`
    pub tcp_write_seq: u32,
    /// `tcp_sock.copied_seq`
    pub tcp_copied_seq: u32,
    /// `tcp_sock.rcv_nxt`
    pub tcp_rcv_nxt: u32,
    /// `sock.sk_protocol`
    pub sock_protocol: u32,
    /// `pt_regs` slot of a syscall's first argument (x86-64 `di`, arm64 `orig_x0`).
    pub regs_arg0: u32,
    /// `pt_regs` slot of the second argument (x86-64 `si`, arm64 `regs[1]`).
    pub regs_arg1: u32,
    /// `pt_regs` slot of the third argument (x86-64 `dx`, arm64 `regs[2]`).
    pub regs_arg2: u32,
    /// `pt_regs` slot holding the syscall number at exit (x86-64 `orig_ax`, arm64 `syscallno`).
    pub regs_syscall_nr: u32,
    /// `sock.__sk_common.skc_net` (a `possible_net_t` whose first member is the `struct net *`);
    /// `u32::MAX` on kernels without network namespaces (every socket then has netns 0).
    pub skc_net: u32,
    /// `net.ns.inum`.
    pub net_ns_inum: u32,
    /// `pt_regs` slot of the user stack pointer at a uprobe (x86-64 `sp`, arm64 `sp`).
    pub regs_sp: u32,
    /// Bytes above the stack pointer before the first stack argument at a function's entry
    /// (x86-64: 8, the return address; arm64: 0).
    pub stack_arg_skip: u32,
    /// Reserved, zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 36 * 4);

/// Value of the single [`MAP_CONFIG`] entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Bytes of payload to copy per syscall (at most [`MAX_PAYLOAD`]).
    pub payload_cap: u32,
    /// 1 once userspace has filled this entry; the programs do nothing while it is 0.
    pub ready: u32,
    /// 1 to report every `execve` on the host (needed to match command-line patterns), else 0.
    pub exec_events: u32,
    /// Offset of `group_dead` in the `sched:sched_process_exit` tracepoint record, from its
    /// format file; 0 when the kernel has no such field (then a process counts as gone when
    /// its leader thread exits).
    pub exit_group_dead_off: u32,
    /// Kernel layouts.
    pub offsets: KernelOffsets,
}
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 16 + 36 * 4);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], contain only integers and byte arrays, and have no
    // padding the kernel could leave uninitialised that userspace would interpret.
    unsafe impl aya::Pod for super::TargetInfo {}
    unsafe impl aya::Pod for super::InFlight {}
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::UprobeKey {}
    unsafe impl aya::Pod for super::UprobeInflight {}
    unsafe impl aya::Pod for super::GpuStreamKey {}
    unsafe impl aya::Pod for super::GpuLaunches {}
}
