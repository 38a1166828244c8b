//! Ingest against the real ClickHouse: batches are stored and acknowledged only after the insert,
//! resends are recognised, and bad or unauthenticated input is rejected with a clear status
//! while nothing already stored is lost.
use std::net::SocketAddr;
use std::time::Duration;

use inferscope_proto::v1::{ack::Status as AckStatus, ingest_client::IngestClient, Ack, Batch};
use tokio_stream::StreamExt;

mod common;
use common::ingest::*;

/// Sends raw bytes as gRPC messages on the Export method: for input that is not a valid
/// `Batch` at all (wrong wire types, garbage).
async fn send_raw(
    grpc: SocketAddr,
    token: &str,
    messages: Vec<Vec<u8>>,
) -> Result<Vec<Ack>, tonic::Status> {
    use prost::bytes::BufMut;
    use prost::Message;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    struct RawCodec;
    struct RawEnc;
    struct AckDec;
    impl Encoder for RawEnc {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for AckDec {
        type Item = Ack;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Ack>, tonic::Status> {
            Ack::decode(src)
                .map(Some)
                .map_err(|e| tonic::Status::internal(e.to_string()))
        }
    }
    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Ack;
        type Encoder = RawEnc;
        type Decoder = AckDec;
        fn encoder(&mut self) -> RawEnc {
            RawEnc
        }
        fn decoder(&mut self) -> AckDec {
            AckDec
        }
    }

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("ready");
    let mut req = tonic::Request::new(tokio_stream::iter(messages));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/inferscope.v1.Ingest/Export");
    let mut acks = client.streaming(req, path, RawCodec).await?.into_inner();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), acks.next()).await {
            Ok(Some(Ok(a))) => out.push(a),
            Ok(Some(Err(s))) => return Err(s),
            Ok(None) => return Ok(out),
            Err(_) => panic!("timed out waiting for the raw stream"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_dedups_and_rejects() {
    if !ch_available() {
        return;
    }
    let agg = Agg::start("ingest").await;
    let (db, grpc, http) = (agg.db.clone(), agg.grpc, agg.http);

    // Stored, acknowledged once per batch.
    let acks = send(grpc, Some("s3cret"), vec![batch(1, 50, 1), batch(2, 50, 1)])
        .await
        .unwrap();
    assert!(
        acks.iter().all(|a| a.status == AckStatus::Stored as i32),
        "{acks:?}"
    );
    assert_eq!(count(&db, "requests").await, 100);
    assert_eq!(count(&db, "spans").await, 100);

    // A resend is recognised: acknowledged, not stored twice.
    let acks = send(grpc, Some("s3cret"), vec![batch(2, 50, 1)])
        .await
        .unwrap();
    assert_eq!(acks[0].status, AckStatus::Duplicate as i32);
    assert_eq!(count(&db, "requests").await, 100);

    // Unauthenticated: a clear status, nothing stored.
    let e = send(grpc, None, vec![batch(3, 5, 2)]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("bearer token"), "{}", e.message());
    let e = send(grpc, Some("wrong"), vec![batch(3, 5, 2)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // Invalid batches: rejected with a reason; a good batch in the same stream still lands.
    let mut bad_id = batch(10, 3, 3);
    bad_id.resources[0].requests[1].trace_id = vec![1, 2, 3];
    let mut missing = batch(11, 3, 3);
    missing.node_id.clear();
    let mut bad_time = batch(12, 3, 3);
    bad_time.resources[0].spans[0].end_unix_ns = 1;
    let mut no_resource = batch(13, 3, 3);
    no_resource.resources[0].resource = None;
    let good = batch(14, 7, 4);
    let acks = send(
        grpc,
        Some("s3cret"),
        vec![bad_id, missing, bad_time, no_resource, good],
    )
    .await
    .unwrap();
    let by_seq = |s: u64| acks.iter().find(|a| a.sequence == s).cloned();
    for (seq, reason) in [
        (10, "bad_trace_id"),
        (12, "bad_timestamps"),
        (13, "missing_field"),
    ] {
        let a = by_seq(seq).unwrap();
        assert_eq!(a.status, AckStatus::Rejected as i32);
        assert!(a.message.starts_with(reason), "{seq}: {}", a.message);
    }
    // sequence 11 has no node id: rejected too (its ack carries sequence 11)
    assert_eq!(by_seq(11).unwrap().status, AckStatus::Rejected as i32);
    assert_eq!(by_seq(14).unwrap().status, AckStatus::Stored as i32);
    assert_eq!(count(&db, "requests").await, 107);

    // Randomly mangled batches (a small deterministic fuzz): never stored half, never a crash.
    let mut x: u64 = 0x2545f4914f6cdd1d;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut fuzz = Vec::new();
    for i in 0..40u64 {
        let mut b = batch(100 + i, 2, 5);
        match rnd() % 6 {
            0 => b.resources[0].requests[0].trace_id = vec![0; (rnd() % 40) as usize],
            1 => b.resources[0].spans[0].span_id = vec![1; (rnd() % 12) as usize],
            2 => b.resources[0].requests[0].start_unix_ns = rnd(),
            3 => b.resources[0].requests[0].path = "p".repeat((rnd() % 9000) as usize),
            4 => b.resources[0].requests[0].status = (rnd() % 100_000) as u32,
            _ => b.boot_id = "b".repeat((rnd() % 100) as usize),
        }
        fuzz.push(b);
    }
    let acks = send(grpc, Some("s3cret"), fuzz).await.unwrap();
    let stored = acks
        .iter()
        .filter(|a| a.status == AckStatus::Stored as i32)
        .count() as u64;
    assert_eq!(acks.len(), 40);
    assert!(acks
        .iter()
        .all(|a| a.status == AckStatus::Stored as i32 || a.status == AckStatus::Rejected as i32));
    assert_eq!(
        count(&db, "requests").await,
        107 + 2 * stored,
        "accepted whole or not at all"
    );

    // An oversized message: a clear status naming the limit, the server keeps serving.
    let big = batch(500, 40_000, 6);
    let e = send(grpc, Some("s3cret"), vec![big]).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{e}"
    );
    assert!(e.message().contains("limit"), "{e}");
    let acks = send(grpc, Some("s3cret"), vec![batch(501, 1, 7)])
        .await
        .unwrap();
    assert_eq!(acks[0].status, AckStatus::Stored as i32);

    // Not a Batch at all: a field with the wrong wire type, and garbage. The stream ends with a
    // clear status; nothing is stored; the server keeps serving.
    let before = count(&db, "requests").await;
    let wrong_type = vec![0x1a, 0x03, b'a', b'b', b'c']; // field 3 (sequence, varint) as bytes
    let garbage = vec![0xff, 0xff, 0xff, 0x0f, 0x00, 0x07, 0x13];
    for msg in [wrong_type, garbage] {
        let e = send_raw(grpc, "s3cret", vec![msg]).await.unwrap_err();
        assert!(
            matches!(
                e.code(),
                tonic::Code::Internal | tonic::Code::InvalidArgument
            ),
            "{e}"
        );
        assert!(e.message().to_lowercase().contains("decode"), "{e}");
    }
    assert_eq!(
        count(&db, "requests").await,
        before,
        "nothing stored from undecodable input"
    );
    let acks = send(grpc, Some("s3cret"), vec![batch(600, 2, 8)])
        .await
        .unwrap();
    assert_eq!(acks[0].status, AckStatus::Stored as i32);

    // Metrics reflect it.
    let metrics = ureq_get(&format!("http://{http}/metrics"));
    assert!(
        metrics.contains("inferscope_batches_duplicate_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("inferscope_batches_rejected_total{reason=\"bad_trace_id\"}"));
    assert!(metrics.contains("inferscope_unauthenticated_total 2"));

    agg.stop().await;
}

/// A commit that stores some tables and fails on a later one is answered RETRY; the resend
/// writes only the tables still missing, so no row is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_between_table_commits_stores_nothing_twice() {
    if !ch_available() {
        return;
    }
    let agg = Agg::start("partial").await;
    let (db, grpc) = (agg.db.clone(), agg.grpc);
    let acks = send(grpc, Some("s3cret"), vec![batch(1, 20, 1)])
        .await
        .unwrap();
    assert_eq!(acks[0].status, AckStatus::Stored as i32, "{acks:?}");

    // `requests` goes away: steps and spans of the next batch commit, requests fail.
    sql(&format!("RENAME TABLE {db}.requests TO {db}.requests_away")).await;
    let acks = send(grpc, Some("s3cret"), vec![batch(2, 30, 1)])
        .await
        .unwrap();
    assert_eq!(acks[0].status, AckStatus::Retry as i32, "{acks:?}");
    assert_eq!(count(&db, "spans").await, 50, "spans of batch 2 committed");

    // Back again; the node resends (twice, as a node whose ack was lost would).
    sql(&format!("RENAME TABLE {db}.requests_away TO {db}.requests")).await;
    send_twice(grpc, batch(2, 30, 1)).await;
    assert_eq!(count(&db, "requests").await, 50, "requests once each");
    assert_eq!(count(&db, "spans").await, 50, "spans once each");
    assert_eq!(count(&db, "ingested_batches").await, 2);
    // The counters say what is stored, whichever commit stored it.
    let m = ureq_get(&format!("http://{}/metrics", agg.http));
    assert!(m.contains("inferscope_spans_stored_total 50\n"), "{m}");
    assert!(m.contains("inferscope_requests_stored_total 50\n"), "{m}");
    // So do the latency histograms: the resends added nothing.
    let d = r#"gen_ai_server_request_duration_seconds_count{gen_ai_request_model="m",node="node-a",engine="vllm"} 50"#;
    assert!(m.contains(d), "{m}");
    agg.stop().await;
}

/// Stopping the aggregator while a node keeps its stream open: queued batches are answered,
/// the stream ends with UNAVAILABLE, and the server exits promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_connected_node_is_prompt() {
    if !ch_available() {
        return;
    }
    let agg = Agg::start("shutdown").await;
    let mut client = IngestClient::connect(format!("http://{}", agg.grpc))
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(4);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    let mut acks = client.export(req).await.unwrap().into_inner();
    tx.send(batch(1, 5, 1)).await.unwrap();
    let a = tokio::time::timeout(Duration::from_secs(20), acks.next())
        .await
        .expect("ack in time")
        .expect("an ack")
        .expect("not an error");
    assert_eq!(a.status, AckStatus::Stored as i32);
    // `tx` stays open: the node is still connected.
    let t = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), agg.stop())
        .await
        .expect("the aggregator stops while a node is connected");
    let end = tokio::time::timeout(Duration::from_secs(5), acks.next())
        .await
        .expect("the stream ends");
    match end {
        Some(Err(s)) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s}"),
        None => {}
        Some(Ok(a)) => panic!("unexpected ack {a:?}"),
    }
    drop(tx);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// Batches waiting for storage are bounded by bytes, not only by count: beyond the budget they
/// are answered RETRY (counted), and stored once the node resends after the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_is_bounded_by_bytes() {
    if !ch_available() {
        return;
    }
    let agg = Agg::start_with("qbytes", |c| {
        c.max_message_bytes = 64 << 10;
        c.queue_bytes = 64 << 10;
        c.writer.period = Duration::from_secs(3);
    })
    .await;
    // ~20 KiB each: three fit in 64 KiB while the writer waits for its period, the rest do not.
    let batches: Vec<Batch> = (1..=6).map(|seq| batch(seq, 150, 3)).collect();
    let size = prost::Message::encoded_len(&batches[0]);
    assert!((16 << 10..32 << 10).contains(&size), "{size}");
    let acks = send(agg.grpc, Some("s3cret"), batches.clone())
        .await
        .unwrap();
    let retried: Vec<u64> = acks
        .iter()
        .filter(|a| a.status == AckStatus::Retry as i32)
        .map(|a| a.sequence)
        .collect();
    assert!(!retried.is_empty(), "{acks:?}");
    assert!(
        acks.iter()
            .filter(|a| a.status == AckStatus::Retry as i32)
            .all(|a| a.message.contains("queue full")),
        "{acks:?}"
    );
    // Resent (as a node does), they are all stored in the end.
    let mut total_retried = retried.len();
    let mut left: Vec<Batch> = batches
        .into_iter()
        .filter(|b| retried.contains(&b.sequence))
        .collect();
    for _ in 0..10 {
        if left.is_empty() {
            break;
        }
        let acks = send(agg.grpc, Some("s3cret"), left.clone()).await.unwrap();
        let again: Vec<u64> = acks
            .iter()
            .filter(|a| a.status == AckStatus::Retry as i32)
            .map(|a| a.sequence)
            .collect();
        assert!(
            acks.iter()
                .all(|a| a.status == AckStatus::Stored as i32 || again.contains(&a.sequence)),
            "{acks:?}"
        );
        total_retried += again.len();
        left.retain(|b| again.contains(&b.sequence));
    }
    assert!(left.is_empty(), "never stored: {left:?}");
    assert_eq!(count(&agg.db, "requests").await, 6 * 150);
    let m = ureq_get(&format!("http://{}/metrics", agg.http));
    assert!(
        m.contains(&format!(
            "inferscope_queue_full_drops_total {total_retried}\n"
        )),
        "{m}"
    );
    agg.stop().await;
}

/// Streams beyond `max_streams` are refused with RESOURCE_EXHAUSTED (counted); a slot frees when
/// a stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_cap_are_refused() {
    if !ch_available() {
        return;
    }
    let agg = Agg::start_with("streams", |c| c.max_streams = 1).await;
    let open = |n: u8| {
        let grpc = agg.grpc;
        async move {
            let mut client = IngestClient::connect(format!("http://{grpc}"))
                .await
                .expect("connect");
            let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(4);
            let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            req.metadata_mut()
                .insert("authorization", "Bearer s3cret".parse().unwrap());
            let r = client.export(req).await;
            if let Ok(resp) = r {
                tx.send(batch(u64::from(n), 1, n)).await.unwrap();
                let mut acks = resp.into_inner();
                let first = tokio::time::timeout(Duration::from_secs(20), acks.next())
                    .await
                    .expect("answer in time");
                return (Some((tx, acks)), first.map(|r| r.map(|a| a.status)));
            }
            (None, Some(r.map(|_| 0)))
        }
    };
    let (held, first) = open(1).await;
    assert!(
        matches!(first, Some(Ok(s)) if s == AckStatus::Stored as i32),
        "{first:?}"
    );
    let (_, second) = open(2).await;
    match second {
        Some(Err(s)) => {
            assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s}");
            assert!(s.message().contains("too many ingest streams"), "{s}");
        }
        other => panic!("second stream not refused: {other:?}"),
    }
    let metrics = ureq_get(&format!("http://{}/metrics", agg.http));
    assert!(
        metrics.contains("inferscope_batches_rejected_total{reason=\"too_many_streams\"} 1"),
        "{metrics}"
    );
    drop(held);
    // The slot frees once the first stream's task ends.
    let t = std::time::Instant::now();
    loop {
        if let (_, Some(Ok(s))) = open(3).await {
            assert_eq!(s, AckStatus::Stored as i32);
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "slot never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agg.stop().await;
}

/// A per-node token sends that node's batches only: another node's name (or batch ids) is
/// refused as `node_mismatch` and claims nothing; the rightful node's batch is then stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_tokens_bind_batches_to_their_node() {
    if !ch_available() {
        return;
    }
    let agg = Agg::start("node_tokens").await;
    // node-b's token sending node-a's batch 1 (its ids).
    let acks = send(agg.grpc, Some("tok-b"), vec![batch(1, 2, 3)])
        .await
        .unwrap();
    assert_eq!(acks[0].status, AckStatus::Rejected as i32, "{acks:?}");
    assert!(acks[0].message.starts_with("node_mismatch"), "{acks:?}");
    // A resource naming another node inside a batch of its own name.
    let mut b = batch(2, 1, 3);
    b.node_id = "node-b".into();
    let acks = send(agg.grpc, Some("tok-b"), vec![b]).await.unwrap();
    assert_eq!(acks[0].status, AckStatus::Rejected as i32, "{acks:?}");
    // node-a's own token: batch 1 is stored (nothing was claimed by node-b's attempt).
    let acks = send(agg.grpc, Some("tok-a"), vec![batch(1, 2, 3)])
        .await
        .unwrap();
    assert_eq!(acks[0].status, AckStatus::Stored as i32, "{acks:?}");
    // Unknown token.
    let e = send(agg.grpc, Some("tok-x"), vec![batch(3, 1, 3)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // An empty batch is refused.
    let mut empty = batch(4, 0, 3);
    empty.resources[0].spans.clear();
    let acks = send(agg.grpc, Some("tok-a"), vec![empty]).await.unwrap();
    assert!(acks[0].message.starts_with("empty_batch"), "{acks:?}");
    let metrics = ureq_get(&format!("http://{}/metrics", agg.http));
    assert!(metrics.contains("reason=\"node_mismatch\"} 2"), "{metrics}");
    agg.stop().await;
}

/// Status of a GET (curl), 0 when it could not connect.
fn http_status(url: &str) -> u16 {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "60",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Sends `batches` on one stream, one every `gap`; the time from each send to its ack, and
/// any ack that was not STORED.
async fn paced(
    grpc: SocketAddr,
    batches: Vec<Batch>,
    gap: Duration,
) -> (Vec<Duration>, Vec<(u64, i32)>) {
    let mut client = IngestClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    let n = batches.len();
    let sent = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let sent_in = std::sync::Arc::clone(&sent);
    let stream = tokio_stream::iter(batches).then(move |b| {
        let sent = std::sync::Arc::clone(&sent_in);
        async move {
            tokio::time::sleep(gap).await;
            sent.lock()
                .unwrap()
                .insert(b.sequence, std::time::Instant::now());
            b
        }
    });
    let mut req = tonic::Request::new(stream);
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    let mut acks = client.export(req).await.expect("export").into_inner();
    let (mut lat, mut bad) = (Vec::new(), Vec::new());
    while lat.len() + bad.len() < n {
        let a = match tokio::time::timeout(Duration::from_secs(60), acks.next()).await {
            Ok(Some(Ok(a))) => a,
            other => panic!("ack stream ended: {other:?}"),
        };
        let t0 = sent.lock().unwrap().get(&a.sequence).copied();
        if a.status == AckStatus::Stored as i32 {
            lat.push(t0.map_or(Duration::ZERO, |t| t.elapsed()));
        } else {
            bad.push((a.sequence, a.status));
        }
    }
    (lat, bad)
}

fn pctl(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// A burst of month-wide exact-quantile breakdowns over millions of rows, from more clients than
/// the query cap, while a node keeps sending: every batch is stored at its first attempt, the
/// queries beyond the cap are answered 429, and the others succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn month_wide_query_burst_does_not_fail_inserts() {
    if !ch_available() {
        return;
    }
    let rows: u64 = std::env::var("INFERSCOPE_BURST_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000_000);
    let agg = Agg::start("burst").await;
    let db = agg.db.clone();
    // Rows over the last 30 days, generated server-side.
    let now_s = now_ns() / 1_000_000_000;
    let month = 30 * 86_400u64;
    let step_ns = month * 1_000_000_000 / rows;
    let t = std::time::Instant::now();
    sql(&format!(
        "INSERT INTO {db}.requests (start, start_unix_ns, end_unix_ns, trace_id, node, pid, engine, model, method, path, status, outcome, stream, \
         e2e_ns, ttft_ns, tpot_ns, frontend_ns, queue_ns, prefill_ns, decode_ns, delivery_ns, chunks, engine_steps) \
         SELECT toDateTime(intDiv(s, 1000000000)), s, s + 100000000, lower(hex(sipHash128(toString(number)))), \
         concat('node-', toString(number % 4)), 1, 'vllm', 'month', 'POST', '/v1/completions', 200, 'complete', 1, \
         50000000 + (number * 7919) % 400000000, 10000000 + (number * 104729) % 90000000, 5000000, 2000000 + number % 3000000, \
         (number * 31) % 50000000, 3000000 + number % 7000000, 30000000 + (number * 13) % 300000000, 1000000 + number % 2000000, 32, 32 \
         FROM (SELECT number, ({now_s} - {month}) * 1000000000 + number * {step_ns} AS s FROM system.numbers LIMIT {rows})"
    ))
    .await;
    eprintln!(
        "burst: {rows} rows over 30 days generated in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Quiet: ack latency with no queries.
    let quiet: Vec<Batch> = (1..=10).map(|s| batch(s, 200, 9)).collect();
    let (mut quiet_lat, bad) = paced(agg.grpc, quiet, Duration::from_millis(200)).await;
    assert!(bad.is_empty(), "quiet: {bad:?}");

    // The burst: 24 clients × 2 month-wide breakdowns with exact quantiles, against a cap of 8.
    let url = format!(
        "http://{}/api/v1/breakdown?from={}&to={}&quantiles=0.5,0.9,0.99,0.999",
        agg.http,
        now_s - month - 60,
        now_s + 60
    );
    let burst_start = std::time::Instant::now();
    let clients: Vec<_> = (0..24)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || (0..2).map(|_| http_status(&url)).collect::<Vec<u16>>())
        })
        .collect();
    let during: Vec<Batch> = (11..=50).map(|s| batch(s, 200, 9)).collect();
    let (mut burst_lat, bad) = paced(agg.grpc, during, Duration::from_millis(200)).await;
    let statuses: Vec<u16> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    let burst_s = burst_start.elapsed().as_secs_f64();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let busy = statuses.iter().filter(|&&s| s == 429).count();
    let other: Vec<&u16> = statuses.iter().filter(|&&s| s != 200 && s != 429).collect();
    let line = format!(
        "query burst: {} queries in {burst_s:.1} s: {ok} answered, {busy} refused 429, others {other:?}; \
         ack latency quiet p50 {:?} max {:?}, during the burst p50 {:?} p99 {:?} max {:?}",
        statuses.len(),
        pctl(&mut quiet_lat, 0.5),
        pctl(&mut quiet_lat, 1.0),
        pctl(&mut burst_lat, 0.5),
        pctl(&mut burst_lat, 0.99),
        pctl(&mut burst_lat, 1.0),
    );
    eprintln!("{line}");
    if let Ok(p) = std::env::var("INFERSCOPE_FIGURES") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    assert!(
        bad.is_empty(),
        "inserts failed or were retried during the burst: {bad:?}"
    );
    assert_eq!(burst_lat.len(), 40);
    assert!(ok >= 1, "no query answered: {statuses:?}");
    assert!(busy >= 1, "the cap never refused: {statuses:?}");
    assert!(other.is_empty(), "queries failed otherwise: {other:?}");
    let stored = count(&db, "requests").await;
    assert_eq!(stored, rows + 50 * 200);
    agg.stop().await;
}

/// A Python with `prometheus_client` (the reference client's text parser): `INFERSCOPE_PROM_PYTHON`,
/// else the real engine's venv (vLLM depends on it), else the system one.
/// The latency histograms on `/metrics` carry the same per-request figures as the `requests`
/// table: per model, the count and sum of TTFT (streamed 2xx), TPOT, E2E and the queue phase
/// equal ClickHouse's, read through the reference Prometheus text parser; a resent batch is not
/// counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_histograms_agree_with_clickhouse() {
    if !ch_available() {
        return;
    }
    let Some(python) = prometheus_python() else {
        assert!(
            std::env::var("INFERSCOPE_REQUIRE_BPF").as_deref() != Ok("1"),
            "no Python with prometheus_client (set INFERSCOPE_PROM_PYTHON)"
        );
        eprintln!("SKIPPED latency_histograms_agree_with_clickhouse: no prometheus_client");
        return;
    };
    let agg = Agg::start("latency").await;
    let mut b = batch(1, 60, 4);
    for (i, r) in b.resources[0].requests.iter_mut().enumerate() {
        let i = i as u64;
        r.model = if i.is_multiple_of(3) {
            "m-a".into()
        } else {
            "m-b\"q".into()
        };
        r.stream = i.is_multiple_of(2);
        r.status = if i % 10 == 9 { 500 } else { 200 };
        r.ttft_ns = 1_000_000 + i * 7_300_000 % 900_000_000;
        r.e2e_ns = r.ttft_ns + i * 1_100_000;
        r.start_unix_ns = r.end_unix_ns - r.e2e_ns;
        r.tpot_ns = r.stream.then_some(5_000_000 + i * 900_000);
        r.queue_ns = (!i.is_multiple_of(4)).then_some(i * 2_000_000);
    }
    send_twice(agg.grpc, b).await;
    let got =
        parse_with_prometheus_client(&python, &ureq_get(&format!("http://{}/metrics", agg.http)));
    let q = format!(
        "SELECT model, countIf(stream = 1 AND status >= 200 AND status < 300), \
         sumIf(ttft_ns, stream = 1 AND status >= 200 AND status < 300), count(tpot_ns), \
         sum(assumeNotNull(tpot_ns)), count(), sum(e2e_ns), count(queue_ns), \
         sum(assumeNotNull(queue_ns)) FROM {}.requests GROUP BY model ORDER BY model \
         FORMAT TabSeparated",
        agg.db
    );
    let out = std::process::Command::new("curl")
        .args(["-sf", "--data-binary", &q, &ch_url()])
        .output()
        .unwrap();
    let rows = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(rows.lines().count(), 2, "{rows}");
    for line in rows.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        // TabSeparated escapes the quote as is: the model name comes back unchanged.
        let model = f[0].replace("\\\"", "\"");
        let n = |i: usize| f[i].parse::<f64>().unwrap();
        let lbl = |phase: Option<&str>| {
            let mut l = format!("engine=vllm,gen_ai_request_model={model},node=node-a");
            if let Some(p) = phase {
                l.push_str(&format!(",phase={p}"));
            }
            l
        };
        for (name, phase, count, sum) in [
            (
                "gen_ai_server_time_to_first_token_seconds",
                None,
                n(1),
                n(2),
            ),
            (
                "gen_ai_server_time_per_output_token_seconds",
                None,
                n(3),
                n(4),
            ),
            ("gen_ai_server_request_duration_seconds", None, n(5), n(6)),
            (
                "inferscope_request_phase_seconds",
                Some("queue"),
                n(7),
                n(8),
            ),
        ] {
            let key = |s: &str| format!("{name}_{s}{{{}}}", lbl(phase));
            let c = got.get(&key("count")).copied();
            let s = got.get(&key("sum")).copied();
            assert_eq!(c, Some(count), "{} in {got:?}", key("count"));
            let s = s.unwrap_or(f64::NAN);
            assert!(
                (s - sum / 1e9).abs() < 1e-6,
                "{}: {s} vs {}",
                key("sum"),
                sum / 1e9
            );
            let phase_l = phase.map(|p| format!(",phase={p}")).unwrap_or_default();
            let inf = format!(
                "{name}_bucket{{engine=vllm,gen_ai_request_model={model},le=+Inf,node=node-a{phase_l}}}"
            );
            assert_eq!(got.get(&inf).copied(), Some(count), "{inf}");
        }
    }
    agg.stop().await;
}
