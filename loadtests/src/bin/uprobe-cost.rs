//! What a uprobe hook costs the engine per probed call: the stand-in `libllama.so` (same symbol
//! and `llama_batch` layout as llama.cpp's, returning at once) called back to back by a target
//! that `dlopen`s it, untraced and traced by node-probe (entry + return probe through the hook
//! table), interleaved rounds; prints ns per call and the difference, the cost per engine step.
//!
//! With `--cuda LIBCUDA` (the real `libcuda.so.1`: `scripts/nvidia-libs.sh`), the same for the
//! GPU hooks, called with marker handles (the uninitialised driver returns at once): a kernel
//! launch (`cuLaunchKernel`: counted in the kernel, no record), a boundary call
//! (`cuEventRecord`: one GPU ring record) and a synchronize (`cuStreamSynchronize`: entry and
//! return probes).
//!
//! With `--gpu-steps`, the step-time inflation at a realistic call rate: a one-GPU vLLM's
//! steps (CUDA-graph decode, an eager prefill every 8th step, async scheduling) made against the
//! stand-in driver of `loadtests/gpu-sim/` (whose synchronizes block for the modelled GPU time),
//! untraced and traced, interleaved rounds: the host's launch window and the step period
//! (synchronize return to synchronize return), medians, as ratios.
//!
//! `cargo build --release && sudo target/release/uprobe-cost --probe target/release/node-probe`
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context};
use clap::Parser;
use inferscope_loadtests::{harness, median};

#[derive(Parser)]
struct Args {
    /// Interleaved rounds (untraced, traced).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Calls per round.
    #[arg(long, default_value_t = 200_000)]
    calls: u64,
    /// node-probe binary.
    #[arg(long, default_value = "target/release/node-probe")]
    probe: PathBuf,
    /// Also measure the CUDA hooks on this `libcuda.so.1`.
    #[arg(long)]
    cuda: Option<PathBuf>,
    /// Also measure the step-time inflation on the stand-in driver, this many steps per round.
    #[arg(long)]
    gpu_steps: Option<u32>,
}

/// Per-step medians of one `engine` round: (decode period, decode window, eager period,
/// eager window), ns.
fn engine_round(bin: &Path, lib: &Path, steps: u32) -> anyhow::Result<[f64; 4]> {
    let out = Command::new(bin)
        .arg(lib)
        .args(["-", "engine", "3000", &steps.to_string()])
        .output()?;
    ensure!(out.status.success(), "engine caller failed");
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v.get("step").is_some())
        .collect();
    let pick = |eager: u64, k: &str| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| r["eager"] == eager)
            .filter_map(|r| r[k].as_f64())
            .collect();
        median(&v)
    };
    Ok([
        pick(0, "period_ns"),
        pick(0, "window_ns"),
        pick(1, "period_ns"),
        pick(1, "window_ns"),
    ])
}

/// Interleaved untraced/traced rounds of engine steps on the stand-in driver.
fn gpu_steps(dir: &Path, a: &Args, steps: u32) -> anyhow::Result<()> {
    let bin = build_cuda(dir)?;
    let lib = dir.join("libcuda.so.1");
    let st = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(harness::repo().join("loadtests/gpu-sim/fakecuda.c"))
        .arg("-lpthread")
        .status()
        .context("cc")?;
    ensure!(st.success(), "cc fakecuda.c");
    let plain = dir.join("plain-cuda");
    std::fs::copy(&bin, &plain)?;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..a.rounds {
        off.push(engine_round(&plain, &lib, steps)?);
        on.push(engine_round(&bin, &lib, steps)?);
        std::thread::sleep(Duration::from_secs(6));
    }
    let m = |v: &[[f64; 4]], i: usize| median(&v.iter().map(|r| r[i]).collect::<Vec<_>>());
    for (name, p, w, calls) in [("decode (graph)", 0, 1, 5), ("eager prefill", 2, 3, 43)] {
        let (po, pt, wo, wt) = (m(&off, p), m(&on, p), m(&off, w), m(&on, w));
        println!(
            "uprobe-cost gpu steps {name}: {calls} probed calls per step; step period untraced {:.3} ms, traced {:.3} ms ({:+.3} %); launch window untraced {:.1} us, traced {:.1} us (+{:.0} ns per probed call)",
            po / 1e6,
            pt / 1e6,
            (pt / po - 1.0) * 100.0,
            wo / 1e3,
            wt / 1e3,
            (wt - wo) / f64::from(calls - 1)
        );
    }
    Ok(())
}

const CUDA_CALLER: &str = "inferscope-uprobe-cost-cuda";
const CUDA_CALLS: [&str; 3] = ["launch_ns", "record_ns", "sync_ns"];

fn build_cuda(dir: &Path) -> anyhow::Result<PathBuf> {
    let bin = dir.join(CUDA_CALLER);
    let src = harness::repo().join("node-probe/tests/fixtures/c/cuda_caller.c");
    let st = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(src)
        .arg("-ldl")
        .status()
        .context("cc")?;
    ensure!(st.success(), "cc cuda_caller.c");
    Ok(bin)
}

/// One CUDA round: ns per call of each of [`CUDA_CALLS`].
fn cuda_round(bin: &Path, lib: &Path, calls: u64) -> anyhow::Result<[f64; 3]> {
    let out = Command::new(bin)
        .arg(lib)
        // Time for node-probe to find the target and attach its 24 driver hooks.
        .args(["-", "bench", "3000", &calls.to_string()])
        .output()?;
    ensure!(out.status.success(), "cuda caller failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let get = |k: &str| v[k].as_f64().context("ns per call");
    Ok([
        get(CUDA_CALLS[0])?,
        get(CUDA_CALLS[1])?,
        get(CUDA_CALLS[2])?,
    ])
}

/// Interleaved untraced/traced rounds of the CUDA calls; prints the cost of each hook kind.
fn cuda_cost(dir: &Path, lib: &Path, a: &Args) -> anyhow::Result<()> {
    let bin = build_cuda(dir)?;
    let plain = dir.join("plain-cuda");
    std::fs::copy(&bin, &plain)?;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..a.rounds {
        off.push(cuda_round(&plain, lib, a.calls)?);
        on.push(cuda_round(&bin, lib, a.calls)?);
        // The links stay until node-probe has seen the target exit and released them all.
        std::thread::sleep(Duration::from_secs(6));
    }
    for (i, name) in CUDA_CALLS.iter().enumerate() {
        let (o, t) = (
            median(&off.iter().map(|r| r[i]).collect::<Vec<_>>()),
            median(&on.iter().map(|r| r[i]).collect::<Vec<_>>()),
        );
        println!(
            "uprobe-cost cuda {}: untraced {o:.1} ns/call, traced {t:.1} ns/call: +{:.0} ns per call",
            name.trim_end_matches("_ns"),
            t - o
        );
    }
    Ok(())
}

fn build(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let src = harness::repo().join("node-probe/tests/fixtures/c");
    let lib = dir.join("libllama.so");
    let bin = dir.join("inferscope-uprobe-cost-caller");
    for args in [vec!["-shared", "-fPIC", "-O2", "-o"], vec!["-O2", "-o"]] {
        let (out, file) = if args[0] == "-shared" {
            (&lib, "libllama_standin.c")
        } else {
            (&bin, "dlopen_caller.c")
        };
        let st = Command::new("cc")
            .args(&args)
            .arg(out)
            .arg(src.join(file))
            .arg("-ldl")
            .status()
            .context("cc")?;
        ensure!(st.success(), "cc {file}");
    }
    Ok((lib, bin))
}

/// One round: ns per call of `calls` calls.
fn round(bin: &Path, lib: &Path, calls: u64) -> anyhow::Result<f64> {
    let out = Command::new(bin)
        .arg(lib)
        .args(["0", "1500", "0", &calls.to_string()])
        .output()?;
    ensure!(out.status.success(), "caller failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["ns_per_call"].as_f64().context("ns_per_call")
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    ensure!(harness::is_root(), "uprobe-cost needs root (eBPF)");
    let dir = std::env::temp_dir().join(format!("inferscope-uprobe-cost-{}", std::process::id()));
    let (lib, bin) = build(&dir)?;
    let mut probe = Command::new(&a.probe)
        .args([
            "--cmdline",
            "inferscope-uprobe-cost-(caller|cuda)",
            "--rescan-s",
            "0.2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("node-probe")?;
    std::thread::sleep(Duration::from_secs(3));
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..a.rounds {
        // Untraced: the library copy under another name is not a target's.
        let plain = dir.join("plain-caller");
        std::fs::copy(&bin, &plain)?;
        off.push(round(&plain, &lib, a.calls)?);
        on.push(round(&bin, &lib, a.calls)?);
    }
    if let Some(lib) = &a.cuda {
        cuda_cost(&dir, lib, &a)?;
    }
    if let Some(steps) = a.gpu_steps {
        gpu_steps(&dir, &a, steps)?;
    }
    harness::kill(&mut probe, libc::SIGINT);
    let (m_off, m_on) = (median(&off), median(&on));
    println!(
        "uprobe-cost: {} rounds x {} calls; untraced {m_off:.1} ns/call, traced {m_on:.1} ns/call \
         (entry + return probe): +{:.0} ns per probed call (rounds: off {off:?}, on {on:?})",
        a.rounds,
        a.calls,
        m_on - m_off
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
