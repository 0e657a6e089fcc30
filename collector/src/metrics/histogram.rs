//! A lock-free fixed-bucket histogram of durations in seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::expo::Exposition;

pub const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn render(&self, e: &mut Exposition, name: &str, help: &str) {
        e.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (i, b) in BUCKETS.iter().enumerate() {
            let le = b.to_string();
            e.sample(
                &bucket,
                &[("le", &le)],
                self.buckets[i].load(Ordering::Relaxed),
            );
        }
        let count = self.count();
        e.sample(&bucket, &[("le", "+Inf")], count);
        e.sample(
            &format!("{name}_sum"),
            &[],
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        );
        e.sample(&format!("{name}_count"), &[], count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(300));
        let mut e = Exposition::default();
        h.render(&mut e, "t_seconds", "T.");
        let s = e.finish();
        assert!(s.contains("t_seconds_bucket{le=\"0.001\"} 0\n"), "{s}");
        assert!(s.contains("t_seconds_bucket{le=\"0.005\"} 1\n"), "{s}");
        assert!(s.contains("t_seconds_bucket{le=\"0.5\"} 2\n"), "{s}");
        assert!(s.contains("t_seconds_bucket{le=\"+Inf\"} 2\n"), "{s}");
        assert!(s.contains("t_seconds_count 2\n"), "{s}");
        assert!(s.contains("t_seconds_sum 0.303\n"), "{s}");
    }
}
