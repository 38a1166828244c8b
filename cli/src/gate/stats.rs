//! The statistics of `inferscope gate`: quantiles as ClickHouse's `quantileExact` computes them,
//! and bootstrap confidence intervals of the difference of a quantile between two samples.
//!
//! For each (metric, quantile) check, both samples are resampled `resamples` times by a
//! circular block bootstrap: values are in request start order, and a resample is made of runs
//! of `block` neighbouring requests (default `⌈√n⌉`) taken from random places. Requests served
//! close together share the engine's state — one batch, one queue, one CPU hiccup — so their
//! latencies are correlated; resampling them one by one would treat a run's hiccup as if it
//! were spread evenly and make the intervals too narrow (a gate that fails unchanged builds).
//! The standard deviation of the resampled differences is the standard error `se` of the
//! observed difference `d`. The interval is `d ± z·se` with `z` the normal quantile of
//! `1 − α/k` (one-sided, Bonferroni over the `k` checks made, so the chance that *any* check of
//! an unchanged system fails is at most `α = 1 − confidence`). A check is a regression when the
//! interval's lower end exceeds the minimum effect (`max(min_effect_ms, min_effect_rel ·
//! baseline)`), an improvement when its upper end is below minus that.

/// How the checks are made.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    /// Family-wise confidence, e.g. 0.95.
    pub confidence: f64,
    /// Smallest change that counts, relative to the baseline (0.1 = 10 %).
    pub min_effect_rel: f64,
    /// Smallest change that counts, in ms.
    pub min_effect_ms: f64,
    /// Bootstrap resamples per side and check.
    pub resamples: u32,
    /// Seed of the resampling (the same inputs and seed give the same report).
    pub seed: u64,
    /// A quantile is checked only when each side has at least this many values at or above it
    /// (and below it).
    pub min_tail: usize,
    /// Requests per bootstrap block (0: `⌈√n⌉` per sample; 1: the ordinary bootstrap).
    #[serde(default)]
    pub block: usize,
}

impl Default for Rule {
    fn default() -> Self {
        Self {
            confidence: 0.95,
            min_effect_rel: 0.10,
            min_effect_ms: 1.0,
            resamples: 1000,
            seed: 0x1f3d_5b79,
            min_tail: 5,
            block: 0,
        }
    }
}

/// The value at level `q` of sorted `v` as `quantileExact` has it: `v[⌊q·n⌋]`.
pub fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    debug_assert!(!v.is_empty());
    v[index(v.len(), q)]
}

fn index(n: usize, q: f64) -> usize {
    ((q * n as f64) as usize).min(n - 1)
}

/// Whether `n` values give `q` enough values on both sides.
pub fn testable(n: usize, q: f64, min_tail: usize) -> bool {
    n > 0 && {
        let i = index(n, q);
        i >= min_tail && n - i >= min_tail
    }
}

/// SplitMix64: small, fast, and the same everywhere.
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below 2⁻³²).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

/// The block length for `n` values: `block`, or `⌈√n⌉` when it is 0; at most `n`.
pub fn block_len(n: usize, block: usize) -> usize {
    let b = if block == 0 {
        (n as f64).sqrt().ceil() as usize
    } else {
        block
    };
    b.clamp(1, n.max(1))
}

/// `resamples` circular-block-bootstrap estimates of each level of `levels` in `v` (values in
/// request order), blocks of `block` values: `out[l][b]`.
pub fn bootstrap(
    v: &[f64],
    levels: &[f64],
    resamples: u32,
    block: usize,
    rng: &mut Rng,
) -> Vec<Vec<f64>> {
    let n = v.len();
    let mut out = vec![Vec::with_capacity(resamples as usize); levels.len()];
    let mut buf = vec![0.0; n];
    for _ in 0..resamples {
        let mut filled = 0;
        while filled < n {
            let start = rng.below(n);
            for j in 0..block.min(n - filled) {
                buf[filled] = v[(start + j) % n];
                filled += 1;
            }
        }
        for (l, &q) in levels.iter().enumerate() {
            let i = index(n, q);
            let (_, x, _) = buf.select_nth_unstable_by(i, f64::total_cmp);
            out[l].push(*x);
        }
    }
    out
}

/// Sample standard deviation.
pub fn std_dev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// The standard normal quantile function (Acklam's rational approximation, relative error
/// below 1.2e-9), for `p` in (0, 1).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    const LOW: f64 = 0.02425;
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_quantile_exact() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        // SELECT quantilesExact(0.5, 0.9, 0.99)(number + 1) FROM numbers(10) → [6, 10, 10]
        assert_eq!(quantile_sorted(&v, 0.5), 6.0);
        assert_eq!(quantile_sorted(&v, 0.9), 10.0);
        assert_eq!(quantile_sorted(&v, 0.99), 10.0);
        assert_eq!(quantile_sorted(&v, 0.1), 2.0);
        assert!(testable(10, 0.5, 5));
        assert!(!testable(10, 0.9, 5));
        assert!(testable(600, 0.99, 5));
        assert!(!testable(300, 0.99, 5));
    }

    #[test]
    fn normal_quantiles() {
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959_963_985),
            (0.95, 1.644_853_627),
            (0.001, -3.090_232_306),
            (0.999_9, 3.719_016_485),
        ] {
            assert!(
                (normal_quantile(p) - z).abs() < 1e-6,
                "{p}: {}",
                normal_quantile(p)
            );
        }
    }

    #[test]
    fn bootstrap_spread_shrinks_with_n() {
        let mut rng = Rng::new(7);
        let sample = |n: usize, rng: &mut Rng| -> Vec<f64> {
            (0..n).map(|_| rng.below(1_000_000) as f64 / 1e4).collect()
        };
        let small = sample(100, &mut rng);
        let large = sample(10_000, &mut rng);
        let se =
            |v: &[f64], block, rng: &mut Rng| std_dev(&bootstrap(v, &[0.5], 300, block, rng)[0]);
        let (s, l) = (se(&small, 1, &mut rng), se(&large, 1, &mut rng));
        // A median of U(0, 100) has se ≈ 50/√n: 5 at n = 100, 0.5 at n = 10 000.
        assert!((3.0..8.0).contains(&s), "{s}");
        assert!((0.3..0.8).contains(&l), "{l}");
        // Independent values: blocks change little.
        let lb = se(&large, block_len(large.len(), 0), &mut rng);
        assert!((0.3..0.8).contains(&lb), "{lb}");
        let mut a = Rng::new(1);
        let mut b = Rng::new(1);
        assert_eq!(
            bootstrap(&small, &[0.9], 5, 3, &mut a),
            bootstrap(&small, &[0.9], 5, 3, &mut b)
        );
    }

    #[test]
    fn blocks_see_clustered_hiccups() {
        // 1000 requests near 10 ms, but the first 12 of every 100 at 30 ms (the engine stalled
        // for a moment): the p90 hinges on how many stalls a resample holds.
        let v: Vec<f64> = (0..1000)
            .map(|i| {
                if i % 100 < 12 {
                    30.0
                } else {
                    10.0 + (i % 7) as f64 * 0.1
                }
            })
            .collect();
        let mut rng = Rng::new(9);
        let iid = std_dev(&bootstrap(&v, &[0.9], 400, 1, &mut rng)[0]);
        let blocks = std_dev(&bootstrap(&v, &[0.9], 400, block_len(v.len(), 0), &mut rng)[0]);
        assert!(blocks > 2.0 * iid, "block se {blocks} vs iid {iid}");
        assert_eq!(block_len(1000, 0), 32);
        assert_eq!(block_len(5, 10), 5);
        assert_eq!(block_len(0, 0), 1);
    }
}
