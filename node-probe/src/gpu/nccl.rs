//! NCCL calls seen by the NCCL hooks (`hooks.rs`, family `Nccl`): communicators, collectives
//! and point-to-point calls, lined up across ranks to name stragglers.
//!
//! * **Communicators.** `ncclCommInitRank[Config]` gives (rank, nranks) and, on the stack, the
//!   128-byte unique id every rank of the communicator was handed; its first 32 bytes (the
//!   bootstrap magic and address) hash to [`Comm::id`], the same on every rank and node. The
//!   new handle is read from `*comm` at the return. `ncclCommSplit` children get an id derived
//!   from the parent's, the split's ordinal and colour (the same on every member); their rank
//!   comes from `ncclCommUserRank` when the application asks for it.
//! * **Collectives.** Each call gets the next sequence number of its (process, handle), so the
//!   same collective has the same `(comm id, seq)` on every rank. Calls between
//!   `ncclGroupStart` and `ncclGroupEnd` on a thread are launched at the group's end: that is
//!   their arrival. Calls made while their stream captures a CUDA graph are flagged `captured`
//!   (replays of the graph do not call NCCL again).
//! * **Stragglers.** Arrivals of one collective are gathered by `(comm id, seq)`; once every
//!   rank has arrived (or [`ALIGN_TIMEOUT_NS`] passed with ranks on other nodes), the last
//!   rank is the straggler, `wait_ns` (last − first arrival) what the earliest rank waited and
//!   `lag_ns` (last − second-to-last) how much the straggler alone delayed the collective.
//!
//! Argument positions are the x86-64 SysV ones of `../shared/notes/gpu.md` §2. Everything is
//! bounded; what is dropped or given up is counted in [`NcclStats`].
use std::collections::{HashMap, HashSet, VecDeque};

use serde::Serialize;

use super::GpuRecord;
use crate::hooks::HookId;

/// Communicators followed at once (beyond it new ones are not followed, counted).
pub const MAX_COMMS: usize = 4096;
/// Collectives waiting for the other ranks' arrivals.
pub const MAX_PENDING: usize = 16_384;
/// Streams capturing at once.
pub const MAX_CAPTURING: usize = 4096;
/// Collectives held per thread inside a group.
pub const MAX_GROUPED: usize = 4096;
/// How long a collective waits for the ranks of this node before it is settled with those
/// that arrived (the others are on other nodes, or were not seen).
pub const ALIGN_TIMEOUT_NS: u64 = 2_000_000_000;

/// A collective or point-to-point operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CollFunc {
    /// `ncclAllReduce`.
    AllReduce,
    /// `ncclReduceScatter`.
    ReduceScatter,
    /// `ncclAllGather`.
    AllGather,
    /// `ncclBroadcast` (and `ncclBcast`, which calls it).
    Broadcast,
    /// `ncclReduce`.
    Reduce,
    /// `ncclSend`.
    Send,
    /// `ncclRecv`.
    Recv,
    /// `ncclAlltoAll`.
    AllToAll,
}

impl CollFunc {
    /// Stable name (exported).
    pub fn name(self) -> &'static str {
        match self {
            Self::AllReduce => "all_reduce",
            Self::ReduceScatter => "reduce_scatter",
            Self::AllGather => "all_gather",
            Self::Broadcast => "broadcast",
            Self::Reduce => "reduce",
            Self::Send => "send",
            Self::Recv => "recv",
            Self::AllToAll => "all_to_all",
        }
    }

    /// Point-to-point: ranks do not all take part, so arrivals are not lined up.
    pub fn is_p2p(self) -> bool {
        matches!(self, Self::Send | Self::Recv)
    }
}

/// Size in bytes of an `ncclDataType_t` (`nccl.h`); `None` for values this build does not know.
pub fn dtype_size(dtype: u32) -> Option<u64> {
    Some(match dtype {
        0 | 1 | 10 | 11 => 1,
        2 | 3 | 7 => 4,
        4 | 5 | 8 => 8,
        6 | 9 => 2,
        _ => return None,
    })
}

/// One NCCL call, decoded from its registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum NcclCall {
    /// A communicator was created (`ncclCommInitRank*`).
    CommInit {
        /// The new handle (read at the return; 0 when the init failed).
        comm: u64,
        /// Ranks in it.
        nranks: u32,
        /// This process's rank.
        rank: u32,
        /// Hash of the unique id's first 32 bytes (0: not on the stack, the scalable init).
        id: u64,
    },
    /// A communicator was split off another (`ncclCommSplit`).
    CommSplit {
        /// Parent handle.
        parent: u64,
        /// New handle (0 for `NCCL_SPLIT_NOCOLOR` or a failure).
        comm: u64,
        /// Colour.
        color: i32,
        /// Key (orders ranks within the colour).
        key: i32,
    },
    /// The application asked a communicator's rank (`ncclCommUserRank`).
    CommRank {
        /// Handle.
        comm: u64,
        /// Its rank.
        rank: u32,
    },
    /// The application asked a communicator's size (`ncclCommCount`).
    CommCount {
        /// Handle.
        comm: u64,
        /// Ranks.
        nranks: u32,
    },
    /// A communicator was destroyed or aborted.
    CommEnd {
        /// Handle.
        comm: u64,
    },
    /// A collective or point-to-point call.
    Collective {
        /// Which.
        func: CollFunc,
        /// Handle.
        comm: u64,
        /// Element count as passed.
        count: u64,
        /// `ncclDataType_t`.
        dtype: u32,
        /// `count × size(dtype)` (0 for an unknown type).
        bytes: u64,
        /// Root (broadcast, reduce) or peer (send, recv).
        #[serde(skip_serializing_if = "Option::is_none")]
        peer: Option<u32>,
        /// Stream handle.
        stream: u64,
    },
    /// `ncclGroupStart`.
    GroupStart,
    /// `ncclGroupEnd`.
    GroupEnd,
}

/// FNV-1a over the unique id's first 32 bytes: the same on every rank and every node.
fn id_hash(words: &[u64; 4]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        for b in w.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h.max(1)
}

/// Decodes an NCCL record; `None` for a record of another hook.
pub fn decode(r: &GpuRecord) -> Option<NcclCall> {
    use HookId::*;
    let hook = HookId::from_u16(r.call.hook)?;
    let a = &r.call.args;
    let st = &r.call.stack;
    let coll = |func, count: u64, dtype: u64, peer: Option<u64>, comm: u64| {
        let dtype = dtype as u32;
        NcclCall::Collective {
            func,
            comm,
            count,
            dtype,
            bytes: dtype_size(dtype).map_or(0, |s| count.saturating_mul(s)),
            peer: peer.map(|p| p as u32),
            stream: r.stream,
        }
    };
    Some(match hook {
        NcclCommInitRank | NcclCommInitRankConfig => NcclCall::CommInit {
            comm: r.out,
            nranks: a[1] as u32,
            rank: a[2] as u32,
            id: id_hash(st),
        },
        NcclCommInitRankScalable => NcclCall::CommInit {
            comm: r.out,
            nranks: a[1] as u32,
            rank: a[2] as u32,
            id: 0,
        },
        NcclCommSplit => NcclCall::CommSplit {
            parent: a[0],
            comm: r.out,
            color: a[1] as u32 as i32,
            key: a[2] as u32 as i32,
        },
        NcclCommUserRank => NcclCall::CommRank {
            comm: a[0],
            rank: r.out as u32,
        },
        NcclCommCount => NcclCall::CommCount {
            comm: a[0],
            nranks: r.out as u32,
        },
        NcclCommDestroy | NcclCommAbort => NcclCall::CommEnd { comm: a[0] },
        NcclAllReduce => coll(CollFunc::AllReduce, a[2], a[3], None, a[5]),
        NcclReduceScatter => coll(CollFunc::ReduceScatter, a[2], a[3], None, a[5]),
        NcclAllGather => coll(CollFunc::AllGather, a[2], a[3], None, a[4]),
        NcclBroadcast => coll(CollFunc::Broadcast, a[2], a[3], Some(a[4]), a[5]),
        NcclReduce => coll(CollFunc::Reduce, a[2], a[3], Some(a[5]), st[0]),
        NcclSend => coll(CollFunc::Send, a[1], a[2], Some(a[3]), a[4]),
        NcclRecv => coll(CollFunc::Recv, a[1], a[2], Some(a[3]), a[4]),
        NcclAlltoAll => coll(CollFunc::AllToAll, a[2], a[3], None, a[4]),
        NcclGroupStart => NcclCall::GroupStart,
        NcclGroupEnd => NcclCall::GroupEnd,
        _ => return None,
    })
}

/// What is known of one communicator in one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comm {
    /// Shared by its ranks (0: unknown, collectives are not lined up).
    pub id: u64,
    /// This process's rank in it.
    pub rank: Option<u32>,
    /// Its size.
    pub nranks: Option<u32>,
    /// Collectives called on it so far.
    pub seq: u64,
    /// Splits made from it so far (derives the children's ids).
    pub splits: u64,
}

/// One collective call by one rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Collective {
    /// Process.
    pub tgid: u32,
    /// Thread.
    pub tid: u32,
    /// Operation.
    pub func: CollFunc,
    /// Communicator id shared by its ranks (0: unknown).
    pub comm_id: u64,
    /// Handle in this process.
    pub comm: u64,
    /// This process's rank (unknown when the communicator's set-up was not seen).
    pub rank: Option<u32>,
    /// Ranks in the communicator.
    pub nranks: Option<u32>,
    /// Sequence number on the communicator (1-based): the same collective on every rank.
    pub seq: u64,
    /// Bytes (count × type size).
    pub bytes: u64,
    /// Root or peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<u32>,
    /// Stream.
    pub stream: u64,
    /// When this rank arrived: the call's entry, or its group's end (monotonic ns).
    pub arrive_ns: u64,
    /// When the call returned.
    pub return_ns: u64,
    /// Called while its stream captured a CUDA graph (replays run it without a call).
    pub captured: bool,
    /// Called inside `ncclGroupStart`/`ncclGroupEnd`.
    pub grouped: bool,
}

impl Collective {
    /// The printed form (`--print-events`): `kind` `collective`, times in Unix ns.
    pub fn to_json(&self, to_wall: impl Fn(u64) -> u64) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("kind".into(), "collective".into());
            o.insert("pid".into(), self.tgid.into());
            o.insert("ts_unix_ns".into(), to_wall(self.arrive_ns).into());
            o.insert("return_unix_ns".into(), to_wall(self.return_ns).into());
            o.remove("arrive_ns");
            o.remove("return_ns");
            o.remove("tgid");
        }
        v
    }
}

/// One rank's arrival at a collective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Arrival {
    /// Rank.
    pub rank: u32,
    /// Process.
    pub tgid: u32,
    /// Arrival (monotonic ns).
    pub arrive_ns: u64,
}

/// One collective lined up across the ranks seen on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CollectiveSync {
    /// Communicator id.
    pub comm_id: u64,
    /// Sequence number.
    pub seq: u64,
    /// Operation.
    pub func: CollFunc,
    /// Bytes per rank.
    pub bytes: u64,
    /// Ranks in the communicator.
    pub nranks: u32,
    /// Arrivals seen, in arrival order.
    pub arrivals: Vec<Arrival>,
    /// Every rank arrived here (else the others are elsewhere or were missed).
    pub complete: bool,
    /// The last arrival: the straggler.
    pub last: Arrival,
    /// Last − first arrival: what the earliest rank waited.
    pub wait_ns: u64,
    /// Last − second-to-last arrival: the delay due to the straggler alone.
    pub lag_ns: u64,
}

impl CollectiveSync {
    fn settle(key: (u64, u64), p: Pending, complete: bool) -> Self {
        let mut arrivals = p.arrivals;
        arrivals.sort_by_key(|a| a.arrive_ns);
        let first = arrivals.first().copied().expect("one arrival at least");
        let last = *arrivals.last().expect("one arrival at least");
        let prev = arrivals.len().checked_sub(2).map_or(last, |i| arrivals[i]);
        Self {
            comm_id: key.0,
            seq: key.1,
            func: p.func,
            bytes: p.bytes,
            nranks: p.nranks,
            complete,
            last,
            wait_ns: last.arrive_ns - first.arrive_ns,
            lag_ns: last.arrive_ns - prev.arrive_ns,
            arrivals,
        }
    }
}

#[derive(Debug)]
struct Pending {
    func: CollFunc,
    bytes: u64,
    nranks: u32,
    first_ns: u64,
    arrivals: Vec<Arrival>,
}

/// Counters, exported as metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NcclStats {
    /// Communicators set up.
    pub comms: u64,
    /// Communicators not followed ([`MAX_COMMS`]).
    pub comms_dropped: u64,
    /// Collective and point-to-point calls.
    pub collectives: u64,
    /// Of which made during a graph capture.
    pub captured: u64,
    /// Calls on a communicator whose set-up was not seen (not lined up).
    pub unknown_comm: u64,
    /// Collectives lined up across all their ranks.
    pub aligned: u64,
    /// Collectives settled with part of their ranks (others elsewhere, or missed).
    pub partial: u64,
    /// Collectives given up: one rank seen, or [`MAX_PENDING`] reached.
    pub unaligned: u64,
    /// Grouped calls dropped ([`MAX_GROUPED`]).
    pub grouped_dropped: u64,
}

/// Follows communicators and lines collectives up across ranks.
#[derive(Debug, Default)]
pub struct Collectives {
    comms: HashMap<(u32, u64), Comm>,
    capturing: HashSet<(u32, u64)>,
    groups: HashMap<u32, (u32, Vec<Collective>)>,
    pending: HashMap<(u64, u64), Pending>,
    order: VecDeque<(u64, (u64, u64))>,
    /// Counters.
    pub stats: NcclStats,
}

impl Collectives {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A CUDA stream of `tgid` began (`true`) or ended a graph capture.
    pub fn on_capture(&mut self, tgid: u32, stream: u64, begin: bool) {
        if !begin {
            self.capturing.remove(&(tgid, stream));
        } else if self.capturing.len() < MAX_CAPTURING {
            self.capturing.insert((tgid, stream));
        }
    }

    /// Feeds one NCCL record. Collectives called go to `calls`; collectives lined up across
    /// ranks go to `synced`.
    pub fn on_call(
        &mut self,
        r: &GpuRecord,
        calls: &mut Vec<Collective>,
        synced: &mut Vec<CollectiveSync>,
    ) {
        let Some(c) = decode(r) else { return };
        let (tgid, tid) = (r.call.tgid, r.call.tid);
        match c {
            NcclCall::CommInit {
                comm,
                nranks,
                rank,
                id,
            } if comm != 0 => self.add_comm(tgid, comm, id, Some(rank), Some(nranks)),
            NcclCall::CommSplit {
                parent,
                comm,
                color,
                ..
            } if comm != 0 => {
                let (id, nranks) = match self.comms.get_mut(&(tgid, parent)) {
                    Some(p) if p.id != 0 => {
                        p.splits += 1;
                        let mut w = [p.id, p.splits, color as u32 as u64, 0x5b11];
                        w[3] ^= p.seq << 16;
                        (id_hash(&w), None)
                    }
                    _ => (0, None),
                };
                self.add_comm(tgid, comm, id, None, nranks);
            }
            NcclCall::CommRank { comm, rank } => {
                if let Some(k) = self.comms.get_mut(&(tgid, comm)) {
                    k.rank = Some(rank);
                }
            }
            NcclCall::CommCount { comm, nranks } => {
                if let Some(k) = self.comms.get_mut(&(tgid, comm)) {
                    k.nranks = Some(nranks);
                }
            }
            NcclCall::CommEnd { comm } => {
                self.comms.remove(&(tgid, comm));
            }
            NcclCall::GroupStart => {
                self.groups.entry(tid).or_default().0 += 1;
            }
            NcclCall::GroupEnd => self.group_end(tid, r.call.start_ns, calls, synced),
            NcclCall::Collective {
                func,
                comm,
                bytes,
                peer,
                stream,
                ..
            } => {
                self.stats.collectives += 1;
                let k = self.comms.get_mut(&(tgid, comm));
                if k.is_none() {
                    self.stats.unknown_comm += 1;
                }
                let (comm_id, rank, nranks, seq) = match k {
                    Some(k) => {
                        k.seq += 1;
                        (k.id, k.rank, k.nranks, k.seq)
                    }
                    None => (0, None, None, 0),
                };
                let captured = self.capturing.contains(&(tgid, stream));
                self.stats.captured += u64::from(captured);
                let mut coll = Collective {
                    tgid,
                    tid,
                    func,
                    comm_id,
                    comm,
                    rank,
                    nranks,
                    seq,
                    bytes,
                    peer,
                    stream,
                    arrive_ns: r.call.start_ns,
                    return_ns: r.call.end_ns,
                    captured,
                    grouped: false,
                };
                match self.groups.get_mut(&tid).filter(|g| g.0 > 0) {
                    Some(g) if g.1.len() < MAX_GROUPED => {
                        coll.grouped = true;
                        g.1.push(coll);
                    }
                    Some(_) => self.stats.grouped_dropped += 1,
                    None => self.called(coll, calls, synced),
                }
            }
            _ => {}
        }
    }

    fn add_comm(&mut self, tgid: u32, comm: u64, id: u64, rank: Option<u32>, n: Option<u32>) {
        if self.comms.len() >= MAX_COMMS && !self.comms.contains_key(&(tgid, comm)) {
            self.stats.comms_dropped += 1;
            return;
        }
        self.stats.comms += 1;
        self.comms.insert(
            (tgid, comm),
            Comm {
                id,
                rank,
                nranks: n,
                seq: 0,
                splits: 0,
            },
        );
    }

    fn group_end(
        &mut self,
        tid: u32,
        at: u64,
        calls: &mut Vec<Collective>,
        synced: &mut Vec<CollectiveSync>,
    ) {
        let Some(g) = self.groups.get_mut(&tid) else {
            return;
        };
        g.0 = g.0.saturating_sub(1);
        if g.0 > 0 {
            return;
        }
        let held = std::mem::take(&mut g.1);
        self.groups.remove(&tid);
        for mut c in held {
            c.arrive_ns = at;
            self.called(c, calls, synced);
        }
    }

    /// A collective is launched: reported, and lined up when its communicator is known.
    fn called(
        &mut self,
        c: Collective,
        calls: &mut Vec<Collective>,
        synced: &mut Vec<CollectiveSync>,
    ) {
        calls.push(c);
        let (Some(rank), Some(nranks)) = (c.rank, c.nranks) else {
            return;
        };
        if c.comm_id == 0 || c.captured || c.func.is_p2p() || nranks < 2 {
            return;
        }
        self.settle_expired(c.arrive_ns, synced);
        let key = (c.comm_id, c.seq);
        if !self.pending.contains_key(&key) {
            if self.pending.len() >= MAX_PENDING {
                self.stats.unaligned += 1;
                return;
            }
            self.order.push_back((c.arrive_ns, key));
        }
        let p = self.pending.entry(key).or_insert_with(|| Pending {
            func: c.func,
            bytes: c.bytes,
            nranks,
            first_ns: c.arrive_ns,
            arrivals: Vec::with_capacity(nranks.min(64) as usize),
        });
        if p.arrivals.iter().any(|a| a.rank == rank) {
            return;
        }
        p.arrivals.push(Arrival {
            rank,
            tgid: c.tgid,
            arrive_ns: c.arrive_ns,
        });
        if p.arrivals.len() as u32 >= p.nranks {
            let p = self.pending.remove(&key).expect("present");
            self.stats.aligned += 1;
            synced.push(CollectiveSync::settle(key, p, true));
        }
    }

    /// Settles collectives that waited [`ALIGN_TIMEOUT_NS`] before `now`: with the ranks that
    /// arrived when there are two or more, else given up.
    pub fn settle_expired(&mut self, now: u64, synced: &mut Vec<CollectiveSync>) {
        while let Some(&(t, key)) = self.order.front() {
            if now.saturating_sub(t) < ALIGN_TIMEOUT_NS && self.order.len() <= MAX_PENDING {
                break;
            }
            self.order.pop_front();
            let Some(p) = self.pending.remove(&key) else {
                continue;
            };
            if p.arrivals.len() >= 2 && now.saturating_sub(p.first_ns) >= ALIGN_TIMEOUT_NS {
                self.stats.partial += 1;
                synced.push(CollectiveSync::settle(key, p, false));
            } else {
                self.stats.unaligned += 1;
            }
        }
    }

    /// A process exited: its communicators and groups go.
    pub fn forget(&mut self, tgid: u32) {
        self.comms.retain(|k, _| k.0 != tgid);
        self.capturing.retain(|k| k.0 != tgid);
    }
}

#[cfg(test)]
mod tests;
