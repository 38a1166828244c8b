//! User-space calls: one generic entry program (`uprobe_call`) and one generic return program
//! (`uretprobe_call`) serve every uprobe hook of node-probe's hook table. The attach cookie
//! carries the hook id and whether a return probe completes the call
//! ([`inferscope_common::uprobe_cookie`]). The record holds the argument registers and the first
//! stack words at entry (arguments passed by value in memory, such as llama.cpp's `llama_batch`,
//! live there); userspace decodes them per hook.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use inferscope_common::{
    uprobe_cookie, DropReason, EventKind, ProbeConfig, UprobeEvent, UprobeInflight, UprobeKey,
    UPROBE_ARGS, UPROBE_STACK_WORDS,
};

use crate::{
    config, count_drop, count_loss, header, is_target, rk, ru, BPF_RB_NO_WAKEUP, EVENTS,
    UPROBE_INFLIGHT,
};

#[inline(always)]
pub(crate) fn cookie(ctx: &impl EbpfContext) -> u64 {
    // SAFETY: the helper reads the cookie of the link this program runs for.
    unsafe { generated::bpf_get_attach_cookie(ctx.as_ptr()) }
}

/// Entry of a hooked function.
#[uprobe]
pub fn uprobe_call(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    let c = cookie(&ctx);
    let hook = (c & uprobe_cookie::HOOK_MASK) as u32;
    let saved = save_entry(&ctx, cfg);
    if c & uprobe_cookie::PAIRED != 0 {
        save_inflight(pid_tgid, hook, &saved);
        return 0;
    }
    emit(pid_tgid, hook, 0, 0, &saved);
    0
}

/// The entry time, argument registers and first stack words of a call.
#[inline(always)]
pub(crate) fn save_entry(ctx: &ProbeContext, cfg: &ProbeConfig) -> UprobeInflight {
    let mut saved = UprobeInflight {
        // SAFETY: helper without arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        args: [0; UPROBE_ARGS],
        stack: [0; UPROBE_STACK_WORDS],
        stream: 0,
        launches: 0,
        first_launch_ns: 0,
    };
    for i in 0..UPROBE_ARGS {
        saved.args[i] = ctx.arg::<u64>(i).unwrap_or(0);
    }
    let o = &cfg.offsets;
    let sp = rk::<u64>(ctx.regs as u64 + o.regs_sp as u64).unwrap_or(0);
    if sp != 0 {
        let first = sp + o.stack_arg_skip as u64;
        for i in 0..UPROBE_STACK_WORDS {
            saved.stack[i] = ru::<u64>(first + 8 * i as u64).unwrap_or(0);
        }
    }
    saved
}

/// Keeps a call's entry for its return probe.
#[inline(always)]
pub(crate) fn save_inflight(pid_tgid: u64, hook: u32, saved: &UprobeInflight) {
    let key = UprobeKey {
        pid_tgid,
        hook,
        _pad: 0,
    };
    let _ = UPROBE_INFLIGHT.insert(&key, saved, 0);
}

/// Takes the entry saved for this thread's call of `hook` (counting a missing one).
#[inline(always)]
pub(crate) fn take_inflight(pid_tgid: u64, hook: u32) -> Option<UprobeInflight> {
    let key = UprobeKey {
        pid_tgid,
        hook,
        _pad: 0,
    };
    // SAFETY: the value is copied out before the entry is removed.
    let saved = match unsafe { UPROBE_INFLIGHT.get(&key) } {
        Some(s) => *s,
        None => {
            if is_target((pid_tgid >> 32) as u32) {
                count_drop(DropReason::UprobeInflightMissing);
            }
            return None;
        }
    };
    let _ = UPROBE_INFLIGHT.remove(&key);
    Some(saved)
}

/// Return of a hooked function whose entry was saved.
#[uretprobe]
pub fn uretprobe_call(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let hook = (cookie(&ctx) & uprobe_cookie::HOOK_MASK) as u32;
    let Some(saved) = take_inflight(pid_tgid, hook) else {
        return 0;
    };
    emit(pid_tgid, hook, 1, ctx.ret::<u64>(), &saved);
    0
}

/// The record of a call.
#[inline(always)]
pub(crate) fn call_event(
    kind: EventKind,
    pid_tgid: u64,
    hook: u32,
    paired: u32,
    ret: u64,
    saved: &UprobeInflight,
) -> UprobeEvent {
    UprobeEvent {
        header: header(kind, pid_tgid),
        hook,
        paired,
        start_ns: saved.start_ns,
        ret,
        args: saved.args,
        stack: saved.stack,
    }
}

#[inline(always)]
fn emit(pid_tgid: u64, hook: u32, paired: u32, ret: u64, saved: &UprobeInflight) {
    let ev = call_event(EventKind::UprobeCall, pid_tgid, hook, paired, ret, saved);
    if EVENTS.output::<UprobeEvent>(&ev, BPF_RB_NO_WAKEUP).is_err() {
        count_loss(EventKind::UprobeCall);
    }
}
