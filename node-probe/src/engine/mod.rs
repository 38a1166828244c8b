//! Engine followers: what happens to a request between the HTTP frontend handing it over and
//! the tokens coming back, one module per engine behind [`EngineFollower`]. The HTTP layer needs
//! none of them; a request of a process no follower claims is an `openai-compatible` request.
//!
//! A follower *claims* processes (from their name, command line and parent), consumes the
//! events it needs (unix IPC, uprobe calls), keeps per-instance state (an instance is one engine
//! process: pid + start time), and hands the tracker an [`EngineTrace`] for a finished HTTP
//! exchange. Its counters are exported with node-probe's metrics.
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::event::{CallRecord, SockRecord};
use crate::gpu::nccl::CollectiveSync;
use crate::gpu::steps::{GpuStep, StepClass};
use crate::http::Exchange;

pub mod llama;
pub mod vllm;

/// `Resource.engine` of requests no follower claimed.
pub const GENERIC_ENGINE: &str = "openai-compatible";

/// One engine instance: the engine process's pid and start time (clock ticks since boot, as
/// `/proc/PID/stat` field 22), which together name one process even across pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct InstanceId {
    /// Engine process.
    pub pid: u32,
    /// Its start time in clock ticks since boot.
    pub start_ticks: u64,
}

impl fmt::Display for InstanceId {
    /// `pid:start_ticks`, the form stored as `engine_instance`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.pid, self.start_ticks)
    }
}

/// One engine forward step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Unique per instance, also across node-probe restarts (see [`StepIds`]).
    pub id: u64,
    /// Step start (monotonic ns).
    pub start_ns: u64,
    /// Step end (0 while running).
    pub end_ns: u64,
    /// Requests (vLLM) or tokens (llama.cpp, see [`EngineTrace::batch_unit`]) in the step.
    pub batch: u32,
    /// Tokens its requests computed in it, as far as the follower knows them (vLLM: a
    /// request's prompt length in its first step, one token in each later one; 0: unknown).
    pub tokens: u32,
    /// What the GPU did in it, when the CUDA hooks saw it.
    pub gpu: Option<StepGpu>,
    /// Its collectives lined up across ranks, when the NCCL hooks saw them.
    pub coll: Option<StepColl>,
}

/// The collectives of one engine step, lined up across its tensor-parallel ranks
/// ([`CollectiveSync`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepColl {
    /// Collectives lined up.
    pub collectives: u32,
    /// Sum of their waits (last − first arrival): time ranks spent waiting for the slowest.
    pub wait_ns: u64,
    /// The rank that delayed the step most: the straggler with the largest summed lag.
    pub straggler_rank: u32,
    /// Its summed lag (last − second-to-last arrival of the collectives it was last at).
    pub straggler_lag_ns: u64,
}

impl StepColl {
    /// One collective.
    pub fn of(c: &CollectiveSync) -> Self {
        Self {
            collectives: 1,
            wait_ns: c.wait_ns,
            straggler_rank: c.last.rank,
            straggler_lag_ns: c.lag_ns,
        }
    }

    /// Adds a collective of the same step. The straggler kept is the rank with the largest
    /// summed lag among those seen leading (exact when one rank leads throughout).
    pub fn add(&mut self, c: &CollectiveSync) {
        self.collectives = self.collectives.saturating_add(1);
        self.wait_ns = self.wait_ns.saturating_add(c.wait_ns);
        if c.last.rank == self.straggler_rank {
            self.straggler_lag_ns = self.straggler_lag_ns.saturating_add(c.lag_ns);
        } else if c.lag_ns > self.straggler_lag_ns {
            self.straggler_rank = c.last.rank;
            self.straggler_lag_ns = c.lag_ns;
        }
    }
}

/// What the GPU did in one engine step: one [`GpuStep`], or several merged (the ranks of a
/// tensor-parallel step, one per worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepGpu {
    /// Class (of the first rank seen).
    pub class: StepClass,
    /// GPU span ([`GpuStep::gpu_ns`]); the longest rank's.
    pub gpu_ns: u64,
    /// Host launch time; the longest rank's.
    pub launch_ns: u64,
    /// Graph launches, all ranks.
    pub graph_launches: u32,
    /// Kernel launches outside graphs, all ranks.
    pub kernel_launches: u64,
    /// Device-to-host bytes, all ranks.
    pub dtoh_bytes: u64,
    /// Host-to-device bytes, all ranks.
    pub htod_bytes: u64,
    /// Time the host waited for the GPU; the longest rank's.
    pub sync_wait_ns: u64,
    /// Paced by the host on some rank ([`GpuStep::host_bound`]).
    pub host_bound: bool,
    /// `gpu_ns` is an upper bound on some rank ([`GpuStep::upper_bound`]).
    pub upper_bound: bool,
    /// GPU steps merged into it.
    pub ranks: u16,
}

impl StepGpu {
    /// One GPU step.
    pub fn of(s: &GpuStep) -> Self {
        Self {
            class: s.class,
            gpu_ns: s.gpu_ns,
            launch_ns: s.launch_ns,
            graph_launches: s.graph_launches,
            kernel_launches: s.kernel_launches,
            dtoh_bytes: s.dtoh_bytes,
            htod_bytes: s.htod_bytes,
            sync_wait_ns: s.sync_wait_ns,
            host_bound: s.host_bound,
            upper_bound: s.upper_bound,
            ranks: 1,
        }
    }

    /// Adds another rank's GPU step of the same engine step.
    pub fn merge(&mut self, s: &GpuStep) {
        self.gpu_ns = self.gpu_ns.max(s.gpu_ns);
        self.launch_ns = self.launch_ns.max(s.launch_ns);
        self.graph_launches = self.graph_launches.saturating_add(s.graph_launches);
        self.kernel_launches = self.kernel_launches.saturating_add(s.kernel_launches);
        self.dtoh_bytes = self.dtoh_bytes.saturating_add(s.dtoh_bytes);
        self.htod_bytes = self.htod_bytes.saturating_add(s.htod_bytes);
        self.sync_wait_ns = self.sync_wait_ns.max(s.sync_wait_ns);
        self.host_bound |= s.host_bound;
        self.upper_bound |= s.upper_bound;
        self.ranks = self.ranks.saturating_add(1);
    }
}

/// Step ids of one instance: consecutive from the first step's start time in microseconds, so
/// that a node-probe restarted on the same instance never reuses an id (a step lasts longer
/// than a microsecond).
#[derive(Debug, Clone, Copy, Default)]
pub struct StepIds {
    next: u64,
}

impl StepIds {
    /// The id of a step starting at `start_ns`.
    pub fn next(&mut self, start_ns: u64) -> u64 {
        if self.next == 0 {
            self.next = (start_ns / 1000).max(1);
        }
        let id = self.next;
        self.next += 1;
        id
    }
}

/// What a process looks like to a follower deciding whether to claim it.
#[derive(Debug, Clone, Default)]
pub struct ProcView {
    /// Pid.
    pub pid: u32,
    /// Parent pid.
    pub ppid: u32,
    /// `comm` (15 bytes at most).
    pub comm: String,
    /// Command line, arguments joined by spaces.
    pub cmdline: String,
    /// Start time in clock ticks since boot.
    pub start_ticks: u64,
}

impl ProcView {
    /// Reads a process from `proc_root`; `None` when it is gone.
    pub fn read(proc_root: &Path, pid: u32) -> Option<Self> {
        let info = crate::targets::read_proc(proc_root, pid)?;
        let comm = std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
            .unwrap_or_default();
        Some(Self {
            pid,
            ppid: info.ppid,
            comm: comm.trim_end().to_string(),
            cmdline: info.cmdline,
            start_ticks: info.start_ticks,
        })
    }

    /// The instance id of this process.
    pub fn instance(&self) -> InstanceId {
        InstanceId {
            pid: self.pid,
            start_ticks: self.start_ticks,
        }
    }
}

/// Output times kept per request ([`EngineTrace::output_ns`]).
pub const MAX_OUTPUT_TIMES: usize = 4096;

/// What the engine did for one HTTP exchange.
#[derive(Debug, Clone, Default)]
pub struct EngineTrace {
    /// Engine name (`Resource.engine`).
    pub engine: &'static str,
    /// The instance whose steps these are (none when no step was seen).
    pub instance: Option<InstanceId>,
    /// Engine request id.
    pub request_id: Option<String>,
    /// Handed to the engine.
    pub handed_ns: u64,
    /// Arrived at the scheduler.
    pub core_recv_ns: Option<u64>,
    /// First output back in the frontend (or the first token's step end).
    pub first_output_ns: Option<u64>,
    /// Last output back in the frontend (or the last step's end).
    pub last_output_ns: Option<u64>,
    /// When each output came back (vLLM: the frontend's receipt of each output message; llama.cpp:
    /// each `llama_decode` end), the first [`MAX_OUTPUT_TIMES`]: the engine's token times.
    pub output_ns: Vec<u64>,
    /// Steps the request took part in, in order.
    pub steps: Vec<Step>,
    /// Tokens this request computed in each of `steps` (same order; empty when the follower
    /// does not know them): the weights of its share of each step's GPU time.
    pub step_tokens: Vec<u32>,
    /// What `Step::batch` counts: `requests` or `tokens`.
    pub batch_unit: &'static str,
}

/// One engine follower.
pub trait EngineFollower {
    /// Engine name (`vllm`, `llama.cpp`).
    fn name(&self) -> &'static str;
    /// Whether this follower takes `p` (it then sees its events). Asked once per process (again
    /// after an exec).
    fn claim(&mut self, p: &ProcView) -> bool;
    /// A claimed process exited or exec'ed.
    fn forget(&mut self, pid: u32);
    /// A unix-socket send or receive by a claimed process.
    fn on_unix(&mut self, _ev: &SockRecord) {}
    /// A probed call by a claimed process.
    fn on_call(&mut self, _ev: &CallRecord) {}
    /// A GPU step of a claimed process (`gpu/steps.rs`).
    fn on_gpu_step(&mut self, _step: &GpuStep) {}
    /// A collective lined up across ranks (`gpu/nccl.rs`) whose straggler is a claimed
    /// process.
    fn on_collective(&mut self, _c: &CollectiveSync) {}
    /// The engine side of a finished exchange served by claimed process `pid`.
    fn take_trace(&mut self, pid: u32, ex: &Exchange) -> Option<EngineTrace>;
    /// Drops state older than `cutoff_ns` that no exchange claimed.
    fn expire(&mut self, cutoff_ns: u64);
    /// Whether the follower saw engine traffic (a missing join is then worth counting).
    fn active(&self) -> bool;
    /// Counters as `(name, value)`, exported as `node_probe_engine_<name>_total{engine=…}`.
    fn counters(&self) -> Vec<(&'static str, u64)>;
}

/// The followers of one node-probe and which process each claimed.
pub struct Engines {
    followers: Vec<Box<dyn EngineFollower + Send>>,
    /// pid -> index of the follower that claimed it, or `None` (asked, nobody claimed).
    claims: HashMap<u32, Option<usize>>,
    proc_root: PathBuf,
}

/// Processes whose claim is remembered; beyond it the table is cleared (and rebuilt on use).
const MAX_CLAIMS: usize = 65_536;

impl Engines {
    /// Every follower this build has.
    pub fn new(proc_root: &Path) -> Self {
        Self::with(
            proc_root,
            vec![
                Box::new(vllm::VllmFollower::new()),
                Box::new(llama::LlamaFollower::new()),
            ],
        )
    }

    /// Given followers (tests).
    pub fn with(proc_root: &Path, followers: Vec<Box<dyn EngineFollower + Send>>) -> Self {
        Self {
            followers,
            claims: HashMap::new(),
            proc_root: proc_root.to_owned(),
        }
    }

    /// The follower that claimed `pid`, asking each in turn the first time.
    fn owner(&mut self, pid: u32) -> Option<usize> {
        if let Some(&c) = self.claims.get(&pid) {
            return c;
        }
        let view = ProcView::read(&self.proc_root, pid)?;
        self.offer(&view)
    }

    /// Offers a process to the followers (first claim wins); remembers the answer.
    pub fn offer(&mut self, view: &ProcView) -> Option<usize> {
        if self.claims.len() >= MAX_CLAIMS {
            self.claims.clear();
        }
        let owner = self.followers.iter_mut().position(|f| f.claim(view));
        self.claims.insert(view.pid, owner);
        owner
    }

    /// Engine name of `pid`'s requests.
    pub fn engine_of(&mut self, pid: u32) -> &'static str {
        match self.owner(pid) {
            Some(i) => self.followers[i].name(),
            None => GENERIC_ENGINE,
        }
    }

    /// A unix-socket event of a target.
    pub fn on_unix(&mut self, ev: &SockRecord) {
        if let Some(i) = self.owner(ev.tgid) {
            self.followers[i].on_unix(ev);
        }
    }

    /// A probed call of a target.
    pub fn on_call(&mut self, ev: &CallRecord) {
        if let Some(i) = self.owner(ev.tgid) {
            self.followers[i].on_call(ev);
        }
    }

    /// A GPU step of a target.
    pub fn on_gpu_step(&mut self, step: &GpuStep) {
        if let Some(i) = self.owner(step.tgid) {
            self.followers[i].on_gpu_step(step);
        }
    }

    /// A collective lined up across ranks: to the follower of its straggler's process.
    pub fn on_collective(&mut self, c: &CollectiveSync) {
        if let Some(i) = self.owner(c.last.tgid) {
            self.followers[i].on_collective(c);
        }
    }

    /// A process exited or exec'ed: its claim is asked again next time.
    pub fn forget(&mut self, pid: u32) {
        if let Some(Some(i)) = self.claims.remove(&pid) {
            self.followers[i].forget(pid);
        }
    }

    /// Forgets processes nobody claimed (their names may have changed since: vLLM renames its
    /// engine processes after they start).
    pub fn recheck_unclaimed(&mut self) {
        self.claims.retain(|_, c| c.is_some());
    }

    /// The engine side of an exchange served by `pid`: `(engine name, trace)`.
    pub fn take_trace(&mut self, pid: u32, ex: &Exchange) -> (&'static str, Option<EngineTrace>) {
        match self.owner(pid) {
            Some(i) => {
                let f = &mut self.followers[i];
                (f.name(), f.take_trace(pid, ex))
            }
            None => (GENERIC_ENGINE, None),
        }
    }

    /// Whether the follower of `pid` has seen engine traffic.
    pub fn active_for(&mut self, pid: u32) -> bool {
        self.owner(pid).is_some_and(|i| self.followers[i].active())
    }

    /// Expires every follower's state older than `cutoff_ns`.
    pub fn expire(&mut self, cutoff_ns: u64) {
        for f in &mut self.followers {
            f.expire(cutoff_ns);
        }
    }

    /// Every follower's counters: `(engine, name, value)`.
    pub fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.followers
            .iter()
            .flat_map(|f| {
                let e = f.name();
                f.counters().into_iter().map(move |(n, v)| (e, n, v))
            })
            .collect()
    }
}
