//! Tensor parallelism and NCCL, against the simulator's truth (`loadtests/gpu-sim/`): one vLLM
//! stand-in with two TP workers (the `mp` executor: doorbell steps), each on its own stand-in
//! `libcuda.so.1` and the stand-in `libnccl.so.2` (a star exchange over TCP on loopback);
//! rank 1 comes 5 ms late to the first all-reduce of every other NCCL step. 8 clients.
//!
//! Checked: every all-reduce reported once per rank with its rank, size of communicator,
//! bytes and stream; the same per-communicator sequence number on both ranks; the calls made
//! during graph capture flagged; arrivals against the simulator's clock; both ranks' GPU
//! steps merged into the doorbell steps; the injected straggler named for the requests it
//! delayed; and NCCL's sockets classified as NCCL traffic, not HTTP.
mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const REQUESTS: usize = 48;
const STRAGGLER: u64 = 1;

/// The stand-in driver and NCCL, under the file names the hooks match.
fn build_libs() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu-sim-tp");
    let cuda = dir.join("libcuda.so.1");
    let nccl = dir.join("libnccl.so.2");
    let flags = ["-O2", "-shared", "-fPIC"];
    compile_c(&sim_dir().join("fakecuda.c"), &cuda, &flags, &["-lpthread"]);
    compile_c(
        &sim_dir().join("fakenccl.c"),
        &nccl,
        &flags,
        &["-lpthread", "-ldl"],
    );
    (cuda, nccl)
}

/// The body of `GET /metrics` at `addr`.
fn metrics_page(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

#[test]
fn nccl_collectives_name_the_straggler_rank() {
    if !bpf_or_skip("nccl_collectives_name_the_straggler_rank") {
        return;
    }
    let (cuda, nccl) = build_libs();
    let truth_file = cuda.parent().unwrap().join("truth.jsonl");
    let _ = std::fs::remove_file(&truth_file);
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_node-probe"));
    cmd.args(["--print-events", "--format", "json", "--poll-ms", "5"])
        .args([
            "--cmdline",
            "gpu-sim/vllm",
            "--rescan-s",
            "0.2",
            "--requests",
        ])
        .args(["--metrics-listen", &metrics_addr]);
    let mut probe = JsonChild::spawn(cmd);
    probe.wait_for("probe ready", Duration::from_secs(60), |v| {
        v["kind"] == "ready"
    });
    let mut cmd = sim(&[
        "serve",
        "--port",
        "0",
        "--tp",
        "2",
        "--straggler-rank",
        &STRAGGLER.to_string(),
        "--straggle-every",
        "2",
        "--straggle-ms",
        "5",
        // The workers' model load: the probe attaches to libnccl before the communicator.
        "--load-ms",
        "2000",
    ]);
    cmd.arg("--lib")
        .arg(&cuda)
        .arg("--nccl")
        .arg(&nccl)
        .arg("--truth")
        .arg(&truth_file);
    let mut server = JsonChild::spawn(cmd);
    let ready = server.wait_for("simulator ready", Duration::from_secs(60), |v| {
        v.get("port").is_some()
    });
    let workers: Vec<u64> = ready["worker_pids"]
        .as_array()
        .expect("worker_pids")
        .iter()
        .map(u)
        .collect();
    assert_eq!(workers.len(), 2);
    let port = ready["port"].to_string();
    sim_load(std::slice::from_ref(&port), 8, REQUESTS, 5);
    let want = truth(&truth_file, "request");
    assert_eq!(want.len(), REQUESTS);
    let seen = |p: &JsonChild| {
        p.seen
            .iter()
            .filter(|v| {
                v["kind"] == "request" && want.iter().any(|w| v["response_id"] == w["response_id"])
            })
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen(&probe) < REQUESTS && std::time::Instant::now() < deadline {
        probe.drain_for(Duration::from_millis(200));
    }
    // NCCL's sockets (the stand-in's exchange runs on a thread named `NCCL Progress 0`) are
    // NCCL traffic, never parsed as HTTP: no request record other than the load's.
    std::thread::sleep(Duration::from_millis(1500));
    let page = metrics_page(&metrics_addr);
    let counter = |name: &str| -> u64 {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in {page}"))
    };
    let (nccl_conns, nccl_bytes) = (
        counter("inferscope_probe_nccl_connections_total"),
        counter("inferscope_probe_nccl_bytes_total"),
    );
    assert!(
        nccl_conns >= 1 && nccl_bytes > 0,
        "{nccl_conns} NCCL connections, {nccl_bytes} bytes"
    );
    let records = probe.seen.iter().filter(|v| v["kind"] == "request").count();
    assert_eq!(records, REQUESTS, "only the load's requests are HTTP");
    drop(server);
    let offset = mono_to_wall_offset();
    if let Ok(p) = std::env::var("GPU_TP_DUMP") {
        let lines: Vec<String> = probe.seen.iter().map(|v| v.to_string()).collect();
        std::fs::write(p, lines.join("\n")).unwrap();
    }

    // Collectives: one line per all-reduce and rank, ranks and sequence numbers lined up.
    let colls: Vec<&Value> = probe
        .seen
        .iter()
        .filter(|v| v["kind"] == "collective")
        .collect();
    let rank_steps = truth(&truth_file, "rank_step");
    let mut arrival_errs: Vec<u64> = Vec::new();
    let mut by_seq: HashMap<u64, Vec<&Value>> = HashMap::new();
    for &w in &workers {
        let mine: Vec<&Value> = colls
            .iter()
            .copied()
            .filter(|c| u(&c["pid"]) == w)
            .collect();
        let captured = mine.iter().filter(|c| c["captured"] == true).count();
        // One captured all-reduce per decode graph (buckets 1, 2, 4, 8).
        let seen = |name: &str| {
            probe
                .seen
                .iter()
                .filter(|v| v["comm"] == name && v["pid"].as_u64() == Some(w))
                .count()
        };
        assert_eq!(
            captured,
            4,
            "worker {w}: captured all-reduces (records seen: {} ncclCommInitRank, {} \
             cuStreamBeginCapture_v2, first collective {:?})",
            seen("ncclCommInitRank"),
            seen("cuStreamBeginCapture_v2"),
            mine.first()
        );
        let rank = u(&mine[0]["rank"]);
        for c in &mine {
            assert_eq!((u(&c["rank"]), u(&c["nranks"])), (rank, 2), "{c}");
            assert_eq!(c["func"], "all_reduce");
            assert_eq!(u(&c["stream"]), 0x51);
            assert_eq!(
                u(&c["bytes"]) % (4096 * 2),
                0,
                "bf16 × hidden × tokens: {c}"
            );
            by_seq.entry(u(&c["seq"])).or_default().push(c);
        }
        let mut entries: Vec<(u64, u64)> = rank_steps
            .iter()
            .filter(|t| u(&t["pid"]) == w)
            .flat_map(|t| {
                let seq = u(&t["seq"]);
                t["nccl_entry_ns"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(move |e| (seq, u(e)))
            })
            .collect();
        entries.sort_unstable();
        let run: Vec<&&Value> = mine.iter().filter(|c| c["captured"] != true).collect();
        assert_eq!(run.len(), entries.len(), "worker {w}: all-reduces run");
        for (c, (_, e)) in run.iter().zip(&entries) {
            let ours = u(&c["ts_unix_ns"]) as i128 - offset;
            arrival_errs.push((ours - *e as i128).unsigned_abs() as u64);
        }
    }
    for (seq, cs) in &by_seq {
        assert_eq!(cs.len(), 2, "seq {seq}: one call per rank");
        assert_eq!(cs[0]["comm_id"], cs[1]["comm_id"], "seq {seq}");
        assert_ne!(cs[0]["rank"], cs[1]["rank"], "seq {seq}");
    }

    // Requests: the straggler named where it was injected.
    let steps = truth(&truth_file, "step");
    let straggled: HashSet<String> = steps
        .iter()
        .filter(|s| s["straggler"].as_u64() == Some(STRAGGLER))
        .flat_map(|s| s["members"].as_array().unwrap().clone())
        .map(|m| m[0].as_str().unwrap().to_owned())
        .collect();
    let records: HashMap<&str, &Value> = probe
        .seen
        .iter()
        .filter(|v| v["kind"] == "request")
        .filter_map(|v| Some((v["response_id"].as_str()?, v)))
        .collect();
    let (mut affected, mut named, mut merged_steps, mut all_steps) = (0, 0, 0, 0);
    let mut lags: Vec<u64> = Vec::new();
    for w in &want {
        let id = w["response_id"].as_str().unwrap();
        let r = records
            .get(id)
            .unwrap_or_else(|| panic!("no record for {id}"));
        for s in r["steps"].as_array().into_iter().flatten() {
            all_steps += 1;
            merged_steps += usize::from(s["gpu_ranks"] == 2);
        }
        if !straggled.contains(w["engine_id"].as_str().unwrap()) {
            continue;
        }
        affected += 1;
        if r["straggler_rank"].as_u64() == Some(STRAGGLER) {
            named += 1;
            lags.push(u(&r["straggler_lag_ns"]));
        }
    }
    assert!(affected >= 4, "only {affected} requests met a straggler");
    // A long eager step can take the next step's GPU steps (the last doorbell step that
    // started before them): a few per run, reported in the figure.
    assert!(
        merged_steps * 100 >= all_steps * 90,
        "{merged_steps} of {all_steps} steps with both ranks' GPU steps"
    );
    lags.sort_unstable();
    arrival_errs.sort_unstable();
    let p = |v: &[u64], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    figure(&format!(
        "nccl (simulator, TP=2, 8 clients, {REQUESTS} requests, rank {STRAGGLER} 5 ms late every other NCCL step): \
         {} collectives ({} captured), both ranks lined up by sequence on every one; arrival vs the simulator's \
         clock p50 {:.1} us p99 {:.1} us; straggler named for {named}/{affected} delayed requests (its lag p50 \
         {:.2} ms); {merged_steps}/{all_steps} steps merged across both ranks",
        colls.len(),
        colls.iter().filter(|c| c["captured"] == true).count(),
        p(&arrival_errs, 0.5) as f64 / 1e3,
        p(&arrival_errs, 0.99) as f64 / 1e3,
        lags.get(lags.len() / 2).copied().unwrap_or(0) as f64 / 1e6,
    ));
    assert!(
        named * 100 >= affected * 99,
        "straggler named for {named} of {affected} requests"
    );
}
