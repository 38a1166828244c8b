//! Uprobes through the hook table on a library that a target `dlopen`s after node-probe
//! started: the stand-in `libllama.so` (same symbol and argument layout as llama.cpp's) is
//! built here with `cc`, and so is the target that loads it.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The tests count the kernel's links: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());
const CALLER: &str = "inferscope-dlopen-caller";

/// Builds the stand-in library and the caller into the test's temp dir.
fn build() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("uprobe-fixtures");
    let src = fixture("c");
    let lib = dir.join("libllama.so");
    let caller = dir.join(CALLER);
    let standin = src.join("libllama_standin.c");
    compile_c(&standin, &lib, &["-shared", "-fPIC", "-O1"], &[]);
    compile_c(&src.join("dlopen_caller.c"), &caller, &["-O1"], &["-ldl"]);
    (lib, caller)
}

fn caller(bin: &Path, lib: &Path, delay_ms: u32, run_ms: u32, n_tokens: u32) -> JsonChild {
    let mut cmd = Command::new(bin);
    cmd.arg(lib)
        .arg(delay_ms.to_string())
        .arg(run_ms.to_string())
        .arg(n_tokens.to_string());
    JsonChild::spawn(cmd)
}

#[test]
fn uprobe_on_a_library_dlopened_later_fires_within_one_rescan() {
    if !bpf_or_skip("uprobe_on_a_library_dlopened_later_fires_within_one_rescan") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (lib, bin) = build();
    let rescan = Duration::from_millis(500);
    let mut probe = start_probe(&["--cmdline", CALLER, "--rescan-s", "0.5"]);
    let offset = mono_to_wall_offset();
    let mut c = caller(&bin, &lib, 300, 2000, 7);
    let loaded = c.wait_for("library loaded", Duration::from_secs(10), |v| {
        v.get("loaded_ns").is_some()
    });
    let pid = loaded["pid"].as_u64().unwrap();
    let loaded_wall = loaded["loaded_ns"].as_u64().unwrap() as i128 + offset;
    let first = probe.wait_for("a llama_decode call", Duration::from_secs(10), |v| {
        v["kind"] == "call" && v["pid"] == pid
    });
    assert_eq!(first["comm"], "llama_decode");
    assert_eq!(first["ret"], 7, "return value from the return probe");
    let stack0 = first["stack"][0].as_u64().unwrap();
    assert_eq!(
        stack0 as u32, 7,
        "n_tokens of the by-value llama_batch, first stack word"
    );
    assert_eq!(
        first["args"][0], 0,
        "ctx (NULL) in the first argument register"
    );
    let dur = first["dur_ns"].as_u64().unwrap();
    assert!(
        dur >= 140_000,
        "7 tokens x 20 us of stand-in compute, got {dur} ns"
    );
    let start_wall = first["ts_unix_ns"].as_u64().unwrap() as i128 - dur as i128;
    let delay = Duration::from_nanos((start_wall - loaded_wall).max(0) as u64);
    eprintln!("first call seen {delay:?} after dlopen (rescan interval {rescan:?})");
    assert!(
        delay <= rescan + Duration::from_millis(250),
        "the first probed call came {delay:?} after the library was loaded"
    );
}

/// `(links, programs)` of the uprobe programs in the kernel, from bpftool.
fn bpf_counts() -> (usize, usize) {
    let json = |args: &[&str]| -> Value {
        let out = Command::new("bpftool")
            .args(args)
            .output()
            .expect("bpftool (scripts/setup.sh base installs it)");
        assert!(out.status.success(), "bpftool {args:?}");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]))
    };
    let progs = json(&["-j", "prog", "show"]);
    let ids: Vec<u64> = progs
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "uprobe_call" || p["name"] == "uretprobe_call")
        .filter_map(|p| p["id"].as_u64())
        .collect();
    let links = json(&["-j", "link", "show"]);
    let n_links = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .count();
    (n_links, ids.len())
}

fn wait_counts(want_links: usize, timeout: Duration) -> (usize, usize) {
    let deadline = Instant::now() + timeout;
    loop {
        let c = bpf_counts();
        if c.0 == want_links || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn uprobe_links_released_after_100_target_cycles() {
    if !bpf_or_skip("uprobe_links_released_after_100_target_cycles") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (lib, bin) = build();
    // A file no target maps stays attached 1 s (between rounds), then is released.
    let mut probe = start_probe(&[
        "--cmdline",
        CALLER,
        "--rescan-s",
        "0.1",
        "--uprobe-linger-s",
        "1",
    ]);
    let (base_links, _) = bpf_counts();
    let mut pids = Vec::new();
    let mut progs_after_first = None;
    for round in 0..25 {
        // Four targets at once share one attachment of the file.
        let mut cs: Vec<JsonChild> = (0..4).map(|_| caller(&bin, &lib, 0, 300, 3)).collect();
        if round == 0 {
            let (l, p) = wait_counts(base_links + 2, Duration::from_secs(3));
            assert_eq!(l, base_links + 2, "entry + return link on the one file");
            progs_after_first = Some(p);
        }
        for c in &mut cs {
            let done = c.wait_for("caller done", Duration::from_secs(10), |v| {
                v.get("calls").is_some()
            });
            pids.push(done["pid"].as_u64().unwrap());
        }
    }
    let (links, progs) = wait_counts(base_links, Duration::from_secs(10));
    assert_eq!(
        links, base_links,
        "every link released once no target has mapped the library for 1 s"
    );
    assert_eq!(
        Some(progs),
        progs_after_first,
        "programs loaded once, none leaked"
    );
    probe.drain_for(Duration::from_millis(300));
    let seen: std::collections::HashSet<u64> = probe
        .seen
        .iter()
        .filter(|v| v["kind"] == "call")
        .filter_map(|v| v["pid"].as_u64())
        .collect();
    let traced = pids.iter().filter(|p| seen.contains(p)).count();
    eprintln!(
        "{traced} of {} short-lived targets had their calls traced",
        pids.len()
    );
    assert!(traced >= 95, "only {traced} of 100 targets traced");
}
