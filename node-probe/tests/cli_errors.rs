//! Bad invocations give one clear error and a non-zero exit, before anything is loaded.
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_node-probe"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run node-probe")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn unknown_flag() {
    let o = run(&["--pid", "1", "--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unexpected argument '--bogus'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_pid_values() {
    let o = run(&["--pid", "4000000000"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim(),
        "node-probe: error: no such process: pid 4000000000"
    );
    let o = run(&["--pid", "abc"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid value 'abc'"), "{}", stderr(&o));
}

#[test]
fn no_targets_and_bad_pattern() {
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no targets"), "{}", stderr(&o));
    let o = run(&["--cmdline", "(unclosed"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("invalid --cmdline pattern"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_numeric_options() {
    let o = run(&["--pid", "1", "--payload-cap", "999999"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["--pid", "1", "--ring-mib", "3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("power of two"), "{}", stderr(&o));
}

/// As root: a kernel without BTF (simulated with --btf pointing nowhere) is one clear line.
/// Not root: the missing privilege is one clear line.
#[test]
fn missing_btf_or_privilege_is_one_line() {
    let o = run(&["--pid", "1", "--btf", "/nonexistent/vmlinux"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    if is_root() {
        assert!(
            e.contains("kernel BTF not found at /nonexistent/vmlinux"),
            "{e}"
        );
        assert!(e.contains("CONFIG_DEBUG_INFO_BTF"), "{e}");
    } else {
        assert!(e.contains("needs root"), "{e}");
    }
}

/// As root, drop to `nobody` with setpriv and check the privilege error.
#[test]
fn non_root_user_gets_privilege_error() {
    if !is_root() {
        let o = run(&["--pid", "1"]);
        assert!(
            stderr(&o).contains("needs root, or CAP_BPF and CAP_PERFMON"),
            "{}",
            stderr(&o)
        );
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIPPED non_root_user_gets_privilege_error: setpriv (util-linux) not installed");
        return;
    }
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_node-probe"))
        .args(["--pid", "1"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(
        e.contains("needs root, or CAP_BPF and CAP_PERFMON") && e.contains("uid 65534"),
        "{e}"
    );
}

#[test]
fn config_file_applies_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("node-probe.json");
    let cfg = f.to_str().unwrap();
    std::fs::write(&f, r#"{"bogus_key": 1}"#).unwrap();
    let o = run(&["--config", cfg, "--pid", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown key \"bogus_key\""),
        "{}",
        stderr(&o)
    );
    // The file's value is used...
    let me = std::process::id().to_string();
    std::fs::write(&f, r#"{"ring-mib": 3}"#).unwrap();
    let o = run(&["--config", cfg, "--pid", &me]);
    assert!(
        stderr(&o).contains("--ring-mib 3 must be a power of two"),
        "{}",
        stderr(&o)
    );
    // ...and a flag on the command line wins over it.
    std::fs::write(&f, r#"{"ring-mib": 8, "pid": [4000000000]}"#).unwrap();
    let o = run(&["--config", cfg, "--ring-mib", "5"]);
    assert!(
        stderr(&o).contains("no such process: pid 4000000000"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--config", cfg, "--pid", &me, "--ring-mib=5"]);
    assert!(
        stderr(&o).contains("no such process: pid 4000000000"),
        "repeatable options add: {}",
        stderr(&o)
    );
    std::fs::write(&f, r#"{"ring-mib": 8}"#).unwrap();
    let o = run(&["--config", cfg, "--pid", &me, "--ring-mib", "5"]);
    assert!(
        stderr(&o).contains("--ring-mib 5 must be a power of two"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--config", "/nonexistent/x.json", "--pid", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("config /nonexistent/x.json"),
        "{}",
        stderr(&o)
    );
}
