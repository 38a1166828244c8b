//! Tests of the vLLM follower: parsing, one request through steps, async scheduling, two
//! instances on one node, roles, bounds.
use super::*;
use crate::event::SocketId;
use crate::gpu::Api;
use inferscope_common::{SockInfo, SyscallId};

/// The ADD message vLLM 0.32 sent for one request (start of it, as captured on the wire).
const ADD: &[u8] = b"\x01\x01\x00\x02\x00\x00\x00\x00\x00\x00\x01{\xdc\x00\x16\xd9 cmpl-9f0db1b837668a6b-0-8c2050b7\x95\x01\xcd\x01\x1dQ";
const OUT: &[u8] = b"\x02\x00\x00\x00\x00\x00\x00\x03!\x99\x00\x91\xdc\x00\x12\xd9 cmpl-9f0db1b837668a6b-0-8c2050b7\x91\xcd\x03\x1d\xc0";

fn view(pid: u32, ppid: u32) -> ProcView {
    ProcView {
        pid,
        ppid,
        start_ticks: u64::from(pid) * 7,
        ..Default::default()
    }
}

/// A follower knowing one deployment: frontend `api`, core `core` and its worker.
fn deployment(f: &mut VllmFollower, api: u32, core: u32, worker: u32) {
    f.set_member(&view(api, 1), Role::Frontend);
    f.set_member(&view(core, api), Role::EngineCore);
    f.set_member(&view(worker, core), Role::Worker);
}

fn ev(pid: u32, kind: EventKind, ts: u64, payload: &[u8]) -> SockRecord {
    SockRecord {
        kind,
        syscall: SyscallId::Sendto,
        tgid: pid,
        tid: pid,
        cpu: 0,
        start_ns: ts,
        end_ns: ts,
        fd: 3,
        aux_fd: -1,
        ret: payload.len() as i64,
        sock: SockInfo::default(),
        socket: SocketId::Unix { inode: 1, peer: 2 },
        payload: payload.to_vec(),
    }
}

#[test]
fn parses_add_and_abort() {
    let (ty, ids) = parse_request_message(ADD).unwrap();
    assert_eq!(ty, 0);
    assert_eq!(ids, [&b"cmpl-9f0db1b837668a6b-0-8c2050b7"[..]]);
    let abort = b"\x01\x01\x01\x00\x13\x92\xa8cmpl-a-1\xa8cmpl-b-2";
    let (ty, ids) = parse_request_message(abort).unwrap();
    assert_eq!((ty, ids.len()), (1, 2));
    assert!(parse_request_message(b"\x00\x01\x00").is_none());
    assert!(parse_request_message(&ADD[..14]).is_none());
    assert!(parse_request_message(OUT).is_none());
    // two ADDs batched into one write by ZMQ
    let full: Vec<u8> = {
        let mut body = vec![0x91, 0xd9, 5];
        body.extend_from_slice(b"cmpl-");
        let mut m = vec![0x01, 0x01, 0x00, 0x00, body.len() as u8];
        m.extend_from_slice(&body);
        m
    };
    let mut batch = full.clone();
    batch.extend_from_slice(&full);
    batch.extend_from_slice(ADD);
    let msgs = parse_request_messages(&batch);
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[2].1[0], &b"cmpl-9f0db1b837668a6b-0-8c2050b7"[..]);
    let ids = |s| response_ids_of(s).collect::<Vec<_>>();
    assert_eq!(
        ids("cmpl-9f0db1b837668a6b-0-8c2050b7"),
        ["cmpl-9f0db1b837668a6b-0", "cmpl-9f0db1b837668a6b"]
    );
    assert_eq!(ids("chatcmpl-loadgen-77-9772b606"), ["chatcmpl-loadgen-77"]);
    assert_eq!(
        ids("cmpl-loadgen-3-0-ab"),
        ["cmpl-loadgen-3-0", "cmpl-loadgen-3"]
    );
    assert!(ids("plain").is_empty());
}

#[test]
fn follows_one_request_through_steps() {
    let mut f = VllmFollower::new();
    let (api, core, worker) = (10, 11, 12);
    deployment(&mut f, api, core, worker);
    f.on_unix(&ev(api, EventKind::SockSend, 100, ADD));
    f.on_unix(&ev(core, EventKind::SockRecv, 110, ADD));
    let bell = b"\x00\x01\x00";
    for (start, end, out) in [(120, 150, 160), (170, 180, 190), (200, 210, 220)] {
        f.on_unix(&ev(core, EventKind::SockSend, start, bell));
        f.on_unix(&ev(worker, EventKind::SockRecv, start + 1, bell));
        f.on_unix(&ev(worker, EventKind::SockSend, end, bell));
        f.on_unix(&ev(core, EventKind::SockRecv, end + 1, bell));
        f.on_unix(&ev(core, EventKind::SockSend, end + 2, OUT));
        f.on_unix(&ev(api, EventKind::SockRecv, out, OUT));
    }
    // a step without this request
    f.on_unix(&ev(core, EventKind::SockSend, 230, bell));
    f.on_unix(&ev(worker, EventKind::SockSend, 240, bell));
    assert_eq!(f.inflight(), 1);
    let (r, steps, inst) = f.take_for_response("cmpl-9f0db1b837668a6b").unwrap();
    assert_eq!(inst.map(|i| i.to_string()), Some("11:77".to_string()));
    assert_eq!((r.handed_ns, r.core_recv_ns), (100, Some(110)));
    assert_eq!(
        (r.first_output_ns, r.last_output_ns, r.outputs),
        (Some(160), Some(220), 3)
    );
    // The engine's token times: one per output message.
    assert_eq!(r.output_ns.len(), 3);
    assert_eq!(
        (r.output_ns.first(), r.output_ns.last()),
        (Some(&160), Some(&220))
    );
    assert_eq!(steps.len(), 3);
    assert_eq!(
        (steps[0].start_ns, steps[0].end_ns, steps[0].batch),
        (120, 150, 1)
    );
    assert_eq!(f.inflight(), 0);
    assert!(
        f.by_response.is_empty(),
        "every index entry goes with the join"
    );
    assert!(f.take_for_response("cmpl-9f0db1b837668a6b").is_none());
    assert_eq!(f.stats.steps, 4);
}

/// The engine runs the next step before the frontend reads the outputs of the previous
/// one: the step is taken from EngineCore's send, not the frontend's receive.
#[test]
fn steps_attributed_at_the_engine_not_the_frontend() {
    let mut f = VllmFollower::new();
    let (api, core, worker) = (10, 11, 12);
    deployment(&mut f, api, core, worker);
    f.on_unix(&ev(api, EventKind::SockSend, 100, ADD));
    let bell = b"\x00\x01\x00";
    // step 1: 120..150, outputs sent by the core at 151
    f.on_unix(&ev(core, EventKind::SockSend, 120, bell));
    f.on_unix(&ev(worker, EventKind::SockSend, 150, bell));
    f.on_unix(&ev(core, EventKind::SockSend, 151, OUT));
    // step 2 (without this request) runs 152..160 before the frontend reads at 170
    f.on_unix(&ev(core, EventKind::SockSend, 152, bell));
    f.on_unix(&ev(worker, EventKind::SockSend, 160, bell));
    f.on_unix(&ev(api, EventKind::SockRecv, 170, OUT));
    let (r, steps, _) = f.take_for_response("cmpl-9f0db1b837668a6b").unwrap();
    assert_eq!(r.first_output_ns, Some(170));
    assert_eq!(steps.iter().map(|s| s.id).collect::<Vec<_>>(), [1]);
    assert_eq!(steps[0].batch, 1);
    assert_eq!(f.step(core, 2).unwrap().batch, 0);
}

/// vLLM's notify socket drops a worker's doorbell now and then (it holds one pending
/// notification). The step it would have ended is ended by its output message, so the next
/// step starts at its own doorbell rather than stretching back over the idle gap before it —
/// as captured on vLLM 0.32: core rings at 61.83 ms, outputs of the previous step at 61.98, of
/// this one at 62.81 (no worker doorbell), idle, core rings at 480.44, worker at 483.69.
#[test]
fn a_lost_worker_doorbell_does_not_stretch_the_next_step() {
    let mut f = VllmFollower::new();
    let (api, core, worker) = (10, 11, 12);
    deployment(&mut f, api, core, worker);
    let bell = b"\x00\x01\x00";
    f.on_unix(&ev(api, EventKind::SockSend, 100, ADD));
    // step 1: 120..150 (its outputs at 165, after step 2 began)
    f.on_unix(&ev(core, EventKind::SockSend, 120, bell));
    f.on_unix(&ev(worker, EventKind::SockSend, 150, bell));
    // step 2 from 160; its worker doorbell is lost; outputs of step 1, then of step 2
    f.on_unix(&ev(core, EventKind::SockSend, 160, bell));
    f.on_unix(&ev(core, EventKind::SockSend, 165, OUT));
    f.on_unix(&ev(core, EventKind::SockSend, 190, OUT));
    // idle; step 3 at 10 000..10 030
    f.on_unix(&ev(core, EventKind::SockSend, 10_000, bell));
    f.on_unix(&ev(worker, EventKind::SockSend, 10_030, bell));
    assert_eq!(f.stats.steps_ended_by_outputs, 1);
    let s2 = f.step(core, 2).unwrap();
    assert_eq!((s2.start_ns, s2.end_ns, s2.batch), (160, 190, 1));
    let s3 = f.step(core, 3).unwrap();
    assert_eq!((s3.start_ns, s3.end_ns), (10_000, 10_030));
    let (_, steps, _) = f.take_for_response("cmpl-9f0db1b837668a6b").unwrap();
    assert_eq!(steps.iter().map(|s| s.id).collect::<Vec<_>>(), [1, 2]);
}

/// Two engines on one node, their doorbells interleaved: each request gets only its own
/// core's steps, and the steps' timings are their core's.
#[test]
fn two_instances_keep_their_own_steps() {
    let mut f = VllmFollower::new();
    deployment(&mut f, 10, 11, 12);
    deployment(&mut f, 20, 21, 22);
    let add = |n: &str| {
        let mut m = vec![0x01, 0x01, 0x00, 0x00, 0x40, 0x91, 0xd9, n.len() as u8];
        m.extend_from_slice(n.as_bytes());
        m
    };
    let out = |n: &str| {
        let mut m = vec![0x00, 0x40, 0x91, 0xd9, n.len() as u8];
        m.extend_from_slice(n.as_bytes());
        m
    };
    let (a, b) = (
        "cmpl-aaaaaaaaaaaa-0-11111111",
        "cmpl-bbbbbbbbbbbb-0-22222222",
    );
    f.on_unix(&ev(10, EventKind::SockSend, 100, &add(a)));
    f.on_unix(&ev(20, EventKind::SockSend, 101, &add(b)));
    f.on_unix(&ev(11, EventKind::SockRecv, 102, &add(a)));
    f.on_unix(&ev(21, EventKind::SockRecv, 103, &add(b)));
    let bell = b"\x00\x01\x00";
    // Core 11 steps at 1000.., core 21 at 1005.. (overlapping), 3 steps each.
    for k in 0..3u64 {
        let t = 1000 + k * 100;
        f.on_unix(&ev(11, EventKind::SockSend, t, bell));
        f.on_unix(&ev(21, EventKind::SockSend, t + 5, bell));
        f.on_unix(&ev(12, EventKind::SockSend, t + 40, bell));
        f.on_unix(&ev(22, EventKind::SockSend, t + 60, bell));
        f.on_unix(&ev(11, EventKind::SockSend, t + 41, &out(a)));
        f.on_unix(&ev(21, EventKind::SockSend, t + 61, &out(b)));
    }
    let (_, sa, ia) = f.take_for_response("cmpl-aaaaaaaaaaaa").unwrap();
    let (_, sb, ib) = f.take_for_response("cmpl-bbbbbbbbbbbb").unwrap();
    assert_eq!(ia.unwrap().pid, 11);
    assert_eq!(ib.unwrap().pid, 21);
    assert_eq!(
        sa.iter()
            .map(|s| (s.start_ns, s.end_ns))
            .collect::<Vec<_>>(),
        [(1000, 1040), (1100, 1140), (1200, 1240)]
    );
    assert_eq!(
        sb.iter()
            .map(|s| (s.start_ns, s.end_ns))
            .collect::<Vec<_>>(),
        [(1005, 1060), (1105, 1160), (1205, 1260)]
    );
    assert!(sa.iter().chain(&sb).all(|s| s.batch == 1));
    assert_eq!(f.stats.steps, 6);
}

#[test]
fn roles_and_frontends() {
    assert_eq!(role_from_comm("VLLM::EngineCor"), Some(Role::EngineCore));
    assert_eq!(role_from_comm("VLLM::Worker_TP"), Some(Role::Worker));
    assert_eq!(role_from_comm("ForkPoolWorker-"), None, "not vLLM's");
    assert_eq!(role_from_comm("python3"), None);
    assert!(is_vllm_frontend(
        "/root/.cache/venv/bin/python /root/.cache/venv/bin/vllm serve /m --port 8000"
    ));
    assert!(is_vllm_frontend(
        "python3 -m vllm.entrypoints.openai.api_server --model m"
    ));
    assert!(!is_vllm_frontend("python3 my_vllm_tool.py serve"));
    assert!(!is_vllm_frontend("python3 -m llama_cpp.server --model x"));
    let mut f = VllmFollower::new();
    assert!(!f.claim(&ProcView {
        pid: 5,
        comm: "ForkPoolWorker-1".into(),
        cmdline: "python3 celery worker".into(),
        ..Default::default()
    }));
}

#[test]
fn bounded_and_expiring() {
    let mut f = VllmFollower::new();
    for i in 0..(MAX_INFLIGHT + 10) {
        let id = format!("cmpl-{i:016x}-0-00000000");
        let mut m = vec![0x01, 0x01, 0x00, 0x00, 0x40, 0x91, 0xd9, id.len() as u8];
        m.extend_from_slice(id.as_bytes());
        f.on_unix(&ev(1, EventKind::SockSend, i as u64, &m));
    }
    assert_eq!(f.inflight(), MAX_INFLIGHT);
    assert_eq!(f.stats.dropped_inflight, 10);
    f.expire(u64::MAX);
    assert_eq!(f.inflight(), 0);
    assert!(f.by_response.is_empty(), "index cleaned with the requests");
    // garbage never panics
    let mut x = 7u64;
    for _ in 0..2000 {
        let mut b = [0u8; 48];
        for v in b.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *v = x as u8;
        }
        f.on_unix(&ev(1, EventKind::SockSend, 1, &b));
        f.on_unix(&ev(1, EventKind::SockRecv, 1, &b));
    }
}

/// An ADD for `id` with a prompt of `n` tokens, as the API server frames it.
fn add_msg(id: &str, n: u8) -> Vec<u8> {
    let mut body = vec![0x93, 0xd9, id.len() as u8];
    body.extend_from_slice(id.as_bytes());
    body.push(0x90 | n.min(15));
    body.extend(std::iter::repeat_n(1u8, usize::from(n.min(15))));
    body.push(0xc0);
    let mut m = vec![0x01, 0x01, 0x00, 0x00, body.len() as u8];
    m.extend_from_slice(&body);
    m
}

/// EngineCore's output message naming `ids`.
fn out_msg(ids: &[&str]) -> Vec<u8> {
    let mut body = vec![0x90 | ids.len() as u8];
    for id in ids {
        body.extend_from_slice(&[0x92, 0xd9, id.len() as u8]);
        body.extend_from_slice(id.as_bytes());
        body.extend_from_slice(&[0x91, 0x07]);
    }
    let mut m = vec![0x00, body.len() as u8];
    m.extend_from_slice(&body);
    m
}

fn gpu_step(tgid: u32, api: Api, start: u64, end: u64, gpu_ns: u64) -> GpuStep {
    GpuStep {
        tgid,
        api,
        seq: 0,
        start_ns: start,
        launched_ns: start + 10,
        end_ns: end,
        event: 0xe1,
        graph_launches: 1,
        kernel_launches: 2,
        class: crate::gpu::steps::StepClass::FullGraph,
        dtoh_bytes: 8,
        htod_bytes: 0,
        sync_wait_ns: end - start - 10,
        sync_immediate: false,
        gpu_ns,
        launch_ns: 10,
        host_bound: false,
        upper_bound: false,
    }
}

#[test]
fn parses_the_prompt_length_of_adds() {
    assert_eq!(
        parse_adds(ADD),
        [(&b"cmpl-9f0db1b837668a6b-0-8c2050b7"[..], Some(5))]
    );
    let mut two = add_msg("cmpl-aaaaaaaa-0-1", 7);
    two.extend(add_msg("cmpl-bbbbbbbb-0-2", 3));
    let adds = parse_adds(&two);
    assert_eq!(adds.len(), 2);
    assert_eq!((adds[0].1, adds[1].1), (Some(7), Some(3)));
    // Cut before the prompt's array header: the id is still an ADD.
    let cut = &two[..5 + 3 + 17];
    assert_eq!(parse_adds(cut), [(&b"cmpl-aaaaaaaa-0-1"[..], None)]);
}

/// One GPU, the `uni` executor: no worker, no doorbells; EngineCore's GPU steps are the
/// steps, async scheduling (step N+1 completes before the output of step N is read) included;
/// each request's tokens per step are its prompt, then one.
#[test]
fn uni_executor_gpu_steps_are_the_engine_steps() {
    let mut f = VllmFollower::new();
    let (api, core) = (10, 11);
    f.set_member(&view(api, 1), Role::Frontend);
    f.set_member(&view(core, api), Role::EngineCore);
    let (a, b) = ("cmpl-aaaaaaaa-0-1", "cmpl-bbbbbbbb-0-2");
    f.on_unix(&ev(api, EventKind::SockSend, 100, &add_msg(a, 7)));
    f.on_unix(&ev(api, EventKind::SockSend, 101, &add_msg(b, 3)));
    // Step 1: both prefill; step 2: both decode; its GPU step is read before step 1's output.
    f.on_gpu_step(&gpu_step(core, Api::Runtime, 200, 300, 100));
    f.on_gpu_step(&gpu_step(core, Api::Runtime, 250, 400, 100));
    f.on_unix(&ev(core, EventKind::SockSend, 310, &out_msg(&[a, b])));
    f.on_unix(&ev(core, EventKind::SockSend, 410, &out_msg(&[a, b])));
    // Step 3: only a. A driver-API step of the same process is not another step.
    f.on_gpu_step(&gpu_step(core, Api::Driver, 420, 500, 80));
    f.on_gpu_step(&gpu_step(core, Api::Runtime, 420, 500, 80));
    f.on_unix(&ev(core, EventKind::SockSend, 510, &out_msg(&[a])));
    assert_eq!((f.stats.gpu_steps, f.stats.gpu_steps_unmatched), (3, 1));
    let (ra, steps, inst) = f.take_for_response("cmpl-aaaaaaaa").unwrap();
    assert_eq!(inst.map(|i| i.pid), Some(core));
    assert_eq!(steps.len(), 3);
    assert_eq!(ra.step_tokens, [7, 1, 1]);
    assert_eq!(
        steps
            .iter()
            .map(|s| (s.batch, s.tokens))
            .collect::<Vec<_>>(),
        [(2, 10), (2, 2), (1, 1)]
    );
    assert_eq!(steps[0].gpu.map(|g| g.gpu_ns), Some(100));
    assert_eq!((steps[1].start_ns, steps[1].end_ns), (250, 400));
    let (rb, steps_b, _) = f.take_for_response("cmpl-bbbbbbbb").unwrap();
    assert_eq!((rb.step_tokens, steps_b.len()), (vec![3, 1], 2));
}

/// With workers (tensor parallel), doorbells make the steps and each worker's GPU step joins
/// the doorbell step it started in; two ranks merge into one.
#[test]
fn worker_gpu_steps_attach_to_doorbell_steps() {
    let mut f = VllmFollower::new();
    let (api, core, w0, w1) = (10, 11, 12, 13);
    deployment(&mut f, api, core, w0);
    f.set_member(&view(w1, core), Role::Worker);
    let bell = b"\x00\x01\x00";
    f.on_unix(&ev(api, EventKind::SockSend, 100, ADD));
    f.on_unix(&ev(core, EventKind::SockSend, 120, bell));
    f.on_gpu_step(&gpu_step(w0, Api::Runtime, 125, 170, 40));
    f.on_gpu_step(&gpu_step(w1, Api::Runtime, 126, 178, 50));
    f.on_unix(&ev(w0, EventKind::SockSend, 180, bell));
    f.on_unix(&ev(core, EventKind::SockSend, 182, OUT));
    // A GPU step before any doorbell step started: nowhere to go.
    f.on_gpu_step(&gpu_step(w0, Api::Runtime, 50, 60, 10));
    assert_eq!(
        (
            f.stats.steps,
            f.stats.gpu_steps_attached,
            f.stats.gpu_steps_unmatched
        ),
        (1, 2, 1)
    );
    let (r, steps, _) = f.take_for_response("cmpl-9f0db1b837668a6b").unwrap();
    let g = steps[0].gpu.unwrap();
    assert_eq!((g.ranks, g.gpu_ns, g.kernel_launches), (2, 50, 4));
    assert_eq!((steps[0].start_ns, steps[0].end_ns), (120, 180));
    assert_eq!((r.step_tokens, steps[0].tokens), (vec![5], 5));
}
