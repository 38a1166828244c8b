//! The GPU side of the vLLM follower: GPU steps (`gpu/steps.rs`) become engine steps on an
//! EngineCore without doorbells (the one-GPU `uni` executor) and join doorbell steps otherwise.
use super::{Role, VllmFollower};
use crate::engine::{Step, StepColl, StepGpu};
use crate::gpu::nccl::CollectiveSync;
use crate::gpu::steps::GpuStep;

impl VllmFollower {
    /// A GPU step of a claimed process: an engine step of its own on an EngineCore without
    /// doorbells (`uni` executor), else attached to the doorbell step containing it.
    pub fn on_gpu_step(&mut self, g: &GpuStep) {
        let m = self.member(g.tgid);
        let inst = match m.role {
            Role::Frontend => None,
            _ => self.instances.get_mut(&m.core),
        };
        let Some(inst) = inst else {
            self.stats.gpu_steps_unmatched += 1;
            return;
        };
        if !inst.accepts(g.api) {
            self.stats.gpu_steps_unmatched += 1;
            return;
        }
        if m.role == Role::EngineCore && !inst.doorbells {
            let id = inst.ids.next(g.start_ns);
            inst.push(Step {
                id,
                start_ns: g.start_ns,
                end_ns: g.end_ns,
                batch: 0,
                tokens: 0,
                gpu: Some(StepGpu::of(g)),
                coll: None,
            });
            self.stats.steps += 1;
            self.stats.gpu_steps += 1;
            return;
        }
        match inst.containing(g.start_ns) {
            Some(s) => {
                match &mut s.gpu {
                    Some(have) => have.merge(g),
                    None => s.gpu = Some(StepGpu::of(g)),
                }
                self.stats.gpu_steps_attached += 1;
            }
            None => self.stats.gpu_steps_unmatched += 1,
        }
    }

    /// A collective lined up across the ranks of a core's workers: it joins the step that
    /// contains the straggler's arrival.
    pub fn on_collective(&mut self, c: &CollectiveSync) {
        let m = self.member(c.last.tgid);
        let inst = match m.role {
            Role::Frontend => None,
            _ => self.instances.get_mut(&m.core),
        };
        match inst.and_then(|i| i.containing(c.last.arrive_ns)) {
            Some(s) => {
                match &mut s.coll {
                    Some(have) => have.add(c),
                    None => s.coll = Some(StepColl::of(c)),
                }
                self.stats.collectives_attached += 1;
            }
            None => self.stats.collectives_unmatched += 1,
        }
    }
}
