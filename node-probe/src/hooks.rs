//! The hook table: every kernel program node-probe attaches, and where, declared once.
//!
//! Tracepoints and raw tracepoints are attached at start, per [`Family`]. Uprobes are attached
//! per library *file* as targets map it (see [`crate::uprobes`]): a [`Point::Uprobe`] names the
//! library by file-name pattern and the function by symbol. Every uprobe hook shares the two
//! generic kernel programs `uprobe_call` / `uretprobe_call`; the attach cookie carries the
//! [`HookId`], and userspace decodes the saved registers per hook.
//!
//! CUDA hooks use their own kernel programs (`uprobe_gpu_launch`, `uprobe_gpu_call`,
//! `uretprobe_gpu_call`, [`UprobeKind`]) and ring; the cookie also says where the call's stream
//! handle is.
//!
//! A new hook: a row in the table (with a new [`HookId`] in its family's range for a uprobe),
//! decoding where its events are consumed (an engine follower, [`crate::gpu`]).

use inferscope_common::{stream_at, uprobe_cookie};

macro_rules! hook_ids {
    ($($(#[$m:meta])* $name:ident = $v:literal,)*) => {
        /// Stable ids of uprobe hooks (the attach cookie). Never renumber, only append. Ranges:
        /// 1–99 engine libraries, 100–199 CUDA driver, 200–299 CUDA runtime, 300–399 NCCL,
        /// 400–499 TLS libraries (reserved).
        #[repr(u16)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum HookId {
            $($(#[$m])* $name = $v,)*
        }

        impl HookId {
            /// Every id.
            pub const ALL: &'static [HookId] = &[$(HookId::$name),*];

            /// Decodes a raw id.
            pub const fn from_u16(v: u16) -> Option<Self> {
                match v {
                    $($v => Some(Self::$name),)*
                    _ => None,
                }
            }
        }
    };
}

hook_ids! {
    /// llama.cpp `int32_t llama_decode(struct llama_context *, struct llama_batch)`: one
    /// forward step. The batch is passed by value in memory, so `n_tokens` (its first field)
    /// is the first stack word.
    LlamaDecode = 1,
    /// `cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, hStream, params, extra)`.
    CuLaunchKernel = 100,
    /// `cuLaunchKernel_ptsz`.
    CuLaunchKernelPtsz = 101,
    /// `cuLaunchKernelEx(const CUlaunchConfig *cfg, f, params, extra)`.
    CuLaunchKernelEx = 102,
    /// `cuLaunchKernelEx_ptsz`.
    CuLaunchKernelExPtsz = 103,
    /// `cuGraphLaunch(exec, stream)`.
    CuGraphLaunch = 104,
    /// `cuGraphLaunch_ptsz`.
    CuGraphLaunchPtsz = 105,
    /// `cuMemcpyHtoDAsync_v2(dst, src, bytes, stream)`.
    CuMemcpyHtoDAsync = 106,
    /// `cuMemcpyHtoDAsync_v2_ptsz`.
    CuMemcpyHtoDAsyncPtsz = 107,
    /// `cuMemcpyDtoHAsync_v2(dst, src, bytes, stream)`.
    CuMemcpyDtoHAsync = 108,
    /// `cuMemcpyDtoHAsync_v2_ptsz`.
    CuMemcpyDtoHAsyncPtsz = 109,
    /// `cuMemcpyDtoDAsync_v2(dst, src, bytes, stream)`.
    CuMemcpyDtoDAsync = 110,
    /// `cuMemcpyDtoDAsync_v2_ptsz`.
    CuMemcpyDtoDAsyncPtsz = 111,
    /// `cuMemcpyAsync(dst, src, bytes, stream)` (unified addressing: direction unknown).
    CuMemcpyAsync = 112,
    /// `cuMemcpyAsync_ptsz`.
    CuMemcpyAsyncPtsz = 113,
    /// `cuEventRecord(ev, stream)`.
    CuEventRecord = 114,
    /// `cuEventRecord_ptsz`.
    CuEventRecordPtsz = 115,
    /// `cuEventRecordWithFlags(ev, stream, flags)`.
    CuEventRecordWithFlags = 116,
    /// `cuEventRecordWithFlags_ptsz`.
    CuEventRecordWithFlagsPtsz = 117,
    /// `cuEventSynchronize(ev)`, timed to its return.
    CuEventSynchronize = 118,
    /// `cuStreamSynchronize(stream)`, timed to its return.
    CuStreamSynchronize = 119,
    /// `cuStreamSynchronize_ptsz`.
    CuStreamSynchronizePtsz = 120,
    /// `cuStreamWaitEvent(stream, ev, flags)`.
    CuStreamWaitEvent = 121,
    /// `cuStreamWaitEvent_ptsz`.
    CuStreamWaitEventPtsz = 122,
    /// `cuCtxSynchronize()`, timed to its return.
    CuCtxSynchronize = 123,
    /// `cuStreamBeginCapture_v2(stream, mode)`: work queued on the stream is captured into a
    /// graph, not run (NCCL calls made meanwhile are flagged `captured`).
    CuStreamBeginCapture = 124,
    /// `cuStreamBeginCapture_v2_ptsz`.
    CuStreamBeginCapturePtsz = 125,
    /// `cuStreamEndCapture(stream, CUgraph *out)`.
    CuStreamEndCapture = 126,
    /// `cuStreamEndCapture_ptsz`.
    CuStreamEndCapturePtsz = 127,
    /// `cudaLaunchKernel(func, dim3 grid, dim3 block, args, shmem, stream)`: a `dim3` takes two
    /// registers, so `stream` is the second stack word.
    CudaLaunchKernel = 200,
    /// `cudaLaunchKernel_ptsz`.
    CudaLaunchKernelPtsz = 201,
    /// `cudaLaunchKernelExC(const cudaLaunchConfig_t *cfg, func, args)`.
    CudaLaunchKernelExC = 202,
    /// `cudaLaunchKernelExC_ptsz`.
    CudaLaunchKernelExCPtsz = 203,
    /// `cudaGraphLaunch(exec, stream)`.
    CudaGraphLaunch = 204,
    /// `cudaGraphLaunch_ptsz`.
    CudaGraphLaunchPtsz = 205,
    /// `cudaMemcpyAsync(dst, src, count, kind, stream)`.
    CudaMemcpyAsync = 206,
    /// `cudaMemcpyAsync_ptsz`.
    CudaMemcpyAsyncPtsz = 207,
    /// `cudaEventRecord(ev, stream)`.
    CudaEventRecord = 208,
    /// `cudaEventRecord_ptsz`.
    CudaEventRecordPtsz = 209,
    /// `cudaEventRecordWithFlags(ev, stream, flags)`.
    CudaEventRecordWithFlags = 210,
    /// `cudaEventRecordWithFlags_ptsz`.
    CudaEventRecordWithFlagsPtsz = 211,
    /// `cudaEventSynchronize(ev)`, timed to its return.
    CudaEventSynchronize = 212,
    /// `cudaStreamSynchronize(stream)`, timed to its return.
    CudaStreamSynchronize = 213,
    /// `cudaStreamSynchronize_ptsz`.
    CudaStreamSynchronizePtsz = 214,
    /// `cudaStreamWaitEvent(stream, ev, flags)`.
    CudaStreamWaitEvent = 215,
    /// `cudaStreamWaitEvent_ptsz`.
    CudaStreamWaitEventPtsz = 216,
    /// `cudaDeviceSynchronize()`, timed to its return.
    CudaDeviceSynchronize = 217,
    /// `cudaStreamBeginCapture(stream, mode)`.
    CudaStreamBeginCapture = 218,
    /// `cudaStreamBeginCapture_ptsz`.
    CudaStreamBeginCapturePtsz = 219,
    /// `cudaStreamEndCapture(stream, cudaGraph_t *out)`.
    CudaStreamEndCapture = 220,
    /// `cudaStreamEndCapture_ptsz`.
    CudaStreamEndCapturePtsz = 221,
    /// `ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank)`: the id
    /// (128 bytes by value) is on the stack, rank in the third register; the new handle is
    /// read from `*comm` at the return.
    NcclCommInitRank = 300,
    /// `ncclCommInitRankConfig(comm *, nranks, id, rank, config *)`.
    NcclCommInitRankConfig = 301,
    /// `ncclCommInitRankScalable(comm *, nranks, myrank, nId, ncclUniqueId *ids, config *)`.
    NcclCommInitRankScalable = 302,
    /// `ncclCommSplit(comm, color, key, ncclComm_t *newcomm, config *)`: the new rank is not
    /// among the arguments (`ncclCommUserRank` tells it).
    NcclCommSplit = 303,
    /// `ncclCommUserRank(comm, int *rank)`: `*rank` read at the return.
    NcclCommUserRank = 304,
    /// `ncclCommCount(comm, int *count)`: `*count` read at the return.
    NcclCommCount = 305,
    /// `ncclCommDestroy(comm)`.
    NcclCommDestroy = 306,
    /// `ncclCommAbort(comm)`.
    NcclCommAbort = 307,
    /// `ncclAllReduce(send, recv, count, dtype, op, comm, stream)`: stream is the first
    /// stack word.
    NcclAllReduce = 310,
    /// `ncclReduceScatter(send, recv, recvcount, dtype, op, comm, stream)`.
    NcclReduceScatter = 311,
    /// `ncclAllGather(send, recv, sendcount, dtype, comm, stream)`.
    NcclAllGather = 312,
    /// `ncclBroadcast(send, recv, count, dtype, root, comm, stream)`.
    NcclBroadcast = 313,
    // 314 is not used: `ncclBcast` calls the exported `ncclBroadcast` (NCCL 2.29, measured
    // by `tests/gpu.rs`), whose probe reports it.
    /// `ncclReduce(send, recv, count, dtype, op, root, comm, stream)`: comm and stream are
    /// the first two stack words.
    NcclReduce = 315,
    /// `ncclSend(buf, count, dtype, peer, comm, stream)`.
    NcclSend = 316,
    /// `ncclRecv(buf, count, dtype, peer, comm, stream)`.
    NcclRecv = 317,
    /// `ncclAlltoAll(send, recv, count, dtype, comm, stream)`.
    NcclAlltoAll = 318,
    /// `ncclGroupStart()`: calls until the matching `ncclGroupEnd` are launched there.
    NcclGroupStart = 319,
    /// `ncclGroupEnd()`.
    NcclGroupEnd = 320,
}

impl HookId {
    /// A CUDA runtime hook (ids 200–299): its launch counters are kept apart from the
    /// driver's, since a runtime call may reach the driver's probed entry points too.
    pub const fn is_cuda_runtime(self) -> bool {
        matches!(self as u16, 200..=299)
    }

    /// An NCCL hook (ids 300–399).
    pub const fn is_nccl(self) -> bool {
        matches!(self as u16, 300..=399)
    }
}

/// Which kernel programs serve a uprobe hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UprobeKind {
    /// The generic `uprobe_call` (and `uretprobe_call` with `ret`): a record in the main ring.
    Call,
    /// A CUDA kernel launch: counted per (process, stream) in the kernel, no record. The byte
    /// says where the stream handle is ([`stream_at`]).
    GpuLaunch(u8),
    /// A CUDA call that bounds GPU work: a record in the GPU ring with the launches taken from
    /// its stream's counter ([`stream_at`]; `NONE` for calls without a stream).
    GpuCall(u8),
    /// An NCCL call: served by the GPU-call programs (its records are `NcclCall`), with the
    /// location of its stream ([`stream_at`]) and the argument register whose pointee is
    /// read at the return ([`uprobe_cookie::with_out`]).
    Nccl {
        /// Where the stream handle is.
        stream: u8,
        /// Output pointer register, read at the return.
        out: Option<u8>,
    },
}

/// What a hook is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// A classic tracepoint `category:name`.
    Tracepoint {
        /// tracefs category.
        category: &'static str,
        /// Tracepoint name.
        name: &'static str,
    },
    /// A raw tracepoint.
    RawTracepoint {
        /// Tracepoint name.
        name: &'static str,
    },
    /// A function in a shared library or executable, in every process that maps it (the
    /// kernel programs filter by the target set).
    Uprobe {
        /// File name of the library: `libllama.so` matches `libllama.so`, `libllama.so.0`,
        /// `libllama.so.0.1`.
        library: &'static str,
        /// Symbol; a version suffix (`cudaLaunchKernel@@libcudart.so.12`) is allowed and
        /// resolved to the plain dynamic symbol.
        symbol: &'static str,
        /// Also attach the return probe (the call is reported at its return, with its
        /// duration and return value).
        ret: bool,
        /// The hook id (cookie).
        id: HookId,
        /// Which programs serve it.
        kind: UprobeKind,
    },
}

/// Which group of hooks a row belongs to; groups are attached together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Process fork/exec/exit (keeps the target set current).
    Lifecycle,
    /// Socket syscalls, one tracepoint pair per syscall (`--syscall-hook tracepoint`).
    SyscallsTracepoint,
    /// Socket syscalls through one raw `sys_enter`/`sys_exit` pair (`--syscall-hook raw`).
    SyscallsRaw,
    /// Wire-side arrival times (`sk_data_ready`, Linux >= 6.3; optional).
    Arrivals,
    /// Engine libraries (uprobes, attached as targets map them).
    EngineLibraries,
    /// CUDA driver (`libcuda.so`) and runtime (`libcudart.so`) (uprobes, as targets map them).
    Gpu,
    /// NCCL (`libnccl.so`) (uprobes, as targets map it).
    Nccl,
}

/// One row of the hook table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// Group.
    pub family: Family,
    /// Kernel program name (entry program for a uprobe).
    pub program: &'static str,
    /// Where it attaches.
    pub point: Point,
}

const fn tp(program: &'static str) -> Hook {
    Hook {
        family: Family::SyscallsTracepoint,
        program,
        point: Point::Tracepoint {
            category: "syscalls",
            name: program,
        },
    }
}

/// Syscall tracepoints in attach order: each exit before its entry, so an entry recorded is
/// always consumed.
macro_rules! syscall_pairs {
    ($($sc:literal),*) => {
        [$(tp(concat!("sys_exit_", $sc)), tp(concat!("sys_enter_", $sc)),)* tp("sys_enter_close")]
    };
}

const SYSCALL_HOOKS: [Hook; 23] = syscall_pairs!(
    "read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg", "accept",
    "accept4", "connect"
);

/// Name of the generic uprobe entry program.
pub const UPROBE_PROGRAM: &str = "uprobe_call";
/// Name of the generic uprobe return program.
pub const URETPROBE_PROGRAM: &str = "uretprobe_call";
/// Kernel-launch counter program (CUDA).
pub const GPU_LAUNCH_PROGRAM: &str = "uprobe_gpu_launch";
/// CUDA boundary-call entry program.
pub const GPU_CALL_PROGRAM: &str = "uprobe_gpu_call";
/// CUDA boundary-call return program.
pub const GPU_RET_PROGRAM: &str = "uretprobe_gpu_call";

const OTHER_HOOKS: [Hook; 7] = [
    Hook {
        family: Family::Lifecycle,
        program: "sched_process_fork",
        point: Point::RawTracepoint {
            name: "sched_process_fork",
        },
    },
    Hook {
        family: Family::Lifecycle,
        program: "sched_process_exec",
        point: Point::RawTracepoint {
            name: "sched_process_exec",
        },
    },
    Hook {
        family: Family::Lifecycle,
        program: "sched_process_exit",
        point: Point::Tracepoint {
            category: "sched",
            name: "sched_process_exit",
        },
    },
    // Exit first, as for the tracepoint pairs.
    Hook {
        family: Family::SyscallsRaw,
        program: "raw_sys_exit",
        point: Point::RawTracepoint { name: "sys_exit" },
    },
    Hook {
        family: Family::SyscallsRaw,
        program: "raw_sys_enter",
        point: Point::RawTracepoint { name: "sys_enter" },
    },
    Hook {
        family: Family::Arrivals,
        program: "sk_data_ready",
        point: Point::RawTracepoint {
            name: "sk_data_ready",
        },
    },
    Hook {
        family: Family::EngineLibraries,
        program: UPROBE_PROGRAM,
        point: Point::Uprobe {
            library: "libllama.so",
            symbol: "llama_decode",
            ret: true,
            id: HookId::LlamaDecode,
            kind: UprobeKind::Call,
        },
    },
];

const fn cuda_hook(
    library: &'static str,
    symbol: &'static str,
    id: HookId,
    kind: UprobeKind,
    ret: bool,
) -> Hook {
    let program = match kind {
        UprobeKind::GpuLaunch(_) => GPU_LAUNCH_PROGRAM,
        _ => GPU_CALL_PROGRAM,
    };
    Hook {
        family: Family::Gpu,
        program,
        point: Point::Uprobe {
            library,
            symbol,
            ret,
            id,
            kind,
        },
    }
}

/// A launch or a boundary call reported at its entry.
const fn cuda(library: &'static str, symbol: &'static str, id: HookId, kind: UprobeKind) -> Hook {
    cuda_hook(library, symbol, id, kind, false)
}

/// A synchronize: timed to its return.
const fn cuda_sync(library: &'static str, symbol: &'static str, id: HookId, stream: u8) -> Hook {
    cuda_hook(library, symbol, id, UprobeKind::GpuCall(stream), true)
}

const DRV: &str = "libcuda.so";
const RT: &str = "libcudart.so";
const LAUNCH_STACK2: UprobeKind = UprobeKind::GpuLaunch(stream_at::stack(2));
const LAUNCH_STACK1: UprobeKind = UprobeKind::GpuLaunch(stream_at::stack(1));
const LAUNCH_CFG: UprobeKind = UprobeKind::GpuLaunch(stream_at::config_word(4));
const ON_ARG1: UprobeKind = UprobeKind::GpuCall(stream_at::reg(1));
const ON_ARG3: UprobeKind = UprobeKind::GpuCall(stream_at::reg(3));
const ON_ARG4: UprobeKind = UprobeKind::GpuCall(stream_at::reg(4));
const ON_ARG0: UprobeKind = UprobeKind::GpuCall(stream_at::reg(0));

/// CUDA hooks: argument positions from `../shared/notes/gpu.md` §2 (x86-64 SysV), asserted on
/// the real libraries by `tests/gpu.rs`.
const GPU_HOOKS: [Hook; 50] = {
    use HookId::*;
    [
        cuda(DRV, "cuLaunchKernel", CuLaunchKernel, LAUNCH_STACK2),
        cuda(
            DRV,
            "cuLaunchKernel_ptsz",
            CuLaunchKernelPtsz,
            LAUNCH_STACK2,
        ),
        cuda(DRV, "cuLaunchKernelEx", CuLaunchKernelEx, LAUNCH_CFG),
        cuda(
            DRV,
            "cuLaunchKernelEx_ptsz",
            CuLaunchKernelExPtsz,
            LAUNCH_CFG,
        ),
        cuda(DRV, "cuGraphLaunch", CuGraphLaunch, ON_ARG1),
        cuda(DRV, "cuGraphLaunch_ptsz", CuGraphLaunchPtsz, ON_ARG1),
        cuda(DRV, "cuMemcpyHtoDAsync_v2", CuMemcpyHtoDAsync, ON_ARG3),
        cuda(
            DRV,
            "cuMemcpyHtoDAsync_v2_ptsz",
            CuMemcpyHtoDAsyncPtsz,
            ON_ARG3,
        ),
        cuda(DRV, "cuMemcpyDtoHAsync_v2", CuMemcpyDtoHAsync, ON_ARG3),
        cuda(
            DRV,
            "cuMemcpyDtoHAsync_v2_ptsz",
            CuMemcpyDtoHAsyncPtsz,
            ON_ARG3,
        ),
        cuda(DRV, "cuMemcpyDtoDAsync_v2", CuMemcpyDtoDAsync, ON_ARG3),
        cuda(
            DRV,
            "cuMemcpyDtoDAsync_v2_ptsz",
            CuMemcpyDtoDAsyncPtsz,
            ON_ARG3,
        ),
        cuda(DRV, "cuMemcpyAsync", CuMemcpyAsync, ON_ARG3),
        cuda(DRV, "cuMemcpyAsync_ptsz", CuMemcpyAsyncPtsz, ON_ARG3),
        cuda(DRV, "cuEventRecord", CuEventRecord, ON_ARG1),
        cuda(DRV, "cuEventRecord_ptsz", CuEventRecordPtsz, ON_ARG1),
        cuda(
            DRV,
            "cuEventRecordWithFlags",
            CuEventRecordWithFlags,
            ON_ARG1,
        ),
        cuda(
            DRV,
            "cuEventRecordWithFlags_ptsz",
            CuEventRecordWithFlagsPtsz,
            ON_ARG1,
        ),
        cuda_sync(
            DRV,
            "cuEventSynchronize",
            CuEventSynchronize,
            stream_at::NONE,
        ),
        cuda_sync(
            DRV,
            "cuStreamSynchronize",
            CuStreamSynchronize,
            stream_at::reg(0),
        ),
        cuda_sync(
            DRV,
            "cuStreamSynchronize_ptsz",
            CuStreamSynchronizePtsz,
            stream_at::reg(0),
        ),
        cuda(DRV, "cuStreamWaitEvent", CuStreamWaitEvent, ON_ARG0),
        cuda(
            DRV,
            "cuStreamWaitEvent_ptsz",
            CuStreamWaitEventPtsz,
            ON_ARG0,
        ),
        cuda_sync(DRV, "cuCtxSynchronize", CuCtxSynchronize, stream_at::NONE),
        cuda(
            DRV,
            "cuStreamBeginCapture_v2",
            CuStreamBeginCapture,
            ON_ARG0,
        ),
        cuda(
            DRV,
            "cuStreamBeginCapture_v2_ptsz",
            CuStreamBeginCapturePtsz,
            ON_ARG0,
        ),
        cuda(DRV, "cuStreamEndCapture", CuStreamEndCapture, ON_ARG0),
        cuda(
            DRV,
            "cuStreamEndCapture_ptsz",
            CuStreamEndCapturePtsz,
            ON_ARG0,
        ),
        cuda(RT, "cudaLaunchKernel", CudaLaunchKernel, LAUNCH_STACK1),
        cuda(
            RT,
            "cudaLaunchKernel_ptsz",
            CudaLaunchKernelPtsz,
            LAUNCH_STACK1,
        ),
        cuda(RT, "cudaLaunchKernelExC", CudaLaunchKernelExC, LAUNCH_CFG),
        cuda(
            RT,
            "cudaLaunchKernelExC_ptsz",
            CudaLaunchKernelExCPtsz,
            LAUNCH_CFG,
        ),
        cuda(RT, "cudaGraphLaunch", CudaGraphLaunch, ON_ARG1),
        cuda(RT, "cudaGraphLaunch_ptsz", CudaGraphLaunchPtsz, ON_ARG1),
        cuda(RT, "cudaMemcpyAsync", CudaMemcpyAsync, ON_ARG4),
        cuda(RT, "cudaMemcpyAsync_ptsz", CudaMemcpyAsyncPtsz, ON_ARG4),
        cuda(RT, "cudaEventRecord", CudaEventRecord, ON_ARG1),
        cuda(RT, "cudaEventRecord_ptsz", CudaEventRecordPtsz, ON_ARG1),
        cuda(
            RT,
            "cudaEventRecordWithFlags",
            CudaEventRecordWithFlags,
            ON_ARG1,
        ),
        cuda(
            RT,
            "cudaEventRecordWithFlags_ptsz",
            CudaEventRecordWithFlagsPtsz,
            ON_ARG1,
        ),
        cuda_sync(
            RT,
            "cudaEventSynchronize",
            CudaEventSynchronize,
            stream_at::NONE,
        ),
        cuda_sync(
            RT,
            "cudaStreamSynchronize",
            CudaStreamSynchronize,
            stream_at::reg(0),
        ),
        cuda_sync(
            RT,
            "cudaStreamSynchronize_ptsz",
            CudaStreamSynchronizePtsz,
            stream_at::reg(0),
        ),
        cuda(RT, "cudaStreamWaitEvent", CudaStreamWaitEvent, ON_ARG0),
        cuda(
            RT,
            "cudaStreamWaitEvent_ptsz",
            CudaStreamWaitEventPtsz,
            ON_ARG0,
        ),
        cuda_sync(
            RT,
            "cudaDeviceSynchronize",
            CudaDeviceSynchronize,
            stream_at::NONE,
        ),
        cuda(
            RT,
            "cudaStreamBeginCapture",
            CudaStreamBeginCapture,
            ON_ARG0,
        ),
        cuda(
            RT,
            "cudaStreamBeginCapture_ptsz",
            CudaStreamBeginCapturePtsz,
            ON_ARG0,
        ),
        cuda(RT, "cudaStreamEndCapture", CudaStreamEndCapture, ON_ARG0),
        cuda(
            RT,
            "cudaStreamEndCapture_ptsz",
            CudaStreamEndCapturePtsz,
            ON_ARG0,
        ),
    ]
};

const NCCL: &str = "libnccl.so";

/// An NCCL row: entry and return (arrival and return of the call), stream where it is.
const fn nccl(symbol: &'static str, id: HookId, stream: u8, out: Option<u8>) -> Hook {
    Hook {
        family: Family::Nccl,
        program: GPU_CALL_PROGRAM,
        point: Point::Uprobe {
            library: NCCL,
            symbol,
            ret: true,
            id,
            kind: UprobeKind::Nccl { stream, out },
        },
    }
}

/// NCCL hooks: argument positions from `../shared/notes/gpu.md` §2 (x86-64 SysV), asserted on
/// the real `libnccl.so.2` by `tests/gpu.rs`. NCCL exports weak `ncclX` at the address of
/// `pncclX`, so one probe catches both names.
const NCCL_HOOKS: [Hook; 18] = {
    use HookId::*;
    const NONE: u8 = stream_at::NONE;
    [
        nccl("ncclCommInitRank", NcclCommInitRank, NONE, Some(0)),
        nccl(
            "ncclCommInitRankConfig",
            NcclCommInitRankConfig,
            NONE,
            Some(0),
        ),
        nccl(
            "ncclCommInitRankScalable",
            NcclCommInitRankScalable,
            NONE,
            Some(0),
        ),
        nccl("ncclCommSplit", NcclCommSplit, NONE, Some(3)),
        nccl("ncclCommUserRank", NcclCommUserRank, NONE, Some(1)),
        nccl("ncclCommCount", NcclCommCount, NONE, Some(1)),
        nccl("ncclCommDestroy", NcclCommDestroy, NONE, None),
        nccl("ncclCommAbort", NcclCommAbort, NONE, None),
        nccl("ncclAllReduce", NcclAllReduce, stream_at::stack(0), None),
        nccl(
            "ncclReduceScatter",
            NcclReduceScatter,
            stream_at::stack(0),
            None,
        ),
        nccl("ncclAllGather", NcclAllGather, stream_at::reg(5), None),
        nccl("ncclBroadcast", NcclBroadcast, stream_at::stack(0), None),
        nccl("ncclReduce", NcclReduce, stream_at::stack(1), None),
        nccl("ncclSend", NcclSend, stream_at::reg(5), None),
        nccl("ncclRecv", NcclRecv, stream_at::reg(5), None),
        nccl("ncclAlltoAll", NcclAlltoAll, stream_at::reg(5), None),
        nccl("ncclGroupStart", NcclGroupStart, NONE, None),
        nccl("ncclGroupEnd", NcclGroupEnd, NONE, None),
    ]
};

/// Every hook, in attach order within each family.
pub fn hooks() -> impl Iterator<Item = &'static Hook> {
    SYSCALL_HOOKS
        .iter()
        .chain(OTHER_HOOKS.iter())
        .chain(GPU_HOOKS.iter())
        .chain(NCCL_HOOKS.iter())
}

/// The hooks of one family.
pub fn family(f: Family) -> impl Iterator<Item = &'static Hook> {
    hooks().filter(move |h| h.family == f)
}

/// A uprobe hook's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UprobeHook {
    /// Library file-name pattern.
    pub library: &'static str,
    /// Symbol as written in the table.
    pub symbol: &'static str,
    /// With a return probe.
    pub ret: bool,
    /// Id (cookie).
    pub id: HookId,
    /// Which programs serve it.
    pub kind: UprobeKind,
}

impl UprobeHook {
    /// The entry program, then the return program when the hook has one.
    pub fn programs(&self) -> (&'static str, Option<&'static str>) {
        match (self.kind, self.ret) {
            (UprobeKind::Call, false) => (UPROBE_PROGRAM, None),
            (UprobeKind::Call, true) => (UPROBE_PROGRAM, Some(URETPROBE_PROGRAM)),
            (UprobeKind::GpuLaunch(_), _) => (GPU_LAUNCH_PROGRAM, None),
            (UprobeKind::GpuCall(_) | UprobeKind::Nccl { .. }, false) => (GPU_CALL_PROGRAM, None),
            (UprobeKind::GpuCall(_) | UprobeKind::Nccl { .. }, true) => {
                (GPU_CALL_PROGRAM, Some(GPU_RET_PROGRAM))
            }
        }
    }

    /// The attach cookie: id, paired flag and the stream location of CUDA hooks.
    pub fn cookie(&self) -> u64 {
        match self.kind {
            UprobeKind::Call => uprobe_cookie::pack(self.id as u16, self.ret),
            UprobeKind::GpuLaunch(s) | UprobeKind::GpuCall(s) => {
                uprobe_cookie::pack_gpu(self.id as u16, self.ret, s)
            }
            UprobeKind::Nccl { stream, out } => {
                let c = uprobe_cookie::pack_gpu(self.id as u16, self.ret, stream);
                match out {
                    Some(r) => uprobe_cookie::with_out(c, r),
                    None => c,
                }
            }
        }
    }
}

/// Every uprobe hook.
pub fn uprobes() -> impl Iterator<Item = UprobeHook> {
    hooks().filter_map(|h| match h.point {
        Point::Uprobe {
            library,
            symbol,
            ret,
            id,
            kind,
        } => Some(UprobeHook {
            library,
            symbol,
            ret,
            id,
            kind,
        }),
        _ => None,
    })
}

/// The hook name of a uprobe call record (its symbol), for printing.
pub fn hook_name(id: u16) -> Option<&'static str> {
    uprobes()
        .find(|u| u.id as u16 == id)
        .map(|u| plain_symbol(u.symbol))
}

/// Whether a file name is the library `pattern` (exactly, or followed by a version suffix).
pub fn library_matches(pattern: &str, file_name: &str) -> bool {
    file_name
        .strip_prefix(pattern)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// The dynamic symbol behind a table symbol: `name@@VERSION` and `name@VERSION` name `name`
/// (the ELF dynamic symbol table keeps versions apart from names).
pub fn plain_symbol(symbol: &str) -> &str {
    symbol.split('@').next().unwrap_or(symbol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        // Each syscall's exit is attached before its entry.
        let names: Vec<_> = family(Family::SyscallsTracepoint)
            .map(|h| h.program)
            .collect();
        for (i, n) in names.iter().enumerate() {
            if let Some(sc) = n.strip_prefix("sys_enter_") {
                if sc != "close" {
                    let exit = names.iter().position(|x| *x == format!("sys_exit_{sc}"));
                    assert!(exit.is_some_and(|e| e < i), "{n}");
                }
            }
        }
        assert_eq!(names.len(), 23);
        // Uprobe ids are unique and decode back.
        let ids: Vec<u16> = uprobes().map(|u| u.id as u16).collect();
        let mut dedup = ids.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(ids.len(), dedup.len(), "unique ids");
        // Every id has exactly one row, and decodes back.
        assert_eq!(ids.len(), HookId::ALL.len());
        for id in ids {
            assert!(HookId::from_u16(id).is_some());
        }
        assert_eq!(hook_name(HookId::LlamaDecode as u16), Some("llama_decode"));
        // CUDA rows: ids in their library's range, `_ptsz` beside each base symbol with the
        // same programs and stream location, synchronizes paired.
        for u in uprobes().filter(|u| u.kind != UprobeKind::Call) {
            let id = u.id as u16;
            match u.library {
                "libcuda.so" => assert!((100..200).contains(&id), "{}", u.symbol),
                "libcudart.so" => assert!(u.id.is_cuda_runtime(), "{}", u.symbol),
                "libnccl.so" => {
                    assert!(u.id.is_nccl() && u.ret, "{}", u.symbol);
                    continue;
                }
                l => panic!("{l}"),
            }
            assert_eq!(u.symbol.contains("Synchronize"), u.ret, "{}", u.symbol);
            if let Some(base) = u.symbol.strip_suffix("_ptsz") {
                let b = uprobes().find(|b| b.symbol == base).expect(base);
                assert_eq!((b.kind, b.ret, b.library), (u.kind, u.ret, u.library));
            }
        }
        let c = uprobes()
            .find(|u| u.id == HookId::CuLaunchKernel)
            .unwrap()
            .cookie();
        assert_eq!(uprobe_cookie::stream(c), stream_at::stack(2));
        assert_eq!(c & uprobe_cookie::HOOK_MASK, 100);
        let c = uprobes()
            .find(|u| u.id == HookId::NcclCommInitRank)
            .unwrap()
            .cookie();
        assert_eq!(uprobe_cookie::out(c), Some(0));
        assert_ne!(c & uprobe_cookie::PAIRED, 0);
        let c = uprobes()
            .find(|u| u.id == HookId::NcclReduce)
            .unwrap()
            .cookie();
        assert_eq!(
            (uprobe_cookie::stream(c), uprobe_cookie::out(c)),
            (stream_at::stack(1), None)
        );
    }

    #[test]
    fn library_and_symbol_names() {
        assert!(library_matches("libllama.so", "libllama.so"));
        assert!(library_matches("libllama.so", "libllama.so.0.0.1"));
        assert!(!library_matches("libllama.so", "libllama.sox"));
        assert!(!library_matches("libcuda.so", "libcudart.so.12"));
        assert!(library_matches("libcuda.so", "libcuda.so.1"));
        assert_eq!(
            plain_symbol("cudaLaunchKernel@@libcudart.so.12"),
            "cudaLaunchKernel"
        );
        assert_eq!(plain_symbol("llama_decode"), "llama_decode");
    }
}
