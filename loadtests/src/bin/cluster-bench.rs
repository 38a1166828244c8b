//! Ingest with two aggregator replicas on a ClickHouse cluster against one aggregator on one
//! server, side by side in one run (issue 12's scale-out figure).
//!
//! Rounds alternate: the single aggregator gets all of a round's batches on one stream; then
//! the replicas get the same amount split between them, on one stream each, at once. Each side
//! gets fresh boot ids (nothing is a duplicate). Wall time is first send to last STORED ack;
//! aggregator CPU is the sum over the aggregator processes of that side. Medians over rounds.
//!
//!     target/release/cluster-bench --single http://127.0.0.1:7070 --single-pid PID \
//!       --replica http://127.0.0.1:7080 --replica-pid PID_A --replica http://127.0.0.1:7090 --replica-pid PID_B
use std::time::Instant;

use anyhow::{ensure, Context};
use clap::Parser;
use inferscope_loadtests::ingest::{stream_all, synthetic_batches, Shape};
use inferscope_loadtests::{median, proc_cpu_ns};

#[derive(Parser)]
#[command(
    about = "Ingest: two aggregator replicas on a ClickHouse cluster vs one aggregator on one server"
)]
struct Args {
    /// gRPC URL of the aggregator on the single server.
    #[arg(long)]
    single: String,
    /// Its process id (CPU time).
    #[arg(long)]
    single_pid: u32,
    /// gRPC URL of an aggregator replica on the cluster (repeat per replica).
    #[arg(long, required = true)]
    replica: Vec<String>,
    /// Process id of each replica, in the same order.
    #[arg(long, required = true)]
    replica_pid: Vec<u32>,
    /// Bearer token (every aggregator's).
    #[arg(long, env = "INFERSCOPE_TOKEN")]
    token: Option<String>,
    /// Rounds per side.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Batches per round (split between the replicas).
    #[arg(long, default_value_t = 80)]
    batches: u64,
    /// Requests per batch.
    #[arg(long, default_value_t = 250)]
    requests_per_batch: u64,
    /// Spans per request.
    #[arg(long, default_value_t = 8)]
    spans_per_request: u64,
}

/// (wall seconds, aggregator CPU seconds) of one round.
type Round = (f64, f64);

async fn round(a: &Args, targets: &[(String, u32)], tag: &str) -> anyhow::Result<Round> {
    let cpu = || -> anyhow::Result<u64> {
        targets
            .iter()
            .map(|(_, pid)| proc_cpu_ns(*pid).context("aggregator pid"))
            .sum()
    };
    let per = a.batches / targets.len() as u64;
    let sends: Vec<_> = targets
        .iter()
        .enumerate()
        .map(|(i, (url, _))| {
            let shape = Shape {
                batches: per,
                requests_per_batch: a.requests_per_batch,
                spans_per_request: a.spans_per_request,
            };
            let boot = format!("cluster-bench-{tag}-{i}-{}", std::process::id());
            (url.clone(), synthetic_batches(shape, &boot))
        })
        .collect();
    let cpu0 = cpu()?;
    let t = Instant::now();
    let tasks: Vec<_> = sends
        .into_iter()
        .map(|(url, b)| {
            let token = a.token.clone();
            tokio::spawn(async move { stream_all(&url, token.as_deref(), b).await })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let wall = t.elapsed().as_secs_f64();
    Ok((wall, (cpu()? - cpu0) as f64 / 1e9))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    ensure!(
        a.replica.len() == a.replica_pid.len(),
        "give one --replica-pid per --replica"
    );
    let single = vec![(a.single.clone(), a.single_pid)];
    let replicas: Vec<(String, u32)> = a
        .replica
        .iter()
        .cloned()
        .zip(a.replica_pid.clone())
        .collect();
    let spans = (a.batches / replicas.len() as u64 * replicas.len() as u64)
        * a.requests_per_batch
        * a.spans_per_request;
    let (mut one, mut many) = (Vec::new(), Vec::new());
    for r in 0..a.rounds {
        one.push(round(&a, &single, &format!("single-{r}")).await?);
        many.push(round(&a, &replicas, &format!("cluster-{r}")).await?);
    }
    let rate = |v: &[Round]| {
        let wall: Vec<f64> = v.iter().map(|(w, _)| spans as f64 / w).collect();
        let cpu: Vec<f64> = v.iter().map(|(_, c)| spans as f64 / c.max(1e-9)).collect();
        (median(&wall), median(&cpu))
    };
    let ((w1, c1), (wn, cn)) = (rate(&one), rate(&many));
    println!(
        "cluster-bench: {} rounds of {spans} spans ({} requests) per side",
        a.rounds,
        spans / a.spans_per_request
    );
    println!("  1 aggregator, 1 ClickHouse server      {w1:>9.0} spans/s wall  {c1:>9.0} spans per aggregator CPU-second");
    println!(
        "  {} aggregator replicas, cluster          {wn:>9.0} spans/s wall  {cn:>9.0} spans per aggregator CPU-second",
        replicas.len()
    );
    println!(
        "  ratio cluster / single: wall {:.2}, per aggregator CPU {:.2}",
        wn / w1,
        cn / c1
    );
    Ok(())
}
