//! What the aggregator does with a batch's bytes before ClickHouse: the pre-decode scan that
//! bounds memory, prost's decode, validation and the conversion to rows. No panic, and the scan's
//! row count bounds what decoding produces (the memory bound rests on it).
#![no_main]
use inferscope_aggregator::ingest::validate::{validate, Limits};
use inferscope_aggregator::store::rows::{RequestRow, SpanRow, StepRow};
use inferscope_proto::codec::scan_batch;
use inferscope_proto::v1::Batch;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|wire: &[u8]| {
    // A batch the scan refuses is refused before decoding (prost accepts a little more, such
    // as unknown groups, which the aggregator never needs).
    let Ok(shape) = scan_batch(wire) else {
        return;
    };
    let Ok(batch) = Batch::decode(wire) else {
        return;
    };
    let rows: usize = batch
        .resources
        .iter()
        .map(|r| r.requests.len() + r.spans.len() + r.steps.len())
        .sum();
    assert!(
        rows as u64 <= shape.rows,
        "scan counted {} rows, decode made {rows}",
        shape.rows
    );
    assert!(batch.resources.len() as u64 <= shape.resources);
    // Validate against a clock near the batch's own times, so that the checks past the time
    // window are reached too.
    let now = batch
        .resources
        .iter()
        .flat_map(|r| r.requests.iter().map(|q| q.start_unix_ns))
        .max()
        .unwrap_or(1_700_000_000_000_000_000);
    if validate(&batch, now, &Limits::default()).is_err() {
        return;
    }
    for rd in &batch.resources {
        let Some(res) = &rd.resource else { continue };
        for r in &rd.requests {
            let _ = RequestRow::from_proto(r, res, "n/b/1");
        }
        for s in &rd.spans {
            let _ = SpanRow::from_proto(s, res, "n/b/1");
        }
        for s in &rd.steps {
            let _ = StepRow::from_proto(s, res);
        }
    }
});
