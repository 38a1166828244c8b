//! The same probe on a different OpenAI-compatible server (a small Python one, not vLLM): request
//! spans come out right with no engine-specific code, and hostile traffic (garbage, malformed
//! requests, clients that vanish mid-stream, pipelining) neither crashes it nor confuses it.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn by_path<'a>(seen: &'a [Value], path: &str) -> Vec<&'a Value> {
    seen.iter()
        .filter(|v| v["kind"] == "request" && v["path"] == path)
        .collect()
}

#[test]
fn any_openai_server_without_engine_code() {
    if !bpf_or_skip("any_openai_server_without_engine_code") {
        return;
    }
    let mut srv = start_fixture(
        "openai_server.py",
        &["--port", "0", "--token-delay-ms", "4"],
    );
    let hello = srv.wait_for("server pid/port", T, |v| v.get("port").is_some());
    let (pid, port) = (
        hello["pid"].as_u64().unwrap(),
        hello["port"].as_u64().unwrap() as u16,
    );
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut probe = start_probe(&[
        "--pid",
        &pid.to_string(),
        "--requests",
        "--metrics-listen",
        &metrics_addr,
    ]);

    // Keep-alive: streamed completion, non-streamed chat, embeddings, 404, 400 on one connection.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let cport = c.local_addr().unwrap().port();
    let tp = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n";
    c.write_all(
        post(
            "/v1/completions",
            r#"{"model":"m-stream","prompt":"hi","max_tokens":5,"stream":true}"#,
            tp,
        )
        .as_bytes(),
    )
    .unwrap();
    let r1 = read_response(&mut c);
    assert!(r1.starts_with(b"HTTP/1.1 200"));
    c.write_all(
        post(
            "/v1/chat/completions",
            r#"{"model":"m-chat","messages":[{"role":"user","content":"x"}],"max_tokens":3}"#,
            "x-request-id: rid-7\r\n",
        )
        .as_bytes(),
    )
    .unwrap();
    let r2 = read_response(&mut c);
    c.write_all(post("/v1/embeddings", r#"{"model":"m-emb","input":"abc"}"#, "").as_bytes())
        .unwrap();
    read_response(&mut c);
    c.write_all(post("/v1/nope", "{}", "").as_bytes()).unwrap();
    read_response(&mut c);
    c.write_all(post("/v1/completions", "{not json", "").as_bytes())
        .unwrap();
    read_response(&mut c);
    // Pipelined: two requests in one write.
    let two = post(
        "/v1/completions",
        r#"{"model":"p1","prompt":"a","max_tokens":2}"#,
        "",
    ) + &post(
        "/v1/completions",
        r#"{"model":"p2","prompt":"b","max_tokens":2}"#,
        "",
    );
    c.write_all(two.as_bytes()).unwrap();
    read_response(&mut c);
    read_response(&mut c);
    drop(c);

    // A client that disconnects mid-stream.
    let mut a = TcpStream::connect(("127.0.0.1", port)).unwrap();
    a.write_all(
        post(
            "/v1/completions",
            r#"{"model":"m-abort","prompt":"x","max_tokens":200,"stream":true}"#,
            "",
        )
        .as_bytes(),
    )
    .unwrap();
    let mut b = [0u8; 512];
    let _ = a.read(&mut b).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    drop(a);

    // Garbage on the socket, and a truncated request, then a good request: the probe survives.
    let mut g = TcpStream::connect(("127.0.0.1", port)).unwrap();
    g.write_all(b"\x00\xff\x13garbage\r\n\r\n\x16\x03\x01")
        .unwrap();
    let _ = g.read(&mut b);
    drop(g);
    let mut h = TcpStream::connect(("127.0.0.1", port)).unwrap();
    h.write_all(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"model\":")
        .unwrap();
    drop(h);
    let mut ok = TcpStream::connect(("127.0.0.1", port)).unwrap();
    ok.write_all(
        post(
            "/v1/completions",
            r#"{"model":"after-garbage","prompt":"x","max_tokens":2,"stream":true}"#,
            "",
        )
        .as_bytes(),
    )
    .unwrap();
    read_response(&mut ok);

    probe.wait_for("the request after the garbage", T, |v| {
        v["kind"] == "request" && v["model"] == "after-garbage"
    });
    probe.wait_for("the aborted stream", T, |v| {
        v["kind"] == "request" && v["model"] == "m-abort"
    });
    probe.drain_for(Duration::from_millis(300));
    let seen = probe.seen.clone();

    // node-probe's own metrics count what it saw, the garbage it gave up on included.
    let mut page = String::new();
    for _ in 0..40 {
        page = scrape(&metrics_addr);
        if page.contains("inferscope_probe_gave_up_total{reason=") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(page.contains("inferscope_probe_targets 1"), "{page}");
    assert!(
        page.contains("inferscope_probe_gave_up_total{reason="),
        "{page}"
    );
    let requests: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("inferscope_probe_requests_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(requests >= 8, "{page}");
    assert!(
        page.contains("inferscope_probe_events_total{kind=\"send\"}"),
        "{page}"
    );

    let s = by_path(&seen, "/v1/completions");
    let stream: Vec<_> = s.iter().filter(|v| v["model"] == "m-stream").collect();
    assert_eq!(stream.len(), 1, "exactly once");
    let r = stream[0];
    assert_eq!(r["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(r["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(
        (r["status"].as_u64(), r["outcome"].as_str()),
        (Some(200), Some("complete"))
    );
    assert_eq!(
        (
            r["chunks"].as_u64(),
            r["done"].as_bool(),
            r["sse"].as_bool()
        ),
        (Some(5), Some(true), Some(true))
    );
    assert!(r["response_id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(r["resp_bytes"].as_u64().unwrap() as usize, r1.len());
    let ttft = r["ttft_ns"].as_u64().unwrap();
    let e2e = r["e2e_ns"].as_u64().unwrap();
    assert!(ttft >= 4_000_000 && ttft < e2e, "ttft {ttft} e2e {e2e}");
    assert!(r["tpot_ns"].as_u64().unwrap() >= 3_000_000);
    assert!(
        r.get("engine_request_id").is_none() && r.get("frontend_ns").is_none(),
        "no engine code ran"
    );
    assert_eq!(r["spans"][0]["name"], "http.server");

    let chat = by_path(&seen, "/v1/chat/completions");
    assert_eq!(chat.len(), 1);
    assert_eq!(
        (chat[0]["model"].as_str(), chat[0]["sse"].as_bool()),
        (Some("m-chat"), Some(false))
    );
    assert_eq!(chat[0]["x_request_id"], "rid-7");
    assert_eq!(chat[0]["resp_bytes"].as_u64().unwrap() as usize, r2.len());
    assert!(chat[0]["response_id"]
        .as_str()
        .unwrap()
        .starts_with("chatcmpl-"));
    assert_eq!(by_path(&seen, "/v1/embeddings").len(), 1);
    assert_eq!(by_path(&seen, "/v1/nope")[0]["status"], 404);
    assert!(s.iter().any(|v| v["status"] == 400));
    for m in ["p1", "p2"] {
        let p: Vec<_> = s.iter().filter(|v| v["model"] == m).collect();
        assert_eq!(p.len(), 1, "pipelined {m}");
        assert_eq!(p[0]["status"], 200);
    }
    // One keep-alive connection: structured endpoints, and each message's first byte follows
    // the previous message's last one in its direction's TCP sequence space.
    let mut conn: Vec<&Value> = seen
        .iter()
        .filter(|v| v["client_endpoint"]["port"] == cport)
        .collect();
    conn.sort_by_key(|v| v["start_unix_ns"].as_u64());
    assert_eq!(conn.len(), 7, "{conn:?}");
    for v in &conn {
        assert_eq!(v["client_endpoint"]["ip"], "127.0.0.1");
        assert_eq!(v["server_endpoint"]["port"], port);
        assert_eq!(v["client"], format!("127.0.0.1:{cport}"));
    }
    for w in conn.windows(2) {
        let seq = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}: {v}")) as u32;
        let bytes = |v: &Value, k: &str| v[k].as_u64().unwrap() as u32;
        assert_eq!(
            seq(w[1], "req_tcp_seq"),
            seq(w[0], "req_tcp_seq").wrapping_add(bytes(w[0], "req_bytes")),
            "request bytes are contiguous: {} then {}",
            w[0],
            w[1]
        );
        assert_eq!(
            seq(w[1], "resp_tcp_seq"),
            seq(w[0], "resp_tcp_seq").wrapping_add(bytes(w[0], "resp_bytes")),
            "response bytes are contiguous: {} then {}",
            w[0],
            w[1]
        );
    }
    let ab: Vec<_> = s.iter().filter(|v| v["model"] == "m-abort").collect();
    assert_eq!(ab.len(), 1);
    assert_eq!(ab[0]["outcome"], "client_abort", "{}", ab[0]);
    // The truncated request never completed: reported as a client abort, never as success.
    let trunc: Vec<_> = s.iter().filter(|v| v["status"] == 0).collect();
    assert!(
        trunc.iter().all(|v| v["outcome"] != "complete"),
        "{trunc:?}"
    );
}

/// Tenant labels: from a header with `--tenant-header`, from a body field with
/// `--tenant-field`, capped at `--tenant-max-values` distinct ones (later ones `_other`, counted).
#[test]
fn tenant_labels_from_a_header_or_a_body_field() {
    if !bpf_or_skip("tenant_labels_from_a_header_or_a_body_field") {
        return;
    }
    let mut srv = start_fixture("openai_server.py", &["--port", "0"]);
    let hello = srv.wait_for("server pid/port", T, |v| v.get("port").is_some());
    let (pid, port) = (
        hello["pid"].as_u64().unwrap().to_string(),
        hello["port"].as_u64().unwrap() as u16,
    );
    let send = |model: &str, body_user: &str, header: &str| {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"x"}}],"max_tokens":2,"user":"{body_user}"}}"#
        );
        c.write_all(post("/v1/chat/completions", &body, header).as_bytes())
            .unwrap();
        read_response(&mut c);
    };
    for (flag, name) in [
        ("--tenant-header", "x-tenant-id"),
        ("--tenant-field", "user"),
    ] {
        let mut probe = start_probe(&[
            "--pid",
            &pid,
            "--requests",
            flag,
            name,
            "--tenant-max-values",
            "2",
        ]);
        std::thread::sleep(Duration::from_millis(500));
        for (i, t) in ["acme", "beta", "gamma", "acme"].iter().enumerate() {
            send(&format!("tn-{i}"), t, &format!("X-Tenant-Id: {t}\r\n"));
        }
        send("tn-none", "", "");
        probe.wait_for("the last request", T, |v| v["model"] == "tn-none");
        let tenant = |m: &str| {
            let r = probe.seen.iter().find(|v| v["model"] == m).unwrap();
            r["tenant"].as_str().map(str::to_string)
        };
        let got: Vec<_> = (0..4).map(|i| tenant(&format!("tn-{i}"))).collect();
        let want = ["acme", "beta", "_other", "acme"].map(|s| Some(s.to_string()));
        assert_eq!(got, want, "{flag}");
        assert_eq!(tenant("tn-none"), None, "{flag}: no value, no label");
    }
}

/// GET /metrics from node-probe's metrics listener.
fn scrape(addr: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}
