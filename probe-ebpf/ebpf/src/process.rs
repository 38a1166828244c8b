//! Process lifecycle: the target set follows forks, execs and exits in the kernel.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use inferscope_common::{DropReason, EventKind, ProcEvent, TargetInfo, TargetReason};

use crate::{
    config, count_drop, count_loss, header, is_target, rk, BPF_RB_NO_WAKEUP, EVENTS, TARGETS,
};

#[inline(always)]
fn emit_proc(kind: EventKind, pid_tgid: u64, tgid: u32, parent_tgid: u32, comm: [u8; 16]) {
    let mut h = header(kind, pid_tgid);
    h.tgid = tgid;
    let ev = ProcEvent {
        header: h,
        parent_tgid,
        exit_code: 0,
        comm,
    };
    if EVENTS.output::<ProcEvent>(&ev, BPF_RB_NO_WAKEUP).is_err() {
        count_loss(kind);
    }
}

/// `sched_process_fork(parent, child)`: a new process (not a thread) forked by a target that
/// follows children joins the target set before it can run.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let parent = (pid_tgid >> 32) as u32;
    // SAFETY: the value is copied.
    let Some(info) = (unsafe { TARGETS.get(&parent) }).copied() else {
        return 0;
    };
    if info.follow_children == 0 {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    let child: u64 = ctx.arg(1);
    let tgid = rk::<u32>(child + cfg.offsets.task_tgid as u64).unwrap_or(0);
    let pid = rk::<u32>(child + cfg.offsets.task_pid as u64).unwrap_or(0);
    if tgid == 0 || tgid != pid {
        return 0;
    }
    let v = TargetInfo {
        reason: TargetReason::Child as u32,
        follow_children: 1,
    };
    if TARGETS.insert(&tgid, &v, 0).is_err() {
        count_drop(DropReason::TargetsFull);
    }
    let comm = rk::<[u8; 16]>(child + cfg.offsets.task_comm as u64).unwrap_or([0; 16]);
    emit_proc(EventKind::ProcFork, pid_tgid, tgid, parent, comm);
    0
}

/// `sched_process_exec`: reported for targets always, for every process when userspace matches
/// command-line patterns.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(cfg) = config() else { return 0 };
    if cfg.exec_events == 0 && !is_target(tgid) {
        return 0;
    }
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    emit_proc(EventKind::ProcExec, pid_tgid, tgid, 0, comm);
    0
}

/// `sched_process_exit`: a target whose thread group is dead leaves the target set.
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_target(tgid) {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    let dead = if cfg.exit_group_dead_off != 0 {
        // SAFETY: offset read from this kernel's tracepoint format.
        unsafe {
            ctx.read_at::<u8>(cfg.exit_group_dead_off as usize)
                .unwrap_or(0)
                != 0
        }
    } else {
        tgid == pid_tgid as u32
    };
    if !dead {
        return 0;
    }
    let _ = TARGETS.remove(&tgid);
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    emit_proc(EventKind::ProcExit, pid_tgid, tgid, 0, comm);
    0
}
