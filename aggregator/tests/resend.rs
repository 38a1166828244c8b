//! Resends across aggregator replicas and restarts, recognised by what storage holds
//! (`Batch.resend`, `ingest/resend.rs`), against the real ClickHouse.
use inferscope_proto::v1::{ack::Status as AckStatus, Ack, Batch};

mod common;
use common::ingest::*;

/// Resends flagged by the node (`Batch.resend`) are recognised by what storage holds, not by an
/// aggregator's memory: a batch stored through replica A and resent to replica B is answered
/// DUPLICATE; one A stored in part (a failure between table commits, or before its marker) is
/// completed by B with only the missing tables; a resend never stored before is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_are_recognised_across_replicas() {
    if !ch_available() {
        return;
    }
    let a = Agg::start("replica_a").await;
    let b = a.replica("replica_b").await;
    let db = a.db.clone();
    let resent = |mut x: Batch| {
        x.resend = true;
        x
    };
    let status = |acks: &[Ack]| AckStatus::try_from(acks[0].status).unwrap();
    // A resend is the same batch, byte for byte (node-probe resends what it kept).
    let (b1, b2, b3) = (batch(1, 20, 1), batch(2, 30, 1), batch(3, 10, 1));

    // Stored through A; resent to B (its ack to the node was lost with A).
    let acks = send(a.grpc, Some("s3cret"), vec![b1.clone()])
        .await
        .unwrap();
    assert_eq!(status(&acks), AckStatus::Stored);
    let acks = send(b.grpc, Some("s3cret"), vec![resent(b1.clone())])
        .await
        .unwrap();
    assert_eq!(status(&acks), AckStatus::Duplicate, "{acks:?}");
    assert_eq!(count(&db, "requests").await, 20);

    // A commits steps and spans of batch 2, then fails on requests; B gets the resend.
    sql(&format!("RENAME TABLE {db}.requests TO {db}.requests_away")).await;
    let acks = send(a.grpc, Some("s3cret"), vec![b2.clone()])
        .await
        .unwrap();
    assert_eq!(status(&acks), AckStatus::Retry, "{acks:?}");
    sql(&format!("RENAME TABLE {db}.requests_away TO {db}.requests")).await;
    let acks = send(b.grpc, Some("s3cret"), vec![resent(b2.clone())])
        .await
        .unwrap();
    assert_eq!(status(&acks), AckStatus::Stored, "{acks:?}");
    assert_eq!(count(&db, "requests").await, 50);
    assert_eq!(count(&db, "spans").await, 50, "batch 2's spans once");

    // A stores every data table of batch 3 but not its marker (it died in between).
    sql(&format!(
        "RENAME TABLE {db}.ingested_batches TO {db}.batches_away"
    ))
    .await;
    let acks = send(a.grpc, Some("s3cret"), vec![b3.clone()])
        .await
        .unwrap();
    assert_eq!(status(&acks), AckStatus::Retry, "{acks:?}");
    sql(&format!(
        "RENAME TABLE {db}.batches_away TO {db}.ingested_batches"
    ))
    .await;
    let acks = send(b.grpc, Some("s3cret"), vec![resent(b3.clone())])
        .await
        .unwrap();
    assert_eq!(status(&acks), AckStatus::Stored, "{acks:?}");
    assert_eq!(count(&db, "requests").await, 60, "batch 3's requests once");
    assert_eq!(count(&db, "spans").await, 60);
    assert_eq!(count(&db, "ingested_batches").await, 3);

    // A resend that never reached storage is simply stored.
    let acks = send(b.grpc, Some("s3cret"), vec![resent(batch(4, 5, 1))])
        .await
        .unwrap();
    assert_eq!(status(&acks), AckStatus::Stored, "{acks:?}");
    assert_eq!(count(&db, "requests").await, 65);
    // Steps carry no batch id and may repeat in a later batch: one of a never-stored batch's
    // steps already stored (by another batch) does not make its other steps count as stored.
    let b5 = varied_batch(5, 10, now_ns() - 60_000_000_000);
    let mut b6 = b5.clone();
    b6.sequence = 6;
    // (A batch carries at least one request: one of its own.)
    b6.resources[0].requests.truncate(1);
    b6.resources[0].requests[0].trace_id[0] = 0xd6;
    b6.resources[0].spans.clear();
    b6.resources[0].steps.truncate(1);
    let acks = send(a.grpc, Some("s3cret"), vec![b6]).await.unwrap();
    assert_eq!(status(&acks), AckStatus::Stored, "{acks:?}");
    let acks = send(b.grpc, Some("s3cret"), vec![resent(b5.clone())])
        .await
        .unwrap();
    assert_eq!(status(&acks), AckStatus::Stored, "{acks:?}");
    let steps = b5.resources[0].steps.len();
    let stored_steps = clickhouse::Client::default()
        .with_url(ch_url())
        .with_validation(false)
        .query(&format!(
            "SELECT uniqExact(engine_instance, step_id) FROM {db}.engine_steps"
        ))
        .fetch_one::<u64>()
        .await
        .unwrap();
    assert_eq!(
        stored_steps as usize, steps,
        "every step of the resent batch stored"
    );
    let m = ureq_get(&format!("http://{}/metrics", b.http));
    assert!(m.contains("inferscope_resend_lookups_total 5\n"), "{m}");
    assert!(
        m.contains("inferscope_resend_partly_stored_total 2\n"),
        "{m}"
    );
    b.stop().await;
    a.stop().await;
}
