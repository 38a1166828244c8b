//! Bounded decoding, measured on the `aggregator` binary: batches that would decode to far more
//! than they weigh on the wire (4 M empty requests in 8 MB), and one over the message limit, are
//! refused with the aggregator's memory growing less than 64 MB each; 16 such streams at once
//! stay under 512 MB. Growth is the peak resident set (VmHWM, reset through `clear_refs` before
//! each step) minus the resident set before it.
use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inferscope_proto::v1::Ack;
use prost::Message as _;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Status;

const MB: u64 = 1 << 20;

fn ch_url() -> String {
    std::env::var("INFERSCOPE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Sends pre-encoded messages as they are; decodes acks.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct AckDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use prost::bytes::BufMut as _;
        buf.put_slice(&item);
        Ok(())
    }
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl Decoder for AckDecoder {
    type Item = Ack;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Ack>, Status> {
        Ack::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Ack;
    type Encoder = RawEncoder;
    type Decoder = AckDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> AckDecoder {
        AckDecoder
    }
}

/// A `Batch` on the wire: one resource holding `n` empty requests (2 bytes each).
fn empty_requests(n: usize) -> Vec<u8> {
    let mut rd = Vec::with_capacity(2 * n);
    for _ in 0..n {
        rd.extend_from_slice(&[0x12, 0x00]);
    }
    let mut wire = inferscope_proto::v1::Batch {
        node_id: "n".into(),
        boot_id: "b".into(),
        sequence: 1,
        ..Default::default()
    }
    .encode_to_vec();
    wire.push(0x22);
    prost::encoding::encode_varint(rd.len() as u64, &mut wire);
    wire.extend_from_slice(&rd);
    wire
}

/// Sends `msg` on a new Export stream; the status the stream ends with.
async fn send(addr: SocketAddr, msg: Vec<u8>) -> Status {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(ch).max_encoding_message_size(usize::MAX);
    grpc.ready().await.unwrap();
    let req = tonic::Request::new(tokio_stream::iter(vec![msg]));
    let path = PathAndQuery::from_static("/inferscope.v1.Ingest/Export");
    match grpc.streaming(req, path, RawCodec).await {
        Err(s) => s,
        Ok(resp) => match resp.into_inner().message().await {
            Ok(Some(a)) => panic!("acknowledged: {a:?}"),
            Ok(None) => panic!("stream ended without a status"),
            Err(s) => s,
        },
    }
}

fn status_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// Resets the peak RSS; returns the current RSS in bytes.
fn reset_peak(pid: u32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    status_kb(pid, "VmRSS:") * 1024
}

fn peak(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:") * 1024
}

struct Aggregator(Child);

impl Drop for Aggregator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::Write as _;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amplifying_batches_are_refused_in_bounded_memory() {
    let ping = Command::new("curl")
        .args(["-sf", &format!("{}/ping", ch_url())])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ping {
        assert!(
            std::env::var("INFERSCOPE_REQUIRE_BPF").as_deref() != Ok("1"),
            "ClickHouse at {} is required (INFERSCOPE_REQUIRE_BPF=1)",
            ch_url()
        );
        eprintln!("SKIPPED: ClickHouse not reachable at {}", ch_url());
        return;
    }
    let (grpc, http) = (free_addr(), free_addr());
    let db = format!("test_decode_bound_{}", std::process::id());
    let child = Command::new(env!("CARGO_BIN_EXE_aggregator"))
        .args([
            "--grpc-listen",
            &grpc.to_string(),
            "--http-listen",
            &http.to_string(),
        ])
        .args(["--clickhouse-url", &ch_url(), "--database", &db])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agg = Aggregator(child);
    let pid = agg.0.id();
    let t0 = Instant::now();
    while get(http, "/metrics").is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "aggregator did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 4 M empty requests: 8 MB on the wire.
    let msg = empty_requests(4_000_000);
    assert_eq!(msg.len() as u64 / MB, 7);
    let before = reset_peak(pid);
    let s = send(grpc, msg.clone()).await;
    let grew = peak(pid).saturating_sub(before);
    eprintln!(
        "8 MB batch of 4 M empty requests: {:?}, aggregator grew {} MB",
        s.code(),
        grew / MB
    );
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert!(s.message().starts_with("batch_too_large:"), "{s:?}");
    assert!(grew < 64 * MB, "grew {} MB", grew / MB);

    // Over the message limit (16 MiB): refused by size.
    let big = empty_requests(16_000_000);
    let before = reset_peak(pid);
    let s = send(grpc, big).await;
    let grew = peak(pid).saturating_sub(before);
    assert_ne!(s.code(), tonic::Code::Ok, "{s:?}");
    eprintln!(
        "32 MiB batch: refused ({:?}), aggregator grew {} MB",
        s.code(),
        grew / MB
    );
    assert!(grew < 64 * MB, "grew {} MB", grew / MB);

    // 16 streams at once.
    let before = reset_peak(pid);
    let all: Vec<_> = (0..16)
        .map(|_| tokio::spawn(send(grpc, msg.clone())))
        .collect();
    for h in all {
        let s = h.await.unwrap();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    }
    let total = peak(pid);
    eprintln!(
        "16 such streams at once: all refused, aggregator peak {} MB (grew {} MB)",
        total / MB,
        total.saturating_sub(before) / MB
    );
    assert!(total < 512 * MB, "peak {} MB", total / MB);

    let metrics = get(http, "/metrics").unwrap();
    assert!(
        metrics.contains("inferscope_batches_rejected_total{reason=\"batch_too_large\"} 17"),
        "{metrics}"
    );
    drop(agg);
    let _ = Command::new("curl")
        .args([
            "-sf",
            &ch_url(),
            "--data-binary",
            &format!("DROP DATABASE IF EXISTS {db}"),
        ])
        .output();
}
