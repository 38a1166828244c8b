//! Following requests inside llama.cpp servers (llama-cpp-python's OpenAI-compatible server)
//! from uprobes on `libllama`'s `llama_decode`.
//!
//! The server is one process, so there is no IPC to read: each `llama_decode` call is one
//! forward step (entry: start, return: end), and its batch size is the `n_tokens` of the
//! `llama_batch` argument (passed by value in memory, so the first stack word at entry).
//!
//! **Linking rule.** The server runs one completion at a time (a lock around the model), so a
//! request's steps are the steps of its process that started after the request was handed over
//! (its body read) and ended before its last response chunk, and that no request finishing
//! earlier took. Time waiting behind the lock is queue time: hand-over → first step. What would
//! break it: a server that decodes several requests in one batch (llama.cpp's own server with
//! `--parallel` > 1; then steps are shared and this rule gives each step to one request), or a
//! request whose last chunk is written after the next request's first step (not possible while
//! the lock is held until the stream ends).
use std::collections::{HashMap, VecDeque};

use super::{EngineFollower, EngineTrace, InstanceId, ProcView, Step, StepIds};
use crate::event::CallRecord;
use crate::hooks::HookId;
use crate::http::Exchange;

/// Steps remembered per instance.
pub const MAX_STEPS: usize = 65_536;
/// Steps recorded per request.
pub const MAX_STEPS_PER_REQUEST: usize = 8192;
/// Instances followed at once.
pub const MAX_INSTANCES: usize = 1024;

/// Whether a command line is a llama.cpp server.
pub fn is_llama_server(cmdline: &str) -> bool {
    cmdline.contains("llama_cpp.server")
        || cmdline.split_whitespace().any(|w| {
            let name = w.rsplit('/').next().unwrap_or(w);
            name == "llama-server"
        })
}

#[derive(Debug)]
struct Instance {
    id: InstanceId,
    /// Steps not yet taken by a request, oldest first.
    steps: VecDeque<Step>,
    ids: StepIds,
}

/// Counters, exported as metrics.
#[derive(Debug, Default, Clone)]
pub struct LlamaStats {
    /// `llama_decode` calls seen.
    pub steps: u64,
    /// Steps taken by requests.
    pub steps_linked: u64,
    /// Steps dropped unclaimed (expired or over the per-instance cap).
    pub steps_dropped: u64,
    /// Calls from a process not claimed at the time (counted, then claimed).
    pub late_claims: u64,
}

/// Follows llama.cpp servers, one step timeline per server process.
#[derive(Debug, Default)]
pub struct LlamaFollower {
    instances: HashMap<u32, Instance>,
    /// Counters.
    pub stats: LlamaStats,
}

impl LlamaFollower {
    /// Nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    fn instance(&mut self, pid: u32, id: InstanceId) -> &mut Instance {
        if !self.instances.contains_key(&pid) && self.instances.len() >= MAX_INSTANCES {
            let idlest = self
                .instances
                .iter()
                .min_by_key(|(_, i)| i.steps.back().map_or(0, |s| s.end_ns))
                .map(|(&p, _)| p);
            if let Some(p) = idlest {
                if let Some(i) = self.instances.remove(&p) {
                    self.stats.steps_dropped += i.steps.len() as u64;
                }
            }
        }
        self.instances.entry(pid).or_insert_with(|| Instance {
            id,
            steps: VecDeque::new(),
            ids: StepIds::default(),
        })
    }

    /// A `llama_decode` return.
    pub fn on_decode(&mut self, ev: &CallRecord) {
        if !ev.paired {
            return;
        }
        let id = match self.instances.get(&ev.tgid) {
            Some(i) => i.id,
            None => {
                self.stats.late_claims += 1;
                InstanceId {
                    pid: ev.tgid,
                    start_ticks: 0,
                }
            }
        };
        // `llama_batch.n_tokens` (int32) is the first field of the by-value argument.
        let n_tokens = ev.stack[0] as u32 as i32;
        let inst = self.instance(ev.tgid, id);
        let step = Step {
            id: inst.ids.next(ev.start_ns),
            start_ns: ev.start_ns,
            end_ns: ev.end_ns,
            batch: n_tokens.max(0) as u32,
            tokens: n_tokens.max(0) as u32,
            gpu: None,
            coll: None,
        };
        let dropped = inst.steps.len() >= MAX_STEPS;
        if dropped {
            inst.steps.pop_front();
        }
        inst.steps.push_back(step);
        self.stats.steps += 1;
        self.stats.steps_dropped += u64::from(dropped);
    }

    /// Takes the steps of `pid` inside `[from_ns, to_ns]` (see the module's linking rule).
    pub fn take_steps(
        &mut self,
        pid: u32,
        from_ns: u64,
        to_ns: u64,
    ) -> (Option<InstanceId>, Vec<Step>) {
        let Some(inst) = self.instances.get_mut(&pid) else {
            return (None, Vec::new());
        };
        let mut taken = Vec::new();
        inst.steps.retain(|s| {
            let mine = s.start_ns >= from_ns && s.end_ns <= to_ns;
            if mine && taken.len() < MAX_STEPS_PER_REQUEST {
                taken.push(*s);
                return false;
            }
            !mine
        });
        self.stats.steps_linked += taken.len() as u64;
        (Some(inst.id), taken)
    }
}

impl EngineFollower for LlamaFollower {
    fn name(&self) -> &'static str {
        "llama.cpp"
    }

    fn claim(&mut self, p: &ProcView) -> bool {
        if !is_llama_server(&p.cmdline) {
            return false;
        }
        let inst = self.instance(p.pid, p.instance());
        inst.id = p.instance();
        true
    }

    fn forget(&mut self, pid: u32) {
        self.instances.remove(&pid);
    }

    fn on_call(&mut self, ev: &CallRecord) {
        if HookId::from_u16(ev.hook) == Some(HookId::LlamaDecode) {
            self.on_decode(ev);
        }
    }

    fn take_trace(&mut self, pid: u32, ex: &Exchange) -> Option<EngineTrace> {
        // Hand-over: the request's body was read. Last output: its last chunk (streamed) or
        // its first response byte (the whole body is written after the completion).
        let handed = ex.req_done_ns;
        let last = if ex.sse {
            ex.chunk_ns.last().copied()
        } else {
            ex.resp_first_ns
        }?;
        let (instance, steps) = self.take_steps(pid, handed, last);
        if steps.is_empty() {
            return None;
        }
        Some(EngineTrace {
            engine: "llama.cpp",
            instance,
            request_id: None,
            handed_ns: handed,
            core_recv_ns: None,
            first_output_ns: steps.first().map(|s| s.end_ns),
            last_output_ns: steps.last().map(|s| s.end_ns),
            output_ns: steps
                .iter()
                .take(super::MAX_OUTPUT_TIMES)
                .map(|s| s.end_ns)
                .collect(),
            // The server runs one completion at a time: a step's tokens are all this request's.
            step_tokens: steps.iter().map(|s| s.tokens).collect(),
            steps,
            batch_unit: "tokens",
        })
    }

    fn expire(&mut self, cutoff_ns: u64) {
        for inst in self.instances.values_mut() {
            while inst.steps.front().is_some_and(|s| s.end_ns < cutoff_ns) {
                inst.steps.pop_front();
                self.stats.steps_dropped += 1;
            }
        }
    }

    fn active(&self) -> bool {
        self.stats.steps > 0
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        vec![
            ("steps", s.steps),
            ("steps_linked", s.steps_linked),
            ("steps_dropped", s.steps_dropped),
            ("late_claims", s.late_claims),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(pid: u32, start: u64, end: u64, n: u32) -> CallRecord {
        CallRecord {
            hook: HookId::LlamaDecode as u16,
            tgid: pid,
            tid: pid,
            start_ns: start,
            end_ns: end,
            paired: true,
            ret: 0,
            args: [0; 6],
            stack: [u64::from(n) | 0xdead_0000_0000, 0, 0, 0],
        }
    }

    #[test]
    fn serialized_requests_take_their_own_steps() {
        let mut f = LlamaFollower::new();
        assert!(f.claim(&ProcView {
            pid: 7,
            cmdline: "python -m llama_cpp.server --model m.gguf".into(),
            start_ticks: 99,
            ..Default::default()
        }));
        // Request A handed at 100, B at 150 (waits on the lock). A: prefill 200..300 (12
        // tokens), decodes 310..320, 330..340, last chunk 345. B: 400.., last chunk 445.
        for (s, e, n) in [
            (200, 300, 12),
            (310, 320, 1),
            (330, 340, 1),
            (400, 420, 5),
            (430, 440, 1),
        ] {
            f.on_call(&decode(7, s, e, n));
        }
        let (ia, a) = f.take_steps(7, 100, 345);
        assert_eq!(ia.unwrap().to_string(), "7:99");
        assert_eq!(a.iter().map(|s| s.batch).collect::<Vec<_>>(), [12, 1, 1]);
        let (_, b) = f.take_steps(7, 150, 445);
        assert_eq!(b.iter().map(|s| s.start_ns).collect::<Vec<_>>(), [400, 430]);
        assert_eq!(f.stats.steps_linked, 5);
        // Another process's steps are never taken.
        f.on_call(&decode(8, 500, 510, 1));
        assert!(f.take_steps(7, 0, u64::MAX).1.is_empty());
        assert_eq!(f.stats.late_claims, 1);
        f.expire(u64::MAX);
        assert_eq!(f.stats.steps_dropped, 1);
        assert!(is_llama_server("/usr/local/bin/llama-server -m x.gguf"));
        assert!(!is_llama_server("vllm serve m"));
    }
}
