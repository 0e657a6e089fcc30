//! Configuration: raw TOML (serde, `deny_unknown_fields`) validated into a
//! typed [`Config`]. Every validation error names the key it is about, e.g.
//! `mqtt.url: "htp://x" is not an mqtt:// or mqtts:// URL`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use muster_base::value::{BadValue, MqttUrl, duration_or};
use serde::Deserialize;

use crate::rules::{RawRules, RulesConfig};

/// Shortest accepted bearer token: a guessable token is no access control.
pub const MIN_TOKEN_LEN: usize = 16;

/// `http.max_connections` when unset. Sized for a centre's supervisors and
/// dashboards with room for an idle-connection flood to be refused by the
/// cap rather than by the file limit (the packaged unit's `LimitNOFILE`
/// is computed from it).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Toml(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("{0}")]
    Rules(String),
}

impl From<BadValue> for ConfigError {
    fn from(b: BadValue) -> Self {
        invalid(b.key, b.message)
    }
}

/// `{section}.username`/`password` and `cert_file`/`key_file`: each pair
/// whole or absent; certificates only over TLS, and readable.
#[allow(clippy::type_complexity)]
fn login(
    section: &str,
    scheme: MqttScheme,
    (username, password): (Option<String>, Option<String>),
    (cert_file, key_file): (Option<PathBuf>, Option<PathBuf>),
) -> Result<(Option<(String, Secret)>, Option<(PathBuf, PathBuf)>), ConfigError> {
    let key = |k: &str| format!("{section}.{k}");
    let credentials = match (username, password) {
        (Some(u), Some(p)) => Some((u, Secret(p))),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                key("password"),
                format!("is required with {}", key("username")),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                key("username"),
                format!("is required with {}", key("password")),
            ));
        }
    };
    let client_cert = match (cert_file, key_file) {
        (Some(c), Some(k)) => {
            if scheme != MqttScheme::Tls {
                return Err(invalid(
                    key("cert_file"),
                    "is only used with an mqtts:// url",
                ));
            }
            for (name, f) in [(key("cert_file"), &c), (key("key_file"), &k)] {
                if !f.is_file() {
                    return Err(invalid(
                        name,
                        format!("{} is not a readable file", f.display()),
                    ));
                }
            }
            Some((c, k))
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                key("key_file"),
                format!("is required with {}", key("cert_file")),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                key("cert_file"),
                format!("is required with {}", key("key_file")),
            ));
        }
    };
    Ok((credentials, client_cert))
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------- raw form

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub admin_token: Option<String>,
    #[serde(default)]
    pub mqtt: RawMqtt,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub ingest: RawIngest,
    #[serde(default)]
    pub agency: Vec<RawAgency>,
    #[serde(default)]
    pub rules: RawRules,
    #[serde(default)]
    pub broker: RawBroker,
    #[serde(default)]
    pub enroll: RawEnroll,
    #[serde(default)]
    pub signing: RawSigning,
    #[serde(default)]
    pub gates: RawGates,
    #[serde(default)]
    pub remote_config: RawRemoteConfig,
    #[serde(default)]
    pub rollouts: RawRollouts,
    /// `[cluster]`: cluster mode (`crate::cluster::config`).
    pub cluster: Option<crate::cluster::config::RawCluster>,
    #[serde(default)]
    pub runbooks: RawRunbooks,
    #[serde(default)]
    pub actions: RawActions,
}

/// `[actions]`: action requests to units (`crate::actions`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawActions {
    pub ttl: Option<String>,
    pub max_pending: Option<usize>,
    pub per_agency_per_min: Option<u32>,
    pub audit_max_bytes: Option<String>,
}

/// `[actions]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionsConfig {
    /// How long a request is valid when the caller does not say (default
    /// 60s; 1s to `muster_proto::action::MAX_ACTION_TTL_MS`).
    pub ttl: Duration,
    /// Requests issued and not yet answered by their unit, collector-wide,
    /// at most (default 1024); also the most request messages the
    /// publisher's queue holds.
    pub max_pending: usize,
    /// Requests issued per agency within any minute, at most (default 60).
    pub per_agency_per_min: u32,
    /// The audit file (`<store.path>/actions/audit.jsonl`) is rotated past
    /// this many bytes, keeping one previous file (default 64 MiB).
    pub audit_max_bytes: u64,
}

impl Default for ActionsConfig {
    fn default() -> Self {
        ActionsConfig {
            ttl: Duration::from_secs(60),
            max_pending: 1024,
            per_agency_per_min: 60,
            audit_max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Smallest `actions.audit_max_bytes`: a few entries with full output.
pub const MIN_AUDIT_BYTES: u64 = 4096;

impl RawActions {
    fn validate(self) -> Result<ActionsConfig, ConfigError> {
        let d = ActionsConfig::default();
        let max_ttl = Duration::from_millis(muster_proto::action::MAX_ACTION_TTL_MS);
        let ttl = duration_or("actions.ttl", self.ttl.as_deref(), d.ttl)?;
        if ttl < Duration::from_secs(1) || ttl > max_ttl {
            return Err(invalid(
                "actions.ttl",
                format!(
                    "must be 1s to {} (the longest an agent accepts)",
                    humantime::format_duration(max_ttl)
                ),
            ));
        }
        let max_pending = self.max_pending.unwrap_or(d.max_pending);
        if !(1..=100_000).contains(&max_pending) {
            return Err(invalid("actions.max_pending", "must be 1 to 100000"));
        }
        let per_agency_per_min = self.per_agency_per_min.unwrap_or(d.per_agency_per_min);
        if !(1..=10_000).contains(&per_agency_per_min) {
            return Err(invalid("actions.per_agency_per_min", "must be 1 to 10000"));
        }
        let audit_max_bytes = match self.audit_max_bytes.as_deref() {
            None => d.audit_max_bytes,
            Some(s) => muster_base::value::bytes("actions.audit_max_bytes", s)?,
        };
        if !(MIN_AUDIT_BYTES..=1 << 40).contains(&audit_max_bytes) {
            return Err(invalid(
                "actions.audit_max_bytes",
                "must be 4KiB to 1TiB (two files of it are kept)",
            ));
        }
        Ok(ActionsConfig {
            ttl,
            max_pending,
            per_agency_per_min,
            audit_max_bytes,
        })
    }
}

/// `[runbooks]`: the site's runbooks (`crate::runbooks`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRunbooks {
    /// A directory of `<rule>.md` files, read at start: each adds a
    /// runbook or overrides the built-in one of that rule.
    pub dir: Option<PathBuf>,
}

/// `[gates]`: the deploy gate (`crate::gate`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawGates {
    pub max: Option<usize>,
    pub max_results: Option<u64>,
}

/// `[remote_config]`: signed config documents for agents (`crate::remote`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRemoteConfig {
    pub max_docs: Option<usize>,
}

/// `[rollouts]`: staged rollouts (`crate::rollout`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRollouts {
    pub max: Option<usize>,
    pub tick: Option<String>,
}

/// `[rollouts]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutsConfig {
    /// Rollouts kept at most, running and finished (default 64): a full
    /// book forgets its oldest finished one.
    pub max: usize,
    /// How often running rollouts take a step (default 1s, 100ms to 1m).
    pub tick: Duration,
}

/// `[gates]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatesConfig {
    /// Gates defined at most (default 256).
    pub max: usize,
    /// Probe results a verdict reads per side at most (default 500000;
    /// about 50 bytes each while judged).
    pub max_results: u64,
}

impl Default for GatesConfig {
    fn default() -> Self {
        GatesConfig {
            max: 256,
            max_results: 500_000,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEnroll {
    pub max_pending: Option<usize>,
}

/// `[signing]`: see `crate::signing`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSigning {
    pub key_file: Option<PathBuf>,
    pub next_key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    pub url: Option<String>,
    pub client_id: Option<String>,
    pub shared_group: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub keep_alive: Option<String>,
    pub session_expiry: Option<String>,
    pub publish_status: Option<bool>,
    pub publisher: Option<RawPublisher>,
}

/// `[mqtt.publisher]`: a second connection for acks and status.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPublisher {
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<String>,
    pub sse_keep_alive: Option<String>,
    pub metrics_require_token: Option<bool>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub sse_buffer: Option<usize>,
    pub sse_send_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub path: Option<PathBuf>,
    pub sample_retention: Option<String>,
    pub minute_retention: Option<String>,
    pub hour_retention: Option<String>,
    pub event_retention: Option<String>,
    pub prune_interval: Option<String>,
    pub cache_mib: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawIngest {
    pub commit_interval: Option<String>,
    pub commit_max_records: Option<usize>,
    pub queue: Option<usize>,
    pub receive_maximum: Option<u16>,
    pub tick_interval: Option<String>,
    pub overload_wait: Option<String>,
    pub refusal_log_interval: Option<String>,
    pub max_units: Option<usize>,
}

/// `[broker]`: limits of the embedded broker's public listener (the gate).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBroker {
    pub max_packet_bytes: Option<usize>,
    pub max_connections: Option<usize>,
    pub connect_timeout: Option<String>,
    /// `[[broker.unit]]`: units that may connect, until an enrolment
    /// registry provides them.
    #[serde(default)]
    pub unit: Vec<RawBrokerUnit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBrokerUnit {
    /// `{agency}/{unit}`, the MQTT user name.
    pub name: String,
    /// Hex SHA-256 of the unit's MQTT password.
    pub password_sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgency {
    pub name: String,
    /// The viewer's token: reads the agency's units.
    pub token: String,
    /// The operator's token (issue 17): reads what the viewer reads, and
    /// may request actions from the agency's units.
    pub operator_token: Option<String>,
    /// The token this agency's terminals enrol with (`POST /api/v1/enroll`).
    pub enroll_token: Option<String>,
    /// `"auto"` or `"approve"` (default).
    pub enroll: Option<String>,
    /// `[agency.webhook]`: notifications of this agency's changes.
    pub webhook: Option<crate::notify::RawWebhook>,
}

// ------------------------------------------------------------- typed form

/// A secret that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

pub struct Config {
    pub admin_token: Option<String>,
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub ingest: IngestConfig,
    /// Agency name -> its viewer's bearer token.
    pub agencies: BTreeMap<String, String>,
    /// Agency name -> its operator's bearer token, for agencies that have
    /// one (`operator_token`).
    pub operators: BTreeMap<String, String>,
    /// `[actions]`.
    pub actions: ActionsConfig,
    /// Agency name -> its webhook, for agencies that have one.
    pub webhooks: BTreeMap<String, crate::notify::WebhookConfig>,
    pub rules: RulesConfig,
    pub broker: BrokerConfig,
    /// Enrolment by claim: `[enroll]` and each agency's `enroll_token`/`enroll`.
    pub enroll: EnrollConfig,
    pub signing: crate::signing::SigningConfig,
    pub gates: GatesConfig,
    /// `remote_config.max_docs`: config documents (agencies' and units')
    /// held at most, default 1000.
    pub max_config_docs: usize,
    pub rollouts: RolloutsConfig,
    /// `[cluster]`: several collectors on NATS JetStream and PostgreSQL;
    /// `None`: single node (the embedded store and an MQTT broker).
    pub cluster: Option<crate::cluster::config::ClusterConfig>,
    /// The runbooks served at `/runbooks/{rule}`: the built-in ones and
    /// `[runbooks] dir`'s, read when the config was loaded.
    pub runbooks: std::sync::Arc<crate::runbooks::Runbooks>,
}

/// How an agency's claims become credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollMode {
    /// A claim is active at once: whoever holds the enrol token adds units.
    Auto,
    /// A claim waits as pending until an admin approves it (the default: an
    /// enrol token is baked into installers and spreads; approval keeps a
    /// leaked one from adding units that speak for the agency unseen).
    Approve,
}

/// One agency's enrolment settings.
#[derive(Clone, PartialEq, Eq)]
pub struct AgencyEnroll {
    pub token: Secret,
    pub mode: EnrollMode,
}

impl std::fmt::Debug for AgencyEnroll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgencyEnroll")
            .field("token", &self.token)
            .field("mode", &self.mode)
            .finish()
    }
}

/// `[enroll]` plus the agencies that enrol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollConfig {
    /// `enroll.max_pending`: pending claims kept at most, all agencies
    /// together (default 10000), so a leaked enrol token cannot fill the disk.
    pub max_pending: usize,
    /// Agency name -> its enrolment settings, for agencies with an `enroll_token`.
    pub agencies: BTreeMap<String, AgencyEnroll>,
    /// Cluster mode: claims for unit ids NATS 2.9 cannot carry are refused
    /// (`cluster::partition::check_id`).
    pub nats_ids: bool,
}

impl Default for EnrollConfig {
    fn default() -> Self {
        EnrollConfig {
            max_pending: 10_000,
            agencies: BTreeMap::new(),
            nats_ids: false,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are secrets: never in a log line.
        f.debug_struct("Config")
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("mqtt", &self.mqtt)
            .field("http", &self.http)
            .field("store", &self.store)
            .field("ingest", &self.ingest)
            .field("signing", &self.signing)
            .field("broker", &self.broker)
            .field("agencies", &self.agencies.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

pub use muster_base::value::MqttScheme;

#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub scheme: MqttScheme,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub shared_group: Option<String>,
    /// Username and password.
    pub credentials: Option<(String, Secret)>,
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM) for brokers that require one
    /// (the shipped Mosquitto config).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub keep_alive: Duration,
    /// How long the broker keeps our session (and queues telemetry for us)
    /// while we are disconnected.
    pub session_expiry: Duration,
    pub publish_status: bool,
    /// `[mqtt.publisher]`: acks and status go out on a second connection
    /// (on the embedded broker, always). One connection's event loop
    /// serves one request per turn against a batch of packets read, which
    /// at ~100,000 units left acks queued for seconds (fleet bench).
    pub publisher: Option<PublisherConfig>,
}

/// The publisher connection: its own client id, and the main connection's
/// credentials unless it has its own (the shipped Mosquitto config makes a
/// certificate's CN the client id, so there it needs its own certificate).
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub client_id: String,
    pub credentials: Option<(String, Secret)>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl MqttConfig {
    /// The settings of the connection acks and status go out on: the
    /// publisher's, or this one's when there is no separate publisher.
    pub fn publisher_connection(&self) -> Option<MqttConfig> {
        let p = self.publisher.as_ref()?;
        Some(MqttConfig {
            client_id: p.client_id.clone(),
            credentials: p.credentials.clone(),
            client_cert: p.client_cert.clone(),
            shared_group: None,
            publisher: None,
            ..self.clone()
        })
    }
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub sse_keep_alive: Duration,
    pub metrics_require_token: bool,
    /// A connection that has not sent a complete request head this long
    /// after it was accepted, or after the first byte of its next request,
    /// is closed (slowloris).
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after
    /// this long.
    pub idle_timeout: Duration,
    /// Open connections at most; one more is accepted and closed at once.
    pub max_connections: usize,
    /// Events queued per stream client...
    pub sse_buffer: usize,
    /// ...and how long a full queue may stay full before the client (which
    /// stopped reading) is disconnected. A burst larger than the queue does
    /// not drop a client that reads.
    pub sse_send_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Raw records (`store.sample_retention`).
    pub sample_retention: Duration,
    /// Minute rollups (`store::rollup`).
    pub minute_retention: Duration,
    /// Hour rollups.
    pub hour_retention: Duration,
    pub event_retention: Duration,
    pub prune_interval: Duration,
    pub cache_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Group commit: at most this long between a record's arrival and the
    /// flush that makes it durable (and acked).
    pub commit_interval: Duration,
    /// ...or sooner, once this many records are waiting.
    pub commit_max_records: usize,
    /// Messages buffered between the MQTT event loop and the ingest worker.
    pub queue: usize,
    /// MQTT v5 receive maximum: QoS 1 messages the broker may have in flight
    /// to us, and the most the ingest worker holds unanswered (`ingest::flow`).
    pub receive_maximum: u16,
    /// How often the rules engine's `tick` runs (staleness, incidents).
    pub tick_interval: Duration,
    /// Overloaded while the oldest message not yet durable has waited this
    /// long (`ingest::flow::Overload`).
    pub overload_wait: Duration,
    /// At most one log line per refusal reason per this interval.
    pub refusal_log_interval: Duration,
    /// Units the collector keeps state for at most; a message from a unit
    /// beyond them is refused (`unit_limit`), not stored and not acked.
    pub max_units: usize,
}

/// Default `ingest.max_units`: twice the 100,000 units measured on one
/// collector (fleet bench), so a fleet meets it only by error or attack.
pub const DEFAULT_MAX_UNITS: usize = 200_000;

/// Limits of the embedded broker's public listener (`[broker]`); unused
/// when the collector talks to an external broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Largest MQTT packet a client may send, fixed header included (MQTT
    /// 5's "maximum packet size"). Default 256 KiB + 4 KiB, as the shipped
    /// Mosquitto config.
    pub max_packet_bytes: usize,
    /// Client connections open at once; more are closed on accept.
    pub max_connections: usize,
    /// A client must send CONNECT within this long after accept.
    pub connect_timeout: Duration,
    /// Messages the broker may have in flight to the collector's own
    /// client: `ingest.receive_maximum` (rumqttd does not read the client's
    /// receive maximum, so it is set here).
    pub collector_window: u16,
    /// Units allowed to connect: identity and SHA-256 of the password.
    pub units: Vec<(muster_proto::UnitId, [u8; 32])>,
}

/// Default `broker.max_packet_bytes`: `MAX_MESSAGE_BYTES` + 4 KiB for the
/// MQTT header and topic (packaging/mosquitto/mosquitto.conf says the same).
pub const DEFAULT_MAX_PACKET_BYTES: usize = muster_proto::MAX_MESSAGE_BYTES + 4096;
/// The collector's default MQTT receive maximum (`ingest.receive_maximum`).
/// 16,384: at 100,000 units (20,000 msg/s) a commit that takes 200-300 ms
/// under compaction closed a 4,096 window, and flag latency p99 went from
/// ~0.5 to ~1 s (fleet bench). Memory stays bounded by the records limit
/// (`2 × ingest.commit_max_records`), not by this.
pub const DEFAULT_RECEIVE_MAXIMUM: u16 = 16_384;

/// Largest accepted `broker.max_packet_bytes`: the embedded broker and the
/// collector's own client must take strictly more than the gate forwards
/// (see `broker::INTERNAL_PACKET_BYTES`).
pub const MAX_BROKER_PACKET_BYTES: usize = 512 * 1024;

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            max_connections: 20_000,
            connect_timeout: Duration::from_secs(10),
            collector_window: DEFAULT_RECEIVE_MAXIMUM,
            units: Vec::new(),
        }
    }
}

impl RawBroker {
    fn validate(self) -> Result<BrokerConfig, ConfigError> {
        let d = BrokerConfig::default();
        let max_packet_bytes = self.max_packet_bytes.unwrap_or(d.max_packet_bytes);
        if !(1024..=MAX_BROKER_PACKET_BYTES).contains(&max_packet_bytes) {
            return Err(invalid(
                "broker.max_packet_bytes",
                format!("must be 1024 to {MAX_BROKER_PACKET_BYTES}"),
            ));
        }
        let max_connections = self.max_connections.unwrap_or(d.max_connections);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(invalid("broker.max_connections", "must be 1 to 1000000"));
        }
        let connect_timeout = duration_or(
            "broker.connect_timeout",
            self.connect_timeout.as_deref(),
            d.connect_timeout,
        )?;
        if connect_timeout.is_zero() || connect_timeout > Duration::from_secs(300) {
            return Err(invalid(
                "broker.connect_timeout",
                "must be more than 0 and at most 5m",
            ));
        }
        let mut units = Vec::new();
        for (i, u) in self.unit.into_iter().enumerate() {
            let key = |k: &str| format!("broker.unit[{i}].{k}");
            let (agency, unit) = u
                .name
                .split_once('/')
                .ok_or_else(|| invalid(key("name"), "must be \"{agency}/{unit}\""))?;
            let id = muster_proto::UnitId::new(agency, unit)
                .map_err(|e| invalid(key("name"), e.to_string()))?;
            let hex = u.password_sha256.trim();
            let mut hash = [0u8; 32];
            let ok = hex.len() == 64
                && hash.iter_mut().enumerate().all(|(j, b)| {
                    u8::from_str_radix(hex.get(2 * j..2 * j + 2).unwrap_or("x"), 16)
                        .map(|v| *b = v)
                        .is_ok()
                });
            if !ok {
                return Err(invalid(key("password_sha256"), "must be 64 hex digits"));
            }
            if units.iter().any(|(x, _)| *x == id) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} is listed twice", u.name),
                ));
            }
            units.push((id, hash));
        }
        Ok(BrokerConfig {
            max_packet_bytes,
            max_connections,
            connect_timeout,
            collector_window: DEFAULT_RECEIVE_MAXIMUM,
            units,
        })
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            error: source,
        })?;
        Config::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        raw.validate()
    }
}

fn token(key: &str, t: &str) -> Result<String, ConfigError> {
    if t.len() < MIN_TOKEN_LEN {
        return Err(invalid(
            key,
            format!("must be at least {MIN_TOKEN_LEN} characters"),
        ));
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(key, "must not contain whitespace"));
    }
    Ok(t.to_owned())
}

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let RawConfig {
            admin_token,
            mqtt,
            http,
            store,
            ingest,
            agency,
            rules,
            enroll,
            signing,
            gates,
            remote_config,
            rollouts,
            broker,
            cluster,
            runbooks,
            actions,
        } = self;
        let actions = actions.validate()?;
        let max_config_docs = match remote_config.max_docs {
            None => 1_000,
            Some(n) if (1..=100_000).contains(&n) => n,
            Some(_) => {
                return Err(invalid(
                    "remote_config.max_docs",
                    "must be 1 to 100000 (each document is at most 64 KiB)",
                ));
            }
        };
        let rollouts = RolloutsConfig {
            max: match rollouts.max {
                None => 64,
                Some(n) if (1..=10_000).contains(&n) => n,
                Some(_) => return Err(invalid("rollouts.max", "must be 1 to 10000")),
            },
            tick: {
                let t = duration_or(
                    "rollouts.tick",
                    rollouts.tick.as_deref(),
                    Duration::from_secs(1),
                )?;
                if t < Duration::from_millis(100) || t > Duration::from_secs(60) {
                    return Err(invalid("rollouts.tick", "must be 100ms to 1m"));
                }
                t
            },
        };
        let mut gates_cfg = GatesConfig::default();
        if let Some(n) = gates.max {
            if !(1..=10_000).contains(&n) {
                return Err(invalid("gates.max", "must be 1 to 10000"));
            }
            gates_cfg.max = n;
        }
        if let Some(n) = gates.max_results {
            if !(1_000..=50_000_000).contains(&n) {
                return Err(invalid("gates.max_results", "must be 1000 to 50000000"));
            }
            gates_cfg.max_results = n;
        }
        let mut broker = broker.validate()?;

        let admin_token = admin_token.map(|t| token("admin_token", &t)).transpose()?;

        // [mqtt]
        let url = mqtt.url.as_deref().unwrap_or("mqtt://127.0.0.1:1883");
        let MqttUrl { scheme, host, port } =
            MqttUrl::parse(url).map_err(|m| invalid("mqtt.url", m))?;
        let client_id = mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| "muster-collector".to_owned());
        if client_id.is_empty() || client_id.len() > 128 {
            return Err(invalid("mqtt.client_id", "must be 1 to 128 characters"));
        }
        let shared_group = match mqtt.shared_group {
            Some(g) => {
                muster_proto::topic::fleet_filter(muster_proto::TopicKind::Telemetry, Some(&g))
                    .map_err(|e| invalid("mqtt.shared_group", e.to_string()))?;
                Some(g)
            }
            None => None,
        };
        let (credentials, client_cert) = login(
            "mqtt",
            scheme,
            (mqtt.username, mqtt.password),
            (mqtt.cert_file, mqtt.key_file),
        )?;
        if let Some(ca) = &mqtt.ca_file {
            if scheme != MqttScheme::Tls {
                return Err(invalid("mqtt.ca_file", "is only used with an mqtts:// url"));
            }
            if !ca.is_file() {
                return Err(invalid(
                    "mqtt.ca_file",
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        let publisher = match mqtt.publisher {
            None => None,
            Some(p) => {
                let id = p.client_id.ok_or_else(|| {
                    invalid(
                        "mqtt.publisher.client_id",
                        "is required in [mqtt.publisher] (the second connection's own id)",
                    )
                })?;
                if id.is_empty() || id.len() > 128 {
                    return Err(invalid(
                        "mqtt.publisher.client_id",
                        "must be 1 to 128 characters",
                    ));
                }
                if id == client_id {
                    return Err(invalid(
                        "mqtt.publisher.client_id",
                        "must differ from mqtt.client_id (the broker would drop one connection for the other)",
                    ));
                }
                let (creds, cert) = login(
                    "mqtt.publisher",
                    scheme,
                    (p.username, p.password),
                    (p.cert_file, p.key_file),
                )?;
                Some(PublisherConfig {
                    client_id: id,
                    credentials: creds.or_else(|| credentials.clone()),
                    client_cert: cert.or_else(|| client_cert.clone()),
                })
            }
        };
        if scheme == MqttScheme::Tls && mqtt.ca_file.is_none() {
            return Err(invalid(
                "mqtt.ca_file",
                "is required with an mqtts:// url (the CA that signed the broker's certificate)",
            ));
        }
        let keep_alive = duration_or(
            "mqtt.keep_alive",
            mqtt.keep_alive.as_deref(),
            Duration::from_secs(30),
        )?;
        if keep_alive < Duration::from_secs(5) {
            return Err(invalid("mqtt.keep_alive", "must be at least 5s"));
        }
        let session_expiry = duration_or(
            "mqtt.session_expiry",
            mqtt.session_expiry.as_deref(),
            Duration::from_secs(3600),
        )?;
        if session_expiry.as_secs() > u32::MAX as u64 {
            return Err(invalid("mqtt.session_expiry", "is too long"));
        }

        // [http]
        let listen_s = http.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen: SocketAddr = listen_s.parse().map_err(|_| {
            invalid(
                "http.listen",
                format!("{listen_s:?} is not an address:port (e.g. \"0.0.0.0:8080\")"),
            )
        })?;
        let sse_keep_alive = duration_or(
            "http.sse_keep_alive",
            http.sse_keep_alive.as_deref(),
            Duration::from_secs(15),
        )?;
        if sse_keep_alive.is_zero() {
            return Err(invalid("http.sse_keep_alive", "must be more than 0"));
        }
        let header_read_timeout = duration_or(
            "http.header_read_timeout",
            http.header_read_timeout.as_deref(),
            Duration::from_secs(10),
        )?;
        if header_read_timeout.is_zero() || header_read_timeout > Duration::from_secs(300) {
            return Err(invalid(
                "http.header_read_timeout",
                "must be more than 0 and at most 5m",
            ));
        }
        let idle_timeout = duration_or(
            "http.idle_timeout",
            http.idle_timeout.as_deref(),
            Duration::from_secs(60),
        )?;
        if idle_timeout.is_zero() || idle_timeout > Duration::from_secs(3600) {
            return Err(invalid(
                "http.idle_timeout",
                "must be more than 0 and at most 1h",
            ));
        }
        let max_connections = http.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(invalid("http.max_connections", "must be 1 to 1000000"));
        }
        let sse_send_timeout = duration_or(
            "http.sse_send_timeout",
            http.sse_send_timeout.as_deref(),
            Duration::from_secs(10),
        )?;
        if sse_send_timeout.is_zero() || sse_send_timeout > Duration::from_secs(300) {
            return Err(invalid(
                "http.sse_send_timeout",
                "must be more than 0 and at most 5m",
            ));
        }
        let sse_buffer = http.sse_buffer.unwrap_or(256);
        if !(1..=crate::state::STREAM_BUFFER).contains(&sse_buffer) {
            return Err(invalid(
                "http.sse_buffer",
                format!("must be 1 to {}", crate::state::STREAM_BUFFER),
            ));
        }

        // [store]
        // Cluster mode keeps its state in PostgreSQL: no data directory.
        let path = match (store.path, cluster.is_some()) {
            (Some(p), _) => p,
            (None, true) => PathBuf::new(),
            (None, false) => {
                return Err(invalid("store.path", "is required (the data directory)"));
            }
        };
        let sample_retention = duration_or(
            "store.sample_retention",
            store.sample_retention.as_deref(),
            Duration::from_secs(2 * 3600),
        )?;
        let minute_retention = duration_or(
            "store.minute_retention",
            store.minute_retention.as_deref(),
            Duration::from_secs(7 * 24 * 3600),
        )?;
        let hour_retention = duration_or(
            "store.hour_retention",
            store.hour_retention.as_deref(),
            Duration::from_secs(90 * 24 * 3600),
        )?;
        // A minute is rolled before its raw records go, an hour before its
        // minutes go.
        if minute_retention < sample_retention {
            return Err(invalid(
                "store.minute_retention",
                "must be at least store.sample_retention",
            ));
        }
        if hour_retention < minute_retention {
            return Err(invalid(
                "store.hour_retention",
                "must be at least store.minute_retention",
            ));
        }
        let event_retention = duration_or(
            "store.event_retention",
            store.event_retention.as_deref(),
            Duration::from_secs(30 * 24 * 3600),
        )?;
        let prune_interval = duration_or(
            "store.prune_interval",
            store.prune_interval.as_deref(),
            Duration::from_secs(60),
        )?;
        if prune_interval.is_zero() {
            return Err(invalid("store.prune_interval", "must be more than 0"));
        }
        let cache_mib = store.cache_mib.unwrap_or(64);
        if !(1..=65_536).contains(&cache_mib) {
            return Err(invalid("store.cache_mib", "must be 1 to 65536"));
        }

        // [signing]
        let key_file = signing.key_file.unwrap_or_else(|| path.join("signing.key"));
        if key_file.as_os_str().is_empty() {
            return Err(invalid("signing.key_file", "must not be empty"));
        }
        if signing
            .next_key_file
            .as_ref()
            .is_some_and(|n| n.as_os_str().is_empty() || *n == key_file)
        {
            return Err(invalid(
                "signing.next_key_file",
                "must be a file other than signing.key_file",
            ));
        }
        let signing = crate::signing::SigningConfig {
            key_file,
            next_key_file: signing.next_key_file,
        };

        // [ingest]
        let commit_interval = duration_or(
            "ingest.commit_interval",
            ingest.commit_interval.as_deref(),
            Duration::from_millis(50),
        )?;
        if commit_interval.is_zero() || commit_interval > Duration::from_secs(5) {
            return Err(invalid(
                "ingest.commit_interval",
                "must be more than 0 and at most 5s",
            ));
        }
        let commit_max_records = ingest.commit_max_records.unwrap_or(10_000);
        if commit_max_records == 0 {
            return Err(invalid("ingest.commit_max_records", "must be more than 0"));
        }
        let queue = ingest.queue.unwrap_or(1_024);
        if queue < 16 {
            return Err(invalid("ingest.queue", "must be at least 16"));
        }
        let receive_maximum = ingest.receive_maximum.unwrap_or(DEFAULT_RECEIVE_MAXIMUM);
        if receive_maximum == 0 {
            return Err(invalid("ingest.receive_maximum", "must be more than 0"));
        }
        broker.collector_window = receive_maximum;
        let tick_interval = duration_or(
            "ingest.tick_interval",
            ingest.tick_interval.as_deref(),
            Duration::from_secs(1),
        )?;
        if tick_interval.is_zero() {
            return Err(invalid("ingest.tick_interval", "must be more than 0"));
        }
        let overload_wait = duration_or(
            "ingest.overload_wait",
            ingest.overload_wait.as_deref(),
            Duration::from_secs(2),
        )?;
        if overload_wait < Duration::from_millis(100) || overload_wait > Duration::from_secs(600) {
            return Err(invalid("ingest.overload_wait", "must be 100ms to 10m"));
        }
        let refusal_log_interval = duration_or(
            "ingest.refusal_log_interval",
            ingest.refusal_log_interval.as_deref(),
            Duration::from_secs(10),
        )?;
        let max_units = ingest.max_units.unwrap_or(DEFAULT_MAX_UNITS);
        if !(1..=10_000_000).contains(&max_units) {
            return Err(invalid("ingest.max_units", "must be 1 to 10000000"));
        }

        // [[agency]]
        let mut agencies = BTreeMap::new();
        let mut webhooks = BTreeMap::new();
        let mut enroll_cfg = EnrollConfig::default();
        if let Some(n) = enroll.max_pending {
            if !(1..=1_000_000).contains(&n) {
                return Err(invalid("enroll.max_pending", "must be 1 to 1000000"));
            }
            enroll_cfg.max_pending = n;
        }
        // Enrol tokens are checked once every feed token is known.
        let mut enroll_raw = Vec::new();
        let mut operator_raw = Vec::new();
        let cluster = cluster
            .map(|c| c.validate())
            .transpose()
            .map_err(|e| invalid(e.key, e.message))?;
        enroll_cfg.nats_ids = cluster.is_some();
        for (i, a) in agency.into_iter().enumerate() {
            muster_proto::ids::validate_part("agency", &a.name)
                .map_err(|e| invalid(format!("agency[{i}].name"), e.to_string()))?;
            if cluster.is_some() {
                crate::cluster::config::check_agency(&a.name)
                    .map_err(|e| invalid(format!("agency[{i}].name"), e))?;
            }
            let t = token(&format!("agency[{i}].token"), &a.token)?;
            if agencies.contains_key(&a.name) {
                return Err(invalid(
                    format!("agency[{i}].name"),
                    format!("{:?} is listed twice", a.name),
                ));
            }
            if agencies.values().any(|v| *v == t) || admin_token.as_deref() == Some(t.as_str()) {
                return Err(invalid(
                    format!("agency[{i}].token"),
                    "is already used by another agency or the admin",
                ));
            }
            if let Some(w) = a.webhook {
                webhooks.insert(a.name.clone(), w.validate(&format!("agency[{i}].webhook"))?);
            }
            enroll_raw.push((i, a.name.clone(), a.enroll_token, a.enroll));
            if let Some(op) = a.operator_token {
                operator_raw.push((i, a.name.clone(), op));
            }
            agencies.insert(a.name, t);
        }
        // Operator tokens, once every feed token is known: each differs
        // from every other token (a token is one role of one agency).
        let mut operators: BTreeMap<String, String> = BTreeMap::new();
        for (i, name, tok) in operator_raw {
            let key = format!("agency[{i}].operator_token");
            let tok = token(&key, &tok)?;
            let clash = agencies.values().any(|v| *v == tok)
                || admin_token.as_deref() == Some(tok.as_str())
                || operators.values().any(|v| *v == tok);
            if clash {
                return Err(invalid(
                    key,
                    "must differ from every feed token, every other operator_token and the admin token",
                ));
            }
            operators.insert(name, tok);
        }
        for (i, name, tok, mode) in enroll_raw {
            let mode = match mode.as_deref() {
                None | Some("approve") => EnrollMode::Approve,
                Some("auto") => EnrollMode::Auto,
                Some(other) => {
                    return Err(invalid(
                        format!("agency[{i}].enroll"),
                        format!("{other:?} is not one of \"auto\", \"approve\""),
                    ));
                }
            };
            let Some(tok) = tok else {
                continue;
            };
            let key = format!("agency[{i}].enroll_token");
            let tok = token(&key, &tok)?;
            let clash = agencies.values().any(|v| *v == tok)
                || operators.values().any(|v| *v == tok)
                || admin_token.as_deref() == Some(tok.as_str())
                || enroll_cfg.agencies.values().any(|e| e.token.0 == tok);
            if clash {
                return Err(invalid(
                    key,
                    "must differ from every feed and operator token, every other enroll_token and the admin token",
                ));
            }
            enroll_cfg.agencies.insert(
                name,
                AgencyEnroll {
                    token: Secret(tok),
                    mode,
                },
            );
        }

        let mut rules = rules
            .validate()
            .map_err(|e| ConfigError::Rules(e.to_string()))?;

        // [runbooks]
        if runbooks
            .dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(invalid("runbooks.dir", "must not be empty"));
        }
        let runbooks = crate::runbooks::Runbooks::load(runbooks.dir.as_deref())
            .map_err(|e| invalid("runbooks.dir", e.to_string()))?;
        rules.set_local_runbooks(runbooks.names());

        Ok(Config {
            admin_token,
            mqtt: MqttConfig {
                scheme,
                host,
                port,
                client_id,
                shared_group,
                credentials,
                ca_file: mqtt.ca_file,
                client_cert,
                keep_alive,
                session_expiry,
                publish_status: mqtt.publish_status.unwrap_or(true),
                publisher,
            },
            http: HttpConfig {
                listen,
                sse_keep_alive,
                metrics_require_token: http.metrics_require_token.unwrap_or(true),
                header_read_timeout,
                idle_timeout,
                max_connections,
                sse_buffer,
                sse_send_timeout,
            },
            store: StoreConfig {
                path,
                sample_retention,
                minute_retention,
                hour_retention,
                event_retention,
                prune_interval,
                cache_bytes: cache_mib * 1024 * 1024,
            },
            ingest: IngestConfig {
                commit_interval,
                commit_max_records,
                queue,
                receive_maximum,
                tick_interval,
                overload_wait,
                refusal_log_interval,
                max_units,
            },
            agencies,
            operators,
            actions,
            webhooks,
            rules,
            enroll: enroll_cfg,
            gates: gates_cfg,
            max_config_docs,
            rollouts,
            signing,
            broker,
            cluster,
            runbooks: std::sync::Arc::new(runbooks),
        })
    }
}

/// The runbook link earlier versions shipped for every rule.
const PLACEHOLDER_RUNBOOKS: &str = "https://runbooks.example.org/";

impl Config {
    /// What `check-config` warns about and `run` logs, without refusing the
    /// config: each rule that can raise a flag with neither a runbook here
    /// (built-in or in `[runbooks] dir`) nor a runbook URL of its own,
    /// runbook URLs still on the placeholder earlier versions shipped, and
    /// runbook front matter other than `action: <name>` (naming the file).
    pub fn warnings(&self) -> Vec<String> {
        let dir = match &self.runbooks.dir {
            Some(d) => d.display().to_string(),
            None => "[runbooks] dir (not set)".to_owned(),
        };
        let mut out = Vec::new();
        for (rule, key, url) in self.rules.runbook_sources() {
            match url {
                None if !self.runbooks.contains(&rule) => out.push(format!(
                    "rule {rule:?} has no runbook: the support desk gets no help with its flags; \
                     add {rule}.md to {dir}, or set {key} to its URL"
                )),
                Some(u) if u.starts_with(PLACEHOLDER_RUNBOOKS) => out.push(format!(
                    "rule {rule:?}: {key} {u:?} is the placeholder earlier versions shipped; {}",
                    if self.runbooks.contains(&rule) {
                        format!("remove it and flags link to /runbooks/{rule}")
                    } else {
                        format!("add {rule}.md to {dir}, or set a real URL")
                    }
                )),
                _ => {}
            }
        }
        out.extend(self.runbooks.warnings());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
admin_token = "admin-token-0123456789"
[mqtt]
url = "mqtt://127.0.0.1:1884"
shared_group = "collectors"
[http]
listen = "127.0.0.1:0"
[store]
path = "/tmp/x"
sample_retention = "2h"
[[agency]]
name = "metro-fire"
token = "fire-token-0123456789"
[[agency]]
name = "county-police"
token = "police-token-0123456789"
"#;

    const CLUSTER: &str = "[cluster]\nid = \"c1\"\nnats = [\"nats://127.0.0.1:4222\"]\npostgres = \"postgres://muster@127.0.0.1:5432/muster\"\n";

    #[test]
    fn cluster_mode_is_chosen_by_config_and_refuses_agencies_nats_cannot_carry() {
        assert!(Config::parse(GOOD).unwrap().cluster.is_none());
        let c = Config::parse(&format!("{GOOD}{CLUSTER}")).unwrap();
        assert_eq!(c.cluster.unwrap().id, "c1");
        assert!(c.enroll.nats_ids);
        let dotted = GOOD.replace("metro-fire", "metro.fire");
        assert!(Config::parse(&dotted).is_ok(), "fine on a single node");
        match Config::parse(&format!("{dotted}{CLUSTER}")) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "agency[0].name"),
            other => panic!("{:?}", other.err()),
        }
        match Config::parse(&format!("{GOOD}{}", CLUSTER.replace("c1", "c 1"))) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "cluster.id"),
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn good_config_validates() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.mqtt.port, 1884);
        assert_eq!(c.mqtt.host, "127.0.0.1");
        assert_eq!(c.mqtt.shared_group.as_deref(), Some("collectors"));
        assert_eq!(c.store.sample_retention, Duration::from_secs(7200));
        assert_eq!(c.agencies.len(), 2);
        assert_eq!(c.agencies["metro-fire"], "fire-token-0123456789");
        assert_eq!(c.http.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.http.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.http.sse_buffer, 256);
        assert_eq!(c.signing.key_file, PathBuf::from("/tmp/x/signing.key"));
        assert_eq!(c.signing.next_key_file, None);
    }

    #[test]
    fn the_publisher_connection_has_its_own_id_and_inherits_the_login() {
        let with = |mqtt: &str, publisher: &str| {
            Config::parse(&GOOD.replace(
                "shared_group = \"collectors\"",
                &format!("shared_group = \"collectors\"\n{mqtt}\n[mqtt.publisher]\n{publisher}"),
            ))
        };
        let plain = Config::parse(GOOD).unwrap();
        assert!(plain.mqtt.publisher.is_none());
        assert!(plain.mqtt.publisher_connection().is_none());

        let c = with(
            "username = \"col\"\npassword = \"pw\"",
            "client_id = \"col-pub\"",
        )
        .unwrap();
        let p = c.mqtt.publisher_connection().unwrap();
        assert_eq!(p.client_id, "col-pub");
        assert_eq!(p.credentials.as_ref().map(|(u, _)| u.as_str()), Some("col"));
        assert_eq!((p.host.as_str(), p.port), ("127.0.0.1", 1884));
        assert!(p.shared_group.is_none() && p.publisher.is_none());

        let own = with(
            "username = \"col\"\npassword = \"pw\"",
            "client_id = \"col-pub\"\nusername = \"pub\"\npassword = \"pw2\"",
        )
        .unwrap();
        let p = own.mqtt.publisher_connection().unwrap();
        assert_eq!(p.credentials.as_ref().map(|(u, _)| u.as_str()), Some("pub"));

        for (publisher, key) in [
            ("username = \"pub\"", "mqtt.publisher.client_id:"),
            (
                "client_id = \"muster-collector\"",
                "mqtt.publisher.client_id:",
            ),
            ("client_id = \"\"", "mqtt.publisher.client_id:"),
            (
                "client_id = \"p\"\nusername = \"pub\"",
                "mqtt.publisher.password:",
            ),
            (
                "client_id = \"p\"\ncert_file = \"/nonexistent\"",
                "mqtt.publisher.key_file:",
            ),
            (
                "client_id = \"p\"\ncert_file = \"/etc/hostname\"\nkey_file = \"/etc/hostname\"",
                "mqtt.publisher.cert_file: is only used with an mqtts:// url",
            ),
            (
                "client_id = \"p\"\nurl = \"mqtt://x\"",
                "unknown field `url`",
            ),
        ] {
            let err = with("", publisher).unwrap_err().to_string();
            assert!(err.contains(key), "{publisher}: {err}");
        }
    }

    #[test]
    fn signing_keys_name_their_key() {
        let with = |extra: &str| Config::parse(&format!("{GOOD}\n[signing]\n{extra}\n"));
        let c = with("key_file = \"/k/a\"\nnext_key_file = \"/k/b\"").unwrap();
        assert_eq!(c.signing.key_file, PathBuf::from("/k/a"));
        assert_eq!(c.signing.next_key_file, Some(PathBuf::from("/k/b")));
        let err = with("key_file = \"/k/a\"\nnext_key_file = \"/k/a\"")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("signing.next_key_file:"), "{err}");
        let err = with("key = \"x\"").unwrap_err().to_string();
        assert!(err.contains("unknown field `key`"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "url = \"mqtt://127.0.0.1:1884\"",
                "url = \"http://x\"",
                "mqtt.url:",
            ),
            (
                "shared_group = \"collectors\"",
                "shared_group = \"a/b\"",
                "mqtt.shared_group:",
            ),
            (
                "listen = \"127.0.0.1:0\"",
                "listen = \"localhost\"",
                "http.listen:",
            ),
            (
                "sample_retention = \"2h\"",
                "sample_retention = \"3x\"",
                "store.sample_retention: \"3x\" is not a duration",
            ),
            (
                "token = \"police-token-0123456789\"",
                "token = \"short\"",
                "agency[1].token:",
            ),
            (
                "token = \"police-token-0123456789\"",
                "token = \"fire-token-0123456789\"",
                "agency[1].token: is already used",
            ),
            (
                "name = \"county-police\"",
                "name = \"metro-fire\"",
                "agency[1].name:",
            ),
            (
                "name = \"county-police\"",
                "name = \"county police\"",
                "agency[1].name:",
            ),
            (
                "path = \"/tmp/x\"",
                "path = \"/tmp/x\"\nbogus = 1",
                "unknown field `bogus`",
            ),
            (
                "admin_token = \"admin-token-0123456789\"",
                "admin_token = \"admin\"",
                "admin_token:",
            ),
            (
                "listen = \"127.0.0.1:0\"",
                "listen = \"127.0.0.1:0\"\nheader_read_timeout = \"0s\"",
                "http.header_read_timeout:",
            ),
            (
                "listen = \"127.0.0.1:0\"",
                "listen = \"127.0.0.1:0\"\nidle_timeout = \"soon\"",
                "http.idle_timeout:",
            ),
            (
                "listen = \"127.0.0.1:0\"",
                "listen = \"127.0.0.1:0\"\nmax_connections = 0",
                "http.max_connections:",
            ),
            (
                "listen = \"127.0.0.1:0\"",
                "listen = \"127.0.0.1:0\"\nsse_buffer = 0",
                "http.sse_buffer:",
            ),
            (
                "listen = \"127.0.0.1:0\"",
                "listen = \"127.0.0.1:0\"\nsse_send_timeout = \"0s\"",
                "http.sse_send_timeout:",
            ),
            (
                "token = \"police-token-0123456789\"",
                "token = \"police-token-0123456789\"\nenroll_token = \"short\"",
                "agency[1].enroll_token: must be at least",
            ),
            (
                "token = \"police-token-0123456789\"",
                "token = \"police-token-0123456789\"\nenroll_token = \"fire-token-0123456789\"",
                "agency[1].enroll_token: must differ",
            ),
            (
                "token = \"police-token-0123456789\"",
                "token = \"police-token-0123456789\"\nenroll_token = \"police-token-0123456789\"",
                "agency[1].enroll_token: must differ",
            ),
            (
                "token = \"police-token-0123456789\"",
                "token = \"police-token-0123456789\"\nenroll_token = \"admin-token-0123456789\"",
                "agency[1].enroll_token: must differ",
            ),
            (
                "token = \"fire-token-0123456789\"\n[[agency]]\nname = \"county-police\"\ntoken = \"police-token-0123456789\"",
                "token = \"fire-token-0123456789\"\nenroll_token = \"same-enrol-token-0123\"\n[[agency]]\nname = \"county-police\"\ntoken = \"police-token-0123456789\"\nenroll_token = \"same-enrol-token-0123\"",
                "agency[1].enroll_token: must differ",
            ),
            (
                "token = \"police-token-0123456789\"",
                "token = \"police-token-0123456789\"\nenroll = \"yes\"",
                "agency[1].enroll:",
            ),
            (
                "token = \"police-token-0123456789\"",
                "token = \"police-token-0123456789\"\noperator_token = \"short\"",
                "agency[1].operator_token: must be at least",
            ),
            (
                "token = \"police-token-0123456789\"",
                "token = \"police-token-0123456789\"\noperator_token = \"police-token-0123456789\"",
                "agency[1].operator_token: must differ",
            ),
            (
                "token = \"police-token-0123456789\"",
                "token = \"police-token-0123456789\"\noperator_token = \"fire-token-0123456789\"",
                "agency[1].operator_token: must differ",
            ),
            (
                "token = \"police-token-0123456789\"",
                "token = \"police-token-0123456789\"\noperator_token = \"admin-token-0123456789\"",
                "agency[1].operator_token: must differ",
            ),
            (
                "token = \"fire-token-0123456789\"\n[[agency]]\nname = \"county-police\"\ntoken = \"police-token-0123456789\"",
                "token = \"fire-token-0123456789\"\noperator_token = \"same-operator-0123\"\n[[agency]]\nname = \"county-police\"\ntoken = \"police-token-0123456789\"\noperator_token = \"same-operator-0123\"",
                "agency[1].operator_token: must differ",
            ),
            (
                "token = \"police-token-0123456789\"",
                "token = \"police-token-0123456789\"\noperator_token = \"police-op-0123456789\"\nenroll_token = \"police-op-0123456789\"",
                "agency[1].enroll_token: must differ",
            ),
            (
                "sample_retention = \"2h\"",
                "sample_retention = \"2h\"\n[actions]\nttl = \"16m\"",
                "actions.ttl: must be 1s to 15m",
            ),
            (
                "sample_retention = \"2h\"",
                "sample_retention = \"2h\"\n[actions]\nttl = \"soon\"",
                "actions.ttl:",
            ),
            (
                "sample_retention = \"2h\"",
                "sample_retention = \"2h\"\n[actions]\nmax_pending = 0",
                "actions.max_pending: must be 1 to 100000",
            ),
            (
                "sample_retention = \"2h\"",
                "sample_retention = \"2h\"\n[actions]\nper_agency_per_min = 0",
                "actions.per_agency_per_min: must be 1 to 10000",
            ),
            (
                "sample_retention = \"2h\"",
                "sample_retention = \"2h\"\n[actions]\naudit_max_bytes = \"1KiB\"",
                "actions.audit_max_bytes: must be 4KiB",
            ),
            (
                "sample_retention = \"2h\"",
                "sample_retention = \"2h\"\n[actions]\naudit_max_bytes = \"lots\"",
                "actions.audit_max_bytes: \"lots\" is not a byte size",
            ),
            (
                "sample_retention = \"2h\"",
                "sample_retention = \"2h\"\n[actions]\nrate = 5",
                "unknown field `rate`",
            ),
            (
                "sample_retention = \"2h\"",
                "sample_retention = \"2h\"\n[enroll]\nmax_pending = 0",
                "enroll.max_pending:",
            ),
            (
                "sample_retention = \"2h\"",
                "sample_retention = \"2h\"\n[ingest]\nmax_units = 0",
                "ingest.max_units:",
            ),
            (
                "[store]",
                "[broker]\nmax_packet_bytes = 10\n[store]",
                "broker.max_packet_bytes:",
            ),
            (
                "[store]",
                "[broker]\nmax_connections = 0\n[store]",
                "broker.max_connections:",
            ),
            (
                "[store]",
                "[broker]\nconnect_timeout = \"0s\"\n[store]",
                "broker.connect_timeout:",
            ),
            (
                "[store]",
                "[[broker.unit]]\nname = \"E12\"\npassword_sha256 = \"00\"\n[store]",
                "broker.unit[0].name:",
            ),
            (
                "[store]",
                "[[broker.unit]]\nname = \"metro-fire/E12\"\npassword_sha256 = \"zz\"\n[store]",
                "broker.unit[0].password_sha256:",
            ),
        ];
        for (from, to, want) in cases {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "case {from} did not apply");
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{to}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn operator_tokens_are_optional_and_actions_have_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert!(c.operators.is_empty());
        assert_eq!(c.actions, ActionsConfig::default());
        assert_eq!(c.actions.ttl, Duration::from_secs(60));
        assert_eq!(c.actions.max_pending, 1024);
        assert_eq!(c.actions.per_agency_per_min, 60);
        assert_eq!(c.actions.audit_max_bytes, 64 << 20);
        let c = Config::parse(&format!(
            "{}\n[actions]\nttl = \"15m\"\nmax_pending = 3\nper_agency_per_min = 2\naudit_max_bytes = \"4KiB\"\n",
            GOOD.replacen(
                "token = \"police-token-0123456789\"",
                "token = \"police-token-0123456789\"\noperator_token = \"police-op-0123456789\"",
                1,
            )
        ))
        .unwrap();
        assert_eq!(c.operators.len(), 1);
        assert_eq!(c.operators["county-police"], "police-op-0123456789");
        assert_eq!(c.agencies["county-police"], "police-token-0123456789");
        assert_eq!(
            c.actions,
            ActionsConfig {
                ttl: Duration::from_secs(900),
                max_pending: 3,
                per_agency_per_min: 2,
                audit_max_bytes: 4096,
            }
        );
        // Never in a log line.
        assert!(!format!("{c:?}").contains("police-op"));
    }

    #[test]
    fn enrolment_defaults_to_approve_and_auto_is_explicit() {
        let c = Config::parse(&GOOD.replacen(
            "token = \"police-token-0123456789\"",
            "token = \"police-token-0123456789\"\nenroll_token = \"police-enrol-0123456789\"\nenroll = \"auto\"",
            1,
        ))
        .unwrap();
        assert_eq!(c.enroll.max_pending, 10_000);
        assert_eq!(c.ingest.max_units, DEFAULT_MAX_UNITS);
        assert_eq!(c.enroll.agencies["county-police"].mode, EnrollMode::Auto);
        assert!(!c.enroll.agencies.contains_key("metro-fire"));
        let c = Config::parse(&GOOD.replacen(
            "token = \"police-token-0123456789\"",
            "token = \"police-token-0123456789\"\nenroll_token = \"police-enrol-0123456789\"",
            1,
        ))
        .unwrap();
        assert_eq!(c.enroll.agencies["county-police"].mode, EnrollMode::Approve);
        assert!(!format!("{:?}", c.enroll).contains("police-enrol"));
    }

    #[test]
    fn store_retentions_default_and_must_nest() {
        let c = Config::parse(&GOOD.replace("sample_retention = \"2h\"\n", "")).unwrap();
        assert_eq!(c.store.sample_retention, Duration::from_secs(2 * 3600));
        assert_eq!(c.store.minute_retention, Duration::from_secs(7 * 86_400));
        assert_eq!(c.store.hour_retention, Duration::from_secs(90 * 86_400));
        for (extra, key) in [
            ("minute_retention = \"1h\"", "store.minute_retention:"),
            ("hour_retention = \"1d\"", "store.hour_retention:"),
            ("minute_retention = \"x\"", "store.minute_retention:"),
            ("hour_retention = \"-1d\"", "store.hour_retention:"),
        ] {
            let toml = GOOD.replace(
                "sample_retention = \"2h\"",
                &format!("sample_retention = \"2h\"\n{extra}"),
            );
            let err = Config::parse(&toml).unwrap_err().to_string();
            assert!(err.starts_with(key), "{extra}: {err}");
        }
        let ok = GOOD.replace(
            "sample_retention = \"2h\"",
            "sample_retention = \"2h\"\nminute_retention = \"2h\"\nhour_retention = \"2h\"",
        );
        Config::parse(&ok).unwrap();
    }

    #[test]
    fn rollouts_default_and_are_bounded() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(
            c.rollouts,
            RolloutsConfig {
                max: 64,
                tick: Duration::from_secs(1)
            }
        );
        for (extra, want) in [
            ("[rollouts]\nmax = 0", "rollouts.max:"),
            ("[rollouts]\nmax = 10001", "rollouts.max:"),
            ("[rollouts]\ntick = \"50ms\"", "rollouts.tick:"),
            ("[rollouts]\ntick = \"2m\"", "rollouts.tick:"),
            ("[rollouts]\ntick = \"soon\"", "rollouts.tick:"),
            ("[rollouts]\nsurprise = 1", "unknown field `surprise`"),
        ] {
            let err = Config::parse(&format!("{GOOD}\n{extra}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{extra}: {err}");
        }
        let c = Config::parse(&format!("{GOOD}\n[rollouts]\nmax = 5\ntick = \"250ms\"\n")).unwrap();
        assert_eq!(
            (c.rollouts.max, c.rollouts.tick),
            (5, Duration::from_millis(250))
        );
    }

    #[test]
    fn site_runbooks_load_and_their_errors_name_the_key_and_the_file() {
        let dir =
            std::env::temp_dir().join(format!("muster-config-runbooks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let with = |extra: &str| Config::parse(&format!("{GOOD}\n{extra}\n"));
        let at = |d: &Path| format!("[runbooks]\ndir = {:?}", d.display().to_string());

        // None configured: the built-in ones, and every flag can link.
        let c = Config::parse(GOOD).unwrap();
        assert!(c.runbooks.contains("lost.will") && c.runbooks.dir.is_none());
        assert!(c.rules.local_runbooks.contains("cpu-high"));

        std::fs::write(dir.join("wwan-errors.md"), "# wwan-errors\n").unwrap();
        std::fs::write(dir.join("cpu-high.md"), "# cpu-high here\n").unwrap();
        let c = with(&at(&dir)).unwrap();
        assert_eq!(
            c.runbooks.get("cpu-high").unwrap().source,
            crate::runbooks::Source::Site
        );
        assert_eq!(
            c.rules.runbook_link("wwan-errors", None).as_deref(),
            Some("/runbooks/wwan-errors"),
            "a site runbook is linked"
        );

        std::fs::write(dir.join("bad.md"), b"\xff\xfe").unwrap();
        let err = with(&at(&dir)).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "runbooks.dir: {}: is not UTF-8 (invalid byte at offset 0)",
                dir.join("bad.md").display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let err = with(&at(&dir)).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "runbooks.dir: {}: cannot read the directory",
                dir.display()
            )),
            "{err}"
        );
        let err = with("[runbooks]\ndir = \"\"").unwrap_err().to_string();
        assert_eq!(err, "runbooks.dir: must not be empty");
        let err = with("[runbooks]\npath = \"/x\"").unwrap_err().to_string();
        assert!(err.contains("unknown field `path`"), "{err}");
    }

    #[test]
    fn warnings_name_rules_without_a_runbook_and_old_placeholders() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(
            c.warnings(),
            Vec::<String>::new(),
            "the shipped rules all have one"
        );
        let own = "[[rules.threshold]]\nname = \"wwan-errors\"\nfield = 'net[\"wwan0\"].rx_errors'\nop = \">\"\nthreshold = 100\n";
        let c = Config::parse(&format!("{GOOD}\n[rules]\n{own}")).unwrap();
        assert_eq!(
            c.warnings(),
            [
                "rule \"wwan-errors\" has no runbook: the support desk gets no help with its flags; \
                 add wwan-errors.md to [runbooks] dir (not set), or set the runbook of \
                 [[rules.threshold]] \"wwan-errors\" to its URL"
            ]
        );
        let linked = own.replace(
            "threshold = 100",
            "threshold = 100\nrunbook = \"https://wiki.example.org/wwan\"",
        );
        let c = Config::parse(&format!("{GOOD}\n[rules]\n{linked}")).unwrap();
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        // A rule that is not in force is not warned about.
        let c = Config::parse(&format!(
            "{GOOD}\n[rules]\ndisabled = [\"wwan-errors\"]\n{own}"
        ))
        .unwrap();
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        // A placeholder copied from an earlier version's shipped rules.
        let c = Config::parse(&format!(
            "{GOOD}\n[rules.clock_skew]\nrunbook = \"https://runbooks.example.org/muster/clock-skew\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.warnings(),
            [
                "rule \"clock_skew\": rules.clock_skew.runbook \"https://runbooks.example.org/muster/clock-skew\" \
                 is the placeholder earlier versions shipped; remove it and flags link to /runbooks/clock_skew"
            ]
        );
    }

    #[test]
    fn store_path_is_required() {
        let err = Config::parse("").unwrap_err().to_string();
        assert!(err.starts_with("store.path:"), "{err}");
    }
}
