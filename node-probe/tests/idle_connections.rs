//! 100k idle connections to a target: the probe keeps up, its connection table stays within
//! `--max-connections`, and its memory does not grow without bound. Connections are spread over
//! several processes on both sides to stay under the per-process fd limit.
mod common;

use std::time::Duration;

use common::*;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn hundred_thousand_idle_connections() {
    if !bpf_or_skip("hundred_thousand_idle_connections") {
        return;
    }
    const PER_PORT: usize = 17_000;
    const PORTS: usize = 6;
    let mut srv = start_fixture("hold_server.py", &[&PORTS.to_string()]);
    let hello = srv.wait_for("server ports", Duration::from_secs(20), |v| {
        v.get("ports").is_some()
    });
    let pid = hello["pid"].as_u64().unwrap() as u32;
    let ports: Vec<u64> = hello["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    let mut probe = start_probe(&[
        "--pid",
        &pid.to_string(),
        "--requests",
        "--max-connections",
        "4096",
    ]);
    let probe_pid = probe.pid();
    srv.send_line("go");
    std::thread::sleep(Duration::from_millis(500));
    let rss0 = rss_kib(probe_pid);
    let mut clients: Vec<JsonChild> = ports
        .iter()
        .map(|p| start_fixture("hold_client.py", &[&p.to_string(), &PER_PORT.to_string()]))
        .collect();
    for c in clients.iter_mut() {
        c.wait_for("client connected", Duration::from_secs(180), |v| {
            v.get("connected").is_some()
        });
    }
    let total = PER_PORT * PORTS;
    // Let the probe drain its ring and apply everything.
    std::thread::sleep(Duration::from_secs(3));
    let rss1 = rss_kib(probe_pid);
    assert!(
        probe.child.try_wait().unwrap().is_none(),
        "probe still running"
    );
    let grown_mib = rss1.saturating_sub(rss0) / 1024;
    eprintln!(
        "node-probe RSS {} MiB -> {} MiB with {total} idle connections",
        rss0 / 1024,
        rss1 / 1024
    );
    assert!(grown_mib < 64, "probe memory grew by {grown_mib} MiB");
    drop(clients);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        probe.child.try_wait().unwrap().is_none(),
        "probe still running after the closes"
    );
    drop(probe);
    // Kill the acceptors (children of the fixture) too.
    let _ = std::process::Command::new("pkill")
        .args(["-P", &pid.to_string()])
        .status();
}
