//! node-probe inside a time namespace (a container with its own monotonic clock offset) still
//! converts the kernel's timestamps to the right wall-clock time: `bpf_ktime_get_ns` is the
//! host's clock, and the namespace's offset is taken out.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

const T: Duration = Duration::from_secs(20);

#[test]
fn wall_times_are_right_inside_a_time_namespace() {
    if !bpf_or_skip("wall_times_are_right_inside_a_time_namespace") {
        return;
    }
    let mut srv = start_fixture("http_server.py", &[]);
    let hello = srv.wait_for("server pid/port", T, |v| v.get("port").is_some());
    let (pid, port) = (
        hello["pid"].as_u64().unwrap(),
        hello["port"].as_u64().unwrap() as u16,
    );
    // A monotonic clock one day ahead of the host's.
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--time",
        "--monotonic",
        "86400",
        "--fork",
        "--kill-child",
        "--",
    ])
    .arg(env!("CARGO_BIN_EXE_node-probe"))
    .args(["--pid", &pid.to_string(), "--requests", "--poll-ms", "5"])
    .env("RUST_LOG", "info");
    let mut probe = JsonChild::spawn(cmd);
    std::thread::sleep(Duration::from_secs(3));
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let sent = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128;
    c.write_all(
        format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).unwrap();
    let r = probe.wait_for("the request", T, |v| v["kind"] == "request");
    let start = r["start_unix_ns"].as_u64().unwrap() as i128;
    let off_ms = (start - sent) as f64 / 1e6;
    assert!(
        off_ms.abs() < 1000.0,
        "request start {off_ms:.1} ms from the client's send time (time-namespace offset not removed?)"
    );
}
