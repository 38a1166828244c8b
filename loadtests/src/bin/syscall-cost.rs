//! Per-syscall cost of node-probe's capture, as ratios measured side by side in one run.
//!
//! Two worker processes each loop `send(64 B)` + `recv(64 B)` on a unix socket pair. Each round
//! runs both workers with no probe loaded (baseline), then starts node-probe targeting worker A
//! only and runs both again: A pays the full capture (filter, fd->socket resolution, 64-byte
//! payload copy, ring write), B pays only the in-kernel filter of a non-target. Medians over the
//! rounds, and node-probe's own CPU per captured event, are printed.
//!
//!     cargo build --release && sudo target/release/syscall-cost --probe target/release/node-probe
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use inferscope_loadtests::probe::start_probe;
use inferscope_loadtests::{median, proc_cpu_ns};

#[derive(Parser)]
struct Args {
    /// node-probe binary.
    #[arg(long, default_value = "target/release/node-probe")]
    probe: String,
    /// send+recv pairs per measurement.
    #[arg(long, default_value_t = 200_000)]
    iters: u64,
    /// Rounds (each: baseline, then probe attached).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Extra node-probe arguments (space-separated), e.g. "--payload-cap 0".
    #[arg(long, default_value = "")]
    probe_args: String,
    /// Internal: run as a worker.
    #[arg(long, hide = true)]
    worker: bool,
}

fn worker(iters: u64) -> anyhow::Result<()> {
    let mut fds = [0i32; 2];
    // SAFETY: valid out-array of two ints.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) } != 0 {
        bail!("socketpair: {}", std::io::Error::last_os_error());
    }
    let buf = [7u8; 64];
    let mut rbuf = [0u8; 64];
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let _ = line?;
        let t = Instant::now();
        for _ in 0..iters {
            // SAFETY: valid fds and buffers of the given length.
            unsafe {
                libc::send(fds[0], buf.as_ptr().cast(), 64, 0);
                libc::recv(fds[1], rbuf.as_mut_ptr().cast(), 64, 0);
            }
        }
        writeln!(out, "{}", t.elapsed().as_nanos())?;
        out.flush()?;
    }
    Ok(())
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn start(iters: u64) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--worker", "--iters", &iters.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// Runs one measurement; returns ns per syscall.
    fn measure(&mut self, iters: u64) -> anyhow::Result<f64> {
        writeln!(self.stdin, "go")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let ns: f64 = line.trim().parse().context("worker output")?;
        Ok(ns / (2 * iters) as f64)
    }
}

fn stop(mut p: Child) {
    // SAFETY: plain signal to our own child.
    unsafe { libc::kill(p.id() as i32, libc::SIGTERM) };
    let _ = p.wait();
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.worker {
        return worker(a.iters);
    }
    let mut wa = Worker::start(a.iters)?;
    let mut wb = Worker::start(a.iters)?;
    // Warm-up.
    wa.measure(a.iters)?;
    wb.measure(a.iters)?;
    let (mut base, mut traced, mut filtered, mut probe_cpu_per_event) =
        (vec![], vec![], vec![], vec![]);
    for r in 0..a.rounds {
        let b1 = wa.measure(a.iters)?;
        let b2 = wb.measure(a.iters)?;
        base.push((b1 + b2) / 2.0);
        let mut args = vec![
            "--pid".to_string(),
            wa.child.id().to_string(),
            "--poll-ms".into(),
            "10".into(),
        ];
        args.extend(a.probe_args.split_whitespace().map(str::to_string));
        let p = start_probe(&a.probe, &args)?;
        let cpu0 = proc_cpu_ns(p.id()).unwrap_or(0);
        let t = wa.measure(a.iters)?;
        // Let the probe drain what A produced before its CPU is read.
        std::thread::sleep(Duration::from_millis(300));
        let cpu1 = proc_cpu_ns(p.id()).unwrap_or(0);
        let f = wb.measure(a.iters)?;
        stop(p);
        traced.push(t);
        filtered.push(f);
        probe_cpu_per_event.push((cpu1.saturating_sub(cpu0)) as f64 / (2 * a.iters) as f64);
        eprintln!(
            "round {r}: baseline {:.0} ns, traced {t:.0} ns, non-target {f:.0} ns per syscall",
            base[r as usize]
        );
    }
    let (mb, mt, mf) = (median(&base), median(&traced), median(&filtered));
    println!(
        "syscall-cost: {} rounds x {} send+recv pairs (64 B, unix stream socket pair)",
        a.rounds, a.iters
    );
    println!("  baseline (no probe)          {mb:8.0} ns/syscall");
    println!(
        "  target, captured             {mt:8.0} ns/syscall  ratio {:.2}x  (+{:.0} ns)",
        mt / mb,
        mt - mb
    );
    println!(
        "  non-target, filtered in-kernel {mf:6.0} ns/syscall  ratio {:.2}x  (+{:.0} ns)",
        mf / mb,
        mf - mb
    );
    println!(
        "  node-probe CPU per captured event {:.0} ns (median)",
        median(&probe_cpu_per_event)
    );
    drop(wa.stdin);
    drop(wb.stdin);
    let _ = wa.child.wait();
    let _ = wb.child.wait();
    Ok(())
}
