//! Clock skew between an agent and the collector.
//!
//! For a record, `d = now_ms - at_ms` is the true offset (collector clock
//! minus agent clock) plus the record's delay in transit and in buffers,
//! which is never negative. So the smallest `d` over a while is the best
//! estimate of the offset (the NTP minimum filter): one promptly delivered
//! record among delayed ones is enough. The tracker keeps the minimum per
//! 10 s of collector time over the last minute, and judges only once it has
//! records from at least three of those 10 s buckets (so a replay burst that
//! arrives within a few seconds is never judged on its own). Only the unit's
//! current records are fed (never replayed history).
//!
//! When the agent reports its own estimate (`AgentStatus::clock_offset_ms`,
//! from the collector's acks), that estimate is used while it is fresh.

const BUCKET_MS: u64 = 10_000;
const BUCKETS: usize = 6;
const MIN_BUCKETS: usize = 3;
/// How long the agent's own offset estimate is trusted after it arrived.
const AGENT_ESTIMATE_FRESH_MS: u64 = 10 * 60_000;

#[derive(Debug, Clone, Default)]
pub struct SkewTracker {
    /// (bucket number, minimum d in it).
    buckets: [Option<(u64, i64)>; BUCKETS],
    /// The agent's own estimate and when it was received (collector ms).
    agent: Option<(i64, u64)>,
}

impl SkewTracker {
    /// A current record taken at `at_ms` (agent clock) arrived at `now_ms`.
    pub fn observe(&mut self, at_ms: u64, now_ms: u64) {
        let d = clamp_i64(i128::from(now_ms) - i128::from(at_ms));
        let b = now_ms / BUCKET_MS;
        let slot = &mut self.buckets[(b % BUCKETS as u64) as usize];
        match slot {
            Some((id, min)) if *id == b => *min = (*min).min(d),
            _ => *slot = Some((b, d)),
        }
    }

    /// The agent's own estimate (collector minus agent), received at `now_ms`.
    pub fn agent_estimate(&mut self, offset_ms: i64, now_ms: u64) {
        self.agent = Some((offset_ms, now_ms));
    }

    /// The offset estimate, collector clock minus agent clock, when there is
    /// enough evidence for one.
    pub fn estimate(&self, now_ms: u64) -> Option<i64> {
        if let Some((off, rx)) = self.agent
            && now_ms.saturating_sub(rx) <= AGENT_ESTIMATE_FRESH_MS
        {
            return Some(off);
        }
        let b = now_ms / BUCKET_MS;
        let recent = self
            .buckets
            .iter()
            .flatten()
            .filter(|(id, _)| *id + BUCKETS as u64 > b && *id <= b);
        let (n, min) = recent.fold((0, i64::MAX), |(n, m), (_, d)| (n + 1, m.min(*d)));
        (n >= MIN_BUCKETS).then_some(min)
    }
}

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// `5m 3s behind` / `2m ahead of`, for messages.
pub fn describe(offset_ms: i64) -> String {
    let abs = std::time::Duration::from_secs(offset_ms.unsigned_abs() / 1000);
    let dir = if offset_ms > 0 { "behind" } else { "ahead of" };
    format!(
        "agent clock {} {dir} the collector",
        humantime::format_duration(abs)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_795_000_000_000;

    #[test]
    fn needs_a_spread_of_receipts() {
        let mut s = SkewTracker::default();
        // A replay burst: many records within a second, all delayed by hours.
        for i in 0..500 {
            s.observe(T - 3_600_000 + i * 5_000, T + i);
        }
        assert_eq!(s.estimate(T + 500), None, "a burst alone is not judged");
    }

    #[test]
    fn minimum_filter_table() {
        // (offset, delays of records arriving 5 s apart, expected estimate)
        let cases: &[(i64, &[u64], Option<i64>)] = &[
            (0, &[0, 0, 0, 0, 0, 0, 0], Some(0)),
            (0, &[0, 0], None),
            (300_000, &[200, 50, 900, 120, 80, 3_000, 40], Some(300_040)),
            (
                -300_000,
                &[200, 50, 900, 120, 80, 3_000, 40],
                Some(-299_960),
            ),
            // Mostly delayed records; one prompt one is enough.
            (
                0,
                &[90_000, 95_000, 10, 88_000, 91_000, 93_000, 99_000],
                Some(10),
            ),
        ];
        for (offset, delays, want) in cases {
            let mut s = SkewTracker::default();
            let mut now = T;
            for d in *delays {
                // agent clock = collector clock - offset
                let taken = (now as i64 - *d as i64 - offset) as u64;
                s.observe(taken, now);
                now += 5_000;
            }
            assert_eq!(s.estimate(now - 5_000), *want, "{offset} {delays:?}");
        }
    }

    #[test]
    fn old_buckets_age_out_and_agent_estimate_wins_while_fresh() {
        let mut s = SkewTracker::default();
        for i in 0..12 {
            s.observe(T + i * 5_000 - 600_000, T + i * 5_000);
        }
        assert_eq!(s.estimate(T + 55_000), Some(600_000));
        // Two minutes without records: nothing to judge on.
        assert_eq!(s.estimate(T + 180_000), None);
        s.agent_estimate(-420, T + 180_000);
        assert_eq!(s.estimate(T + 181_000), Some(-420));
        assert_eq!(s.estimate(T + 180_000 + AGENT_ESTIMATE_FRESH_MS + 1), None);
    }

    #[test]
    fn describe_says_which_way() {
        assert_eq!(describe(303_000), "agent clock 5m 3s behind the collector");
        assert_eq!(describe(-120_000), "agent clock 2m ahead of the collector");
    }
}
