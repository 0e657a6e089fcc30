//! The probe scheduler: one task per probe, so a probe never overlaps itself
//! and a slow probe delays nothing else (host sampling runs on its own thread).
//!
//! Each task runs its probe at a fixed rate (`interval`), each run bounded by
//! the probe's `timeout` (its own deadline; the scheduler cuts a run off
//! [`super::SAFETY_MARGIN`] later). A run that overruns its interval (it
//! cannot, while `timeout <= interval`, which the config enforces, unless a
//! probe ignores its own deadline or the wall clock jumps) skips the missed
//! ticks instead of bursting to catch up.
//!
//! A run's results (one, or a transaction's own and its steps') go to the
//! channel in order, each an observation stamped with the run's start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use muster_proto::Payload;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use super::{Runnable, SAFETY_MARGIN};
use crate::clock::Clock;
use crate::observation::Observation;
use crate::observation::ObservationTx;
use crate::sample::DropCounter;

/// Resolves once `stop` says true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// Scheduler self-metrics.
#[derive(Debug, Default)]
pub struct ScheduleStats {
    /// Runs started, all probes together.
    pub runs: AtomicU64,
    /// Runs cut off by the scheduler's own timeout.
    pub timeouts: AtomicU64,
    /// Ticks skipped because a run overran its interval.
    pub skipped: AtomicU64,
}

/// The next start time after `prev_start`, skipping ticks already past `now`.
/// Pure, table-tested.
pub fn next_start(prev_start: Instant, interval: Duration, now: Instant) -> (Instant, u64) {
    let mut next = prev_start + interval;
    let mut skipped = 0;
    if next <= now {
        let behind = now.duration_since(next);
        let n = (behind.as_nanos() / interval.as_nanos().max(1)) as u32 + 1;
        next += interval * n;
        skipped = n as u64;
    }
    (next, skipped)
}

/// Runs one probe until `stop`: results go to `tx` with `try_send` (a full
/// channel is a counted drop, never a stall).
pub async fn run_probe(
    probe: Arc<dyn Runnable>,
    first_at: Instant,
    tx: ObservationTx,
    clock: Arc<dyn Clock>,
    drops: Arc<DropCounter>,
    stats: Arc<ScheduleStats>,
    mut stop: watch::Receiver<bool>,
) {
    let interval = probe.interval();
    let mut start = first_at;
    loop {
        tokio::select! {
            _ = sleep_until(start) => {}
            _ = stopped(&mut stop) => return,
        }
        stats.runs.fetch_add(1, Ordering::Relaxed);
        let at_ms = clock.now_ms();
        let results = tokio::select! {
            r = timeout(probe.timeout() + SAFETY_MARGIN, probe.run()) => match r {
                Ok(r) => r,
                Err(_) => {
                    stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    vec![probe.timed_out()]
                }
            },
            _ = stopped(&mut stop) => return,
        };
        for result in results {
            tracing::debug!(probe = %result.name, outcome = ?result.outcome, total_us = result.phases.total_us, "Probe ran.");
            let obs = Observation {
                at_ms,
                payload: Payload::Probe(result),
            };
            if !drops.try_send(&tx, obs, "probe") {
                return;
            }
        }
        let (next, skipped) = next_start(start, interval, Instant::now());
        if skipped > 0 {
            stats.skipped.fetch_add(skipped, Ordering::Relaxed);
            tracing::warn!(
                probe = probe.name(),
                skipped,
                "Probe overran its interval; skipped ticks."
            );
        }
        start = next;
    }
}

/// Starts every probe's task. Their first runs are spread over the first
/// second so they do not all connect at the same instant.
pub fn spawn_all(
    probes: Vec<Arc<dyn Runnable>>,
    tx: ObservationTx,
    clock: Arc<dyn Clock>,
    drops: Arc<DropCounter>,
    stats: Arc<ScheduleStats>,
    stop: watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    let n = probes.len().max(1) as u32;
    let now = Instant::now();
    for (i, p) in probes.into_iter().enumerate() {
        let first = now + Duration::from_millis(1000) * i as u32 / n;
        set.spawn(run_probe(
            p,
            first,
            tx.clone(),
            clock.clone(),
            drops.clone(),
            stats.clone(),
            stop.clone(),
        ));
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn next_start_table() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let cases = [
            // (prev, now, want next, want skipped)
            (t, t + s(3), t + s(10), 0),
            (t, t + s(10), t + s(20), 1),
            (t, t + s(25), t + s(30), 2),
            (t, t + s(9), t + s(10), 0),
        ];
        for (prev, now, want, skipped) in cases {
            assert_eq!(next_start(prev, s(10), now), (want, skipped));
        }
    }
}
