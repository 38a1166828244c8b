//! CUDA driver and runtime calls (uprobes on `libcuda.so.1` and `libcudart.so`), in their own
//! ring (`GPU_EVENTS`) so that a launch storm never crowds out socket events:
//!
//! * `uprobe_gpu_launch` — kernel launches (`cuLaunchKernel[Ex]`, `cudaLaunchKernel*`, and the
//!   `_ptsz` variants) write no record: each adds one to its (process, stream) counter in
//!   `GPU_LAUNCHES`;
//! * `uprobe_gpu_call` / `uretprobe_gpu_call` — the calls that bound GPU work (graph launch,
//!   async copy, event record, synchronizes, stream wait) write one `GpuCallEvent`, at the
//!   return for synchronizes (their return time is the fact), carrying the stream handle and
//!   the launches taken from its counter at entry.
//!
//! NCCL calls (uprobes on `libnccl.so`) share these two programs: their records are
//! [`EventKind::NcclCall`] (the kind follows the hook id), their launch key (API 2) never has
//! launches, and an init's new communicator handle is read at its return from the pointer
//! argument the cookie names ([`uprobe_cookie::out`]).
//!
//! The attach cookie names the hook and where its stream handle is
//! ([`inferscope_common::stream_at`]); userspace decodes the other arguments per hook.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use inferscope_common::{
    gpu_api, gpu_kind, uprobe_cookie, GpuCallEvent, GpuLaunches, GpuStreamKey, UprobeInflight,
};

use crate::uprobes::{call_event, cookie, save_entry, save_inflight, take_inflight};
use crate::{config, count_loss, is_target, ru, BPF_RB_NO_WAKEUP, GPU_EVENTS, GPU_LAUNCHES};

/// The stream handle of a call, from where its cookie says ([`inferscope_common::stream_at`]).
#[inline(always)]
fn stream_of(loc: u8, saved: &UprobeInflight) -> u64 {
    match loc {
        1 => saved.args[0],
        2 => saved.args[1],
        3 => saved.args[2],
        4 => saved.args[3],
        5 => saved.args[4],
        6 => saved.args[5],
        8 => saved.stack[0],
        9 => saved.stack[1],
        10 => saved.stack[2],
        11 => saved.stack[3],
        16..=31 if saved.args[0] != 0 => {
            ru::<u64>(saved.args[0] + 8 * (loc as u64 - 16)).unwrap_or(0)
        }
        _ => 0,
    }
}

#[inline(always)]
fn stream_key(pid_tgid: u64, hook: u32, stream: u64) -> GpuStreamKey {
    GpuStreamKey {
        tgid: (pid_tgid >> 32) as u32,
        api: gpu_api(hook),
        stream,
    }
}

/// A kernel launch: one more on its (process, stream).
#[uprobe]
pub fn uprobe_gpu_launch(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    let saved = save_entry(&ctx, cfg);
    let c = cookie(&ctx);
    let hook = (c & uprobe_cookie::HOOK_MASK) as u32;
    let key = stream_key(pid_tgid, hook, stream_of(uprobe_cookie::stream(c), &saved));
    match GPU_LAUNCHES.get_ptr_mut(&key) {
        // SAFETY: a valid map value. Not atomic (the BPF target has no 64-bit atomics in
        // `core`): launches on one stream come from the thread that owns it, so two CPUs
        // adding at once is rare, and would lose one count, never corrupt the map.
        Some(n) => unsafe { (*n).count += 1 },
        None => {
            let first = GpuLaunches {
                count: 1,
                first_ns: saved.start_ns,
            };
            let _ = GPU_LAUNCHES.insert(&key, &first, 0);
        }
    }
    0
}

/// Entry of a boundary call: its stream and the launches on it so far are taken now.
#[uprobe]
pub fn uprobe_gpu_call(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    let c = cookie(&ctx);
    let hook = (c & uprobe_cookie::HOOK_MASK) as u32;
    let mut saved = save_entry(&ctx, cfg);
    let loc = uprobe_cookie::stream(c);
    if loc != 0 {
        saved.stream = stream_of(loc, &saved);
        let key = stream_key(pid_tgid, hook, saved.stream);
        // SAFETY: the value is copied out before the entry is removed.
        if let Some(n) = unsafe { GPU_LAUNCHES.get(&key) } {
            saved.launches = n.count;
            saved.first_launch_ns = n.first_ns;
            let _ = GPU_LAUNCHES.remove(&key);
        }
    }
    if c & uprobe_cookie::PAIRED != 0 {
        save_inflight(pid_tgid, hook, &saved);
        return 0;
    }
    emit(pid_tgid, hook, 0, 0, 0, &saved);
    0
}

/// Return of a boundary call whose entry was saved.
#[uretprobe]
pub fn uretprobe_gpu_call(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let c = cookie(&ctx);
    let hook = (c & uprobe_cookie::HOOK_MASK) as u32;
    let Some(saved) = take_inflight(pid_tgid, hook) else {
        return 0;
    };
    let out = match uprobe_cookie::out(c) {
        Some(r) => out_at(r, &saved),
        None => 0,
    };
    emit(pid_tgid, hook, 1, ctx.ret::<u64>(), out, &saved);
    0
}

/// The 8 bytes argument register `reg` pointed to at the entry (0 when unreadable).
#[inline(always)]
fn out_at(reg: u8, saved: &UprobeInflight) -> u64 {
    let ptr = match reg {
        0 => saved.args[0],
        1 => saved.args[1],
        2 => saved.args[2],
        3 => saved.args[3],
        4 => saved.args[4],
        _ => saved.args[5],
    };
    if ptr == 0 {
        return 0;
    }
    ru::<u64>(ptr).unwrap_or(0)
}

#[inline(always)]
fn emit(pid_tgid: u64, hook: u32, paired: u32, ret: u64, out: u64, saved: &UprobeInflight) {
    let kind = gpu_kind(hook);
    let ev = GpuCallEvent {
        call: call_event(kind, pid_tgid, hook, paired, ret, saved),
        stream: saved.stream,
        launches: saved.launches,
        first_launch_ns: saved.first_launch_ns,
        out,
    };
    if GPU_EVENTS
        .output::<GpuCallEvent>(&ev, BPF_RB_NO_WAKEUP)
        .is_err()
    {
        count_loss(kind);
    }
}
