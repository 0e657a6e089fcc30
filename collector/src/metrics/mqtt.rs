//! The collector's MQTT connection and its status publishing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::expo::Exposition;

/// One connection's state.
#[derive(Debug, Default)]
pub struct ConnMetrics {
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub errors: AtomicU64,
}

#[derive(Debug, Default)]
pub struct MqttMetrics {
    /// The connection that subscribes (and publishes, without a separate
    /// publisher).
    pub subscriber: ConnMetrics,
    /// `[mqtt.publisher]`'s connection, when `separate_publisher`; in
    /// cluster mode, the retained-status connection (`[cluster] mqtt`).
    pub publisher: ConnMetrics,
    pub separate_publisher: AtomicBool,
    /// PUBACKs with a failure reason (MQTT 5): the broker refused a publish.
    pub publishes_refused: AtomicU64,
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
            "1 while connected and subscribed to the broker (the subscribing connection).",
        );
        e.sample(
            "muster_mqtt_connected",
            &[],
            u8::from(self.subscriber.connected.load(Ordering::Relaxed)),
        );
        e.family(
            "muster_mqtt_connects_total",
            "counter",
            "Successful connections to the broker.",
        );
        e.sample(
            "muster_mqtt_connects_total",
            &[],
            get(&self.subscriber.connects),
        );
        e.family(
            "muster_mqtt_connection_errors_total",
            "counter",
            "Connection attempts or connections that failed.",
        );
        e.sample(
            "muster_mqtt_connection_errors_total",
            &[],
            get(&self.subscriber.errors),
        );
        e.family(
            "muster_mqtt_publishes_refused_total",
            "counter",
            "Acks, status and hellos the broker refused (a PUBACK with a failure reason, e.g. not authorized: check the broker's ACL for the collector's user names).",
        );
        e.sample(
            "muster_mqtt_publishes_refused_total",
            &[],
            get(&self.publishes_refused),
        );
        if self.separate_publisher.load(Ordering::Relaxed) {
            e.family(
                "muster_mqtt_publisher_connected",
                "gauge",
                "1 while the publisher connection (acks and status, [mqtt.publisher]; in cluster mode retained status, [cluster] mqtt) is up.",
            );
            e.sample(
                "muster_mqtt_publisher_connected",
                &[],
                u8::from(self.publisher.connected.load(Ordering::Relaxed)),
            );
            e.family(
                "muster_mqtt_publisher_connects_total",
                "counter",
                "Successful connections of the publisher connection.",
            );
            e.sample(
                "muster_mqtt_publisher_connects_total",
                &[],
                get(&self.publisher.connects),
            );
            e.family(
                "muster_mqtt_publisher_connection_errors_total",
                "counter",
                "Connection attempts or connections of the publisher connection that failed.",
            );
            e.sample(
                "muster_mqtt_publisher_connection_errors_total",
                &[],
                get(&self.publisher.errors),
            );
        }
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
            "Status messages that could not be handed to the MQTT client (in cluster mode with [cluster] mqtt: its queue full, or held past cluster.mqtt_queue while disconnected).",
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
