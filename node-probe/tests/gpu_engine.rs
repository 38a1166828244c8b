//! GPU steps as engine steps, against the simulator's truth (`loadtests/gpu-sim/`): two
//! single-GPU vLLM stand-ins on one node (the `uni` executor: no Worker, no doorbells; async
//! scheduling; a stand-in `libcuda.so.1` whose synchronizes block for the modelled GPU time),
//! 8 clients. node-probe's code path is the one a real GPU takes: driver uprobes → GPU steps →
//! the vLLM follower's step timeline → requests.
//!
//! Checked per step: boundaries (start, launch end, completion) within 50 µs of the
//! simulator's own clock, class and launch counts exact; per request: the instance (never the
//! other engine's), its steps, its tokens per step, GPU time in both views (latency: the sum of
//! its steps' GPU time; cost: each step's GPU time split by tokens) against the modelled GPU
//! time, and the host-bound steps the simulator injected.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Builds the stand-in driver as `libcuda.so.1` (the hooks match the library by file name).
fn build_fake_driver() -> PathBuf {
    let lib = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu-sim/libcuda.so.1");
    let src = sim_dir().join("fakecuda.c");
    compile_c(&src, &lib, &["-O2", "-shared", "-fPIC"], &["-lpthread"]);
    lib
}

/// Per truth step: the probe's `gpu_step` of the same core whose completion is nearest (the
/// event handles alternate, so times decide).
fn match_steps<'a>(probe: &'a [Value], step: &Value, offset: i128) -> Option<&'a Value> {
    let done = u(&step["done_ns"]) as i128 + offset;
    probe
        .iter()
        .filter(|p| p["tgid"] == step["core_pid"] && p["event"] == step["event"])
        .min_by_key(|p| (u(&p["end_ns"]) as i128 - done).abs())
}

#[test]
fn gpu_steps_are_vllm_steps_on_one_gpu() {
    if !bpf_or_skip("gpu_steps_are_vllm_steps_on_one_gpu") {
        return;
    }
    const REQUESTS: usize = 96;
    let lib = build_fake_driver();
    let dir = lib.parent().unwrap().to_owned();
    // Events printed without payloads: the probe's own printing competes with the engines for
    // this machine's two cores, and a late wake-up of a synchronize is GPU time to a tracer.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_node-probe"));
    cmd.args(["--print-events", "--format", "json", "--poll-ms", "5"])
        .args([
            "--cmdline",
            "gpu-sim/vllm",
            "--rescan-s",
            "0.2",
            "--requests",
        ]);
    let mut probe = JsonChild::spawn(cmd);
    probe.wait_for("probe ready", Duration::from_secs(60), |v| {
        v["kind"] == "ready"
    });
    let mut engines = Vec::new();
    for (k, cpu_bound) in [(0, "13"), (1, "0")] {
        let truth_file = dir.join(format!("truth-{k}.jsonl"));
        let _ = std::fs::remove_file(&truth_file);
        let mut cmd = sim(&[
            "serve",
            "--port",
            "0",
            "--wait-stream",
            "--cpu-bound-every",
            cpu_bound,
        ]);
        cmd.arg("--lib").arg(&lib).arg("--truth").arg(&truth_file);
        let mut s = JsonChild::spawn(cmd);
        let ready = s.wait_for("simulator ready", Duration::from_secs(30), |v| {
            v.get("port").is_some()
        });
        // The engine core gets the CPU first when its synchronize wakes (on a GPU server the
        // engine's thread has a core of its own; here the load, the frontends and the probe
        // share two): otherwise the wake-up lag, not the tracer, dominates the GPU times.
        let core = ready["core_pid"].as_i64().unwrap();
        // SAFETY: plain syscall on a pid we started.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, core as libc::id_t, -15) };
        engines.push((s, ready, truth_file));
    }
    // One warm-up request per engine: its core's GPU steps show that the driver is probed.
    for (_, ready, _) in &engines {
        let port = ready["port"].to_string();
        let out = sim(&["load", "--port", &port, "--clients", "1", "--requests", "1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "warm-up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let core = ready["core_pid"].clone();
        probe.wait_for("a GPU step of the core", Duration::from_secs(30), |v| {
            v["kind"] == "gpu_step" && v["tgid"] == core
        });
    }
    let warm: Vec<usize> = engines.iter().map(|e| truth(&e.2, "step").len()).collect();
    let warm_requests: Vec<String> = engines
        .iter()
        .flat_map(|e| truth(&e.2, "request"))
        .map(|r| r["response_id"].as_str().unwrap().to_owned())
        .collect();
    let ports: Vec<String> = engines.iter().map(|e| e.1["port"].to_string()).collect();
    sim_load(&ports, 8, REQUESTS, 11);
    let want: Vec<Value> = engines
        .iter()
        .flat_map(|e| truth(&e.2, "request"))
        .filter(|r| !warm_requests.contains(&r["response_id"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(want.len(), REQUESTS);
    let ids: Vec<String> = want
        .iter()
        .map(|r| r["response_id"].as_str().unwrap().into())
        .collect();
    let seen_all = |p: &JsonChild| {
        p.seen
            .iter()
            .filter(|v| {
                v["kind"] == "request" && ids.iter().any(|i| v["response_id"] == i.as_str())
            })
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen_all(&probe) < REQUESTS && std::time::Instant::now() < deadline {
        probe.drain_for(Duration::from_millis(200));
    }
    let offset = mono_to_wall_offset();
    if let Ok(p) = std::env::var("GPU_ENGINE_DUMP") {
        let lines: Vec<String> = probe
            .seen
            .iter()
            .filter(|v| v["kind"] == "gpu_step" || v["kind"] == "request")
            .map(|v| v.to_string())
            .collect();
        std::fs::write(
            p,
            lines.join("\n") + &format!("\n{{\"offset\":{offset}}}\n"),
        )
        .unwrap();
    }
    let gpu_steps: Vec<Value> = probe
        .seen
        .iter()
        .filter(|v| v["kind"] == "gpu_step")
        .cloned()
        .collect();
    let records: HashMap<String, &Value> = probe
        .seen
        .iter()
        .filter(|v| v["kind"] == "request")
        .filter_map(|v| Some((v["response_id"].as_str()?.to_owned(), v)))
        .collect();

    // Steps: boundaries, class, counts.
    let mut steps_checked = 0usize;
    let mut within = 0usize;
    let mut worst = 0i128;
    let mut off = Vec::new();
    let mut step_errs: Vec<u64> = Vec::new();
    let mut truth_steps: HashMap<(u64, u64), Value> = HashMap::new();
    for (k, e) in engines.iter().enumerate() {
        for t in truth(&e.2, "step").into_iter().skip(warm[k]) {
            let p = match_steps(&gpu_steps, &t, offset)
                .unwrap_or_else(|| panic!("no gpu_step for {t}"));
            assert_eq!(p["class"], t["class"], "{p} / {t}");
            assert_eq!(p["graph_launches"], t["graphs"], "{p} / {t}");
            assert_eq!(p["kernel_launches"], t["launches"], "{p} / {t}");
            let mut ok = true;
            for (ours, theirs) in [
                ("start_ns", "start_ns"),
                ("launched_ns", "recorded_ns"),
                ("end_ns", "done_ns"),
            ] {
                let d = (u(&p[ours]) as i128 - (u(&t[theirs]) as i128 + offset)).abs();
                worst = worst.max(d);
                if d >= 50_000 {
                    off.push(format!("{ours} {} us off ({})", d / 1000, t["class"]));
                }
                ok &= d < 50_000;
            }
            within += usize::from(ok);
            if p["upper_bound"] == false && t["cpu_bound"] == false {
                step_errs
                    .push((u(&p["gpu_ns"]) as i64 - u(&t["gpu_cost_ns"]) as i64).unsigned_abs());
            }
            steps_checked += 1;
            truth_steps.insert((u(&t["core_pid"]), u(&t["seq"])), t);
        }
    }
    // The goal is 99 %; the guard leaves 1 % for preemptions between a probe and the
    // stand-in driver's own stamp (this machine's two cores also run the load, the frontends
    // and the probe); the figure below reports the measured share.
    assert!(
        within * 100 >= steps_checked * 98,
        "{within} of {steps_checked} steps within 50 us (worst {worst} ns): {off:?}"
    );

    // Requests: instance, steps, tokens, GPU time.
    let mut member_of: HashMap<&str, Vec<&Value>> = HashMap::new();
    let mut ordered: Vec<&Value> = truth_steps.values().collect();
    ordered.sort_by_key(|t| (u(&t["core_pid"]), u(&t["seq"])));
    for t in &ordered {
        for m in t["members"].as_array().unwrap() {
            member_of.entry(m[0].as_str().unwrap()).or_default().push(t);
        }
    }
    let (mut exact, mut lat_ok, mut cost_ok, mut worst_lat, mut worst_cost) = (0, 0, 0, 0f64, 0f64);
    let mut host_bound_requests = 0;
    let (mut truth_bounded, mut missed_flags, mut host_bound_seen) = (0, 0, 0);
    let mut injected_unflagged = 0;
    let (mut lat_errs, mut cost_errs) = (Vec::new(), Vec::new());
    for w in &want {
        let id = w["response_id"].as_str().unwrap();
        let r = records
            .get(id)
            .unwrap_or_else(|| panic!("no record for {id}"));
        let inst = r["engine_instance"].as_str().unwrap_or_default();
        assert_eq!(
            inst.split(':').next(),
            Some(w["core_pid"].to_string().as_str()),
            "{id}: instance"
        );
        let mine = &member_of[w["engine_id"].as_str().unwrap()];
        let tokens: Vec<u64> = mine
            .iter()
            .map(|t| {
                let m = t["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m[0] == w["engine_id"])
                    .unwrap();
                u(&m[1])
            })
            .collect();
        let got: Vec<u64> = r["step_tokens"]
            .as_array()
            .map(|a| a.iter().map(u).collect())
            .unwrap_or_default();
        assert_eq!(got, tokens, "{id}: tokens per step");
        assert_eq!(u(&r["engine_steps"]), mine.len() as u64, "{id}");
        let truth_lat: u64 = mine.iter().map(|t| u(&t["gpu_cost_ns"])).sum();
        let truth_cost: f64 = mine
            .iter()
            .zip(&tokens)
            .map(|(t, &k)| u(&t["gpu_cost_ns"]) as f64 * k as f64 / u(&t["tokens"]) as f64)
            .sum();
        // The GPU's completion is known where the host waited for it; a step the host paced,
        // and one whose wait found the GPU done, give upper bounds (flagged).
        // The GPU's completion is known where the host waited for it; a step the host paced,
        // one whose wait found the GPU done, and one that overlapped such a step (its GPU start
        // is unknown) give upper bounds, which node-probe must flag.
        let late = |t: &Value| u(&t["sync_ns"]) >= u(&t["gpu_end_ns"]);
        let first = mine[0];
        let before = truth_steps.get(&(u(&first["core_pid"]), u(&first["seq"]) - 1));
        let bounded = mine.iter().any(|t| t["cpu_bound"] == true || late(t))
            || before.is_some_and(|b| late(b) && u(&first["start_ns"]) < u(&b["done_ns"]));
        let flagged = u(&r["gpu_upper_bound_steps"]) > 0;
        truth_bounded += usize::from(bounded);
        missed_flags += usize::from(bounded && !flagged);
        if mine.iter().any(|t| t["cpu_bound"] == true) {
            host_bound_requests += 1;
            host_bound_seen += usize::from(u(&r["gpu_host_bound_ns"]) > 0);
            injected_unflagged += usize::from(!flagged);
        }
        if flagged || bounded {
            continue;
        }
        exact += 1;
        let lat = (u(&r["gpu_ns"]) as f64 - truth_lat as f64).abs() / truth_lat as f64;
        let cost = (u(&r["gpu_cost_ns"]) as f64 - truth_cost).abs() / truth_cost;
        worst_lat = worst_lat.max(lat);
        worst_cost = worst_cost.max(cost);
        lat_errs.push(lat);
        cost_errs.push(cost);
        lat_ok += usize::from(lat <= 0.01);
        cost_ok += usize::from(cost <= 0.01);
    }
    assert!(
        host_bound_requests > 0,
        "the simulator injected no host-bound step"
    );
    // A wait that the truth calls late but that took over 100 µs itself (preempted inside,
    // as under the full suite's load: 2 of 61 in one CI run) is not flagged; allow 5 % of the
    // requests for it (they are left out of the error figures all the same).
    assert!(
        missed_flags * 20 <= REQUESTS && injected_unflagged * 20 <= REQUESTS,
        "{missed_flags} of {truth_bounded} requests with an upper-bound step claimed exact, \
         {injected_unflagged} of {host_bound_requests} with an injected host-bound step"
    );
    assert!(
        exact >= REQUESTS / 10,
        "only {exact} requests claimed exact"
    );
    let q = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize] * 100.0
    };
    let (lat50, lat90, cost50, cost90) = (
        q(&mut lat_errs, 0.5),
        q(&mut lat_errs, 0.9),
        q(&mut cost_errs, 0.5),
        q(&mut cost_errs, 0.9),
    );
    step_errs.sort_unstable();
    let step50 = step_errs[step_errs.len() / 2];
    let step90 = step_errs[step_errs.len() * 9 / 10];
    figure(&format!(
        "gpu engine (simulator, 2 uni-executor engines, 8 clients, {REQUESTS} requests): {within}/{steps_checked} steps \
         within 50 us (worst {:.1} us), classes and launch counts exact; every request on its own instance with its \
         tokens per step; {exact} requests claimed exact, {truth_bounded} with upper-bound steps ({missed_flags} not flagged; \
         {host_bound_seen}/{host_bound_requests} with an injected host-bound step named host-bound); per-step GPU \
         time error p50 {:.1} us p90 {:.1} us ({} steps claimed exact); GPU time error \
         of the exact ones: latency p50 {lat50:.2} % p90 {lat90:.2} % max {:.2} % ({lat_ok} within 1 %), cost p50 \
         {cost50:.2} % p90 {cost90:.2} % max {:.2} % ({cost_ok} within 1 %)",
        worst as f64 / 1e3,
        step50 as f64 / 1e3,
        step90 as f64 / 1e3,
        step_errs.len(),
        worst_lat * 100.0,
        worst_cost * 100.0
    ));
    // A step's completion is its synchronize's return, late by the host's wake-up (on this
    // 2-core machine shared with the load, often by more than 1 % of a 2 ms step): the bounds
    // below are that floor, the figure above the measurement.
    assert!(
        step50 <= 50_000 && lat50 <= 1.0 && cost50 <= 5.0,
        "GPU time: step p50 {step50} ns, latency p50 {lat50:.2} % (p90 {lat90:.2} %), cost p50 {cost50:.2} %"
    );
}
