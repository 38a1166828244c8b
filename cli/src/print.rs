//! The table form of each API response.
use std::collections::{BTreeMap, HashMap};

use inferscope_api::breakdown::{
    level_name, Breakdown, Cohort, PhaseDiff, PhaseMean, SlowVsMedian,
};
use inferscope_api::filters::FilterValues;
use inferscope_api::groups::Groups;
use inferscope_api::requests::{RequestList, RequestSummary};
use inferscope_api::trace::{SpanOut, StepOut, Trace};
use inferscope_api::SpanId;

use crate::table::{ms, ms_opt, pct, safe, signed, Table};

/// Engine steps listed in a trace table; longer lists show the longest steps.
pub(crate) const MAX_STEP_ROWS: usize = 30;

pub(crate) fn print_breakdown(b: &Breakdown, filters: &str) {
    println!(
        "{} requests from {} to {}{}",
        b.count,
        b.window.from,
        b.window.to,
        if filters.is_empty() {
            String::new()
        } else {
            format!("  ({filters})")
        }
    );
    if b.count == 0 {
        println!("no requests in this window: widen it (--since 6h) or relax the filters");
        return;
    }
    println!();
    let mut t = Table::new(
        &[
            "quantile", "e2e", "ttft", "tpot", "frontend", "queue", "prefill", "decode", "delivery",
        ],
        &[0],
    );
    for q in &b.quantiles {
        t.row(vec![
            format!("p{}", level_name(q.q)),
            ms_opt(q.e2e_ms),
            ms_opt(q.ttft_ms),
            ms_opt(q.tpot_ms),
            ms_opt(q.frontend_ms),
            ms_opt(q.queue_ms),
            ms_opt(q.prefill_ms),
            ms_opt(q.decode_ms),
            ms_opt(q.delivery_ms),
        ]);
    }
    print!("{}", t.render());
    let s = &b.samples;
    println!(
        "(ms; known for: tpot {}, frontend {}, queue {}, prefill {}, decode {}, delivery {} of {} requests)",
        s.tpot,
        s.phases.frontend,
        s.phases.queue,
        s.phases.prefill,
        s.phases.decode,
        s.phases.delivery,
        b.count
    );
    print_resource_quantiles(b);
    print_token_gaps(b);
    let Some(c) = &b.slow_vs_median else {
        return;
    };
    println!();
    println!("What is different about the slow requests (mean ms per request, % of mean e2e):");
    println!("  slow:   {}, {} requests", c.slow.definition, c.slow.count);
    println!(
        "  median: {}, {} requests",
        c.median.definition, c.median.count
    );
    println!();
    let mut t = cohort_table("phase");
    let row = cohort_row;
    for ((name, a), ((_, m), (_, d))) in c
        .slow
        .phases
        .iter()
        .zip(c.median.phases.iter().zip(c.diff.iter()))
    {
        t.row(row(name, a, m, d));
    }
    t.row(row(
        "unattributed",
        &c.slow.unattributed,
        &c.median.unattributed,
        &c.unattributed_diff,
    ));
    let e2e = |x: &Cohort| PhaseMean {
        mean_ms: x.mean_e2e_ms,
        share: 1.0,
        requests: x.count,
    };
    let mut last = row(
        "e2e",
        &e2e(&c.slow),
        &e2e(&c.median),
        &PhaseDiff {
            mean_ms: c.slow.mean_e2e_ms - c.median.mean_e2e_ms,
            share: 0.0,
        },
    );
    last[6] = String::new();
    t.row(last);
    print!("{}", t.render());
    print_resource_cohorts(c);
    if let Some(name) = &c.largest_difference {
        let d = c
            .diff
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| c.unattributed_diff.clone());
        println!(
            "\nlargest difference: {name} ({} ms per request, {} points of e2e)",
            signed(ms(d.mean_ms)),
            signed(format!("{:.1}", d.share * 100.0))
        );
    }
}

/// A cohort table whose first column names a phase or a resource.
fn cohort_table(first: &'static str) -> Table {
    Table::new(
        &[
            first,
            "slow ms",
            "slow %",
            "median ms",
            "median %",
            "diff ms",
            "diff pts",
        ],
        &[0],
    )
}

/// One row of a cohort table: the slow and median means and shares, and their difference.
fn cohort_row(name: &str, a: &PhaseMean, m: &PhaseMean, d: &PhaseDiff) -> Vec<String> {
    vec![
        name.to_string(),
        ms(a.mean_ms),
        pct(a.share),
        ms(m.mean_ms),
        pct(m.share),
        signed(ms(d.mean_ms)),
        signed(format!("{:.1}", d.share * 100.0)),
    ]
}

/// GPU time, CPU-bound time and collective wait per request, when the window has any.
fn print_resource_quantiles(b: &Breakdown) {
    let s = &b.samples.resources;
    if s.iter().all(|(_, &n)| n == 0) {
        return;
    }
    println!();
    let mut t = Table::new(&["quantile", "gpu", "cpu-bound", "collective wait"], &[0]);
    for q in &b.quantiles {
        let r = &q.resources;
        t.row(vec![
            format!("p{}", level_name(q.q)),
            ms_opt(r.gpu),
            ms_opt(r.gpu_host_bound),
            ms_opt(r.collective_wait),
        ]);
    }
    print!("{}", t.render());
    println!(
        "(ms per request, overlapping the phases; known for: gpu {}, cpu-bound {}, collective wait {} of {} requests)",
        s.gpu, s.gpu_host_bound, s.collective_wait, b.count
    );
}

/// Token gaps, the client's beside the engine's, when the window has any.
fn print_token_gaps(b: &Breakdown) {
    let s = &b.samples.gaps;
    if s.iter().all(|(_, &n)| n == 0) {
        return;
    }
    println!();
    let mut t = Table::new(
        &[
            "quantile",
            "tpot wire",
            "tpot engine",
            "max gap wire",
            "max gap engine",
        ],
        &[0],
    );
    for q in &b.quantiles {
        t.row(vec![
            format!("p{}", level_name(q.q)),
            ms_opt(q.tpot_ms),
            ms_opt(q.gaps.engine_tpot),
            ms_opt(q.gaps.max_gap),
            ms_opt(q.gaps.engine_max_gap),
        ]);
    }
    print!("{}", t.render());
    println!(
        "(ms; token gaps the client saw beside the engine's own; known for: wire tpot {}, engine tpot {}, wire gap {}, engine gap {} of {} requests)",
        b.samples.tpot, s.engine_tpot, s.max_gap, s.engine_max_gap, b.count
    );
}

/// The resources of the two cohorts, when either has any.
fn print_resource_cohorts(c: &SlowVsMedian) {
    if c.slow
        .resources
        .iter()
        .chain(c.median.resources.iter())
        .all(|(_, m)| m.requests == 0)
    {
        return;
    }
    let mut t = cohort_table("resource");
    for (((name, a), (_, m)), (_, d)) in c
        .slow
        .resources
        .iter()
        .zip(c.median.resources.iter())
        .zip(c.resources_diff.iter())
    {
        t.row(cohort_row(&name.replace('_', " "), a, m, d));
    }
    println!("\nGPU side (overlaps the phases above):");
    print!("{}", t.render());
}

/// A request's GPU side in one line (`None`: the GPU hooks saw none of its steps).
fn gpu_line(r: &RequestSummary) -> Option<String> {
    let mut parts = vec![format!("GPU {} ms", ms(r.gpu_ms?))];
    if let Some(c) = r.gpu_cost_ms {
        parts.push(format!("cost {} ms", ms(c)));
    }
    if let Some(h) = r.gpu_host_bound_ms.filter(|&h| h > 0.0) {
        parts.push(format!("cpu-bound {} ms", ms(h)));
    }
    if r.gpu_upper_bound_steps.is_some_and(|n| n > 0) {
        parts.push("upper bound".into());
    }
    if let (Some(n), Some(w)) = (r.collectives, r.collective_wait_ms) {
        parts.push(format!("{n} collectives waited {} ms", ms(w)));
    }
    if let (Some(rank), Some(lag)) = (r.straggler_rank, r.straggler_lag_ms) {
        parts.push(format!("straggler rank {rank} (+{} ms)", ms(lag)));
    }
    Some(parts.join(", "))
}

pub(crate) fn print_requests(l: &RequestList, filters: &str) {
    let mut t = Table::new(
        &[
            "start", "trace_id", "node", "model", "status", "outcome", "e2e", "ttft", "queue",
            "prefill", "decode",
        ],
        &[0, 1, 2, 3, 5],
    );
    for r in &l.requests {
        t.row(vec![
            r.start.clone(),
            r.trace_id.to_string(),
            r.node.clone(),
            r.model.clone(),
            r.status.to_string(),
            r.outcome.clone(),
            ms(r.e2e_ms),
            ms(r.ttft_ms),
            ms_opt(r.queue_ms),
            ms_opt(r.prefill_ms),
            ms_opt(r.decode_ms),
        ]);
    }
    if l.requests.is_empty() {
        println!(
            "no requests from {} to {}{} (of {} matching)",
            l.window.from,
            l.window.to,
            if filters.is_empty() {
                String::new()
            } else {
                format!(" with {filters}")
            },
            l.total
        );
        return;
    }
    print!("{}", t.render());
    println!(
        "\n{}..{} of {} (ms, sorted by {} {}){}",
        l.offset + 1,
        l.offset + l.requests.len() as u64,
        l.total,
        l.sort,
        l.order,
        l.next_offset
            .map(|n| format!("; next page: --offset {n}"))
            .unwrap_or_default()
    );
}

/// `inferscope groups`: one row per value, p50/p90/p99 of e2e, ttft and tpot (the quantiles
/// the command asks for).
pub(crate) fn print_groups(g: &Groups, filters: &str) {
    let mut t = Table::new(
        &[
            "value", "requests", "5xx", "e2e p50", "p90", "p99", "ttft p50", "p90", "p99",
            "tpot p50", "p90", "p99",
        ],
        &[0],
    );
    for r in &g.groups {
        let mut row = vec![
            if r.value.is_empty() {
                "(none)".into()
            } else {
                r.value.clone()
            },
            r.count.to_string(),
            r.errors.to_string(),
        ];
        for list in [&r.e2e_ms, &r.ttft_ms, &r.tpot_ms] {
            row.extend((0..3).map(|i| ms_opt(list.get(i).copied().flatten())));
        }
        t.row(row);
    }
    let with = if filters.is_empty() {
        String::new()
    } else {
        format!(" with {filters}")
    };
    if g.groups.is_empty() {
        println!(
            "no requests from {} to {}{with}",
            g.window.from, g.window.to
        );
        return;
    }
    print!("{}", t.render());
    println!(
        "
{} requests by {}{with} (ms){}",
        g.count,
        g.by,
        if g.truncated {
            "; more groups: raise --limit"
        } else {
            ""
        }
    );
}

pub(crate) fn print_request_rows(rs: &[RequestSummary], steps: &[usize]) {
    let mut t = Table::new(
        &[
            "node",
            "engine",
            "model",
            "status",
            "outcome",
            "e2e",
            "ttft",
            "first text",
            "frontend",
            "queue",
            "prefill",
            "decode",
            "delivery",
            "steps",
        ],
        &[0, 1, 2, 4],
    );
    for (r, n) in rs.iter().zip(steps) {
        t.row(vec![
            r.node.clone(),
            r.engine.clone(),
            r.model.clone(),
            r.status.to_string(),
            r.outcome.clone(),
            ms(r.e2e_ms),
            ms(r.ttft_ms),
            ms_opt(r.first_text_ms),
            ms_opt(r.frontend_ms),
            ms_opt(r.queue_ms),
            ms_opt(r.prefill_ms),
            ms_opt(r.decode_ms),
            ms_opt(r.delivery_ms),
            n.to_string(),
        ]);
    }
    print!("{}", t.render());
}

pub(crate) fn span_label(s: &SpanOut) -> String {
    let a = &s.attributes;
    let mut extra = Vec::new();
    for k in [
        "http.method",
        "http.target",
        "http.status_code",
        "gen_ai.request.model",
    ] {
        if let Some(v) = a.get(k) {
            extra.push(v.clone());
        }
    }
    if extra.is_empty() {
        s.name.clone()
    } else {
        format!("{} {}", s.name, extra.join(" "))
    }
}

/// The span tree, depth first; consecutive `engine.step` children are folded into one line.
pub(crate) fn print_spans(spans: &[SpanOut]) {
    let ids: HashMap<(&str, SpanId), usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| ((s.node.as_str(), s.span_id), i))
        .collect();
    let by_id: HashMap<SpanId, usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.span_id, i))
        .collect();
    let mut children: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        // Parent on the same node first, then anywhere (a caller on another node).
        let parent = s
            .parent_span_id
            .and_then(|p| ids.get(&(s.node.as_str(), p)).or_else(|| by_id.get(&p)))
            .filter(|&&p| p != i);
        match parent {
            Some(&p) => children.entry(p).or_default().push(i),
            None => roots.push(i),
        }
    }
    let mut t = Table::new(&["offset", "duration", "node", "span"], &[2, 3]);
    pub(crate) fn walk(
        i: usize,
        depth: usize,
        spans: &[SpanOut],
        children: &BTreeMap<usize, Vec<usize>>,
        t: &mut Table,
        seen: &mut Vec<bool>,
    ) {
        if std::mem::replace(&mut seen[i], true) {
            return;
        }
        let s = &spans[i];
        t.row(vec![
            ms(s.offset_ms),
            ms(s.duration_ms),
            s.node.clone(),
            format!("{}{}", "  ".repeat(depth), span_label(s)),
        ]);
        let kids = children.get(&i).map(Vec::as_slice).unwrap_or_default();
        let steps: Vec<usize> = kids
            .iter()
            .copied()
            .filter(|&j| spans[j].name == "engine.step")
            .collect();
        let fold = steps.len() > 3;
        let mut folded = false;
        for &k in kids {
            let c = &spans[k];
            if fold && c.name == "engine.step" {
                if !std::mem::replace(&mut folded, true) {
                    let total: f64 = steps.iter().map(|&j| spans[j].duration_ms).sum();
                    t.row(vec![
                        ms(c.offset_ms),
                        ms(total),
                        c.node.clone(),
                        format!(
                            "{}engine.step x{} (durations summed; see engine steps below)",
                            "  ".repeat(depth + 1),
                            steps.len()
                        ),
                    ]);
                }
                seen[k] = true;
                continue;
            }
            walk(k, depth + 1, spans, children, t, seen);
        }
    }
    let mut seen = vec![false; spans.len()];
    for r in roots {
        walk(r, 0, spans, &children, &mut t, &mut seen);
    }
    print!("{}", t.render());
}

pub(crate) fn print_trace(tr: &Trace) {
    println!("trace {} on {}", tr.trace_id, safe(&tr.nodes.join(", ")));
    if !tr.requests.is_empty() {
        println!("\nrequests (ms):");
        let rs: Vec<RequestSummary> = tr.requests.iter().map(|r| r.request.clone()).collect();
        let steps: Vec<usize> = tr.requests.iter().map(|r| r.step_ids.len()).collect();
        print_request_rows(&rs, &steps);
        for r in &rs {
            if let Some(line) = gpu_line(r) {
                println!("{}: {line}", r.trace_id);
            }
        }
    }
    if !tr.spans.is_empty() {
        println!(
            "\nspans ({}{}; ms from the first span):",
            tr.spans.len(),
            if tr.spans_truncated {
                ", truncated"
            } else {
                ""
            }
        );
        print_spans(&tr.spans);
    }
    if !tr.steps.is_empty() {
        println!(
            "\nengine steps ({}{}; ms):",
            tr.steps.len(),
            if tr.steps_truncated {
                ", truncated"
            } else {
                ""
            }
        );
        let mut t = Table::new(
            &[
                "node",
                "step",
                "instance",
                "offset",
                "duration",
                "batch",
                "gpu",
                "straggler",
                "shared",
                "with",
            ],
            &[0, 2, 6, 7, 9],
        );
        let mut shown: Vec<&StepOut> = tr.steps.iter().collect();
        if shown.len() > MAX_STEP_ROWS {
            shown.sort_by(|a, b| {
                b.duration_ms
                    .unwrap_or(0.0)
                    .total_cmp(&a.duration_ms.unwrap_or(0.0))
            });
            shown.truncate(MAX_STEP_ROWS);
            shown.sort_by_key(|s| (s.node.clone(), s.step_id));
            println!(
                "(the {MAX_STEP_ROWS} longest of {} steps; --output json lists all)",
                tr.steps.len()
            );
        }
        for s in shown {
            let with = match s.shared_with.as_slice() {
                [] => String::new(),
                [one] => one.to_string(),
                [first, ..] => format!("{first} +{}", s.shared_with_count - 1),
            };
            t.row(vec![
                s.node.clone(),
                s.step_id.to_string(),
                s.engine_instance.clone().unwrap_or_else(|| "-".into()),
                ms_opt(s.offset_ms),
                ms_opt(s.duration_ms),
                s.batch_size.map_or("-".into(), |b| b.to_string()),
                s.gpu.as_ref().map_or("-".into(), |g| {
                    format!(
                        "{} {}{}",
                        ms(g.gpu_ms),
                        g.class,
                        if g.host_bound { " cpu-bound" } else { "" }
                    )
                }),
                s.collectives.as_ref().map_or("-".into(), |c| {
                    format!("rank {} +{}", c.straggler_rank, ms(c.straggler_lag_ms))
                }),
                s.shared_with_count.to_string(),
                with,
            ]);
        }
        print!("{}", t.render());
    }
    if !tr.batched_with.is_empty() {
        println!("\nbatched with ({} requests, ms):", tr.batched_with.len());
        let mut t = Table::new(
            &["trace_id", "model", "status", "e2e", "ttft", "shared steps"],
            &[0, 1],
        );
        for n in &tr.batched_with {
            t.row(vec![
                n.request.trace_id.to_string(),
                n.request.model.clone(),
                n.request.status.to_string(),
                ms(n.request.e2e_ms),
                ms(n.request.ttft_ms),
                n.shared_steps.to_string(),
            ]);
        }
        print!("{}", t.render());
    }
}

pub(crate) fn print_filters(f: &FilterValues) {
    println!(
        "{} requests from {} to {}",
        f.count, f.window.from, f.window.to
    );
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            safe(&v.join(", "))
        }
    };
    println!("models:   {}", list(&f.models));
    println!("nodes:    {}", list(&f.nodes));
    println!("engines:  {}", list(&f.engines));
    println!(
        "statuses: {}",
        list(&f.statuses.iter().map(u16::to_string).collect::<Vec<_>>())
    );
    println!("outcomes: {}", list(&f.outcomes));
    println!("tags:     {}", list(&f.tags));
    println!("tenants:  {}", list(&f.tenants));
}

/// `inferscope explain`: the summary, then each finding with its excess over typical.
pub(crate) fn print_explanation(v: &serde_json::Value) {
    println!("{}", safe(v["summary"].as_str().unwrap_or("")));
    let Some(findings) = v["findings"].as_array() else {
        return;
    };
    println!();
    for f in findings {
        let excess = f["excess_ms"].as_f64().unwrap_or(0.0);
        println!(
            "{:>+10.2} ms  {:<22} {}",
            excess,
            safe(f["cause"].as_str().unwrap_or("")),
            safe(f["sentence"].as_str().unwrap_or(""))
        );
    }
}
