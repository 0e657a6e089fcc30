//! The embedded MQTT broker (rumqttd) for a small site or the demo:
//! `muster-collector run --embedded-broker 127.0.0.1:1883`. Agents
//! connect to that address (MQTT 3.1.1); the collector uses MQTT 5 on the
//! next port.
//!
//! rumqttd has no graceful shutdown: [`EmbeddedBroker::start`] runs it on
//! its own threads, which live as long as the process. It keeps messages in
//! memory only (no persistence): a collector restart is covered by the
//! agents' end-to-end acks, but a site that wants a broker that survives
//! restarts, bridging or clustering runs Mosquitto (see
//! `collector/config/mosquitto.conf`) or a clustered broker instead.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(std::io::Error),
    #[error("the embedded broker did not listen on {0} within 10 s (is the port free?)")]
    NotListening(SocketAddr),
}

/// Handle to the running embedded broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    pub addr: SocketAddr,
}

/// rumqttd's defaults are all zeros (and die); these are filled for a
/// fleet of up to 10,000 terminals.
pub fn config(addr: SocketAddr) -> Config {
    let router = RouterConfig {
        max_connections: 20_010,
        max_outgoing_packet_count: 1_000,
        max_segment_size: 100 * 1024 * 1024,
        max_segment_count: 10,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: muster_proto::MAX_MESSAGE_BYTES * 4,
        max_inflight_count: 1_000,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str| ServerSettings {
        name: name.to_owned(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: connections.clone(),
    };
    // rumqttd needs one listener per protocol version. Agents speak MQTT
    // 3.1.1 on `addr`; the collector speaks MQTT 5 (shared subscriptions)
    // on the next port, [`EmbeddedBroker::v5_addr`].
    let mut v5_server = server("v5");
    v5_server.listen = v5_addr(addr);
    Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("1".to_owned(), server("v4"))])),
        v5: Some(HashMap::from([("1".to_owned(), v5_server)])),
        ..Config::default()
    }
}

/// Where the embedded broker speaks MQTT 5: the port after `addr`.
pub fn v5_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip(), addr.port().wrapping_add(1))
}

impl EmbeddedBroker {
    pub fn v5_addr(&self) -> SocketAddr {
        v5_addr(self.addr)
    }

    /// Starts the broker and waits until it accepts connections on `addr`.
    pub fn start(addr: SocketAddr) -> Result<EmbeddedBroker, BrokerError> {
        let cfg = config(addr);
        std::thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || {
                let mut broker = Broker::new(cfg);
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "The embedded broker stopped.");
                }
            })
            .map_err(BrokerError::Thread)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        for a in [addr, v5_addr(addr)] {
            while TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_err() {
                if Instant::now() > deadline {
                    return Err(BrokerError::NotListening(a));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        tracing::info!(%addr, v5 = %v5_addr(addr), "Embedded MQTT broker listening.");
        Ok(EmbeddedBroker { addr })
    }
}
