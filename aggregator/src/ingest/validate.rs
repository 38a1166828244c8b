//! Batch validation: everything a node sends is checked before anything is stored. A batch is
//! accepted whole or rejected whole, with one reason (a stable snake_case label, also the metric
//! label) and a message saying what was wrong.
use inferscope_proto::v1::{Batch, KeyValue, Request, Span};

/// Limits applied to every batch.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests + spans + steps per batch.
    pub max_rows: usize,
    /// Attributes per span.
    pub max_attributes: usize,
    /// Length of any string field.
    pub max_string: usize,
    /// Accepted clock skew into the future, ns.
    pub max_future_ns: u64,
    /// Oldest accepted timestamp age, ns.
    pub max_age_ns: u64,
    /// Widest span of start times within one batch, ns: a batch is written to the daily
    /// partitions its rows fall in, so rows spread over many days would make many parts.
    pub max_spread_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_rows: 200_000,
            max_attributes: 64,
            max_string: 4096,
            max_future_ns: 3_600 * 1_000_000_000,
            max_age_ns: 30 * 24 * 3_600 * 1_000_000_000,
            max_spread_ns: 24 * 3_600 * 1_000_000_000,
        }
    }
}

/// Why a batch was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Stable label (metric label).
    pub reason: &'static str,
    /// What exactly.
    pub message: String,
}

fn bad(reason: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        reason,
        message: message.into(),
    }
}

fn check_str(field: &str, s: &str, l: &Limits) -> Result<(), Invalid> {
    if s.len() > l.max_string {
        return Err(bad(
            "string_too_long",
            format!("{field} is {} bytes (max {})", s.len(), l.max_string),
        ));
    }
    Ok(())
}

fn check_time(what: &str, start: u64, end: u64, now: u64, l: &Limits) -> Result<(), Invalid> {
    if start == 0 || end < start {
        return Err(bad(
            "bad_timestamps",
            format!("{what}: start {start} / end {end}"),
        ));
    }
    if end > now + l.max_future_ns || start + l.max_age_ns < now {
        return Err(bad(
            "timestamp_out_of_range",
            format!("{what}: {start}..{end} is too far from now ({now})"),
        ));
    }
    Ok(())
}

fn check_attrs(attrs: &[KeyValue], l: &Limits) -> Result<(), Invalid> {
    if attrs.len() > l.max_attributes {
        return Err(bad(
            "too_many_attributes",
            format!("{} attributes (max {})", attrs.len(), l.max_attributes),
        ));
    }
    for kv in attrs {
        if kv.key.is_empty() {
            return Err(bad("missing_field", "attribute with an empty key"));
        }
        check_str("attribute key", &kv.key, l)?;
        if let Some(inferscope_proto::v1::any_value::Value::StringValue(v)) =
            kv.value.as_ref().and_then(|v| v.value.as_ref())
        {
            check_str("attribute value", v, l)?;
        }
    }
    Ok(())
}

fn check_request(r: &Request, now: u64, l: &Limits) -> Result<(), Invalid> {
    if r.trace_id.len() != 16 || r.trace_id.iter().all(|&b| b == 0) {
        return Err(bad(
            "bad_trace_id",
            format!(
                "request trace_id has {} bytes (want 16, not all zero)",
                r.trace_id.len()
            ),
        ));
    }
    check_time("request", r.start_unix_ns, r.end_unix_ns, now, l)?;
    if r.status > 999 {
        return Err(bad("bad_status", format!("status {}", r.status)));
    }
    if r.method.is_empty() {
        return Err(bad("missing_field", "request without method"));
    }
    for (f, s) in [
        ("method", &r.method),
        ("path", &r.path),
        ("outcome", &r.outcome),
        ("model", &r.model),
        ("client", &r.client),
        ("server", &r.server),
        ("response_id", &r.response_id),
        ("x_request_id", &r.x_request_id),
        ("engine_request_id", &r.engine_request_id),
        ("gave_up", &r.gave_up),
        ("engine_instance", &r.engine_instance),
        ("tenant", &r.tenant),
    ] {
        check_str(f, s, l)?;
    }
    if r.e2e_ns > r.end_unix_ns - r.start_unix_ns + 1_000_000 {
        return Err(bad(
            "inconsistent_durations",
            format!("e2e {} exceeds end - start", r.e2e_ns),
        ));
    }
    if r.first_text_ns.is_some_and(|t| t > r.e2e_ns) {
        return Err(bad(
            "inconsistent_durations",
            format!("first_text {:?} exceeds e2e {}", r.first_text_ns, r.e2e_ns),
        ));
    }
    for (f, e) in [
        ("client_endpoint", &r.client_endpoint),
        ("server_endpoint", &r.server_endpoint),
    ] {
        if let Some(e) = e {
            if !matches!(e.ip.len(), 4 | 16) || e.port > u32::from(u16::MAX) {
                return Err(bad(
                    "bad_endpoint",
                    format!(
                        "{f}: ip of {} bytes (want 4 or 16), port {}",
                        e.ip.len(),
                        e.port
                    ),
                ));
            }
        }
    }
    if r.step_ids.len() > 1_000_000
        || r.chunk_offsets_ns.len() > 100_000
        || r.engine_output_offsets_ns.len() > 100_000
    {
        return Err(bad(
            "too_many_items",
            "step_ids, chunk_offsets_ns or engine_output_offsets_ns too long",
        ));
    }
    if !r.step_tokens.is_empty() && r.step_tokens.len() != r.step_ids.len() {
        return Err(bad(
            "inconsistent_steps",
            format!(
                "{} step_tokens for {} step_ids (want as many, or none)",
                r.step_tokens.len(),
                r.step_ids.len()
            ),
        ));
    }
    if r.gpu_cost_ns > r.gpu_ns || r.gpu_host_bound_ns.is_some() && r.gpu_ns.is_none() {
        return Err(bad(
            "inconsistent_durations",
            format!(
                "gpu_cost {:?} / host_bound {:?} without or above gpu {:?}",
                r.gpu_cost_ns, r.gpu_host_bound_ns, r.gpu_ns
            ),
        ));
    }
    check_collectives(
        r.collectives,
        r.collective_wait_ns,
        r.straggler_rank,
        r.straggler_lag_ns,
    )
}

/// A request's or step's collectives: a straggler only with collectives, its lag within the
/// waits (it is the last arrival of some of them).
fn check_collectives(
    n: Option<u32>,
    wait: Option<u64>,
    rank: Option<u32>,
    lag: Option<u64>,
) -> Result<(), Invalid> {
    if rank.is_some() && n.is_none() || lag > wait {
        return Err(bad(
            "inconsistent_durations",
            format!(
                "straggler rank {rank:?} lag {lag:?} without collectives {n:?} or above their wait {wait:?}"
            ),
        ));
    }
    Ok(())
}

fn check_span(s: &Span, now: u64, l: &Limits) -> Result<(), Invalid> {
    if s.trace_id.len() != 16 || s.trace_id.iter().all(|&b| b == 0) {
        return Err(bad(
            "bad_trace_id",
            format!(
                "span trace_id has {} bytes (want 16, not all zero)",
                s.trace_id.len()
            ),
        ));
    }
    if s.span_id.len() != 8 || s.span_id.iter().all(|&b| b == 0) {
        return Err(bad(
            "bad_span_id",
            format!(
                "span_id has {} bytes (want 8, not all zero)",
                s.span_id.len()
            ),
        ));
    }
    if !s.parent_span_id.is_empty() && s.parent_span_id.len() != 8 {
        return Err(bad(
            "bad_span_id",
            format!(
                "parent_span_id has {} bytes (want 0 or 8)",
                s.parent_span_id.len()
            ),
        ));
    }
    if s.name.is_empty() {
        return Err(bad("missing_field", "span without name"));
    }
    check_str("span name", &s.name, l)?;
    check_time("span", s.start_unix_ns, s.end_unix_ns, now, l)?;
    check_attrs(&s.attributes, l)?;
    for link in &s.links {
        if link.trace_id.len() != 16 || link.span_id.len() != 8 {
            return Err(bad("bad_link", "span link ids must be 16 and 8 bytes"));
        }
    }
    Ok(())
}

/// The rows of one resource start within [`Limits::max_spread_ns`] of each other (node-probe's
/// batches span seconds; the request timeout bounds a request's own length).
fn check_spread(rd: &inferscope_proto::v1::ResourceData, l: &Limits) -> Result<(), Invalid> {
    let starts = rd
        .requests
        .iter()
        .map(|r| r.start_unix_ns)
        .chain(rd.spans.iter().map(|s| s.start_unix_ns))
        .chain(rd.steps.iter().map(|s| s.start_unix_ns));
    let (lo, hi) = starts.fold((u64::MAX, 0), |(lo, hi), t| (lo.min(t), hi.max(t)));
    if hi > lo && hi - lo > l.max_spread_ns {
        return Err(bad(
            "timestamps_spread",
            format!(
                "rows of one batch start {:.1} h apart (max {:.0} h): send them in batches of their own",
                (hi - lo) as f64 / 3.6e12,
                l.max_spread_ns as f64 / 3.6e12
            ),
        ));
    }
    Ok(())
}

/// Validates a whole batch against `now` (Unix ns).
pub fn validate(b: &Batch, now: u64, l: &Limits) -> Result<(), Invalid> {
    if b.node_id.is_empty() || b.node_id.len() > 256 {
        return Err(bad("missing_field", "node_id must be 1..=256 bytes"));
    }
    if b.boot_id.is_empty() || b.boot_id.len() > 64 {
        return Err(bad("missing_field", "boot_id must be 1..=64 bytes"));
    }
    // They are joined with '/' into the batch identity: a '/' inside would make two different
    // batches look the same.
    if b.node_id.contains('/') || b.boot_id.contains('/') {
        return Err(bad(
            "bad_batch_id",
            "node_id and boot_id must not contain '/'",
        ));
    }
    if b.sequence == 0 {
        return Err(bad("missing_field", "sequence must start at 1"));
    }
    let rows: usize = b
        .resources
        .iter()
        .map(|r| r.requests.len() + r.spans.len() + r.steps.len())
        .sum();
    if b.resources.iter().all(|r| r.requests.is_empty()) {
        // Nothing to store; node-probe never sends one. Refused so that no id is claimed by a
        // batch that carries nothing.
        return Err(bad("empty_batch", "a batch carries at least one request"));
    }
    if rows > l.max_rows {
        return Err(bad(
            "batch_too_large",
            format!("{rows} rows (max {})", l.max_rows),
        ));
    }
    for rd in &b.resources {
        let Some(res) = &rd.resource else {
            return Err(bad("missing_field", "resource data without resource"));
        };
        if res.node.is_empty() {
            return Err(bad("missing_field", "resource without node"));
        }
        check_str("node", &res.node, l)?;
        check_str("engine", &res.engine, l)?;
        check_attrs(&res.attributes, l)?;
        for r in &rd.requests {
            check_request(r, now, l)?;
        }
        for s in &rd.spans {
            check_span(s, now, l)?;
        }
        check_spread(rd, l)?;
        for s in &rd.steps {
            check_time(
                "engine step",
                s.start_unix_ns,
                s.end_unix_ns.max(s.start_unix_ns),
                now,
                l,
            )?;
            check_str("engine_instance", &s.engine_instance, l)?;
            check_str("batch_unit", &s.batch_unit, l)?;
            if !matches!(
                s.gpu_class.as_str(),
                "" | "full_graph" | "piecewise" | "eager"
            ) {
                return Err(bad(
                    "bad_gpu_class",
                    format!(
                        "engine step gpu_class {:?}",
                        s.gpu_class.chars().take(32).collect::<String>()
                    ),
                ));
            }
            check_collectives(
                s.collectives,
                Some(s.collective_wait_ns),
                s.straggler_rank,
                Some(s.straggler_lag_ns),
            )?;
            // Older senders send no span context; a present one is a valid W3C pair.
            let ctx_ok = (s.trace_id.is_empty() && s.span_id.is_empty())
                || (s.trace_id.len() == 16
                    && s.span_id.len() == 8
                    && s.trace_id.iter().any(|&b| b != 0)
                    && s.span_id.iter().any(|&b| b != 0));
            if !ctx_ok {
                return Err(bad(
                    "bad_span_id",
                    "engine step trace_id/span_id must be empty or 16 and 8 bytes, not all zero",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferscope_proto::v1::{Resource, ResourceData};

    const NOW: u64 = 1_800_000_000_000_000_000;

    fn good() -> Batch {
        Batch {
            node_id: "n1".into(),
            boot_id: "b1".into(),
            sequence: 1,
            resend: false,
            resources: vec![ResourceData {
                resource: Some(Resource {
                    node: "n1".into(),
                    pid: 7,
                    engine: "vllm".into(),
                    ..Default::default()
                }),
                requests: vec![Request {
                    trace_id: vec![1; 16],
                    method: "POST".into(),
                    path: "/v1/completions".into(),
                    status: 200,
                    start_unix_ns: NOW - 1_000_000,
                    end_unix_ns: NOW,
                    e2e_ns: 1_000_000,
                    ..Default::default()
                }],
                spans: vec![Span {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    name: "http.server".into(),
                    start_unix_ns: NOW - 1_000_000,
                    end_unix_ns: NOW,
                    ..Default::default()
                }],
                steps: vec![],
            }],
        }
    }

    #[test]
    fn accepts_good_and_rejects_each_kind_of_bad() {
        let l = Limits::default();
        assert_eq!(validate(&good(), NOW, &l), Ok(()));
        type Mutation = Box<dyn Fn(&mut Batch)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("missing_field", Box::new(|b| b.node_id.clear())),
            ("bad_batch_id", Box::new(|b| b.node_id = "a/b".into())),
            ("bad_batch_id", Box::new(|b| b.boot_id = "b/c".into())),
            ("missing_field", Box::new(|b| b.sequence = 0)),
            ("empty_batch", Box::new(|b| b.resources[0].requests.clear())),
            ("empty_batch", Box::new(|b| b.resources.clear())),
            (
                "missing_field",
                Box::new(|b| b.resources[0].resource = None),
            ),
            (
                "bad_trace_id",
                Box::new(|b| b.resources[0].requests[0].trace_id = vec![1; 3]),
            ),
            (
                "bad_trace_id",
                Box::new(|b| b.resources[0].spans[0].trace_id = vec![0; 16]),
            ),
            (
                "bad_span_id",
                Box::new(|b| b.resources[0].spans[0].span_id = vec![]),
            ),
            (
                "bad_timestamps",
                Box::new(|b| b.resources[0].requests[0].end_unix_ns = 1),
            ),
            (
                "timestamp_out_of_range",
                Box::new(|b| {
                    let r = &mut b.resources[0].requests[0];
                    r.start_unix_ns = 1;
                    r.end_unix_ns = 2;
                    r.e2e_ns = 1;
                }),
            ),
            (
                "bad_status",
                Box::new(|b| b.resources[0].requests[0].status = 70000),
            ),
            (
                "timestamps_spread",
                Box::new(|b| {
                    let mut r = b.resources[0].requests[0].clone();
                    r.start_unix_ns -= 3 * 24 * 3_600 * 1_000_000_000;
                    r.end_unix_ns = r.start_unix_ns + 1_000_000;
                    r.e2e_ns = 1_000_000;
                    b.resources[0].requests.push(r);
                }),
            ),
            (
                "bad_endpoint",
                Box::new(|b| {
                    b.resources[0].requests[0].client_endpoint =
                        Some(inferscope_proto::v1::Endpoint {
                            ip: vec![1; 5],
                            port: 1,
                            netns: 0,
                        })
                }),
            ),
            (
                "bad_span_id",
                Box::new(|b| {
                    b.resources[0].steps = vec![inferscope_proto::v1::EngineStep {
                        step_id: 1,
                        start_unix_ns: NOW - 10,
                        end_unix_ns: NOW,
                        trace_id: vec![1; 16],
                        ..Default::default()
                    }]
                }),
            ),
            (
                "string_too_long",
                Box::new(|b| b.resources[0].requests[0].path = "x".repeat(5000)),
            ),
            (
                "inconsistent_durations",
                Box::new(|b| b.resources[0].requests[0].e2e_ns = u64::MAX),
            ),
            (
                "inconsistent_durations",
                Box::new(|b| {
                    let r = &mut b.resources[0].requests[0];
                    (r.collectives, r.collective_wait_ns) = (Some(2), Some(10));
                    (r.straggler_rank, r.straggler_lag_ns) = (Some(1), Some(11));
                }),
            ),
            (
                "inconsistent_durations",
                Box::new(|b| {
                    b.resources[0].steps = vec![inferscope_proto::v1::EngineStep {
                        step_id: 1,
                        start_unix_ns: NOW - 10,
                        end_unix_ns: NOW,
                        straggler_rank: Some(1),
                        ..Default::default()
                    }]
                }),
            ),
            (
                "batch_too_large",
                Box::new(|b| {
                    let s = b.resources[0].spans[0].clone();
                    b.resources[0].spans = vec![s; 200_001];
                }),
            ),
        ];
        for (want, f) in cases {
            let mut b = good();
            f(&mut b);
            let e = validate(&b, NOW, &l).expect_err(want);
            assert_eq!(e.reason, want, "{}", e.message);
        }
    }
}
