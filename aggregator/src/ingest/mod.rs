//! The `inferscope.v1.Ingest` gRPC service.
//!
//! Per stream: the bearer token is checked once; then every batch is validated
//! ([`validate`]), checked against the dedup state ([`dedup`]) and queued to the single writer
//! ([`writer`]) on a bounded queue. Acks flow back as their commits finish (possibly out of
//! order): STORED after a successful insert, DUPLICATE for a batch already stored, REJECTED with
//! a reason for invalid input, RETRY when storage is down or the queue is full. Nothing is ever
//! acknowledged as stored before ClickHouse accepted it.
pub mod dedup;
pub mod resend;
pub mod validate;
pub mod writer;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use inferscope_proto::v1::{ack::Status as AckStatus, ingest_server::Ingest, Ack, Batch};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::error::ErrorCode;
use crate::metrics::Metrics;
use dedup::{Dedup, Seen};
use resend::Found;
use validate::{validate, Limits};
use writer::{Stage, WriteJob};

/// The service state.
#[derive(Clone)]
pub struct IngestService {
    tx: mpsc::Sender<WriteJob>,
    metrics: Arc<Metrics>,
    dedup: Arc<Dedup>,
    limits: Limits,
    token: Option<Arc<str>>,
    /// Per-node tokens: token → the only node name its batches may carry.
    node_tokens: Arc<[(String, Arc<str>)]>,
    stopping: watch::Receiver<bool>,
    budget: Arc<Semaphore>,
    /// Export streams open at once, at most (beyond: RESOURCE_EXHAUSTED).
    streams: Arc<Semaphore>,
    max_streams: usize,
    /// Where resent batches are looked up (none: only this process's memory recognises them).
    store: Option<crate::store::Store>,
}

/// Export streams open at once when [`IngestService::with_max_streams`] is not called.
pub const DEFAULT_MAX_STREAMS: usize = 64;

impl IngestService {
    /// A service queueing to `tx`; `token` is the bearer token nodes must present (none: open).
    /// When `stopping` turns true, every stream stops reading, answers what it already queued
    /// and ends with UNAVAILABLE, so that the server can shut down while nodes are connected.
    /// Batches waiting for storage hold at most `queue_bytes` of encoded input (at least one
    /// message of the largest size); beyond it they are answered RETRY.
    pub fn new(
        tx: mpsc::Sender<WriteJob>,
        metrics: Arc<Metrics>,
        dedup: Arc<Dedup>,
        limits: Limits,
        token: Option<String>,
        stopping: watch::Receiver<bool>,
        queue_bytes: usize,
    ) -> Self {
        Self {
            tx,
            metrics,
            dedup,
            limits,
            token: token.map(Into::into),
            node_tokens: Arc::from(Vec::new()),
            stopping,
            budget: Arc::new(Semaphore::new(queue_bytes.min(Semaphore::MAX_PERMITS))),
            streams: Arc::new(Semaphore::new(DEFAULT_MAX_STREAMS)),
            max_streams: DEFAULT_MAX_STREAMS,
            store: None,
        }
    }

    /// Looks resent batches up in `store` before writing them ([`resend`]), so that a batch
    /// another replica stored, or this one before a restart, is stored once.
    pub fn with_resend_lookup(mut self, store: crate::store::Store) -> Self {
        self.store = Some(store);
        self
    }

    /// At most `n` Export streams at once (every node holds one): a stream beyond is refused
    /// with RESOURCE_EXHAUSTED (the node retries with backoff), so that memory held by streams
    /// being decoded stays bounded.
    pub fn with_max_streams(mut self, n: usize) -> Self {
        let n = n.clamp(1, Semaphore::MAX_PERMITS);
        self.streams = Arc::new(Semaphore::new(n));
        self.max_streams = n;
        self
    }

    /// Per-node credentials: each `(token, node)` lets its holder send batches for `node` only
    /// (`node_id` and every resource's `node`), so that no node can write under another's name
    /// or claim another's batch ids. A shared token, if also set, is still accepted (unbound).
    pub fn with_node_tokens(mut self, tokens: Vec<(String, String)>) -> Self {
        self.node_tokens = tokens
            .into_iter()
            .map(|(t, n)| (t, Arc::from(n.as_str())))
            .collect();
        self
    }

    /// The stream's identity: `Ok(None)` for an open service or the shared token, `Ok(Some(node))`
    /// for a per-node token.
    fn authorize<T>(&self, req: &Request<T>) -> Result<Option<Arc<str>>, Status> {
        if self.token.is_none() && self.node_tokens.is_empty() {
            return Ok(None);
        }
        let got = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Constant-time comparison of equal-length tokens; every per-node token is compared.
        let same = |want: &str| got.is_some_and(|g| crate::error::same_secret(g, want));
        let mut node = None;
        for (t, n) in self.node_tokens.iter() {
            if same(t) {
                node = Some(n.clone());
            }
        }
        if node.is_some() {
            return Ok(node);
        }
        if self.token.as_deref().is_some_and(same) {
            Ok(None)
        } else {
            self.metrics.unauthenticated.fetch_add(1, Relaxed);
            Err(ErrorCode::Unauthenticated.status(
                "missing or wrong bearer token: start node-probe with the aggregator's --token",
            ))
        }
    }

    /// Handles one batch; the ack is sent on `acks` when known.
    async fn handle(&self, b: Batch, node: Option<&str>, acks: mpsc::Sender<Result<Ack, Status>>) {
        self.metrics.batches_received.fetch_add(1, Relaxed);
        let seq = b.sequence;
        let ack = move |status: AckStatus, message: String| Ack {
            sequence: seq,
            status: status as i32,
            message,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        if let Err(e) = validate(&b, now, &self.limits).and_then(|()| bound_to(&b, node)) {
            self.metrics.reject(e.reason);
            debug!(reason = e.reason, message = %e.message, node = %b.node_id, "batch rejected");
            let _ = acks
                .send(Ok(ack(
                    AckStatus::Rejected,
                    format!("{}: {}", e.reason, e.message),
                )))
                .await;
            return;
        }
        let batch_id = format!("{}/{}/{}", b.node_id, b.boot_id, b.sequence);
        match self.dedup.check_and_claim(&batch_id) {
            Seen::Stored => {
                self.metrics.batches_duplicate.fetch_add(1, Relaxed);
                let _ = acks
                    .send(Ok(ack(AckStatus::Duplicate, String::new())))
                    .await;
                return;
            }
            Seen::InFlight => {
                self.metrics.batches_retry.fetch_add(1, Relaxed);
                let _ = acks
                    .send(Ok(ack(AckStatus::Retry, "batch is being written".into())))
                    .await;
                return;
            }
            Seen::New => {}
        }
        let stored = match self.look_up_resend(&b, &batch_id).await {
            Ok(Found::All) => {
                self.dedup.mark_stored(&batch_id);
                self.metrics.batches_duplicate.fetch_add(1, Relaxed);
                let _ = acks
                    .send(Ok(ack(AckStatus::Duplicate, String::new())))
                    .await;
                return;
            }
            Ok(Found::Upto(stage)) => stage,
            Err(e) => {
                self.dedup.unmark_inflight(&batch_id);
                self.metrics.batches_retry.fetch_add(1, Relaxed);
                let _ = acks
                    .send(Ok(ack(
                        AckStatus::Retry,
                        format!("storage unavailable: {e}"),
                    )))
                    .await;
                return;
            }
        };
        let size = u32::try_from(b.encoded_len().max(1)).unwrap_or(u32::MAX);
        let Ok(budget) = Arc::clone(&self.budget).try_acquire_many_owned(size) else {
            self.dedup.unmark_inflight(&batch_id);
            self.metrics.queue_full_drops.fetch_add(1, Relaxed);
            self.metrics.batches_retry.fetch_add(1, Relaxed);
            let _ = acks
                .send(Ok(ack(
                    AckStatus::Retry,
                    "aggregator queue full (bytes)".into(),
                )))
                .await;
            return;
        };
        let (done_tx, done_rx) = oneshot::channel();
        let job = WriteJob {
            batch: b,
            batch_id: batch_id.clone(),
            done: done_tx,
            budget,
            stored,
        };
        // Counted before the writer can take it, so the gauge never goes below zero.
        self.metrics.queue_depth.fetch_add(1, Relaxed);
        if self.tx.try_send(job).is_err() {
            self.metrics.queue_depth.fetch_sub(1, Relaxed);
            self.dedup.unmark_inflight(&batch_id);
            self.metrics.queue_full_drops.fetch_add(1, Relaxed);
            self.metrics.batches_retry.fetch_add(1, Relaxed);
            let _ = acks
                .send(Ok(ack(AckStatus::Retry, "aggregator queue full".into())))
                .await;
            return;
        }
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let a = match done_rx.await {
                Ok(Ok(())) => ack(AckStatus::Stored, String::new()),
                Ok(Err(e)) => {
                    metrics.batches_retry.fetch_add(1, Relaxed);
                    ack(AckStatus::Retry, e)
                }
                Err(_) => ack(AckStatus::Retry, "aggregator shutting down".into()),
            };
            let _ = acks.send(Ok(a)).await;
        });
    }
}

impl IngestService {
    /// What storage holds of a resent batch (nothing to look up for a first send, or without
    /// a store).
    async fn look_up_resend(&self, b: &Batch, batch_id: &str) -> Result<Found, String> {
        let Some(store) = self.store.as_ref().filter(|_| b.resend) else {
            return Ok(Found::Upto(Stage::None));
        };
        self.metrics.resend_lookups.fetch_add(1, Relaxed);
        let found = resend::stored(store, b, batch_id).await?;
        if matches!(found, Found::Upto(s) if s > Stage::None) {
            self.metrics.resend_partly_stored.fetch_add(1, Relaxed);
        }
        debug!(batch = batch_id, ?found, "resent batch looked up");
        Ok(found)
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type ExportStream = ReceiverStream<Result<Ack, Status>>;

    async fn export(
        &self,
        req: Request<Streaming<Batch>>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let node = self.authorize(&req)?;
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            self.metrics.reject("too_many_streams");
            Status::resource_exhausted(format!(
                "too many ingest streams open (max {}): retry later",
                self.max_streams
            ))
        })?;
        let mut stream = req.into_inner();
        let (acks_tx, acks_rx) = mpsc::channel(1024);
        let this = self.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    () = async { drop(stopping.wait_for(|s| *s).await) } => {
                        // Acks of queued batches still arrive; then the stream ends.
                        let _ = acks_tx
                            .send(Err(Status::unavailable("aggregator shutting down")))
                            .await;
                        break;
                    }
                };
                match msg {
                    Ok(Some(b)) => this.handle(b, node.as_deref(), acks_tx.clone()).await,
                    Ok(None) => break,
                    Err(status) if is_transport(&status) => {
                        // The client went away (reset, cancel): not bad input.
                        this.metrics.streams_broken.fetch_add(1, Relaxed);
                        break;
                    }
                    Err(status) => {
                        // Undecodable or oversized message: end the stream with a clear status.
                        // The codec refuses batches too large to decode before decoding them
                        // (inferscope_proto::codec), with a `batch_too_large:` message.
                        let reason = if status.message().starts_with("batch_too_large") {
                            "batch_too_large"
                        } else {
                            "undecodable"
                        };
                        this.metrics.reject(reason);
                        let _ = acks_tx.send(Err(status)).await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(acks_rx)))
    }
}

/// A batch sent with a per-node token must be that node's: its `node_id` and every resource's
/// `node` (else REJECTED `node_mismatch`; the batch id it names is not claimed).
fn bound_to(b: &Batch, node: Option<&str>) -> Result<(), validate::Invalid> {
    let Some(n) = node else {
        return Ok(());
    };
    let foreign = b.node_id != n
        || b.resources
            .iter()
            .any(|r| r.resource.as_ref().is_some_and(|res| res.node != n));
    if foreign {
        return Err(validate::Invalid {
            reason: "node_mismatch",
            message: format!(
                "this token is node {n:?}'s; the batch is node {:?}'s",
                b.node_id
            ),
        });
    }
    Ok(())
}

/// Whether a stream error is the transport failing (client gone), not the client's input.
fn is_transport(s: &Status) -> bool {
    let m = s.message();
    (matches!(
        s.code(),
        tonic::Code::Cancelled | tonic::Code::Unavailable | tonic::Code::Unknown
    ) || m.starts_with("h2 protocol error"))
        && !m.to_ascii_lowercase().contains("decode")
}
