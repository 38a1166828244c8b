//! Loading and attaching the kernel programs, and access to their maps.
use std::collections::BTreeMap;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use inferscope_common::{
    EventKind, KernelOffsets, ProbeConfig, SyscallId, TargetInfo, TargetReason, LOSS_SLOTS,
    MAP_CONFIG, MAP_EVENTS, MAP_LOSS, MAP_SYSCALLS, MAP_TARGETS, MAP_WATCH_PORTS, MAX_PAYLOAD,
    MAX_SYSCALL_NR,
};

/// The eBPF object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf"));

/// Syscalls traced with an enter/exit pair of tracepoints (`close` has only an enter program).
pub const SOCKET_SYSCALLS: [&str; 11] = [
    "read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg", "accept",
    "accept4", "connect",
];

/// How the socket syscalls are hooked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyscallHook {
    /// A classic `syscalls:sys_{enter,exit}_*` tracepoint pair per socket syscall: only those
    /// syscalls run a program.
    Tracepoint,
    /// One raw `sys_enter` / `sys_exit` tracepoint pair for all syscalls, dispatching on the
    /// syscall number in the kernel: cheaper per traced syscall, but every syscall on the host
    /// runs both programs (see BENCHMARKS.md for the measured trade).
    Raw,
}

/// This architecture's numbers of the traced syscalls.
pub fn syscall_numbers() -> [(SyscallId, libc::c_long); 12] {
    [
        (SyscallId::Read, libc::SYS_read),
        (SyscallId::Write, libc::SYS_write),
        (SyscallId::Readv, libc::SYS_readv),
        (SyscallId::Writev, libc::SYS_writev),
        (SyscallId::Recvfrom, libc::SYS_recvfrom),
        (SyscallId::Sendto, libc::SYS_sendto),
        (SyscallId::Recvmsg, libc::SYS_recvmsg),
        (SyscallId::Sendmsg, libc::SYS_sendmsg),
        (SyscallId::Accept, libc::SYS_accept),
        (SyscallId::Accept4, libc::SYS_accept4),
        (SyscallId::Connect, libc::SYS_connect),
        (SyscallId::Close, libc::SYS_close),
    ]
}

/// Failure to load or attach.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// aya could not load the object (verifier, map creation).
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program failed to load or attach.
    #[error("program {name}: {source}")]
    Program {
        /// Program name.
        name: String,
        /// Cause.
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Cause.
        source: aya::maps::MapError,
    },
    /// A map or program is missing from the object (build mismatch).
    #[error("the eBPF object has no {0}")]
    Missing(String),
    /// A bad option value.
    #[error("{0}")]
    Invalid(String),
}

/// Options for [`Probe::load`].
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Payload bytes to capture per syscall.
    pub payload_cap: u32,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Report every exec (needed for command-line patterns).
    pub exec_events: bool,
    /// Offset of `group_dead` in `sched_process_exit`, 0 if absent.
    pub exit_group_dead_off: u32,
    /// How the socket syscalls are hooked.
    pub syscall_hook: SyscallHook,
}

/// Loaded programs and their maps.
pub struct Probe {
    ebpf: Ebpf,
    targets: HashMap<MapData, u32, TargetInfo>,
    watch_ports: HashMap<MapData, u32, u32>,
    loss: PerCpuArray<MapData, u64>,
    /// Names of programs attached, as `category:name`.
    pub attached: Vec<String>,
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

impl Probe {
    /// Loads the object, writes the configuration; attaches nothing yet.
    pub fn load(
        opts: &ProbeOptions,
        offsets: KernelOffsets,
    ) -> Result<(Self, RingBuf<MapData>), ProbeError> {
        if opts.payload_cap as usize > MAX_PAYLOAD {
            return Err(ProbeError::Invalid(format!(
                "payload cap {} exceeds the maximum {MAX_PAYLOAD}",
                opts.payload_cap
            )));
        }
        if !opts.ring_bytes.is_power_of_two() || opts.ring_bytes < 4096 {
            return Err(ProbeError::Invalid(format!(
                "ring size {} must be a power of two of at least 4096",
                opts.ring_bytes
            )));
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_EVENTS, opts.ring_bytes)
            .load(OBJECT)?;
        let mut config: Array<_, ProbeConfig> = Array::try_from(
            ebpf.map_mut(MAP_CONFIG)
                .ok_or_else(|| ProbeError::Missing(MAP_CONFIG.into()))?,
        )
        .map_err(map_err(MAP_CONFIG))?;
        config
            .set(
                0,
                ProbeConfig {
                    payload_cap: opts.payload_cap,
                    ready: 1,
                    exec_events: u32::from(opts.exec_events),
                    exit_group_dead_off: opts.exit_group_dead_off,
                    offsets,
                },
                0,
            )
            .map_err(map_err(MAP_CONFIG))?;
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name)
                .ok_or_else(|| ProbeError::Missing(name.into()))
        };
        let targets =
            HashMap::try_from(take(&mut ebpf, MAP_TARGETS)?).map_err(map_err(MAP_TARGETS))?;
        let watch_ports = HashMap::try_from(take(&mut ebpf, MAP_WATCH_PORTS)?)
            .map_err(map_err(MAP_WATCH_PORTS))?;
        let loss = PerCpuArray::try_from(take(&mut ebpf, MAP_LOSS)?).map_err(map_err(MAP_LOSS))?;
        let ring = RingBuf::try_from(take(&mut ebpf, MAP_EVENTS)?).map_err(map_err(MAP_EVENTS))?;
        Ok((
            Self {
                ebpf,
                targets,
                watch_ports,
                loss,
                attached: Vec::new(),
            },
            ring,
        ))
    }

    fn attach_tp(&mut self, prog: &str, category: &str, name: &str) -> Result<(), ProbeError> {
        let perr = |source| ProbeError::Program {
            name: prog.to_string(),
            source,
        };
        let p: &mut TracePoint = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| ProbeError::Missing(prog.into()))?
            .try_into()
            .map_err(perr)?;
        p.load().map_err(perr)?;
        p.attach(category, name).map_err(perr)?;
        self.attached.push(format!("{category}:{name}"));
        Ok(())
    }

    fn attach_raw(&mut self, prog: &str, name: &str) -> Result<(), ProbeError> {
        let perr = |source| ProbeError::Program {
            name: prog.to_string(),
            source,
        };
        let p: &mut RawTracePoint = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| ProbeError::Missing(prog.into()))?
            .try_into()
            .map_err(perr)?;
        p.load().map_err(perr)?;
        p.attach(name).map_err(perr)?;
        self.attached.push(format!("raw:{name}"));
        Ok(())
    }

    /// Attaches the process-lifecycle programs (fork, exec, exit).
    pub fn attach_lifecycle(&mut self) -> Result<(), ProbeError> {
        self.attach_raw("sched_process_fork", "sched_process_fork")?;
        self.attach_raw("sched_process_exec", "sched_process_exec")?;
        self.attach_tp("sched_process_exit", "sched", "sched_process_exit")
    }

    /// Attaches the wire-side arrival program (`sk_data_ready`).
    pub fn attach_arrivals(&mut self) -> Result<(), ProbeError> {
        self.attach_raw("sk_data_ready", "sk_data_ready")
    }

    /// Timestamps data arrivals on TCP sockets with this local port.
    pub fn watch_port(&mut self, port: u16) -> Result<(), ProbeError> {
        self.watch_ports
            .insert(u32::from(port), 1, 0)
            .map_err(map_err(MAP_WATCH_PORTS))
    }

    /// Whether arrivals on `port` are timestamped.
    pub fn is_watched(&self, port: u16) -> bool {
        self.watch_ports.get(&u32::from(port), 0).is_ok()
    }

    /// Attaches the socket syscall programs the chosen way.
    pub fn attach_syscalls(&mut self, hook: SyscallHook) -> Result<(), ProbeError> {
        match hook {
            SyscallHook::Raw => self.attach_raw_syscalls(),
            SyscallHook::Tracepoint => self.attach_tp_syscalls(),
        }
    }

    fn attach_raw_syscalls(&mut self) -> Result<(), ProbeError> {
        let mut table: Array<_, u32> = Array::try_from(
            self.ebpf
                .map_mut(MAP_SYSCALLS)
                .ok_or_else(|| ProbeError::Missing(MAP_SYSCALLS.into()))?,
        )
        .map_err(map_err(MAP_SYSCALLS))?;
        for (sc, nr) in syscall_numbers() {
            if nr < 0 || nr >= i64::from(MAX_SYSCALL_NR) {
                return Err(ProbeError::Invalid(format!(
                    "syscall {} has number {nr}, beyond the table of {MAX_SYSCALL_NR}",
                    sc.name()
                )));
            }
            table
                .set(nr as u32, sc as u32, 0)
                .map_err(map_err(MAP_SYSCALLS))?;
        }
        // Exit first, so an entry recorded is always consumed.
        self.attach_raw("raw_sys_exit", "sys_exit")?;
        self.attach_raw("raw_sys_enter", "sys_enter")
    }

    fn attach_tp_syscalls(&mut self) -> Result<(), ProbeError> {
        for sc in SOCKET_SYSCALLS {
            let enter = format!("sys_enter_{sc}");
            let exit = format!("sys_exit_{sc}");
            // Exit first, so an entry recorded is always consumed.
            self.attach_tp(&exit, "syscalls", &exit)?;
            self.attach_tp(&enter, "syscalls", &enter)?;
        }
        self.attach_tp("sys_enter_close", "syscalls", "sys_enter_close")
    }

    /// Adds a process to the in-kernel target set.
    pub fn add_target(
        &mut self,
        tgid: u32,
        reason: TargetReason,
        follow_children: bool,
    ) -> Result<(), ProbeError> {
        let v = TargetInfo {
            reason: reason as u32,
            follow_children: u32::from(follow_children),
        };
        self.targets
            .insert(tgid, v, 0)
            .map_err(map_err(MAP_TARGETS))
    }

    /// Removes a process from the target set (absent is fine).
    pub fn remove_target(&mut self, tgid: u32) {
        let _ = self.targets.remove(&tgid);
    }

    /// Whether `tgid` is in the in-kernel target set.
    pub fn is_target(&self, tgid: u32) -> bool {
        self.targets.get(&tgid, 0).is_ok()
    }

    /// The in-kernel target set.
    pub fn targets(&self) -> BTreeMap<u32, u32> {
        self.targets
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, v.reason))
            .collect()
    }

    /// Events lost in the kernel because the ring was full, per kind (summed over CPUs).
    pub fn kernel_losses(&self) -> Vec<(EventKind, u64)> {
        (0..LOSS_SLOTS)
            .filter_map(|i| {
                let kind = EventKind::from_u32(i)?;
                let n: u64 = self.loss.get(&i, 0).ok()?.iter().sum();
                Some((kind, n))
            })
            .collect()
    }
}
