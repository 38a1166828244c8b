//! Rows of the ClickHouse tables, and their construction from validated `inferscope.v1` messages.
use clickhouse::Row;
use std::net::{Ipv4Addr, Ipv6Addr};

use inferscope_proto::v1::{
    any_value::Value, Endpoint, EngineStep, KeyValue, Request, Resource, Span,
};
use serde::{Deserialize, Serialize};

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

pub use inferscope_api::escape_controls;

fn secs(ns: u64) -> u32 {
    (ns / 1_000_000_000).min(u32::MAX as u64) as u32
}

/// A row of `requests`.
#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq)]
pub struct RequestRow {
    pub start: u32,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub trace_id: String,
    pub node: String,
    pub pid: u32,
    pub engine: String,
    pub model: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub outcome: String,
    pub stream: u8,
    pub e2e_ns: u64,
    pub ttft_ns: u64,
    pub tpot_ns: Option<u64>,
    pub frontend_ns: Option<u64>,
    pub queue_ns: Option<u64>,
    pub prefill_ns: Option<u64>,
    pub decode_ns: Option<u64>,
    pub delivery_ns: Option<u64>,
    pub engine_ttft_ns: Option<u64>,
    pub engine_e2e_ns: Option<u64>,
    pub read_wait_ns: u64,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    pub chunks: u32,
    pub engine_steps: u32,
    pub max_gap_ns: u64,
    pub client: String,
    pub server: String,
    pub response_id: String,
    pub x_request_id: String,
    pub engine_request_id: String,
    pub gave_up: String,
    pub step_ids: Vec<u64>,
    pub chunk_offsets_ns: Vec<u64>,
    pub batch_id: String,
    pub engine_instance: String,
    pub netns: u32,
    pub client_ip: String,
    pub client_port: u16,
    pub server_ip: String,
    pub server_port: u16,
    pub req_tcp_seq: Option<u32>,
    pub resp_tcp_seq: Option<u32>,
    pub first_text_ns: Option<u64>,
    pub engine_output_offsets_ns: Vec<u64>,
    /// Mean gap between the engine's outputs after the first (the engine-side TPOT, from
    /// `engine_output_offsets_ns`; needs two or more).
    pub engine_tpot_ns: Option<u64>,
    /// Longest gap between two consecutive engine outputs.
    pub engine_max_gap_ns: Option<u64>,
    pub tags: Vec<String>,
    pub tenant: String,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub gpu_ns: Option<u64>,
    pub gpu_cost_ns: Option<u64>,
    pub gpu_host_bound_ns: Option<u64>,
    pub gpu_upper_bound_steps: Option<u32>,
    pub step_tokens: Vec<u32>,
    pub collectives: Option<u32>,
    pub collective_wait_ns: Option<u64>,
    pub straggler_rank: Option<u32>,
    pub straggler_lag_ns: Option<u64>,
    /// The exchange's hop id ([`inferscope_api::hop_id`] of `req_tcp_seq`, `resp_tcp_seq`):
    /// the span id of the caller's `http.client` span; '' without a request sequence number.
    pub hop_id: String,
}

/// A row of `spans`.
#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq)]
pub struct SpanRow {
    pub start: u32,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub node: String,
    pub pid: u32,
    pub attr_keys: Vec<String>,
    pub attr_values: Vec<String>,
    pub link_trace_ids: Vec<String>,
    pub link_span_ids: Vec<String>,
    pub batch_id: String,
}

/// A row of `engine_steps`.
#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq)]
pub struct StepRow {
    pub start: u32,
    pub node: String,
    pub engine_instance: String,
    pub step_id: u64,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub batch_size: u32,
    pub trace_id: String,
    pub span_id: String,
    pub batch_unit: String,
    pub tokens: u32,
    pub gpu_class: String,
    pub gpu_ns: Option<u64>,
    pub gpu_launch_ns: u64,
    pub graph_launches: u32,
    pub kernel_launches: u64,
    pub dtoh_bytes: u64,
    pub htod_bytes: u64,
    pub sync_wait_ns: u64,
    pub host_bound: u8,
    pub gpu_ranks: u32,
    pub gpu_upper_bound: u8,
    pub collectives: Option<u32>,
    pub collective_wait_ns: u64,
    pub straggler_rank: Option<u32>,
    pub straggler_lag_ns: u64,
}

/// A row of `ingested_batches`.
#[derive(Debug, Clone, Row, Serialize, Deserialize, PartialEq)]
pub struct BatchRow {
    pub received: u32,
    pub node_id: String,
    pub boot_id: String,
    pub sequence: u64,
    pub requests: u32,
    pub spans: u32,
}

fn value_string(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        None => String::new(),
    }
}

/// The resource's attributes as `key=value` tags (node-probe `--tag`), control characters
/// escaped.
pub fn resource_tags(res: &Resource) -> Vec<String> {
    res.attributes
        .iter()
        .map(|kv| escape_controls(&format!("{}={}", kv.key, value_string(kv))))
        .collect()
}

/// An endpoint's address as text (`""` when absent) and port (0).
fn endpoint_columns(e: &Option<Endpoint>) -> (String, u16) {
    let Some(e) = e else {
        return (String::new(), 0);
    };
    let ip = if let Ok(b) = <[u8; 4]>::try_from(e.ip.as_slice()) {
        Ipv4Addr::from(b).to_string()
    } else if let Ok(b) = <[u8; 16]>::try_from(e.ip.as_slice()) {
        Ipv6Addr::from(b).to_string()
    } else {
        String::new()
    };
    (ip, u16::try_from(e.port).unwrap_or(0))
}

/// `(mean, longest)` gap between consecutive token times given as offsets in time order
/// (`None`: fewer than two). The mean is `(last - first) / (n - 1)`, as for the wire's TPOT.
pub fn token_gaps(offsets_ns: &[u64]) -> Option<(u64, u64)> {
    let (first, last) = (offsets_ns.first()?, offsets_ns.last()?);
    if offsets_ns.len() < 2 {
        return None;
    }
    let mean = last.saturating_sub(*first) / (offsets_ns.len() as u64 - 1);
    let longest = offsets_ns
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
        .unwrap_or(0);
    Some((mean, longest))
}

impl RequestRow {
    /// From a validated request of `res`.
    pub fn from_proto(r: &Request, res: &Resource, batch_id: &str) -> Self {
        let (client_ip, client_port) = endpoint_columns(&r.client_endpoint);
        let (server_ip, server_port) = endpoint_columns(&r.server_endpoint);
        let engine_gaps = token_gaps(&r.engine_output_offsets_ns);
        Self {
            client_ip,
            client_port,
            server_ip,
            server_port,
            req_tcp_seq: r.req_tcp_seq,
            resp_tcp_seq: r.resp_tcp_seq,
            first_text_ns: r.first_text_ns,
            engine_output_offsets_ns: r.engine_output_offsets_ns.clone(),
            engine_tpot_ns: engine_gaps.map(|g| g.0),
            engine_max_gap_ns: engine_gaps.map(|g| g.1),
            tags: resource_tags(res),
            tenant: escape_controls(&r.tenant),
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            gpu_ns: r.gpu_ns,
            gpu_cost_ns: r.gpu_cost_ns,
            gpu_host_bound_ns: r.gpu_host_bound_ns,
            gpu_upper_bound_steps: r.gpu_upper_bound_steps,
            step_tokens: r.step_tokens.clone(),
            collectives: r.collectives,
            collective_wait_ns: r.collective_wait_ns,
            straggler_rank: r.straggler_rank,
            straggler_lag_ns: r.straggler_lag_ns,
            hop_id: r
                .req_tcp_seq
                .map(|s| inferscope_api::hop_id(s, r.resp_tcp_seq).to_string())
                .unwrap_or_default(),
            start: secs(r.start_unix_ns),
            start_unix_ns: r.start_unix_ns,
            end_unix_ns: r.end_unix_ns,
            trace_id: hex(&r.trace_id),
            node: escape_controls(&res.node),
            pid: res.pid,
            engine: escape_controls(&res.engine),
            model: escape_controls(&r.model),
            method: escape_controls(&r.method),
            path: escape_controls(&r.path),
            status: r.status as u16,
            outcome: escape_controls(&r.outcome),
            stream: u8::from(r.stream),
            e2e_ns: r.e2e_ns,
            ttft_ns: r.ttft_ns,
            tpot_ns: r.tpot_ns,
            frontend_ns: r.frontend_ns,
            queue_ns: r.queue_ns,
            prefill_ns: r.prefill_ns,
            decode_ns: r.decode_ns,
            delivery_ns: r.delivery_ns,
            engine_ttft_ns: r.engine_ttft_ns,
            engine_e2e_ns: r.engine_e2e_ns,
            read_wait_ns: r.read_wait_ns,
            req_bytes: r.req_bytes,
            resp_bytes: r.resp_bytes,
            chunks: r.chunks,
            engine_steps: r.engine_steps,
            max_gap_ns: r.max_gap_ns,
            client: escape_controls(&r.client),
            server: escape_controls(&r.server),
            response_id: escape_controls(&r.response_id),
            x_request_id: escape_controls(&r.x_request_id),
            engine_request_id: escape_controls(&r.engine_request_id),
            gave_up: escape_controls(&r.gave_up),
            step_ids: r.step_ids.clone(),
            chunk_offsets_ns: r.chunk_offsets_ns.clone(),
            batch_id: batch_id.to_string(),
            engine_instance: escape_controls(&r.engine_instance),
            netns: r.netns,
        }
    }
}

impl SpanRow {
    /// From a validated span of `res`.
    pub fn from_proto(s: &Span, res: &Resource, batch_id: &str) -> Self {
        Self {
            start: secs(s.start_unix_ns),
            trace_id: hex(&s.trace_id),
            span_id: hex(&s.span_id),
            parent_span_id: hex(&s.parent_span_id),
            name: escape_controls(&s.name),
            start_unix_ns: s.start_unix_ns,
            end_unix_ns: s.end_unix_ns,
            node: res.node.clone(),
            pid: res.pid,
            attr_keys: s
                .attributes
                .iter()
                .map(|kv| escape_controls(&kv.key))
                .collect(),
            attr_values: s
                .attributes
                .iter()
                .map(|kv| escape_controls(&value_string(kv)))
                .collect(),
            link_trace_ids: s.links.iter().map(|l| hex(&l.trace_id)).collect(),
            link_span_ids: s.links.iter().map(|l| hex(&l.span_id)).collect(),
            batch_id: batch_id.to_string(),
        }
    }
}

impl StepRow {
    /// From a validated engine step of `res`.
    pub fn from_proto(s: &EngineStep, res: &Resource) -> Self {
        Self {
            start: secs(s.start_unix_ns),
            node: res.node.clone(),
            engine_instance: s.engine_instance.clone(),
            step_id: s.step_id,
            start_unix_ns: s.start_unix_ns,
            end_unix_ns: s.end_unix_ns,
            batch_size: s.batch_size,
            trace_id: hex(&s.trace_id),
            span_id: hex(&s.span_id),
            batch_unit: s.batch_unit.clone(),
            tokens: s.tokens,
            gpu_class: s.gpu_class.clone(),
            gpu_ns: s.gpu_ns,
            gpu_launch_ns: s.gpu_launch_ns,
            graph_launches: s.graph_launches,
            kernel_launches: s.kernel_launches,
            dtoh_bytes: s.dtoh_bytes,
            htod_bytes: s.htod_bytes,
            sync_wait_ns: s.sync_wait_ns,
            host_bound: u8::from(s.host_bound),
            gpu_ranks: s.gpu_ranks,
            gpu_upper_bound: u8::from(s.gpu_upper_bound),
            collectives: s.collectives,
            collective_wait_ns: s.collective_wait_ns,
            straggler_rank: s.straggler_rank,
            straggler_lag_ns: s.straggler_lag_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_strings_are_stored_with_controls_escaped() {
        assert_eq!(escape_controls("tiny-llm"), "tiny-llm");
        assert_eq!(escape_controls("m\u{1b}[31mred"), "m\\u{1b}[31mred");
        let r = Request {
            model: "a\u{7}b".into(),
            path: "/v1/x\r\nX: y".into(),
            ..Default::default()
        };
        let row = RequestRow::from_proto(&r, &Resource::default(), "b");
        assert_eq!(row.model, "a\\u{7}b");
        assert_eq!(row.path, "/v1/x\\u{d}\\u{a}X: y");
    }

    #[test]
    fn resource_attributes_are_the_run_tags() {
        use inferscope_proto::v1::AnyValue;
        let kv = |k: &str, v: Value| KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
        };
        let res = Resource {
            attributes: vec![
                kv("run", Value::StringValue("ci-42".into())),
                kv("shard", Value::IntValue(3)),
                kv("x", Value::StringValue("a\u{1b}b".into())),
            ],
            ..Default::default()
        };
        let row = RequestRow::from_proto(&Request::default(), &res, "b");
        assert_eq!(row.tags, ["run=ci-42", "shard=3", "x=a\\u{1b}b"]);
    }

    #[test]
    fn engine_token_gaps() {
        assert_eq!(token_gaps(&[]), None);
        assert_eq!(token_gaps(&[5]), None);
        assert_eq!(token_gaps(&[10, 30, 90, 100]), Some((30, 60)));
        let r = Request {
            engine_output_offsets_ns: vec![1_000, 4_000, 5_000],
            ..Default::default()
        };
        let row = RequestRow::from_proto(&r, &Resource::default(), "b");
        assert_eq!(
            (row.engine_tpot_ns, row.engine_max_gap_ns),
            (Some(2_000), Some(3_000))
        );
    }
}
