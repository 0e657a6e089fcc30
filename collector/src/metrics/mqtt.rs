//! The collector's MQTT connection and its status publishing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::expo::Exposition;

#[derive(Debug, Default)]
pub struct MqttMetrics {
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub connection_errors: AtomicU64,
    pub status_published: AtomicU64,
    pub status_errors: AtomicU64,
    /// Signed hellos handed to the client (one per (re)subscription).
    pub hellos_published: AtomicU64,
}

impl MqttMetrics {
    pub fn render(&self, e: &mut Exposition) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        e.family(
            "muster_mqtt_connected",
            "gauge",
            "1 while connected and subscribed to the broker.",
        );
        e.sample(
            "muster_mqtt_connected",
            &[],
            u8::from(self.connected.load(Ordering::Relaxed)),
        );
        e.family(
            "muster_mqtt_connects_total",
            "counter",
            "Successful connections to the broker.",
        );
        e.sample("muster_mqtt_connects_total", &[], get(&self.connects));
        e.family(
            "muster_mqtt_connection_errors_total",
            "counter",
            "Connection attempts or connections that failed.",
        );
        e.sample(
            "muster_mqtt_connection_errors_total",
            &[],
            get(&self.connection_errors),
        );
        e.family(
            "muster_status_published_total",
            "counter",
            "Retained status and incident messages published for agencies.",
        );
        e.sample(
            "muster_status_published_total",
            &[],
            get(&self.status_published),
        );
        e.family(
            "muster_status_publish_errors_total",
            "counter",
            "Status messages that could not be handed to the MQTT client.",
        );
        e.sample(
            "muster_status_publish_errors_total",
            &[],
            get(&self.status_errors),
        );
        e.family(
            "muster_hellos_published_total",
            "counter",
            "Signed collector hellos published (one per (re)subscription).",
        );
        e.sample(
            "muster_hellos_published_total",
            &[],
            get(&self.hellos_published),
        );
    }
}
