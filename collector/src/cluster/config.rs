//! `[cluster]`: cluster mode's settings, parsed raw and validated here.
//! Present: the collector runs in cluster mode (NATS JetStream for ingest,
//! PostgreSQL for state, partition leases); absent: single node, as before.
//!
//! Every error names its key (`cluster.<key>`), as the rest of the config.

use std::str::FromStr;
use std::time::Duration;

use muster_base::value::{MqttScheme, MqttUrl, duration_or};
use serde::Deserialize;

use crate::config::Secret;

use super::partition::{self, DEFAULT_PARTITIONS};
use super::stream::StreamSpec;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{key}: {message}")]
pub struct ClusterConfigError {
    pub key: String,
    pub message: String,
}

fn bad(key: &str, message: impl Into<String>) -> ClusterConfigError {
    ClusterConfigError {
        key: format!("cluster.{key}"),
        message: message.into(),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// This collector's id: unique in the cluster, stable across restarts.
    pub id: Option<String>,
    /// NATS servers (`nats://host:port`), any of the cluster's nodes.
    #[serde(default)]
    pub nats: Vec<String>,
    /// `postgres://user[:password]@host:port/db`.
    pub postgres: Option<String>,
    pub partitions: Option<u32>,
    pub stream: Option<String>,
    pub replicas: Option<usize>,
    pub stream_max_mib: Option<u64>,
    pub stream_max_age: Option<String>,
    pub max_ack_pending: Option<i64>,
    pub ack_wait: Option<String>,
    pub lease_ttl: Option<String>,
    pub lease_renew: Option<String>,
    pub pg_pool: Option<usize>,
    /// The NATS nodes' MQTT listeners (`mqtt://host:port`): retained status
    /// goes out over MQTT ([`super::status`]). Unset: status is live only.
    pub mqtt: Option<Vec<String>>,
    pub mqtt_username: Option<String>,
    pub mqtt_password: Option<String>,
    /// Status messages waiting for the MQTT connection, at most.
    pub mqtt_queue: Option<usize>,
}

/// At most this many MQTT listeners in `cluster.mqtt` (as the agent's
/// `mqtt.urls`: a cluster is 3 to 5 nodes).
pub const MAX_MQTT_LISTENERS: usize = 16;
/// `cluster.mqtt_queue` when unset: as the single node's MQTT request
/// channel.
pub const DEFAULT_MQTT_QUEUE: usize = 65_536;

/// `[cluster] mqtt`, validated: the connection retained status goes out on.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusMqttConfig {
    /// `(host, port)`, in the order listed: the first is tried first.
    pub brokers: Vec<(String, u16)>,
    /// Username and password (`cluster.mqtt_username`, `mqtt_password`).
    pub credentials: Option<(String, Secret)>,
    /// The MQTT client's request channel: status messages waiting at most.
    pub queue: usize,
}

/// Validated `[cluster]`.
#[derive(Clone, PartialEq)]
pub struct ClusterConfig {
    pub id: String,
    pub nats: Vec<String>,
    /// Holds a password: never printed (`Debug` shows the host only).
    pub postgres: String,
    pub stream: StreamSpec,
    pub lease_ttl: Duration,
    /// How often leases are renewed and the table re-planned.
    pub lease_renew: Duration,
    pub pg_pool: usize,
    /// `None`: status topics are live only (core NATS), not retained.
    pub mqtt: Option<StatusMqttConfig>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts = tokio_postgres::Config::from_str(&self.postgres)
            .map(|c| format!("{:?}", c.get_hosts()))
            .unwrap_or_default();
        f.debug_struct("ClusterConfig")
            .field("id", &self.id)
            .field("nats", &self.nats)
            .field("postgres", &hosts)
            .field("stream", &self.stream)
            .field("lease_ttl", &self.lease_ttl)
            .field("lease_renew", &self.lease_renew)
            .field("pg_pool", &self.pg_pool)
            .field("mqtt", &self.mqtt)
            .finish()
    }
}

impl ClusterConfig {
    /// How long before the database's expiry a holder stops acting.
    pub fn lease_margin(&self) -> Duration {
        self.lease_renew
    }
}

fn dur(key: &str, v: Option<&str>, default: Duration) -> Result<Duration, ClusterConfigError> {
    duration_or(key, v, default).map_err(|e| bad(key, e.to_string()))
}

impl RawCluster {
    pub fn validate(self) -> Result<ClusterConfig, ClusterConfigError> {
        let id = self.id.ok_or_else(|| {
            bad(
                "id",
                "is required: each collector's own name in the cluster, stable across restarts",
            )
        })?;
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(bad(
                "id",
                "must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.'",
            ));
        }
        if self.nats.is_empty() {
            return Err(bad(
                "nats",
                "is required: the NATS servers, e.g. [\"nats://10.0.0.1:4222\"]",
            ));
        }
        for (i, u) in self.nats.iter().enumerate() {
            let rest = u
                .strip_prefix("nats://")
                .or_else(|| u.strip_prefix("tls://"));
            let ok = rest.is_some_and(|r| {
                r.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
            });
            if !ok {
                return Err(bad(
                    &format!("nats[{i}]"),
                    format!("{u:?} is not nats://host:port"),
                ));
            }
        }
        let postgres = self.postgres.ok_or_else(|| {
            bad(
                "postgres",
                "is required: postgres://user:password@host:port/database",
            )
        })?;
        if !postgres.starts_with("postgres://") && !postgres.starts_with("postgresql://") {
            return Err(bad("postgres", "must be a postgres:// URL"));
        }
        let pc = tokio_postgres::Config::from_str(&postgres)
            .map_err(|e| bad("postgres", format!("is not a PostgreSQL URL: {e}")))?;
        if pc.get_hosts().is_empty() {
            return Err(bad("postgres", "names no host"));
        }
        let partitions = self.partitions.unwrap_or(DEFAULT_PARTITIONS);
        if !(1..=partition::MAX_PARTITIONS).contains(&partitions) {
            return Err(bad(
                "partitions",
                format!("must be 1 to {}", partition::MAX_PARTITIONS),
            ));
        }
        let name = self.stream.unwrap_or_else(|| "MUSTER".to_owned());
        if name.is_empty()
            || name.len() > 32
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(
                "stream",
                "must be 1 to 32 characters of A-Z, a-z, 0-9, '-', '_'",
            ));
        }
        let replicas = self.replicas.unwrap_or(3);
        if !(1..=5).contains(&replicas) {
            return Err(bad("replicas", "must be 1 to 5 (JetStream's limit)"));
        }
        let max_mib = self.stream_max_mib.unwrap_or(1024);
        if !(16..=1 << 20).contains(&max_mib) {
            return Err(bad("stream_max_mib", "must be 16 to 1048576"));
        }
        let max_age = dur(
            "cluster.stream_max_age",
            self.stream_max_age.as_deref(),
            Duration::from_secs(24 * 3600),
        )?;
        if max_age < Duration::from_secs(60) {
            return Err(bad("stream_max_age", "must be at least 1m"));
        }
        let max_ack_pending = self.max_ack_pending.unwrap_or(4096);
        if !(1..=1_000_000).contains(&max_ack_pending) {
            return Err(bad("max_ack_pending", "must be 1 to 1000000"));
        }
        let ack_wait = dur(
            "cluster.ack_wait",
            self.ack_wait.as_deref(),
            Duration::from_secs(30),
        )?;
        if ack_wait < Duration::from_secs(1) || ack_wait > Duration::from_secs(600) {
            return Err(bad("ack_wait", "must be 1s to 10m"));
        }
        let lease_ttl = dur(
            "cluster.lease_ttl",
            self.lease_ttl.as_deref(),
            Duration::from_secs(6),
        )?;
        if lease_ttl < Duration::from_secs(2) || lease_ttl > Duration::from_secs(300) {
            return Err(bad("lease_ttl", "must be 2s to 5m"));
        }
        let lease_renew = dur(
            "cluster.lease_renew",
            self.lease_renew.as_deref(),
            lease_ttl / 3,
        )?;
        if lease_renew.is_zero() || lease_renew * 2 >= lease_ttl {
            return Err(bad(
                "lease_renew",
                "must be more than 0 and less than half of cluster.lease_ttl (a lease must survive a missed renewal)",
            ));
        }
        let pg_pool = self.pg_pool.unwrap_or(4);
        if !(1..=64).contains(&pg_pool) {
            return Err(bad("pg_pool", "must be 1 to 64"));
        }
        let mqtt = status_mqtt(
            self.mqtt,
            (self.mqtt_username, self.mqtt_password),
            self.mqtt_queue,
        )?;
        Ok(ClusterConfig {
            id,
            nats: self.nats,
            postgres,
            stream: StreamSpec {
                name,
                partitions,
                replicas,
                max_bytes: (max_mib * 1024 * 1024) as i64,
                max_age,
                max_ack_pending,
                ack_wait,
            },
            lease_ttl,
            lease_renew,
            pg_pool,
            mqtt,
        })
    }
}

/// `cluster.mqtt` and its credentials and queue: URLs as everywhere else
/// ([`MqttUrl`]), listed once each; the username and password whole or
/// absent, as `[mqtt]`'s; credentials or a queue without `mqtt` refused.
fn status_mqtt(
    urls: Option<Vec<String>>,
    (username, password): (Option<String>, Option<String>),
    queue: Option<usize>,
) -> Result<Option<StatusMqttConfig>, ClusterConfigError> {
    let Some(urls) = urls else {
        for (key, set) in [
            ("mqtt_username", username.is_some()),
            ("mqtt_password", password.is_some()),
            ("mqtt_queue", queue.is_some()),
        ] {
            if set {
                return Err(bad(key, "is only used with cluster.mqtt"));
            }
        }
        return Ok(None);
    };
    if urls.is_empty() || urls.len() > MAX_MQTT_LISTENERS {
        return Err(bad(
            "mqtt",
            format!(
                "must list 1 to {MAX_MQTT_LISTENERS} MQTT listeners of the NATS nodes, e.g. [\"mqtt://10.0.0.1:1883\"] (or leave it out: status is then live only)"
            ),
        ));
    }
    let mut brokers: Vec<(String, u16)> = Vec::with_capacity(urls.len());
    for (i, url) in urls.iter().enumerate() {
        let key = format!("mqtt[{i}]");
        let u = MqttUrl::parse(url).map_err(|m| bad(&key, m))?;
        if u.scheme == MqttScheme::Tls {
            return Err(bad(
                &key,
                format!(
                    "{url:?}: mqtts:// is not supported here (the shipped NATS MQTT listener has no TLS); use mqtt:// on the cluster's network"
                ),
            ));
        }
        if brokers.iter().any(|(h, p)| *h == u.host && *p == u.port) {
            return Err(bad(&key, format!("{url:?} is listed twice")));
        }
        brokers.push((u.host, u.port));
    }
    let credentials = match (username, password) {
        (Some(u), Some(p)) => Some((u, Secret(p))),
        (None, None) => None,
        (Some(_), None) => {
            return Err(bad(
                "mqtt_password",
                "is required with cluster.mqtt_username",
            ));
        }
        (None, Some(_)) => {
            return Err(bad(
                "mqtt_username",
                "is required with cluster.mqtt_password",
            ));
        }
    };
    let queue = queue.unwrap_or(DEFAULT_MQTT_QUEUE);
    if !(16..=1 << 20).contains(&queue) {
        return Err(bad("mqtt_queue", "must be 16 to 1048576"));
    }
    Ok(Some(StatusMqttConfig {
        brokers,
        credentials,
        queue,
    }))
}

/// An agency name cluster mode can carry (`partition::check_id`): config
/// and enrolment refuse the others.
pub fn check_agency(name: &str) -> Result<(), String> {
    let probe = muster_proto::UnitId::new(name, "x").map_err(|e| e.to_string())?;
    partition::check_id(&probe).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(extra: &str) -> Result<ClusterConfig, ClusterConfigError> {
        let text = format!(
            "id = \"c1\"\nnats = [\"nats://127.0.0.1:4222\"]\npostgres = \"postgres://muster:pw@127.0.0.1:5432/muster\"\n{extra}"
        );
        toml::from_str::<RawCluster>(&text).unwrap().validate()
    }

    #[test]
    fn defaults_are_64_partitions_three_replicas_and_a_six_second_lease() {
        let c = raw("").unwrap();
        assert_eq!(c.stream.partitions, 64);
        assert_eq!(c.stream.replicas, 3);
        assert_eq!(c.stream.name, "MUSTER");
        assert_eq!(c.lease_ttl, Duration::from_secs(6));
        assert_eq!(c.lease_renew, Duration::from_secs(2));
        assert!(!format!("{c:?}").contains("pw"), "{c:?}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (extra, key) in [
            ("partitions = 0", "cluster.partitions"),
            ("partitions = 5000", "cluster.partitions"),
            ("replicas = 7", "cluster.replicas"),
            (
                "lease_ttl = \"10s\"\nlease_renew = \"5s\"",
                "cluster.lease_renew",
            ),
            ("lease_ttl = \"1s\"", "cluster.lease_ttl"),
            ("stream = \"a.b\"", "cluster.stream"),
            ("ack_wait = \"0s\"", "cluster.ack_wait"),
            ("pg_pool = 0", "cluster.pg_pool"),
            ("mqtt = []", "cluster.mqtt"),
            ("mqtt = [\"nats://h:1883\"]", "cluster.mqtt[0]"),
            (
                "mqtt = [\"mqtt://h:1883\", \"mqtts://h:8883\"]",
                "cluster.mqtt[1]",
            ),
            (
                "mqtt = [\"mqtt://h:1883\", \"mqtt://h\"]",
                "cluster.mqtt[1]",
            ),
            ("mqtt_username = \"u\"", "cluster.mqtt_username"),
            ("mqtt_queue = 100", "cluster.mqtt_queue"),
            (
                "mqtt = [\"mqtt://h\"]\nmqtt_username = \"u\"",
                "cluster.mqtt_password",
            ),
            (
                "mqtt = [\"mqtt://h\"]\nmqtt_password = \"p\"",
                "cluster.mqtt_username",
            ),
            (
                "mqtt = [\"mqtt://h\"]\nmqtt_queue = 8",
                "cluster.mqtt_queue",
            ),
        ] {
            assert_eq!(raw(extra).unwrap_err().key, key, "{extra}");
        }
        let e = toml::from_str::<RawCluster>(
            "id = \"c1\"\nnats = [\"127.0.0.1:4222\"]\npostgres = \"postgres://h/db\"",
        )
        .unwrap()
        .validate()
        .unwrap_err();
        assert_eq!(e.key, "cluster.nats[0]");
        let e = toml::from_str::<RawCluster>("id = \"c 1\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "cluster.id");
        let e = toml::from_str::<RawCluster>(
            "id = \"c1\"\nnats = [\"nats://h:1\"]\npostgres = \"mysql://h/db\"",
        )
        .unwrap()
        .validate()
        .unwrap_err();
        assert_eq!(e.key, "cluster.postgres");
    }

    #[test]
    fn status_over_mqtt_is_optional_and_its_password_never_printed() {
        assert_eq!(raw("").unwrap().mqtt, None);
        let c = raw(
            "mqtt = [\"mqtt://10.0.0.1:1883\", \"mqtt://[::1]\"]\nmqtt_username = \"collector\"\nmqtt_password = \"s3cret-pw\"",
        )
        .unwrap();
        let m = c.mqtt.as_ref().unwrap();
        assert_eq!(
            m.brokers,
            [("10.0.0.1".to_owned(), 1883), ("::1".to_owned(), 1883)]
        );
        assert_eq!(m.queue, DEFAULT_MQTT_QUEUE);
        assert_eq!(m.credentials.as_ref().unwrap().0, "collector");
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
    }

    #[test]
    fn agencies_nats_cannot_carry_are_refused() {
        assert!(check_agency("metro-fire").is_ok());
        assert!(check_agency("metro.fire").is_err());
        assert!(check_agency(">").is_err());
    }
}
