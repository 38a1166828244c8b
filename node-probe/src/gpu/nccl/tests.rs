//! Unit tests of `gpu/nccl.rs`: argument positions, lining up, groups and captures.
use super::*;
use crate::event::CallRecord;

const ID: [u64; 4] = [0xfeed, 0x0100_007f_1234_0002, 7, 8];

fn rec(hook: HookId, tgid: u32, t: u64, args: [u64; 6], stack: [u64; 4], out: u64) -> GpuRecord {
    GpuRecord {
        call: CallRecord {
            hook: hook as u16,
            tgid,
            tid: tgid,
            start_ns: t,
            end_ns: t + 1_000,
            paired: true,
            ret: 0,
            args,
            stack,
        },
        stream: 0x51,
        launches: 0,
        first_launch_ns: 0,
        out,
    }
}

fn init(c: &mut Collectives, tgid: u32, rank: u64, comm: u64) {
    let r = rec(
        HookId::NcclCommInitRank,
        tgid,
        1,
        [0x7ff0, 2, rank, 0, 0, 0],
        ID,
        comm,
    );
    c.on_call(&r, &mut vec![], &mut vec![]);
}

fn all_reduce(tgid: u32, t: u64, comm: u64) -> GpuRecord {
    // count 1024 bf16 (dtype 9), op sum, comm in r9, stream on the stack.
    rec(
        HookId::NcclAllReduce,
        tgid,
        t,
        [0, 0, 1024, 9, 0, comm],
        [0x51, 0, 0, 0],
        0,
    )
}

#[test]
fn decodes_argument_positions() {
    let r = rec(
        HookId::NcclReduce,
        1,
        5,
        [1, 2, 300, 7, 2, 1],
        [0xc0, 0x51, 0, 0],
        0,
    );
    assert_eq!(
        decode(&r),
        Some(NcclCall::Collective {
            func: CollFunc::Reduce,
            comm: 0xc0,
            count: 300,
            dtype: 7,
            bytes: 1200,
            peer: Some(1),
            stream: 0x51,
        })
    );
    let r = rec(
        HookId::NcclCommInitRank,
        1,
        5,
        [0x7ff0, 4, 3, 0, 0, 0],
        ID,
        0xc1,
    );
    let Some(NcclCall::CommInit {
        comm,
        nranks,
        rank,
        id,
    }) = decode(&r)
    else {
        panic!()
    };
    assert_eq!((comm, nranks, rank), (0xc1, 4, 3));
    assert_eq!(id, id_hash(&ID));
    let r = rec(HookId::NcclSend, 1, 5, [0, 10, 4, 1, 0xc0, 0x51], [0; 4], 0);
    assert!(matches!(
        decode(&r),
        Some(NcclCall::Collective {
            func: CollFunc::Send,
            bytes: 80,
            peer: Some(1),
            ..
        })
    ));
    assert_eq!(
        decode(&rec(HookId::CuGraphLaunch, 1, 5, [0; 6], [0; 4], 0)),
        None
    );
    let j = serde_json::to_value(decode(&all_reduce(1, 5, 0xc0)).unwrap()).unwrap();
    assert_eq!(j["op"], "collective");
    assert_eq!(j["func"], "all_reduce");
    assert_eq!(j["bytes"], 2048);
}

#[test]
fn the_last_rank_is_the_straggler() {
    let mut c = Collectives::new();
    init(&mut c, 10, 0, 0xa0);
    init(&mut c, 11, 1, 0xb0);
    let (mut calls, mut synced) = (vec![], vec![]);
    c.on_call(&all_reduce(10, 1_000_000, 0xa0), &mut calls, &mut synced);
    assert!(synced.is_empty());
    c.on_call(&all_reduce(11, 6_000_000, 0xb0), &mut calls, &mut synced);
    assert_eq!(calls.len(), 2);
    assert_eq!((calls[0].seq, calls[1].seq), (1, 1));
    assert_eq!(calls[0].comm_id, calls[1].comm_id);
    assert_eq!(synced.len(), 1);
    let s = &synced[0];
    assert!(s.complete);
    assert_eq!(
        (s.last.rank, s.wait_ns, s.lag_ns),
        (1, 5_000_000, 5_000_000)
    );
    // The next collective lines up by its own sequence number, whatever the order.
    synced.clear();
    c.on_call(&all_reduce(11, 7_000_000, 0xb0), &mut calls, &mut synced);
    c.on_call(&all_reduce(10, 7_500_000, 0xa0), &mut calls, &mut synced);
    assert_eq!((synced[0].seq, synced[0].last.rank), (2, 0));
    assert_eq!(c.stats.aligned, 2);
}

#[test]
fn groups_arrive_at_their_end_and_captures_are_flagged() {
    let mut c = Collectives::new();
    init(&mut c, 10, 0, 0xa0);
    let (mut calls, mut synced) = (vec![], vec![]);
    let g = |h, t| rec(h, 10, t, [0; 6], [0; 4], 0);
    c.on_call(&g(HookId::NcclGroupStart, 100), &mut calls, &mut synced);
    c.on_call(&all_reduce(10, 200, 0xa0), &mut calls, &mut synced);
    assert!(calls.is_empty(), "held until the group ends");
    c.on_call(&g(HookId::NcclGroupEnd, 900), &mut calls, &mut synced);
    assert_eq!((calls[0].arrive_ns, calls[0].grouped), (900, true));
    c.on_capture(10, 0x51, true);
    c.on_call(&all_reduce(10, 2_000, 0xa0), &mut calls, &mut synced);
    c.on_capture(10, 0x51, false);
    assert!(calls[1].captured);
    assert_eq!(c.stats.captured, 1);
    // Unknown communicator: reported, never lined up.
    c.on_call(&all_reduce(10, 3_000, 0xdead), &mut calls, &mut synced);
    assert_eq!((calls[2].rank, c.stats.unknown_comm), (None, 1));
}

#[test]
fn ranks_elsewhere_settle_after_the_timeout() {
    let mut c = Collectives::new();
    // Four ranks, two on this node.
    for (tgid, rank, comm) in [(10, 0, 0xa0), (11, 1, 0xb0)] {
        let r = rec(
            HookId::NcclCommInitRank,
            tgid,
            1,
            [0, 4, rank, 0, 0, 0],
            ID,
            comm,
        );
        c.on_call(&r, &mut vec![], &mut vec![]);
    }
    let (mut calls, mut synced) = (vec![], vec![]);
    c.on_call(&all_reduce(10, 1_000, 0xa0), &mut calls, &mut synced);
    c.on_call(&all_reduce(11, 3_000, 0xb0), &mut calls, &mut synced);
    assert!(synced.is_empty());
    c.settle_expired(1_000 + ALIGN_TIMEOUT_NS, &mut synced);
    assert_eq!(synced.len(), 1);
    assert!(!synced[0].complete);
    assert_eq!((synced[0].last.rank, synced[0].wait_ns), (1, 2_000));
    assert_eq!(c.stats.partial, 1);
}
