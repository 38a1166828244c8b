//! Kernel-map pressure, counted and never silent: writes and reads with more iovecs than the
//! kernel side copies, and more threads blocked in `recv` at once than `INFLIGHT` holds. Each
//! syscall is either reported or counted in `inferscope_probe_kernel_drops_total`.
mod common;

use std::time::Duration;

use common::{bpf_or_skip, figure, payload, start_fixture, start_probe, JsonChild};
use inferscope_common::{MAX_INFLIGHT, MAX_IOV};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// `inferscope_probe_kernel_drops_total{reason}` from node-probe's metrics page (refreshed once a
/// second; waits up to 5 s for the page to exist).
fn kernel_drops(metrics: &str, reason: &str) -> u64 {
    let url = format!("http://{metrics}/metrics");
    let want = format!("inferscope_probe_kernel_drops_total{{reason=\"{reason}\"}} ");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let out = std::process::Command::new("curl")
            .args(["-sf", &url])
            .output()
            .expect("curl");
        let page = String::from_utf8_lossy(&out.stdout);
        let v = page
            .lines()
            .find_map(|l| l.strip_prefix(&want))
            .and_then(|v| v.trim().parse().ok());
        match v {
            Some(v) => return v,
            None if std::time::Instant::now() > deadline => {
                panic!("no {want} in the metrics page:\n{page}")
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// Starts the fixture and a probe on it with a metrics page; (fixture, probe, pid, metrics).
fn setup() -> (JsonChild, JsonChild, u64, String) {
    let mut fx = start_fixture("pressure.py", &[]);
    let pid = fx.wait_for("fixture pid", T, |v| v.get("pid").is_some())["pid"]
        .as_u64()
        .expect("pid");
    let metrics = free_addr();
    let probe = start_probe(&["--pid", &pid.to_string(), "--metrics-listen", &metrics]);
    (fx, probe, pid, metrics)
}

#[test]
fn iovecs_beyond_the_copied_ones_are_counted() {
    if !bpf_or_skip("iovecs_beyond_the_copied_ones_are_counted") {
        return;
    }
    let (mut fx, mut probe, pid, metrics) = setup();
    assert_eq!(kernel_drops(&metrics, "iovecs_truncated"), 0);
    fx.send_line("iovecs");
    let info = fx.wait_for("iovecs done", T, |v| v.get("iovecs").is_some());
    let a = info["a_fd"].as_i64().expect("a_fd");
    let b = info["b_fd"].as_i64().expect("b_fd");
    let find = |probe: &mut JsonChild, sc: &str, fd: i64| -> Value {
        probe.wait_for(sc, T, |v| {
            v["pid"] == pid && v["syscall"] == sc && v["fd"] == fd
        })
    };
    // Both calls moved 80 bytes in 8 iovecs; the prefix holds the first MAX_IOV of them.
    let copied: Vec<u8> = (0..MAX_IOV as u8).flat_map(|i| [48 + i; 10]).collect();
    for (sc, fd) in [("writev", a), ("readv", b)] {
        let ev = find(&mut probe, sc, fd);
        assert_eq!(ev["ret"].as_i64(), Some(80), "{ev}");
        assert_eq!(payload(&ev), copied, "{sc}: {ev}");
    }
    // The stats refresh runs on the probe's loop: give it a moment.
    let t = std::time::Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_secs(5) {
        n = kernel_drops(&metrics, "iovecs_truncated");
        if n >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(n, 2, "one truncation counted per call");
}

/// Threads on this machine that are not ours yet: `pid_max` bounds them all.
fn free_tids() -> u64 {
    let max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    let used: u64 = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_dir(e.path().join("task")).ok())
                .map(|t| t.count() as u64)
                .sum()
        })
        .unwrap_or(0);
    max.saturating_sub(used)
}

/// Blocks `n` threads in `recv` at once, releases them; returns (recv events, drops counted).
fn block_and_release(
    fx: &mut JsonChild,
    probe: &mut JsonChild,
    pid: u64,
    metrics: &str,
    n: u64,
) -> (u64, u64) {
    // The page is refreshed once a second: read it after a refresh that follows what came before.
    std::thread::sleep(Duration::from_millis(1_200));
    let before = kernel_drops(metrics, "inflight_missing");
    fx.send_line(&format!("block {n}"));
    let fds: Vec<i64> = fx.wait_for("threads blocked", Duration::from_secs(120), |v| {
        v["blocked"] == n
    })["fds"]
        .as_array()
        .expect("fds")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    fx.send_line("release");
    fx.wait_for("threads released", Duration::from_secs(120), |v| {
        v["released"] == n
    });
    let recvs = |seen: &[Value]| -> u64 {
        seen.iter()
            .filter(|v| {
                v["pid"] == pid
                    && v["syscall"] == "recvfrom"
                    && v["fd"].as_i64().is_some_and(|fd| fds.contains(&fd))
            })
            .count() as u64
    };
    // Every recv is either reported or counted: wait for the two to add up.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        probe.drain_for(Duration::from_millis(300));
        let drops = kernel_drops(metrics, "inflight_missing") - before;
        let got = recvs(&probe.seen);
        if got + drops >= n || std::time::Instant::now() > deadline {
            probe.seen.clear();
            return (got, drops);
        }
    }
}

#[test]
fn inflight_pressure_is_counted_not_silent() {
    if !bpf_or_skip("inflight_pressure_is_counted_not_silent") {
        return;
    }
    let big = u64::from(MAX_INFLIGHT) + 4_000;
    let free = free_tids();
    assert!(
        free > big + 2_000,
        "pid_max leaves {free} thread ids, {big} needed (raise kernel.pid_max)"
    );
    let (mut fx, mut probe, pid, metrics) = setup();
    // The fixture's read of stdin entered before the probe attached: let it return first.
    fx.send_line("ping");
    fx.wait_for("pong", T, |v| v.get("pong").is_some());
    // Well inside the map: every recv is reported.
    let small = 2_000;
    let (got, drops) = block_and_release(&mut fx, &mut probe, pid, &metrics, small);
    figure(&format!(
        "INFLIGHT pressure: {small} threads blocked in recv: {got} reported, {drops} counted as dropped"
    ));
    assert_eq!((got, drops), (small, 0));
    // Beyond it: the evicted entries are counted, and nothing is silent.
    let (got, drops) = block_and_release(&mut fx, &mut probe, pid, &metrics, big);
    figure(&format!(
        "INFLIGHT pressure: {big} threads blocked in recv: {got} reported, {drops} counted as dropped"
    ));
    // The fixture's main thread, blocked in read(stdin) meanwhile, may lose its entry too.
    assert!(
        (big..=big + 2).contains(&(got + drops)),
        "reported + counted = syscalls: {got} + {drops}"
    );
    assert!(drops >= big - u64::from(MAX_INFLIGHT), "{drops}");
}
