//! Measurement primitives: HDR latency histograms and per-second timelines.
//!
//! Tasks record into their own [`Latency`] and merge at the end (no lock on the hot
//! path); [`Timeline`] is a fixed array of atomic per-second buckets shared by all.

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

use crate::report::{LatencySummary, Series};

/// Largest latency recorded exactly (larger values are clamped): 10 minutes in µs.
const MAX_US: u64 = 600_000_000;

/// A latency histogram in microseconds (3 significant digits).
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Latency {
            hist: Histogram::new_with_bounds(1, MAX_US, 3)
                .unwrap_or_else(|_| unreachable!("constant bounds are valid")),
        }
    }

    /// Records one latency; 0 is recorded as 1 µs and values above 10 min are clamped.
    pub fn record(&mut self, us: u64) {
        self.hist.saturating_record(us.clamp(1, MAX_US));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Percentiles and the curve for plots.
    pub fn summary(&self, name: &str) -> LatencySummary {
        let h = &self.hist;
        let empty = h.is_empty();
        let q = |q: f64| if empty { 0 } else { h.value_at_quantile(q) };
        let mut curve = Vec::new();
        if !empty {
            for v in h.iter_quantiles(2) {
                let quantile = v.quantile_iterated_to();
                curve.push((quantile, v.value_iterated_to() as f64));
                if quantile >= 0.99999 {
                    break;
                }
            }
        }
        LatencySummary {
            name: name.to_owned(),
            count: h.len(),
            min_us: if empty { 0 } else { h.min() },
            mean_us: if empty { 0.0 } else { h.mean() },
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if empty { 0 } else { h.max() },
            curve,
        }
    }
}

/// Counts per second since the start of the run, in a fixed number of buckets
/// (events after the last bucket land in it).
#[derive(Debug)]
pub struct Timeline {
    buckets: Box<[AtomicU64]>,
}

impl Timeline {
    pub fn new(seconds: usize) -> Self {
        Timeline {
            buckets: (0..seconds.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Adds `n` at `at_us` (microseconds on the run's [`crate::clock::Clock`]).
    pub fn add(&self, at_us: u64, n: u64) {
        let i = ((at_us / 1_000_000) as usize).min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The buckets from `from_s` (inclusive) up to the last non-empty one.
    pub fn series(&self, name: &str, unit: &str, from_s: usize) -> Series {
        let values: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let end = values.iter().rposition(|&v| v > 0).map_or(0, |i| i + 1);
        let from = from_s.min(end);
        Series {
            name: name.to_owned(),
            unit: unit.to_owned(),
            start_s: from as f64,
            values: values[from..end].iter().map(|&v| v as f64).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_and_merge() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for v in 1..=100 {
            a.record(v * 1000);
        }
        b.record(0);
        a.merge(&b);
        let s = a.summary("x");
        assert_eq!(s.count, 101);
        assert_eq!(s.min_us, 1);
        assert!((49_000..=51_000).contains(&s.p50_us), "{}", s.p50_us);
        assert!(s.max_us >= 100_000);
        assert!(!s.curve.is_empty());
        assert_eq!(Latency::new().summary("e").p99_us, 0);
    }

    #[test]
    fn timeline_buckets_by_second_and_trims() {
        let t = Timeline::new(4);
        t.add(100, 1);
        t.add(1_500_000, 2);
        t.add(99_000_000, 3); // beyond: last bucket
        assert_eq!(t.total(), 6);
        let s = t.series("s", "per second", 1);
        assert_eq!(s.values, vec![2.0, 0.0, 3.0]);
        assert_eq!(s.start_s, 1.0);
    }
}
