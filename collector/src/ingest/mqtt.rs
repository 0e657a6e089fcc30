//! The collector's MQTT v5 connection (rumqttc): subscribes to the fleet's
//! telemetry and state topics (as a shared subscription when
//! `mqtt.shared_group` is set), hands every publish to the parse stage
//! ([`run_parser`], off both this task and the ingest worker) and on to the
//! worker, and publishes acks and status messages: on the same connection,
//! or on a second one ([`Role::Publisher`]: `[mqtt.publisher]`, and always
//! on the embedded broker), whose event loop then serves nothing but them.
//!
//! Every time the subscription is (re)established (SubAck: first start,
//! reconnect, broker restart) it publishes a signed `Hello` with a growing
//! counter, retained, QoS 1, on `muster/v1/collector`: agents that see a
//! newer hello resend what they have in flight at once (their earlier
//! sends may have hit a broker with nobody subscribed).
//!
//! Backpressure ([`super::flow`]): the event loop is polled by its own task;
//! its only wait is on the bounded hand-off (`ingest.queue`), which fills
//! when the worker holds its window, so this task stops reading the socket
//! and TCP pushes back on the broker. Publishing goes through a separate
//! task, so the worker never waits on the event loop and the two cannot
//! deadlock.

use muster_base::backoff::{Jitter, Retry};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use muster_proto::TopicKind;
use muster_proto::topic::fleet_filter;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::outqueue::OutQueue;
use super::parse::{Parsed, Refused, parse};
use super::signpool::SignPool;
use crate::config::{MqttConfig, MqttScheme};
use crate::state::Shared;
use crate::status_pub::{AckOut, Out, Outbound, OutboundKind};

/// The collector's MQTT reconnect: 100 ms doubling to 2 s, equal jitter.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
pub const RECONNECT_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("cannot read {path} (mqtt.ca_file, cert_file or key_file): {error}")]
    Ca { path: String, error: std::io::Error },
    #[error("bad subscription filter: {0}")]
    Filter(String),
}

/// Parsed messages waiting for the worker, at most (`ingest.queue` if less).
pub const PARSED_QUEUE: usize = 256;

/// One message from the broker, as received.
#[derive(Debug)]
pub struct Raw {
    pub topic: bytes::Bytes,
    pub payload: bytes::Bytes,
    pub received: tokio::time::Instant,
    /// Settled by the worker (JetStream); `None` on MQTT.
    pub settle: Option<Box<dyn super::settle::Settle>>,
}

/// One message from the broker, parsed.
#[derive(Debug)]
pub struct Inbound {
    pub parsed: Result<Parsed, Refused>,
    pub received: tokio::time::Instant,
    /// Settled by the worker (JetStream); `None` on MQTT.
    pub settle: Option<Box<dyn super::settle::Settle>>,
}

/// Largest packet we accept from the broker: well above the wire limit, so
/// an oversized message reaches us and is counted as `oversized` instead
/// of vanishing at the broker.
pub const MAX_PACKET_BYTES: u32 = (muster_proto::MAX_MESSAGE_BYTES as u32) * 4;

pub fn options(cfg: &MqttConfig, receive_maximum: u16) -> Result<MqttOptions, MqttError> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_keep_alive(cfg.keep_alive);
    // A persistent session: the broker queues telemetry for us while we
    // restart, and re-sends what it had in flight.
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(cfg.session_expiry.as_secs() as u32));
    o.set_receive_maximum(Some(receive_maximum));
    o.set_max_packet_size(Some(MAX_PACKET_BYTES));
    o.set_request_channel_capacity(65_536);
    if let Some((user, pass)) = &cfg.credentials {
        o.set_credentials(user.clone(), pass.0.clone());
    }
    if cfg.scheme == MqttScheme::Tls {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let path = cfg.ca_file.clone().unwrap_or_default();
        let ca = std::fs::read(&path).map_err(|source| MqttError::Ca {
            path: path.display().to_string(),
            error: source,
        })?;
        let client_auth = match &cfg.client_cert {
            Some((cert, key)) => {
                let read = |p: &std::path::PathBuf| {
                    std::fs::read(p).map_err(|source| MqttError::Ca {
                        path: p.display().to_string(),
                        error: source,
                    })
                };
                Some((read(cert)?, read(key)?))
            }
            None => None,
        };
        o.set_transport(Transport::tls(ca, client_auth, None));
    }
    Ok(o)
}

/// The filters we subscribe to.
pub fn filters(group: Option<&str>) -> Result<Vec<Filter>, MqttError> {
    [TopicKind::Telemetry, TopicKind::State]
        .into_iter()
        .map(|k| {
            fleet_filter(k, group)
                .map(|f| Filter::new(f, QoS::AtLeastOnce))
                .map_err(|e| MqttError::Filter(e.to_string()))
        })
        .collect()
}

/// What the event loop does on every connection: subscribe to `filters`,
/// and once subscribed, say hello.
pub struct OnConnect {
    pub filters: Vec<Filter>,
    pub signer: Arc<crate::signing::Signer>,
    /// This process's start, unix ms.
    pub started_ms: u64,
    /// Subscriptions so far.
    pub counter: u64,
}

impl OnConnect {
    /// The next hello's payload.
    fn next_payload(&mut self) -> Result<Vec<u8>, muster_proto::EncodeError> {
        self.counter += 1;
        muster_proto::encode_hello(&self.signer.hello(self.started_ms, self.counter))
    }
}

/// What a connection is for.
pub enum Role {
    /// Subscribes to the fleet's topics, says hello on every (re)subscription
    /// and hands publishes to the parse stage; it also carries acks and
    /// status when there is no separate publisher.
    Subscriber {
        inbound: mpsc::Sender<Raw>,
        hello: OnConnect,
    },
    /// Only publishes (acks and status): `[mqtt.publisher]`, and always on
    /// the embedded broker. Its event loop serves nothing but those
    /// requests and their PUBACKs, so acks do not wait for turns behind the
    /// telemetry being read (one request per turn in rumqttc 0.25).
    Publisher,
}

/// Polls the event loop until the client disconnects (after the publisher
/// has sent everything) or `hard_stop` fires. While `stop_forwarding` is
/// cancelled, new publishes are no longer handed on (they are not acked
/// end to end, so agents resend them).
pub async fn run_event_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    mut role: Role,
    shared: Arc<Shared>,
    stop_forwarding: CancellationToken,
    hard_stop: CancellationToken,
) {
    let m = &shared.metrics.mqtt;
    let conn = match role {
        Role::Subscriber { .. } => &m.subscriber,
        Role::Publisher => &m.publisher,
    };
    // Equal jitter, capped at 2 s: after a broker restart several collectors
    // (a shared-subscription group) do not retry in step, yet each is back
    // within 2 s of the broker (the whole fleet's feed waits on it; a
    // handful of collectors retrying every 1-2 s costs the broker nothing).
    // Full jitter grows the ceiling faster than the outage and could leave
    // the feed stale for longer than the outage itself.
    let mut backoff = Retry::new(RECONNECT_MIN, RECONNECT_MAX);
    let mut jitter = Jitter::from_entropy();
    let mut last_error_log: Option<tokio::time::Instant> = None;
    let mut last_refused_log: Option<tokio::time::Instant> = None;
    loop {
        let ev = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = hard_stop.cancelled() => break,
        };
        match (ev, &mut role) {
            (Ok(Event::Incoming(Packet::PubAck(a))), _)
                if !matches!(
                    a.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ) =>
            {
                // The broker took the publish and dropped it (an ACL that
                // does not let this user write acks or status): agents are
                // never acked and resend. Counted; one line per 10 s.
                m.publishes_refused.fetch_add(1, Ordering::Relaxed);
                let now = tokio::time::Instant::now();
                if last_refused_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
                {
                    warn!(reason = ?a.reason, publisher = matches!(role, Role::Publisher), "The broker refused a publish (muster_mqtt_publishes_refused_total): check its ACL for this connection's user.");
                    last_refused_log = Some(now);
                }
            }
            (Ok(Event::Incoming(Packet::Publish(p))), Role::Subscriber { inbound, .. }) => {
                if stop_forwarding.is_cancelled() {
                    continue;
                }
                let msg = Raw {
                    topic: p.topic,
                    payload: p.payload,
                    received: tokio::time::Instant::now(),
                    settle: None,
                };
                shared.queue_depth.fetch_add(1, Ordering::Relaxed);
                let sent = tokio::select! {
                    r = inbound.send(msg) => r.is_ok(),
                    _ = stop_forwarding.cancelled() => false,
                };
                if !sent {
                    shared.queue_depth.fetch_sub(1, Ordering::Relaxed);
                }
            }
            (Ok(Event::Incoming(Packet::ConnAck(ack))), role) => {
                info!(
                    session_present = ack.session_present,
                    publisher = matches!(role, Role::Publisher),
                    "Connected to the MQTT broker."
                );
                conn.connects.fetch_add(1, Ordering::Relaxed);
                backoff.reset();
                match role {
                    Role::Subscriber { hello, .. } => {
                        if let Err(e) = client.try_subscribe_many(hello.filters.clone()) {
                            warn!(error = %e, "Cannot queue the subscription.");
                        }
                    }
                    // Nothing to subscribe to: up once connected.
                    Role::Publisher => conn.connected.store(true, Ordering::Relaxed),
                }
            }
            (Ok(Event::Incoming(Packet::SubAck(s))), Role::Subscriber { hello, .. }) => {
                let refused: Vec<_> = s
                    .return_codes
                    .iter()
                    .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                    .collect();
                if refused.is_empty() {
                    debug!(codes = ?s.return_codes, "Subscribed.");
                } else {
                    // Once per (re)subscription: no telemetry arrives on a
                    // refused filter (an ACL, or a broker without shared
                    // subscriptions for mqtt.shared_group).
                    warn!(codes = ?s.return_codes, "The broker refused a subscription: check its ACL for this user, and mqtt.shared_group.");
                }
                conn.connected.store(true, Ordering::Relaxed);
                match hello.next_payload() {
                    Ok(payload) => match client.try_publish(
                        muster_proto::COLLECTOR_TOPIC,
                        QoS::AtLeastOnce,
                        true,
                        payload,
                    ) {
                        Ok(()) => {
                            m.hellos_published.fetch_add(1, Ordering::Relaxed);
                            debug!(counter = hello.counter, "Hello published.");
                        }
                        Err(e) => warn!(error = %e, "Cannot queue the hello."),
                    },
                    Err(e) => warn!(error = %e, "Cannot encode the hello."),
                }
            }
            (Ok(Event::Incoming(Packet::Disconnect(d))), _) => {
                warn!(reason = ?d.reason_code, "The broker disconnected us.");
                conn.connected.store(false, Ordering::Relaxed);
            }
            (Ok(Event::Outgoing(Outgoing::Disconnect)), role) => {
                debug!(publisher = matches!(role, Role::Publisher), "Disconnected.");
                conn.connected.store(false, Ordering::Relaxed);
                break;
            }
            (Ok(_), _) => {}
            (Err(e), _) => {
                conn.connected.store(false, Ordering::Relaxed);
                conn.errors.fetch_add(1, Ordering::Relaxed);
                if stop_forwarding.is_cancelled() {
                    // Shutting down and the broker is gone: nothing to send.
                    break;
                }
                let wait = backoff.next_equal(jitter.draw());
                let now = tokio::time::Instant::now();
                if last_error_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
                    warn!(error = %e, retry_in = ?wait, attempt = backoff.attempt(), publisher = matches!(role, Role::Publisher), "MQTT connection failed.");
                    last_error_log = Some(now);
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = hard_stop.cancelled() => break,
                }
            }
        }
    }
    conn.connected.store(false, Ordering::Relaxed);
}

/// The parse stage: decodes what the event loop received and hands it to
/// the worker, in order. Both hand-offs are bounded (`ingest.queue`).
pub async fn run_parser(mut raw: mpsc::Receiver<Raw>, parsed: mpsc::Sender<Inbound>) {
    while let Some(m) = raw.recv().await {
        let msg = Inbound {
            parsed: parse(&m.topic, &m.payload),
            received: m.received,
            settle: m.settle,
        };
        if parsed.send(msg).await.is_err() {
            break;
        }
    }
}

/// Most queued items taken out of the [`OutQueue`] and made ready (acks
/// signed) at once. Once taken they are no longer merged, so this is small
/// next to the unit count; it is large enough that the signing of a batch
/// can be spread over the machine's cores.
pub const READY_BATCH: usize = 256;

/// Publishes everything queued on `outbound` (QoS 1) through the
/// coalescing [`OutQueue`] (acks signed here), then disconnects once the
/// queue's senders are gone and it is empty. While the MQTT client is busy,
/// it keeps taking from `outbound`, so what waits is bounded by the queue's
/// keys (units and status topics), not by how far behind the output is.
///
/// Acks are signed in batches of up to [`READY_BATCH`] taken from the
/// queue, on the [`SignPool`]'s threads (spread over the cores, at a lower
/// CPU priority): an Ed25519 signature costs about 20 µs, so at 100,000
/// units (20,000 acks/s) signing in this one task was the ack path's
/// ceiling (fleet bench: acks fell 4–5 s behind while the store kept up).
/// Where the publisher's acks and status go: the MQTT broker (single
/// node), or NATS (cluster mode: `crate::cluster::node`).
pub trait Sink: Send + Sync + 'static {
    /// Queued for the broker (not yet delivered: the agent's buffer owns delivery).
    fn publish(
        &self,
        topic: String,
        retain: bool,
        payload: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
    /// Once everything queued is out.
    fn close(&self) -> impl std::future::Future<Output = ()> + Send;
}

impl Sink for AsyncClient {
    async fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> Result<(), String> {
        AsyncClient::publish(self, topic, QoS::AtLeastOnce, retain, payload)
            .await
            .map_err(|e| e.to_string())
    }

    async fn close(&self) {
        let _ = self.disconnect().await;
    }
}

pub async fn run_publisher(
    client: impl Sink,
    mut outbound: mpsc::UnboundedReceiver<Out>,
    shared: Arc<Shared>,
    signer: Arc<crate::signing::Signer>,
) {
    let m = &shared.metrics;
    let mut queue = OutQueue::default();
    let mut ready: std::collections::VecDeque<Outbound> = Default::default();
    let mut open = true;
    let take = |queue: &mut OutQueue, o: Out| {
        shared.outbound_depth.fetch_sub(1, Ordering::Relaxed);
        queue.push(o);
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = SignPool::new(cores, signer);
    loop {
        // Everything already sent goes into the queue first, where it is
        // merged: the channel holds only what arrived since, and a publisher
        // that falls behind signs fewer, merged acks instead of a backlog.
        while open {
            match outbound.try_recv() {
                Ok(o) => take(&mut queue, o),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if ready.is_empty() {
            let batch: Vec<Out> = std::iter::from_fn(|| queue.pop())
                .take(READY_BATCH)
                .collect();
            if batch.is_empty() {
                if !open {
                    break;
                }
                match outbound.recv().await {
                    Some(o) => take(&mut queue, o),
                    None => open = false,
                }
                continue;
            }
            ready = pool.ready(batch, &m.ack.errors).await.into();
        }
        let Some(o) = ready.pop_front() else {
            continue;
        };
        let topic = (o.kind == OutboundKind::Action).then(|| o.topic.clone());
        let publish = client.publish(o.topic, o.retain, o.payload);
        tokio::pin!(publish);
        let r = loop {
            tokio::select! {
                r = &mut publish => break r,
                got = outbound.recv(), if open => match got {
                    Some(got) => take(&mut queue, got),
                    None => open = false,
                },
            }
        };
        m.ack.coalesced.store(queue.merged, Ordering::Relaxed);
        shared
            .outbound_queued
            .store(queue.len() + ready.len(), Ordering::Relaxed);
        match (o.kind, r) {
            (OutboundKind::Ack, Ok(())) => {
                m.ack.published.fetch_add(1, Ordering::Relaxed);
                if let Some(since) = o.since {
                    m.ack.latency.observe(since.elapsed());
                }
            }
            (OutboundKind::Status, Ok(())) => {
                m.mqtt.status_published.fetch_add(1, Ordering::Relaxed);
            }
            (OutboundKind::Ack, Err(e)) => {
                m.ack.errors.fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, "Ack not queued.");
            }
            (OutboundKind::Status, Err(e)) => {
                m.mqtt.status_errors.fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, "Status not queued.");
            }
            (OutboundKind::Action, r) => {
                m.actions.dequeued(r.is_ok());
                if let Err(e) = r {
                    debug!(topic = ?topic, error = %e, "Action request not queued.");
                }
            }
        }
    }
    shared.outbound_queued.store(0, Ordering::Relaxed);
    client.close().await;
}

/// An ack signed (schema v2; a v1 unit is answered unsigned, in v1) and
/// encoded for its unit's ack topic.
pub(super) fn ready_ack(a: AckOut, signer: &crate::signing::Signer) -> Option<Outbound> {
    let ack = if a.version >= 2 {
        signer.sign_ack(&a.unit, a.ack)
    } else {
        a.ack
    };
    let msg = muster_proto::Message {
        unit: a.unit,
        body: muster_proto::Body::Ack(ack),
    };
    match muster_proto::encode_version(&msg, a.version) {
        Ok(payload) => Some(Outbound {
            topic: muster_proto::topic::unit_topic(&msg.unit, TopicKind::Ack),
            payload,
            retain: false,
            since: a.since,
            kind: OutboundKind::Ack,
        }),
        Err(e) => {
            tracing::error!(unit = %msg.unit, error = %e, "Cannot encode an ack.");
            None
        }
    }
}
