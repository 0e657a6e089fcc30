//! The embedded MQTT broker for a small site or the demo:
//! `muster-collector run --embedded-broker 127.0.0.1:1883`.
//!
//! Two parts in this process:
//! * **the gate** (`gate.rs`) owns the public address and speaks MQTT
//!   3.1.1 only. It authenticates every client (`auth.rs`: units by
//!   [`auth::UnitCredentials`], agency readers by their feed token),
//!   enforces the ACL (`acl.rs`, pure) and the limits of `[broker]`, and
//!   forwards what it allows;
//! * **rumqttd** listens only on loopback ports chosen at start (MQTT
//!   3.1.1 for the gate, MQTT 5 for the collector's own client), and
//!   accepts only a random internal credential that never leaves this
//!   process. There is no public MQTT 5 port.
//!
//! Packet sizes, so that nothing the gate forwards can be refused further
//! on (rumqttd and rumqttc compare the *remaining length*, the gate the
//! whole packet): the gate forwards packets of at most
//! `broker.max_packet_bytes` ≤ [`MAX_BROKER_PACKET_BYTES`] (512 KiB), so
//! their remaining length is at most that minus 2. rumqttd accepts a
//! remaining length up to [`INTERNAL_PACKET_BYTES`] (516 KiB). Re-encoded
//! as MQTT 5 for the collector, a publish grows by its property length
//! (1 byte, no properties) and perhaps one more byte of remaining length:
//! at most 512 KiB + 2 bytes, well under the collector client's
//! `ingest::mqtt::MAX_PACKET_BYTES` (1 MiB). (Issue 11: rumqttd's limit
//! was rumqttc's, so a publish at exactly that size reached the collector
//! one byte over it, and the collector reconnect-looped.)
//!
//! The internal ports are found by binding port 0 and releasing it just
//! before rumqttd binds it (rumqttd cannot report the port it bound); a
//! local process racing for that port in those microseconds would be sent
//! the internal credential. Accepted: it needs code running on this host
//! at start time.
//!
//! rumqttd has no graceful shutdown: its threads live as long as the
//! process. The gate stops on [`EmbeddedBroker::stop`]. rumqttd keeps
//! messages in memory only (no persistence): a collector restart is
//! covered by the agents' end-to-end acks, but a site that wants a broker
//! that survives restarts runs Mosquitto (`packaging/mosquitto/`).

pub mod acl;
pub mod auth;
pub mod gate;
pub mod log;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerConfig, MAX_BROKER_PACKET_BYTES, MqttConfig, MqttScheme, Secret};
use crate::metrics::broker::BrokerMetrics;
use auth::Authenticator;

/// Largest remaining length rumqttd accepts on its internal listeners:
/// strictly more than anything the gate forwards (see the module doc).
pub const INTERNAL_PACKET_BYTES: usize = MAX_BROKER_PACKET_BYTES + 4096;

const _: () = assert!(
    INTERNAL_PACKET_BYTES + 16 < crate::ingest::mqtt::MAX_PACKET_BYTES as usize,
    "the collector's client must take everything rumqttd forwards"
);

/// User name of the internal credential.
pub const INTERNAL_USER: &str = "muster-internal";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(std::io::Error),
    #[error("the embedded broker cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("the embedded broker did not listen on {0} within 10 s")]
    NotListening(SocketAddr),
}

/// Handle to the running embedded broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    /// The public MQTT 3.1.1 address (the gate).
    pub addr: SocketAddr,
    /// rumqttd's internal MQTT 3.1.1 listener (the gate's upstream).
    v4: SocketAddr,
    /// rumqttd's internal MQTT 5 listener, for the collector's own client.
    v5: SocketAddr,
    password: Secret,
    pub metrics: Arc<BrokerMetrics>,
    stop: CancellationToken,
    gate: Option<JoinHandle<()>>,
}

/// rumqttd's defaults are all zeros (and die); these are filled for the
/// gate's connection cap plus the collector.
fn rumqttd_config(
    v4: SocketAddr,
    v5: SocketAddr,
    password: &str,
    max_conn: usize,
    collector_window: u16,
) -> Config {
    let router = RouterConfig {
        max_connections: max_conn + 16,
        max_outgoing_packet_count: 1_000,
        max_segment_size: 100 * 1024 * 1024,
        max_segment_count: 10,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: INTERNAL_PACKET_BYTES,
        max_inflight_count: 1_000,
        auth: Some(HashMap::from([(
            INTERNAL_USER.to_owned(),
            password.to_owned(),
        )])),
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen: SocketAddr, connections: ConnectionSettings| ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    // The v5 listener serves only the collector's own client: its in-flight
    // window is the collector's receive maximum, which rumqttd does not read
    // from the CONNECT itself (ingest::flow).
    let collector = ConnectionSettings {
        max_inflight_count: usize::from(collector_window),
        ..connections.clone()
    };
    Config {
        id: 0,
        router,
        v4: Some(HashMap::from([(
            "1".to_owned(),
            server("v4", v4, connections),
        )])),
        v5: Some(HashMap::from([(
            "1".to_owned(),
            server("v5", v5, collector),
        )])),
        ..Config::default()
    }
}

fn ephemeral_loopback_port() -> Result<SocketAddr, BrokerError> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    std::net::TcpListener::bind(any)
        .and_then(|l| l.local_addr())
        .map_err(|source| BrokerError::Bind {
            addr: any,
            error: source,
        })
}

/// The soft limit on open files, from /proc (None where there is no /proc).
fn open_files_limit() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Descriptors one client of the embedded broker costs this process: its
/// socket, the gate's socket to rumqttd, rumqttd's end of it.
pub const FDS_PER_CLIENT: usize = 3;

/// The cap is lowered so that the process never runs out of descriptors
/// (rumqttd's own accept loop spins on EMFILE without a pause).
fn effective_max_connections(configured: usize, fd_limit: Option<usize>) -> usize {
    match fd_limit {
        Some(l) => configured
            .min(l.saturating_sub(256) / FDS_PER_CLIENT)
            .max(1),
        None => configured,
    }
}

impl EmbeddedBroker {
    /// Starts rumqttd and the gate on `addr`; returns once both listen.
    /// Must run inside a tokio runtime (the gate's tasks).
    pub async fn start(
        addr: SocketAddr,
        cfg: &BrokerConfig,
        auth: Authenticator,
        log_interval: Duration,
    ) -> Result<EmbeddedBroker, BrokerError> {
        let public = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| BrokerError::Bind {
                addr,
                error: source,
            })?;
        let public_addr = public.local_addr().map_err(|source| BrokerError::Bind {
            addr,
            error: source,
        })?;
        let max_connections = effective_max_connections(cfg.max_connections, open_files_limit());
        if max_connections < cfg.max_connections {
            tracing::warn!(
                configured = cfg.max_connections,
                effective = max_connections,
                "broker.max_connections lowered to fit the open-files limit (3 per client)."
            );
        }
        let password = auth::generate_secret();
        let v4 = ephemeral_loopback_port()?;
        let v5 = ephemeral_loopback_port()?;
        let rcfg = rumqttd_config(v4, v5, &password, max_connections, cfg.collector_window);
        std::thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || {
                let mut broker = Broker::new(rcfg);
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "The embedded broker stopped.");
                }
            })
            .map_err(BrokerError::Thread)?;
        let login = (INTERNAL_USER.to_owned(), password.clone());
        tokio::task::spawn_blocking(move || wait_listening(&[(v4, 4), (v5, 5)], &login))
            .await
            .map_err(|e| BrokerError::Thread(std::io::Error::other(e.to_string())))??;

        let metrics = Arc::new(BrokerMetrics::default());
        let settings = gate::GateSettings {
            max_packet_bytes: cfg.max_packet_bytes,
            max_connections,
            connect_timeout: cfg.connect_timeout,
            upstream: v4,
            internal_login: (INTERNAL_USER.to_owned(), password.clone()),
            upstream_max_packet: INTERNAL_PACKET_BYTES + 8,
            log_interval,
        };
        let g = Arc::new(gate::Gate::new(settings, auth, Arc::clone(&metrics)));
        let stop = CancellationToken::new();
        let task = tokio::spawn(gate::run(public, g, stop.clone()));
        tracing::info!(addr = %public_addr, "Embedded MQTT broker listening (MQTT 3.1.1, authenticated).");
        Ok(EmbeddedBroker {
            addr: public_addr,
            v4,
            v5,
            password: Secret(password),
            metrics,
            stop,
            gate: Some(task),
        })
    }

    /// Points the collector's MQTT settings at rumqttd's internal MQTT 5
    /// listener, with the internal credential and client ids (the
    /// subscriber's and the publisher's) no gate client can take.
    pub fn configure_collector(&self, m: &mut MqttConfig) {
        m.scheme = MqttScheme::Tcp;
        m.host = self.v5.ip().to_string();
        m.port = self.v5.port();
        m.ca_file = None;
        m.credentials = Some((INTERNAL_USER.to_owned(), self.password.clone()));
        // Acks and status on a second connection (`Role::Publisher`); its
        // id is in the same `c:` namespace, which no gate client can take.
        m.publisher = Some(crate::config::PublisherConfig {
            client_id: acl::collector_client_id(&format!("{}/publisher", m.client_id)),
            credentials: m.credentials.clone(),
            client_cert: None,
        });
        m.client_id = acl::collector_client_id(&m.client_id);
    }

    /// rumqttd's internal MQTT 3.1.1 listener and its credential (user,
    /// password): the path without the gate, for the gate benchmark
    /// (`benches/gate.rs`). Never handed to anything outside this process.
    pub fn internal_v4_login(&self) -> (SocketAddr, String, String) {
        (self.v4, INTERNAL_USER.to_owned(), self.password.0.clone())
    }

    /// Stops the gate: no new connections, every client connection closed.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.gate.take() {
            let _ = t.await;
        }
    }
}

/// Waits until rumqttd accepts an MQTT session on each internal listener
/// (`(address, protocol level)`: 4 for MQTT 3.1.1, 5 for MQTT 5). Each
/// check is a whole handshake with the internal credential (CONNECT,
/// CONNACK, DISCONNECT): a bare TCP connect that closes without a CONNECT
/// is, to rumqttd, a client error, and it logs one per check.
// Real time: a blocking readiness check of rumqttd's own listener threads.
#[allow(clippy::disallowed_methods)]
fn wait_listening(addrs: &[(SocketAddr, u8)], login: &(String, String)) -> Result<(), BrokerError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for &(a, level) in addrs {
        while !handshake(a, level, login) {
            if Instant::now() > deadline {
                return Err(BrokerError::NotListening(a));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// One MQTT session on `a`: true once rumqttd accepted the CONNECT.
fn handshake(a: SocketAddr, level: u8, (user, pass): &(String, String)) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect_timeout(&a, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    // One client id per listener: rumqttd has one router for both, and a
    // second session with the same id drops the first (with an ERROR).
    let id = format!("muster-ready-v{level}");
    if s.write_all(&connect_packet(level, &id, user, pass))
        .is_err()
    {
        return false;
    }
    // CONNACK: 0x20, remaining length, flags, return/reason code 0.
    let mut ack = [0u8; 4];
    let ok = s.read_exact(&mut ack).is_ok() && ack[0] == 0x20 && ack[3] == 0;
    // DISCONNECT (normal, in both versions); wait for the server to close.
    let _ = s.write_all(&[0xe0, 0x00]);
    let _ = s.read(&mut ack);
    ok
}

/// A CONNECT packet (clean session, user name and password, no will) for
/// protocol level 4 (MQTT 3.1.1) or 5 (MQTT 5, no properties).
fn connect_packet(level: u8, client_id: &str, user: &str, pass: &str) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut body = Vec::with_capacity(64 + user.len() + pass.len());
    string(&mut body, "MQTT");
    body.push(level);
    body.push(0b1100_0010); // user name, password, clean session
    body.extend_from_slice(&30u16.to_be_bytes()); // keep alive, s
    if level >= 5 {
        body.push(0); // no properties
    }
    string(&mut body, client_id);
    string(&mut body, user);
    string(&mut body, pass);
    let mut out = vec![0x10];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_cap_fits_the_fd_limit() {
        assert_eq!(effective_max_connections(20_000, None), 20_000);
        assert_eq!(effective_max_connections(20_000, Some(1024)), 256);
        assert_eq!(effective_max_connections(100, Some(1_048_576)), 100);
        assert_eq!(effective_max_connections(100, Some(10)), 1);
    }

    #[test]
    fn readiness_connect_packets_decode() {
        use rumqttc::mqttbytes::Protocol;
        let long = "p".repeat(200); // a two-byte remaining length
        for pass in ["secret", long.as_str()] {
            let b = connect_packet(4, "muster-ready", INTERNAL_USER, pass);
            let mut buf = bytes::BytesMut::from(&b[..]);
            match rumqttc::mqttbytes::v4::Packet::read(&mut buf, 4096).unwrap() {
                rumqttc::mqttbytes::v4::Packet::Connect(c) => {
                    assert_eq!(c.protocol, Protocol::V4);
                    assert_eq!(c.client_id, "muster-ready");
                    let l = c.login.unwrap();
                    assert_eq!(
                        (l.username.as_str(), l.password.as_str()),
                        (INTERNAL_USER, pass)
                    );
                }
                p => panic!("{p:?}"),
            }
            let b = connect_packet(5, "muster-ready", INTERNAL_USER, pass);
            let mut buf = bytes::BytesMut::from(&b[..]);
            match rumqttc::v5::mqttbytes::v5::Packet::read(&mut buf, Some(4096)).unwrap() {
                rumqttc::v5::mqttbytes::v5::Packet::Connect(c, _, login) => {
                    assert_eq!(c.client_id, "muster-ready");
                    assert_eq!(login.unwrap().password, pass);
                }
                p => panic!("{p:?}"),
            }
        }
    }
}
