//! inferscope kernel programs, one module per hook family:
//!
//! * [`sockets`] — the socket syscalls, hooked either by raw `sys_enter` / `sys_exit`
//!   tracepoints (one pair for all syscalls, dispatching on the number through `SYSCALLS`) or
//!   by the classic `sys_enter_*` / `sys_exit_*` tracepoints (a pair per syscall): filter by the
//!   target set at entry, save the arguments, and at exit resolve the fd to its socket, copy the
//!   first bytes of the payload and emit one `SockEvent` per syscall that moved data (or
//!   accepted, connected, closed).
//! * [`arrivals`] — `sk_data_ready`: wire-side arrival times on watched (netns, port) pairs.
//! * [`process`] — `sched_process_fork` / `sched_process_exec` raw tracepoints and the
//!   `sched_process_exit` tracepoint keep the target set current: children of targets are
//!   added synchronously at fork, exited processes removed, and execs reported for pattern
//!   matching in userspace.
//! * [`uprobes`] — one generic entry and one generic return program for every user-space hook
//!   of the engine libraries: the attach cookie names the hook, the record carries the argument
//!   registers and the first stack words, userspace decodes per hook.
//! * [`gpu`] — CUDA driver and runtime calls on the same pattern, in a ring of their own:
//!   kernel launches only counted per (process, stream), boundary calls recorded with the count.
//!
//! Kernel layouts come from [`ProbeConfig::offsets`], filled by userspace from BTF; nothing here
//! hard-codes a struct offset. Events are written without a wakeup (`BPF_RB_NO_WAKEUP`): the
//! reader polls. A full ring increments the per-kind counter in `LOSS`; anything else dropped
//! (a full map, an evicted entry) increments its `DROPS` slot.
#![no_std]
#![no_main]

mod arrivals;
mod gpu;
mod process;
mod sockets;
mod uprobes;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use inferscope_common::{
    DropReason, EventHeader, EventKind, GpuLaunches, GpuStreamKey, InFlight, ProbeConfig,
    SockEvent, TargetInfo, UprobeInflight, UprobeKey, DROP_SLOTS, LOSS_SLOTS, MAX_GPU_STREAMS,
    MAX_INFLIGHT, MAX_PAYLOAD, MAX_SYSCALL_NR, MAX_TARGETS, MAX_UPROBE_INFLIGHT, MAX_WATCH_PORTS,
};

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);
#[map]
static TARGETS: HashMap<u32, TargetInfo> = HashMap::with_max_entries(MAX_TARGETS, 0);
#[map]
static CONFIG: Array<ProbeConfig> = Array::with_max_entries(1, 0);
#[map]
static LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_SLOTS, 0);
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_SLOTS, 0);
#[map]
static INFLIGHT: LruHashMap<u64, InFlight> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);
#[map]
static UPROBE_INFLIGHT: LruHashMap<UprobeKey, UprobeInflight> =
    LruHashMap::with_max_entries(MAX_UPROBE_INFLIGHT, 0);
#[map]
static WATCH_PORTS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_WATCH_PORTS, 0);
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SYSCALLS: Array<u32> = Array::with_max_entries(MAX_SYSCALL_NR, 0);
#[map]
static GPU_EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);
#[map]
static GPU_LAUNCHES: LruHashMap<GpuStreamKey, GpuLaunches> =
    LruHashMap::with_max_entries(MAX_GPU_STREAMS, 0);

/// A [`SockEvent`] followed by slack, so that a bounded copy at a masked offset inside `payload`
/// provably stays inside the map value.
#[repr(C)]
struct Scratch {
    ev: SockEvent,
    _slack: [u8; MAX_PAYLOAD],
}

const BPF_RB_NO_WAKEUP: u64 = 1;

#[inline(always)]
fn config() -> Option<&'static ProbeConfig> {
    let c = CONFIG.get(0)?;
    if c.ready == 0 {
        return None;
    }
    Some(c)
}

#[inline(always)]
fn count_loss(kind: EventKind) {
    if let Some(p) = LOSS.get_ptr_mut(kind as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn count_drop(reason: DropReason) {
    if let Some(p) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn header(kind: EventKind, pid_tgid: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        // SAFETY: helper without arguments.
        cpu: unsafe { generated::bpf_get_smp_processor_id() },
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// Reads a kernel value at `addr`; `None` on fault.
#[inline(always)]
fn rk<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a fault returns an error.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(addr as *const T).ok() }
}

/// Reads a user value at `addr`; `None` on fault.
#[inline(always)]
fn ru<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user checks the address; a fault returns an error.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(addr as *const T).ok() }
}

#[inline(always)]
fn is_target(tgid: u32) -> bool {
    // SAFETY: the value is only read.
    unsafe { TARGETS.get(&tgid).is_some() }
}

/// Network namespace inode of `struct sock` at `sk` (0 when the kernel has none).
#[inline(always)]
fn sock_netns(cfg: &ProbeConfig, sk: u64) -> u32 {
    let o = &cfg.offsets;
    if o.skc_net == u32::MAX {
        return 0;
    }
    let Some(net) = rk::<u64>(sk + o.skc_net as u64) else {
        return 0;
    };
    if net == 0 {
        return 0;
    }
    rk::<u32>(net + o.net_ns_inum as u64).unwrap_or(0)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
