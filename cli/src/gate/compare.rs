//! Baseline vs candidate: one check per (metric, quantile), and the verdict.
use inferscope_api::samples::Samples;
use serde::{Deserialize, Serialize};

use super::stats::{
    block_len, bootstrap, normal_quantile, quantile_sorted, std_dev, testable, Rng, Rule,
};

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No change beyond the minimum effect could be shown.
    Pass,
    /// Slower by more than the minimum effect, with the confidence asked for.
    Regression,
    /// Faster by more than the minimum effect (reported, never a failure).
    Improvement,
    /// Too few values on a side for this quantile.
    NotEnoughData,
}

/// One (metric, quantile) comparison; durations in ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// A metric of `SAMPLE_METRICS`.
    pub metric: String,
    /// Quantile level.
    pub q: f64,
    /// Baseline values of the metric.
    pub n_baseline: usize,
    /// Candidate values of the metric.
    pub n_candidate: usize,
    /// Baseline quantile (`null`: no values).
    pub baseline_ms: Option<f64>,
    /// Candidate quantile.
    pub candidate_ms: Option<f64>,
    /// `candidate − baseline`.
    pub diff_ms: Option<f64>,
    /// `candidate / baseline − 1`.
    pub change: Option<f64>,
    /// Confidence interval of the difference (family-wise level of the report).
    pub ci_low_ms: Option<f64>,
    /// Upper end.
    pub ci_high_ms: Option<f64>,
    /// The minimum effect for this check.
    pub threshold_ms: Option<f64>,
    /// The smallest slow-down this check would flag about half the time
    /// (`threshold + z·se`): the minimum detectable effect.
    pub detectable_ms: Option<f64>,
    /// Result.
    pub verdict: Verdict,
    /// Whether a regression here fails the gate (`--fail-on`); other checks are diagnostic:
    /// they say which phase moved.
    #[serde(default)]
    pub gating: bool,
}

/// The outcome of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Checks made, in metric then quantile order.
    pub checks: Vec<Check>,
    /// Gating checks with enough data (the Bonferroni `k`).
    pub tested: usize,
    /// One-sided error per check, `(1 − confidence) / tested`.
    pub alpha_per_check: f64,
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    v
}

/// Compares `candidate` with `baseline` on `metrics` × `levels`; regressions of `gating`
/// metrics fail the gate.
pub fn compare(
    baseline: &Samples,
    candidate: &Samples,
    metrics: &[&str],
    gating: &[&str],
    levels: &[f64],
    rule: &Rule,
) -> Comparison {
    let tested = metrics
        .iter()
        .filter(|m| gating.contains(m))
        .flat_map(|m| levels.iter().map(move |&q| (*m, q)))
        .filter(|&(m, q)| {
            testable(baseline.values(m).len(), q, rule.min_tail)
                && testable(candidate.values(m).len(), q, rule.min_tail)
        })
        .count();
    let alpha = (1.0 - rule.confidence) / tested.max(1) as f64;
    let z = normal_quantile(1.0 - alpha);
    let mut rng = Rng::new(rule.seed);
    let mut checks = Vec::new();
    for m in metrics {
        let (bo, co) = (baseline.values(m), candidate.values(m));
        let (b, c) = (sorted(bo), sorted(co));
        let ok: Vec<f64> = levels
            .iter()
            .copied()
            .filter(|&q| testable(b.len(), q, rule.min_tail) && testable(c.len(), q, rule.min_tail))
            .collect();
        let (bb, cb) = if ok.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            (
                bootstrap(
                    bo,
                    &ok,
                    rule.resamples,
                    block_len(bo.len(), rule.block),
                    &mut rng,
                ),
                bootstrap(
                    co,
                    &ok,
                    rule.resamples,
                    block_len(co.len(), rule.block),
                    &mut rng,
                ),
            )
        };
        for &q in levels {
            let mut check = Check {
                metric: (*m).to_string(),
                q,
                n_baseline: b.len(),
                n_candidate: c.len(),
                baseline_ms: (!b.is_empty()).then(|| quantile_sorted(&b, q)),
                candidate_ms: (!c.is_empty()).then(|| quantile_sorted(&c, q)),
                diff_ms: None,
                change: None,
                ci_low_ms: None,
                ci_high_ms: None,
                threshold_ms: None,
                detectable_ms: None,
                verdict: Verdict::NotEnoughData,
                gating: gating.contains(m),
            };
            if let (Some(bq), Some(cq)) = (check.baseline_ms, check.candidate_ms) {
                check.diff_ms = Some(cq - bq);
                check.change = (bq > 0.0).then(|| cq / bq - 1.0);
            }
            if let Some(l) = ok.iter().position(|&x| x == q) {
                let diffs: Vec<f64> = cb[l].iter().zip(&bb[l]).map(|(c, b)| c - b).collect();
                judge(&mut check, z * std_dev(&diffs), rule);
            }
            checks.push(check);
        }
    }
    Comparison {
        checks,
        tested,
        alpha_per_check: alpha,
    }
}

/// Fills in the interval, threshold and verdict of a testable check; `half` is `z·se`.
fn judge(c: &mut Check, half: f64, rule: &Rule) {
    let (Some(bq), Some(d)) = (c.baseline_ms, c.diff_ms) else {
        return;
    };
    let threshold = rule.min_effect_ms.max(rule.min_effect_rel * bq);
    let (lo, hi) = (d - half, d + half);
    c.ci_low_ms = Some(lo);
    c.ci_high_ms = Some(hi);
    c.threshold_ms = Some(threshold);
    c.detectable_ms = Some(threshold + half);
    c.verdict = if lo > threshold {
        Verdict::Regression
    } else if hi < -threshold {
        Verdict::Improvement
    } else {
        Verdict::Pass
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferscope_api::samples::MetricSamples;
    use inferscope_api::Window;

    fn samples(e2e: Vec<f64>, ttft: Vec<f64>) -> Samples {
        Samples {
            window: Window::new(1, 2),
            filters: Vec::new(),
            count: e2e.len() as u64,
            returned: e2e.len() as u64,
            sampled: false,
            metrics: vec![
                MetricSamples {
                    metric: "e2e".into(),
                    values_ms: e2e,
                },
                MetricSamples {
                    metric: "ttft".into(),
                    values_ms: ttft,
                },
            ],
        }
    }

    /// `n` draws of a log-normal-ish latency around `scale` ms.
    fn latencies(n: usize, scale: f64, rng: &mut Rng) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let u = (rng.below(1 << 30) as f64 + 0.5) / f64::from(1u32 << 30);
                scale * (1.0 + 0.5 * normal_quantile(u)).exp()
            })
            .collect()
    }

    #[test]
    fn same_distribution_passes_a_shift_fails() {
        let mut rng = Rng::new(3);
        let rule = Rule {
            resamples: 200,
            ..Rule::default()
        };
        let levels = [0.5, 0.9, 0.99];
        let mut false_alarms = 0;
        let mut detected = 0;
        for _ in 0..20 {
            let base = samples(
                latencies(800, 100.0, &mut rng),
                latencies(800, 20.0, &mut rng),
            );
            let same = samples(
                latencies(800, 100.0, &mut rng),
                latencies(800, 20.0, &mut rng),
            );
            let slow = samples(
                latencies(800, 130.0, &mut rng),
                latencies(800, 20.0, &mut rng),
            );
            let a = compare(
                &base,
                &same,
                &["e2e", "ttft"],
                &["e2e", "ttft"],
                &levels,
                &rule,
            );
            false_alarms += usize::from(a.checks.iter().any(|c| c.verdict == Verdict::Regression));
            let s = compare(
                &base,
                &slow,
                &["e2e", "ttft"],
                &["e2e", "ttft"],
                &levels,
                &rule,
            );
            let e2e_p50 = &s.checks[0];
            assert_eq!((e2e_p50.metric.as_str(), e2e_p50.q), ("e2e", 0.5));
            detected += usize::from(e2e_p50.verdict == Verdict::Regression);
            // ttft did not change: never blamed.
            assert!(s.checks[3..]
                .iter()
                .all(|c| c.verdict != Verdict::Regression));
            assert_eq!(s.tested, 6);
        }
        assert!(false_alarms <= 1, "{false_alarms} false alarms in 20");
        assert_eq!(detected, 20);
    }

    #[test]
    fn small_samples_are_not_judged() {
        let mut rng = Rng::new(4);
        let base = samples(latencies(100, 100.0, &mut rng), Vec::new());
        let cand = samples(latencies(100, 300.0, &mut rng), Vec::new());
        let r = compare(
            &base,
            &cand,
            &["e2e", "ttft"],
            &["e2e", "ttft"],
            &[0.5, 0.99],
            &Rule::default(),
        );
        let v: Vec<Verdict> = r.checks.iter().map(|c| c.verdict).collect();
        use Verdict::*;
        assert_eq!(v, [Regression, NotEnoughData, NotEnoughData, NotEnoughData]);
        assert_eq!(r.tested, 1);
        assert_eq!(r.checks[2].baseline_ms, None);
    }

    #[test]
    fn diagnostic_checks_do_not_count() {
        let mut rng = Rng::new(6);
        let base = samples(
            latencies(400, 100.0, &mut rng),
            latencies(400, 20.0, &mut rng),
        );
        let cand = samples(
            latencies(400, 100.0, &mut rng),
            latencies(400, 60.0, &mut rng),
        );
        let r = compare(
            &base,
            &cand,
            &["e2e", "ttft"],
            &["e2e"],
            &[0.5],
            &Rule::default(),
        );
        assert_eq!(r.tested, 1);
        assert!(!r.checks[1].gating);
        assert_eq!(r.checks[1].verdict, Verdict::Regression);
        assert_eq!(r.checks[0].verdict, Verdict::Pass);
    }

    #[test]
    fn faster_is_an_improvement_not_a_failure() {
        let mut rng = Rng::new(5);
        let base = samples(latencies(500, 100.0, &mut rng), Vec::new());
        let cand = samples(latencies(500, 60.0, &mut rng), Vec::new());
        let r = compare(&base, &cand, &["e2e"], &["e2e"], &[0.5], &Rule::default());
        assert_eq!(r.checks[0].verdict, Verdict::Improvement);
    }
}
