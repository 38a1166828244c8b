//! Kernel monotonic time (what `bpf_ktime_get_ns` returns) to wall-clock nanoseconds.
//!
//! `bpf_ktime_get_ns` is the host's monotonic clock; inside a time namespace (a container with
//! its own clock offsets) `CLOCK_MONOTONIC` is shifted by the namespace's offset, which
//! `/proc/self/timens_offsets` states. [`monotonic_ns`] removes it, so that node-probe's clock
//! and the kernel's agree wherever node-probe runs.
use std::sync::OnceLock;

fn now(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The monotonic offset (ns) of a time namespace from `timens_offsets` text (`monotonic S N`
/// lines); 0 when absent.
pub fn parse_timens_monotonic(text: &str) -> i128 {
    text.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "monotonic").then_some(())?;
            let s: i128 = w.next()?.parse().ok()?;
            let n: i128 = w.next()?.parse().ok()?;
            Some(s * 1_000_000_000 + n)
        })
        .unwrap_or(0)
}

/// This process's time-namespace monotonic offset (0 in the initial namespace, or on kernels
/// before 5.6 that have no time namespaces).
pub fn timens_monotonic_offset_ns() -> i128 {
    static OFFSET: OnceLock<i128> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::fs::read_to_string("/proc/self/timens_offsets")
            .map(|t| parse_timens_monotonic(&t))
            .unwrap_or(0)
    })
}

/// Host monotonic nanoseconds now: `CLOCK_MONOTONIC` less this process's time-namespace
/// offset, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    (now(libc::CLOCK_MONOTONIC) as i128 - timens_monotonic_offset_ns()).max(0) as u64
}

/// Converts monotonic timestamps to Unix-epoch nanoseconds with one offset taken at start.
/// Taking it once keeps the converted times of one run mutually consistent (an NTP step during
/// the run shifts nothing inside it).
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    offset: i128,
    /// A skew injected for tests (`--test-clock-offset-ns`, `--test-clock-drift-ppb`).
    skew: Option<TestSkew>,
}

/// A clock error injected where host time enters node-probe, and nowhere else: converted times
/// are off by `offset_ns + drift_ppb × (t − origin) / 10⁹`, as on a host whose clock is wrong.
/// Tests of the cross-node clock bounds know the truth exactly this way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TestSkew {
    /// Constant offset.
    pub offset_ns: i64,
    /// Drift, parts per billion.
    pub drift_ppb: i64,
    /// Monotonic time the drift counts from.
    pub origin_mono_ns: u64,
}

impl WallClock {
    /// Samples both clocks now; the read with the narrowest bracket of three is kept.
    pub fn new() -> Self {
        let mut best = (u64::MAX, 0i128);
        for _ in 0..3 {
            let m0 = monotonic_ns();
            let r = now(libc::CLOCK_REALTIME);
            let m1 = monotonic_ns();
            let width = m1 - m0;
            if width < best.0 {
                best = (width, r as i128 - ((m0 as i128 + m1 as i128) / 2));
            }
        }
        Self {
            offset: best.1,
            skew: None,
        }
    }

    /// This clock, wrong by `offset_ns` plus `drift_ppb` from now on (tests only).
    pub fn with_test_skew(mut self, offset_ns: i64, drift_ppb: i64) -> Self {
        self.skew = Some(TestSkew {
            offset_ns,
            drift_ppb,
            origin_mono_ns: monotonic_ns(),
        });
        self
    }

    /// The injected skew, if any.
    pub fn test_skew(&self) -> Option<TestSkew> {
        self.skew
    }

    /// Unix-epoch ns for a monotonic timestamp.
    pub fn to_wall(&self, mono_ns: u64) -> u64 {
        let skew = self.skew.map_or(0, |k| {
            let since = mono_ns as i128 - k.origin_mono_ns as i128;
            k.offset_ns as i128 + since * k.drift_ppb as i128 / 1_000_000_000
        });
        (mono_ns as i128 + self.offset + skew).max(0) as u64
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_namespace_offsets() {
        assert_eq!(parse_timens_monotonic("monotonic 0 0\nboottime 0 0\n"), 0);
        assert_eq!(
            parse_timens_monotonic("monotonic   -5  250\nboottime 7 0\n"),
            -5_000_000_000 + 250
        );
        assert_eq!(parse_timens_monotonic("garbage"), 0);
        // In this test's own (initial) namespace there is no offset.
        assert_eq!(timens_monotonic_offset_ns(), 0);
    }

    #[test]
    fn test_skew_is_offset_plus_drift() {
        let c = WallClock::new();
        let k = c.with_test_skew(-50_000_000, 20_000);
        let o = k.test_skew().unwrap().origin_mono_ns;
        assert_eq!(k.to_wall(o) as i128 - c.to_wall(o) as i128, -50_000_000);
        let later = o + 10_000_000_000;
        assert_eq!(
            k.to_wall(later) as i128 - c.to_wall(later) as i128,
            -50_000_000 + 200_000
        );
    }

    #[test]
    fn converts_to_now() {
        let c = WallClock::new();
        let wall = c.to_wall(monotonic_ns());
        let sys = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(wall.abs_diff(sys) < 50_000_000, "{wall} vs {sys}");
    }
}
