//! Stored batches as OpenTelemetry spans: one [`Export`] per resource of a batch.
//!
//! Every span of a batch goes out with its own ids, parent, times, attributes and links. The
//! request's root (`http.server` in the request's trace) is rewritten to the current HTTP and
//! GenAI semantic conventions and carries the request's figures, taken from the very
//! [`RequestRow`] that was written to ClickHouse, so that OTLP, ClickHouse and the Prometheus
//! histograms always agree. Engine steps become `engine.step` spans in their own traces (the
//! roots link to them), each sent once however many batches name it.
use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use inferscope_proto::v1::{any_value, Batch, EngineStep, Request, Resource, Span};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use inferscope_rows::RequestRow;

/// Name of the spans made of engine steps.
pub const STEP_SPAN: &str = "engine.step";
/// Prefix of inferscope's own attributes.
pub const PREFIX: &str = "inferscope.";

/// The spans of one resource, ready for one export call.
pub struct Export {
    /// The resource they all share.
    pub resource: opentelemetry_sdk::Resource,
    /// Its spans.
    pub spans: Vec<SpanData>,
}

/// Remembers the most recent engine steps sent, so that a step named by several batches goes
/// once. Bounded: the oldest are forgotten first.
pub struct SeenSteps {
    cap: usize,
    order: VecDeque<(String, String, u64)>,
    set: HashSet<(String, String, u64)>,
}

impl SeenSteps {
    /// At most `cap` steps remembered.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    /// True the first time a step is seen.
    fn first(&mut self, node: &str, s: &EngineStep) -> bool {
        let key = (node.to_owned(), s.engine_instance.clone(), s.step_id);
        if self.set.contains(&key) {
            return false;
        }
        if self.order.len() >= self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(key.clone());
        self.set.insert(key);
        true
    }
}

/// How many spans a batch becomes at most (spans and steps); what the queue budget counts.
pub fn span_count(b: &Batch) -> usize {
    b.resources
        .iter()
        .map(|rd| rd.spans.len() + rd.steps.len())
        .sum()
}

/// The exports of one stored batch (`batch_id` as stored).
pub fn exports(b: &Batch, batch_id: &str, seen: &mut SeenSteps) -> Vec<Export> {
    let scope = InstrumentationScope::builder("inferscope")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut out = Vec::new();
    for rd in &b.resources {
        let Some(res) = &rd.resource else { continue };
        let requests: HashMap<&[u8], &Request> = rd
            .requests
            .iter()
            .map(|r| (r.trace_id.as_slice(), r))
            .collect();
        let mut spans = Vec::with_capacity(rd.spans.len() + rd.steps.len());
        for s in &rd.spans {
            let root = (s.name == "http.server")
                .then(|| requests.get(s.trace_id.as_slice()))
                .flatten();
            let mut d = span(s, &scope);
            if let Some(r) = root {
                request_root(&mut d, &RequestRow::from_proto(r, res, batch_id));
            }
            spans.push(d);
        }
        for st in &rd.steps {
            if seen.first(&res.node, st) {
                spans.push(step(st, &scope));
            }
        }
        if !spans.is_empty() {
            out.push(Export {
                resource: resource(res),
                spans,
            });
        }
    }
    out
}

/// The OpenTelemetry resource of a node's engine process.
pub fn resource(res: &Resource) -> opentelemetry_sdk::Resource {
    let service = [&res.service, &res.engine]
        .into_iter()
        .find(|s| !s.is_empty())
        .map_or_else(|| "inferscope".to_owned(), |s| s.clone());
    let ours = ["service.name", "host.name", "process.pid"];
    let mut kvs = vec![
        KeyValue::new("service.name", service),
        KeyValue::new("host.name", res.node.clone()),
        KeyValue::new("process.pid", i64::from(res.pid)),
        KeyValue::new("inferscope.engine", res.engine.clone()),
    ];
    // The node's tags as they were given, except where they would rename the process.
    for kv in &res.attributes {
        if !ours.contains(&kv.key.as_str()) {
            if let Some(v) = value(kv.value.as_ref().and_then(|v| v.value.as_ref())) {
                kvs.push(KeyValue::new(kv.key.clone(), v));
            }
        }
    }
    opentelemetry_sdk::Resource::builder_empty()
        .with_attributes(kvs)
        .build()
}

fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn trace_id(b: &[u8]) -> TraceId {
    <[u8; 16]>::try_from(b).map_or(TraceId::INVALID, TraceId::from_bytes)
}

fn span_id(b: &[u8]) -> SpanId {
    <[u8; 8]>::try_from(b).map_or(SpanId::INVALID, SpanId::from_bytes)
}

fn context(trace: &[u8], span: &[u8]) -> SpanContext {
    SpanContext::new(
        trace_id(trace),
        span_id(span),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    )
}

fn value(v: Option<&any_value::Value>) -> Option<Value> {
    Some(match v? {
        any_value::Value::StringValue(s) => Value::from(s.clone()),
        any_value::Value::IntValue(i) => Value::I64(*i),
        any_value::Value::DoubleValue(d) => Value::F64(*d),
        any_value::Value::BoolValue(b) => Value::Bool(*b),
    })
}

fn attributes(kvs: &[inferscope_proto::v1::KeyValue]) -> Vec<KeyValue> {
    kvs.iter()
        .filter_map(|kv| {
            let v = value(kv.value.as_ref().and_then(|v| v.value.as_ref()))?;
            Some(KeyValue::new(kv.key.clone(), v))
        })
        .collect()
}

/// A span as it was sent: INTERNAL, unless it is a request's root (see [`request_root`]).
fn span(s: &Span, scope: &InstrumentationScope) -> SpanData {
    SpanData {
        span_context: context(&s.trace_id, &s.span_id),
        parent_span_id: span_id(&s.parent_span_id),
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: Cow::Owned(s.name.clone()),
        start_time: time(s.start_unix_ns),
        end_time: time(s.end_unix_ns),
        attributes: attributes(&s.attributes),
        dropped_attributes_count: 0,
        events: events(s),
        links: links(s),
        status: Status::Unset,
        instrumentation_scope: scope.clone(),
    }
}

fn events(s: &Span) -> SpanEvents {
    let mut out = SpanEvents::default();
    out.events = s
        .events
        .iter()
        .map(|e| {
            let t = time(e.time_unix_ns);
            opentelemetry::trace::Event::new(e.name.clone(), t, attributes(&e.attributes), 0)
        })
        .collect();
    out
}

fn links(s: &Span) -> SpanLinks {
    let mut out = SpanLinks::default();
    out.links = s
        .links
        .iter()
        .map(|l| {
            let c = context(&l.trace_id, &l.span_id);
            opentelemetry::trace::Link::new(c, attributes(&l.attributes), 0)
        })
        .collect();
    out
}

/// An engine step as a span of its own trace.
fn step(s: &EngineStep, scope: &InstrumentationScope) -> SpanData {
    let unit = if s.batch_unit.is_empty() {
        "requests"
    } else {
        &s.batch_unit
    };
    let mut attributes = vec![
        KeyValue::new("inferscope.step.id", int(s.step_id)),
        KeyValue::new("inferscope.step.batch_size", i64::from(s.batch_size)),
        KeyValue::new("inferscope.step.batch_unit", unit.to_owned()),
        KeyValue::new("inferscope.engine.instance", s.engine_instance.clone()),
    ];
    if s.tokens > 0 {
        attributes.push(KeyValue::new("inferscope.step.tokens", i64::from(s.tokens)));
    }
    if let Some(g) = s.gpu_ns {
        attributes.extend([
            KeyValue::new("inferscope.gpu.class", s.gpu_class.clone()),
            KeyValue::new("inferscope.gpu.time_ns", int(g)),
            KeyValue::new("inferscope.gpu.launch_ns", int(s.gpu_launch_ns)),
            KeyValue::new("inferscope.gpu.sync_wait_ns", int(s.sync_wait_ns)),
            KeyValue::new("inferscope.gpu.graph_launches", i64::from(s.graph_launches)),
            KeyValue::new("inferscope.gpu.kernel_launches", int(s.kernel_launches)),
            KeyValue::new("inferscope.gpu.host_bound", s.host_bound),
            KeyValue::new("inferscope.gpu.upper_bound", s.gpu_upper_bound),
        ]);
    }
    if let (Some(n), Some(rank)) = (s.collectives, s.straggler_rank) {
        attributes.extend([
            KeyValue::new("inferscope.nccl.collectives", i64::from(n)),
            KeyValue::new("inferscope.nccl.wait_ns", int(s.collective_wait_ns)),
            KeyValue::new("inferscope.nccl.straggler_rank", i64::from(rank)),
            KeyValue::new("inferscope.nccl.straggler_lag_ns", int(s.straggler_lag_ns)),
        ]);
    }
    SpanData {
        span_context: context(&s.trace_id, &s.span_id),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: Cow::Borrowed(STEP_SPAN),
        start_time: time(s.start_unix_ns),
        end_time: time(s.end_unix_ns),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scope.clone(),
    }
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `gen_ai.operation.name` of an OpenAI-compatible path.
pub fn operation(path: &str) -> Option<&'static str> {
    let p = path.split('?').next().unwrap_or_default();
    Some(match p.trim_end_matches('/') {
        "/v1/chat/completions" => "chat",
        "/v1/completions" => "text_completion",
        "/v1/embeddings" => "embeddings",
        _ => return None,
    })
}

/// Attributes the node-probe puts on a root in the older HTTP conventions, replaced here.
const LEGACY: [&str; 4] = [
    "http.method",
    "http.target",
    "http.status_code",
    "gen_ai.request.model",
];

/// Makes a request's root span a SERVER span in the current conventions, with its figures.
fn request_root(d: &mut SpanData, r: &RequestRow) {
    let op = operation(&r.path);
    d.name = Cow::Owned(match (op, r.model.is_empty()) {
        (Some(op), false) => format!("{op} {}", r.model),
        (Some(op), true) => op.to_owned(),
        (None, _) => r.method.clone(),
    });
    d.span_kind = SpanKind::Server;
    d.parent_span_is_remote = d.parent_span_id != SpanId::INVALID;
    d.attributes.retain(|kv| !LEGACY.contains(&kv.key.as_str()));
    d.attributes.extend(root_attributes(r, op));
    d.status = status(r);
}

/// ERROR for a 5xx answer or a request the server did not finish; unset otherwise (a 4xx is
/// the client's error, not the server span's).
pub fn status(r: &RequestRow) -> Status {
    if matches!(r.outcome.as_str(), "server_close" | "timeout" | "lost") {
        Status::error(r.outcome.clone())
    } else if r.status >= 500 {
        Status::error(format!("HTTP {}", r.status))
    } else {
        Status::Unset
    }
}

fn root_attributes(r: &RequestRow, op: Option<&'static str>) -> Vec<KeyValue> {
    let mut a = vec![KeyValue::new("http.request.method", r.method.clone())];
    let (path, query) = r.path.split_once('?').unwrap_or((&r.path, ""));
    a.push(KeyValue::new("url.path", path.to_owned()));
    if !query.is_empty() {
        a.push(KeyValue::new("url.query", query.to_owned()));
    }
    if r.status != 0 {
        a.push(KeyValue::new(
            "http.response.status_code",
            i64::from(r.status),
        ));
    }
    for (k, ip, port) in [
        ("client", &r.client_ip, r.client_port),
        ("server", &r.server_ip, r.server_port),
    ] {
        if !ip.is_empty() {
            a.push(KeyValue::new(format!("{k}.address"), ip.clone()));
            a.push(KeyValue::new(format!("{k}.port"), i64::from(port)));
        }
    }
    if let Some(op) = op {
        a.push(KeyValue::new("gen_ai.operation.name", op));
    }
    let strings = [
        ("gen_ai.request.model", &r.model),
        ("gen_ai.response.id", &r.response_id),
        ("inferscope.engine.request_id", &r.engine_request_id),
        ("inferscope.engine.instance", &r.engine_instance),
        ("inferscope.gave_up", &r.gave_up),
        ("inferscope.tenant", &r.tenant),
    ];
    for (k, v) in strings {
        if !v.is_empty() {
            a.push(KeyValue::new(k, v.clone()));
        }
    }
    if !r.x_request_id.is_empty() {
        let v = Array::String(vec![StringValue::from(r.x_request_id.clone())]);
        a.push(KeyValue::new(
            "http.request.header.x-request-id",
            Value::Array(v),
        ));
    }
    if r.stream != 0 && r.ttft_ns > 0 {
        let secs = r.ttft_ns as f64 / 1e9;
        a.push(KeyValue::new("gen_ai.response.time_to_first_chunk", secs));
    }
    for (k, v) in [
        ("gen_ai.usage.input_tokens", r.prompt_tokens),
        ("gen_ai.usage.output_tokens", r.completion_tokens),
    ] {
        if let Some(v) = v {
            a.push(KeyValue::new(k, i64::from(v)));
        }
    }
    a.push(KeyValue::new("inferscope.outcome", r.outcome.clone()));
    a.push(KeyValue::new("inferscope.stream", r.stream != 0));
    a.extend(figures(r));
    a
}

/// The request's figures as exact integers (nanoseconds, bytes, counts); optional ones only
/// when measured.
pub fn figures(r: &RequestRow) -> Vec<KeyValue> {
    let always = [
        ("e2e_ns", r.e2e_ns),
        ("ttft_ns", r.ttft_ns),
        ("max_gap_ns", r.max_gap_ns),
        ("read_wait_ns", r.read_wait_ns),
        ("request.bytes", r.req_bytes),
        ("response.bytes", r.resp_bytes),
        ("response.chunks", u64::from(r.chunks)),
        ("engine.steps", u64::from(r.engine_steps)),
    ];
    let measured = [
        ("tpot_ns", r.tpot_ns),
        ("first_text_ns", r.first_text_ns),
        ("phase.frontend_ns", r.frontend_ns),
        ("phase.queue_ns", r.queue_ns),
        ("phase.prefill_ns", r.prefill_ns),
        ("phase.decode_ns", r.decode_ns),
        ("phase.delivery_ns", r.delivery_ns),
        ("engine.ttft_ns", r.engine_ttft_ns),
        ("engine.e2e_ns", r.engine_e2e_ns),
        ("engine.tpot_ns", r.engine_tpot_ns),
        ("engine.max_gap_ns", r.engine_max_gap_ns),
        ("gpu.time_ns", r.gpu_ns),
        ("gpu.cost_ns", r.gpu_cost_ns),
        ("gpu.host_bound_ns", r.gpu_host_bound_ns),
        ("nccl.wait_ns", r.collective_wait_ns),
        ("nccl.straggler_lag_ns", r.straggler_lag_ns),
        ("nccl.straggler_rank", r.straggler_rank.map(u64::from)),
    ];
    always
        .into_iter()
        .map(|(k, v)| (k, Some(v)))
        .chain(measured)
        .filter_map(|(k, v)| Some(KeyValue::new(format!("{PREFIX}{k}"), int(v?))))
        .collect()
}

#[cfg(test)]
mod tests {
    use inferscope_proto::v1::{AnyValue, ResourceData, SpanLink};

    use super::*;

    fn kv(k: &str, v: any_value::Value) -> inferscope_proto::v1::KeyValue {
        inferscope_proto::v1::KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
        }
    }

    fn batch() -> Batch {
        let tid = vec![7u8; 16];
        let req = Request {
            trace_id: tid.clone(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            status: 200,
            outcome: "complete".into(),
            model: "tiny".into(),
            stream: true,
            start_unix_ns: 1_000,
            end_unix_ns: 9_000,
            e2e_ns: 8_000,
            ttft_ns: 2_000,
            queue_ns: Some(100),
            x_request_id: "abc".into(),
            completion_tokens: Some(8),
            ..Default::default()
        };
        let root = Span {
            trace_id: tid.clone(),
            span_id: vec![1; 8],
            parent_span_id: vec![9; 8],
            name: "http.server".into(),
            start_unix_ns: 1_000,
            end_unix_ns: 9_000,
            attributes: vec![
                kv("http.method", any_value::Value::StringValue("POST".into())),
                kv("http.status_code", any_value::Value::IntValue(200)),
                kv("custom", any_value::Value::BoolValue(true)),
            ],
            events: Vec::new(),
            links: vec![SpanLink {
                trace_id: vec![3; 16],
                span_id: vec![4; 8],
                attributes: vec![kv("engine.step_id", any_value::Value::IntValue(5))],
            }],
        };
        let child = Span {
            span_id: vec![2; 8],
            parent_span_id: vec![1; 8],
            name: "queue".into(),
            attributes: Vec::new(),
            links: Vec::new(),
            ..root.clone()
        };
        let step = EngineStep {
            step_id: 5,
            engine_instance: "10:20".into(),
            start_unix_ns: 2_000,
            end_unix_ns: 3_000,
            batch_size: 3,
            trace_id: vec![3; 16],
            span_id: vec![4; 8],
            batch_unit: String::new(),
            ..Default::default()
        };
        Batch {
            node_id: "n".into(),
            boot_id: "b".into(),
            sequence: 1,
            resend: false,
            resources: vec![ResourceData {
                resource: Some(Resource {
                    node: "n".into(),
                    pid: 42,
                    engine: "vllm".into(),
                    service: String::new(),
                    attributes: vec![kv("cluster", any_value::Value::StringValue("a".into()))],
                }),
                requests: vec![req],
                spans: vec![root, child],
                steps: vec![step],
            }],
        }
    }

    fn attr<'a>(d: &'a SpanData, k: &str) -> Option<&'a Value> {
        d.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| &kv.value)
    }

    #[test]
    fn root_in_current_conventions_with_the_stored_figures() {
        let b = batch();
        let mut seen = SeenSteps::new(8);
        let ex = exports(&b, "n/b/1", &mut seen);
        assert_eq!(ex.len(), 1);
        let spans = &ex[0].spans;
        assert_eq!(spans.len(), 3);
        let root = &spans[0];
        assert_eq!(root.name, "chat tiny");
        assert_eq!(root.span_kind, SpanKind::Server);
        assert!(root.parent_span_is_remote);
        assert_eq!(attr(root, "http.method"), None);
        assert_eq!(
            attr(root, "http.request.method"),
            Some(&Value::from("POST"))
        );
        assert_eq!(
            attr(root, "http.response.status_code"),
            Some(&Value::I64(200))
        );
        assert_eq!(
            attr(root, "gen_ai.operation.name"),
            Some(&Value::from("chat"))
        );
        assert_eq!(attr(root, "inferscope.e2e_ns"), Some(&Value::I64(8_000)));
        assert_eq!(
            attr(root, "inferscope.phase.queue_ns"),
            Some(&Value::I64(100))
        );
        assert_eq!(attr(root, "inferscope.phase.prefill_ns"), None);
        // Only the usage counts the server reported.
        assert_eq!(
            attr(root, "gen_ai.usage.output_tokens"),
            Some(&Value::I64(8))
        );
        assert_eq!(attr(root, "gen_ai.usage.input_tokens"), None);
        assert_eq!(attr(root, "custom"), Some(&Value::Bool(true)));
        assert_eq!(root.links.links.len(), 1);
        assert_eq!(root.status, Status::Unset);
        let child = &spans[1];
        assert_eq!(
            (child.span_kind.clone(), child.name.as_ref()),
            (SpanKind::Internal, "queue")
        );
        assert_eq!(child.parent_span_id, SpanId::from_bytes([1; 8]));
        let step = &spans[2];
        assert_eq!(step.name, STEP_SPAN);
        assert_eq!(step.span_context.span_id(), SpanId::from_bytes([4; 8]));
        assert_eq!(
            attr(step, "inferscope.step.batch_unit"),
            Some(&Value::from("requests"))
        );
        // The same step named again is not sent twice.
        let again = exports(&b, "n/b/2", &mut seen);
        assert_eq!(again[0].spans.len(), 2);
        let res = &ex[0].resource;
        let get = |k: &'static str| res.get(&opentelemetry::Key::from_static_str(k));
        assert_eq!(get("service.name"), Some(Value::from("vllm")));
        assert_eq!(get("process.pid"), Some(Value::I64(42)));
        assert_eq!(get("cluster"), Some(Value::from("a")));
    }

    #[test]
    fn server_failures_are_errors_client_ones_are_not() {
        let b = batch();
        let res = b.resources[0].resource.clone().unwrap();
        let mut r = b.resources[0].requests[0].clone();
        let row = |r: &Request| RequestRow::from_proto(r, &res, "x");
        r.status = 503;
        assert!(matches!(status(&row(&r)), Status::Error { .. }));
        r.status = 404;
        assert_eq!(status(&row(&r)), Status::Unset);
        r.outcome = "timeout".into();
        assert!(matches!(status(&row(&r)), Status::Error { .. }));
        assert_eq!(operation("/v1/completions?x=1"), Some("text_completion"));
        assert_eq!(operation("/health"), None);
    }

    #[test]
    fn seen_steps_is_bounded() {
        let mut seen = SeenSteps::new(2);
        let s = |id| EngineStep {
            step_id: id,
            ..Default::default()
        };
        assert!(seen.first("n", &s(1)));
        assert!(!seen.first("n", &s(1)));
        assert!(seen.first("n", &s(2)));
        assert!(seen.first("n", &s(3)));
        assert_eq!(seen.set.len(), 2);
        assert!(seen.first("n", &s(1)));
    }
}
