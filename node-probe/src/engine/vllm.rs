//! Following requests inside vLLM (v1 engine) from its IPC traffic alone.
//!
//! vLLM's processes: the API server (HTTP), `VLLM::EngineCore` (scheduler) and `VLLM::Worker`
//! (model execution). What crosses their unix sockets, and what this module reads from it:
//!
//! * API server → EngineCore, ZMQ over `ipc://`: a request-type frame (`0x00` ADD, `0x01` ABORT)
//!   then a msgpack body whose first string is the engine request id (`cmpl-…-0-…`). The send by
//!   the API server's ZMQ IO thread is when the request is *handed to the engine*; EngineCore's
//!   receive of the same bytes is when it *arrives at the scheduler*.
//! * EngineCore → Worker: a 3-byte doorbell per forward step (step start); Worker → EngineCore:
//!   one per step (step end). Roles come from the processes' `comm`. The doorbells are
//!   notifications of a PUB socket that holds one pending message and drops the rest, so one
//!   is missing now and then: a step whose end doorbell never came ends at its output message.
//! * EngineCore → API server: one message per step carrying the outputs of the requests that
//!   advanced; their ids appear as msgpack strings. The API server's receive is when the
//!   frontend *has* the tokens.
//!
//! The bytes are moved by ZMQ IO threads, not the thread that served HTTP, so requests are linked
//! by content (ids) and process, never by thread.
//!
//! On a GPU the steps come from the CUDA hooks too (`gpu/steps.rs`,
//! `../shared/notes/gpu.md` §1). With one GPU vLLM runs the model inside EngineCore (the `uni`
//! executor: no Worker, no doorbells): there **a GPU step of the EngineCore is the engine
//! step**. With workers (tensor parallel, the CPU build) doorbells make the steps and each
//! worker's GPU step is attached to the doorbell step that contains its start. Either way
//! which requests a step served keeps one rule: those named by the core's output message that
//! follows the step's end. A request's tokens in a step (its prompt length, from the ADD
//! message, in its first step; one in each later step) weigh its share of the step's GPU time.
use std::collections::{HashMap, VecDeque};

use super::{EngineFollower, EngineTrace, InstanceId, ProcView, Step};
use crate::event::SockRecord;
use crate::gpu::nccl::CollectiveSync;
use crate::gpu::steps::GpuStep;

mod gpu;
mod instance;
mod wire;
use crate::http::Exchange;
use inferscope_common::EventKind;
use instance::Instance;
use wire::for_each_str;
pub use wire::{parse_adds, parse_request_message, parse_request_messages, response_ids_of};

/// Requests followed at once; beyond it the oldest are dropped (counted).
pub const MAX_INFLIGHT: usize = 65_536;
/// Engine steps remembered per instance (for attributing outputs and building spans).
pub const MAX_STEPS: usize = 65_536;
/// Steps recorded per request.
pub const MAX_STEPS_PER_REQUEST: usize = 8192;
/// Engine instances (EngineCore processes) followed at once.
pub const MAX_INSTANCES: usize = 1024;

/// Process role in a vLLM deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// API server / frontend.
    Frontend,
    /// EngineCore (scheduler); with data parallelism there are several per frontend.
    EngineCore,
    /// Model-executing worker (a child of its EngineCore).
    Worker,
}

/// The role of a vLLM process from its `comm` (vLLM names its processes `VLLM::EngineCore`,
/// `VLLM::EngineCore_DP0`, `VLLM::Worker`, `VLLM::Worker_TP0`; `comm` keeps 15 bytes), or
/// `None` for a process that is not one of vLLM's engine processes.
pub fn role_from_comm(comm: &str) -> Option<Role> {
    if comm.starts_with("VLLM::EngineCor") || comm.starts_with("EngineCore") {
        Some(Role::EngineCore)
    } else if comm.starts_with("VLLM::Worker") || comm.starts_with("VllmWorker") {
        Some(Role::Worker)
    } else {
        None
    }
}

/// Whether a command line is vLLM's API server (`vllm serve …`, `python -m
/// vllm.entrypoints.openai.api_server …`).
pub fn is_vllm_frontend(cmdline: &str) -> bool {
    let mut words = cmdline.split_whitespace();
    let mut prev_vllm = false;
    for w in words.by_ref() {
        if w.starts_with("vllm.entrypoints") {
            return true;
        }
        if prev_vllm && w == "serve" {
            return true;
        }
        prev_vllm = w == "vllm" || w.ends_with("/vllm");
    }
    false
}

/// What the engine did for one request.
#[derive(Debug, Clone, Default)]
pub struct EngineRequest {
    /// Engine request id.
    pub id: String,
    /// API server pid.
    pub frontend_pid: u32,
    /// The EngineCore that received it (its steps are this request's), once seen.
    pub core_pid: Option<u32>,
    /// API server handed it to the engine (ZMQ send).
    pub handed_ns: u64,
    /// EngineCore received it.
    pub core_recv_ns: Option<u64>,
    /// First output received by the API server.
    pub first_output_ns: Option<u64>,
    /// Last output received by the API server.
    pub last_output_ns: Option<u64>,
    /// Output messages that carried this request.
    pub outputs: u32,
    /// When they came back (the first [`super::MAX_OUTPUT_TIMES`]).
    pub output_ns: Vec<u64>,
    /// Steps this request took part in (ids on its core's timeline).
    pub steps: Vec<u64>,
    /// Tokens it computed in each of `steps` (same order).
    pub step_tokens: Vec<u32>,
    /// Prompt length in tokens (the ADD message's `prompt_token_ids`), when it was readable.
    pub prompt_tokens: Option<u32>,
    /// An ABORT for it was sent.
    pub aborted: bool,
}

/// Counters of the follower, exported as metrics.
#[derive(Debug, Default, Clone)]
pub struct VllmStats {
    /// ADD messages parsed.
    pub adds: u64,
    /// Output messages that carried at least one known request.
    pub outputs: u64,
    /// Steps seen.
    pub steps: u64,
    /// Requests dropped because too many were in flight.
    pub dropped_inflight: u64,
    /// Requests that expired unjoined.
    pub expired: u64,
    /// Doorbells of a worker whose EngineCore is not known (not counted as steps).
    pub orphan_doorbells: u64,
    /// Instances dropped to stay within [`MAX_INSTANCES`].
    pub instances_dropped: u64,
    /// GPU steps of an EngineCore without doorbells (`uni` executor): engine steps of their own.
    pub gpu_steps: u64,
    /// GPU steps attached to a doorbell step (workers).
    pub gpu_steps_attached: u64,
    /// GPU steps with no engine step to go to (no instance, no containing doorbell step, or
    /// another CUDA API than the one this instance's steps come from).
    pub gpu_steps_unmatched: u64,
    /// Collectives lined up across a core's workers, attached to the step containing the
    /// straggler's arrival.
    pub collectives_attached: u64,
    /// Collectives with no step to go to.
    pub collectives_unmatched: u64,
    /// Doorbell steps whose worker doorbell never came (vLLM's notify socket keeps one
    /// pending notification and drops the rest), ended by the core's output message instead.
    pub steps_ended_by_outputs: u64,
}

/// A claimed process: its role and, for engine processes, the EngineCore it belongs to.
#[derive(Debug, Clone, Copy)]
struct Member {
    role: Role,
    /// EngineCore pid (itself for a core, the parent for a worker; 0 for the frontend).
    core: u32,
}

/// Follows vLLM requests through the engine, with one step timeline per EngineCore.
#[derive(Debug, Default)]
pub struct VllmFollower {
    members: HashMap<u32, Member>,
    instances: HashMap<u32, Instance>,
    inflight: HashMap<Box<[u8]>, EngineRequest>,
    /// HTTP response id -> engine ids (see [`response_ids_of`]).
    by_response: HashMap<String, Vec<Box<[u8]>>>,
    order: VecDeque<(u64, Box<[u8]>)>,
    /// Counters.
    pub stats: VllmStats,
}

impl VllmFollower {
    /// A follower with nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a process: its role and, for a core, its instance; a worker belongs to the
    /// core that is its parent (`ppid`).
    pub fn set_member(&mut self, view: &ProcView, role: Role) {
        let core = match role {
            Role::Frontend => 0,
            Role::EngineCore => {
                if !self.instances.contains_key(&view.pid) {
                    if self.instances.len() >= MAX_INSTANCES {
                        self.drop_idlest_instance();
                    }
                    self.instances
                        .insert(view.pid, Instance::new(view.instance()));
                }
                view.pid
            }
            Role::Worker => view.ppid,
        };
        self.members.insert(view.pid, Member { role, core });
    }

    fn drop_idlest_instance(&mut self) {
        let idlest = self
            .instances
            .iter()
            .min_by_key(|(_, i)| i.steps.back().map_or(0, |s| s.end_ns))
            .map(|(&pid, _)| pid);
        if let Some(pid) = idlest {
            self.instances.remove(&pid);
            self.stats.instances_dropped += 1;
        }
    }

    fn member(&self, pid: u32) -> Member {
        self.members.get(&pid).copied().unwrap_or(Member {
            role: Role::Frontend,
            core: 0,
        })
    }

    /// Feeds a unix-socket send or receive by a claimed process.
    pub fn on_unix(&mut self, ev: &SockRecord) {
        if ev.ret <= 0 {
            return;
        }
        let m = self.member(ev.tgid);
        let send = ev.kind == EventKind::SockSend;
        if ev.ret == 3 {
            if send {
                // A core's doorbell starts the step when it is rung (the send's entry: a
                // worker may wake and launch before the send returns); a worker's ends it
                // when its send is done.
                let ts = match m.role {
                    Role::EngineCore => ev.start_ns,
                    _ => ev.end_ns,
                };
                self.on_doorbell(m, ts);
            }
            return;
        }
        match (m.role, send) {
            (Role::Frontend, true) => self.on_frontend_send(ev),
            (Role::EngineCore, false) => {
                for (ty, ids) in parse_request_messages(&ev.payload) {
                    if ty != 0x00 {
                        continue;
                    }
                    if let Some(r) = self.inflight.get_mut(ids[0]) {
                        r.core_recv_ns.get_or_insert(ev.end_ns);
                        r.core_pid.get_or_insert(m.core);
                    }
                }
            }
            (Role::Frontend, false) => self.on_outputs(ev.end_ns, &ev.payload),
            (Role::EngineCore, true) => self.on_core_outputs(m.core, ev.end_ns, &ev.payload),
            _ => {}
        }
    }

    fn on_frontend_send(&mut self, ev: &SockRecord) {
        for (id, prompt_tokens) in parse_adds(&ev.payload) {
            self.on_add(id, prompt_tokens, ev);
        }
        for (ty, ids) in parse_request_messages(&ev.payload) {
            if ty != 0x01 {
                continue;
            }
            for id in ids {
                if let Some(r) = self.inflight.get_mut(id) {
                    r.aborted = true;
                }
            }
        }
    }

    fn on_add(&mut self, id: &[u8], prompt_tokens: Option<u32>, ev: &SockRecord) {
        let id: Box<[u8]> = id.into();
        if self.inflight.contains_key(&id) {
            return;
        }
        while self.inflight.len() >= MAX_INFLIGHT {
            if let Some((_, old)) = self.order.pop_front() {
                if let Some(r) = self.inflight.remove(&old) {
                    self.unindex(&r.id);
                    self.stats.dropped_inflight += 1;
                }
            } else {
                break;
            }
        }
        self.stats.adds += 1;
        self.order.push_back((ev.end_ns, id.clone()));
        if let Ok(sid) = std::str::from_utf8(&id) {
            for rid in response_ids_of(sid) {
                self.by_response
                    .entry(rid.to_string())
                    .or_default()
                    .push(id.clone());
            }
        }
        self.inflight.insert(
            id.clone(),
            EngineRequest {
                id: String::from_utf8_lossy(&id).into_owned(),
                frontend_pid: ev.tgid,
                handed_ns: ev.end_ns,
                prompt_tokens,
                ..Default::default()
            },
        );
    }

    /// A doorbell: from a core, its step starts; from a worker, its core's step ends.
    fn on_doorbell(&mut self, m: Member, ts: u64) {
        let Some(inst) = self.instances.get_mut(&m.core) else {
            if m.role != Role::Frontend {
                self.stats.orphan_doorbells += 1;
            }
            return;
        };
        match m.role {
            Role::EngineCore => {
                if inst.open_step.is_none() {
                    inst.doorbells = true;
                    inst.open_step = Some(Step {
                        id: inst.ids.next(ts),
                        start_ns: ts,
                        end_ns: 0,
                        batch: 0,
                        tokens: 0,
                        gpu: None,
                        coll: None,
                    });
                }
            }
            Role::Worker => {
                if let Some(mut s) = inst.open_step.take() {
                    s.end_ns = ts;
                    self.stats.steps += 1;
                    inst.push(s);
                } else if let Some(last) = inst.steps.back_mut() {
                    // Another worker of this core (tensor parallel) finishing the same step.
                    last.end_ns = last.end_ns.max(ts);
                }
            }
            Role::Frontend => {}
        }
    }

    /// A core sent a per-step output message: the step of *that core* that just ended (the
    /// last one completed before this send) is the step these requests took part in.
    /// Attributing here, not when the frontend receives the message, keeps the right step when
    /// the engine has already run the next one by then (async scheduling, a busy frontend).
    fn on_core_outputs(&mut self, core: u32, ts: u64, payload: &[u8]) {
        let Some(inst) = self.instances.get_mut(&core) else {
            return;
        };
        inst.outputs_seen = true;
        let mut step = inst.last_ended_by(ts);
        if inst.outputs_after_missing_end(step) {
            // The open step has ended: its worker doorbell was dropped.
            if let Some(mut s) = inst.open_step.take() {
                s.end_ns = ts;
                step = Some(s.id);
                inst.push(s);
                self.stats.steps += 1;
                self.stats.steps_ended_by_outputs += 1;
            }
        }
        if let Some(step) = step {
            inst.last_output = Some((step, ts));
            self.attribute(core, step, payload);
        }
    }

    /// Adds `step` of `core` to every followed request named in `payload` and counts them as
    /// its batch.
    fn attribute(&mut self, core: u32, step: u64, payload: &[u8]) {
        let mut found = 0u32;
        let mut tokens = 0u32;
        let inflight = &mut self.inflight;
        for_each_str(payload, |s| {
            if let Some(r) = inflight.get_mut(s) {
                if *r.core_pid.get_or_insert(core) != core {
                    return; // another instance's request (named by coincidence)
                }
                if r.steps.last() == Some(&step) {
                    return; // named twice in one message
                }
                // Its first output comes from the step that computed its prompt.
                let t = if r.steps.is_empty() {
                    r.prompt_tokens.unwrap_or(1).max(1)
                } else {
                    1
                };
                if r.steps.len() < MAX_STEPS_PER_REQUEST {
                    r.steps.push(step);
                    r.step_tokens.push(t);
                }
                found += 1;
                tokens = tokens.saturating_add(t);
            }
        });
        if found > 0 {
            if let Some(st) = self
                .instances
                .get_mut(&core)
                .and_then(|i| i.steps.iter_mut().rev().find(|s| s.id == step))
            {
                st.batch += found;
                st.tokens = st.tokens.saturating_add(tokens);
            }
        }
    }

    /// The frontend received an output message: when each request's tokens got back.
    fn on_outputs(&mut self, ts: u64, payload: &[u8]) {
        let mut found = 0u32;
        // Without the core's own sends (another process layout), attribute here: to the
        // request's core, or to the only core there is.
        let mut fallback: Option<u32> = None;
        let single_core = (self.instances.len() == 1)
            .then(|| self.instances.keys().next().copied())
            .flatten();
        let inflight = &mut self.inflight;
        for_each_str(payload, |s| {
            if let Some(r) = inflight.get_mut(s) {
                if r.last_output_ns == Some(ts) {
                    return;
                }
                found += 1;
                r.first_output_ns.get_or_insert(ts);
                r.last_output_ns = Some(ts);
                r.outputs += 1;
                if r.output_ns.len() < super::MAX_OUTPUT_TIMES {
                    r.output_ns.push(ts);
                }
                fallback = fallback.or(r.core_pid).or(single_core);
            }
        });
        if found == 0 {
            return;
        }
        self.stats.outputs += 1;
        let Some(core) = fallback else { return };
        let step = match self.instances.get(&core) {
            Some(i) if !i.outputs_seen => i.last_ended_by(ts),
            _ => None,
        };
        if let Some(step) = step {
            self.attribute(core, step, payload);
        }
    }

    /// Removes and returns the engine requests behind an HTTP response id (several when the
    /// request asked for `n > 1` choices), with the steps they took part in and their instance.
    pub fn take_for_response(
        &mut self,
        response_id: &str,
    ) -> Option<(EngineRequest, Vec<Step>, Option<InstanceId>)> {
        let mut keys = self.by_response.remove(response_id).unwrap_or_default();
        if let Some(k) = self
            .inflight
            .get_key_value(response_id.as_bytes())
            .map(|(k, _)| k.clone())
        {
            keys.push(k);
        }
        let mut merged: Option<EngineRequest> = None;
        for k in keys {
            let Some(r) = self.inflight.remove(&k) else {
                continue;
            };
            // Its other index entries (`cmpl-X-0` beside `cmpl-X`) go with it.
            self.unindex(&r.id);
            merged = Some(match merged {
                None => r,
                Some(m) => merge(m, r),
            });
        }
        let mut r = merged?;
        let inst = r.core_pid.and_then(|c| self.instances.get(&c));
        let (steps, tokens) = match inst {
            Some(i) => r
                .steps
                .iter()
                .zip(&r.step_tokens)
                .filter_map(|(&id, &t)| Some((i.step(id)?, t)))
                .unzip(),
            None => (Vec::new(), Vec::new()),
        };
        r.step_tokens = tokens;
        let id = inst.map(|i| i.id);
        Some((r, steps, id))
    }

    /// A remembered step of `core` by id.
    pub fn step(&self, core: u32, id: u64) -> Option<Step> {
        self.instances.get(&core)?.step(id)
    }

    /// Drops requests handed to the engine before `cutoff_ns` that no response claimed.
    pub fn expire(&mut self, cutoff_ns: u64) {
        while let Some((ts, _)) = self.order.front() {
            if *ts >= cutoff_ns {
                break;
            }
            let (_, id) = self.order.pop_front().expect("front exists");
            if let Some(r) = self.inflight.remove(&id) {
                self.unindex(&r.id);
                self.stats.expired += 1;
            }
        }
    }

    fn unindex(&mut self, engine_id: &str) {
        for rid in response_ids_of(engine_id) {
            if let Some(v) = self.by_response.get_mut(rid) {
                v.retain(|k| &**k != engine_id.as_bytes());
                if v.is_empty() {
                    self.by_response.remove(rid);
                }
            }
        }
    }

    /// Requests currently followed.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Instances (EngineCores) followed.
    pub fn instances(&self) -> usize {
        self.instances.len()
    }
}

/// Two engine requests of one HTTP response (`n > 1`) as one.
fn merge(mut m: EngineRequest, r: EngineRequest) -> EngineRequest {
    m.handed_ns = m.handed_ns.min(r.handed_ns);
    m.core_recv_ns = min_opt(m.core_recv_ns, r.core_recv_ns);
    m.core_pid = m.core_pid.or(r.core_pid);
    m.first_output_ns = min_opt(m.first_output_ns, r.first_output_ns);
    m.last_output_ns = m.last_output_ns.max(r.last_output_ns);
    m.outputs += r.outputs;
    m.output_ns.extend(r.output_ns);
    m.output_ns.sort_unstable();
    m.output_ns.dedup();
    m.output_ns.truncate(super::MAX_OUTPUT_TIMES);
    m.aborted |= r.aborted;
    m.prompt_tokens = m.prompt_tokens.max(r.prompt_tokens);
    // Steps with their tokens, in order; a step both computed in adds their tokens.
    let mut both: Vec<(u64, u32)> = m.steps.into_iter().zip(m.step_tokens).collect();
    both.extend(r.steps.into_iter().zip(r.step_tokens));
    both.sort_unstable();
    let mut merged: Vec<(u64, u32)> = Vec::with_capacity(both.len());
    for (s, t) in both {
        if let Some(last) = merged.last_mut().filter(|l| l.0 == s) {
            last.1 = last.1.saturating_add(t);
        } else if merged.len() < MAX_STEPS_PER_REQUEST {
            merged.push((s, t));
        }
    }
    (m.steps, m.step_tokens) = merged.into_iter().unzip();
    m
}

impl EngineFollower for VllmFollower {
    fn name(&self) -> &'static str {
        "vllm"
    }

    fn claim(&mut self, p: &ProcView) -> bool {
        let role = match role_from_comm(&p.comm) {
            Some(r) => r,
            None if is_vllm_frontend(&p.cmdline) => Role::Frontend,
            None => return false,
        };
        self.set_member(p, role);
        true
    }

    fn forget(&mut self, pid: u32) {
        self.members.remove(&pid);
        self.instances.remove(&pid);
    }

    fn on_unix(&mut self, ev: &SockRecord) {
        VllmFollower::on_unix(self, ev);
    }

    fn on_gpu_step(&mut self, step: &GpuStep) {
        VllmFollower::on_gpu_step(self, step);
    }

    fn on_collective(&mut self, c: &CollectiveSync) {
        VllmFollower::on_collective(self, c);
    }

    fn take_trace(&mut self, _pid: u32, ex: &Exchange) -> Option<EngineTrace> {
        let (r, steps, instance) = self.take_for_response(ex.response_id.as_deref()?)?;
        Some(EngineTrace {
            engine: "vllm",
            instance,
            request_id: Some(r.id),
            handed_ns: r.handed_ns,
            core_recv_ns: r.core_recv_ns,
            first_output_ns: r.first_output_ns,
            last_output_ns: r.last_output_ns,
            output_ns: r.output_ns,
            steps,
            step_tokens: r.step_tokens,
            batch_unit: "requests",
        })
    }

    fn expire(&mut self, cutoff_ns: u64) {
        VllmFollower::expire(self, cutoff_ns);
    }

    fn active(&self) -> bool {
        self.stats.adds > 0
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        vec![
            ("adds", s.adds),
            ("outputs", s.outputs),
            ("steps", s.steps),
            ("dropped_inflight", s.dropped_inflight),
            ("expired", s.expired),
            ("orphan_doorbells", s.orphan_doorbells),
            ("instances_dropped", s.instances_dropped),
            ("gpu_steps", s.gpu_steps),
            ("gpu_steps_attached", s.gpu_steps_attached),
            ("gpu_steps_unmatched", s.gpu_steps_unmatched),
            ("collectives_attached", s.collectives_attached),
            ("collectives_unmatched", s.collectives_unmatched),
            ("steps_ended_by_outputs", s.steps_ended_by_outputs),
        ]
    }
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

#[cfg(test)]
mod tests;
