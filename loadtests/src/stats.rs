//! Small statistics for benchmarks that compare conditions over rounds.

/// Mean of `v` and its 95 % percentile-bootstrap interval (2 000 resamples of the rounds, a
/// fixed seed: the same figures for the same data). `None` for fewer than two values.
pub fn mean_ci95(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.len() < 2 {
        return None;
    }
    let mean = |xs: &mut dyn Iterator<Item = f64>| {
        let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
        s / n as f64
    };
    let m = mean(&mut v.iter().copied());
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut means: Vec<f64> = (0..2000)
        .map(|_| {
            let picks: Vec<f64> = (0..v.len())
                .map(|_| v[(next() % v.len() as u64) as usize])
                .collect();
            mean(&mut picks.into_iter())
        })
        .collect();
    means.sort_by(f64::total_cmp);
    Some((m, means[50], means[1949]))
}

#[cfg(test)]
mod tests {
    use super::mean_ci95;

    #[test]
    fn interval_holds_the_mean_and_shrinks_with_spread() {
        assert!(mean_ci95(&[1.0]).is_none());
        let (m, lo, hi) = mean_ci95(&[1.0, 1.0, 1.0]).unwrap();
        assert_eq!((m, lo, hi), (1.0, 1.0, 1.0));
        let wide = mean_ci95(&[0.0, 10.0, 0.0, 10.0, 5.0, 5.0]).unwrap();
        let narrow = mean_ci95(&[4.9, 5.1, 5.0, 5.0, 4.95, 5.05]).unwrap();
        assert!(wide.1 <= wide.0 && wide.0 <= wide.2);
        assert!(narrow.2 - narrow.1 < wide.2 - wide.1);
    }
}
