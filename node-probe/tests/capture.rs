//! End-to-end capture tests: real node-probe (root, eBPF) against real servers in child
//! processes. Exact byte counts, fds, tuples and inodes are checked against what the other side
//! independently knows.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn sum_ret(evs: &[&Value]) -> i64 {
    evs.iter().map(|v| v["ret"].as_i64().unwrap()).sum()
}

#[test]
fn http_server_exact_bytes_fds_and_tuples() {
    if !bpf_or_skip("http_server_exact_bytes_fds_and_tuples") {
        return;
    }
    http_server_case("tracepoint");
}

/// The same capture through the raw sys_enter/sys_exit hook.
#[test]
fn http_server_exact_bytes_fds_and_tuples_raw_hook() {
    if !bpf_or_skip("http_server_exact_bytes_fds_and_tuples_raw_hook") {
        return;
    }
    http_server_case("raw");
}

fn http_server_case(hook: &str) {
    let mut srv = start_fixture("http_server.py", &[]);
    let hello = srv.wait_for("server pid/port", T, |v| v.get("port").is_some());
    let (pid, port) = (
        hello["pid"].as_u64().unwrap() as u32,
        hello["port"].as_u64().unwrap() as u16,
    );
    let mut probe = start_probe(&["--pid", &pid.to_string(), "--syscall-hook", hook]);

    // Client: this test process (not a target). A body larger than one segment's worth of
    // headers, so the server reads in more than one call.
    let body: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut req = format!(
        "POST /echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client_port = c.local_addr().unwrap().port();
    c.write_all(&req).unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).unwrap();
    assert!(
        resp.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&resp[..40.min(resp.len())])
    );
    assert!(resp.ends_with(&body));

    let conn = srv.wait_for("server conn line", T, |v| v.get("conn_fd").is_some());
    assert_eq!(conn["peer_port"], client_port);
    let fd = conn["conn_fd"].as_i64().unwrap();
    let local = format!("127.0.0.1:{port}");
    let remote = format!("127.0.0.1:{client_port}");
    probe.wait_for("close of the connection", T, |v| {
        v["kind"] == "close" && v["pid"] == pid && v["fd"] == fd && v["remote"] == remote.as_str()
    });
    let seen = probe.seen.clone();
    let on_conn = |kind: &str| -> Vec<&Value> {
        events(&seen, kind, pid, fd)
            .into_iter()
            .filter(|v| v["remote"] == remote.as_str())
            .collect()
    };

    let accepts = on_conn("accept");
    assert_eq!(accepts.len(), 1, "one accept: {accepts:?}");
    let a = accepts[0];
    assert_eq!(a["local"], local.as_str());
    assert_eq!(a["proto"], "tcp4");
    assert_eq!(a["ret"], fd);
    assert!(a["listen_fd"].as_i64().unwrap() >= 0);

    let recvs = on_conn("recv");
    assert_eq!(
        sum_ret(&recvs),
        req.len() as i64,
        "bytes read by the server: {recvs:?}"
    );
    assert!(payload(recvs[0]).starts_with(b"POST /echo HTTP/1.1\r\n"));
    // ThreadingHTTPServer handles the connection on a thread of the same process.
    assert!(
        recvs.iter().all(|v| v["tid"] != pid),
        "handler runs on a worker thread"
    );

    let sends = on_conn("send");
    assert_eq!(
        sum_ret(&sends),
        resp.len() as i64,
        "bytes written by the server"
    );
    assert!(payload(sends[0]).starts_with(b"HTTP/1.1 200"));
    // write_seq after the last send minus write_seq before the first == bytes sent.
    let first = sends[0];
    let last = sends[sends.len() - 1];
    let before = (first["tcp_seq"].as_u64().unwrap() as u32)
        .wrapping_sub(first["ret"].as_u64().unwrap() as u32);
    let after = last["tcp_seq"].as_u64().unwrap() as u32;
    assert_eq!(
        after.wrapping_sub(before) as usize,
        resp.len(),
        "TCP sequence span"
    );

    for v in recvs.iter().chain(&sends) {
        assert_eq!(v["local"], local.as_str());
        assert!(v["dur_ns"].as_u64().unwrap() < 1_000_000_000);
        assert!(v["captured"].as_u64().unwrap() <= 4096, "default cap");
    }
    // Timestamps are wall clock and ordered: accept <= first recv <= first send.
    let ts = |v: &Value| v["ts_unix_ns"].as_u64().unwrap();
    assert!(ts(a) <= ts(recvs[0]) && ts(recvs[0]) <= ts(first));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(now - ts(first) < 60_000_000_000);
}

/// Checks the unix-pair fixture's events for process `pid` against what it printed.
fn check_unix_pair(seen: &[Value], info: &Value) {
    let pid = info["pid"].as_u64().unwrap() as u32;
    let (a, b) = (
        info["a_fd"].as_i64().unwrap(),
        info["b_fd"].as_i64().unwrap(),
    );
    let (ai, bi) = (
        info["a_ino"].as_u64().unwrap(),
        info["b_ino"].as_u64().unwrap(),
    );
    // Only what the fixture's own program did: a launcher (a pyenv shim, say) that matched
    // first and then exec'd python may have used the same fd numbers before the exec.
    let ts = |v: &Value| v["ts_unix_ns"].as_u64().unwrap_or(0);
    let since = seen
        .iter()
        .filter(|v| v["kind"] == "exec" && v["pid"] == pid)
        .map(ts)
        .max()
        .unwrap_or(0);
    let seen: Vec<&Value> = seen
        .iter()
        .filter(|v| v["pid"] == pid && ts(v) >= since)
        .collect();
    let by = |fd: i64, syscall: &str| -> Vec<&Value> {
        seen.iter()
            .copied()
            .filter(|v| v["fd"] == fd && v["syscall"] == syscall)
            .collect()
    };
    for v in seen.iter().filter(|v| v["fd"].is_i64()) {
        let fd = v["fd"].as_i64().unwrap();
        let (ino, peer) = if fd == a {
            (ai, bi)
        } else if fd == b {
            (bi, ai)
        } else {
            continue;
        };
        assert_eq!(v["proto"], "unix", "{v}");
        assert_eq!(v["inode"], ino, "{v}");
        // At close the peer may already be gone (its close unlinks the pair).
        if v["kind"] != "close" {
            assert_eq!(v["peer_inode"], peer, "{v}");
        }
    }
    let one = |fd: i64, sc: &str| -> Value {
        let v = by(fd, sc);
        assert!(!v.is_empty(), "no {sc} on fd {fd}");
        v[0].clone()
    };
    let sendto = by(a, "sendto");
    assert_eq!(sum_ret(&sendto), 300);
    let expect: Vec<u8> = (0..300u32).map(|i| ((i * 7) % 251) as u8).collect();
    assert_eq!(
        payload(sendto[0]),
        expect[..sendto[0]["captured"].as_u64().unwrap() as usize]
    );
    assert_eq!(sum_ret(&by(b, "recvfrom")), 300);
    let w = one(b, "writev");
    assert_eq!(
        (w["ret"].as_i64(), payload(&w)),
        (Some(11), b"hello world".to_vec())
    );
    let r = one(a, "readv");
    assert_eq!(
        (r["ret"].as_i64(), payload(&r)),
        (Some(11), b"hello world".to_vec())
    );
    let s = one(a, "sendmsg");
    assert_eq!(
        (s["ret"].as_i64(), payload(&s)),
        (Some(7), b"abcdefg".to_vec())
    );
    let r = one(b, "recvmsg");
    assert_eq!(
        (r["ret"].as_i64(), payload(&r)),
        (Some(7), b"abcdefg".to_vec())
    );
    let w = one(a, "write");
    assert_eq!((w["ret"].as_i64(), payload(&w)), (Some(2), b"zz".to_vec()));
    let r = one(b, "read");
    assert_eq!((r["ret"].as_i64(), payload(&r)), (Some(2), b"zz".to_vec()));
    assert_eq!(by(a, "close").len(), 1);
    assert_eq!(by(b, "close").len(), 1);
}

#[test]
fn unix_pair_all_syscalls_inodes_and_peers() {
    if !bpf_or_skip("unix_pair_all_syscalls_inodes_and_peers") {
        return;
    }
    unix_pair_case("tracepoint");
}

/// The same capture through the raw sys_enter/sys_exit hook.
#[test]
fn unix_pair_all_syscalls_inodes_and_peers_raw_hook() {
    if !bpf_or_skip("unix_pair_all_syscalls_inodes_and_peers_raw_hook") {
        return;
    }
    unix_pair_case("raw");
}

/// Waits for the unix-pair fixture (already told to go) to finish and checks what the probe
/// saw of process `pid`, the truncated datagram read included.
fn check_pair_run(fx: &mut JsonChild, probe: &mut JsonChild, pid: u64) {
    let info = fx.wait_for("pair info", T, |v| v.get("a_fd").is_some());
    let trunc = fx.wait_for("datagram fd", T, |v| v.get("trunc_fd").is_some())["trunc_fd"]
        .as_i64()
        .unwrap();
    fx.wait_for("done", T, |v| v.get("done").is_some());
    let b = info["b_fd"].as_i64().unwrap();
    probe.wait_for("close of b", T, |v| {
        v["kind"] == "close" && v["pid"] == pid && v["fd"] == b
    });
    check_unix_pair(&probe.seen, &info);
    // recv with MSG_TRUNC returned 100 for a 10-byte buffer: nothing past the buffer is read.
    let r = probe
        .seen
        .iter()
        .find(|v| v["pid"] == pid && v["fd"] == trunc && v["syscall"] == "recvfrom")
        .expect("the truncated datagram read");
    assert_eq!(
        (r["ret"].as_i64(), r["captured"].as_u64()),
        (Some(100), Some(10))
    );
    assert_eq!(payload(r), (0..10u8).collect::<Vec<_>>());
}

fn unix_pair_case(hook: &str) {
    let mut fx = start_fixture("unix_pair.py", &[]);
    let pid = fx.wait_for("fixture pid", T, |v| v.get("pid").is_some())["pid"]
        .as_u64()
        .unwrap();
    let mut probe = start_probe(&["--pid", &pid.to_string(), "--syscall-hook", hook]);
    fx.send_line("go");
    check_pair_run(&mut fx, &mut probe, pid);
}

#[test]
fn child_of_target_is_captured_and_non_target_is_not() {
    if !bpf_or_skip("child_of_target_is_captured_and_non_target_is_not") {
        return;
    }
    let mut parent = start_fixture("unix_pair.py", &["--fork"]);
    let ppid = parent.wait_for("parent pid", T, |v| v.get("pid").is_some())["pid"]
        .as_u64()
        .unwrap();
    let mut other = start_fixture("unix_pair.py", &[]);
    let other_pid = other.wait_for("other pid", T, |v| v.get("pid").is_some())["pid"]
        .as_u64()
        .unwrap();
    let mut probe = start_probe(&["--pid", &ppid.to_string()]);
    parent.send_line("go");
    other.send_line("go");
    let info = parent.wait_for("child pair info", T, |v| v.get("a_fd").is_some());
    let child = info["pid"].as_u64().unwrap();
    assert_ne!(child, ppid);
    parent.wait_for("parent done", T, |v| v.get("parent_done").is_some());
    other.wait_for("other done", T, |v| v.get("done").is_some());
    let b = info["b_fd"].as_i64().unwrap();
    probe.wait_for("child's close of b", T, |v| {
        v["kind"] == "close" && v["pid"] == child && v["fd"] == b
    });
    probe.wait_for("fork event", T, |v| {
        v["kind"] == "fork" && v["pid"] == child && v["ppid"] == ppid
    });
    probe.wait_for("child exit", T, |v| {
        v["kind"] == "exit" && v["pid"] == child
    });
    probe.drain_for(Duration::from_millis(200));
    check_unix_pair(&probe.seen, &info);
    assert!(
        !probe.seen.iter().any(|v| v["pid"] == other_pid),
        "non-target process {other_pid} must not be captured"
    );
}

#[test]
fn cmdline_pattern_catches_process_started_later() {
    if !bpf_or_skip("cmdline_pattern_catches_process_started_later") {
        return;
    }
    let tag = format!("--tag=pattern-{}", std::process::id());
    let mut probe = start_probe(&["--cmdline", &format!("unix_pair\\.py {tag}")]);
    let mut fx = start_fixture("unix_pair.py", &[&tag]);
    let pid = fx.wait_for("fixture pid", T, |v| v.get("pid").is_some())["pid"]
        .as_u64()
        .unwrap();
    probe.wait_for("exec of the matching process", T, |v| {
        v["kind"] == "exec" && v["pid"] == pid
    });
    fx.send_line("go");
    check_pair_run(&mut fx, &mut probe, pid);
}

#[test]
fn payload_cap_is_honoured() {
    if !bpf_or_skip("payload_cap_is_honoured") {
        return;
    }
    let mut fx = start_fixture("unix_pair.py", &[]);
    let pid = fx.wait_for("fixture pid", T, |v| v.get("pid").is_some())["pid"]
        .as_u64()
        .unwrap();
    let mut probe = start_probe(&["--pid", &pid.to_string(), "--payload-cap", "16"]);
    fx.send_line("go");
    let info = fx.wait_for("pair info", T, |v| v.get("a_fd").is_some());
    let a = info["a_fd"].as_i64().unwrap();
    let ev = probe.wait_for("sendto", T, |v| {
        v["pid"] == pid && v["fd"] == a && v["syscall"] == "sendto"
    });
    assert_eq!(ev["ret"], 300);
    assert_eq!(ev["captured"], 16);
    let expect: Vec<u8> = (0..16u32).map(|i| ((i * 7) % 251) as u8).collect();
    assert_eq!(payload(&ev), expect);
}
