//! systemd `Type=notify` for the collector: `READY=1` once the store is open
//! and the units are restored (the feed answers even while the broker is
//! still unreachable), `WATCHDOG=1` at half of `WatchdogSec=` only while the
//! ingest worker keeps ticking (a hung worker gets the service restarted),
//! and `STOPPING=1` at shutdown. A no-op outside systemd. The datagram
//! plumbing is shared (`muster_base::systemd`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use muster_base::systemd::{SystemdNotifier, watchdog_interval};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::state::Shared;

/// Runs until `stop` is cancelled.
pub async fn systemd(shared: Arc<Shared>, stop: CancellationToken) {
    let Some(notifier) = SystemdNotifier::from_env() else {
        return;
    };
    let watchdog = watchdog_interval();
    let period = watchdog
        .map(|w| w / 2)
        .unwrap_or(Duration::from_secs(1))
        .min(Duration::from_millis(500));
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready = false;
    let mut last_ticks = shared.worker_ticks.load(Ordering::Relaxed);
    let mut last_ping = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                notifier.notify("STOPPING=1");
                return;
            }
            _ = t.tick() => {}
        }
        if !ready && shared.started.load(Ordering::Relaxed) {
            notifier.notify("READY=1");
            info!("Told systemd we are ready.");
            ready = true;
        }
        let Some(w) = watchdog else { continue };
        if last_ping.elapsed() < w / 2 {
            continue;
        }
        let ticks = shared.worker_ticks.load(Ordering::Relaxed);
        if ticks != last_ticks {
            notifier.notify("WATCHDOG=1");
            last_ticks = ticks;
            last_ping = tokio::time::Instant::now();
        } else if last_ping.elapsed() >= w {
            warn!("Ingest worker has not ticked for a whole watchdog period.");
        }
    }
}
