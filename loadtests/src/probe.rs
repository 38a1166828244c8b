//! Starting node-probe from the benchmarks and waiting until it has attached.
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// Starts `bin` with `args` and waits (up to 60 s) for its "node-probe attached" log line.
/// Error lines of the probe are echoed to stderr prefixed with `probe:`.
pub fn start_probe(bin: &str, args: &[String]) -> anyhow::Result<Child> {
    let mut p = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {bin}"))?;
    let stderr = p.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("node-probe attached") {
                let _ = tx.send(());
            }
            if line.contains(" ERROR ") || line.starts_with("node-probe: error") {
                eprintln!("probe: {line}");
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = p.kill();
        let _ = p.wait();
        anyhow::bail!("node-probe did not attach within 60 s");
    }
    Ok(p)
}
