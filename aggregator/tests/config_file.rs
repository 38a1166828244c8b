//! `aggregator --config FILE`: the shared format (a JSON object of long options), flags override
//! it, and a bad file is refused at start with one line naming the key.
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aggregator"))
        .args(args)
        .env_remove("INFERSCOPE_CLICKHOUSE_URL")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_files_are_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("aggregator.json");
    let path = f.to_str().unwrap();

    std::fs::write(&f, r#"{"http-listen": "127.0.0.1:7071", "bogus": 1}"#).unwrap();
    let (code, err) = run(&["--config", path]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown key \"bogus\""), "{err}");
    assert!(err.contains(path), "{err}");

    std::fs::write(&f, r#"{"retention-days": {"x": 1}}"#).unwrap();
    let (code, err) = run(&["--config", path]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("\"retention-days\""), "{err}");

    std::fs::write(&f, "{").unwrap();
    let (code, err) = run(&["--config", path]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not valid JSON"), "{err}");

    // A value of the file that clap refuses is reported like the same flag would be.
    std::fs::write(&f, r#"{"http-listen": "not-an-address"}"#).unwrap();
    let (code, err) = run(&["--config", path]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--http-listen"), "{err}");

    // The command line overrides the file: the aggregator (waiting for an unreachable
    // ClickHouse) names the URL of the flag, not the file's.
    std::fs::write(&f, r#"{"clickhouse-url": "http://127.0.0.1:9"}"#).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_aggregator"))
        .args(["--config", path, "--clickhouse-url", "http://127.0.0.1:1"])
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("a warning about ClickHouse");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.contains("http://127.0.0.1:1") && !line.contains(":9"),
        "{line}"
    );
}
