//! `inferscope gate`: is the candidate run slower than the baseline run?
//!
//! Each side is a time window of the aggregator with filters (`--baseline-from/-to/-filter`),
//! or a file saved earlier (`--baseline-file`, written by `--save-baseline`). Its per-request
//! values come from `GET /api/v1/samples`; the statistics ([`stats`]) run here, so a CI job can
//! compare against a baseline it keeps as an artifact. Exit status: 0 pass, 1 regression, 2 not
//! enough data or any error (no verdict).
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;
use inferscope_api::samples::{Samples, SAMPLE_METRICS};

use crate::http::Api;

pub mod compare;
pub mod report;
pub mod stats;

use report::{Report, Side};
use stats::Rule;

/// Keys a side's `--…-filter` may hold.
use inferscope_api::FILTER_KEYS;

/// The options of `inferscope gate`.
#[derive(Args)]
pub struct GateArgs {
    /// Baseline window start (RFC 3339 or Unix seconds).
    #[arg(long, conflicts_with = "baseline_file")]
    baseline_from: Option<String>,
    /// Baseline window end (exclusive).
    #[arg(long, conflicts_with = "baseline_file")]
    baseline_to: Option<String>,
    /// Baseline filters: `key=value,…` with keys model, node, engine, status, outcome, tag,
    /// tenant (`tag=run=42`).
    #[arg(long, conflicts_with = "baseline_file")]
    baseline_filter: Option<String>,
    /// Read the baseline from a file written by `--save-baseline` instead of the aggregator.
    #[arg(long, value_name = "FILE")]
    baseline_file: Option<PathBuf>,
    /// Candidate window start.
    #[arg(long, conflicts_with = "candidate_file")]
    candidate_from: Option<String>,
    /// Candidate window end (exclusive).
    #[arg(long, conflicts_with = "candidate_file")]
    candidate_to: Option<String>,
    /// Candidate filters (as `--baseline-filter`).
    #[arg(long, conflicts_with = "candidate_file")]
    candidate_filter: Option<String>,
    /// Read the candidate from a saved file.
    #[arg(long, value_name = "FILE")]
    candidate_file: Option<PathBuf>,
    /// Write the baseline's values to FILE (with no candidate given: only that).
    #[arg(long, value_name = "FILE")]
    save_baseline: Option<PathBuf>,
    /// Write the candidate's values to FILE (tomorrow's baseline).
    #[arg(long, value_name = "FILE")]
    save_candidate: Option<PathBuf>,
    /// Metrics, comma-separated (default: all): e2e, ttft, first_text, tpot, max_gap,
    /// frontend, queue, prefill, decode, delivery.
    #[arg(long)]
    metrics: Option<String>,
    /// Metrics whose regression fails the gate (`all`: every metric). The default is what
    /// users feel; the phases (frontend, queue, prefill, decode, delivery) are then diagnostic:
    /// shown, to say where the time went, but their tails vary between unchanged runs far more
    /// than within one (BENCHMARKS.md), so they fail nothing.
    #[arg(long, default_value = "e2e,ttft,first_text,tpot,max_gap")]
    fail_on: String,
    /// Quantile levels, comma-separated, each in (0, 1).
    #[arg(long, default_value = "0.5,0.9,0.99")]
    quantiles: String,
    /// Smallest change that counts, in percent of the baseline.
    #[arg(long, default_value_t = 10.0)]
    min_effect_pct: f64,
    /// Smallest change that counts, in ms (the larger of the two applies).
    #[arg(long, default_value_t = 1.0)]
    min_effect_ms: f64,
    /// Family-wise confidence over all checks.
    #[arg(long, default_value_t = 0.95)]
    confidence: f64,
    /// Bootstrap resamples per side and metric.
    #[arg(long, default_value_t = 1000)]
    resamples: u32,
    /// Seed of the resampling.
    #[arg(long, default_value_t = Rule::default().seed)]
    seed: u64,
    /// A quantile is checked only with this many values on each side of it, on both sides.
    #[arg(long, default_value_t = 5)]
    min_tail: usize,
    /// Requests per bootstrap block (0: √n; 1: resample requests one by one, which ignores
    /// that neighbouring requests share the engine's state).
    #[arg(long, default_value_t = 0)]
    block: usize,
    /// Fewest requests per side (fewer: exit 2).
    #[arg(long, default_value_t = 30)]
    min_requests: u64,
    /// Most requests fetched per side (a uniform sample beyond).
    #[arg(long, default_value_t = 20_000)]
    limit: u64,
    /// Also write the Markdown report to FILE.
    #[arg(long, value_name = "FILE")]
    report_md: Option<PathBuf>,
    /// Also write the JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
}

/// Where one side's values come from.
enum Source {
    Api {
        from: Option<String>,
        to: Option<String>,
        filter: Option<String>,
    },
    File(PathBuf),
}

impl Source {
    fn of(
        file: &Option<PathBuf>,
        from: &Option<String>,
        to: &Option<String>,
        filter: &Option<String>,
    ) -> Option<Self> {
        match file {
            Some(f) => Some(Self::File(f.clone())),
            None if from.is_some() || to.is_some() || filter.is_some() => Some(Self::Api {
                from: from.clone(),
                to: to.clone(),
                filter: filter.clone(),
            }),
            None => None,
        }
    }

    fn load(&self, api: &Api, limit: u64, side: &str) -> anyhow::Result<(Samples, String)> {
        match self {
            Self::File(p) => Ok((read_file(p)?, p.display().to_string())),
            Self::Api { from, to, filter } => {
                let mut q = Vec::new();
                q.extend(from.clone().map(|v| ("from", v)));
                q.extend(to.clone().map(|v| ("to", v)));
                if let Some(f) = filter {
                    q.extend(parse_filter(f).with_context(|| format!("--{side}-filter"))?);
                }
                q.push(("limit", limit.to_string()));
                let body = api.get("/api/v1/samples", &q)?;
                let s = serde_json::from_str(&body).context(
                    "unexpected samples response (is the aggregator the same version as this CLI?)",
                )?;
                Ok((s, "aggregator".to_string()))
            }
        }
    }
}

/// `model=a,tag=run=1` → query pairs.
fn parse_filter(f: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for part in f.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            bail!("{part:?} is not key=value");
        };
        let Some(key) = FILTER_KEYS.iter().find(|x| **x == k.trim()) else {
            bail!("unknown key {k:?}; keys are {}", FILTER_KEYS.join(", "));
        };
        if out.iter().any(|(k2, _)| k2 == key) {
            bail!("{key} given more than once");
        }
        out.push((key, v.trim().to_string()));
    }
    Ok(out)
}

fn read_file(p: &Path) -> anyhow::Result<Samples> {
    let text =
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a samples file (written by `inferscope gate --save-baseline`)",
            p.display()
        )
    })
}

fn write_file(p: &Path, s: &Samples) -> anyhow::Result<()> {
    let text = serde_json::to_string(s)?;
    std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))
}

fn side(s: &Samples, source: String) -> Side {
    Side {
        source,
        from: s.window.from.clone(),
        to: s.window.to.clone(),
        filters: s.filters.clone(),
        requests: s.count,
        used: s.values("e2e").len() as u64,
    }
}

fn levels(s: &str) -> anyhow::Result<Vec<f64>> {
    let v = s
        .split(',')
        .map(|p| {
            let q: f64 = p
                .trim()
                .parse()
                .with_context(|| format!("--quantiles: {p:?}"))?;
            anyhow::ensure!(q > 0.0 && q < 1.0, "--quantiles: {q} is not in (0, 1)");
            Ok(q)
        })
        .collect::<anyhow::Result<Vec<f64>>>()?;
    anyhow::ensure!(!v.is_empty() && v.len() <= 8, "--quantiles: 1 to 8 levels");
    Ok(v)
}

fn metrics(s: &Option<String>) -> anyhow::Result<Vec<&'static str>> {
    let all: Vec<&'static str> = SAMPLE_METRICS.iter().map(|(m, _)| *m).collect();
    let Some(s) = s else { return Ok(all) };
    s.split(',')
        .map(|m| {
            all.iter()
                .find(|a| **a == m.trim())
                .copied()
                .ok_or_else(|| {
                    anyhow::anyhow!("--metrics: unknown {m:?}; metrics are {}", all.join(", "))
                })
        })
        .collect()
}

impl GateArgs {
    fn rule(&self) -> anyhow::Result<Rule> {
        anyhow::ensure!(
            self.confidence > 0.0 && self.confidence < 1.0,
            "--confidence must be in (0, 1)"
        );
        anyhow::ensure!(
            self.min_effect_pct >= 0.0 && self.min_effect_ms >= 0.0,
            "--min-effect-pct and --min-effect-ms must not be negative"
        );
        anyhow::ensure!(
            (20..=100_000).contains(&self.resamples),
            "--resamples must be 20..=100000"
        );
        anyhow::ensure!(self.min_tail >= 1, "--min-tail must be at least 1");
        Ok(Rule {
            confidence: self.confidence,
            min_effect_rel: self.min_effect_pct / 100.0,
            min_effect_ms: self.min_effect_ms,
            resamples: self.resamples,
            seed: self.seed,
            min_tail: self.min_tail,
            block: self.block,
        })
    }
}

/// Runs the gate; `Ok(None)` when only a baseline was saved.
pub fn run(a: &GateArgs, api: &Api) -> anyhow::Result<Option<Report>> {
    let rule = a.rule()?;
    let (levels, metrics) = (levels(&a.quantiles)?, metrics(&a.metrics)?);
    let gating = if a.fail_on.trim() == "all" {
        metrics.clone()
    } else {
        self::metrics(&Some(a.fail_on.clone())).context("--fail-on")?
    };
    anyhow::ensure!(
        (1..=100_000).contains(&a.limit),
        "--limit must be 1..=100000"
    );
    let Some(bsrc) = Source::of(
        &a.baseline_file,
        &a.baseline_from,
        &a.baseline_to,
        &a.baseline_filter,
    ) else {
        bail!("no baseline: give --baseline-from/--baseline-to (and --baseline-filter) or --baseline-file");
    };
    let csrc = Source::of(
        &a.candidate_file,
        &a.candidate_from,
        &a.candidate_to,
        &a.candidate_filter,
    );
    let (base, bname) = bsrc.load(api, a.limit, "baseline")?;
    if let Some(p) = &a.save_baseline {
        write_file(p, &base)?;
    }
    let Some(csrc) = csrc else {
        if a.save_baseline.is_some() {
            return Ok(None);
        }
        bail!("no candidate: give --candidate-from/--candidate-to (and --candidate-filter) or --candidate-file");
    };
    let (cand, cname) = csrc.load(api, a.limit, "candidate")?;
    if let Some(p) = &a.save_candidate {
        write_file(p, &cand)?;
    }
    let cmp = compare::compare(&base, &cand, &metrics, &gating, &levels, &rule);
    let report = Report::new(
        side(&base, bname),
        side(&cand, cname),
        rule,
        cmp,
        a.min_requests,
    );
    if let Some(p) = &a.report_md {
        std::fs::write(p, report.markdown())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &a.report_json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let v = parse_filter("model=m, tag=run=3,status=5xx").unwrap();
        assert_eq!(
            v,
            [
                ("model", "m".to_string()),
                ("tag", "run=3".to_string()),
                ("status", "5xx".to_string())
            ]
        );
        assert_eq!(
            parse_filter("tenant=acme").unwrap(),
            [("tenant", "acme".to_string())]
        );
        assert!(parse_filter("modl=x").is_err());
        assert!(parse_filter("model").is_err());
        assert!(parse_filter("model=a,model=b").is_err());
        assert!(parse_filter("").unwrap().is_empty());
    }

    #[test]
    fn options() {
        assert_eq!(levels("0.5, 0.99").unwrap(), [0.5, 0.99]);
        assert!(levels("1").is_err());
        assert_eq!(
            metrics(&Some("e2e,queue".into())).unwrap(),
            ["e2e", "queue"]
        );
        assert!(metrics(&Some("latency".into())).is_err());
        assert_eq!(metrics(&None).unwrap().len(), SAMPLE_METRICS.len());
    }
}
