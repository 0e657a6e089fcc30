//! Webhook notifications, per agency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::expo::Exposition;

/// One agency's webhook counters.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    /// Changes (transitions, incident changes) handed to the webhook.
    pub changes: AtomicU64,
    /// Notifications the receiver took (2xx).
    pub sent: AtomicU64,
    /// Attempts that failed: connection error, timeout or non-2xx.
    pub failed: AtomicU64,
    /// Retries scheduled after a failed attempt.
    pub retries: AtomicU64,
    /// Notifications given up (attempts exhausted, queue full, shutdown).
    pub dead_letters: AtomicU64,
    /// Notifications waiting or in flight.
    pub queue_depth: AtomicU64,
}

/// Name, type, help and the counter of a family.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&WebhookCounters) -> &AtomicU64,
);

#[derive(Debug, Default)]
pub struct NotifyMetrics {
    agencies: RwLock<BTreeMap<String, Arc<WebhookCounters>>>,
    /// Changes the notifier missed because it fell behind the change
    /// broadcast (nothing else in the collector waits for it).
    pub missed_changes: AtomicU64,
}

impl NotifyMetrics {
    /// The counters of an agency with a webhook (created on first use).
    pub fn register(&self, agency: &str) -> Arc<WebhookCounters> {
        let mut m = self.agencies.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(m.entry(agency.to_owned()).or_default())
    }

    pub fn render(&self, e: &mut Exposition) {
        let m = self.agencies.read().unwrap_or_else(|e| e.into_inner());
        let families: [Family; 6] = [
            (
                "muster_webhook_changes_total",
                "counter",
                "Transitions and incident changes handed to the agency's webhook.",
                |c| &c.changes,
            ),
            (
                "muster_webhook_sent_total",
                "counter",
                "Webhook notifications the receiver accepted (2xx).",
                |c| &c.sent,
            ),
            (
                "muster_webhook_failed_total",
                "counter",
                "Webhook delivery attempts that failed (connection error, timeout or non-2xx).",
                |c| &c.failed,
            ),
            (
                "muster_webhook_retries_total",
                "counter",
                "Webhook deliveries scheduled again after a failed attempt.",
                |c| &c.retries,
            ),
            (
                "muster_webhook_dead_letters_total",
                "counter",
                "Webhook notifications given up: attempts exhausted, queue full, or left at shutdown.",
                |c| &c.dead_letters,
            ),
            (
                "muster_webhook_queue_depth",
                "gauge",
                "Webhook notifications waiting or in flight.",
                |c| &c.queue_depth,
            ),
        ];
        for (name, kind, help, get) in families {
            e.family(name, kind, help);
            for (agency, c) in m.iter() {
                e.sample(name, &[("agency", agency)], get(c).load(Ordering::Relaxed));
            }
        }
        e.family(
            "muster_webhook_missed_changes_total",
            "counter",
            "Changes the webhook notifier missed because it fell behind.",
        );
        e.sample(
            "muster_webhook_missed_changes_total",
            &[],
            self.missed_changes.load(Ordering::Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_per_agency() {
        let m = NotifyMetrics::default();
        let c = m.register("metro-fire");
        c.dead_letters.fetch_add(2, Ordering::Relaxed);
        assert!(Arc::ptr_eq(&c, &m.register("metro-fire")));
        let mut e = Exposition::default();
        m.render(&mut e);
        let text = e.finish();
        assert!(
            text.contains("muster_webhook_dead_letters_total{agency=\"metro-fire\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE muster_webhook_queue_depth gauge\n"));
        assert!(text.contains("muster_webhook_missed_changes_total 0\n"));
    }
}
