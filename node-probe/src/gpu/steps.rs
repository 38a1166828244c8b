//! GPU steps from the boundary calls of one process (and API), the way vLLM runs them on a GPU
//! (`../shared/notes/gpu.md` §1):
//!
//! * a step's **launch window** opens at its first launch or boundary call after the previous
//!   step's window closed, and closes at the **event record** that follows its device-to-host
//!   output copy;
//! * it is **done** when a synchronize on *the same event handle* returns. Async scheduling
//!   launches step N+1 before it waits for step N, so steps are paired with their waits by
//!   handle, never by order; a stream synchronize after the output copy (no event: the
//!   synchronous path) ends the open window at once;
//! * its **class** follows from its graph launches: one is a full-graph (uniform decode) step,
//!   several a piecewise (mixed, prefill) one, none with kernel launches an eager one.
//!
//! State per process is bounded: one open window and at most [`MAX_AWAITING`] steps awaiting
//! their synchronize (the oldest is given up, counted, beyond it).
use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use super::{Api, CopyKind, GpuCall, GpuOp, GpuRecord};

/// Steps whose launch window closed and whose synchronize has not returned yet, per process.
pub const MAX_AWAITING: usize = 16;
/// A synchronize that returned within this long waited for nothing: the step's completion time
/// is only an upper bound ([`GpuStep::sync_immediate`]).
pub const IMMEDIATE_SYNC_NS: u64 = 100_000;
/// A step whose host launch window lasted at least this share (in percent) of its GPU span was
/// paced by the host, not the GPU ([`GpuStep::host_bound`]).
pub const HOST_BOUND_PCT: u64 = 50;

/// How a step ran on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepClass {
    /// One CUDA graph launch: a uniform decode batch (full graph).
    FullGraph,
    /// Several graph launches with launches in between: mixed or prefill (piecewise graphs).
    Piecewise,
    /// No graph, kernels launched one by one (large batches, `--enforce-eager`).
    Eager,
}

/// One GPU step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuStep {
    /// Process.
    pub tgid: u32,
    /// The API its calls went through.
    pub api: Api,
    /// Per process, from 1.
    pub seq: u64,
    /// First launch or call of the window (monotonic ns).
    pub start_ns: u64,
    /// The event record that closed the window (or the stream synchronize's entry).
    pub launched_ns: u64,
    /// Return of the synchronize on its event: the output is on the host.
    pub end_ns: u64,
    /// The event handle (0 for a stream-synchronized step).
    pub event: u64,
    /// Graph launches, kernel launches and the class they give.
    pub graph_launches: u32,
    /// Kernel launches outside graphs (counted in the kernel).
    pub kernel_launches: u64,
    /// Class.
    pub class: StepClass,
    /// Device-to-host bytes (the output copy) and host-to-device bytes (inputs).
    pub dtoh_bytes: u64,
    /// Host-to-device bytes.
    pub htod_bytes: u64,
    /// How long the host waited in the synchronize.
    pub sync_wait_ns: u64,
    /// The synchronize returned at once: `end_ns` is an upper bound of the GPU's completion.
    pub sync_immediate: bool,
    /// The step's GPU span: from when the GPU could start it (its first launch, or the previous
    /// step's completion if later: one GPU runs one process's steps in order) to its
    /// completion. Under async scheduling consecutive spans tile the GPU's busy time, so their
    /// sum over a request's steps telescopes to two completion times.
    pub gpu_ns: u64,
    /// Host time spent launching it (`start_ns` → `launched_ns`).
    pub launch_ns: u64,
    /// The host's launches took at least [`HOST_BOUND_PCT`] % of the GPU span: the GPU was fed
    /// no faster than the host issued work (a CPU-bound step), and `gpu_ns` is an upper bound
    /// of the GPU's busy time.
    pub host_bound: bool,
    /// `gpu_ns` is only an upper bound: the step was host-bound, its synchronize found it done
    /// (its completion is earlier than `end_ns`), or it overlapped a previous step whose
    /// completion was not seen (its GPU start is unknown).
    pub upper_bound: bool,
}

/// The window being launched.
#[derive(Debug, Default, Clone)]
struct Window {
    start_ns: u64,
    graphs: u32,
    launches: u64,
    dtoh: u64,
    htod: u64,
    /// An output copy was queued: the next event record closes the window.
    copied: bool,
}

#[derive(Debug, Default)]
struct Proc {
    open: Option<Window>,
    awaiting: VecDeque<(u64, u64, Window)>,
    seq: u64,
    /// When the GPU is known to have finished this process's previous step: its completion,
    /// or its launch end when its synchronize waited for nothing (then it finished earlier).
    gpu_free_ns: u64,
    /// The previous step's synchronize return, and whether it was its completion.
    prev_end_ns: u64,
    prev_known: bool,
}

/// Counters of the step builder.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepStats {
    /// Steps completed.
    pub steps: u64,
    /// Steps given up waiting for their synchronize ([`MAX_AWAITING`] reached, or the process
    /// exited).
    pub abandoned: u64,
    /// Kernel launches made while their stream captured a graph (recorded, not run; not in
    /// any step).
    pub captured_launches: u64,
}

/// Builds [`GpuStep`]s per (process, API).
#[derive(Debug, Default)]
pub struct GpuSteps {
    procs: HashMap<(u32, Api), Proc>,
    /// Counters.
    pub stats: StepStats,
}

impl GpuSteps {
    /// A builder with nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one boundary call; completed steps go to `out`.
    pub fn on_call(&mut self, r: &GpuRecord, c: &GpuCall, out: &mut Vec<GpuStep>) {
        if c.op == GpuOp::CaptureEnd {
            // The launches it carries were captured into a graph, not run.
            self.stats.captured_launches += c.launches;
            return;
        }
        let p = self.procs.entry((r.call.tgid, c.api)).or_default();
        let at = r.call.start_ns;
        let launching = matches!(
            c.op,
            GpuOp::GraphLaunch { .. }
                | GpuOp::Memcpy { .. }
                | GpuOp::EventRecord { .. }
                | GpuOp::StreamWait { .. }
        );
        if c.launches > 0 || launching {
            let first = if r.first_launch_ns > 0 {
                r.first_launch_ns
            } else {
                at
            };
            let w = p.open.get_or_insert_with(|| Window {
                start_ns: first,
                ..Window::default()
            });
            w.start_ns = w.start_ns.min(first);
            w.launches += c.launches;
        }
        match c.op {
            GpuOp::GraphLaunch { .. } => Self::window(p).graphs += 1,
            GpuOp::Memcpy { kind, bytes } => {
                let w = Self::window(p);
                match kind {
                    CopyKind::DeviceToHost => {
                        w.dtoh += bytes;
                        w.copied = true;
                    }
                    CopyKind::HostToDevice => w.htod += bytes,
                    _ => {}
                }
            }
            GpuOp::EventRecord { event, .. } if p.open.as_ref().is_some_and(|w| w.copied) => {
                let w = p.open.take().expect("open");
                if p.awaiting.len() >= MAX_AWAITING {
                    p.awaiting.pop_front();
                    self.stats.abandoned += 1;
                }
                p.awaiting.push_back((event, at, w));
            }
            GpuOp::EventSync { event } => {
                if let Some(i) = p.awaiting.iter().position(|a| a.0 == event) {
                    let (ev, launched, w) = p.awaiting.remove(i).expect("present");
                    out.push(p.complete(r, c.api, ev, launched, w));
                    self.stats.steps += 1;
                }
            }
            GpuOp::StreamSync if p.open.as_ref().is_some_and(|w| w.copied) => {
                let w = p.open.take().expect("open");
                out.push(p.complete(r, c.api, 0, at, w));
                self.stats.steps += 1;
            }
            _ => {}
        }
    }

    fn window(p: &mut Proc) -> &mut Window {
        p.open.get_or_insert_with(Window::default)
    }

    /// The process exited: steps still waiting are given up.
    pub fn forget(&mut self, tgid: u32) {
        let gone: Vec<_> = self.procs.keys().filter(|k| k.0 == tgid).copied().collect();
        for k in gone {
            if let Some(p) = self.procs.remove(&k) {
                self.stats.abandoned += p.awaiting.len() as u64;
            }
        }
    }
}

impl GpuStep {
    /// The printed form (`--print-events`): `kind: "gpu_step"`, times as Unix ns.
    pub fn to_json(&self, to_wall: impl Fn(u64) -> u64) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["kind"] = "gpu_step".into();
        for k in ["start_ns", "launched_ns", "end_ns"] {
            let t = v[k].as_u64().unwrap_or(0);
            v[k] = to_wall(t).into();
        }
        v
    }
}

impl Proc {
    /// The step whose window `w` closed at `launched` completes with the synchronize `r`.
    fn complete(
        &mut self,
        r: &GpuRecord,
        api: Api,
        event: u64,
        launched: u64,
        w: Window,
    ) -> GpuStep {
        let class = match w.graphs {
            0 => StepClass::Eager,
            1 => StepClass::FullGraph,
            _ => StepClass::Piecewise,
        };
        let end = r.call.end_ns;
        let wait = end.saturating_sub(r.call.start_ns);
        let immediate = wait < IMMEDIATE_SYNC_NS;
        let gpu_ns = end.saturating_sub(w.start_ns.max(self.gpu_free_ns));
        let launch_ns = launched.saturating_sub(w.start_ns);
        let host_bound = launch_ns.saturating_mul(100) >= gpu_ns.saturating_mul(HOST_BOUND_PCT);
        let start_unknown = !self.prev_known && w.start_ns < self.prev_end_ns;
        self.gpu_free_ns = if immediate { launched } else { end };
        self.prev_end_ns = end;
        self.prev_known = !immediate;
        self.seq += 1;
        GpuStep {
            tgid: r.call.tgid,
            api,
            seq: self.seq,
            start_ns: w.start_ns,
            launched_ns: launched,
            end_ns: end,
            event,
            graph_launches: w.graphs,
            kernel_launches: w.launches,
            class,
            dtoh_bytes: w.dtoh,
            htod_bytes: w.htod,
            sync_wait_ns: wait,
            sync_immediate: immediate,
            gpu_ns,
            launch_ns,
            host_bound,
            upper_bound: host_bound || immediate || start_unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::CallRecord;
    use crate::gpu::decode;
    use crate::hooks::HookId;

    /// A call of `hook` with `args` from `t` to `t + dur` (paired when `dur > 0`).
    fn call(hook: HookId, args: [u64; 6], t: u64, dur: u64, launches: u64) -> GpuRecord {
        GpuRecord {
            call: CallRecord {
                hook: hook as u16,
                tgid: 7,
                tid: 7,
                start_ns: t,
                end_ns: t + dur,
                paired: dur > 0,
                ret: 0,
                args,
                stack: [0; 4],
            },
            stream: 1,
            launches,
            first_launch_ns: if launches > 0 { t - 1_000 } else { 0 },
            out: 0,
        }
    }

    fn feed(s: &mut GpuSteps, calls: &[GpuRecord]) -> Vec<GpuStep> {
        let mut out = Vec::new();
        for r in calls {
            s.on_call(r, &decode(r).unwrap(), &mut out);
        }
        out
    }

    /// vLLM's uni executor with async scheduling: step N+1 is launched before step N is waited
    /// for, on two alternating events; each step pairs with the wait on its own event.
    #[test]
    fn async_steps_pair_by_event_handle() {
        use HookId::*;
        let (e1, e2) = (0xe1, 0xe2);
        let mut calls = Vec::new();
        let mut t = 1_000_000;
        for k in 0..6u64 {
            let ev = if k % 2 == 0 { e1 } else { e2 };
            // Step k: graph (k even: one; odd: piecewise, three), output copy, record.
            let graphs = if k % 2 == 0 { 1 } else { 3 };
            for g in 0..graphs {
                calls.push(call(
                    CuGraphLaunch,
                    [9, 1, 0, 0, 0, 0],
                    t,
                    0,
                    u64::from(g > 0) * 4,
                ));
                t += 10_000;
            }
            calls.push(call(CuMemcpyDtoHAsync, [0, 0, 256, 1, 0, 0], t, 0, 2));
            t += 5_000;
            calls.push(call(CuEventRecord, [ev, 1, 0, 0, 0, 0], t, 0, 0));
            t += 5_000;
            // Then the wait for the previous step (its event is the other one).
            if k > 0 {
                let prev = if k % 2 == 0 { e2 } else { e1 };
                calls.push(call(
                    CuEventSynchronize,
                    [prev, 0, 0, 0, 0, 0],
                    t,
                    300_000,
                    0,
                ));
                t += 300_000;
            }
        }
        let mut s = GpuSteps::new();
        let steps = feed(&mut s, &calls);
        assert_eq!(steps.len(), 5, "the last step is still awaiting its wait");
        for (i, st) in steps.iter().enumerate() {
            assert_eq!(st.seq, i as u64 + 1);
            assert_eq!(
                st.event,
                if i % 2 == 0 { e1 } else { e2 },
                "paired by handle"
            );
            let (class, graphs, launches) = if i % 2 == 0 {
                (StepClass::FullGraph, 1, 2)
            } else {
                (StepClass::Piecewise, 3, 4 + 4 + 2)
            };
            assert_eq!(
                (st.class, st.graph_launches, st.kernel_launches),
                (class, graphs, launches)
            );
            assert_eq!(st.dtoh_bytes, 256);
            assert!(st.start_ns < st.launched_ns && st.launched_ns < st.end_ns);
            assert_eq!(st.sync_wait_ns, 300_000);
            assert!(!st.sync_immediate);
        }
        // Step 2 (piecewise) started at its first graph launch's first kernel launch.
        assert_eq!(steps[1].start_ns, steps[0].launched_ns + 5_000);
        assert_eq!(
            s.stats,
            StepStats {
                steps: 5,
                abandoned: 0,
                captured_launches: 0,
            }
        );
        s.forget(7);
        assert_eq!(s.stats.abandoned, 1);
    }

    /// The synchronous path: output copy, then a stream synchronize; a record without a copy
    /// before it (a side-stream wait) does not end a step; eager steps have no graph.
    #[test]
    fn stream_synchronized_eager_step() {
        use HookId::*;
        let calls = [
            call(CudaEventRecord, [0xaa, 2, 0, 0, 0, 0], 1_000, 0, 0),
            call(CudaMemcpyAsync, [0, 0, 4096, 1, 1, 0], 2_000, 0, 0),
            call(CudaMemcpyAsync, [0, 0, 64, 2, 1, 0], 50_000, 0, 300),
            call(CudaStreamSynchronize, [1, 0, 0, 0, 0, 0], 60_000, 5_000, 0),
        ];
        let mut s = GpuSteps::new();
        let st = feed(&mut s, &calls);
        assert_eq!(st.len(), 1);
        let st = &st[0];
        assert_eq!(
            (st.api, st.class, st.kernel_launches),
            (Api::Runtime, StepClass::Eager, 300)
        );
        assert_eq!((st.htod_bytes, st.dtoh_bytes, st.event), (4096, 64, 0));
        assert_eq!((st.start_ns, st.end_ns), (1_000, 65_000));
        assert!(st.sync_immediate, "5 us wait: completion is an upper bound");
    }

    /// GPU spans tile the GPU's time under async scheduling (a step's span starts at the
    /// previous one's completion when that is later than its first launch); a step whose
    /// launches took as long as its span is host-bound.
    #[test]
    fn gpu_spans_and_host_bound_steps() {
        use HookId::*;
        let mut s = GpuSteps::new();
        let mut out = Vec::new();
        let mut run = |calls: &[GpuRecord]| {
            out.extend(feed(&mut s, calls));
        };
        // Step 1 launched at 1.0 ms (a graph), recorded at 1.01 ms, done at 3 ms.
        run(&[
            call(CuGraphLaunch, [9, 1, 0, 0, 0, 0], 1_000_000, 0, 0),
            call(CuMemcpyDtoHAsync, [0, 0, 8, 1, 0, 0], 1_005_000, 0, 0),
            call(CuEventRecord, [0xe1, 1, 0, 0, 0, 0], 1_010_000, 0, 0),
        ]);
        // Step 2 launched at 1.5 ms, before step 1 is waited for.
        run(&[
            call(CuGraphLaunch, [9, 1, 0, 0, 0, 0], 1_500_000, 0, 0),
            call(CuMemcpyDtoHAsync, [0, 0, 8, 1, 0, 0], 1_505_000, 0, 0),
            call(CuEventRecord, [0xe2, 1, 0, 0, 0, 0], 1_510_000, 0, 0),
            call(
                CuEventSynchronize,
                [0xe1, 0, 0, 0, 0, 0],
                1_600_000,
                1_400_000,
                0,
            ),
            call(
                CuEventSynchronize,
                [0xe2, 0, 0, 0, 0, 0],
                3_100_000,
                900_000,
                0,
            ),
        ]);
        // Step 3: the host launches for 5 ms; the GPU is done 0.2 ms after the last launch.
        let mut copy = call(CuMemcpyDtoHAsync, [0, 0, 8, 1, 0, 0], 15_000_000, 0, 40);
        copy.first_launch_ns = 10_000_000;
        run(&[
            copy,
            call(CuEventRecord, [0xe1, 1, 0, 0, 0, 0], 15_010_000, 0, 0),
            call(
                CuEventSynchronize,
                [0xe1, 0, 0, 0, 0, 0],
                15_020_000,
                180_000,
                0,
            ),
        ]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].gpu_ns, 3_000_000 - 1_000_000);
        assert_eq!(
            out[1].gpu_ns,
            4_000_000 - 3_000_000,
            "starts when step 1 is done"
        );
        assert!(!out[0].host_bound && !out[1].host_bound);
        assert_eq!(out[2].launch_ns, 5_010_000);
        assert!(out[2].host_bound, "{:?}", out[2]);
    }

    #[test]
    fn awaiting_steps_are_bounded() {
        use HookId::*;
        let mut calls = Vec::new();
        for k in 0..(MAX_AWAITING as u64 + 4) {
            let t = 1_000_000 + k * 100_000;
            calls.push(call(CuMemcpyDtoHAsync, [0, 0, 8, 1, 0, 0], t, 0, 1));
            calls.push(call(CuEventRecord, [100 + k, 1, 0, 0, 0, 0], t + 10, 0, 0));
        }
        let mut s = GpuSteps::new();
        assert!(feed(&mut s, &calls).is_empty());
        assert_eq!(s.stats.abandoned, 4);
        // The oldest were given up: waiting on one of them finds nothing.
        let late = call(
            CuEventSynchronize,
            [100, 0, 0, 0, 0, 0],
            9_000_000,
            50_000,
            0,
        );
        assert!(feed(&mut s, &[late]).is_empty());
        let kept = call(
            CuEventSynchronize,
            [110, 0, 0, 0, 0, 0],
            9_100_000,
            50_000,
            0,
        );
        assert_eq!(feed(&mut s, &[kept]).len(), 1);
    }
}
