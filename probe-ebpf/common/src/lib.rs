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

/// `local port -> 1`: TCP ports on which data arrivals are timestamped ([`EventKind::SockArrival`]).
pub const MAP_WATCH_PORTS: &str = "WATCH_PORTS";
/// Array `syscall number -> SyscallId value` (0: not traced), read by the raw `sys_enter` /
/// `sys_exit` programs. Userspace fills it with the host architecture's numbers.
pub const MAP_SYSCALLS: &str = "SYSCALLS";
/// Capacity of [`MAP_SYSCALLS`]: syscall numbers at or above it are never traced.
pub const MAX_SYSCALL_NR: u32 = 512;

/// Capacity of [`MAP_WATCH_PORTS`].
pub const MAX_WATCH_PORTS: u32 = 256;

/// Slots in [`MAP_LOSS`]; every [`EventKind`] value is below this.
pub const LOSS_SLOTS: u32 = 32;
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
            _ => return None,
        })
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
    /// Reserved, zero.
    pub _pad: u32,
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
    /// Reserved, zero.
    pub _pad2: u32,
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
    /// Reserved, zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 32 * 4);

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
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 16 + 32 * 4);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], contain only integers and byte arrays, and have no
    // padding the kernel could leave uninitialised that userspace would interpret.
    unsafe impl aya::Pod for super::TargetInfo {}
    unsafe impl aya::Pod for super::InFlight {}
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}
