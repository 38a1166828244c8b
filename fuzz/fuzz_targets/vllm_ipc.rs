//! vLLM's IPC as node-probe follows it (ZMQ frames, msgpack request ids, step doorbells) with
//! hostile bytes on every socket of a two-instance deployment: no panic, the follower's maps stay
//! within their bounds, and a request it hands back holds steps in time order.
#![no_main]
use inferscope_common::{EventKind, SockInfo, SyscallId};
use libfuzzer_sys::fuzz_target;
use node_probe::engine::vllm::{
    parse_request_messages, Role, VllmFollower, MAX_INFLIGHT, MAX_INSTANCES,
};
use node_probe::engine::ProcView;
use node_probe::event::{SockRecord, SocketId};

/// (pid, parent, role): a frontend and two engine cores with a worker each.
const MEMBERS: [(u32, u32, Role); 5] = [
    (10, 1, Role::Frontend),
    (20, 10, Role::EngineCore),
    (30, 20, Role::Worker),
    (40, 10, Role::EngineCore),
    (50, 40, Role::Worker),
];

fn record(pid: u32, send: bool, ts: u64, payload: &[u8], extra: usize) -> SockRecord {
    SockRecord {
        kind: if send {
            EventKind::SockSend
        } else {
            EventKind::SockRecv
        },
        syscall: if send {
            SyscallId::Sendto
        } else {
            SyscallId::Recvfrom
        },
        tgid: pid,
        tid: pid,
        cpu: 0,
        start_ns: ts,
        end_ns: ts,
        fd: 3,
        aux_fd: -1,
        ret: (payload.len() + extra) as i64,
        sock: SockInfo::default(),
        socket: SocketId::Unix {
            inode: u64::from(pid),
            peer: 1,
        },
        payload: payload.to_vec(),
    }
}

fuzz_target!(|input: &[u8]| {
    let mut f = VllmFollower::new();
    for (pid, ppid, role) in MEMBERS {
        let view = ProcView {
            pid,
            ppid,
            start_ticks: u64::from(pid),
            ..Default::default()
        };
        f.set_member(&view, role);
    }
    let mut ts = 1_000u64;
    let mut rest = input;
    // Ops: [op][len][data...]: op & 7 picks the member and direction (5 members × send/recv),
    // 6 = take the response whose id is `data`, 7 = expire; op >> 3 adds uncaptured bytes.
    while let [op, len, tail @ ..] = rest {
        let len = (*len as usize).min(tail.len());
        let (data, next) = tail.split_at(len);
        rest = next;
        ts += 1 + u64::from(op >> 3) * 1_000;
        match op & 7 {
            k @ 0..=4 => {
                let (pid, _, _) = MEMBERS[k as usize];
                let send = op & 8 == 0;
                let _ = parse_request_messages(data);
                f.on_unix(&record(pid, send, ts, data, usize::from(op >> 4)));
            }
            5 => {
                let (pid, _, _) = MEMBERS[0];
                f.on_unix(&record(pid, op & 8 == 0, ts, data, 0));
            }
            6 => {
                if let Ok(id) = std::str::from_utf8(data) {
                    if let Some((_, steps, _)) = f.take_for_response(id) {
                        for w in steps.windows(2) {
                            assert!(w[0].start_ns <= w[1].start_ns, "steps out of order");
                        }
                    }
                }
            }
            _ => f.expire(ts.saturating_sub(len as u64 * 10_000)),
        }
        assert!(f.inflight() <= MAX_INFLIGHT, "requests unbounded");
        assert!(f.instances() <= MAX_INSTANCES, "instances unbounded");
    }
});
