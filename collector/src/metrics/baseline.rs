//! Baselines (`crate::rules::baseline`): how many streams the rules engine
//! keeps, their bytes, the samples taken, and what was refused or dropped.
//! The engine publishes its counters here at every tick
//! (`Engine::set_baseline_metrics`); a scrape reads the atomics.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;

use super::expo::Exposition;
use crate::rules::baseline::Stats;

#[derive(Debug, Default)]
pub struct BaselineMetrics {
    pub streams: AtomicU64,
    pub bytes: AtomicU64,
    pub samples: AtomicU64,
    pub refused: AtomicU64,
    pub too_old: AtomicU64,
    pub future: AtomicU64,
}

impl BaselineMetrics {
    /// The engine's counters as of now. A stream refused since the last
    /// publish is logged (once per publish, with the total).
    pub fn publish(&self, s: &Stats) {
        let before = self.refused.swap(s.refused, Ordering::Relaxed);
        if s.refused > before {
            warn!(
                refused = s.refused - before,
                total = s.refused,
                "Baseline streams refused: a unit reached [rules.baseline] max_streams_per_unit; those fields are not judged against a baseline."
            );
        }
        self.streams.store(s.streams, Ordering::Relaxed);
        self.bytes.store(s.bytes, Ordering::Relaxed);
        self.samples.store(s.samples, Ordering::Relaxed);
        self.too_old.store(s.too_old, Ordering::Relaxed);
        self.future.store(s.future, Ordering::Relaxed);
    }

    pub fn render(&self, e: &mut Exposition) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        e.family(
            "muster_baseline_streams",
            "gauge",
            "Baseline streams kept (one per unit and field instance a baseline rule looks at).",
        );
        e.sample("muster_baseline_streams", &[], get(&self.streams));
        e.family(
            "muster_baseline_bytes",
            "gauge",
            "Bytes the baseline streams hold (hourly summaries, the hour being accumulated), without allocator overhead.",
        );
        e.sample("muster_baseline_bytes", &[], get(&self.bytes));
        e.family(
            "muster_baseline_samples_total",
            "counter",
            "Samples taken into baseline streams, live and replayed.",
        );
        e.sample("muster_baseline_samples_total", &[], get(&self.samples));
        e.family(
            "muster_baseline_streams_refused_total",
            "counter",
            "Baseline streams not kept because their unit had [rules.baseline] max_streams_per_unit (each counted once per unit).",
        );
        e.sample(
            "muster_baseline_streams_refused_total",
            &[],
            get(&self.refused),
        );
        e.family(
            "muster_baseline_samples_dropped_total",
            "counter",
            "Samples not taken into a baseline: older than the streams keep (too_old), or over an hour ahead of the collector's clock (future).",
        );
        e.sample(
            "muster_baseline_samples_dropped_total",
            &[("reason", "too_old")],
            get(&self.too_old),
        );
        e.sample(
            "muster_baseline_samples_dropped_total",
            &[("reason", "future")],
            get(&self.future),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_and_renders_the_engines_counters() {
        let m = BaselineMetrics::default();
        m.publish(&Stats {
            streams: 2,
            bytes: 1_200,
            samples: 40,
            refused: 1,
            too_old: 3,
            future: 4,
        });
        let mut e = Exposition::default();
        m.render(&mut e);
        let text = e.finish();
        for line in [
            "muster_baseline_streams 2\n",
            "muster_baseline_bytes 1200\n",
            "muster_baseline_samples_total 40\n",
            "muster_baseline_streams_refused_total 1\n",
            "muster_baseline_samples_dropped_total{reason=\"too_old\"} 3\n",
            "muster_baseline_samples_dropped_total{reason=\"future\"} 4\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
