//! node-probe's own metrics, in the Prometheus text format on `GET /metrics` of
//! `--metrics-listen`.
//!
//! The event loop renders a fresh page about once a second ([`render`]) and publishes it in a
//! [`MetricsPage`]; a small HTTP server on its own thread serves the latest page. The loop never
//! waits on a scrape, and a scrape never touches the loop's state. `GET /healthz` answers 200
//! while the loop keeps publishing (a liveness probe), 503 once it has not for
//! [`STALL_AFTER`].
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::{http::header, routing::get, Router};
use tracing::warn;

use crate::export::ExportSnapshot;
use crate::run::Stats;

/// `/healthz` fails when the loop has not published a page for this long.
pub const STALL_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// The latest rendered page and when it was published, shared between the loop and the server.
#[derive(Debug, Clone, Default)]
pub struct MetricsPage(Arc<Mutex<(String, Option<std::time::Instant>)>>);

impl MetricsPage {
    /// Replaces the page.
    pub fn publish(&self, page: String) {
        if let Ok(mut p) = self.0.lock() {
            *p = (page, Some(std::time::Instant::now()));
        }
    }

    /// The current page.
    pub fn get(&self) -> String {
        self.0.lock().map(|p| p.0.clone()).unwrap_or_default()
    }

    /// Whether the loop published within [`STALL_AFTER`].
    pub fn healthy(&self) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|p| p.1)
            .is_some_and(|t| t.elapsed() < STALL_AFTER)
    }
}

/// Binds `addr` now (so that a taken port is an error at start) and serves `page` from a
/// thread of its own until the process exits. Returns the bound address.
pub fn serve(addr: SocketAddr, page: MetricsPage) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                let health = page.clone();
                let app = Router::new()
                    .route(
                        "/healthz",
                        get(move || {
                            let ok = health.healthy();
                            async move {
                                if ok {
                                    (axum::http::StatusCode::OK, "ok\n")
                                } else {
                                    (
                                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                        "event loop stalled\n",
                                    )
                                }
                            }
                        }),
                    )
                    .route(
                        "/metrics",
                        get(move || {
                            let page = page.clone();
                            async move {
                                (
                                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                                    page.get(),
                                )
                            }
                        }),
                    );
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        if let Err(e) = axum::serve(l, app).await {
                            warn!(error = %e, "metrics server stopped");
                        }
                    }
                    Err(e) => warn!(error = %e, "metrics server could not start"),
                }
            })
        })?;
    Ok(bound)
}

/// Gauges read at render time, next to the loop's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Processes in the in-kernel target set.
    pub targets: usize,
    /// Connections followed.
    pub connections: usize,
    /// Uprobe attachments.
    pub uprobes: crate::uprobes::UprobeStats,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn labelled<'a>(
    out: &mut String,
    name: &str,
    label: &str,
    help: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) {
    family(out, name, "counter", help);
    for (v, n) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{v}\"}} {n}");
    }
}

fn single(out: &mut String, name: &str, kind: &str, help: &str, v: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {v}");
}

/// Renders the whole page.
pub fn render(stats: &Stats, gauges: Gauges, export: Option<&ExportSnapshot>) -> String {
    let mut o = String::with_capacity(4096);
    labelled(
        &mut o,
        "inferscope_probe_events_total",
        "kind",
        "Kernel events decoded, per kind.",
        stats.events.iter().map(|(k, n)| (*k, *n)),
    );
    labelled(
        &mut o,
        "inferscope_probe_kernel_lost_total",
        "kind",
        "Kernel events lost because the ring buffer was full, per kind.",
        stats.kernel_lost.iter().map(|(k, n)| (*k, *n)),
    );
    labelled(
        &mut o,
        "inferscope_probe_kernel_drops_total",
        "reason",
        "What the kernel side dropped without a ring record, per reason (a full map, an evicted entry).",
        stats.kernel_drops.iter().map(|(k, n)| (*k, *n)),
    );
    family(
        &mut o,
        "inferscope_probe_engine_events_total",
        "counter",
        "Engine follower counters, per engine and counter.",
    );
    for (engine, what, n) in &stats.engine {
        let _ = writeln!(
            o,
            "inferscope_probe_engine_events_total{{engine=\"{engine}\",counter=\"{what}\"}} {n}"
        );
    }
    gpu_gauges(&mut o, stats);
    let u = gauges.uprobes;
    single(
        &mut o,
        "inferscope_probe_uprobe_files",
        "gauge",
        "Library files with uprobes attached.",
        u.files,
    );
    single(
        &mut o,
        "inferscope_probe_uprobe_links",
        "gauge",
        "Uprobe links held.",
        u.links,
    );
    single(
        &mut o,
        "inferscope_probe_uprobe_attach_failures_total",
        "counter",
        "Uprobe attachments that failed (symbol missing, file unreadable).",
        u.failures_total,
    );
    single(
        &mut o,
        "inferscope_probe_uprobe_releases_total",
        "counter",
        "Library files released because no target mapped them any more.",
        u.released_total,
    );
    single(
        &mut o,
        "inferscope_probe_uprobe_detached_inline_total",
        "counter",
        "Releases detached on the main loop because the detach queue was full.",
        u.detached_inline_total,
    );
    single(
        &mut o,
        "inferscope_probe_maps_reads_total",
        "counter",
        "Periodic reads of a target's /proc/PID/maps (paced: the interval doubles up to 30 s while its libraries stay the same).",
        u.maps_reads,
    );
    let decode: Vec<(String, u64)> = stats
        .decode_errors
        .iter()
        .map(|(k, n)| (k.to_string(), *n))
        .collect();
    labelled(
        &mut o,
        "inferscope_probe_decode_errors_total",
        "kind",
        "Ring records that did not decode, per raw kind value.",
        decode.iter().map(|(k, n)| (k.as_str(), *n)),
    );
    let t = &stats.tracker;
    single(
        &mut o,
        "inferscope_probe_requests_total",
        "counter",
        "Requests finished and emitted.",
        t.requests,
    );
    labelled(
        &mut o,
        "inferscope_probe_connections_evicted_total",
        "state",
        "Connections evicted to stay within --max-connections.",
        [("idle", t.conns_evicted), ("busy", t.conns_evicted_busy)],
    );
    single(
        &mut o,
        "inferscope_probe_request_timeouts_total",
        "counter",
        "Exchanges closed by --request-timeout-s.",
        t.timeouts,
    );
    labelled(
        &mut o,
        "inferscope_probe_gave_up_total",
        "reason",
        "Connections no longer followed, per reason.",
        t.gave_up.iter().map(|(k, n)| (*k, *n)),
    );
    labelled(
        &mut o,
        "inferscope_probe_hops_total",
        "link",
        "Outbound calls of targets (hops) emitted, per method that linked each to its inbound \
         request (none: unlinked, a hop of its own).",
        t.hops.hops.iter().map(|(k, n)| (*k, *n)),
    );
    single(
        &mut o,
        "inferscope_probe_hops_pending_full_total",
        "counter",
        "Outbound calls emitted unlinked because too many waited for their inbound request.",
        t.hops.pending_full,
    );
    single(
        &mut o,
        "inferscope_probe_hops_ambiguous_total",
        "counter",
        "Outbound calls left unlinked because timing could not tell which request made them.",
        t.hops.ambiguous,
    );
    single(
        &mut o,
        "inferscope_probe_arrivals_dropped_total",
        "counter",
        "Wire arrival records dropped (per-connection cap).",
        t.arrivals_dropped,
    );
    single(
        &mut o,
        "inferscope_probe_engine_unjoined_total",
        "counter",
        "Responses whose engine-side request was not found.",
        t.engine_unjoined,
    );
    for (name, help, v) in [
        (
            "inferscope_probe_unsolicited_bytes_total",
            "Bytes servers wrote with no request to answer.",
            t.unsolicited_bytes,
        ),
        (
            "inferscope_probe_ignored_bytes_total",
            "Bytes read on connections no longer followed (requests lost to a give-up).",
            t.ignored_bytes,
        ),
        (
            "inferscope_probe_resyncs_total",
            "Connections followed again after a give-up.",
            t.resyncs,
        ),
        (
            "inferscope_probe_early_responses_total",
            "Responses that began before their request's body was read.",
            t.early_responses,
        ),
        (
            "inferscope_probe_tenant_overflow_total",
            "Requests labelled tenant _other: the distinct-tenant cap was reached.",
            t.tenant_overflow,
        ),
        (
            "inferscope_probe_nccl_connections_total",
            "TCP connections classified as NCCL traffic (an NCCL thread used them): not parsed as HTTP.",
            t.nccl_conns,
        ),
        (
            "inferscope_probe_nccl_bytes_total",
            "Bytes moved on NCCL connections.",
            t.nccl_bytes,
        ),
    ] {
        single(&mut o, name, "counter", help, v);
    }
    single(
        &mut o,
        "inferscope_probe_targets",
        "gauge",
        "Processes traced.",
        gauges.targets as u64,
    );
    single(
        &mut o,
        "inferscope_probe_connections",
        "gauge",
        "Connections followed.",
        gauges.connections as u64,
    );
    if let Some(x) = export {
        for (name, help, v) in x.fields() {
            let (metric, kind) = if name == "spool_bytes" {
                (format!("inferscope_probe_export_{name}"), "gauge")
            } else {
                (format!("inferscope_probe_export_{name}_total"), "counter")
            };
            single(&mut o, &metric, kind, help, v);
        }
    }
    o
}

/// The latest NVML sample of each GPU, as gauges labelled by index and UUID.
fn gpu_gauges(o: &mut String, stats: &Stats) {
    type Get = fn(&crate::gpu::nvml::DeviceSample) -> Option<f64>;
    let rows: [(&str, &str, Get); 9] = [
        (
            "inferscope_gpu_utilization_ratio",
            "Time with a kernel running, last NVML period.",
            |d| d.gpu_util_pct.map(|v| f64::from(v) / 100.0),
        ),
        (
            "inferscope_gpu_memory_utilization_ratio",
            "Time with device memory busy, last NVML period.",
            |d| d.mem_util_pct.map(|v| f64::from(v) / 100.0),
        ),
        (
            "inferscope_gpu_memory_used_bytes",
            "Device memory in use.",
            |d| d.mem_used_bytes.map(|v| v as f64),
        ),
        (
            "inferscope_gpu_memory_total_bytes",
            "Device memory installed.",
            |d| d.mem_total_bytes.map(|v| v as f64),
        ),
        ("inferscope_gpu_sm_clock_hertz", "SM clock.", |d| {
            d.sm_clock_mhz.map(|v| f64::from(v) * 1e6)
        }),
        ("inferscope_gpu_memory_clock_hertz", "Memory clock.", |d| {
            d.mem_clock_mhz.map(|v| f64::from(v) * 1e6)
        }),
        ("inferscope_gpu_power_watts", "Board power.", |d| {
            d.power_mw.map(|v| f64::from(v) / 1e3)
        }),
        (
            "inferscope_gpu_energy_joules_total",
            "Energy since the driver loaded.",
            |d| d.energy_mj.map(|v| v as f64 / 1e3),
        ),
        (
            "inferscope_gpu_throttle_reasons",
            "nvmlClocksThrottleReasons bits (0: not throttled).",
            |d| d.throttle_reasons.map(|v| v as f64),
        ),
    ];
    if stats.gpus.is_empty() {
        return;
    }
    for (name, help, get) in rows {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for d in stats.gpus.values() {
            if let Some(v) = get(d) {
                let uuid = d.uuid.replace(['"', '\\', '\n'], "_");
                let _ = writeln!(o, "{name}{{gpu=\"{}\",uuid=\"{uuid}\"}} {v}", d.index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_samples_render_as_labelled_gauges() {
        let mut s = Stats::default();
        let mut o = String::new();
        gpu_gauges(&mut o, &s);
        assert!(o.is_empty(), "no GPU, no family");
        s.gpus.insert(
            0,
            crate::gpu::nvml::DeviceSample {
                ts_ns: 1,
                index: 0,
                uuid: "GPU-\"x\"".into(),
                name: "H200".into(),
                gpu_util_pct: Some(87),
                mem_util_pct: None,
                mem_used_bytes: Some(1 << 30),
                mem_total_bytes: Some(141 << 30),
                sm_clock_mhz: Some(1980),
                mem_clock_mhz: None,
                power_mw: Some(350_500),
                energy_mj: Some(12_000),
                throttle_reasons: Some(4),
                temperature_c: None,
            },
        );
        gpu_gauges(&mut o, &s);
        for want in [
            "# TYPE inferscope_gpu_power_watts gauge",
            "inferscope_gpu_power_watts{gpu=\"0\",uuid=\"GPU-_x_\"} 350.5",
            "inferscope_gpu_utilization_ratio{gpu=\"0\",uuid=\"GPU-_x_\"} 0.87",
            "# TYPE inferscope_gpu_energy_joules_total counter",
            "inferscope_gpu_energy_joules_total{gpu=\"0\",uuid=\"GPU-_x_\"} 12",
            "inferscope_gpu_sm_clock_hertz{gpu=\"0\",uuid=\"GPU-_x_\"} 1980000000",
        ] {
            assert!(o.contains(want), "{want} not in\n{o}");
        }
        // A field the device does not report has no sample line.
        assert!(!o.contains("inferscope_gpu_memory_clock_hertz{"));
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let mut s = Stats::default();
        s.events.insert("send", 12);
        s.kernel_lost.insert("arrival", 3);
        s.decode_errors.insert(99, 1);
        s.tracker.requests = 5;
        s.tracker.gave_up.insert("malformed request head", 2);
        let snap = ExportSnapshot {
            spooled: 4,
            spool_bytes: 1000,
            ..Default::default()
        };
        let page = render(
            &s,
            Gauges {
                uprobes: Default::default(),
                targets: 2,
                connections: 7,
            },
            Some(&snap),
        );
        for want in [
            "inferscope_probe_events_total{kind=\"send\"} 12",
            "inferscope_probe_kernel_lost_total{kind=\"arrival\"} 3",
            "inferscope_probe_decode_errors_total{kind=\"99\"} 1",
            "inferscope_probe_requests_total 5",
            "inferscope_probe_gave_up_total{reason=\"malformed request head\"} 2",
            "inferscope_probe_targets 2",
            "inferscope_probe_connections 7",
            "inferscope_probe_export_spooled_total 4",
            "inferscope_probe_export_spool_bytes 1000",
            "# TYPE inferscope_probe_export_spool_bytes gauge",
            "# TYPE inferscope_probe_connections_evicted_total counter",
        ] {
            assert!(page.contains(want), "missing {want:?} in\n{page}");
        }
        // Every sample line belongs to a family announced before it.
        let mut announced = std::collections::HashSet::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                announced.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(announced.contains(name), "{line}");
            }
        }
    }

    #[test]
    fn serves_the_latest_page() {
        let page = MetricsPage::default();
        let addr = serve("127.0.0.1:0".parse().unwrap(), page.clone()).unwrap();
        page.publish("inferscope_probe_targets 3\n".into());
        let mut body = String::new();
        for _ in 0..50 {
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                use std::io::{Read, Write};
                let _ =
                    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let _ = s.read_to_string(&mut body);
                if !body.is_empty() {
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("inferscope_probe_targets 3"), "{body}");
        assert!(body.contains("text/plain; version=0.0.4"), "{body}");
        let get = |path: &str| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let mut b = String::new();
            let _ = s.read_to_string(&mut b);
            b
        };
        assert!(
            get("/healthz").starts_with("HTTP/1.1 200"),
            "fresh page: healthy"
        );
        // A loop that stopped publishing: the page's time is older than STALL_AFTER.
        if let Ok(mut p) = page.0.lock() {
            p.1 = std::time::Instant::now().checked_sub(STALL_AFTER * 2);
        }
        let stalled = get("/healthz");
        assert!(stalled.starts_with("HTTP/1.1 503"), "{stalled}");
        assert!(stalled.contains("event loop stalled"), "{stalled}");
    }

    #[test]
    fn a_taken_port_is_an_error_at_start() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = serve(l.local_addr().unwrap(), MetricsPage::default()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }
}
