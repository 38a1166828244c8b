//! Restart drills: node-probe killed with SIGKILL and started again, and a target (a stand-in
//! engine) killed with SIGKILL and started again, many times over. Nothing stays behind in the
//! kernel (bpftool's programs and links return to what they were), and a restarted target is
//! traced again within a second of its exec. One test, so that no other probe of this binary
//! runs meanwhile and the kernel's counts are ours.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bpf_or_skip, figure, start_fixture, start_probe};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// Cycles of each kind (`INFERSCOPE_RESTART_CYCLES`, default 100).
fn cycles() -> usize {
    std::env::var("INFERSCOPE_RESTART_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// Ids of every BPF program and link in the kernel, from bpftool.
fn bpf_ids() -> (Vec<u64>, Vec<u64>) {
    let ids = |what: &str| -> Vec<u64> {
        let out = Command::new("bpftool")
            .args(["-j", what, "show"])
            .output()
            .expect("bpftool (scripts/setup.sh base installs it)");
        assert!(out.status.success(), "bpftool {what} show");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]));
        let mut ids: Vec<u64> = v
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["id"].as_u64()).collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    };
    (ids("prog"), ids("link"))
}

/// Waits (the kernel frees a dead process's programs asynchronously) until no program or link
/// beyond `base` is left; returns what is left after the wait.
fn leftovers(base: &(Vec<u64>, Vec<u64>)) -> (Vec<u64>, Vec<u64>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (p, l) = bpf_ids();
        let extra = (
            p.into_iter()
                .filter(|i| !base.0.contains(i))
                .collect::<Vec<_>>(),
            l.into_iter()
                .filter(|i| !base.1.contains(i))
                .collect::<Vec<_>>(),
        );
        if (extra.0.is_empty() && extra.1.is_empty()) || Instant::now() > deadline {
            return extra;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pctl(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// One GET to the fixture on `port`; the local port used.
fn get(port: u16) -> u16 {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let local = c.local_addr().expect("addr").port();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).expect("read");
    assert!(resp.starts_with(b"HTTP/1.1 200"));
    local
}

#[test]
fn restart_drills_leave_nothing_behind_and_reattach_within_a_second() {
    if !bpf_or_skip("restart_drills_leave_nothing_behind_and_reattach_within_a_second") {
        return;
    }
    let n = cycles();
    let base = bpf_ids();
    let tag = format!("--drill-{}", std::process::id());
    let pattern = format!("http_server\\.py {tag}");

    // node-probe killed with SIGKILL while attached, `n` times.
    let mut starts = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let mut probe = start_probe(&["--cmdline", &pattern]);
        starts.push(t.elapsed());
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(probe.child.id() as i32, libc::SIGKILL) };
        let _ = probe.child.wait();
    }
    let left = leftovers(&base);
    figure(&format!(
        "probe kill -9 drill: {n} cycles; start to ready p50 {:?} max {:?}; left in the kernel: {} programs, {} links",
        pctl(&mut starts, 0.5),
        pctl(&mut starts, 1.0),
        left.0.len(),
        left.1.len()
    ));
    assert_eq!(
        left,
        (vec![], vec![]),
        "programs/links leaked by killed probes"
    );

    // A target killed with SIGKILL and started again, `n` times, under one probe.
    let mut probe = start_probe(&["--cmdline", &pattern]);
    let attached = bpf_ids();
    let mut reattach = Vec::new();
    for i in 0..n {
        // From the spawn (fork + exec) to the probe's report of the exec, which it makes once
        // the process is a target: an upper bound of exec-to-traced.
        let t = Instant::now();
        let mut srv = start_fixture("http_server.py", &[&tag]);
        let pid = u64::from(srv.pid());
        probe.wait_for("exec of the restarted target", T, |v| {
            v["kind"] == "exec" && v["pid"] == pid
        });
        reattach.push(t.elapsed());
        let hello = srv.wait_for("server pid/port", T, |v| v.get("port").is_some());
        assert_eq!(hello["pid"].as_u64(), Some(pid));
        let port = hello["port"].as_u64().expect("port") as u16;
        // Every tenth time, prove it is traced: its accept of our connection is captured.
        if i % 10 == 0 {
            let local = get(port);
            let remote = format!("127.0.0.1:{local}");
            probe.wait_for("accept by the restarted target", T, |v| {
                v["kind"] == "accept" && v["pid"] == pid && v["remote"] == remote.as_str()
            });
        }
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(srv.child.id() as i32, libc::SIGKILL) };
        let _ = srv.child.wait();
        probe.seen.clear();
    }
    let now = bpf_ids();
    let grew = (
        now.0.iter().filter(|i| !attached.0.contains(i)).count(),
        now.1.iter().filter(|i| !attached.1.contains(i)).count(),
    );
    let (p50, p99, max) = (
        pctl(&mut reattach, 0.5),
        pctl(&mut reattach, 0.99),
        pctl(&mut reattach, 1.0),
    );
    figure(&format!(
        "target kill -9 drill: {n} cycles; spawn to traced (exec seen by the probe) p50 {p50:?} p99 {p99:?} max {max:?}; \
         programs/links added meanwhile: {grew:?}"
    ));
    assert_eq!(grew, (0, 0), "programs/links grew with target restarts");
    assert!(max < Duration::from_secs(1), "re-attach took {max:?}");
    drop(probe);
    let left = leftovers(&base);
    assert_eq!(
        left,
        (vec![], vec![]),
        "programs/links left after the probe stopped"
    );
}
