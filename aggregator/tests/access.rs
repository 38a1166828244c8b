//! The HTTP side's doors, on the `aggregator` binary: the API token (bearer or browser login),
//! the `Host`/`Origin` guard against DNS rebinding, and the refusal to listen beyond loopback
//! without credentials.
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn ch_url() -> String {
    std::env::var("INFERSCOPE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

fn ch_available() -> bool {
    let ok = Command::new("curl")
        .args(["-sf", &format!("{}/ping", ch_url())])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok || std::env::var("INFERSCOPE_REQUIRE_BPF").as_deref() != Ok("1"),
        "ClickHouse at {} is required (INFERSCOPE_REQUIRE_BPF=1)",
        ch_url()
    );
    ok
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

struct Aggregator(Child, String);

impl Drop for Aggregator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = Command::new("curl")
            .args([
                "-sf",
                &ch_url(),
                "--data-binary",
                &format!("DROP DATABASE IF EXISTS {}", self.1),
            ])
            .output();
    }
}

/// One HTTP/1.1 exchange: (status, headers + body).
fn http(addr: SocketAddr, req: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

fn get(addr: SocketAddr, path: &str, host: &str, extra: &str) -> (u16, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n"),
    )
}

fn start(args: &[&str]) -> (Aggregator, SocketAddr) {
    let (grpc, http_addr) = (free_addr(), free_addr());
    let db = format!("test_access_{}_{}", std::process::id(), http_addr.port());
    let child = Command::new(env!("CARGO_BIN_EXE_aggregator"))
        .args([
            "--grpc-listen",
            &grpc.to_string(),
            "--http-listen",
            &http_addr.to_string(),
        ])
        .args(["--clickhouse-url", &ch_url(), "--database", &db])
        .args(args)
        .env_remove("INFERSCOPE_API_TOKEN")
        .env_remove("INFERSCOPE_TOKEN")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agg = Aggregator(child, db);
    let t0 = Instant::now();
    while get(http_addr, "/healthz", "127.0.0.1", "").0 != 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "aggregator did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (agg, http_addr)
}

#[test]
fn api_token_login_and_host_guard() {
    if !ch_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tf = dir.path().join("api-token");
    std::fs::write(&tf, "r34d-only\n").unwrap();
    let (_agg, a) = start(&[
        "--api-token-file",
        tf.to_str().unwrap(),
        "--allowed-host",
        "inferscope.test",
    ]);
    let h = "127.0.0.1";

    // Without the token: the API answers 401 with what to do, a page goes to the login.
    let (code, body) = get(a, "/api/v1/filters", h, "");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("API token"), "{body}");
    assert_eq!(get(a, "/metrics", h, "").0, 401);
    let (code, body) = get(a, "/", h, "");
    assert_eq!(code, 303, "{body}");
    assert!(
        body.to_ascii_lowercase().contains("location: /login"),
        "{body}"
    );
    assert_eq!(get(a, "/login", h, "").0, 200);
    assert_eq!(get(a, "/healthz", h, "").0, 200, "liveness stays open");
    let (code, body) = get(a, "/readyz", h, "");
    assert_eq!(
        code, 200,
        "readiness stays open and sees ClickHouse: {body}"
    );
    assert!(body.ends_with("ready"), "{body}");
    assert_eq!(
        get(a, "/api/v1/filters", h, "Authorization: Bearer wrong\r\n").0,
        401
    );

    // The token as a bearer (CLI, Grafana) or as the cookie a browser login sets.
    let bearer = "Authorization: Bearer r34d-only\r\n";
    assert_eq!(get(a, "/api/v1/filters", h, bearer).0, 200);
    assert_eq!(
        get(a, "/api/v1/filters", "inferscope.test:7071", bearer).0,
        200
    );
    let form = "token=r34d-only";
    let (code, body) = http(
        a,
        &format!(
            "POST /login HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ),
    );
    assert_eq!(code, 303, "{body}");
    let cookie = body
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap();
    assert_eq!(
        get(a, "/api/v1/filters", h, &format!("Cookie: {session}\r\n")).0,
        200
    );

    // A foreign Host (a rebinding page's name) or Origin is refused, token or not.
    let (code, body) = get(a, "/api/v1/filters", "attacker.example:7071", bearer);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("DNS rebinding"), "{body}");
    let origin = format!("{bearer}Origin: http://attacker.example\r\n");
    assert_eq!(get(a, "/api/v1/filters", h, &origin).0, 403);
    let origin = format!("{bearer}Origin: http://127.0.0.1:7071\r\n");
    assert_eq!(get(a, "/api/v1/filters", h, &origin).0, 200);
}

#[test]
fn host_guard_without_a_token() {
    if !ch_available() {
        return;
    }
    let (_agg, a) = start(&[]);
    assert_eq!(get(a, "/api/v1/filters", "127.0.0.1", "").0, 200);
    assert_eq!(get(a, "/api/v1/filters", "localhost:7071", "").0, 200);
    assert_eq!(get(a, "/", "rebind.attacker.example", "").0, 403);
}

#[test]
fn no_open_doors_beyond_loopback() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_aggregator"))
            .args(["--clickhouse-url", "http://127.0.0.1:1"])
            .args(args)
            .env_remove("INFERSCOPE_API_TOKEN")
            .env_remove("INFERSCOPE_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--http-listen", "0.0.0.0:0", "--grpc-listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("without an API token"), "{err}");
    let (code, err) = run(&["--grpc-listen", "0.0.0.0:0", "--http-listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("ingest") && err.contains("without a token"),
        "{err}"
    );
}
