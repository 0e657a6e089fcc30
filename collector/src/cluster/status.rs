//! Where a cluster collector's acks and status go ([`ClusterSink`], the
//! ingest publisher's [`Sink`]): acks, and everything when `[cluster] mqtt`
//! is unset, as core NATS messages; retained status (`Out::Message` with
//! `retain`: unit status and agency incidents) over one MQTT 3.1.1
//! connection to the NATS nodes' MQTT listeners ([`StatusLink`]), because
//! NATS 2.9 keeps retained MQTT messages only from MQTT publishers.
//!
//! Contract:
//! * **One connection**, client id `muster-collector-<cluster id>`, clean
//!   session (no session state in NATS: it only publishes), QoS 1, retain.
//!   It starts on the first listener; on a failed attempt or a lost
//!   connection it moves to the next (`muster_base::backoff::Failover`)
//!   after the collector's MQTT reconnect backoff (100 ms doubling to 2 s,
//!   equal jitter: `crate::ingest::mqtt::RECONNECT_MIN`/`MAX`).
//! * **Bounded.** A status is handed to the MQTT client without waiting
//!   (the same publisher task sends acks, which must not wait on MQTT): its
//!   request channel holds `cluster.mqtt_queue` messages; one that does not
//!   fit is dropped and counted (`muster_status_publish_errors_total`,
//!   logged at most once per 10 s). What was queued or in flight when the
//!   connection was lost is kept newest-per-topic (a retained topic's older
//!   message is superseded), at most `mqtt_queue` of it (the oldest beyond
//!   that dropped and counted), and sent first on the next connection, in
//!   order: a status is not lost to a failover, only to a full queue.
//! * **Who publishes.** The worker emits a unit's status only for units of
//!   partitions this collector holds (it pulls only those, the shared
//!   `state` consumer naks the others', and a lost partition's units are
//!   forgotten), so a unit's retained status comes from its partition's
//!   owner. Delivery is asynchronous: a status emitted just before a
//!   partition is lost (or queued while the link was down) can land after
//!   it; the new owner publishes at the unit's next transition (adoption
//!   republishes nothing).
//! * **Metrics**: the link is the "publisher connection"
//!   (`muster_mqtt_publisher_connected`, `…_connects_total`,
//!   `…_connection_errors_total`); `muster_status_published_total` counts
//!   what was handed to it.
//! * **Stopping**: [`Sink::close`] (the publisher's last act, after the
//!   worker's last status) queues a DISCONNECT behind what is queued and
//!   waits up to [`CLOSE_WAIT`] for it to go out; after that, or when the
//!   link is dropped, its task stops where it is.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_base::backoff::{Failover, Jitter, Retry};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, Request,
};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use super::config::StatusMqttConfig;
use crate::ingest::mqtt::{MAX_PACKET_BYTES, RECONNECT_MAX, RECONNECT_MIN, Sink};
use crate::state::Shared;

/// How long [`Sink::close`] waits for queued status to go out.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The MQTT keep-alive of the status connection.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// At most one warning line per this long (drops, connection errors).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The collector's MQTT client id on the NATS listeners.
pub fn client_id(cluster_id: &str) -> String {
    format!("muster-collector-{cluster_id}")
}

/// One client's options per listener, in the order listed.
pub fn options(cfg: &StatusMqttConfig, cluster_id: &str) -> Vec<MqttOptions> {
    cfg.brokers
        .iter()
        .map(|(host, port)| {
            let mut o = MqttOptions::new(client_id(cluster_id), host.clone(), *port);
            o.set_keep_alive(KEEP_ALIVE)
                .set_clean_session(true)
                .set_max_packet_size(MAX_PACKET_BYTES as usize, MAX_PACKET_BYTES as usize);
            if let Some((user, pass)) = &cfg.credentials {
                o.set_credentials(user.clone(), pass.0.clone());
            }
            o
        })
        .collect()
}

/// The MQTT connection retained status goes out on, and its task.
pub struct StatusLink {
    client: AsyncClient,
    task: Mutex<Option<JoinHandle<()>>>,
    stop: CancellationToken,
    /// Stops the task when the link is dropped without [`Sink::close`].
    _guard: DropGuard,
    shared: Arc<Shared>,
    last_drop_log: Mutex<Option<tokio::time::Instant>>,
}

impl StatusLink {
    /// Starts the connection's task (on the first listener).
    pub fn start(cfg: &StatusMqttConfig, cluster_id: &str, shared: Arc<Shared>) -> StatusLink {
        let brokers = options(cfg, cluster_id);
        let (client, el) = AsyncClient::new(brokers[0].clone(), cfg.queue);
        let stop = CancellationToken::new();
        shared
            .metrics
            .mqtt
            .separate_publisher
            .store(true, Ordering::Relaxed);
        let task = tokio::spawn(run_link(
            el,
            brokers,
            cfg.queue,
            Arc::clone(&shared),
            stop.clone(),
        ));
        StatusLink {
            client,
            task: Mutex::new(Some(task)),
            _guard: stop.clone().drop_guard(),
            stop,
            shared,
            last_drop_log: Mutex::new(None),
        }
    }

    /// Queues a retained status (QoS 1) without waiting; an error when
    /// the queue is full (counted by the publisher).
    fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, true, payload)
            .map_err(|e| {
                let now = tokio::time::Instant::now();
                let mut last = self.last_drop_log.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
                    *last = Some(now);
                    let m = &self.shared.metrics.mqtt;
                    warn!(
                        error = %e,
                        connected = m.publisher.connected.load(Ordering::Relaxed),
                        dropped_so_far = m.status_errors.load(Ordering::Relaxed),
                        "A retained status could not be queued for MQTT (cluster.mqtt_queue full, muster_status_publish_errors_total): its topic keeps the previous status until the unit's next transition."
                    );
                }
                e.to_string()
            })
    }

    /// Queues a DISCONNECT behind what is queued; waits for the task up to
    /// [`CLOSE_WAIT`], then stops it.
    async fn close(&self) {
        if let Err(e) = self.client.try_disconnect() {
            debug!(error = %e, "Cannot queue the status connection's DISCONNECT.");
        }
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut task) = task else {
            return;
        };
        if tokio::time::timeout(CLOSE_WAIT, &mut task).await.is_err() {
            warn!(
                wait = ?CLOSE_WAIT,
                "The status MQTT connection did not send what it held in time; stopping it (those retained topics keep their previous status)."
            );
            self.stop.cancel();
            let _ = task.await;
        }
    }
}

/// Acks (and status, without [`StatusLink`]) through core NATS; retained
/// status through the [`StatusLink`] when `[cluster] mqtt` is set.
pub struct ClusterSink {
    pub nats: async_nats::Client,
    pub mqtt: Option<StatusLink>,
}

impl Sink for ClusterSink {
    async fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> Result<(), String> {
        match &self.mqtt {
            Some(link) if retain => link.publish(topic, payload),
            _ => self
                .nats
                .publish(topic.replace('/', "."), payload.into())
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn close(&self) {
        if let Some(link) = &self.mqtt {
            link.close().await;
        }
        let _ = self.nats.flush().await;
    }
}

fn broker_name(o: &MqttOptions) -> String {
    let (host, port) = o.broker_address();
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Polls the status connection until our DISCONNECT is out, every client
/// handle is gone, or `stop`; on a loss, keeps what it held
/// ([`keep_newest`]) and moves to the next listener after a backoff.
async fn run_link(
    mut el: EventLoop,
    brokers: Vec<MqttOptions>,
    cap: usize,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let m = &shared.metrics.mqtt;
    let conn = &m.publisher;
    let mut backoff = Retry::new(RECONNECT_MIN, RECONNECT_MAX);
    let mut jitter = Jitter::from_entropy();
    let mut failover = Failover::new(brokers.len());
    let mut held: VecDeque<Request> = VecDeque::new();
    let mut last_error_log: Option<tokio::time::Instant> = None;
    loop {
        let ev = tokio::select! {
            ev = el.poll() => ev,
            _ = stop.cancelled() => break,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                info!(broker = %broker_name(&el.mqtt_options), resending = held.len(), "Status connection up (retained status over MQTT).");
                conn.connects.fetch_add(1, Ordering::Relaxed);
                conn.connected.store(true, Ordering::Relaxed);
                backoff.reset();
                // Before anything still in the channel (newer), in order.
                let rest = std::mem::take(&mut el.pending);
                el.pending = held.drain(..).chain(rest).collect();
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                debug!("Status connection closed.");
                break;
            }
            Ok(_) => {}
            Err(ConnectionError::RequestsDone) => break,
            Err(e) => {
                conn.connected.store(false, Ordering::Relaxed);
                conn.errors.fetch_add(1, Ordering::Relaxed);
                let dropped = keep_newest(&mut held, el.pending.drain(..), cap);
                if dropped > 0 {
                    m.status_errors.fetch_add(dropped as u64, Ordering::Relaxed);
                }
                let failed = broker_name(&el.mqtt_options);
                el.mqtt_options = brokers[failover.failed()].clone();
                let wait = backoff.next_equal(jitter.draw());
                let now = tokio::time::Instant::now();
                if last_error_log.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
                    warn!(error = %e, broker = %failed, next_broker = %broker_name(&el.mqtt_options), retry_in = ?wait, attempt = backoff.attempt(), held = held.len(), dropped, "Status MQTT connection failed.");
                    last_error_log = Some(now);
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
    }
    conn.connected.store(false, Ordering::Relaxed);
}

/// Appends `more` (newer) to `held` (older), keeping only the newest
/// publish per topic (a retained topic's older message is superseded) and
/// a DISCONNECT (the collector stopping), in their order; other requests
/// (pings, acks of a session) are not carried over. Publishes get new
/// packet ids on the next connection. Beyond `cap`, the oldest are dropped:
/// their number is returned.
pub fn keep_newest(
    held: &mut VecDeque<Request>,
    more: impl IntoIterator<Item = Request>,
    cap: usize,
) -> usize {
    let all: Vec<Request> = held.drain(..).chain(more).collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut disconnect = false;
    let mut kept: Vec<Request> = Vec::with_capacity(all.len());
    for r in all.into_iter().rev() {
        match r {
            Request::Publish(mut p) if seen.insert(p.topic.clone()) => {
                p.pkid = 0;
                p.dup = false;
                kept.push(Request::Publish(p));
            }
            Request::Disconnect(d) if !disconnect => {
                disconnect = true;
                kept.push(Request::Disconnect(d));
            }
            _ => {}
        }
    }
    kept.reverse();
    let over = kept.len().saturating_sub(cap);
    held.extend(kept.into_iter().skip(over));
    over
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{Disconnect, PingReq, Publish};

    fn publish(topic: &str, payload: &str) -> Request {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, payload.as_bytes().to_vec());
        p.retain = true;
        p.pkid = 7;
        p.dup = true;
        Request::Publish(p)
    }

    fn names(q: &VecDeque<Request>) -> Vec<String> {
        q.iter()
            .map(|r| match r {
                Request::Publish(p) => {
                    assert_eq!((p.pkid, p.dup), (0, false), "renumbered");
                    format!("{}={}", p.topic, String::from_utf8_lossy(&p.payload))
                }
                Request::Disconnect(_) => "DISCONNECT".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn what_a_lost_connection_held_is_kept_newest_per_topic_in_order_and_bounded() {
        // (held before, lost now, cap, kept, dropped)
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            &'a [(&'a str, &'a str)],
            usize,
            &'a [&'a str],
            usize,
        );
        let cases: &[Case] = &[
            (&[], &[], 8, &[], 0),
            (&[("a", "1")], &[("b", "1")], 8, &["a=1", "b=1"], 0),
            // The newer message of a topic wins, at its (newer) place.
            (
                &[("a", "1"), ("b", "1")],
                &[("a", "2")],
                8,
                &["b=1", "a=2"],
                0,
            ),
            (&[], &[("a", "1"), ("a", "2"), ("a", "3")], 8, &["a=3"], 0),
            // Beyond the cap the oldest go, counted.
            (
                &[("a", "1"), ("b", "1")],
                &[("c", "1"), ("d", "1")],
                3,
                &["b=1", "c=1", "d=1"],
                1,
            ),
            // Superseded messages are not drops.
            (
                &[("a", "1")],
                &[("a", "2"), ("b", "1")],
                2,
                &["a=2", "b=1"],
                0,
            ),
        ];
        for (before, lost, cap, want, dropped) in cases {
            let mut held: VecDeque<Request> = before.iter().map(|(t, p)| publish(t, p)).collect();
            let got = keep_newest(&mut held, lost.iter().map(|(t, p)| publish(t, p)), *cap);
            assert_eq!(names(&held), *want, "{before:?} + {lost:?}, cap {cap}");
            assert_eq!(got, *dropped, "{before:?} + {lost:?}, cap {cap}");
        }
    }

    #[test]
    fn a_disconnect_is_kept_and_pings_are_not() {
        let mut held = VecDeque::new();
        let lost = [
            publish("a", "1"),
            Request::PingReq(PingReq),
            Request::Disconnect(Disconnect),
            Request::Disconnect(Disconnect),
        ];
        assert_eq!(keep_newest(&mut held, lost, 8), 0);
        assert_eq!(names(&held), ["a=1", "DISCONNECT"]);
    }

    #[test]
    fn one_client_per_listener_in_order_with_the_collectors_id() {
        let cfg = StatusMqttConfig {
            brokers: vec![("10.0.0.1".into(), 1883), ("::1".into(), 1884)],
            credentials: Some(("u".into(), crate::config::Secret("p".into()))),
            queue: 64,
        };
        let o = options(&cfg, "collector-1");
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].client_id(), "muster-collector-collector-1");
        assert_eq!(broker_name(&o[0]), "10.0.0.1:1883");
        assert_eq!(broker_name(&o[1]), "[::1]:1884");
        assert!(o[1].clean_session());
        assert_eq!(o[0].credentials(), Some(rumqttc::Login::new("u", "p")));
    }
}
