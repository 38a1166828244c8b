//! The binary's usage contract without a server: exit status 2 on a usage error, 1 when the
//! aggregator cannot be reached (the full CLI test against a served API is
//! `aggregator/tests/api.rs::cli_against_server`).
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_inferscope"))
        .args(args)
        .env_remove("INFERSCOPE_API")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_and_unreachable() {
    let (code, err) = run(&["no-such-command"]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = run(&["--api", "http://127.0.0.1:1", "requests"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the aggregator"), "{err}");
}

/// Output into a closed pipe ends the program quietly (SIGPIPE), not with a panic.
#[test]
fn closed_pipe_is_quiet() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_inferscope"))
        .arg("--help")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before the program writes
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}
