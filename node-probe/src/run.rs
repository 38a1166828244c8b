//! The event loop: load, attach, keep the target set current, drain the ring, print, export.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use inferscope_common::{EventKind, TargetReason};
use tracing::{debug, info, warn};

use crate::clock::WallClock;
use crate::event::{decode, kind_name, peek_kind, Event, EventJson};
use crate::export::otlp::{OtlpExport, OtlpExportConfig};
use crate::export::{ExportConfig, ExportHandle, ExportSnapshot, Exporter};
use crate::gpu::nccl::Collective;
use crate::gpu::nvml::{self, DeviceSample};
use crate::gpu::steps::{GpuStep, StepStats};
use crate::kernel::{btf::KernelBtf, preflight, tracefs};
use crate::listen::listening_ports;
use crate::metrics::{self, Gauges, MetricsPage};
use crate::probe::{Probe, ProbeOptions, SyscallHook};
use crate::requests::{RequestRecord, Tracker, TrackerConfig};
use crate::targets::{read_proc, scan, Selector};
use crate::uprobes::Uprobes;

/// How events are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrintFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line ([`EventJson`]).
    Json,
}

/// Everything [`run`] needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Which processes.
    pub selector: Selector,
    /// Kernel-side options.
    pub probe: ProbeOptions,
    /// BTF file.
    pub btf_path: PathBuf,
    /// Print events to stdout.
    pub print: Option<PrintFormat>,
    /// Include payload bytes in printed events (off by default: payloads hold prompt text).
    pub print_payload: bool,
    /// How often the ring is drained.
    pub poll_interval: Duration,
    /// How often /proc is rescanned to repair the target set.
    pub rescan_interval: Duration,
    /// How long a library no target maps stays attached before its uprobes are released.
    pub uprobe_linger: Duration,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// A clock error to inject (offset ns, drift ppb): tests of the cross-node clock bounds.
    pub test_clock: Option<(i64, i64)>,
    /// Print finished requests ([`RequestRecord`]) to stdout as JSON lines.
    pub print_requests: bool,
    /// Server ports declared on the command line (others are discovered).
    pub ports: Vec<u16>,
    /// Request tracking limits.
    pub tracker: TrackerConfig,
    /// Ship finished requests to an aggregator (`--export`).
    pub export: Option<ExportConfig>,
    /// Export finished requests as OTLP spans (`--otlp-endpoint`).
    pub otlp: Option<OtlpExportConfig>,
    /// Serve node-probe's own metrics here (`--metrics-listen`).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where the host's /proc is (`--proc-root`; `/proc` unless node-probe runs in a pod with
    /// the host's /proc mounted elsewhere).
    pub proc_root: PathBuf,
    /// GPU device samples from NVML (`--nvml-ms`, `--nvml-lib`); `None`: off.
    pub nvml: Option<NvmlConfig>,
}

/// How long the OTLP export may take to send what is queued at shutdown.
const OTLP_DRAIN: Duration = Duration::from_secs(5);

/// NVML sampling options.
#[derive(Debug, Clone)]
pub struct NvmlConfig {
    /// Sampling period.
    pub period: Duration,
    /// `libnvidia-ml.so.1` to load (default: the loader's search).
    pub lib: Option<PathBuf>,
}

/// Counters kept by the loop, reported at exit.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Events decoded, per kind name.
    pub events: BTreeMap<&'static str, u64>,
    /// Records that did not decode, per raw kind value.
    pub decode_errors: BTreeMap<u32, u64>,
    /// Events lost in the kernel (ring full), per kind name.
    pub kernel_lost: BTreeMap<&'static str, u64>,
    /// What the kernel side dropped without a record, per reason.
    pub kernel_drops: BTreeMap<&'static str, u64>,
    /// Engine follower counters: `(engine, counter, value)`.
    pub engine: Vec<(&'static str, &'static str, u64)>,
    /// Request tracking counters.
    pub tracker: crate::requests::TrackerStats,
    /// Exporter counters, when exporting.
    pub export: Option<ExportSnapshot>,
    /// OTLP export counters at shutdown, when exporting over OTLP.
    pub otlp: Option<crate::export::otlp::OtlpExportStats>,
    /// The latest NVML sample of each GPU (empty without NVML).
    pub gpus: BTreeMap<u32, DeviceSample>,
}

/// Runs until `stop` is set or the configured duration passes.
pub fn run(cfg: RunConfig, stop: Arc<AtomicBool>) -> anyhow::Result<Stats> {
    preflight::check_privileges()?;
    let metrics_page = match cfg.metrics_listen {
        Some(addr) => {
            let page = MetricsPage::default();
            let bound = metrics::serve(addr, page.clone())
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            info!(addr = %bound, "serving metrics on /metrics");
            Some(page)
        }
        None => None,
    };
    let otlp = match &cfg.otlp {
        Some(o) => {
            let x = OtlpExport::start(o.clone()).context("cannot start the OTLP export")?;
            Some(x)
        }
        None => None,
    };
    let exporter = match &cfg.export {
        Some(e) => {
            let h = Exporter::start(e.clone()).context("cannot start the exporter")?;
            info!(
                urls = %e.urls.join(","),
                node = %e.node_name,
                boot_id = %h.boot_id(),
                spool = ?e.spool_dir,
                "exporting requests"
            );
            Some(h)
        }
        None => None,
    };
    let btf = KernelBtf::open(&cfg.btf_path)?;
    let offsets = btf.kernel_offsets()?;
    drop(btf);
    let tracefs = tracefs::tracefs_root().context(
        "tracefs is not mounted: run `mount -t tracefs tracefs /sys/kernel/tracing` as root",
    )?;
    let mut opts = cfg.probe.clone();
    opts.exec_events = cfg.selector.has_patterns();
    opts.exit_group_dead_off =
        tracefs::field_offset(&tracefs, "sched", "sched_process_exit", "group_dead").unwrap_or(0);

    let (mut probe, mut rings) = Probe::load(&opts, offsets)?;
    let proc_root = cfg.proc_root.as_path();
    let mut uprobes = Uprobes::new(cfg.uprobe_linger);
    // Lifecycle first, so children forked by targets during the scan are caught in-kernel.
    let initial = cfg.selector.initial(&scan(proc_root));
    for (&pid, &reason) in &initial {
        probe.add_target(pid, reason, cfg.selector.follow_children)?;
    }
    probe.attach_lifecycle()?;
    // A second scan picks up what forked between the first scan and the attach.
    sync_targets(&mut probe, &cfg.selector, proc_root);
    // `sock:sk_data_ready` exists from Linux 6.3: without it, a request starts when the server
    // reads it rather than when its first byte reached the host.
    if let Err(e) = probe.attach_arrivals() {
        warn!(
            error = %e,
            "no wire arrival times (the sk_data_ready tracepoint needs Linux 6.3); \
             request starts are taken from the server's first read"
        );
    }
    probe
        .attach_syscalls(opts.syscall_hook)
        .with_context(|| match opts.syscall_hook {
            SyscallHook::Raw => {
                "cannot attach the raw sys_enter/sys_exit tracepoints \
                 (on kernels without them, try --syscall-hook tracepoint)"
            }
            SyscallHook::Tracepoint | SyscallHook::Null => {
                "cannot attach the syscalls:* tracepoints"
            }
        })?;
    let clock = match cfg.test_clock {
        Some((offset, drift)) => WallClock::new().with_test_skew(offset, drift),
        None => WallClock::new(),
    };
    let timens = crate::clock::timens_monotonic_offset_ns();
    if timens != 0 {
        info!(
            monotonic_offset_ns = timens as i64,
            "running in a time namespace: its monotonic offset is removed from kernel timestamps"
        );
    }
    let mut tracker = Tracker::new(cfg.tracker.clone(), clock, proc_root);
    for &p in &cfg.ports {
        tracker.declare_port(p);
    }
    discover_ports(&probe, &mut tracker, proc_root);
    watch_new_ports(&mut probe, &mut tracker);
    sync_uprobes(&mut probe, &mut uprobes, proc_root, cfg.rescan_interval);
    let targets = probe.targets();
    info!(
        targets = ?targets.keys().collect::<Vec<_>>(),
        attached = probe.attached.len(),
        payload_cap = opts.payload_cap,
        syscall_hook = ?opts.syscall_hook,
        "node-probe attached"
    );
    debug!(programs = ?probe.attached, "attached programs");

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    // `--requests` and JSON events: one line once attached, so that a reader knows when what
    // it does next is traced.
    if cfg.print == Some(PrintFormat::Json) || cfg.print_requests {
        let ready = serde_json::json!({
            "kind": "ready",
            "test_clock": clock.test_skew().map(|k| serde_json::json!({
                "offset_ns": k.offset_ns,
                "drift_ppb": k.drift_ppb,
                "origin_unix_ns": clock.to_wall(k.origin_mono_ns) as i128 - k.offset_ns as i128,
            })),
            "targets": targets.keys().collect::<Vec<_>>(),
            "attached": probe.attached,
        });
        writeln!(out, "{ready}")?;
        out.flush()?;
    }

    let mut stats = Stats::default();
    let started = Instant::now();
    let mut last_metrics: Option<Instant> = None;
    let mut last_rescan = Instant::now();
    let mut last_ports = Instant::now();
    let mut ports_for_targets = probe.targets().len();
    let mut pending: Vec<Event> = Vec::with_capacity(1024);
    let (mut main_batch, mut gpu_batch) = (Vec::with_capacity(4096), Vec::with_capacity(1024));
    let mut finished: Vec<RequestRecord> = Vec::new();
    let mut steps_done: Vec<GpuStep> = Vec::new();
    let mut colls_done: Vec<Collective> = Vec::new();
    let nvml = cfg
        .nvml
        .as_ref()
        .and_then(|n| nvml::start(n.lib.as_ref(), n.period, crate::clock::monotonic_ns));
    let mut samples: Vec<DeviceSample> = Vec::new();
    // At a stop, what the kernel already wrote is still read (until a turn finds nothing, for
    // at most STOP_DRAIN), so that SIGTERM loses no finished exchange.
    let mut stop_by: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) || cfg.duration.is_some_and(|d| started.elapsed() >= d) {
            stop_by.get_or_insert_with(|| Instant::now() + STOP_DRAIN);
        }
        // The main ring first, then the GPU ring (every GPU record written before the main
        // ring's last is then here), merged by time: a step's synchronize comes before the
        // output message sent after it, a process's last GPU calls before its exit.
        drain(&mut rings.events, &mut main_batch, &mut stats, 4096);
        drain(&mut rings.gpu, &mut gpu_batch, &mut stats, 8192);
        crate::event::merge_by_time(&mut main_batch, &mut gpu_batch, &mut pending);
        let drained = pending.len();
        for ev in pending.drain(..) {
            tracker.on_event(&ev, &mut finished);
            tracker.take_gpu_steps(&mut steps_done);
            tracker.take_collectives(&mut colls_done);
            *stats.events.entry(kind_name(ev.kind())).or_default() += 1;
            if let Event::Proc(p) = &ev {
                let is_target = on_proc_event(&mut probe, &cfg.selector, p.kind, p.tgid, proc_root);
                match p.kind {
                    EventKind::ProcExit => {
                        uprobes.forget_pid(p.tgid);
                    }
                    EventKind::ProcExec | EventKind::ProcFork if is_target => {
                        uprobes.sync_pid(&mut probe, proc_root, p.tgid);
                        uprobes.repace(p.tgid);
                    }
                    _ => {}
                }
                // Execs of every process arrive when patterns are in use; print only targets'.
                if !is_target {
                    continue;
                }
            }
            if let Some(fmt) = cfg.print {
                print_event(&mut out, fmt, &ev, &clock, cfg.print_payload)?;
                print_gpu_steps(&mut out, fmt, &mut steps_done, &clock)?;
                print_collectives(&mut out, &mut colls_done, &clock)?;
            }
            steps_done.clear();
            colls_done.clear();
        }
        if let Some(n) = &nvml {
            n.drain(&mut samples);
            for d in samples.drain(..) {
                if cfg.print.is_some() {
                    print_device_sample(&mut out, &d, &clock)?;
                }
                stats.gpus.insert(d.index, d);
            }
        }
        watch_new_ports(&mut probe, &mut tracker);
        if last_rescan.elapsed() >= cfg.rescan_interval {
            let t = Instant::now();
            sync_targets(&mut probe, &cfg.selector, proc_root);
            sync_uprobes(&mut probe, &mut uprobes, proc_root, cfg.rescan_interval);
            // Listening sockets change rarely: look again when the target set changed, or
            // every 30 s (reading a busy engine's fd table is the costliest part of a rescan).
            let targets_now = probe.targets().len();
            if targets_now != ports_for_targets || last_ports.elapsed() >= Duration::from_secs(30) {
                discover_ports(&probe, &mut tracker, proc_root);
                ports_for_targets = targets_now;
                last_ports = Instant::now();
            }
            tracker.tick(crate::clock::monotonic_ns(), &mut finished);
            debug!(elapsed_us = t.elapsed().as_micros() as u64, "rescan");
            last_rescan = Instant::now();
        }
        let wrote = deliver_requests(
            &mut out,
            cfg.print_requests,
            (exporter.as_ref(), otlp.as_ref()),
            &mut finished,
        )?;
        if drained > 0 || wrote {
            out.flush()?;
        }
        if let Some(page) = &metrics_page {
            if last_metrics.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                collect_counters(&mut stats, &probe, &tracker, tracker.gpu_stats());
                if let Some(n) = &nvml {
                    for (name, v) in [("samples", &n.stats.samples), ("dropped", &n.stats.dropped)]
                    {
                        stats.engine.push(("nvml", name, v.load(Ordering::Relaxed)));
                    }
                }
                let gauges = Gauges {
                    targets: probe.targets().len(),
                    connections: tracker.conns(),
                    uprobes: uprobes.stats(),
                };
                let export = exporter.as_ref().map(|h| h.stats().snapshot());
                let mut text = metrics::render(&stats, gauges, export.as_ref());
                if let Some(o) = &otlp {
                    o.render(&mut text);
                }
                page.publish(text);
                last_metrics = Some(Instant::now());
            }
        }
        if let Some(by) = stop_by {
            if drained == 0 || Instant::now() >= by {
                break;
            }
            continue;
        }
        if drained < 4096 {
            std::thread::sleep(cfg.poll_interval);
        }
    }
    tracker.flush_all(&mut finished);
    deliver_requests(
        &mut out,
        cfg.print_requests,
        (exporter.as_ref(), otlp.as_ref()),
        &mut finished,
    )?;
    out.flush()?;
    uprobes.release_all(&mut probe);
    stats.otlp = otlp.map(|o| o.shutdown(OTLP_DRAIN));
    if let (Some(h), Some(e)) = (exporter, &cfg.export) {
        stats.export = Some(h.shutdown(e.drain_timeout));
    }
    collect_counters(&mut stats, &probe, &tracker, tracker.gpu_stats());
    Ok(stats)
}

/// Longest a stop keeps reading what the kernel already wrote.
const STOP_DRAIN: Duration = Duration::from_secs(2);

/// Decodes records of `ring` into `pending` until it holds `max` (the rest waits for the next
/// turn); undecodable ones are counted per kind.
fn drain(ring: &mut RingBuf<MapData>, pending: &mut Vec<Event>, stats: &mut Stats, max: usize) {
    while pending.len() < max {
        let Some(item) = ring.next() else { return };
        match decode(&item) {
            Ok(ev) => pending.push(ev),
            Err(e) => {
                let k = peek_kind(&item).unwrap_or(u32::MAX);
                *stats.decode_errors.entry(k).or_default() += 1;
                debug!(error = %e, "undecodable record");
            }
        }
    }
}

/// Copies the tracker's counters and the kernel's loss counters into `stats`.
fn collect_counters(stats: &mut Stats, probe: &Probe, tracker: &Tracker, gpu: StepStats) {
    stats.tracker = tracker.stats.clone();
    stats.tracker.hops = tracker.hop_stats().clone();
    for (kind, n) in probe.kernel_losses() {
        if n > 0 {
            stats.kernel_lost.insert(kind_name(kind), n);
        }
    }
    for (reason, n) in probe.kernel_drops() {
        stats.kernel_drops.insert(reason.name(), n);
    }
    stats.engine = tracker.engines().counters();
    stats.engine.push(("gpu", "steps", gpu.steps));
    stats.engine.push(("gpu", "steps_abandoned", gpu.abandoned));
    stats
        .engine
        .push(("gpu", "captured_launches", gpu.captured_launches));
    let n = tracker.nccl_stats();
    for (name, v) in [
        ("comms", n.comms),
        ("comms_dropped", n.comms_dropped),
        ("collectives", n.collectives),
        ("collectives_captured", n.captured),
        ("collectives_unknown_comm", n.unknown_comm),
        ("collectives_aligned", n.aligned),
        ("collectives_partial", n.partial),
        ("collectives_unaligned", n.unaligned),
        ("collectives_grouped_dropped", n.grouped_dropped),
    ] {
        stats.engine.push(("nccl", name, v));
    }
}

/// Attaches uprobes for what every target maps now, releases what no target maps any more.
fn sync_uprobes(probe: &mut Probe, uprobes: &mut Uprobes, proc_root: &Path, base: Duration) {
    let targets = probe.targets();
    for pid in uprobes.pids() {
        if !targets.contains_key(&pid) {
            uprobes.forget_pid(pid);
        }
    }
    let now = Instant::now();
    for &pid in targets.keys() {
        uprobes.sync_pid_paced(probe, proc_root, pid, (now, base));
    }
    uprobes.sweep(probe, Instant::now());
}

/// Applies a lifecycle event to the target set; returns whether the process is (now) a target.
fn on_proc_event(
    probe: &mut Probe,
    sel: &Selector,
    kind: EventKind,
    tgid: u32,
    proc_root: &Path,
) -> bool {
    match kind {
        EventKind::ProcExec => {
            let reason = probe.target_reason(tgid);
            // A target by pid or descent stays one through exec; one chosen by its command line
            // is chosen again by its new one (and its new user: `setpriv`/`su` then exec).
            if reason.is_some_and(|r| r != TargetReason::Pattern as u32) {
                return true;
            }
            if !sel.has_patterns() || tgid == sel.exclude {
                return false;
            }
            let Some(p) = read_proc(proc_root, tgid) else {
                return reason.is_some();
            };
            if !sel.matches(&p) {
                if reason.is_some() {
                    info!(
                        pid = tgid,
                        program = crate::targets::program_of(&p.cmdline),
                        uid = p.uid,
                        "target dropped: its new program or user no longer matches"
                    );
                    probe.remove_target(tgid);
                }
                return false;
            }
            if reason.is_some() {
                return true;
            }
            // The program only: arguments can hold secrets.
            info!(
                pid = tgid,
                program = crate::targets::program_of(&p.cmdline),
                uid = p.uid,
                "new target (pattern)"
            );
            match probe.add_target(tgid, TargetReason::Pattern, sel.follow_children) {
                Ok(()) => true,
                Err(e) => {
                    warn!(pid = tgid, error = %e, "could not add target");
                    false
                }
            }
        }
        EventKind::ProcFork => {
            debug!(pid = tgid, "new target (child)");
            true
        }
        EventKind::ProcExit => {
            debug!(pid = tgid, "target exited");
            true
        }
        _ => true,
    }
}

/// Prints finished requests (when `print`) and hands them to the exporter (never blocks: a full
/// exporter queue drops and counts); returns whether anything was printed.
fn deliver_requests(
    out: &mut impl Write,
    print: bool,
    (exporter, otlp): (Option<&ExportHandle>, Option<&OtlpExport>),
    finished: &mut Vec<RequestRecord>,
) -> std::io::Result<bool> {
    let any = !finished.is_empty();
    for r in finished.drain(..) {
        if print {
            serde_json::to_writer(&mut *out, &r)?;
            writeln!(out)?;
        }
        if let Some(o) = otlp {
            o.send(r.clone());
        }
        if let Some(x) = exporter {
            x.send(r);
        }
    }
    Ok(any && print)
}

/// Learns the listening ports of targets from /proc, per network namespace; ports declared
/// with `--port` are server ports in every target's namespace.
fn discover_ports(probe: &Probe, tracker: &mut Tracker, proc_root: &Path) {
    let declared = tracker.declared_ports();
    for pid in probe.targets().keys() {
        let netns = netns_of(proc_root, *pid);
        for port in listening_ports(proc_root, *pid)
            .into_iter()
            .chain(declared.iter().copied())
        {
            tracker.add_server_port(netns, port);
        }
    }
}

/// The network namespace inode of `pid` (`/proc/PID/ns/net -> net:[N]`), 0 when unreadable.
pub fn netns_of(proc_root: &Path, pid: u32) -> u32 {
    std::fs::read_link(proc_root.join(pid.to_string()).join("ns/net"))
        .ok()
        .and_then(|l| {
            l.to_str()?
                .strip_prefix("net:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Tells the kernel to timestamp arrivals on server ports learned since the last call.
fn watch_new_ports(probe: &mut Probe, tracker: &mut Tracker) {
    for (netns, port) in tracker.take_new_ports() {
        match probe.watch_port(netns, port) {
            Ok(()) => info!(port, netns, "timestamping arrivals on server port"),
            Err(e) => warn!(port, netns, error = %e, "cannot watch port"),
        }
    }
}

/// Repairs the in-kernel target set against /proc: adds what should be traced and is not
/// (missed execs, lost fork events), removes processes that are gone (lost exit events).
fn sync_targets(probe: &mut Probe, sel: &Selector, proc_root: &Path) {
    // The target set before /proc: a child the kernel adds during the scan is then neither
    // in `have` nor taken for gone.
    let have = probe.targets();
    let procs = scan(proc_root);
    let want = sel.initial(&procs);
    for (&pid, &reason) in &want {
        if !have.contains_key(&pid) {
            if let Err(e) = probe.add_target(pid, reason, sel.follow_children) {
                warn!(pid, error = %e, "could not add target");
            }
        }
    }
    // Gone, or exited and not yet reaped (a zombie's pid is about to be free for reuse).
    // A live pattern target stays one between execs even if it rewrites its own command line
    // (setproctitle): it is chosen again only when it execs.
    let live: std::collections::HashSet<u32> = procs.iter().map(|p| p.pid).collect();
    for &pid in have.keys() {
        if !live.contains(&pid) {
            probe.remove_target(pid);
        }
    }
}

/// GPU steps completed by the last event, one JSON line each (text: the same JSON).
fn print_gpu_steps(
    out: &mut impl Write,
    _fmt: PrintFormat,
    steps: &mut Vec<GpuStep>,
    clock: &WallClock,
) -> std::io::Result<()> {
    for s in steps.drain(..) {
        serde_json::to_writer(&mut *out, &s.to_json(|t| clock.to_wall(t)))?;
        writeln!(out)?;
    }
    Ok(())
}

/// One NVML sample as a JSON line (`"kind": "gpu_sample"`, time in Unix ns).
fn print_device_sample(
    out: &mut impl Write,
    d: &DeviceSample,
    clock: &WallClock,
) -> std::io::Result<()> {
    let mut v = serde_json::to_value(d).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("kind".into(), "gpu_sample".into());
        o.insert("ts_unix_ns".into(), clock.to_wall(d.ts_ns).into());
        o.remove("ts_ns");
    }
    serde_json::to_writer(&mut *out, &v)?;
    writeln!(out)
}

/// Collectives called, one JSON line each (`"kind": "collective"`), after the NCCL record.
fn print_collectives(
    out: &mut impl Write,
    colls: &mut Vec<Collective>,
    clock: &WallClock,
) -> std::io::Result<()> {
    for c in colls.drain(..) {
        serde_json::to_writer(&mut *out, &c.to_json(|t| clock.to_wall(t)))?;
        writeln!(out)?;
    }
    Ok(())
}

fn print_event(
    out: &mut impl Write,
    fmt: PrintFormat,
    ev: &Event,
    clock: &WallClock,
    with_payload: bool,
) -> std::io::Result<()> {
    let j = EventJson::new(ev, |t| clock.to_wall(t), with_payload);
    match fmt {
        PrintFormat::Json => {
            serde_json::to_writer(&mut *out, &j)?;
            writeln!(out)
        }
        PrintFormat::Text => {
            write!(
                out,
                "{:>20} {:<7} pid={} tid={}",
                j.ts_unix_ns, j.kind, j.pid, j.tid
            )?;
            if let Some(sc) = j.syscall {
                write!(
                    out,
                    " {sc} fd={} ret={}",
                    j.fd.unwrap_or(-1),
                    j.ret.unwrap_or(0)
                )?;
            }
            if let Some(p) = &j.proto {
                write!(out, " {p}")?;
            }
            if let (Some(l), Some(r)) = (&j.local, &j.remote) {
                write!(out, " {l}->{r}")?;
            }
            if let Some(i) = j.inode {
                write!(out, " ino={i}")?;
            }
            if let Some(p) = j.peer_inode {
                write!(out, " peer={p}")?;
            }
            if let Some(c) = j.comm {
                write!(out, " comm={c}")?;
            }
            if let Some(pp) = j.ppid {
                write!(out, " ppid={pp}")?;
            }
            if with_payload {
                if let Event::Sock(s) = ev {
                    write!(out, " data={:?}", String::from_utf8_lossy(&s.payload))?;
                }
            }
            writeln!(out)
        }
    }
}
