//! Loading and attaching the kernel programs, and access to their maps.
use std::collections::BTreeMap;

use std::path::Path;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{
            UProbeAttachLocation, UProbeAttachPoint, UProbeLink as UProbeOwnedLink, UProbeLinkId,
            UProbeScope,
        },
        RawTracePoint, TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use inferscope_common::{
    watch_key, DropReason, EventKind, KernelOffsets, ProbeConfig, SyscallId, TargetInfo,
    TargetReason, LOSS_SLOTS, MAP_CONFIG, MAP_DROPS, MAP_EVENTS, MAP_GPU_EVENTS, MAP_LOSS,
    MAP_SYSCALLS, MAP_TARGETS, MAP_WATCH_PORTS, MAX_PAYLOAD, MAX_SYSCALL_NR,
};

use crate::hooks::{
    self, Family, Point, UprobeHook, GPU_CALL_PROGRAM, GPU_LAUNCH_PROGRAM, GPU_RET_PROGRAM,
    UPROBE_PROGRAM, URETPROBE_PROGRAM,
};

/// The eBPF object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf"));

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
    /// Benchmarks only: an empty program on every tracepoint `tracepoint` uses, so that
    /// `syscall-cost` can measure what the hook itself costs a syscall. Traces nothing.
    #[value(hide = true)]
    Null,
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

/// The rings the kernel programs write: socket, process and engine-library records, and GPU
/// call records apart (a launch storm never crowds out the others).
pub struct Rings {
    /// [`MAP_EVENTS`].
    pub events: RingBuf<MapData>,
    /// [`inferscope_common::MAP_GPU_EVENTS`].
    pub gpu: RingBuf<MapData>,
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

/// One attached uprobe link (entry or return program).
#[derive(Debug)]
pub struct UprobeLink {
    program: &'static str,
    id: UProbeLinkId,
}

/// Loaded programs and their maps.
pub struct Probe {
    ebpf: Ebpf,
    targets: HashMap<MapData, u32, TargetInfo>,
    watch_ports: HashMap<MapData, u64, u32>,
    loss: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
    uprobes_loaded: bool,
    /// Names of programs attached, as `category:name`.
    pub attached: Vec<String>,
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

impl Probe {
    /// Loads the object, writes the configuration; attaches nothing yet.
    pub fn load(opts: &ProbeOptions, offsets: KernelOffsets) -> Result<(Self, Rings), ProbeError> {
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
        if OBJECT.is_empty() {
            return Err(ProbeError::Missing(
                "kernel programs: this build skipped them (INFERSCOPE_EBPF_STUB=1)".into(),
            ));
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
        let drops =
            PerCpuArray::try_from(take(&mut ebpf, MAP_DROPS)?).map_err(map_err(MAP_DROPS))?;
        let ring = |ebpf: &mut Ebpf, name: &'static str| {
            RingBuf::try_from(take(ebpf, name)?).map_err(map_err(name))
        };
        let rings = Rings {
            events: ring(&mut ebpf, MAP_EVENTS)?,
            gpu: ring(&mut ebpf, MAP_GPU_EVENTS)?,
        };
        Ok((
            Self {
                ebpf,
                targets,
                watch_ports,
                loss,
                drops,
                uprobes_loaded: false,
                attached: Vec::new(),
            },
            rings,
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

    /// Attaches every tracepoint and raw tracepoint of a hook-table family, in table order.
    pub fn attach_family(&mut self, family: Family) -> Result<(), ProbeError> {
        if family == Family::SyscallsRaw {
            self.fill_syscall_table()?;
        }
        for h in hooks::family(family) {
            match h.point {
                Point::Tracepoint { category, name } => {
                    self.attach_tp(h.program, category, name)?
                }
                Point::RawTracepoint { name } => self.attach_raw(h.program, name)?,
                Point::Uprobe { .. } => {}
            }
        }
        Ok(())
    }

    /// Attaches the process-lifecycle programs (fork, exec, exit).
    pub fn attach_lifecycle(&mut self) -> Result<(), ProbeError> {
        self.attach_family(Family::Lifecycle)
    }

    /// Attaches the wire-side arrival program (`sk_data_ready`).
    pub fn attach_arrivals(&mut self) -> Result<(), ProbeError> {
        self.attach_family(Family::Arrivals)
    }

    /// Timestamps data arrivals on TCP sockets with this local port in network namespace
    /// `netns` (its inode number).
    pub fn watch_port(&mut self, netns: u32, port: u16) -> Result<(), ProbeError> {
        self.watch_ports
            .insert(watch_key(netns, port), 1, 0)
            .map_err(map_err(MAP_WATCH_PORTS))
    }

    /// Whether arrivals on `port` in `netns` are timestamped.
    pub fn is_watched(&self, netns: u32, port: u16) -> bool {
        self.watch_ports.get(&watch_key(netns, port), 0).is_ok()
    }

    /// Attaches the socket syscall programs the chosen way.
    pub fn attach_syscalls(&mut self, hook: SyscallHook) -> Result<(), ProbeError> {
        match hook {
            SyscallHook::Raw => self.attach_family(Family::SyscallsRaw),
            SyscallHook::Tracepoint => self.attach_family(Family::SyscallsTracepoint),
            SyscallHook::Null => self.attach_null(),
        }
    }

    /// The empty program on each tracepoint of [`Family::SyscallsTracepoint`].
    fn attach_null(&mut self) -> Result<(), ProbeError> {
        const PROG: &str = "sys_null";
        let perr = |source| ProbeError::Program {
            name: PROG.to_string(),
            source,
        };
        let points: Vec<(&str, &str)> = hooks::family(Family::SyscallsTracepoint)
            .filter_map(|h| match h.point {
                Point::Tracepoint { category, name } => Some((category, name)),
                _ => None,
            })
            .collect();
        let p: &mut TracePoint = self
            .ebpf
            .program_mut(PROG)
            .ok_or_else(|| ProbeError::Missing(PROG.into()))?
            .try_into()
            .map_err(perr)?;
        p.load().map_err(perr)?;
        for (category, name) in &points {
            p.attach(category, name).map_err(perr)?;
        }
        self.attached
            .extend(points.iter().map(|(c, n)| format!("{c}:{n} (null)")));
        Ok(())
    }

    fn fill_syscall_table(&mut self) -> Result<(), ProbeError> {
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
        Ok(())
    }

    fn uprobe_program(&mut self, name: &'static str) -> Result<&mut UProbe, ProbeError> {
        let perr = |source| ProbeError::Program {
            name: name.to_string(),
            source,
        };
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| ProbeError::Missing(name.into()))?
            .try_into()
            .map_err(perr)
    }

    fn load_uprobes(&mut self) -> Result<(), ProbeError> {
        if self.uprobes_loaded {
            return Ok(());
        }
        for name in [
            UPROBE_PROGRAM,
            URETPROBE_PROGRAM,
            GPU_LAUNCH_PROGRAM,
            GPU_CALL_PROGRAM,
            GPU_RET_PROGRAM,
        ] {
            let p = self.uprobe_program(name)?;
            p.load().map_err(|source| ProbeError::Program {
                name: name.to_string(),
                source,
            })?;
        }
        self.uprobes_loaded = true;
        Ok(())
    }

    /// Attaches one uprobe hook (and its return probe) to the file at `path`, `skip` bytes into
    /// its symbol ([`crate::entry::probe_skips`]), for every process that maps it. Returns the links, to give to [`Probe::detach_uprobe`].
    pub fn attach_uprobe(
        &mut self,
        hook: &UprobeHook,
        path: &Path,
        skip: u64,
    ) -> Result<Vec<UprobeLink>, ProbeError> {
        self.load_uprobes()?;
        let symbol = hooks::plain_symbol(hook.symbol);
        let cookie = hook.cookie();
        let mut links = Vec::new();
        // The return probe first, so that an entry saved is always consumed.
        let programs: Vec<&'static str> = match hook.programs() {
            (entry, Some(exit)) => vec![exit, entry],
            (entry, None) => vec![entry],
        };
        for name in programs {
            let location = if skip == 0 {
                UProbeAttachLocation::Symbol(symbol)
            } else {
                UProbeAttachLocation::SymbolOffset(symbol, skip)
            };
            let point = UProbeAttachPoint {
                location,
                cookie: Some(cookie),
            };
            let attached =
                self.uprobe_program(name)?
                    .attach(point, path, UProbeScope::AllProcesses);
            match attached {
                Ok(id) => links.push(UprobeLink { program: name, id }),
                Err(source) => {
                    for l in links {
                        self.detach_uprobe(l);
                    }
                    return Err(ProbeError::Program {
                        name: format!("{name} at {symbol} in {}", path.display()),
                        source,
                    });
                }
            }
        }
        Ok(links)
    }

    /// Releases a uprobe link (absent is fine).
    /// Takes a link out of its program so that it can be dropped (detached) on another
    /// thread: closing a uprobe link waits for RCU grace periods in the kernel.
    pub fn take_uprobe_link(&mut self, link: UprobeLink) -> Option<UProbeOwnedLink> {
        self.uprobe_program(link.program)
            .ok()?
            .take_link(link.id)
            .ok()
    }

    /// Detaches a link here and now (it blocks for the kernel's grace periods).
    pub fn detach_uprobe(&mut self, link: UprobeLink) {
        if let Ok(p) = self.uprobe_program(link.program) {
            let _ = p.detach(link.id);
        }
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

    /// Why `tgid` is a target (a [`TargetReason`] value), `None` when it is not one.
    pub fn target_reason(&self, tgid: u32) -> Option<u32> {
        self.targets.get(&tgid, 0).ok().map(|v| v.reason)
    }

    /// The in-kernel target set.
    pub fn targets(&self) -> BTreeMap<u32, u32> {
        self.targets
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, v.reason))
            .collect()
    }

    /// What the kernel side dropped without a record, per reason (summed over CPUs).
    pub fn kernel_drops(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL
            .iter()
            .map(|&r| {
                let n: u64 = self
                    .drops
                    .get(&(r as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (r, n)
            })
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
