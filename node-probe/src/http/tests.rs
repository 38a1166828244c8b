use super::*;

fn rd(c: &mut HttpConn, ts: u64, data: &[u8]) {
    c.on_read(Bytes {
        ts_ns: ts,
        total: data.len(),
        captured: data,
        seq: Some(1000),
    });
}

fn wr(c: &mut HttpConn, ts: u64, data: &[u8]) -> Vec<Exchange> {
    let mut out = Vec::new();
    c.on_write(
        Bytes {
            ts_ns: ts,
            total: data.len(),
            captured: data,
            seq: Some(5000),
        },
        &mut out,
    );
    out
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nX-Request-Id: abc\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n";

fn chunk(s: &str) -> Vec<u8> {
    format!("{:x}\r\n{s}\r\n", s.len()).into_bytes()
}

#[test]
fn streamed_completion() {
    let mut c = HttpConn::new();
    let req = post(
        "/v1/completions",
        r#"{"model":"tiny-llm","prompt":"hi","stream":true}"#,
    );
    rd(&mut c, 10, &req[..20]);
    rd(&mut c, 11, &req[20..]);
    assert!(wr(&mut c, 20, SSE_HEAD).is_empty());
    for (i, t) in [30u64, 40, 55].iter().enumerate() {
        let ev = format!("data: {{\"id\":\"cmpl-abc\",\"choices\":[{{\"text\":\"t{i}\"}}]}}\n\n");
        assert!(wr(&mut c, *t, &chunk(&ev)).is_empty());
    }
    assert!(wr(&mut c, 60, &chunk("data: [DONE]\n\n")).is_empty());
    let out = wr(&mut c, 61, b"0\r\n\r\n");
    assert_eq!(out.len(), 1);
    let e = &out[0];
    assert_eq!(
        (e.method.as_str(), e.path.as_str(), e.status),
        ("POST", "/v1/completions", Some(200))
    );
    assert_eq!(e.model.as_deref(), Some("tiny-llm"));
    assert_eq!(e.stream_requested, Some(true));
    assert_eq!(e.response_id.as_deref(), Some("cmpl-abc"));
    assert_eq!(e.x_request_id.as_deref(), Some("abc"));
    assert!(e.traceparent.as_deref().unwrap().starts_with("00-0af7"));
    assert_eq!(
        (e.req_first_read_ns, e.req_done_ns, e.req_first_seq),
        (10, 11, Some(1000))
    );
    assert_eq!(e.req_bytes, req.len() as u64);
    assert_eq!(e.chunks, 3);
    assert_eq!(e.chunk_ns, [30, 40, 55]);
    assert_eq!((e.done_marker, e.done_ns), (true, Some(60)));
    assert_eq!((e.resp_first_ns, e.resp_last_ns), (Some(20), Some(61)));
    assert_eq!(e.outcome, Some(Outcome::Complete));
    assert!(c.idle());
}

#[test]
fn keep_alive_and_pipelining_with_content_length() {
    let mut c = HttpConn::new();
    let a = post("/v1/embeddings", r#"{"model":"e","input":"x"}"#);
    let b = post("/v1/completions", r#"{"model":"m2","prompt":"y"}"#);
    let mut both = a.clone();
    both.extend_from_slice(&b);
    rd(&mut c, 5, &both);
    let r1 = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"id\":\"e1\"}";
    let r2 = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n{}";
    let mut w = r1.to_vec();
    w.extend_from_slice(r2);
    let out = wr(&mut c, 9, &w);
    assert_eq!(out.len(), 2);
    assert_eq!(
        (
            out[0].path.as_str(),
            out[0].status,
            out[0].response_id.as_deref()
        ),
        ("/v1/embeddings", Some(200), Some("e1"))
    );
    assert_eq!(
        (out[1].model.as_deref(), out[1].status),
        (Some("m2"), Some(500))
    );
    assert_eq!(out[0].req_bytes, a.len() as u64);
    assert_eq!(out[1].req_bytes, b.len() as u64);
    assert_eq!(out[1].req_first_seq, Some(1000 + a.len() as u32));
    // Both responses in one write: the second starts where the first ends.
    assert_eq!(out[0].resp_first_seq, Some(5000));
    assert_eq!(out[1].resp_first_seq, Some(5000 + r1.len() as u32));
    assert!(c.idle());
    // the connection keeps working
    rd(&mut c, 20, b"GET /health HTTP/1.1\r\n\r\n");
    let out = wr(&mut c, 21, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(out[0].path, "/health");
}

#[test]
fn client_abort_mid_stream() {
    let mut c = HttpConn::new();
    rd(
        &mut c,
        1,
        &post("/v1/chat/completions", r#"{"model":"m","stream":true}"#),
    );
    wr(&mut c, 2, SSE_HEAD);
    wr(
        &mut c,
        3,
        &chunk("data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"),
    );
    c.on_client_eof(4);
    let mut out = Vec::new();
    c.on_close(5, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].outcome, Some(Outcome::ClientAbort));
    assert_eq!(out[0].chunks, 1);
    assert_eq!(out[0].response_id.as_deref(), Some("chatcmpl-1"));
}

#[test]
fn truncated_capture_counts_bytes_and_resyncs_at_chunk_boundaries() {
    let mut c = HttpConn::new();
    rd(&mut c, 1, &post("/v1/completions", r#"{"model":"m"}"#));
    wr(&mut c, 2, SSE_HEAD);
    // a long SSE event of which only 10 bytes were captured; framing of the next chunk is seen
    let big = chunk(&format!("data: {}\n\n", "x".repeat(5000)));
    let mut out = Vec::new();
    c.on_write(
        Bytes {
            ts_ns: 3,
            total: big.len(),
            captured: &big[..12],
            seq: None,
        },
        &mut out,
    );
    wr(&mut c, 4, &chunk(TEXT_EVENT));
    wr(&mut c, 5, &chunk("data: [DONE]\n\n"));
    let out = wr(&mut c, 6, b"0\r\n\r\n");
    assert_eq!(out.len(), 1);
    let e = &out[0];
    assert_eq!(e.chunks, 2, "both content events counted");
    assert_eq!(e.chunk_ns, [3, 4]);
    // The cut event's text is unknown: the whole one is the first with visible text.
    assert_eq!(e.first_text_ns, Some(4));
    assert!(e.done_marker);
    assert_eq!(
        e.resp_bytes,
        (SSE_HEAD.len() + big.len() + chunk(TEXT_EVENT).len() + chunk("data: [DONE]\n\n").len() + 5)
            as u64
    );
    assert_eq!(e.gave_up, None);
}

#[test]
fn head_not_captured_gives_up_with_reason() {
    let mut c = HttpConn::new();
    let req = post("/v1/completions", "{}");
    c.on_read(Bytes {
        ts_ns: 1,
        total: req.len(),
        captured: &req[..10],
        seq: None,
    });
    assert_eq!(c.gave_up, Some("request head not captured"));
    let mut out = Vec::new();
    c.on_close(2, &mut out);
    assert!(out.is_empty(), "no method parsed: nothing to report");
}

#[test]
fn garbage_and_malformed_input_never_panics() {
    let inputs: [&[u8]; 6] = [
        b"\x00\x01\x02\xff\r\n\r\n",
        b"GET\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\nxx",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"\r\n\r\n\r\n",
    ];
    for inp in inputs {
        let mut c = HttpConn::new();
        rd(&mut c, 1, inp);
        wr(&mut c, 2, inp);
        wr(
            &mut c,
            3,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nqq\r\n",
        );
        let mut out = Vec::new();
        c.on_close(4, &mut out);
    }
    // random bytes
    let mut x: u64 = 42;
    for _ in 0..300 {
        let mut c = HttpConn::new();
        let mut out = Vec::new();
        for _ in 0..20 {
            let mut buf = [0u8; 64];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = (x % 7) as u8 + b'\n';
            }
            let total = (x % 200) as usize;
            let cap = total.min(64);
            if x.is_multiple_of(2) {
                c.on_read(Bytes {
                    ts_ns: 1,
                    total,
                    captured: &buf[..cap],
                    seq: None,
                });
            } else {
                c.on_write(
                    Bytes {
                        ts_ns: 1,
                        total,
                        captured: &buf[..cap],
                        seq: None,
                    },
                    &mut out,
                );
            }
        }
        c.on_close(9, &mut out);
    }
}

#[test]
fn request_split_byte_by_byte_and_chunked_request_body() {
    let mut c = HttpConn::new();
    let req = b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"model\r\n8\r\n\":\"abc\"}\r\n0\r\n\r\n";
    for (i, b) in req.iter().enumerate() {
        rd(&mut c, i as u64, std::slice::from_ref(b));
    }
    let out = wr(
        &mut c,
        500,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].model.as_deref(), Some("abc"));
    assert_eq!(out[0].req_bytes, req.len() as u64);
    assert_eq!(out[0].req_first_read_ns, 0);
}

#[test]
fn response_until_close_and_100_continue() {
    let mut c = HttpConn::new();
    rd(&mut c, 1, b"POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    wr(&mut c, 2, b"HTTP/1.1 100 Continue\r\n\r\n");
    wr(&mut c, 3, b"HTTP/1.0 200 OK\r\n\r\n{\"id\":\"z\"}");
    let mut out = Vec::new();
    c.on_close(4, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].status, out[0].outcome),
        (Some(200), Some(Outcome::Complete))
    );
    assert_eq!(out[0].response_id.as_deref(), Some("z"));
}

#[test]
fn unsolicited_bytes_are_counted() {
    let mut c = HttpConn::new();
    wr(&mut c, 1, b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(c.unsolicited_bytes, 19);
}

#[test]
fn unanswered_request_does_not_inherit_the_previous_response_id() {
    let mut c = HttpConn::new();
    rd(&mut c, 1, &post("/v1/chat/completions", r#"{"model":"m"}"#));
    let out = wr(
        &mut c,
        2,
        b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{\"id\":\"chatcmpl-A\"}\n",
    );
    assert_eq!(out[0].response_id.as_deref(), Some("chatcmpl-A"));
    // B is read, then the client goes away before any response.
    rd(&mut c, 3, &post("/v1/chat/completions", r#"{"model":"m"}"#));
    c.on_client_eof(4);
    let mut out = Vec::new();
    c.on_close(5, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].outcome, Some(Outcome::ClientAbort));
    assert_eq!(out[0].response_id, None, "B never had a response");
}

#[test]
fn early_response_before_the_body_keeps_pairing() {
    let mut c = HttpConn::new();
    let body = "x".repeat(300);
    let a = format!(
        "POST /v1/completions HTTP/1.1\r\nContent-Length: 300\r\n\r\n{}",
        &body[..100]
    );
    rd(&mut c, 1, a.as_bytes());
    // The server refuses before reading the rest of the body.
    let out = wr(
        &mut c,
        2,
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].status, out[0].req_done_ns), (Some(401), 2));
    assert_eq!(c.early_responses, 1);
    // It still drains the body; the next request gets its own response.
    rd(&mut c, 3, &body.as_bytes()[100..]);
    rd(&mut c, 4, b"GET /v1/models HTTP/1.1\r\n\r\n");
    let out = wr(&mut c, 5, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]");
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].path.as_str(), out[0].status),
        ("/v1/models", Some(200))
    );
    assert_eq!(c.unsolicited_bytes, 0);
    assert!(c.idle());
}

#[test]
fn idle_connection_resumes_after_a_give_up() {
    let mut c = HttpConn::new();
    let req = post("/v1/completions", "{}");
    c.on_read(Bytes {
        ts_ns: 1,
        total: req.len(),
        captured: &[],
        seq: None,
    });
    assert_eq!(c.gave_up, Some("request head not captured"));
    // Garbage is still ignored (and counted) ...
    rd(&mut c, 2, b"\x00\x01garbage");
    assert_eq!(c.ignored_bytes, 9);
    // ... but the next request head on the idle connection is followed again.
    rd(&mut c, 3, &post("/v1/completions", r#"{"model":"m"}"#));
    let out = wr(&mut c, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].model.as_deref(), out[0].gave_up), (Some("m"), None));
    assert_eq!(c.resyncs, 1);
}

#[test]
fn chunked_request_ending_at_the_capture_boundary_gives_up_on_the_rest() {
    let mut c = HttpConn::new();
    let req = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
    let mut both = req.to_vec();
    both.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
    c.on_read(Bytes {
        ts_ns: 1,
        total: both.len(),
        captured: req,
        seq: None,
    });
    assert_eq!(c.gave_up, Some("pipelined request not captured"));
}

/// Found by the `http_conn` fuzz target: a response that began after following stopped had a
/// last write and no first one.
#[test]
fn response_after_give_up_has_a_first_write() {
    let mut c = HttpConn::new();
    let head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 27\r\n\r\n{\"mo";
    c.on_read(Bytes {
        ts_ns: 10,
        total: head.len() + 12_513,
        captured: head,
        seq: None,
    });
    let mut out = Vec::new();
    let garbage = b"t}rue}\x01z\x00\x00gsna/1.1 200 OK\r\nContentT\n\r\n\x00";
    for ts in [20, 30] {
        c.on_write(
            Bytes {
                ts_ns: ts,
                total: garbage.len() + 5_626,
                captured: garbage,
                seq: None,
            },
            &mut out,
        );
    }
    c.on_close(40, &mut out);
    assert!(!out.is_empty());
    for e in &out {
        if let Some(last) = e.resp_last_ns {
            assert!(e.resp_first_ns.is_some_and(|f| f <= last), "{e:?}");
        }
    }
}

/// A completion event with text.
const TEXT_EVENT: &str = "data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n";

/// Recorded stream shapes: a role-only first chat event (sent before any token exists) is not
/// the first token; an empty content string is a token but not visible text; a usage-only last
/// event is neither.
#[test]
fn role_only_and_empty_events_in_ttft_and_first_text() {
    let mut c = HttpConn::new();
    rd(
        &mut c,
        1,
        &post("/v1/chat/completions", r#"{"model":"m","stream":true}"#),
    );
    wr(&mut c, 2, SSE_HEAD);
    let events = [
        (
            10,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}"#,
        ),
        (
            20,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"content":""},"finish_reason":null}]}"#,
        ),
        (
            30,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"\u00e9t"},"finish_reason":null}]}"#,
        ),
        (
            40,
            r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"stop"}]}"#,
        ),
        (
            50,
            r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":3}}"#,
        ),
    ];
    for (ts, ev) in events {
        wr(&mut c, ts, &chunk(&format!("data: {ev}\n\n")));
    }
    wr(&mut c, 60, &chunk("data: [DONE]\n\n"));
    let out = wr(&mut c, 61, b"0\r\n\r\n");
    assert_eq!(out.len(), 1);
    let e = &out[0];
    assert_eq!(e.chunks, 3, "three token events");
    assert_eq!(e.chunk_ns, [20, 30, 40]);
    assert_eq!(e.first_text_ns, Some(30));
    assert!(e.done_marker);
    let three = Usage {
        prompt_tokens: Some(3),
        completion_tokens: Some(3),
    };
    assert_eq!(e.usage, Some(three), "the usage-only last event's counts");
}

/// A non-streamed body's `usage`, on a keep-alive connection: the next response has its own
/// (none here), and a body whose end was not captured has none.
#[test]
fn usage_of_a_body_is_its_own_and_only_when_captured() {
    let mut c = HttpConn::new();
    let body = r#"{"id":"cmpl-1","choices":[{"text":"hi"}],"usage":{"prompt_tokens":9,"total_tokens":17,"completion_tokens":8}}"#;
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    rd(&mut c, 1, &post("/v1/completions", "{}"));
    let e = wr(&mut c, 2, resp.as_bytes()).pop().expect("exchange");
    let want = Usage {
        prompt_tokens: Some(9),
        completion_tokens: Some(8),
    };
    assert_eq!(e.usage, Some(want));
    rd(&mut c, 3, &post("/v1/completions", "{}"));
    let e = wr(&mut c, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        .pop()
        .expect("exchange");
    assert_eq!(e.usage, None, "not inherited");
    // Only the first 60 bytes of the write captured: the usage object is not.
    rd(&mut c, 5, &post("/v1/completions", "{}"));
    let mut out = Vec::new();
    c.on_write(
        Bytes {
            ts_ns: 6,
            total: resp.len(),
            captured: &resp.as_bytes()[..60],
            seq: None,
        },
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].usage, None);
}

#[test]
fn tenant_from_a_header_or_a_body_field_only_when_configured() {
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
    let exchange = |c: &mut HttpConn, req: &[u8]| {
        rd(c, 10, req);
        wr(c, 20, answer).pop().expect("one exchange")
    };
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"user":"u-42"}"#;
    let mut req = post("/v1/chat/completions", body);
    // A header, any case; the split between reads does not matter for a body field.
    let with_header = String::from_utf8(req.clone())
        .unwrap()
        .replace("Host: x\r\n", "Host: x\r\nX-Tenant-ID:  acme \r\n");
    let mut c = HttpConn::with_tenant(Some(TenantFrom::Header("x-tenant-id")));
    assert_eq!(
        exchange(&mut c, with_header.as_bytes()).tenant.as_deref(),
        Some("acme")
    );
    assert_eq!(exchange(&mut c, &req).tenant, None);
    let mut c = HttpConn::with_tenant(Some(TenantFrom::BodyField(b"user")));
    rd(&mut c, 5, &req[..req.len() - 8]);
    req.drain(..req.len() - 8);
    assert_eq!(exchange(&mut c, &req).tenant.as_deref(), Some("u-42"));
    // Off by default.
    let mut c = HttpConn::new();
    assert_eq!(exchange(&mut c, with_header.as_bytes()).tenant, None);
}
