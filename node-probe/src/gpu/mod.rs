//! CUDA calls seen by the GPU hooks (`hooks.rs`, family `Gpu`): decoded from the GPU ring into
//! the operations that bound GPU work. Kernel launches never arrive one by one: the kernel
//! counts them per (process, API, stream), and each boundary call carries the launches made on
//! its stream since the previous one ([`GpuCall::launches`]).
//!
//! Argument positions are the x86-64 SysV ones of `../shared/notes/gpu.md` §2; handles are
//! opaque numbers (never dereferenced here). A runtime call may reach the driver's entry points
//! too: records say which [`Api`] they came from, and the two are never added.
use inferscope_common::{EventHeader, GpuCallEvent};
use serde::Serialize;

pub mod nccl;
pub mod nvml;
pub mod steps;

use crate::event::{read, CallRecord, DecodeError};
use crate::hooks::HookId;

/// A decoded GPU ring record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuRecord {
    /// The call, as for any uprobe.
    pub call: CallRecord,
    /// Stream handle (0: none, or the legacy default stream).
    pub stream: u64,
    /// Kernel launches on `stream` (same process and API) since the previous boundary call.
    pub launches: u64,
    /// Entry of the first of them (monotonic ns; 0 when none).
    pub first_launch_ns: u64,
    /// What the hook's output argument pointed to at the return (NCCL inits: the new
    /// communicator); 0 for other hooks.
    pub out: u64,
}

impl GpuRecord {
    /// Whether it is an NCCL call (`EventKind::NcclCall`).
    pub fn is_nccl(&self) -> bool {
        HookId::from_u16(self.call.hook).is_some_and(HookId::is_nccl)
    }
}

/// Decodes a [`GpuCallEvent`] record (its header already read): CUDA and NCCL calls.
pub fn decode_record(h: &EventHeader, bytes: &[u8]) -> Result<GpuRecord, DecodeError> {
    let ev = read::<GpuCallEvent>(bytes)?;
    let c = &ev.call;
    let hook = u16::try_from(c.hook).map_err(|_| DecodeError::UnknownHook(c.hook))?;
    Ok(GpuRecord {
        call: CallRecord {
            hook,
            tgid: h.tgid,
            tid: h.tid,
            start_ns: if c.paired != 0 { c.start_ns } else { h.ts_ns },
            end_ns: h.ts_ns,
            paired: c.paired != 0,
            ret: c.ret,
            args: c.args,
            stack: c.stack,
        },
        stream: ev.stream,
        launches: ev.launches,
        first_launch_ns: ev.first_launch_ns,
        out: ev.out,
    })
}

/// Which CUDA API a call was made through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `libcuda.so.1` (cuBLAS, NCCL and Triton call it directly).
    Driver,
    /// `libcudart.so`.
    Runtime,
}

/// Direction of an async copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyKind {
    /// Host to host.
    HostToHost,
    /// Host to device.
    HostToDevice,
    /// Device to host (an output copy).
    DeviceToHost,
    /// Device to device.
    DeviceToDevice,
    /// Inferred from unified addresses (`cuMemcpyAsync`, `cudaMemcpyDefault`).
    Unified,
    /// A `cudaMemcpyKind` value this build does not know.
    Unknown,
}

impl CopyKind {
    /// From a `cudaMemcpyKind`.
    fn from_runtime(kind: u64) -> Self {
        match kind as u32 {
            0 => Self::HostToHost,
            1 => Self::HostToDevice,
            2 => Self::DeviceToHost,
            3 => Self::DeviceToDevice,
            4 => Self::Unified,
            _ => Self::Unknown,
        }
    }
}

/// What a boundary call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum GpuOp {
    /// A CUDA graph was launched (one replay: a whole decode step, or one piece of one).
    GraphLaunch {
        /// `CUgraphExec` handle (stable per captured graph).
        exec: u64,
    },
    /// An async copy was queued.
    Memcpy {
        /// Direction.
        kind: CopyKind,
        /// Bytes.
        bytes: u64,
    },
    /// An event was recorded on the stream (vLLM: after each step's output copy).
    EventRecord {
        /// `CUevent` handle.
        event: u64,
        /// `*WithFlags` flags (0 otherwise).
        flags: u32,
    },
    /// The thread waited for an event (vLLM: a step's output is ready when it returns).
    EventSync {
        /// `CUevent` handle: pairs with the [`GpuOp::EventRecord`] of the same handle.
        event: u64,
    },
    /// The thread waited for everything queued on the stream.
    StreamSync,
    /// The stream was made to wait for an event (no host wait).
    StreamWait {
        /// `CUevent` handle.
        event: u64,
        /// Flags.
        flags: u32,
    },
    /// The thread waited for the whole context/device.
    ContextSync,
    /// The stream began capturing into a graph: what is queued on it until
    /// [`GpuOp::CaptureEnd`] is recorded, not run (NCCL calls made then are flagged).
    CaptureBegin,
    /// The stream's capture ended (the launches it carries were captured, not run).
    CaptureEnd,
}

/// One boundary call, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GpuCall {
    /// The API it went through.
    pub api: Api,
    /// What it did.
    #[serde(flatten)]
    pub op: GpuOp,
    /// Stream handle (0: none, or the legacy default stream).
    pub stream: u64,
    /// Kernel launches on the stream since the previous boundary call on it.
    pub launches: u64,
    /// The call's result (`CUresult`/`cudaError_t`), for calls timed to their return.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<i32>,
}

/// Decodes a record's operation; `None` for a hook that is not a GPU boundary call.
pub fn decode(r: &GpuRecord) -> Option<GpuCall> {
    use HookId::*;
    let hook = HookId::from_u16(r.call.hook)?;
    let a = &r.call.args;
    let op = match hook {
        CuGraphLaunch | CuGraphLaunchPtsz | CudaGraphLaunch | CudaGraphLaunchPtsz => {
            GpuOp::GraphLaunch { exec: a[0] }
        }
        CuMemcpyHtoDAsync | CuMemcpyHtoDAsyncPtsz => copy(CopyKind::HostToDevice, a[2]),
        CuMemcpyDtoHAsync | CuMemcpyDtoHAsyncPtsz => copy(CopyKind::DeviceToHost, a[2]),
        CuMemcpyDtoDAsync | CuMemcpyDtoDAsyncPtsz => copy(CopyKind::DeviceToDevice, a[2]),
        CuMemcpyAsync | CuMemcpyAsyncPtsz => copy(CopyKind::Unified, a[2]),
        CudaMemcpyAsync | CudaMemcpyAsyncPtsz => copy(CopyKind::from_runtime(a[3]), a[2]),
        CuEventRecord | CuEventRecordPtsz | CudaEventRecord | CudaEventRecordPtsz => {
            GpuOp::EventRecord {
                event: a[0],
                flags: 0,
            }
        }
        CuEventRecordWithFlags
        | CuEventRecordWithFlagsPtsz
        | CudaEventRecordWithFlags
        | CudaEventRecordWithFlagsPtsz => GpuOp::EventRecord {
            event: a[0],
            flags: a[2] as u32,
        },
        CuEventSynchronize | CudaEventSynchronize => GpuOp::EventSync { event: a[0] },
        CuStreamSynchronize
        | CuStreamSynchronizePtsz
        | CudaStreamSynchronize
        | CudaStreamSynchronizePtsz => GpuOp::StreamSync,
        CuStreamWaitEvent
        | CuStreamWaitEventPtsz
        | CudaStreamWaitEvent
        | CudaStreamWaitEventPtsz => GpuOp::StreamWait {
            event: a[1],
            flags: a[2] as u32,
        },
        CuCtxSynchronize | CudaDeviceSynchronize => GpuOp::ContextSync,
        CuStreamBeginCapture
        | CuStreamBeginCapturePtsz
        | CudaStreamBeginCapture
        | CudaStreamBeginCapturePtsz => GpuOp::CaptureBegin,
        CuStreamEndCapture
        | CuStreamEndCapturePtsz
        | CudaStreamEndCapture
        | CudaStreamEndCapturePtsz => GpuOp::CaptureEnd,
        NcclCommInitRank
        | NcclCommInitRankConfig
        | NcclCommInitRankScalable
        | NcclCommSplit
        | NcclCommUserRank
        | NcclCommCount
        | NcclCommDestroy
        | NcclCommAbort
        | NcclAllReduce
        | NcclReduceScatter
        | NcclAllGather
        | NcclBroadcast
        | NcclReduce
        | NcclSend
        | NcclRecv
        | NcclAlltoAll
        | NcclGroupStart
        | NcclGroupEnd => return None,
        LlamaDecode
        | CuLaunchKernel
        | CuLaunchKernelPtsz
        | CuLaunchKernelEx
        | CuLaunchKernelExPtsz
        | CudaLaunchKernel
        | CudaLaunchKernelPtsz
        | CudaLaunchKernelExC
        | CudaLaunchKernelExCPtsz => return None,
    };
    Some(GpuCall {
        api: if hook.is_cuda_runtime() {
            Api::Runtime
        } else {
            Api::Driver
        },
        op,
        stream: r.stream,
        launches: r.launches,
        // CUresult and cudaError_t are 32-bit enums in eax.
        result: r.call.paired.then_some(r.call.ret as u32 as i32),
    })
}

fn copy(kind: CopyKind, bytes: u64) -> GpuOp {
    GpuOp::Memcpy { kind, bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(hook: HookId, args: [u64; 6], paired: bool, ret: u64) -> GpuRecord {
        GpuRecord {
            call: CallRecord {
                hook: hook as u16,
                tgid: 1,
                tid: 2,
                start_ns: 10,
                end_ns: 20,
                paired,
                ret,
                args,
                stack: [0; 4],
            },
            stream: 0x55,
            launches: 3,
            first_launch_ns: 5,
            out: 0,
        }
    }

    #[test]
    fn ops_from_argument_positions() {
        let r = record(HookId::CudaMemcpyAsync, [1, 2, 4096, 2, 0x55, 0], false, 0);
        let c = decode(&r).unwrap();
        assert_eq!(
            c.op,
            GpuOp::Memcpy {
                kind: CopyKind::DeviceToHost,
                bytes: 4096
            }
        );
        assert_eq!(
            (c.api, c.stream, c.launches, c.result),
            (Api::Runtime, 0x55, 3, None)
        );
        let r = record(
            HookId::CuEventRecordWithFlagsPtsz,
            [0xe1, 0x55, 1, 0, 0, 0],
            false,
            0,
        );
        let c = decode(&r).unwrap();
        assert_eq!(
            c.op,
            GpuOp::EventRecord {
                event: 0xe1,
                flags: 1
            }
        );
        assert_eq!(c.api, Api::Driver);
        // A synchronize's result is the low 32 bits of rax, signed.
        let r = record(
            HookId::CuStreamSynchronize,
            [0x55, 0, 0, 0, 0, 0],
            true,
            0xffff_ffff_0000_0003,
        );
        assert_eq!(decode(&r).unwrap().result, Some(3));
        let r = record(
            HookId::CuStreamWaitEvent,
            [0x55, 0xe2, 0, 0, 0, 0],
            false,
            0,
        );
        assert_eq!(
            decode(&r).unwrap().op,
            GpuOp::StreamWait {
                event: 0xe2,
                flags: 0
            }
        );
        // Launches and non-GPU hooks are not boundary calls.
        assert_eq!(
            decode(&record(HookId::CuLaunchKernel, [0; 6], false, 0)),
            None
        );
        assert_eq!(decode(&record(HookId::LlamaDecode, [0; 6], true, 0)), None);
        let mut r = record(HookId::CuGraphLaunch, [7, 0x55, 0, 0, 0, 0], false, 0);
        assert_eq!(decode(&r).unwrap().op, GpuOp::GraphLaunch { exec: 7 });
        r.call.hook = 999;
        assert_eq!(decode(&r), None);
    }

    #[test]
    fn json_names() {
        let r = record(
            HookId::CuMemcpyDtoHAsyncPtsz,
            [0, 0, 64, 0x55, 0, 0],
            false,
            0,
        );
        let j = serde_json::to_value(decode(&r).unwrap()).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"api": "driver", "op": "memcpy", "kind": "device_to_host",
                "bytes": 64, "stream": 0x55, "launches": 3})
        );
    }
}
