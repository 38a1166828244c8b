//! Socket syscalls: entry saves the arguments of a target's call, exit resolves the fd to its
//! socket, copies the payload prefix and writes one `SockEvent`.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use inferscope_common::{
    BufferShape, DropReason, EventKind, InFlight, KernelOffsets, SockEvent, SockInfo, SyscallId,
    AF_INET, AF_INET6, AF_UNIX, MAX_IOV, MAX_PAYLOAD, MAX_SYSCALL_NR,
};

use crate::{
    config, count_drop, count_loss, header, is_target, rk, ru, sock_netns, Scratch,
    BPF_RB_NO_WAKEUP, EVENTS, INFLIGHT, SCRATCH, SYSCALLS,
};

const EAGAIN: i64 = 11;
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: u16 = 1;
/// Offset of the first syscall argument in a `sys_enter_*` record (and of `ret` in `sys_exit_*`).
const TP_ARG0: usize = 16;

/// The first three arguments of a syscall, read from a `sys_enter_*` record.
#[inline(always)]
fn tp_args(ctx: &TracePointContext) -> (u64, u64, u64) {
    // SAFETY: offsets inside the sys_enter record (checked by the tracepoint's format).
    unsafe {
        (
            ctx.read_at::<u64>(TP_ARG0).unwrap_or(u64::MAX),
            ctx.read_at::<u64>(TP_ARG0 + 8).unwrap_or(0),
            ctx.read_at::<u64>(TP_ARG0 + 16).unwrap_or(0),
        )
    }
}

/// Saves a target's socket-syscall arguments for its exit.
#[inline(always)]
fn on_enter(pid_tgid: u64, sc: SyscallId, (fd, a1, a2): (u64, u64, u64)) {
    let f = InFlight {
        // SAFETY: helper without arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        buf: a1,
        len: a2,
        syscall: sc as u32,
        fd: fd as i32,
    };
    let _ = INFLIGHT.insert(&pid_tgid, &f, 0);
}

/// Emits the event of a syscall whose entry was saved; `ret` is its return value.
#[inline(always)]
fn on_exit(ret: i64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let f = match unsafe { INFLIGHT.get(&pid_tgid) } {
        Some(f) => *f,
        None => {
            // Only a target's syscalls are saved: a target without its entry lost it.
            if is_target((pid_tgid >> 32) as u32) {
                count_drop(DropReason::InflightMissing);
            }
            return 0;
        }
    };
    let _ = INFLIGHT.remove(&pid_tgid);
    if ret == -EAGAIN {
        return 0;
    }
    let Some(sc) = SyscallId::from_u32(f.syscall) else {
        return 0;
    };
    let (kind, fd, aux_fd) = match sc {
        SyscallId::Accept | SyscallId::Accept4 => {
            if ret < 0 {
                return 0;
            }
            (EventKind::SockAccept, ret as i32, f.fd)
        }
        SyscallId::Connect => (EventKind::SockConnect, f.fd, -1),
        SyscallId::Read | SyscallId::Readv | SyscallId::Recvfrom | SyscallId::Recvmsg => {
            (EventKind::SockRecv, f.fd, -1)
        }
        SyscallId::Write | SyscallId::Writev | SyscallId::Sendto | SyscallId::Sendmsg => {
            (EventKind::SockSend, f.fd, -1)
        }
        SyscallId::Close => return 0,
    };
    emit_sock(
        kind, sc, pid_tgid, f.start_ns, fd, aux_fd, ret, f.buf, f.len,
    );
    0
}

/// Builds the event in the per-CPU scratch and copies its used part to the ring.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit_sock(
    kind: EventKind,
    sc: SyscallId,
    pid_tgid: u64,
    start_ns: u64,
    fd: i32,
    aux_fd: i32,
    ret: i64,
    buf: u64,
    len: u64,
) {
    let Some(cfg) = config() else { return };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, exclusively ours for the duration of this program.
    let ev = unsafe { &mut (*scratch).ev };
    let Some(sk) = resolve_sock(&cfg.offsets, fd, &mut ev.sock) else {
        return;
    };
    if sk != 0 {
        ev.sock.netns = sock_netns(cfg, sk);
    }
    if sk != 0
        && ev.sock.sock_type == SOCK_STREAM
        && (ev.sock.family == AF_INET || ev.sock.family == AF_INET6)
    {
        // Sequence number after the syscall: send -> write_seq, receive -> copied_seq.
        let off = match kind {
            EventKind::SockSend => cfg.offsets.tcp_write_seq,
            _ => cfg.offsets.tcp_copied_seq,
        };
        ev.sock.tcp_seq = rk::<u32>(sk + off as u64).unwrap_or(0);
    }
    ev.header = header(kind, pid_tgid);
    ev.start_ns = start_ns;
    ev.ret = ret;
    ev.syscall = sc as u32;
    ev.fd = fd;
    ev.aux_fd = aux_fd;
    ev.payload_len = 0;
    if ret > 0 {
        let cap = if cfg.payload_cap as usize > MAX_PAYLOAD {
            MAX_PAYLOAD as u64
        } else {
            cfg.payload_cap as u64
        };
        let want = if (ret as u64) < cap { ret as u64 } else { cap };
        ev.payload_len = copy_payload(scratch, sc.buffer_shape(), buf, len, want);
    }
    let mut size = SockEvent::FIXED_SIZE + ev.payload_len as usize;
    if size > core::mem::size_of::<SockEvent>() {
        size = core::mem::size_of::<SockEvent>();
    }
    // SAFETY: `size` is bounded by the size of the event, which lives in the map value.
    let bytes = unsafe { core::slice::from_raw_parts(scratch as *const u8, size) };
    if EVENTS.output::<[u8]>(bytes, BPF_RB_NO_WAKEUP).is_err() {
        count_loss(kind);
    }
}

/// Copies up to `want` bytes of user data into `scratch.ev.payload`; returns the count copied.
#[inline(always)]
fn copy_payload(scratch: *mut Scratch, shape: BufferShape, buf: u64, len: u64, want: u64) -> u32 {
    // SAFETY: the payload array followed by the slack is inside the map value.
    let base = unsafe { (*scratch).ev.payload.as_mut_ptr() };
    match shape {
        BufferShape::Flat => {
            // `ret` can exceed the buffer (recv with MSG_TRUNC returns the datagram's length):
            // never read past what the caller passed.
            let n = bound(if len < want { len } else { want });
            // SAFETY: n <= MAX_PAYLOAD, destination is the payload array.
            let r =
                unsafe { generated::bpf_probe_read_user(base.cast(), n as u32, buf as *const _) };
            if r == 0 {
                n as u32
            } else {
                0
            }
        }
        BufferShape::Iovec => copy_iov(base, buf, len, want),
        BufferShape::Msghdr => {
            // struct user_msghdr { void *msg_name; int msg_namelen; struct iovec *msg_iov;
            //                      size_t msg_iovlen; ... }: a stable user ABI.
            let iov = ru::<u64>(buf + 16).unwrap_or(0);
            let cnt = ru::<u64>(buf + 24).unwrap_or(0);
            copy_iov(base, iov, cnt, want)
        }
        BufferShape::None => 0,
    }
}

#[inline(always)]
fn bound(n: u64) -> u64 {
    if n > MAX_PAYLOAD as u64 {
        MAX_PAYLOAD as u64
    } else {
        n
    }
}

#[inline(always)]
fn copy_iov(base: *mut u8, iov: u64, cnt: u64, want: u64) -> u32 {
    let mut off: u64 = 0;
    for i in 0..MAX_IOV as u64 {
        if i >= cnt || off >= want {
            break;
        }
        let Some(ibase) = ru::<u64>(iov + i * 16) else {
            break;
        };
        let Some(ilen) = ru::<u64>(iov + i * 16 + 8) else {
            break;
        };
        let rest = want - off;
        let n = bound(if ilen < rest { ilen } else { rest });
        let o = off & (MAX_PAYLOAD as u64 - 1);
        // SAFETY: o < MAX_PAYLOAD and n <= MAX_PAYLOAD; the slack after the payload array
        // covers o + n <= 2 * MAX_PAYLOAD.
        let r = unsafe {
            generated::bpf_probe_read_user(base.add(o as usize).cast(), n as u32, ibase as *const _)
        };
        if r != 0 {
            break;
        }
        off += n;
    }
    if cnt > MAX_IOV as u64 && off < want {
        count_drop(DropReason::IovecsTruncated);
    }
    bound(off) as u32
}

/// Resolves `fd` of the current task to its socket and fills `out`; returns the `struct sock`
/// address (0 when the socket has none), or `None` when `fd` is not a socket.
#[inline(always)]
fn resolve_sock(o: &KernelOffsets, fd: i32, out: &mut SockInfo) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    // SAFETY: helper without arguments.
    let task = unsafe { generated::bpf_get_current_task() };
    let Some(files) = rk::<u64>(task + o.task_files as u64) else {
        return None;
    };
    let Some(fdt) = rk::<u64>(files + o.files_fdt as u64) else {
        return None;
    };
    let max_fds = rk::<u32>(fdt + o.fdtable_max_fds as u64).unwrap_or(0);
    if fd as u32 >= max_fds {
        return None;
    }
    let Some(fd_array) = rk::<u64>(fdt + o.fdtable_fd as u64) else {
        return None;
    };
    let Some(file) = rk::<u64>(fd_array + (fd as u64) * 8) else {
        return None;
    };
    if file == 0 {
        return None;
    }
    let inode = rk::<u64>(file + o.file_inode as u64).unwrap_or(0);
    let mode = rk::<u16>(inode + o.inode_mode as u64).unwrap_or(0);
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let Some(socket) = rk::<u64>(file + o.file_private_data as u64) else {
        return None;
    };
    let sk = rk::<u64>(socket + o.socket_sk as u64).unwrap_or(0);
    out.inode = rk::<u64>(inode + o.inode_ino as u64).unwrap_or(0);
    out.sock_type = rk::<u16>(socket + o.socket_type as u64).unwrap_or(0);
    out.family = 0;
    out.lport = 0;
    out.rport = 0;
    out.laddr = [0; 16];
    out.raddr = [0; 16];
    out.peer_inode = 0;
    out.tcp_seq = 0;
    out.netns = 0;
    if sk == 0 {
        return Some(0);
    }
    out.family = rk::<u16>(sk + o.skc_family as u64).unwrap_or(0);
    match out.family {
        AF_INET | AF_INET6 => {
            out.lport = rk::<u16>(sk + o.skc_num as u64).unwrap_or(0);
            out.rport = u16::from_be(rk::<u16>(sk + o.skc_dport as u64).unwrap_or(0));
            if out.family == AF_INET {
                let l = rk::<[u8; 4]>(sk + o.skc_rcv_saddr as u64).unwrap_or([0; 4]);
                let r = rk::<[u8; 4]>(sk + o.skc_daddr as u64).unwrap_or([0; 4]);
                out.laddr[..4].copy_from_slice(&l);
                out.raddr[..4].copy_from_slice(&r);
            } else {
                out.laddr = rk::<[u8; 16]>(sk + o.skc_v6_rcv_saddr as u64).unwrap_or([0; 16]);
                out.raddr = rk::<[u8; 16]>(sk + o.skc_v6_daddr as u64).unwrap_or([0; 16]);
            }
        }
        AF_UNIX => {
            let peer = rk::<u64>(sk + o.unix_peer as u64).unwrap_or(0);
            if peer != 0 {
                let psock = rk::<u64>(peer + o.sock_socket as u64).unwrap_or(0);
                if psock != 0 {
                    out.peer_inode =
                        rk::<u64>(psock + o.socket_alloc_inode as u64 + o.inode_ino as u64)
                            .unwrap_or(0);
                }
            }
        }
        _ => {}
    }
    Some(sk)
}

// Two ways to hook the same syscalls, chosen by userspace (`--syscall-hook`): one pair of
// classic `syscalls:sys_{enter,exit}_*` tracepoints per syscall, or one raw `sys_enter` /
// `sys_exit` pair for all syscalls that looks the number up in `SYSCALLS`. Both feed the same
// `on_enter` / `on_exit` / `on_close`.

macro_rules! enter_exit {
    ($enter:ident, $exit:ident, $sc:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            let pid_tgid = bpf_get_current_pid_tgid();
            if is_target((pid_tgid >> 32) as u32) {
                on_enter(pid_tgid, $sc, tp_args(&ctx));
            }
            0
        }
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            // SAFETY: `ret` of the sys_exit record.
            on_exit(unsafe { ctx.read_at::<i64>(TP_ARG0).unwrap_or(0) })
        }
    };
}

enter_exit!(sys_enter_read, sys_exit_read, SyscallId::Read);
enter_exit!(sys_enter_write, sys_exit_write, SyscallId::Write);
enter_exit!(sys_enter_readv, sys_exit_readv, SyscallId::Readv);
enter_exit!(sys_enter_writev, sys_exit_writev, SyscallId::Writev);
enter_exit!(sys_enter_recvfrom, sys_exit_recvfrom, SyscallId::Recvfrom);
enter_exit!(sys_enter_sendto, sys_exit_sendto, SyscallId::Sendto);
enter_exit!(sys_enter_recvmsg, sys_exit_recvmsg, SyscallId::Recvmsg);
enter_exit!(sys_enter_sendmsg, sys_exit_sendmsg, SyscallId::Sendmsg);
enter_exit!(sys_enter_accept, sys_exit_accept, SyscallId::Accept);
enter_exit!(sys_enter_accept4, sys_exit_accept4, SyscallId::Accept4);
enter_exit!(sys_enter_connect, sys_exit_connect, SyscallId::Connect);

/// Does nothing. Attached in place of the socket programs (`--syscall-hook null`, for
/// benchmarks only), it measures what hooking the syscalls costs before any program work: the
/// floor under the target filter.
#[tracepoint]
pub fn sys_null(_ctx: TracePointContext) -> u32 {
    0
}

/// `close` is reported at entry, while the fd still names the socket.
#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_target((pid_tgid >> 32) as u32) {
        on_close(pid_tgid, tp_args(&ctx).0);
    }
    0
}

#[inline(always)]
fn on_close(pid_tgid: u64, fd: u64) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    emit_sock(
        EventKind::SockClose,
        SyscallId::Close,
        pid_tgid,
        now,
        fd as i32,
        -1,
        0,
        0,
        0,
    );
}

/// The traced syscall with number `nr`, if any.
#[inline(always)]
fn traced_syscall(nr: u64) -> Option<SyscallId> {
    if nr >= MAX_SYSCALL_NR as u64 {
        return None;
    }
    SyscallId::from_u32(*SYSCALLS.get(nr as u32)?)
}

/// Raw `sys_enter(regs, id)`: every syscall on the host passes here, so the untraced ones
/// leave after one array lookup, and non-targets after one more hash lookup.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn raw_sys_enter(ctx: RawTracePointContext) -> i32 {
    let Some(sc) = traced_syscall(ctx.arg::<u64>(1)) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    let regs: u64 = ctx.arg(0);
    let o = &cfg.offsets;
    let fd = rk::<u64>(regs + o.regs_arg0 as u64).unwrap_or(u64::MAX);
    if sc == SyscallId::Close {
        on_close(pid_tgid, fd);
    } else {
        let a1 = rk::<u64>(regs + o.regs_arg1 as u64).unwrap_or(0);
        let a2 = rk::<u64>(regs + o.regs_arg2 as u64).unwrap_or(0);
        on_enter(pid_tgid, sc, (fd, a1, a2));
    }
    0
}

/// Raw `sys_exit(regs, ret)`: the syscall number is read back from `regs`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn raw_sys_exit(ctx: RawTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let regs: u64 = ctx.arg(0);
    let Some(nr) = rk::<u64>(regs + cfg.offsets.regs_syscall_nr as u64) else {
        return 0;
    };
    // The low 32 bits: x86-64's `orig_ax` is a long, arm64's `syscallno` an int followed by
    // other fields.
    match traced_syscall(u64::from(nr as u32)) {
        None | Some(SyscallId::Close) => 0,
        Some(_) => on_exit(ctx.arg::<i64>(1)) as i32,
    }
}
