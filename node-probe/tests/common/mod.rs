//! Helpers for node-probe's integration tests: BPF gating, running the probe and fixtures.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Set by `.ci/run`: eBPF tests must run, and a missing capability fails them.
pub const REQUIRE_ENV: &str = "INFERSCOPE_REQUIRE_BPF";

/// Whether this process can run eBPF tests; with [`REQUIRE_ENV`]=1 a "no" panics instead.
pub fn bpf_or_skip(test: &str) -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    let ok = root && btf;
    if !ok {
        let why = if !root {
            "not running as root"
        } else {
            "no kernel BTF"
        };
        if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
            panic!("{test}: eBPF test required ({REQUIRE_ENV}=1) but {why}");
        }
        eprintln!("SKIPPED {test}: eBPF test needs root and kernel BTF ({why}); set {REQUIRE_ENV}=1 to make this fail");
    }
    ok
}

/// Path of a file under tests/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A child process whose stdout is read line by line as JSON.
pub struct JsonChild {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
    pub seen: Vec<Value>,
}

impl JsonChild {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("non-JSON line: {line}"),
                }
            }
        });
        Self {
            child,
            stdin,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line matching `pred`, keeping every line read in `seen`.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "timed out after {timeout:?} waiting for {what}; seen {} lines",
                    self.seen.len()
                ),
            }
        }
    }

    /// Collects whatever arrives within `d`.
    pub fn drain_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Ok(v) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(v);
        }
    }

    pub fn send_line(&mut self, s: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{s}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for JsonChild {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts node-probe printing JSON events with `args`, and waits until it has attached.
pub fn start_probe(args: &[&str]) -> JsonChild {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_node-probe"));
    cmd.args([
        "--print-events",
        "--format",
        "json",
        "--print-payload",
        "--poll-ms",
        "5",
    ])
    .args(args)
    .env("RUST_LOG", "info");
    let mut p = JsonChild::spawn(cmd);
    p.wait_for("probe ready", Duration::from_secs(60), |v| {
        v["kind"] == "ready"
    });
    p
}

/// Starts a Python fixture.
pub fn start_fixture(name: &str, args: &[&str]) -> JsonChild {
    let mut cmd = Command::new("python3");
    cmd.arg("-u").arg(fixture(name)).args(args);
    JsonChild::spawn(cmd)
}

/// Events of `kind` from process `pid` on fd `fd` among those seen.
pub fn events<'a>(seen: &'a [Value], kind: &str, pid: u32, fd: i64) -> Vec<&'a Value> {
    seen.iter()
        .filter(|v| v["kind"] == kind && v["pid"] == pid && v["fd"] == fd)
        .collect()
}

/// Decodes `payload_hex`.
pub fn payload(v: &Value) -> Vec<u8> {
    let h = v["payload_hex"].as_str().unwrap_or("");
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Prints a measured figure and appends it to `$INFERSCOPE_FIGURES` (scripts/test.sh lists them
/// at the end of a run).
pub fn figure(line: &str) {
    eprintln!("{line}");
    if let Ok(p) = std::env::var("INFERSCOPE_FIGURES") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// CLOCK_MONOTONIC to Unix time, now.
pub fn mono_to_wall_offset() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128;
    wall - mono
}

/// Compiles the C file `src` into `out` (its folder created) with `cc FLAGS -o OUT SRC LIBS`.
pub fn compile_c(src: &Path, out: &Path, flags: &[&str], libs: &[&str]) {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let r = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(src)
        .args(libs)
        .output()
        .expect("cc (build-essential)");
    assert!(
        r.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&r.stderr)
    );
}

/// The GPU simulator's directory (`loadtests/gpu-sim/`).
pub fn sim_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../loadtests/gpu-sim")
}

/// A `loadtests/gpu-sim/vllm` command with `args`.
pub fn sim(args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(sim_dir().join("vllm")).args(args);
    c
}

/// The simulator's truth lines of one kind.
pub fn truth(path: &Path, kind: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == kind)
        .collect()
}

/// A JSON number as u64 (panics with the value otherwise).
pub fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Runs the simulator's bounded load against `ports` and asserts that every request succeeded.
pub fn sim_load(ports: &[String], clients: usize, requests: usize, seed: u64) {
    let mut args: Vec<String> = vec!["load".into()];
    for p in ports {
        args.extend(["--port".into(), p.clone()]);
    }
    for (k, v) in [("--clients", clients), ("--requests", requests)] {
        args.extend([k.into(), v.to_string()]);
    }
    args.extend(["--seed".into(), seed.to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = sim(&refs).output().unwrap();
    assert!(
        out.status.success(),
        "load: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Reads one HTTP response (Content-Length or chunked) from a keep-alive connection.
pub fn read_response(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if head.contains("transfer-encoding: chunked") {
                if buf.ends_with(b"\r\n0\r\n\r\n") || buf[end + 4..].starts_with(b"0\r\n\r\n") {
                    return buf;
                }
            } else if let Some(cl) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                if buf.len() >= end + 4 + cl {
                    return buf;
                }
            }
        }
        let n = s.read(&mut b).expect("read");
        if n == 0 {
            return buf;
        }
        buf.extend_from_slice(&b[..n]);
    }
}

/// A POST request with a JSON body and `extra` header lines.
pub fn post(path: &str, body: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A Python process that sends on a unix socket pair every 20 ms for 20 s, with `marker` in its
/// command line; as `uid` when given (through `setpriv`, the system Python: a user's own, e.g.
/// pyenv under /root, is not theirs to run).
pub fn socketpair_talker(uid: Option<u32>, marker: &str) -> Child {
    let mut c = match uid {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={u}"),
                &format!("--regid={u}"),
                "--clear-groups",
                "/usr/bin/python3",
            ]);
            c
        }
        None => Command::new("/usr/bin/python3"),
    };
    c.args(["-c", TALKER_CODE, marker])
        .spawn()
        .expect("spawn talker")
}

/// The program [`socketpair_talker`] runs.
pub const TALKER_CODE: &str = "import socket,sys,time\na,b=socket.socketpair()\nfor _ in range(1000):\n    a.send(b'x'); b.recv(1); time.sleep(0.02)\n";

/// The pids whose socket sends or receives the probe printed.
pub fn pids_talking(probe: &JsonChild) -> std::collections::HashSet<u64> {
    probe
        .seen
        .iter()
        .filter(|v| v["kind"] == "send" || v["kind"] == "recv")
        .filter_map(|v| v["pid"].as_u64())
        .collect()
}
