//! Kernel monotonic time (what `bpf_ktime_get_ns` returns) to wall-clock nanoseconds.

fn now(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Monotonic nanoseconds now (`CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    now(libc::CLOCK_MONOTONIC)
}

/// Converts monotonic timestamps to Unix-epoch nanoseconds with one offset taken at start.
/// Taking it once keeps the converted times of one run mutually consistent (an NTP step during
/// the run shifts nothing inside it).
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    offset: i128,
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
        Self { offset: best.1 }
    }

    /// Unix-epoch ns for a monotonic timestamp.
    pub fn to_wall(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset).max(0) as u64
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
