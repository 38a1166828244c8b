//! One EngineCore's step timeline: its doorbell steps (open and ended), step ids, and which
//! step an output message belongs to.
use std::collections::VecDeque;

use super::MAX_STEPS;
use crate::engine::{InstanceId, Step, StepIds};
use crate::gpu::Api;

/// One EngineCore's step timeline.
#[derive(Debug)]
pub(super) struct Instance {
    pub(super) id: InstanceId,
    pub(super) steps: VecDeque<Step>,
    pub(super) open_step: Option<Step>,
    pub(super) ids: StepIds,
    /// This core's output sends are visible (steps are attributed there).
    pub(super) outputs_seen: bool,
    /// The step the latest output message was attributed to, and when it was sent.
    pub(super) last_output: Option<(u64, u64)>,
    /// This core rang a doorbell: its steps come from doorbells, GPU steps attach to them.
    pub(super) doorbells: bool,
    /// The CUDA API its GPU steps come from. A runtime call can reach the driver's entry
    /// points too, so one process can yield a step through each: the runtime's are kept
    /// (PyTorch's event record and synchronize, which end steps, go through it).
    pub(super) gpu_api: Option<Api>,
}

impl Instance {
    pub(super) fn new(id: InstanceId) -> Self {
        Self {
            id,
            steps: VecDeque::new(),
            open_step: None,
            ids: StepIds::default(),
            outputs_seen: false,
            last_output: None,
            doorbells: false,
            gpu_api: None,
        }
    }

    pub(super) fn step(&self, id: u64) -> Option<Step> {
        let first = self.steps.front()?.id;
        let s = *self
            .steps
            .get(usize::try_from(id.checked_sub(first)?).ok()?)?;
        (s.id == id).then_some(s)
    }

    /// The last step that ended at or before `ts` (GPU steps can be known before an output
    /// sent earlier than their end is read: look past them).
    pub(super) fn last_ended_by(&self, ts: u64) -> Option<u64> {
        self.steps
            .iter()
            .rev()
            .take(8)
            .find(|s| s.end_ns <= ts)
            .map(|s| s.id)
    }

    /// Whether an output message about to be attributed to `last_ended` (the last step ended
    /// before it) is in fact the open step's. A step sends one output message, after its end;
    /// when `last_ended` already had its message and the open step was running when that one
    /// went out, this second message is the open step's — the step ended without a worker
    /// doorbell (vLLM's notify socket holds one pending notification and drops the rest, so
    /// doorbells are lost at random; the step after it would otherwise stretch over the next
    /// idle gap, seen as a prefill of 400 ms in a 40 ms request).
    pub(super) fn outputs_after_missing_end(&self, last_ended: Option<u64>) -> bool {
        match (self.open_step, self.last_output) {
            (Some(open), Some((step, sent_ns))) => {
                last_ended == Some(step) && open.start_ns < sent_ns
            }
            _ => false,
        }
    }

    /// Whether a GPU step through `api` belongs to this instance's steps (see `gpu_api`).
    pub(super) fn accepts(&mut self, api: Api) -> bool {
        match self.gpu_api {
            Some(a) if a == api => true,
            Some(Api::Runtime) => false,
            _ => {
                self.gpu_api = Some(api);
                true
            }
        }
    }

    /// The doorbell step that contains a GPU step starting at `start_ns`: the latest one (open
    /// or among the last few) that started at or before it.
    pub(super) fn containing(&mut self, start_ns: u64) -> Option<&mut Step> {
        if self.open_step.is_some_and(|s| s.start_ns <= start_ns) {
            return self.open_step.as_mut();
        }
        self.steps
            .iter_mut()
            .rev()
            .take(8)
            .find(|s| s.start_ns <= start_ns)
    }

    pub(super) fn push(&mut self, s: Step) {
        if self.steps.len() >= MAX_STEPS {
            self.steps.pop_front();
        }
        self.steps.push_back(s);
    }
}
