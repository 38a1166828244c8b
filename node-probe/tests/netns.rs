//! Arrivals per network namespace: two servers in two namespaces on the same address and port,
//! reached from the same client ports, each get only their own connections' arrival times.
//! (Loopback traffic only, inside namespaces this test creates and deletes.)
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);
const PORT: u16 = 18_931;
const PAIRS: u16 = 20;

/// A network namespace with loopback up, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        let quiet_del = |n: &str| {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(std::process::Stdio::null())
                .status();
        };
        quiet_del(&name);
        let ok = |args: &[&str]| {
            let st = Command::new("ip")
                .args(args)
                .status()
                .expect("ip (iproute2)");
            assert!(st.success(), "ip {args:?}");
        };
        ok(&["netns", "add", &name]);
        ok(&["-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }

    fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.0))
            .expect("netns file")
            .ino()
    }

    fn exec(&self, fixture_name: &str, args: &[&str]) -> JsonChild {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0, "python3", "-u"])
            .arg(fixture(fixture_name))
            .args(args);
        JsonChild::spawn(cmd)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn same_port_in_two_namespaces_gets_only_its_own_arrivals() {
    if !bpf_or_skip("same_port_in_two_namespaces_gets_only_its_own_arrivals") {
        return;
    }
    let me = std::process::id();
    let (a, b) = (
        Netns::new(format!("isn-a-{me}")),
        Netns::new(format!("isn-b-{me}")),
    );
    let port = PORT.to_string();
    let mut srv_a = a.exec("openai_server.py", &["--port", &port]);
    let mut srv_b = b.exec("openai_server.py", &["--port", &port]);
    let pid_of = |s: &mut JsonChild| {
        s.wait_for("server pid", T, |v| v.get("pid").is_some())["pid"]
            .as_u64()
            .unwrap() as u32
    };
    let (pa, pb) = (pid_of(&mut srv_a), pid_of(&mut srv_b));
    let mut probe = start_probe(&[
        "--pid",
        &pa.to_string(),
        "--pid",
        &pb.to_string(),
        "--requests",
    ]);
    let mut cl_a = a.exec("fixed_port_client.py", &[]);
    let mut cl_b = b.exec("fixed_port_client.py", &[]);
    // The same client port in both namespaces, so the two connections have equal tuples, both
    // kept open. Linux picks nearly the same initial sequence number for equal tuples (the
    // secret is not per namespace), growing with time: A connects first, B second, then B's
    // request goes first and A's 150 ms later. B's arrival then covers A's first byte, and an
    // arrival filter keyed by port alone gives A's request B's arrival time.
    for i in 0..PAIRS {
        let src = 41_000 + i;
        for cl in [&mut cl_a, &mut cl_b] {
            cl.send_line(&format!("connect {src} {PORT}"));
            cl.wait_for("connected", T, |v| v["connected"] == src);
        }
        for (cl, pause) in [(&mut cl_b, 150), (&mut cl_a, 0)] {
            cl.send_line(&format!("send {src}"));
            let d = cl.wait_for("client done", T, |v| v["done"] == src);
            assert_eq!(d["status"], 200);
            std::thread::sleep(Duration::from_millis(pause));
        }
    }
    for cl in [&mut cl_a, &mut cl_b] {
        cl.send_line("close");
        cl.wait_for("connections closed", T, |v| v.get("closed").is_some());
    }
    let want = 2 * PAIRS as usize;
    let mut n = 0;
    while n < want {
        probe.wait_for("request records", T, |v| v["kind"] == "request");
        n = probe.seen.iter().filter(|v| v["kind"] == "request").count();
        if n < want {
            probe.drain_for(Duration::from_millis(200));
            n = probe.seen.iter().filter(|v| v["kind"] == "request").count();
        }
    }
    let records: Vec<&Value> = probe
        .seen
        .iter()
        .filter(|v| v["kind"] == "request")
        .collect();
    // First the behaviour: no request starts at another namespace's arrival.
    let stolen: Vec<String> = records
        .iter()
        .filter(|r| {
            r["start_source"] != "arrival"
                || r["read_wait_ns"].as_u64().unwrap_or(u64::MAX) >= 50_000_000
        })
        .map(|r| {
            format!(
                "pid {} from {}: read_wait {} ns",
                r["pid"], r["client"], r["read_wait_ns"]
            )
        })
        .collect();
    assert!(
        stolen.is_empty(),
        "{} of {} requests took an arrival time that is not theirs: {stolen:?}",
        stolen.len(),
        records.len()
    );
    for (pid, ns) in [(pa, a.inode()), (pb, b.inode())] {
        let mine: Vec<&&Value> = records.iter().filter(|r| r["pid"] == pid).collect();
        assert_eq!(
            mine.len(),
            PAIRS as usize,
            "one record per request of pid {pid}"
        );
        for r in mine {
            assert_eq!(r["netns"].as_u64(), Some(ns), "record's namespace: {r}");
        }
    }
}
