//! Synthetic ingest batches and a gRPC sender, shared by the ingest benchmarks.
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use inferscope_proto::v1::{
    ack::Status as AckStatus, ingest_client::IngestClient, Batch, KeyValue, Request, Resource,
    ResourceData, Span,
};
use tokio_stream::StreamExt;

/// How much a synthetic run sends.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Batches.
    pub batches: u64,
    /// Requests per batch.
    pub requests_per_batch: u64,
    /// Spans per request.
    pub spans_per_request: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `shape.batches` batches of synthetic requests, each with its spans (what node-probe sends
/// for a vLLM request), on node `bench-node` under boot id `boot`.
pub fn synthetic_batches(shape: Shape, boot: &str) -> Vec<Batch> {
    let a = shape;
    let base = now_ns() - 600_000_000_000;
    (1..=a.batches)
        .map(|seq| {
            let mut requests = Vec::new();
            let mut spans = Vec::new();
            for i in 0..a.requests_per_batch {
                let n = seq * 1_000_000 + i;
                let mut trace = [0u8; 16];
                trace[..8].copy_from_slice(&n.to_be_bytes());
                trace[8..].copy_from_slice(&(n ^ 0x5bd1_e995).to_be_bytes());
                let start = base + n % 500_000_000_000;
                let e2e = 50_000_000 + (n * 7919) % 400_000_000;
                requests.push(Request {
                    trace_id: trace.to_vec(),
                    method: "POST".into(),
                    path: "/v1/completions".into(),
                    status: 200,
                    outcome: "complete".into(),
                    model: "bench-model".into(),
                    stream: true,
                    start_unix_ns: start,
                    end_unix_ns: start + e2e,
                    e2e_ns: e2e,
                    ttft_ns: e2e / 5,
                    tpot_ns: Some(5_000_000),
                    frontend_ns: Some(e2e / 20),
                    queue_ns: Some(e2e / 10),
                    prefill_ns: Some(e2e / 20),
                    decode_ns: Some(e2e * 7 / 10),
                    delivery_ns: Some(e2e / 10),
                    chunks: 32,
                    engine_steps: 32,
                    ..Default::default()
                });
                for s in 0..a.spans_per_request {
                    let mut sid = [0u8; 8];
                    sid.copy_from_slice(&(n * 16 + s + 1).to_be_bytes());
                    spans.push(Span {
                        trace_id: trace.to_vec(),
                        span_id: sid.to_vec(),
                        parent_span_id: if s == 0 {
                            vec![]
                        } else {
                            (n * 16 + 1).to_be_bytes().to_vec()
                        },
                        name: [
                            "http.server",
                            "frontend",
                            "queue",
                            "prefill",
                            "decode",
                            "stream_out",
                            "engine.step",
                            "engine.step",
                        ][(s % 8) as usize]
                            .into(),
                        start_unix_ns: start + s * 1_000_000,
                        end_unix_ns: start + s * 1_000_000 + 900_000,
                        attributes: vec![KeyValue {
                            key: "engine.batch_size".into(),
                            value: Some(inferscope_proto::v1::AnyValue {
                                value: Some(inferscope_proto::v1::any_value::Value::IntValue(8)),
                            }),
                        }],
                        ..Default::default()
                    });
                }
            }
            Batch {
                node_id: "bench-node".into(),
                boot_id: boot.into(),
                sequence: seq,
                resend: false,
                resources: vec![ResourceData {
                    resource: Some(Resource {
                        node: "bench-node".into(),
                        pid: 1,
                        engine: "vllm".into(),
                        ..Default::default()
                    }),
                    requests,
                    spans,
                    steps: vec![],
                }],
            }
        })
        .collect()
}

/// Streams `batches` to the aggregator at `grpc` (zstd) on one `Export` stream and waits until
/// every one is acknowledged STORED or DUPLICATE; any other answer is an error.
pub async fn stream_all(
    grpc: &str,
    token: Option<&str>,
    batches: Vec<Batch>,
) -> anyhow::Result<()> {
    let mut client = IngestClient::connect(grpc.to_owned())
        .await
        .context("connect to the aggregator")?
        .send_compressed(tonic::codec::CompressionEncoding::Zstd)
        .max_encoding_message_size(64 << 20);
    let n = batches.len();
    let mut req = tonic::Request::new(tokio_stream::iter(batches));
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    let mut acks = client.export(req).await?.into_inner();
    let mut stored = 0;
    while stored < n {
        match acks.next().await {
            Some(Ok(ack))
                if ack.status == AckStatus::Stored as i32
                    || ack.status == AckStatus::Duplicate as i32 =>
            {
                stored += 1
            }
            Some(Ok(ack)) => bail!(
                "batch {} not stored: {:?} {}",
                ack.sequence,
                ack.status,
                ack.message
            ),
            Some(Err(e)) => bail!("stream error: {e}"),
            None => bail!("stream ended after {stored} acks"),
        }
    }
    Ok(())
}
