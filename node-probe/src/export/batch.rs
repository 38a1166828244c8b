//! Batching: records are converted as they arrive and grouped by [`Resource`] (node, pid,
//! engine); a batch closes when it holds `max_requests` requests, `max_rows` rows or about
//! `max_bytes` encoded bytes, or `max_age` after its first record.
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use inferscope_proto::v1::{any_value, AnyValue, KeyValue, Resource, ResourceData};
use prost::Message as _;

use super::convert::{convert, engine_of, ConvertError};
use crate::requests::RequestRecord;

/// When a batch closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLimits {
    /// Requests per batch (`--batch-max-requests`).
    pub max_requests: usize,
    /// Time from a batch's first record to its close (`--batch-max-ms`).
    pub max_age: Duration,
    /// Rows (requests + spans + engine steps) per batch; the aggregator rejects batches of more
    /// than 200 000.
    pub max_rows: usize,
    /// Approximate encoded size per batch (the aggregator's default message limit is 32 MiB;
    /// with `window` batches in memory this bounds the exporter's memory).
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_requests: 512,
            max_age: Duration::from_millis(1000),
            max_rows: 100_000,
            max_bytes: 8 << 20,
        }
    }
}

/// A closed batch's content, before it gets its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedBatch {
    /// Per-resource data.
    pub resources: Vec<ResourceData>,
    /// Requests in it.
    pub requests: usize,
}

/// Accumulates converted records into one batch.
#[derive(Debug)]
pub struct BatchBuilder {
    node: String,
    engine_instance: String,
    limits: BatchLimits,
    groups: Vec<ResourceData>,
    index: HashMap<(u32, &'static str), usize>,
    steps_seen: HashSet<(usize, u64)>,
    requests: usize,
    rows: usize,
    bytes: usize,
    opened: Option<Instant>,
    /// Run tags, the attributes of every resource.
    tags: Vec<KeyValue>,
}

impl BatchBuilder {
    /// An empty builder; `node` goes into every [`Resource`], `engine_instance` into every
    /// engine step.
    pub fn new(node: &str, engine_instance: &str, limits: BatchLimits) -> Self {
        Self {
            node: node.to_owned(),
            engine_instance: engine_instance.to_owned(),
            limits,
            groups: Vec::new(),
            index: HashMap::new(),
            steps_seen: HashSet::new(),
            requests: 0,
            rows: 0,
            bytes: 0,
            opened: None,
            tags: Vec::new(),
        }
    }

    /// Sets the run tags: every [`Resource`] carries them as string attributes.
    pub fn with_tags(mut self, tags: &[(String, String)]) -> Self {
        self.tags = tags
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(v.clone())),
                }),
            })
            .collect();
        self
    }

    /// Converts and adds one record (received at `now`). Returns whether the batch is now full.
    /// A record that does not convert leaves the batch unchanged.
    pub fn push(&mut self, r: &RequestRecord, now: Instant) -> Result<bool, ConvertError> {
        let c = convert(r, &self.engine_instance)?;
        let engine = engine_of(r);
        let gi = match self.index.get(&(r.pid, engine)) {
            Some(&i) => i,
            None => {
                self.groups.push(ResourceData {
                    resource: Some(Resource {
                        node: self.node.clone(),
                        pid: r.pid,
                        engine: engine.to_owned(),
                        service: String::new(),
                        attributes: self.tags.clone(),
                    }),
                    requests: Vec::new(),
                    spans: Vec::new(),
                    steps: Vec::new(),
                });
                self.index.insert((r.pid, engine), self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let g = &mut self.groups[gi];
        if let Some(q) = c.request {
            self.bytes += q.encoded_len();
            self.rows += 1;
            g.requests.push(q);
        }
        self.rows += c.spans.len();
        self.bytes += c.spans.iter().map(|s| s.encoded_len() + 3).sum::<usize>();
        g.spans.extend(c.spans);
        for s in c.steps {
            if self.steps_seen.insert((gi, s.step_id)) {
                self.rows += 1;
                self.bytes += s.encoded_len() + 3;
                g.steps.push(s);
            }
        }
        self.requests += 1;
        self.opened.get_or_insert(now);
        Ok(self.is_full())
    }

    /// No records in the batch.
    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }

    /// Requests in the batch.
    pub fn len(&self) -> usize {
        self.requests
    }

    /// The batch reached a size limit.
    pub fn is_full(&self) -> bool {
        self.requests >= self.limits.max_requests.max(1)
            || self.rows >= self.limits.max_rows
            || self.bytes >= self.limits.max_bytes
    }

    /// When the open batch must close (none when empty).
    pub fn deadline(&self) -> Option<Instant> {
        self.opened.map(|t| t + self.limits.max_age)
    }

    /// Closes the batch: its content, or `None` when empty.
    pub fn take(&mut self) -> Option<ClosedBatch> {
        if self.is_empty() {
            return None;
        }
        let out = ClosedBatch {
            resources: std::mem::take(&mut self.groups),
            requests: self.requests,
        };
        self.index.clear();
        self.steps_seen.clear();
        self.requests = 0;
        self.rows = 0;
        self.bytes = 0;
        self.opened = None;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::convert::tests::record;
    use crate::export::convert::{ENGINE_GENERIC, ENGINE_VLLM};

    fn limits(max_requests: usize) -> BatchLimits {
        BatchLimits {
            max_requests,
            max_age: Duration::from_millis(100),
            ..BatchLimits::default()
        }
    }

    #[test]
    fn closes_at_max_requests() {
        let mut b = BatchBuilder::new("node", "boot", limits(3));
        let t = Instant::now();
        assert!(b.take().is_none());
        assert_eq!(b.deadline(), None);
        assert_eq!(b.push(&record(1, 1, 0, 0), t), Ok(false));
        assert_eq!(b.deadline(), Some(t + Duration::from_millis(100)));
        assert_eq!(
            b.push(&record(2, 1, 0, 0), t + Duration::from_millis(50)),
            Ok(false)
        );
        // The deadline counts from the first record.
        assert_eq!(b.deadline(), Some(t + Duration::from_millis(100)));
        assert_eq!(b.push(&record(3, 1, 0, 0), t), Ok(true));
        let c = b.take().expect("batch");
        assert_eq!(c.requests, 3);
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
        assert!(b.take().is_none());
    }

    #[test]
    fn closes_at_max_rows_and_bytes() {
        let mut b = BatchBuilder::new(
            "n",
            "b",
            BatchLimits {
                max_rows: 8,
                ..limits(100)
            },
        );
        // 1 request + 2 spans + 3 steps = 6 rows (a step is no span of the request), then 3.
        assert_eq!(b.push(&record(1, 1, 3, 0), Instant::now()), Ok(false));
        assert_eq!(b.push(&record(2, 1, 0, 0), Instant::now()), Ok(true));
        let mut b = BatchBuilder::new(
            "n",
            "b",
            BatchLimits {
                max_bytes: 200,
                ..limits(100)
            },
        );
        assert_eq!(b.push(&record(1, 1, 3, 0), Instant::now()), Ok(true));
    }

    #[test]
    fn every_resource_carries_the_tags() {
        let tags = [("run".to_string(), "ci-7".to_string())];
        let mut b = BatchBuilder::new("n", "b", limits(100)).with_tags(&tags);
        b.push(&record(1, 10, 0, 0), Instant::now()).expect("ok");
        b.push(&record(2, 11, 0, 0), Instant::now()).expect("ok");
        let c = b.take().expect("batch");
        assert_eq!(c.resources.len(), 2);
        for rd in &c.resources {
            let attrs = &rd.resource.as_ref().expect("resource").attributes;
            assert_eq!(attrs.len(), 1);
            assert_eq!(attrs[0].key, "run");
            assert_eq!(
                attrs[0].value.as_ref().and_then(|v| v.value.clone()),
                Some(any_value::Value::StringValue("ci-7".into()))
            );
        }
    }

    #[test]
    fn groups_by_resource_and_dedups_steps() {
        let mut b = BatchBuilder::new("node-a", "boot-1", limits(100));
        let t = Instant::now();
        b.push(&record(1, 10, 3, 100), t).expect("ok"); // steps 100..=102
        b.push(&record(2, 10, 3, 101), t).expect("ok"); // steps 101..=103
        b.push(&record(3, 10, 0, 0), t).expect("ok"); // same pid, no engine
        b.push(&record(4, 11, 1, 100), t).expect("ok"); // other pid: its own step 100
        let c = b.take().expect("batch");
        assert_eq!(c.requests, 4);
        assert_eq!(c.resources.len(), 3);
        let key = |rd: &ResourceData| {
            let r = rd.resource.as_ref().expect("resource");
            (r.node.clone(), r.pid, r.engine.clone())
        };
        assert_eq!(
            key(&c.resources[0]),
            ("node-a".into(), 10, ENGINE_VLLM.into())
        );
        assert_eq!(
            key(&c.resources[1]),
            ("node-a".into(), 10, ENGINE_GENERIC.into())
        );
        assert_eq!(
            key(&c.resources[2]),
            ("node-a".into(), 11, ENGINE_VLLM.into())
        );
        let ids: Vec<u64> = c.resources[0].steps.iter().map(|s| s.step_id).collect();
        assert_eq!(ids, vec![100, 101, 102, 103]);
        assert_eq!(c.resources[0].requests.len(), 2);
        assert_eq!(c.resources[0].spans.len(), 2 * 2);
        assert_eq!(c.resources[2].steps.len(), 1);
        assert!(c.resources[0]
            .steps
            .iter()
            .all(|s| s.engine_instance == "boot-1"));
    }

    #[test]
    fn invalid_record_leaves_batch_unchanged() {
        let mut b = BatchBuilder::new("n", "b", limits(2));
        let mut bad = record(1, 1, 1, 1);
        bad.trace_id = inferscope_api::TraceId::default();
        assert!(b.push(&bad, Instant::now()).is_err());
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
        assert_eq!(b.push(&record(2, 1, 0, 0), Instant::now()), Ok(false));
        assert_eq!(b.len(), 1);
    }
}
