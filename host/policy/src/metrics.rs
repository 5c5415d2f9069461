//! Per-policy counters: calls, errors by kind, and call latency.

use locus_core::ErrorKind;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters of one loaded policy version. Updated by every call, read by
/// operators; cheap enough for the hot path (two atomics and a short lock).
#[derive(Debug)]
pub struct Metrics {
    calls: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    latency_ns: Mutex<hdrhistogram::Histogram<u64>>,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Calls made.
    pub calls: u64,
    /// Failed calls, by kind (kinds with no failure are left out).
    pub errors: Vec<(ErrorKind, u64)>,
    /// Median call latency, µs.
    pub p50_us: f64,
    /// 99th percentile call latency, µs.
    pub p99_us: f64,
    /// Slowest call, µs.
    pub max_us: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            errors: Default::default(),
            // 1 ns to 1 min, 3 significant digits.
            latency_ns: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3)
                    .expect("static bounds are valid"),
            ),
        }
    }
}

impl Metrics {
    /// Records one call.
    pub fn record(&self, took: Duration, error: Option<ErrorKind>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(kind) = error {
            self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
        }
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).clamp(1, 60_000_000_000);
        if let Ok(mut h) = self.latency_ns.lock() {
            let _ = h.record(ns);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let errors = ErrorKind::ALL
            .iter()
            .map(|&k| (k, self.errors[k as usize].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let (p50, p99, max) = match self.latency_ns.lock() {
            Ok(h) if !h.is_empty() => (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()),
            _ => (0, 0, 0),
        };
        MetricsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            errors,
            p50_us: p50 as f64 / 1000.0,
            p99_us: p99 as f64 / 1000.0,
            max_us: max as f64 / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_calls_errors_and_latency() {
        let m = Metrics::default();
        m.record(Duration::from_micros(10), None);
        m.record(Duration::from_micros(30), Some(ErrorKind::Deadline));
        let s = m.snapshot();
        assert_eq!(s.calls, 2);
        assert_eq!(s.errors, vec![(ErrorKind::Deadline, 1)]);
        assert!(s.max_us >= 29.9 && s.p50_us >= 9.9, "{s:?}");
    }
}
