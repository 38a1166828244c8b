//! Per-syscall cost of node-probe's capture, as ratios measured side by side in one run, for
//! both ways of hooking the syscalls (`--syscall-hook raw` and `tracepoint`).
//!
//! Worker processes A and B each loop `send(64 B)` + `recv(64 B)` on a unix socket pair; worker
//! C loops `getppid()`, a syscall node-probe never traces. Each round measures all three with no
//! probe loaded (baseline), then, for each hook (order alternating between rounds), starts
//! node-probe targeting A only and measures them again: A pays the full capture (filter,
//! fd->socket resolution, 64-byte payload copy, ring write), B only the in-kernel filter of a
//! non-target, C what the hook costs an unrelated syscall anywhere on the host. Medians over the
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
    /// send+recv pairs (or getppid pairs) per measurement.
    #[arg(long, default_value_t = 200_000)]
    iters: u64,
    /// Rounds (each: baseline, then the probe attached with each hook).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Hooks to compare (node-probe's --syscall-hook values).
    #[arg(long, value_delimiter = ',', default_value = "raw,tracepoint")]
    hooks: Vec<String>,
    /// A second node-probe binary measured in the same rounds with each hook (the before and
    /// after of a change).
    #[arg(long)]
    probe_b: Option<String>,
    /// Extra node-probe arguments (space-separated), e.g. "--payload-cap 0".
    #[arg(long, default_value = "")]
    probe_args: String,
    /// Internal: run as a worker.
    #[arg(long, hide = true)]
    worker: Option<String>,
}

fn worker(kind: &str, iters: u64) -> anyhow::Result<()> {
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
        if kind == "socket" {
            for _ in 0..iters {
                // SAFETY: valid fds and buffers of the given length.
                unsafe {
                    libc::send(fds[0], buf.as_ptr().cast(), 64, 0);
                    libc::recv(fds[1], rbuf.as_mut_ptr().cast(), 64, 0);
                }
            }
        } else {
            for _ in 0..2 * iters {
                // SAFETY: a syscall without arguments.
                unsafe { libc::syscall(libc::SYS_getppid) };
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
    fn start(kind: &str, iters: u64) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--worker", kind, "--iters", &iters.to_string()])
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

/// Per-round figures of one condition.
#[derive(Default)]
struct Series {
    captured: Vec<f64>,
    filtered: Vec<f64>,
    other: Vec<f64>,
    probe_cpu_per_event: Vec<f64>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if let Some(kind) = &a.worker {
        return worker(kind, a.iters);
    }
    let mut wa = Worker::start("socket", a.iters)?;
    let mut wb = Worker::start("socket", a.iters)?;
    let mut wc = Worker::start("other", a.iters)?;
    // Warm-up.
    for w in [&mut wa, &mut wb, &mut wc] {
        w.measure(a.iters)?;
    }
    let mut base = Series::default();
    // (label, binary, hook): each hook with the probe, then with the B probe if given.
    let conds: Vec<(String, &str, &str)> = a
        .hooks
        .iter()
        .flat_map(|h| {
            let b = a
                .probe_b
                .as_deref()
                .map(|pb| (format!("{h} (B)"), pb, h.as_str()));
            [Some((h.clone(), a.probe.as_str(), h.as_str())), b]
        })
        .flatten()
        .collect();
    let mut by_hook: Vec<Series> = conds.iter().map(|_| Series::default()).collect();
    for r in 0..a.rounds {
        let b1 = wa.measure(a.iters)?;
        let b2 = wb.measure(a.iters)?;
        base.captured.push((b1 + b2) / 2.0);
        base.other.push(wc.measure(a.iters)?);
        let mut order: Vec<usize> = (0..conds.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let mut args = vec![
                "--pid".to_string(),
                wa.child.id().to_string(),
                "--poll-ms".into(),
                "10".into(),
                "--syscall-hook".into(),
                conds[i].2.to_string(),
            ];
            args.extend(a.probe_args.split_whitespace().map(str::to_string));
            let p = start_probe(conds[i].1, &args)?;
            let cpu0 = proc_cpu_ns(p.id()).unwrap_or(0);
            let t = wa.measure(a.iters)?;
            // Let the probe drain what A produced before its CPU is read.
            std::thread::sleep(Duration::from_millis(300));
            let cpu1 = proc_cpu_ns(p.id()).unwrap_or(0);
            let f = wb.measure(a.iters)?;
            let o = wc.measure(a.iters)?;
            stop(p);
            let s = &mut by_hook[i];
            s.captured.push(t);
            s.filtered.push(f);
            s.other.push(o);
            s.probe_cpu_per_event
                .push((cpu1.saturating_sub(cpu0)) as f64 / (2 * a.iters) as f64);
            eprintln!(
                "round {r} {:>10}: baseline {:.0} / {:.0} ns, captured {t:.0}, non-target {f:.0}, other syscall {o:.0} ns",
                conds[i].0, base.captured[r as usize], base.other[r as usize]
            );
        }
    }
    let (mb, mo) = (median(&base.captured), median(&base.other));
    println!(
        "syscall-cost: {} rounds x {} send+recv pairs (64 B, unix stream socket pair), getppid as the unrelated syscall",
        a.rounds, a.iters
    );
    println!("  baseline (no probe): socket syscall {mb:.0} ns, getppid {mo:.0} ns");
    let cell = |m: f64, b: f64| format!("{m:6.0} ns {:5.2}x (+{:.0} ns)", m / b, m - b);
    for ((h, _, _), s) in conds.iter().zip(&by_hook) {
        println!("  --syscall-hook {h}:");
        println!(
            "    target, captured          {}",
            cell(median(&s.captured), mb)
        );
        println!(
            "    non-target, filtered      {}",
            cell(median(&s.filtered), mb)
        );
        println!(
            "    unrelated syscall (getppid) {}",
            cell(median(&s.other), mo)
        );
        println!(
            "    node-probe CPU per captured event {:.0} ns",
            median(&s.probe_cpu_per_event)
        );
    }
    for w in [wa, wb, wc] {
        let Worker {
            mut child, stdin, ..
        } = w;
        drop(stdin);
        let _ = child.wait();
    }
    Ok(())
}
