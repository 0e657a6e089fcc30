//! The MQTT edge: client options (stable id, persistent session, will,
//! keepalive, TLS with rustls/ring, credentials) and the event-loop task
//! that polls continuously and reconnects with backoff, failing over
//! between the brokers of `mqtt.urls` ([`Failover`]).

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use muster_proto::{
    Body, BootId, Message, Presence, PresenceReason, TopicKind, UnitId, encode, topic::unit_topic,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, QoS, Transport};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::UplinkError;
use super::settings::{MqttSettings, UplinkSettings};
use crate::clock::Clock;
use muster_base::backoff::Retry;

/// Largest MQTT packet either way: a full message plus topic and header.
pub const MAX_PACKET_BYTES: usize = muster_proto::MAX_MESSAGE_BYTES + 4096;

/// Where Linux distributions keep the system CA bundle, used for
/// `mqtts://` when `mqtt.ca_file` is not set.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// What the event-loop task reports to the uplink.
#[derive(Debug)]
pub enum LinkEvent {
    /// CONNACK received: connection `connection` of this boot is up.
    Connected {
        connection: u32,
        session_present: bool,
        /// `host:port` of the broker this connection is to.
        broker: String,
    },
    /// The connection failed or dropped.
    Disconnected { error: String },
    /// A publish arrived (acks, our own state topic).
    Message { topic: String, payload: Vec<u8> },
}

/// A presence payload for the state topic.
pub fn presence(
    unit: &UnitId,
    boot: BootId,
    connection: u32,
    reason: PresenceReason,
    at_ms: u64,
) -> Vec<u8> {
    encode(&Message {
        unit: unit.clone(),
        body: Body::Presence(Presence {
            online: reason.is_online(),
            boot,
            connection,
            at_ms,
            reason,
        }),
    })
    .expect("a presence message always encodes")
}

fn will(unit: &UnitId, boot: BootId, connection: u32, at_ms: u64) -> LastWill {
    LastWill::new(
        unit_topic(unit, TopicKind::State),
        presence(unit, boot, connection, PresenceReason::Lost, at_ms),
        QoS::AtLeastOnce,
        true,
    )
}

/// Which broker the next connection attempt goes to: the first listed
/// at start, the next one (wrapping) after every failed attempt or lost
/// connection, no failing back (`muster_base::backoff::Failover`, shared
/// with the cluster collector's status connection).
pub use muster_base::backoff::Failover;

/// Builds the client options for the first connection of this boot, one
/// per broker of `mqtt.urls`, in order.
pub fn options(
    unit: &UnitId,
    boot: BootId,
    m: &MqttSettings,
    u: &UplinkSettings,
    now_ms: u64,
) -> Result<Vec<MqttOptions>, UplinkError> {
    let transport = if m.tls {
        Some(Transport::tls_with_config(tls_config(m)?.into()))
    } else {
        None
    };
    Ok(m.brokers
        .iter()
        .map(|(host, port)| {
            let mut o = MqttOptions::new(m.client_id.clone(), host.clone(), *port);
            o.set_keep_alive(m.keepalive.max(Duration::from_secs(1)))
                .set_clean_session(false)
                .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
                .set_inflight(u.max_inflight.saturating_mul(2).max(32))
                .set_request_channel_capacity(usize::from(u.max_inflight) + 64)
                .set_last_will(will(unit, boot, 1, now_ms));
            if let Some(user) = &m.username {
                o.set_credentials(user.clone(), m.password.clone().unwrap_or_default());
            }
            if let Some(t) = &transport {
                o.set_transport(t.clone());
            }
            o
        })
        .collect())
}

fn broker_name(o: &MqttOptions) -> String {
    let (host, port) = o.broker_address();
    crate::config::format_host_port(&host, port)
}

/// rustls with the ring provider: the CA file (or the system bundle), and a
/// client certificate for mTLS when configured.
pub fn tls_config(
    m: &MqttSettings,
) -> Result<rumqttc::tokio_rustls::rustls::ClientConfig, UplinkError> {
    use rustls::{ClientConfig, RootCertStore};
    let tls = |what: String| UplinkError::Tls(what);
    let ca_path = match &m.ca_file {
        Some(p) => p.clone(),
        None => SYSTEM_CA_BUNDLES
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .map(Path::to_path_buf)
            .ok_or_else(|| {
                tls(
                    "mqtt.ca_file is not set and no system CA bundle was found; set mqtt.ca_file"
                        .into(),
                )
            })?,
    };
    let mut roots = RootCertStore::empty();
    let file = std::fs::File::open(&ca_path)
        .map_err(|e| tls(format!("mqtt.ca_file {}: {e}", ca_path.display())))?;
    for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
        let cert = cert.map_err(|e| tls(format!("mqtt.ca_file {}: {e}", ca_path.display())))?;
        roots
            .add(cert)
            .map_err(|e| tls(format!("mqtt.ca_file {}: {e}", ca_path.display())))?;
    }
    if roots.is_empty() {
        return Err(tls(format!(
            "mqtt.ca_file {}: no certificate in it",
            ca_path.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &m.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_path, key_path)) => {
            let f = std::fs::File::open(cert_path)
                .map_err(|e| tls(format!("mqtt.cert_file {}: {e}", cert_path.display())))?;
            let certs = rustls_pemfile::certs(&mut BufReader::new(f))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls(format!("mqtt.cert_file {}: {e}", cert_path.display())))?;
            if certs.is_empty() {
                return Err(tls(format!(
                    "mqtt.cert_file {}: no certificate in it",
                    cert_path.display()
                )));
            }
            let f = std::fs::File::open(key_path)
                .map_err(|e| tls(format!("mqtt.key_file {}: {e}", key_path.display())))?;
            let key = rustls_pemfile::private_key(&mut BufReader::new(f))
                .map_err(|e| tls(format!("mqtt.key_file {}: {e}", key_path.display())))?
                .ok_or_else(|| {
                    tls(format!(
                        "mqtt.key_file {}: no private key in it",
                        key_path.display()
                    ))
                })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| tls(format!("mqtt.cert_file/key_file: {e}")))?
        }
    };
    Ok(config)
}

/// Polls the event loop for as long as the client lives: forwards
/// connections, disconnections and incoming publishes, and waits a backoff
/// (exponential, full jitter) between failed attempts, each of which moves
/// to the next of `brokers` ([`Failover`]; `el` starts on the first).
/// Before each new connection the will is renumbered, and rumqttc's own
/// queue of unacked publishes is dropped: the disk buffer owns delivery and
/// resends (to whichever broker it is then connected to).
///
/// `want` says whether to be connected: after a connection ends (our own
/// DISCONNECT or a failure) while it is `false`, the loop does not
/// reconnect; it waits until it is `true` again (then at once, without
/// backoff) or its sender is gone (then it ends).
#[allow(clippy::too_many_arguments)]
pub async fn poll_loop(
    mut el: EventLoop,
    brokers: Vec<MqttOptions>,
    tx: mpsc::Sender<LinkEvent>,
    mut want: watch::Receiver<bool>,
    unit: UnitId,
    boot: BootId,
    settings: UplinkSettings,
    clock: Arc<dyn Clock>,
) {
    let mut backoff = Retry::new(settings.reconnect_min, settings.reconnect_max);
    let mut rng = StdRng::from_os_rng();
    let mut failover = Failover::new(brokers.len());
    let mut connection = 1u32;
    let mut up = false;
    let mut closing = false;
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                up = true;
                let broker = broker_name(&el.mqtt_options);
                debug!(
                    connection,
                    session_present = ack.session_present,
                    %broker,
                    "MQTT connected."
                );
                let ev = LinkEvent::Connected {
                    connection,
                    session_present: ack.session_present,
                    broker,
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let ev = LinkEvent::Message {
                    topic: p.topic,
                    payload: p.payload.to_vec(),
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                debug!("MQTT disconnect sent.");
                closing = true;
            }
            Ok(_) => {}
            Err(ConnectionError::RequestsDone) => return,
            Err(e) if closing => {
                // Our own clean disconnect: the broker closes the socket.
                debug!(error = %e, "MQTT connection closed after disconnect.");
                closing = false;
                el.pending.clear();
                if up {
                    up = false;
                    connection += 1;
                }
                if tx
                    .send(LinkEvent::Disconnected {
                        error: e.to_string(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                if !wait_wanted(&mut want).await {
                    return;
                }
                backoff.reset();
                el.mqtt_options
                    .set_last_will(will(&unit, boot, connection, clock.now_ms()));
            }
            Err(e) => {
                el.pending
                    .retain(|r| !matches!(r, rumqttc::Request::Publish(_)));
                if up {
                    up = false;
                    connection += 1;
                }
                let failed = broker_name(&el.mqtt_options);
                el.mqtt_options = brokers[failover.failed()].clone();
                el.mqtt_options
                    .set_last_will(will(&unit, boot, connection, clock.now_ms()));
                if !*want.borrow() {
                    debug!(error = %e, "MQTT connection ended while the link is held down.");
                    if tx
                        .send(LinkEvent::Disconnected {
                            error: e.to_string(),
                        })
                        .await
                        .is_err()
                        || !wait_wanted(&mut want).await
                    {
                        return;
                    }
                    backoff.reset();
                    el.mqtt_options
                        .set_last_will(will(&unit, boot, connection, clock.now_ms()));
                    continue;
                }
                let wait = backoff.next_full(rng.random::<f64>());
                warn!(error = %e, broker = %failed, next_broker = %broker_name(&el.mqtt_options), attempt = backoff.attempt(), retry_in_ms = wait.as_millis() as u64, "MQTT connection lost or refused.");
                if tx
                    .send(LinkEvent::Disconnected {
                        error: e.to_string(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Waits until the link is wanted; `false` when the uplink is gone.
async fn wait_wanted(want: &mut watch::Receiver<bool>) -> bool {
    want.wait_for(|w| *w).await.is_ok()
}
