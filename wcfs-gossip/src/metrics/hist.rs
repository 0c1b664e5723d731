//! A fixed-bucket latency histogram of relaxed atomics: cheap enough to observe on hot paths
//! (journal fsyncs, every applied message), read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (an implicit `+Inf` bucket follows): from
/// 50 µs (a loopback hop, an fsync on fast flash) to 10 s (a node catching up after a pause).
pub const BOUNDS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

const BUCKETS: usize = BOUNDS_US.len() + 1;

/// Observations of a duration. Every method takes `&self`; share it behind an `Arc`.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

/// What a [`Histogram`] held when read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations so far (the sum of `buckets`' counts).
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
    /// `(upper bound in seconds, observations in this bucket alone)`, in increasing order;
    /// the last bound is `f64::INFINITY`. Counts are not cumulative.
    pub buckets: Vec<(f64, u64)>,
}

impl HistogramSnapshot {
    /// The smallest bucket bound below which at least `q` (0..=1) of the observations fall,
    /// in seconds; `None` without observations. Coarse (bucket resolution), for tests and
    /// status output.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let want = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bound, n) in &self.buckets {
            seen += n;
            if seen >= want {
                return Some(*bound);
            }
        }
        self.buckets.last().map(|b| b.0)
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram::default()
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        self.observe_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one observation of `us` microseconds.
    pub fn observe_us(&self, us: u64) {
        let i = BOUNDS_US.partition_point(|b| *b < us);
        debug_assert!(i < BUCKETS);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The observations so far. Concurrent observations may be half-seen (in a bucket but
    /// not yet in the sum); the count always equals the buckets' total.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = Vec::with_capacity(BUCKETS);
        let mut count = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            count += n;
            let bound = BOUNDS_US
                .get(i)
                .map_or(f64::INFINITY, |us| *us as f64 / 1e6);
            buckets.push((bound, n));
        }
        HistogramSnapshot {
            count,
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_covers_them() {
        let h = Histogram::new();
        h.observe_us(50); // on the bound: le="0.00005"
        h.observe_us(51);
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (0.00005, 1));
        assert_eq!(s.buckets[1], (0.0001, 1));
        let three_ms = s.buckets.iter().find(|b| b.0 == 0.005).unwrap();
        assert_eq!(three_ms.1, 1);
        assert_eq!(*s.buckets.last().unwrap(), (f64::INFINITY, 1));
        assert!(
            (s.sum_seconds - 60.003101).abs() < 1e-9,
            "{}",
            s.sum_seconds
        );
        assert_eq!(s.quantile_bound(0.5), Some(0.0001));
        assert_eq!(s.quantile_bound(1.0), Some(f64::INFINITY));
        assert_eq!(Histogram::new().snapshot().quantile_bound(0.5), None);
    }
}
