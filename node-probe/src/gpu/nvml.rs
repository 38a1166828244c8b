//! GPU device samples from NVML (`libnvidia-ml.so.1`, through the `nvml-wrapper` crate), on a
//! thread of their own: utilisation, memory, SM and memory clocks, power, the energy counter,
//! throttle reasons and temperature, per GPU, every `--nvml-ms` (1 s by default).
//!
//! NVML is optional. Without the library (no driver installed, a CPU node) or without a
//! loaded driver, [`start`] logs one line and returns `None`; everything else works. A getter a
//! device does not support leaves its field empty. Samples reach the event loop through a
//! bounded channel; a full channel drops the sample and counts it ([`NvmlStats::dropped`]).
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

/// Samples waiting for the event loop.
pub const CHANNEL: usize = 256;
/// GPUs sampled per node at most.
pub const MAX_DEVICES: u32 = 64;

/// One GPU at one time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceSample {
    /// When it was taken (monotonic ns, the probe's clock).
    pub ts_ns: u64,
    /// NVML index.
    pub index: u32,
    /// `GPU-…` UUID (empty when NVML would not tell).
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// Percent of the last sample period with a kernel running.
    pub gpu_util_pct: Option<u32>,
    /// Percent of the last sample period with device memory read or written.
    pub mem_util_pct: Option<u32>,
    /// Device memory in use, bytes.
    pub mem_used_bytes: Option<u64>,
    /// Device memory installed, bytes.
    pub mem_total_bytes: Option<u64>,
    /// SM clock, MHz.
    pub sm_clock_mhz: Option<u32>,
    /// Memory clock, MHz.
    pub mem_clock_mhz: Option<u32>,
    /// Board power, mW.
    pub power_mw: Option<u32>,
    /// Energy since the driver loaded, mJ (Volta and later): differences give the energy of
    /// an interval.
    pub energy_mj: Option<u64>,
    /// `nvmlClocksThrottleReasons` bits (0: not throttled).
    pub throttle_reasons: Option<u64>,
    /// Core temperature, °C.
    pub temperature_c: Option<u32>,
}

/// What samples the devices: NVML, or a stand-in in tests.
pub trait Devices: Send + 'static {
    /// GPUs present.
    fn count(&self) -> u32;
    /// One sample of GPU `index` (fields it cannot read are `None`).
    fn sample(&self, index: u32, ts_ns: u64) -> DeviceSample;
}

/// Counters shared with the sampling thread.
#[derive(Debug, Default)]
pub struct NvmlStats {
    /// Samples taken.
    pub samples: AtomicU64,
    /// Samples dropped because the event loop was behind.
    pub dropped: AtomicU64,
}

/// The event loop's end: samples to drain, counters, and a stop flag for the thread.
pub struct Sampler {
    rx: Receiver<DeviceSample>,
    /// Counters.
    pub stats: Arc<NvmlStats>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    /// Samples taken since the last call, oldest first.
    pub fn drain(&self, out: &mut Vec<DeviceSample>) {
        out.extend(self.rx.try_iter());
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts sampling `devices` every `period` on a thread named `nvml`; `now` gives the probe's
/// monotonic time.
pub fn spawn<D: Devices>(
    devices: D,
    period: Duration,
    now: fn() -> u64,
) -> std::io::Result<Sampler> {
    let (tx, rx) = sync_channel(CHANNEL);
    let stats = Arc::new(NvmlStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (stats.clone(), stop.clone());
    std::thread::Builder::new()
        .name("nvml".into())
        .spawn(move || sample_loop(&devices, period, now, &tx, &s, &st))?;
    Ok(Sampler { rx, stats, stop })
}

fn sample_loop<D: Devices>(
    devices: &D,
    period: Duration,
    now: fn() -> u64,
    tx: &SyncSender<DeviceSample>,
    stats: &NvmlStats,
    stop: &AtomicBool,
) {
    let n = devices.count().min(MAX_DEVICES);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for i in 0..n {
            stats.samples.fetch_add(1, Ordering::Relaxed);
            match tx.try_send(devices.sample(i, now())) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
        next += period;
        let wait = next.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            next = Instant::now();
        }
        // Short sleeps, so that a stop is seen within 100 ms.
        let until = Instant::now() + wait;
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
        }
    }
}

/// NVML through `nvml-wrapper`.
pub struct Nvml(nvml_wrapper::Nvml);

impl Nvml {
    /// Loads and initialises NVML (`lib`: a path to `libnvidia-ml.so.1`, else the loader's).
    pub fn init(lib: Option<&PathBuf>) -> Result<Self, nvml_wrapper::error::NvmlError> {
        let nvml = match lib {
            Some(p) => nvml_wrapper::Nvml::builder()
                .lib_path(p.as_os_str())
                .init()?,
            None => nvml_wrapper::Nvml::init()?,
        };
        Ok(Self(nvml))
    }
}

impl Devices for Nvml {
    fn count(&self) -> u32 {
        self.0.device_count().unwrap_or(0)
    }

    fn sample(&self, index: u32, ts_ns: u64) -> DeviceSample {
        use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
        let mut s = DeviceSample {
            ts_ns,
            index,
            uuid: String::new(),
            name: String::new(),
            gpu_util_pct: None,
            mem_util_pct: None,
            mem_used_bytes: None,
            mem_total_bytes: None,
            sm_clock_mhz: None,
            mem_clock_mhz: None,
            power_mw: None,
            energy_mj: None,
            throttle_reasons: None,
            temperature_c: None,
        };
        let Ok(d) = self.0.device_by_index(index) else {
            return s;
        };
        s.uuid = d.uuid().unwrap_or_default();
        s.name = d.name().unwrap_or_default();
        if let Ok(u) = d.utilization_rates() {
            (s.gpu_util_pct, s.mem_util_pct) = (Some(u.gpu), Some(u.memory));
        }
        if let Ok(m) = d.memory_info() {
            (s.mem_used_bytes, s.mem_total_bytes) = (Some(m.used), Some(m.total));
        }
        s.sm_clock_mhz = d.clock_info(Clock::SM).ok();
        s.mem_clock_mhz = d.clock_info(Clock::Memory).ok();
        s.power_mw = d.power_usage().ok();
        s.energy_mj = d.total_energy_consumption().ok();
        s.throttle_reasons = d.current_throttle_reasons().ok().map(|r| r.bits());
        s.temperature_c = d.temperature(TemperatureSensor::Gpu).ok();
        s
    }
}

/// Starts NVML sampling every `period`, or logs once why it cannot (no library, no driver, no
/// GPU) and returns `None`.
pub fn start(lib: Option<&PathBuf>, period: Duration, now: fn() -> u64) -> Option<Sampler> {
    let nvml = match Nvml::init(lib) {
        Ok(n) => n,
        Err(e) => {
            info!(error = %e, "NVML unavailable: no GPU device samples");
            return None;
        }
    };
    let gpus = nvml.count();
    if gpus == 0 {
        info!("NVML unavailable: no GPU device samples (no GPU)");
        return None;
    }
    match spawn(nvml, period, now) {
        Ok(s) => {
            info!(gpus, period_ms = period.as_millis() as u64, "NVML sampling");
            Some(s)
        }
        Err(e) => {
            warn!(error = %e, "NVML unavailable: cannot start its thread");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(u32);

    impl Devices for Fake {
        fn count(&self) -> u32 {
            self.0
        }
        fn sample(&self, index: u32, ts_ns: u64) -> DeviceSample {
            DeviceSample {
                ts_ns,
                index,
                uuid: format!("GPU-{index}"),
                name: "fake".into(),
                gpu_util_pct: Some(50),
                mem_util_pct: None,
                mem_used_bytes: Some(1 << 30),
                mem_total_bytes: Some(80 << 30),
                sm_clock_mhz: Some(1980),
                mem_clock_mhz: None,
                power_mw: Some(350_000),
                energy_mj: Some(1_000),
                throttle_reasons: Some(0),
                temperature_c: None,
            }
        }
    }

    fn now() -> u64 {
        7
    }

    #[test]
    fn samples_every_gpu_each_period_and_counts_what_it_drops() {
        let s = spawn(Fake(2), Duration::from_millis(2), now).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let mut got = Vec::new();
        s.drain(&mut got);
        assert!(got.len() >= 4, "{}", got.len());
        assert_eq!((got[0].index, got[1].index), (0, 1));
        assert_eq!(got[0].ts_ns, 7);
        // Nobody drains: the channel fills (256 samples, 1000 a second) and the rest is
        // counted.
        std::thread::sleep(Duration::from_millis(600));
        let dropped = s.stats.dropped.load(Ordering::Relaxed);
        got.clear();
        s.drain(&mut got);
        assert!(got.len() <= CHANNEL);
        assert!(dropped > 0, "a full channel drops and counts");
        let j = serde_json::to_value(&got[0]).unwrap();
        assert_eq!(j["power_mw"], 350_000);
        assert!(j["mem_util_pct"].is_null());
    }

    #[test]
    fn a_missing_library_is_one_line_and_no_sampler() {
        let missing = PathBuf::from("/nonexistent/libnvidia-ml.so.1");
        assert!(start(Some(&missing), Duration::from_secs(1), now).is_none());
    }
}
