//! The uplink's validated settings (`[mqtt]` and `[uplink]` in the agent's
//! TOML; `crate::config` parses and validates the raw tables into these).

use std::path::PathBuf;
use std::time::Duration;

/// `[mqtt]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSettings {
    /// Broker hosts and ports, in the order they are tried: `mqtt.url`
    /// (`mqtt://host:1883`, `mqtts://host:8883`) or `mqtt.urls` (the nodes
    /// of a cluster). Never empty.
    pub brokers: Vec<(String, u16)>,
    /// `mqtts://`: TLS with rustls.
    pub tls: bool,
    /// `mqtt.client_id`, default `muster-{agency}-{unit}`: stable, so the broker keeps the session.
    pub client_id: String,
    /// `mqtt.keepalive`, default 30 s (cellular-friendly; the will fires after 1.5 × keepalive).
    pub keepalive: Duration,
    /// `mqtt.connect_timeout`, default 15 s.
    pub connect_timeout: Duration,
    pub username: Option<String>,
    /// `mqtt.password` or the contents of `mqtt.password_file`.
    pub password: Option<String>,
    /// `mqtt.ca_file`: PEM CA bundle for the broker's certificate (default: the OS store).
    pub ca_file: Option<PathBuf>,
    /// `mqtt.cert_file` + `mqtt.key_file`: client certificate for mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// `[uplink]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSettings {
    /// `uplink.max_inflight`: publishes awaiting the collector's ack, default 16.
    pub max_inflight: u16,
    /// `uplink.batch_max_bytes`: replay batch size, default 64 KiB.
    pub batch_max_bytes: u32,
    /// `uplink.replay_bytes_per_sec`: cap for metered links, default none.
    pub replay_bytes_per_sec: Option<u64>,
    /// `uplink.ack_timeout`: resend a publish not acked by the collector within this, default 30 s.
    pub ack_timeout: Duration,
    /// `uplink.reconnect_min` / `uplink.reconnect_max`: backoff bounds (full jitter), default 1 s / 60 s.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// `uplink.heartbeat_interval`: how often an `AgentStatus` record is taken, default 30 s.
    pub heartbeat_interval: Duration,
}

impl Default for UplinkSettings {
    fn default() -> Self {
        UplinkSettings {
            max_inflight: 16,
            batch_max_bytes: 64 * 1024,
            replay_bytes_per_sec: None,
            ack_timeout: Duration::from_secs(30),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(30),
        }
    }
}

impl MqttSettings {
    /// The brokers as `host:port`, comma-separated (logs, `check-config`).
    pub fn broker_list(&self) -> String {
        self.brokers
            .iter()
            .map(|(h, p)| crate::config::format_host_port(h, *p))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
