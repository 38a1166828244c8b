//! The gate's report: JSON (the [`Report`] struct) and Markdown (for a pull-request comment).
use std::fmt::Write as _;

use inferscope_api::breakdown::level_name;
use serde::{Deserialize, Serialize};

use super::compare::{Check, Comparison, Verdict};
use super::stats::Rule;

/// The overall result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// No check found a regression (exit 0).
    Pass,
    /// At least one check did (exit 1).
    Regression,
    /// Too few requests to judge (exit 2).
    NotEnoughData,
}

impl Outcome {
    /// The process exit status.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Pass => 0,
            Outcome::Regression => 1,
            Outcome::NotEnoughData => 2,
        }
    }
}

/// What one side was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Side {
    /// `api` or the file it was read from.
    pub source: String,
    /// Window start, RFC 3339.
    pub from: String,
    /// Window end.
    pub to: String,
    /// Filters, `key=value`.
    pub filters: Vec<String>,
    /// Requests in the window.
    pub requests: u64,
    /// Requests used (fewer when the window held more than the sample limit).
    pub used: u64,
}

/// `inferscope gate --output json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Overall result.
    pub outcome: Outcome,
    /// Why, in one sentence.
    pub summary: String,
    /// Baseline.
    pub baseline: Side,
    /// Candidate.
    pub candidate: Side,
    /// The rule applied.
    pub rule: Rule,
    /// Checks with enough data.
    pub tested: usize,
    /// One-sided error per check.
    pub alpha_per_check: f64,
    /// Every check.
    pub checks: Vec<Check>,
}

impl Report {
    /// Builds the report; `min_requests` is the fewest e2e values a side may have.
    pub fn new(
        baseline: Side,
        candidate: Side,
        rule: Rule,
        cmp: Comparison,
        min_requests: u64,
    ) -> Self {
        let regressions: Vec<&Check> = cmp
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Regression && c.gating)
            .collect();
        let moved: Vec<String> = cmp
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Regression && !c.gating)
            .map(short)
            .collect();
        let moved = if moved.is_empty() {
            String::new()
        } else {
            format!("; diagnostic checks that moved: {}", moved.join(", "))
        };
        let (outcome, summary) = if baseline.used < min_requests || candidate.used < min_requests {
            (
                Outcome::NotEnoughData,
                format!(
                    "not enough requests: baseline {}, candidate {} (at least {min_requests} each)",
                    baseline.used, candidate.used
                ),
            )
        } else if cmp.tested == 0 {
            (
                Outcome::NotEnoughData,
                "no gating metric has enough values for any quantile asked".to_string(),
            )
        } else if regressions.is_empty() {
            (
                Outcome::Pass,
                format!("no regression in {} gating checks{moved}", cmp.tested),
            )
        } else {
            let names: Vec<String> = regressions.iter().map(|c| short(c)).collect();
            (
                Outcome::Regression,
                format!(
                    "{} of {} gating checks regressed: {}{moved}",
                    regressions.len(),
                    cmp.tested,
                    names.join(", ")
                ),
            )
        };
        Self {
            outcome,
            summary,
            baseline,
            candidate,
            rule,
            tested: cmp.tested,
            alpha_per_check: cmp.alpha_per_check,
            checks: cmp.checks,
        }
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let head = match self.outcome {
            Outcome::Pass => "PASS",
            Outcome::Regression => "REGRESSION",
            Outcome::NotEnoughData => "NOT ENOUGH DATA",
        };
        let _ = writeln!(s, "### inferscope gate: {head}\n\n{}\n", self.summary);
        let _ = writeln!(s, "| | baseline | candidate |\n|---|---|---|");
        let (b, c) = (&self.baseline, &self.candidate);
        let filters = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                cell(&v.join(" "))
            }
        };
        let _ = writeln!(s, "| source | {} | {} |", cell(&b.source), cell(&c.source));
        let _ = writeln!(s, "| from | {} | {} |", b.from, c.from);
        let _ = writeln!(s, "| to | {} | {} |", b.to, c.to);
        let _ = writeln!(
            s,
            "| filters | {} | {} |",
            filters(&b.filters),
            filters(&c.filters)
        );
        let _ = writeln!(s, "| requests | {} | {} |", used(b), used(c));
        let r = &self.rule;
        let _ = writeln!(
            s,
            "\nA gating check (`--fail-on`) fails when the {:.0} % confidence interval of candidate − baseline \
             (family-wise over the {} gating checks made, Bonferroni; standard error from {} \
             block-bootstrap resamples, blocks of {} neighbouring requests) lies above the larger of {:.0} % of the baseline and {} ms. \
             The other checks are diagnostic: they show which phase moved, and fail nothing.\n",
            r.confidence * 100.0,
            self.tested,
            r.resamples,
            if r.block == 0 { "√n".to_string() } else { r.block.to_string() },
            r.min_effect_rel * 100.0,
            fmt_ms(r.min_effect_ms),
        );
        let _ = writeln!(
            s,
            "| metric | quantile | baseline ms | candidate ms | change | interval of the difference (ms) | detectable (ms) | result |\n|---|---|---:|---:|---:|---|---:|---|"
        );
        for ch in &self.checks {
            let _ = writeln!(s, "{}", row(ch));
        }
        s
    }
}

fn used(s: &Side) -> String {
    if s.used < s.requests {
        format!("{} (a uniform sample of {})", s.used, s.requests)
    } else {
        s.used.to_string()
    }
}

/// `e2e p99 +31.2 %`.
fn short(c: &Check) -> String {
    let change = c
        .change
        .map_or_else(String::new, |x| format!(" {:+.1} %", x * 100.0));
    format!("{} p{}{change}", c.metric, level_name(c.q))
}

fn fmt_ms(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), fmt_ms)
}

/// Text safe inside a Markdown table cell.
fn cell(s: &str) -> String {
    inferscope_api::escape_controls(s).replace('|', "\\|")
}

fn row(c: &Check) -> String {
    let change = c
        .change
        .map_or_else(|| "-".to_string(), |x| format!("{:+.1} %", x * 100.0));
    let ci = match (c.ci_low_ms, c.ci_high_ms) {
        (Some(l), Some(h)) => format!("{} … {}", signed(l), signed(h)),
        _ => "-".to_string(),
    };
    let result = match c.verdict {
        Verdict::Pass => "pass".to_string(),
        Verdict::Regression if c.gating => "**regression**".to_string(),
        Verdict::Regression => "moved (diagnostic)".to_string(),
        Verdict::Improvement => "improvement".to_string(),
        Verdict::NotEnoughData => format!(
            "not enough data ({} / {} values)",
            c.n_baseline, c.n_candidate
        ),
    };
    format!(
        "| {} | p{} | {} | {} | {change} | {ci} | {} | {result} |",
        c.metric,
        level_name(c.q),
        opt(c.baseline_ms),
        opt(c.candidate_ms),
        opt(c.detectable_ms),
    )
}

fn signed(x: f64) -> String {
    if x >= 0.0 {
        format!("+{}", fmt_ms(x))
    } else {
        fmt_ms(x)
    }
}
