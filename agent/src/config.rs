//! The agent's configuration: TOML parsed into raw structs (serde,
//! `deny_unknown_fields`), then validated into the typed [`Config`]. Every
//! validation error names the key it is about, e.g.
//! `probe[2].timeout: "3x" is not a duration`.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use muster_base::value::{BadValue, MqttScheme, MqttUrl, bytes, duration, duration_or};
use muster_proto::{Label, LabelError, SamplerFamily, UnitId};
use serde::Deserialize;

use crate::buffer::settings::{BufferSettings, FullPolicy};
use crate::enroll::EnrollSettings;
use crate::trust::TrustConfig;
use crate::uplink::settings::{MqttSettings, UplinkSettings};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    /// A key with a bad value: `key: message`.
    #[error("{key}: {msg}")]
    Invalid { key: String, msg: String },
}

impl From<BadValue> for ConfigError {
    fn from(b: BadValue) -> Self {
        ConfigError::Invalid {
            key: b.key,
            msg: b.message,
        }
    }
}

impl ConfigError {
    fn invalid(key: impl Into<String>, msg: impl fmt::Display) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            msg: msg.to_string(),
        }
    }

    /// The key an `Invalid` error is about.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

// ------------------------------------------------------------------ raw TOML

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    unit_id: Option<String>,
    agency: Option<String>,
    data_dir: Option<PathBuf>,
    mqtt: Option<RawMqtt>,
    #[serde(default)]
    buffer: RawBuffer,
    #[serde(default)]
    uplink: RawUplink,
    #[serde(default)]
    power: RawPower,
    #[serde(default)]
    sampling: RawSampling,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    report: RawReport,
    #[serde(default)]
    log: RawLog,
    #[serde(default, rename = "probe")]
    probes: Vec<RawProbe>,
    enroll: Option<RawEnroll>,
    #[serde(default)]
    trust: RawTrust,
    #[serde(default)]
    remote: RawRemote,
    labels: Option<toml::Table>,
    #[serde(default)]
    cad: RawCad,
    #[serde(default, rename = "action")]
    actions: Vec<RawAction>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    allow: Option<Vec<String>>,
    health_window: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEnroll {
    url: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    collector_keys: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    url: Option<String>,
    urls: Option<Vec<String>>,
    client_id: Option<String>,
    keepalive: Option<String>,
    connect_timeout: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBuffer {
    path: Option<PathBuf>,
    max_bytes: Option<String>,
    max_age: Option<String>,
    on_full: Option<String>,
    thin_keep_one_in: Option<u32>,
    flush_interval: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    max_inflight: Option<u16>,
    batch_max_bytes: Option<String>,
    replay_bytes_per_sec: Option<String>,
    ack_timeout: Option<String>,
    reconnect_min: Option<String>,
    reconnect_max: Option<String>,
    heartbeat_interval: Option<String>,
    channel_capacity: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSampling {
    interval: Option<String>,
    processes: Option<Vec<String>>,
    collectors: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReport {
    listen: Option<String>,
    max_per_sec: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    to: Option<String>,
    dir: Option<PathBuf>,
    rotation: Option<String>,
    max_files: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    name: Option<String>,
    kind: Option<String>,
    target: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    // http
    method: Option<String>,
    expect_status: Option<StatusSpec>,
    body_contains: Option<String>,
    body_max_bytes: Option<String>,
    ca_file: Option<PathBuf>,
    insecure_skip_verify: Option<bool>,
    // icmp
    count: Option<u16>,
    // transaction (issue 18)
    credentials: Option<PathBuf>,
    step: Option<Vec<RawStep>>,
}

/// One `[[probe.step]]` of a transaction.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Option<String>,
    method: Option<String>,
    url: Option<String>,
    headers: Option<std::collections::BTreeMap<String, String>>,
    body: Option<String>,
    expect_status: Option<StatusSpec>,
    body_contains: Option<String>,
    extract: Option<std::collections::BTreeMap<String, RawExtract>>,
}

/// `extract = { token = { json = "/token" } }` or `{ header = "X-Session" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExtract {
    json: Option<String>,
    header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StatusSpec {
    One(u16),
    Many(Vec<u16>),
    Range(String),
}

// ---------------------------------------------------------------- typed config

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub unit: UnitId,
    /// `data_dir`: where the buffer and log files live by default.
    pub data_dir: PathBuf,
    pub mqtt: MqttSettings,
    pub buffer: BufferSettings,
    pub uplink: UplinkSettings,
    /// `uplink.channel_capacity`: observations queued between the measuring
    /// tasks and the uplink, default 1024.
    pub channel_capacity: usize,
    /// `[power]`: announcing departures (`crate::power`).
    pub power: crate::power::PowerSettings,
    pub sampling: SamplingConfig,
    pub report: Option<ReportConfig>,
    pub log: LogConfig,
    pub probes: Vec<ProbeSpec>,
    /// `[enroll]`: claim a credential from the collector on first start.
    pub enroll: Option<EnrollSettings>,
    /// `[trust]`: collector keys (more may be persisted in
    /// `<data_dir>/trusted_keys`, see [`crate::trust`]).
    pub trust: TrustConfig,
    /// `[remote]`: which sections signed documents may set.
    pub remote: RemoteSettings,
    /// `labels`: the unit's operator-given labels, sorted by key.
    pub labels: Vec<muster_proto::Label>,
    /// `[cad]`: where the CAD client's version is read.
    pub cad: CadConfig,
    /// The local TOML this config was parsed from (the root of trust that
    /// remote documents are merged onto, [`crate::remote`]).
    pub local: std::sync::Arc<str>,
    /// `[[action]]`: what the collector may ask this agent to run
    /// ([`crate::action`]). Local only: no remote document can set it.
    pub actions: Vec<ActionSpec>,
    /// The file this config was loaded from ([`Config::load`]; `None` when
    /// parsed from text): `collect_diagnostics` runs `once` with it.
    pub path: Option<PathBuf>,
}

/// Top-level sections a remote document may ever set (the wire
/// contract's list); everything else is local only.
pub use muster_proto::REMOTE_SECTIONS as REMOTABLE;

/// `[remote]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSettings {
    /// `remote.allow`: sections signed documents may set (a subset of
    /// [`REMOTABLE`]); empty (the default): remote config is off.
    pub allow: Vec<String>,
    /// `remote.health_window`: how long after applying a document the
    /// agent watches its own health before the document becomes the last
    /// known good; default 5 min, 10 s to 1 h.
    pub health_window: Duration,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        RemoteSettings {
            allow: Vec::new(),
            health_window: Duration::from_secs(300),
        }
    }
}

fn validate_remote(raw: RawRemote) -> Result<RemoteSettings, ConfigError> {
    let mut allow = Vec::new();
    for (i, a) in raw.allow.unwrap_or_default().into_iter().enumerate() {
        if !REMOTABLE.contains(&a.as_str()) {
            return Err(ConfigError::invalid(
                format!("remote.allow[{i}]"),
                format!(
                    "{a:?} can never be set remotely; allowed: {}",
                    REMOTABLE.join(", ")
                ),
            ));
        }
        if !allow.contains(&a) {
            allow.push(a);
        }
    }
    let health_window = duration_or(
        "remote.health_window",
        raw.health_window.as_deref(),
        RemoteSettings::default().health_window,
    )?;
    if health_window < Duration::from_secs(10) || health_window > Duration::from_secs(3600) {
        return Err(ConfigError::invalid(
            "remote.health_window",
            "must be between 10s and 1h",
        ));
    }
    Ok(RemoteSettings {
        allow,
        health_window,
    })
}

/// `[sampling]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplingConfig {
    /// `sampling.interval`, default 5 s, at least 1 s.
    pub interval: Duration,
    /// `sampling.processes`: watched process names (`cadclient`, `cadclient.exe`).
    pub processes: Vec<String>,
    /// `sampling.collectors`: which host collectors run, default all of
    /// `cpu load memory disks networks processes uptime route wifi cellular vpn`.
    pub collectors: Vec<SamplerFamily>,
    /// `[network]`: the network context families' settings (read by the sampler).
    pub network: NetworkConfig,
}

impl SamplingConfig {
    pub fn enabled(&self, c: SamplerFamily) -> bool {
        self.collectors.contains(&c)
    }
}

/// `[report]`: the CAD client's loopback self-report endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportConfig {
    /// `report.listen`: a loopback UDP address, e.g. `127.0.0.1:8125`.
    pub listen: SocketAddr,
    /// `report.max_per_sec`: reports accepted per second, beyond that counted
    /// and dropped (default 50).
    pub max_per_sec: u32,
}

/// Where logs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    /// A rotating file in `dir`.
    File {
        dir: PathBuf,
        rotation: Rotation,
        max_files: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    Hourly,
    Daily,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `log.level`: a tracing filter (`info`, `muster_agent=debug,info`).
    pub level: String,
    /// `log.to = "stderr" | "file"`, with `log.dir`, `log.rotation`, `log.max_files`.
    pub target: LogTarget,
}

/// One `[[probe]]`.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub name: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub target: ProbeTarget,
}

impl ProbeSpec {
    /// The target as configured (URL, `host:port`, name).
    pub fn target_text(&self) -> String {
        match &self.target {
            ProbeTarget::Http(h) => h.url.to_string(),
            ProbeTarget::Tcp { host, port } => format_host_port(host, *port),
            ProbeTarget::Dns { name } => name.clone(),
            ProbeTarget::Icmp { host, .. } => host.clone(),
            ProbeTarget::Transaction(t) => t.steps[0].url.text.clone(),
        }
    }

    pub fn kind(&self) -> muster_proto::ProbeKind {
        use muster_proto::ProbeKind as K;
        match self.target {
            ProbeTarget::Http(_) => K::Http,
            ProbeTarget::Tcp { .. } => K::Tcp,
            ProbeTarget::Dns { .. } => K::Dns,
            ProbeTarget::Icmp { .. } => K::Icmp,
            ProbeTarget::Transaction(_) => K::Transaction,
        }
    }
}

/// `host:port`, an IPv6 host in brackets.
pub fn format_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[derive(Debug, Clone)]
pub enum ProbeTarget {
    Http(HttpSpec),
    Tcp {
        host: String,
        port: u16,
    },
    Dns {
        name: String,
    },
    Icmp {
        host: String,
        count: u16,
    },
    /// `kind = "transaction"` (issue 18): steps run in order, each on a fresh
    /// connection, within one `timeout` for the whole run.
    Transaction(Box<TransactionSpec>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub fn as_hyper(self) -> hyper::Method {
        match self {
            HttpMethod::Get => hyper::Method::GET,
            HttpMethod::Head => hyper::Method::HEAD,
            HttpMethod::Post => hyper::Method::POST,
            HttpMethod::Put => hyper::Method::PUT,
            HttpMethod::Patch => hyper::Method::PATCH,
            HttpMethod::Delete => hyper::Method::DELETE,
        }
    }

    fn parse(s: Option<&str>) -> Option<HttpMethod> {
        Some(match s.map(str::to_ascii_uppercase).as_deref() {
            None | Some("GET") => HttpMethod::Get,
            Some("HEAD") => HttpMethod::Head,
            Some("POST") => HttpMethod::Post,
            Some("PUT") => HttpMethod::Put,
            Some("PATCH") => HttpMethod::Patch,
            Some("DELETE") => HttpMethod::Delete,
            Some(_) => return None,
        })
    }
}

/// The most steps of one transaction.
pub const MAX_STEPS: usize = 16;
/// The most extractions of one transaction, all steps together.
pub const MAX_EXTRACTIONS: usize = 16;
/// The most headers of one step.
pub const MAX_STEP_HEADERS: usize = 32;
/// The longest step body template.
pub const MAX_STEP_BODY: usize = 64 * 1024;
/// The largest credentials file, and the most credentials in it.
pub const MAX_CREDENTIALS_FILE: u64 = 64 * 1024;
pub const MAX_CREDENTIALS: usize = 64;
/// Headers the agent writes itself; a step may not set them.
const AGENT_HEADERS: [&str; 4] = ["host", "content-length", "connection", "transfer-encoding"];

/// A `transaction` probe's settings (issue 18).
#[derive(Debug, Clone)]
pub struct TransactionSpec {
    pub steps: Vec<StepSpec>,
    /// `credentials`: the file's secrets, read (and its mode checked) when
    /// the config is validated. Empty when no file is configured.
    pub credentials: crate::probe::template::Secrets,
    /// `body_max_bytes`, per step (default 64 KiB, at most 16 MiB).
    pub body_max_bytes: usize,
    /// For https steps, as for http probes.
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    /// `{{unit}}` and `{{agency}}`.
    pub unit: String,
    pub agency: String,
}

/// One `[[probe.step]]`.
#[derive(Debug, Clone)]
pub struct StepSpec {
    pub name: String,
    pub method: HttpMethod,
    pub url: UrlTemplate,
    pub headers: Vec<(hyper::header::HeaderName, crate::probe::template::Template)>,
    pub body: Option<crate::probe::template::Template>,
    /// Accepted status codes, as inclusive ranges (default 200..=399).
    pub expect_status: Vec<(u16, u16)>,
    pub body_contains: Option<String>,
    /// Variable name → where its value comes from, in name order.
    pub extract: Vec<(String, Extract)>,
}

/// A step's URL: scheme, host and port fixed; the path and query a template.
#[derive(Debug, Clone)]
pub struct UrlTemplate {
    /// As configured (the results' target: a template, never a value).
    pub text: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    /// The path and query, `/` when the URL has none.
    pub path: crate::probe::template::Template,
}

/// Where an extracted variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extract {
    /// An RFC 6901 pointer into the JSON body.
    Json(String),
    /// The first value of a response header.
    Header(hyper::header::HeaderName),
}

/// An `http` probe's settings.
#[derive(Debug, Clone)]
pub struct HttpSpec {
    pub url: hyper::Uri,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub method: HttpMethod,
    /// Accepted status codes, as inclusive ranges (default 200..=399).
    pub expect_status: Vec<(u16, u16)>,
    pub body_contains: Option<String>,
    /// The most body bytes read for `body_contains` (default 64 KiB).
    pub body_max_bytes: usize,
    /// PEM CA bundle that replaces the built-in web roots for this probe.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate: only when explicitly configured.
    pub insecure_skip_verify: bool,
}

impl HttpSpec {
    pub fn status_ok(&self, status: u16) -> bool {
        self.expect_status
            .iter()
            .any(|(lo, hi)| *lo <= status && status <= *hi)
    }
}

// ------------------------------------------------------------------ parsing

/// The platform's default data directory.
pub fn default_data_dir() -> PathBuf {
    if cfg!(windows) {
        PathBuf::from(r"C:\ProgramData\Muster\agent")
    } else {
        PathBuf::from("/var/lib/muster/agent")
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            error: source,
        })?;
        let mut c = Config::parse(&text)?;
        c.path = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_owned()));
        Ok(c)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string().trim().into()))?;
        validate(raw, text.into())
    }

    /// Validates an effective configuration (the local TOML with remote
    /// sections merged in, [`crate::remote`]) with the same code as
    /// [`Config::parse`]; `local` stays the local text.
    pub fn parse_merged(merged: &str, local: std::sync::Arc<str>) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(merged).map_err(|e| ConfigError::Parse(e.to_string().trim().into()))?;
        validate(raw, local)
    }
}

fn check_file(key: &str, p: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(p)
        .map(|_| ())
        .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", p.display())))
}

fn validate(raw: RawConfig, local: std::sync::Arc<str>) -> Result<Config, ConfigError> {
    let agency = raw
        .agency
        .ok_or_else(|| ConfigError::invalid("agency", "missing"))?;
    let unit_id = match raw.unit_id {
        Some(u) => u,
        None => sysinfo::System::host_name().map_err(|e| {
            ConfigError::invalid("unit_id", format!("not set, and no hostname: {e}"))
        })?,
    };
    let unit = UnitId::new(agency, unit_id).map_err(|e| {
        let key = match &e {
            muster_proto::IdentityError::Empty { field }
            | muster_proto::IdentityError::TooLong { field, .. }
            | muster_proto::IdentityError::BadChar { field, .. } => *field,
        };
        ConfigError::invalid(key, e)
    })?;
    let data_dir = raw.data_dir.unwrap_or_else(default_data_dir);

    let mqtt = validate_mqtt(raw.mqtt, &unit)?;
    let buffer = validate_buffer(raw.buffer, &data_dir)?;
    let (uplink, channel_capacity) = validate_uplink(raw.uplink)?;
    let power = validate_power(raw.power)?;
    let mut sampling = validate_sampling(raw.sampling)?;
    sampling.network = validate_network(raw.network)?;
    let report = validate_report(raw.report)?;
    let log = validate_log(raw.log, &data_dir)?;
    let enroll = raw.enroll.map(validate_enroll).transpose()?;
    let trust = validate_trust(raw.trust, enroll.is_some())?;
    let labels = validate_labels(raw.labels)?;
    let cad = validate_cad(raw.cad)?;
    let remote = validate_remote(raw.remote)?;
    let actions = validate_actions(raw.actions)?;

    let mut probes = Vec::with_capacity(raw.probes.len());
    let mut names = HashSet::new();
    let local_credentials = local_credentials(&local);
    for (i, p) in raw.probes.into_iter().enumerate() {
        let spec = validate_probe(i, p, &unit, &local_credentials)?;
        if !names.insert(spec.name.clone()) {
            return Err(ConfigError::invalid(
                format!("probe[{i}].name"),
                format!("{:?} is used by another probe", spec.name),
            ));
        }
        probes.push(spec);
    }
    // A transaction's step results are named `<probe>.<step>`: no other
    // probe may have that name.
    for (i, p) in probes.iter().enumerate() {
        if let ProbeTarget::Transaction(t) = &p.target {
            for (j, s) in t.steps.iter().enumerate() {
                let full = format!("{}.{}", p.name, s.name);
                if names.contains(&full) {
                    return Err(ConfigError::invalid(
                        format!("probe[{i}].step[{j}].name"),
                        format!("its results are named {full:?}, the name of another probe"),
                    ));
                }
            }
        }
    }

    Ok(Config {
        unit,
        data_dir,
        mqtt,
        buffer,
        uplink,
        channel_capacity,
        power,
        sampling,
        report,
        log,
        probes,
        enroll,
        trust,
        remote,
        local,
        labels,
        cad,
        actions,
        path: None,
    })
}

// ------------------------------------------------- labels and [cad] (issue 16)

/// The key of label `key` in errors: `labels.station`, or
/// `labels."Station 7"` for a key TOML would have to quote.
fn label_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if bare {
        format!("labels.{key}")
    } else {
        format!("labels.{:?}", key.chars().take(40).collect::<String>())
    }
}

/// `labels`: at most [`muster_proto::MAX_LABELS`], each checked by the
/// wire's own rules (`muster_proto::validate_label_key`, `validate_text`),
/// values strings. TOML keys are unique, so only order is left: sorted.
fn validate_labels(raw: Option<toml::Table>) -> Result<Vec<Label>, ConfigError> {
    let table = raw.unwrap_or_default();
    if table.len() > muster_proto::MAX_LABELS {
        return Err(ConfigError::invalid(
            "labels",
            LabelError::TooMany { count: table.len() },
        ));
    }
    let mut labels = Vec::with_capacity(table.len());
    for (key, value) in table {
        let name = label_key(&key);
        muster_proto::validate_label_key(&key).map_err(|e| ConfigError::invalid(&name, e))?;
        let value = match value {
            toml::Value::String(v) => v,
            v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)) => {
                return Err(ConfigError::invalid(
                    &name,
                    format!("must be a string (quote it: {key} = \"{v}\")"),
                ));
            }
            _ => return Err(ConfigError::invalid(&name, "must be a string")),
        };
        muster_proto::validate_text("value", &value, muster_proto::MAX_LABEL_VALUE)
            .map_err(|e| ConfigError::invalid(&name, e))?;
        labels.push(Label { key, value });
    }
    labels.sort();
    Ok(labels)
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCad {
    version_file: Option<PathBuf>,
    version_command: Option<Vec<String>>,
    executable: Option<PathBuf>,
    version_timeout: Option<String>,
    version_refresh: Option<String>,
}

/// Where the watched CAD client's version comes from (`[cad]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CadVersionSource {
    /// `cad.version_file`: the first line of this file, trimmed.
    File(PathBuf),
    /// `cad.version_command`: the first line of this program's standard
    /// output; argv as given, never through a shell.
    Command(Vec<String>),
    /// `cad.executable` (Windows): the file version in the executable's
    /// `VS_VERSIONINFO` resource.
    Executable(PathBuf),
}

impl fmt::Display for CadVersionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CadVersionSource::File(p) => write!(f, "file {}", p.display()),
            CadVersionSource::Command(argv) => write!(f, "command {argv:?}"),
            CadVersionSource::Executable(p) => write!(f, "executable {}", p.display()),
        }
    }
}

/// `[cad]`: the watched CAD client's version, reported in the unit's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CadConfig {
    /// `None`: the version is not reported.
    pub version: Option<CadVersionSource>,
    /// `cad.version_timeout`: the most one reading may take (a command is
    /// killed then), default 5s (or half of `cad.version_refresh`, if
    /// that is shorter), 100ms..=60s, shorter than the refresh.
    pub version_timeout: Duration,
    /// `cad.version_refresh`: how often the version is read again (facts are
    /// sent only when something changed), default 10m, 1s..=24h.
    pub version_refresh: Duration,
}

/// The default `cad.version_timeout`.
pub const DEFAULT_VERSION_TIMEOUT: Duration = Duration::from_secs(5);
/// The default `cad.version_refresh`.
pub const DEFAULT_VERSION_REFRESH: Duration = Duration::from_secs(600);
/// `cad.version_command`: at most this many arguments, each at most
/// [`MAX_COMMAND_ARG`] bytes.
pub const MAX_COMMAND_ARGS: usize = 32;
pub const MAX_COMMAND_ARG: usize = 1024;

impl Default for CadConfig {
    fn default() -> Self {
        CadConfig {
            version: None,
            version_timeout: DEFAULT_VERSION_TIMEOUT,
            version_refresh: DEFAULT_VERSION_REFRESH,
        }
    }
}

fn absolute(key: &str, p: &Path, what: &str) -> Result<(), ConfigError> {
    // `Path::is_absolute` is the platform's notion: `C:\...` on Windows.
    if p.is_absolute() {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!(
                "{:?} is not an absolute path ({what}; a service's working directory is not yours)",
                p.display().to_string()
            ),
        ))
    }
}

fn validate_cad(raw: RawCad) -> Result<CadConfig, ConfigError> {
    let mut given = Vec::new();
    if raw.version_file.is_some() {
        given.push("cad.version_file");
    }
    if raw.version_command.is_some() {
        given.push("cad.version_command");
    }
    if raw.executable.is_some() {
        given.push("cad.executable");
    }
    if given.len() > 1 {
        return Err(ConfigError::invalid(
            given[1],
            format!("set only one of {} (both are set)", given.join(", ")),
        ));
    }
    let version = if let Some(p) = raw.version_file {
        absolute(
            "cad.version_file",
            &p,
            "the file the CAD client's version is in",
        )?;
        Some(CadVersionSource::File(p))
    } else if let Some(argv) = raw.version_command {
        check_argv("cad.version_command", &argv)?;
        Some(CadVersionSource::Command(argv))
    } else if let Some(p) = raw.executable {
        if !cfg!(windows) {
            return Err(ConfigError::invalid(
                "cad.executable",
                "is read only on Windows (an executable's file version); use cad.version_file or cad.version_command",
            ));
        }
        absolute("cad.executable", &p, "the CAD client's .exe")?;
        Some(CadVersionSource::Executable(p))
    } else {
        None
    };
    let d = CadConfig::default();
    if version.is_none() {
        for (key, set) in [
            ("cad.version_timeout", raw.version_timeout.is_some()),
            ("cad.version_refresh", raw.version_refresh.is_some()),
        ] {
            if set {
                return Err(ConfigError::invalid(
                    key,
                    "only applies with cad.version_file, cad.version_command or cad.executable",
                ));
            }
        }
        return Ok(d);
    }
    let version_refresh = duration_or(
        "cad.version_refresh",
        raw.version_refresh.as_deref(),
        d.version_refresh,
    )?;
    if version_refresh < Duration::from_secs(1) || version_refresh > Duration::from_secs(86_400) {
        return Err(ConfigError::invalid(
            "cad.version_refresh",
            "must be between 1s and 24h",
        ));
    }
    let version_timeout = duration_or(
        "cad.version_timeout",
        raw.version_timeout.as_deref(),
        d.version_timeout.min(version_refresh / 2),
    )?;
    if version_timeout < Duration::from_millis(100) || version_timeout > Duration::from_secs(60) {
        return Err(ConfigError::invalid(
            "cad.version_timeout",
            "must be between 100ms and 60s",
        ));
    }
    if version_timeout >= version_refresh {
        return Err(ConfigError::invalid(
            "cad.version_timeout",
            "must be shorter than cad.version_refresh",
        ));
    }
    Ok(CadConfig {
        version,
        version_timeout,
        version_refresh,
    })
}

// --------------------------------------------------------- [[action]] (issue 17)

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAction {
    name: Option<String>,
    kind: Option<String>,
    process: Option<String>,
    start: Option<Vec<String>>,
    service: Option<String>,
    interface: Option<String>,
    argv: Option<Vec<String>>,
    timeout: Option<String>,
    rate: Option<String>,
    output_max: Option<u64>,
    params: Option<std::collections::BTreeMap<String, RawParam>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawParam {
    #[serde(rename = "type")]
    ty: Option<String>,
    pattern: Option<String>,
    min: Option<i64>,
    max: Option<i64>,
}

/// The default `action[].timeout`.
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// The default `action[].output_max` (bytes of stdout, and of stderr).
pub const DEFAULT_ACTION_OUTPUT: usize = 4096;
/// Most `[[action]]`s in one config.
pub const MAX_ACTIONS: usize = 64;
/// Longest `action[].params.*.pattern`, in bytes.
pub const MAX_PATTERN: usize = 1024;

/// One `[[action]]`: something the collector may ask this agent to run
/// (`crate::action`).
#[derive(Debug, Clone)]
pub struct ActionSpec {
    /// `[a-z0-9_-]`, starting with a letter (`muster_proto::action::check_name`).
    pub name: String,
    pub kind: ActionKind,
    /// Killed (its whole process group) after this; 1 s to 10 min, default 30 s.
    pub timeout: Duration,
    /// At most this many starts per window on this unit (`"3 per 1h"`,
    /// default [`DEFAULT_ACTION_RATE`]; `muster_base::rate`).
    pub rate: muster_base::rate::Rate,
    /// Bytes of stdout, and of stderr, kept in the audit (default 4096, at
    /// most `muster_proto::action::MAX_ACTION_OUTPUT`).
    pub output_max: usize,
}

/// The default `action[].rate`: 6 per 1h.
pub const DEFAULT_ACTION_RATE: muster_base::rate::Rate = muster_base::rate::Rate {
    max: 6,
    per: Duration::from_secs(3600),
};

/// What an action does: a small typed set, never a shell.
#[derive(Debug, Clone)]
pub enum ActionKind {
    /// A Windows service or a systemd unit, restarted through the service
    /// manager (`service`).
    RestartService {
        service: String,
    },
    /// Every process named `process` (as the process sampler matches names)
    /// is killed, then `start` (absolute program path) is started detached.
    RestartProcess {
        process: String,
        start: Vec<String>,
    },
    FlushDns,
    /// `interface`: `None` renews every interface.
    RenewDhcp {
        interface: Option<String>,
    },
    /// The agent's status, the tail of its log file and its `once` output.
    CollectDiagnostics,
    /// A fixed argv (absolute program path); `{name}` arguments are
    /// replaced, whole, by the request's validated parameters.
    Command {
        argv: Vec<ArgPart>,
        params: std::collections::BTreeMap<String, ParamType>,
    },
}

impl ActionKind {
    /// The config's name of the kind.
    pub fn as_str(&self) -> &'static str {
        match self {
            ActionKind::RestartService { .. } => "restart_service",
            ActionKind::RestartProcess { .. } => "restart_process",
            ActionKind::FlushDns => "flush_dns",
            ActionKind::RenewDhcp { .. } => "renew_dhcp",
            ActionKind::CollectDiagnostics => "collect_diagnostics",
            ActionKind::Command { .. } => "command",
        }
    }
}

/// One argument of a `command`'s argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgPart {
    Literal(String),
    /// `"{name}"`: the value of parameter `name`, as one argument.
    Param(String),
}

/// `action[].params.<name>.type`: what a value must be. Whatever the type,
/// a value with a control character is refused (`crate::action::decide`).
#[derive(Debug, Clone)]
pub enum ParamType {
    /// A DNS name: dot-separated labels of `A-Z a-z 0-9 -`, not starting
    /// or ending with `-`, ≤ 63 bytes each, ≤ 253 in all.
    Hostname,
    /// An IPv4 or IPv6 address (passed on in its canonical form).
    Ip,
    /// A decimal integer within `min..=max` (passed on canonical).
    Integer { min: Option<i64>, max: Option<i64> },
    /// A string the whole of which matches `pattern`: the agent compiles
    /// `\A(?:pattern)\z`, never multi-line.
    String {
        pattern: String,
        regex: regex_lite::Regex,
    },
}

impl ParamType {
    pub fn as_str(&self) -> &'static str {
        match self {
            ParamType::Hostname => "hostname",
            ParamType::Ip => "ip",
            ParamType::Integer { .. } => "integer",
            ParamType::String { .. } => "string",
        }
    }
}

const ACTION_KINDS: &str =
    "restart_service, restart_process, flush_dns, renew_dhcp, collect_diagnostics, command";

/// A placeholder argument's name: `"{host}"` → `host`.
fn placeholder(arg: &str) -> Option<&str> {
    let name = arg.strip_prefix('{')?.strip_suffix('}')?;
    muster_proto::action::check_name("", name, muster_proto::action::MAX_PARAM_NAME)
        .ok()
        .map(|()| name)
}

/// Whether `arg` holds a placeholder that is not the whole argument
/// (`"--host={host}"`): refused, a value is only ever a whole argument.
fn embedded_placeholder(arg: &str) -> bool {
    arg.char_indices().filter(|(_, c)| *c == '{').any(|(i, _)| {
        arg[i..]
            .find('}')
            .is_some_and(|j| placeholder(&arg[i..=i + j]).is_some())
    })
}

/// An argv from the config: 1 to [`MAX_COMMAND_ARGS`] strings of at most
/// [`MAX_COMMAND_ARG`] bytes without NUL, the program an absolute path.
fn check_argv(key: &str, argv: &[String]) -> Result<(), ConfigError> {
    if argv.is_empty() || argv.len() > MAX_COMMAND_ARGS {
        return Err(ConfigError::invalid(
            key,
            format!(
                "must list the program and its arguments, 1 to {MAX_COMMAND_ARGS} strings (run directly, never through a shell)"
            ),
        ));
    }
    for (i, a) in argv.iter().enumerate() {
        if a.len() > MAX_COMMAND_ARG || a.contains('\0') {
            return Err(ConfigError::invalid(
                format!("{key}[{i}]"),
                format!("must be at most {MAX_COMMAND_ARG} bytes without NUL"),
            ));
        }
    }
    absolute(
        &format!("{key}[0]"),
        Path::new(&argv[0]),
        "the program is not looked up in PATH",
    )
}

/// A pattern with an inline flag group that turns on multi-line (`(?m)`,
/// `(?im:…)`): refused, patterns are never multi-line.
fn multi_line_flag(pattern: &str) -> bool {
    pattern.match_indices("(?").any(|(i, _)| {
        pattern[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .any(|c| c == 'm')
    })
}

fn validate_param(key: &str, raw: RawParam) -> Result<ParamType, ConfigError> {
    let k = |f: &str| format!("{key}.{f}");
    let ty = raw.ty.ok_or_else(|| {
        ConfigError::invalid(k("type"), "missing (hostname, ip, integer, string)")
    })?;
    let forbid = |f: &str, set: bool| {
        if set {
            Err(ConfigError::invalid(
                k(f),
                format!("does not apply to type {ty:?}"),
            ))
        } else {
            Ok(())
        }
    };
    match ty.as_str() {
        "hostname" | "ip" => {
            forbid("pattern", raw.pattern.is_some())?;
            forbid("min", raw.min.is_some())?;
            forbid("max", raw.max.is_some())?;
            Ok(if ty == "ip" {
                ParamType::Ip
            } else {
                ParamType::Hostname
            })
        }
        "integer" => {
            forbid("pattern", raw.pattern.is_some())?;
            if let (Some(lo), Some(hi)) = (raw.min, raw.max)
                && lo > hi
            {
                return Err(ConfigError::invalid(k("max"), "is below min"));
            }
            Ok(ParamType::Integer {
                min: raw.min,
                max: raw.max,
            })
        }
        "string" => {
            forbid("min", raw.min.is_some())?;
            forbid("max", raw.max.is_some())?;
            let pattern = raw.pattern.ok_or_else(|| {
                ConfigError::invalid(
                    k("pattern"),
                    "missing (a string parameter needs the pattern its whole value must match)",
                )
            })?;
            if pattern.is_empty() || pattern.len() > MAX_PATTERN {
                return Err(ConfigError::invalid(
                    k("pattern"),
                    format!("must be 1 to {MAX_PATTERN} bytes"),
                ));
            }
            if multi_line_flag(&pattern) {
                return Err(ConfigError::invalid(
                    k("pattern"),
                    "must not turn on multi-line matching ((?m)): a value is matched whole",
                ));
            }
            let regex = regex_lite::RegexBuilder::new(&format!(r"\A(?:{pattern})\z"))
                .multi_line(false)
                .build()
                .map_err(|e| ConfigError::invalid(k("pattern"), format!("not a regex: {e}")))?;
            Ok(ParamType::String { pattern, regex })
        }
        other => Err(ConfigError::invalid(
            k("type"),
            format!("{other:?} is not one of hostname, ip, integer, string"),
        )),
    }
}

fn validate_action(i: usize, raw: RawAction) -> Result<ActionSpec, ConfigError> {
    let k = |f: &str| format!("action[{i}].{f}");
    let name = raw
        .name
        .ok_or_else(|| ConfigError::invalid(k("name"), "missing"))?;
    muster_proto::action::check_name("action name", &name, muster_proto::action::MAX_ACTION_NAME)
        .map_err(|e| ConfigError::invalid(k("name"), e))?;
    let kind = raw
        .kind
        .ok_or_else(|| ConfigError::invalid(k("kind"), format!("missing ({ACTION_KINDS})")))?;
    // Which kind-specific keys are set, and which the kind takes.
    let set = [
        ("process", raw.process.is_some()),
        ("start", raw.start.is_some()),
        ("service", raw.service.is_some()),
        ("interface", raw.interface.is_some()),
        ("argv", raw.argv.is_some()),
        ("params", raw.params.is_some()),
    ];
    let takes: &[&str] = match kind.as_str() {
        "restart_service" => &["service"],
        "restart_process" => &["process", "start"],
        "flush_dns" | "collect_diagnostics" => &[],
        "renew_dhcp" => &["interface"],
        "command" => &["argv", "params"],
        other => {
            return Err(ConfigError::invalid(
                k("kind"),
                format!("{other:?} is not one of {ACTION_KINDS}"),
            ));
        }
    };
    if let Some((f, _)) = set.iter().find(|(f, s)| *s && !takes.contains(f)) {
        return Err(ConfigError::invalid(
            k(f),
            format!("does not apply to kind {kind:?}"),
        ));
    }
    let missing = |f: &str| ConfigError::invalid(k(f), format!("missing (kind {kind:?})"));
    let text = |f: &str, v: &str, max: usize| {
        if v.is_empty()
            || v.len() > max
            || v.chars().any(|c| c.is_control() || c == '/')
            || v.trim() != v
        {
            Err(ConfigError::invalid(
                k(f),
                format!(
                    "{v:?} must be 1 to {max} bytes, without '/', control characters or surrounding spaces"
                ),
            ))
        } else {
            Ok(())
        }
    };
    let kind = match kind.as_str() {
        "restart_service" => {
            let service = raw.service.ok_or_else(|| missing("service"))?;
            text("service", &service, 256)?;
            ActionKind::RestartService { service }
        }
        "restart_process" => {
            let process = raw.process.ok_or_else(|| missing("process"))?;
            text("process", &process, 255)?;
            let start = raw.start.ok_or_else(|| missing("start"))?;
            check_argv(&k("start"), &start)?;
            ActionKind::RestartProcess { process, start }
        }
        "flush_dns" => ActionKind::FlushDns,
        "collect_diagnostics" => ActionKind::CollectDiagnostics,
        "renew_dhcp" => {
            if let Some(ifname) = &raw.interface {
                text("interface", ifname, 64)?;
                if ifname.contains(' ') || ifname.starts_with('-') {
                    return Err(ConfigError::invalid(
                        k("interface"),
                        format!("{ifname:?} is not an interface name"),
                    ));
                }
            }
            ActionKind::RenewDhcp {
                interface: raw.interface,
            }
        }
        _ => {
            let argv = raw.argv.ok_or_else(|| missing("argv"))?;
            check_argv(&k("argv"), &argv)?;
            let raw_params = raw.params.unwrap_or_default();
            if raw_params.len() > muster_proto::action::MAX_ACTION_PARAMS {
                return Err(ConfigError::invalid(
                    k("params"),
                    format!(
                        "{} parameters; at most {}",
                        raw_params.len(),
                        muster_proto::action::MAX_ACTION_PARAMS
                    ),
                ));
            }
            let mut params = std::collections::BTreeMap::new();
            for (pname, p) in raw_params {
                let key = format!("action[{i}].params.{pname}");
                muster_proto::action::check_name(
                    "parameter name",
                    &pname,
                    muster_proto::action::MAX_PARAM_NAME,
                )
                .map_err(|e| ConfigError::invalid(&key, e))?;
                params.insert(pname, validate_param(&key, p)?);
            }
            let mut parts = Vec::with_capacity(argv.len());
            let mut used = HashSet::new();
            for (j, a) in argv.into_iter().enumerate() {
                let akey = k(&format!("argv[{j}]"));
                if let Some(p) = placeholder(&a) {
                    if j == 0 {
                        return Err(ConfigError::invalid(
                            akey,
                            "the program cannot be a parameter",
                        ));
                    }
                    if !params.contains_key(p) {
                        return Err(ConfigError::invalid(
                            akey,
                            format!("{a:?} names no [action.params.{p}]"),
                        ));
                    }
                    if !used.insert(p.to_owned()) {
                        return Err(ConfigError::invalid(
                            akey,
                            format!("{a:?} is used twice (each parameter is one argument)"),
                        ));
                    }
                    parts.push(ArgPart::Param(p.to_owned()));
                } else if embedded_placeholder(&a) {
                    return Err(ConfigError::invalid(
                        akey,
                        format!("{a:?}: a placeholder must be a whole argument, like \"{{host}}\""),
                    ));
                } else {
                    parts.push(ArgPart::Literal(a));
                }
            }
            if let Some(unused) = params.keys().find(|p| !used.contains(*p)) {
                return Err(ConfigError::invalid(
                    format!("action[{i}].params.{unused}"),
                    format!("is not used in argv (add \"{{{unused}}}\" as an argument)"),
                ));
            }
            ActionKind::Command {
                argv: parts,
                params,
            }
        }
    };
    let timeout = duration_or(
        &k("timeout"),
        raw.timeout.as_deref(),
        DEFAULT_ACTION_TIMEOUT,
    )?;
    if timeout < Duration::from_secs(1) || timeout > Duration::from_secs(600) {
        return Err(ConfigError::invalid(
            k("timeout"),
            "must be between 1s and 10min",
        ));
    }
    let rate = match &raw.rate {
        Some(r) => muster_base::rate::rate(&k("rate"), r)?,
        None => DEFAULT_ACTION_RATE,
    };
    let output_max = match raw.output_max {
        None => DEFAULT_ACTION_OUTPUT,
        Some(n) if (1..=muster_proto::action::MAX_ACTION_OUTPUT as u64).contains(&n) => n as usize,
        Some(_) => {
            return Err(ConfigError::invalid(
                k("output_max"),
                format!(
                    "must be between 1 and {} bytes",
                    muster_proto::action::MAX_ACTION_OUTPUT
                ),
            ));
        }
    };
    Ok(ActionSpec {
        name,
        kind,
        timeout,
        rate,
        output_max,
    })
}

fn validate_actions(raw: Vec<RawAction>) -> Result<Vec<ActionSpec>, ConfigError> {
    if raw.len() > MAX_ACTIONS {
        return Err(ConfigError::invalid(
            "action",
            format!("{} actions; at most {MAX_ACTIONS}", raw.len()),
        ));
    }
    let mut out: Vec<ActionSpec> = Vec::with_capacity(raw.len());
    for (i, a) in raw.into_iter().enumerate() {
        let spec = validate_action(i, a)?;
        if out.iter().any(|o| o.name == spec.name) {
            return Err(ConfigError::invalid(
                format!("action[{i}].name"),
                format!("{:?} is used by another action", spec.name),
            ));
        }
        out.push(spec);
    }
    Ok(out)
}

// ------------------------------------------------------------------ [power]

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPower {
    announce_timeout: Option<String>,
}

fn validate_power(raw: RawPower) -> Result<crate::power::PowerSettings, ConfigError> {
    let d = crate::power::PowerSettings::default();
    let announce_timeout = duration_or(
        "power.announce_timeout",
        raw.announce_timeout.as_deref(),
        d.announce_timeout,
    )?;
    if announce_timeout < Duration::from_millis(100)
        || announce_timeout > crate::power::MAX_ANNOUNCE_TIMEOUT
    {
        return Err(ConfigError::invalid(
            "power.announce_timeout",
            format!(
                "must be between 100ms and {:?} (logind's delay lock lasts 5s by default)",
                crate::power::MAX_ANNOUNCE_TIMEOUT
            ),
        ));
    }
    Ok(crate::power::PowerSettings { announce_timeout })
}

fn validate_trust(raw: RawTrust, enrolling: bool) -> Result<TrustConfig, ConfigError> {
    let texts = raw.collector_keys.unwrap_or_default();
    if texts.len() > muster_proto::sign::MAX_TRUSTED_KEYS {
        return Err(ConfigError::invalid(
            "trust.collector_keys",
            format!("at most {} keys", muster_proto::sign::MAX_TRUSTED_KEYS),
        ));
    }
    let mut collector_keys = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        let k: muster_proto::PublicKey = t
            .parse()
            .map_err(|e| ConfigError::invalid(format!("trust.collector_keys[{i}]"), e))?;
        if !collector_keys.contains(&k) {
            collector_keys.push(k);
        }
    }
    Ok(TrustConfig {
        collector_keys,
        // Enrolment writes the collector's keys to `trusted_keys` on first start.
        enrolling,
    })
}

/// The shortest enrol token the collector accepts (its `MIN_TOKEN_LEN`).
const MIN_ENROLL_TOKEN_LEN: usize = 16;

fn validate_enroll(raw: RawEnroll) -> Result<EnrollSettings, ConfigError> {
    let url = raw
        .url
        .ok_or_else(|| ConfigError::invalid("enroll.url", "missing"))?;
    let bad = |why: &str| ConfigError::invalid("enroll.url", format!("{url:?} {why}"));
    let uri: hyper::Uri = url.parse().map_err(|_| bad("is not a URL"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("must start with http:// or https://")),
    };
    if uri.query().is_some() {
        return Err(bad("must not have a query"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(bad("must not carry credentials (use enroll.token)"));
    }
    let (host, port) = uri_host_port(&uri, if tls { 443 } else { 80 })
        .ok_or_else(|| bad("has no host or a bad port"))?;
    let token = match (raw.token, raw.token_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "enroll.token_file",
                "set either enroll.token or enroll.token_file, not both",
            ));
        }
        (Some(t), None) => t,
        (None, Some(f)) => std::fs::read_to_string(&f)
            .map_err(|e| {
                ConfigError::invalid("enroll.token_file", format!("{}: {e}", f.display()))
            })?
            .trim()
            .to_owned(),
        (None, None) => {
            return Err(ConfigError::invalid(
                "enroll.token",
                "missing (set enroll.token or enroll.token_file)",
            ));
        }
    };
    let key = "enroll.token";
    if token.len() < MIN_ENROLL_TOKEN_LEN {
        return Err(ConfigError::invalid(
            key,
            format!("must be at least {MIN_ENROLL_TOKEN_LEN} characters"),
        ));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::invalid(key, "must not contain whitespace"));
    }
    if let Some(ca) = &raw.ca_file {
        if !tls {
            return Err(ConfigError::invalid(
                "enroll.ca_file",
                "is only used with an https:// url",
            ));
        }
        check_file("enroll.ca_file", ca)?;
    }
    let base = uri.path().trim_end_matches('/');
    Ok(EnrollSettings {
        host,
        port,
        tls,
        authority: uri.authority().map(|a| a.to_string()).unwrap_or_default(),
        path: format!("{base}/api/v1/enroll"),
        token,
        ca_file: raw.ca_file,
    })
}

/// Splits a URL's authority into (host without brackets, port).
fn uri_host_port(uri: &hyper::Uri, default_port: u16) -> Option<(String, u16)> {
    let host = uri.host()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    // `http` drops a port that does not fit in u16 instead of refusing it.
    let auth = uri.authority()?.as_str();
    let auth = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    let after_host = auth.rsplit_once(']').map_or(auth, |(_, p)| p);
    let port = match uri.port() {
        None if after_host.contains(':') => return None,
        None => default_port,
        Some(p) => p.as_str().parse::<u16>().ok().filter(|p| *p != 0)?,
    };
    Some((host.to_owned(), port))
}

/// At most this many brokers in `mqtt.urls` (a cluster is 3 to 5 nodes).
const MAX_BROKERS: usize = 16;

fn validate_mqtt(raw: Option<RawMqtt>, unit: &UnitId) -> Result<MqttSettings, ConfigError> {
    let raw = raw.ok_or_else(|| ConfigError::invalid("mqtt.url", "missing ([mqtt] table)"))?;
    let (key, urls) = match (raw.url, raw.urls) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "mqtt.urls",
                "set either mqtt.url or mqtt.urls, not both",
            ));
        }
        (Some(u), None) => ("mqtt.url", vec![u]),
        (None, Some(us)) => ("mqtt.urls", us),
        (None, None) => return Err(ConfigError::invalid("mqtt.url", "missing")),
    };
    if urls.is_empty() || urls.len() > MAX_BROKERS {
        return Err(ConfigError::invalid(
            key,
            format!("must list 1 to {MAX_BROKERS} brokers"),
        ));
    }
    let mut brokers: Vec<(String, u16)> = Vec::with_capacity(urls.len());
    let mut scheme = None;
    for url in &urls {
        let u = MqttUrl::parse(url).map_err(|m| ConfigError::invalid(key, m))?;
        if *scheme.get_or_insert(u.scheme) != u.scheme {
            return Err(ConfigError::invalid(
                key,
                "mixes mqtt:// and mqtts:// (one TLS setting serves every broker)",
            ));
        }
        if brokers.iter().any(|(h, p)| *h == u.host && *p == u.port) {
            return Err(ConfigError::invalid(
                key,
                format!("{url:?} is listed twice"),
            ));
        }
        brokers.push((u.host, u.port));
    }
    let tls = scheme == Some(MqttScheme::Tls);
    let client_id = raw
        .client_id
        .unwrap_or_else(|| format!("muster-{}-{}", unit.agency, unit.unit));
    if client_id.is_empty() || client_id.len() > 128 {
        return Err(ConfigError::invalid(
            "mqtt.client_id",
            "must be 1 to 128 bytes",
        ));
    }
    let keepalive = duration_or(
        "mqtt.keepalive",
        raw.keepalive.as_deref(),
        Duration::from_secs(30),
    )?;
    if keepalive < Duration::from_secs(5) || keepalive > Duration::from_secs(65535) {
        return Err(ConfigError::invalid(
            "mqtt.keepalive",
            "must be between 5s and 65535s",
        ));
    }
    let connect_timeout = duration_or(
        "mqtt.connect_timeout",
        raw.connect_timeout.as_deref(),
        Duration::from_secs(15),
    )?;
    if connect_timeout.is_zero() {
        return Err(ConfigError::invalid("mqtt.connect_timeout", "must be > 0"));
    }
    let password = match (raw.password, raw.password_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "mqtt.password_file",
                "set either mqtt.password or mqtt.password_file, not both",
            ));
        }
        (Some(p), None) => Some(p),
        (None, Some(f)) => Some(
            std::fs::read_to_string(&f)
                .map_err(|e| {
                    ConfigError::invalid("mqtt.password_file", format!("{}: {e}", f.display()))
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
        (None, None) => None,
    };
    if password.is_some() && raw.username.is_none() {
        return Err(ConfigError::invalid(
            "mqtt.username",
            "missing (a password needs a username)",
        ));
    }
    if let Some(ca) = &raw.ca_file {
        check_file("mqtt.ca_file", ca)?;
    }
    let client_cert = match (raw.cert_file, raw.key_file) {
        (Some(c), Some(k)) => {
            check_file("mqtt.cert_file", &c)?;
            check_file("mqtt.key_file", &k)?;
            Some((c, k))
        }
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                "mqtt.key_file",
                "missing (mqtt.cert_file is set)",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "mqtt.cert_file",
                "missing (mqtt.key_file is set)",
            ));
        }
        (None, None) => None,
    };
    if !tls && (raw.ca_file.is_some() || client_cert.is_some()) {
        return Err(ConfigError::invalid(
            key,
            "TLS files are set but the URL is not mqtts://",
        ));
    }
    Ok(MqttSettings {
        brokers,
        tls,
        client_id,
        keepalive,
        connect_timeout,
        username: raw.username,
        password,
        ca_file: raw.ca_file,
        client_cert,
    })
}

fn validate_buffer(raw: RawBuffer, data_dir: &Path) -> Result<BufferSettings, ConfigError> {
    let mut b = BufferSettings::new(raw.path.unwrap_or_else(|| data_dir.join("buffer")));
    if let Some(max) = raw
        .max_bytes
        .as_deref()
        .map(|s| bytes("buffer.max_bytes", s))
        .transpose()?
    {
        if max < 1 << 20 {
            return Err(ConfigError::invalid(
                "buffer.max_bytes",
                "must be at least 1MiB",
            ));
        }
        b.max_bytes = max;
    }
    b.max_age = raw
        .max_age
        .as_deref()
        .map(|s| duration("buffer.max_age", s))
        .transpose()?;
    if b.max_age.is_some_and(|d| d.is_zero()) {
        return Err(ConfigError::invalid("buffer.max_age", "must be > 0"));
    }
    b.on_full = match raw.on_full.as_deref() {
        None | Some("drop_oldest") => {
            if raw.thin_keep_one_in.is_some() {
                return Err(ConfigError::invalid(
                    "buffer.thin_keep_one_in",
                    "only applies with buffer.on_full = \"thin\"",
                ));
            }
            FullPolicy::DropOldest
        }
        Some("thin") => {
            let n = raw.thin_keep_one_in.unwrap_or(4);
            if n < 2 {
                return Err(ConfigError::invalid(
                    "buffer.thin_keep_one_in",
                    "must be at least 2",
                ));
            }
            FullPolicy::Thin { keep_one_in: n }
        }
        Some(other) => {
            return Err(ConfigError::invalid(
                "buffer.on_full",
                format!("{other:?} is not one of \"drop_oldest\", \"thin\""),
            ));
        }
    };
    b.flush_interval = duration_or(
        "buffer.flush_interval",
        raw.flush_interval.as_deref(),
        BufferSettings::DEFAULT_FLUSH_INTERVAL,
    )?;
    if b.flush_interval.is_zero() || b.flush_interval > Duration::from_secs(60) {
        return Err(ConfigError::invalid(
            "buffer.flush_interval",
            "must be between 1ms and 60s",
        ));
    }
    Ok(b)
}

fn validate_uplink(raw: RawUplink) -> Result<(UplinkSettings, usize), ConfigError> {
    let d = UplinkSettings::default();
    let max_inflight = raw.max_inflight.unwrap_or(d.max_inflight);
    if max_inflight == 0 {
        return Err(ConfigError::invalid("uplink.max_inflight", "must be >= 1"));
    }
    let batch_max_bytes = match raw
        .batch_max_bytes
        .as_deref()
        .map(|s| bytes("uplink.batch_max_bytes", s))
        .transpose()?
    {
        None => d.batch_max_bytes,
        Some(b) if (1024..=muster_proto::MAX_MESSAGE_BYTES as u64).contains(&b) => b as u32,
        Some(_) => {
            return Err(ConfigError::invalid(
                "uplink.batch_max_bytes",
                format!(
                    "must be between 1KiB and {} bytes",
                    muster_proto::MAX_MESSAGE_BYTES
                ),
            ));
        }
    };
    let replay_bytes_per_sec = raw
        .replay_bytes_per_sec
        .as_deref()
        .map(|s| bytes("uplink.replay_bytes_per_sec", s))
        .transpose()?;
    if replay_bytes_per_sec == Some(0) {
        return Err(ConfigError::invalid(
            "uplink.replay_bytes_per_sec",
            "must be > 0 (leave it out for no cap)",
        ));
    }
    let u = UplinkSettings {
        max_inflight,
        batch_max_bytes,
        replay_bytes_per_sec,
        ack_timeout: duration_or(
            "uplink.ack_timeout",
            raw.ack_timeout.as_deref(),
            d.ack_timeout,
        )?,
        reconnect_min: duration_or(
            "uplink.reconnect_min",
            raw.reconnect_min.as_deref(),
            d.reconnect_min,
        )?,
        reconnect_max: duration_or(
            "uplink.reconnect_max",
            raw.reconnect_max.as_deref(),
            d.reconnect_max,
        )?,
        heartbeat_interval: duration_or(
            "uplink.heartbeat_interval",
            raw.heartbeat_interval.as_deref(),
            d.heartbeat_interval,
        )?,
    };
    if u.ack_timeout.is_zero() {
        return Err(ConfigError::invalid("uplink.ack_timeout", "must be > 0"));
    }
    if u.reconnect_min.is_zero() {
        return Err(ConfigError::invalid("uplink.reconnect_min", "must be > 0"));
    }
    if u.reconnect_max < u.reconnect_min {
        return Err(ConfigError::invalid(
            "uplink.reconnect_max",
            "must not be below uplink.reconnect_min",
        ));
    }
    if u.heartbeat_interval < Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            "uplink.heartbeat_interval",
            "must be at least 1s",
        ));
    }
    let cap = raw.channel_capacity.unwrap_or(1024);
    if !(16..=1_000_000).contains(&cap) {
        return Err(ConfigError::invalid(
            "uplink.channel_capacity",
            "must be between 16 and 1000000",
        ));
    }
    Ok((u, cap))
}

const COLLECTOR_NAMES: [(&str, SamplerFamily); 11] = [
    ("cpu", SamplerFamily::Cpu),
    ("load", SamplerFamily::Load),
    ("memory", SamplerFamily::Memory),
    ("disks", SamplerFamily::Disks),
    ("networks", SamplerFamily::Networks),
    ("processes", SamplerFamily::Processes),
    ("uptime", SamplerFamily::Uptime),
    ("route", SamplerFamily::Route),
    ("wifi", SamplerFamily::Wifi),
    ("cellular", SamplerFamily::Cellular),
    ("vpn", SamplerFamily::Vpn),
];

/// The config name of a collector (`cpu`, `disks`, ...).
pub fn collector_name(c: SamplerFamily) -> &'static str {
    COLLECTOR_NAMES
        .iter()
        .find(|(_, k)| *k == c)
        .map(|(n, _)| *n)
        .unwrap_or("?")
}

fn validate_sampling(raw: RawSampling) -> Result<SamplingConfig, ConfigError> {
    let interval = duration_or(
        "sampling.interval",
        raw.interval.as_deref(),
        Duration::from_secs(5),
    )?;
    if interval < Duration::from_secs(1) || interval > Duration::from_secs(3600) {
        return Err(ConfigError::invalid(
            "sampling.interval",
            "must be between 1s and 1h",
        ));
    }
    let processes = raw.processes.unwrap_or_default();
    for (i, p) in processes.iter().enumerate() {
        if p.trim().is_empty() || p.len() > 255 {
            return Err(ConfigError::invalid(
                format!("sampling.processes[{i}]"),
                "must be a non-empty process name",
            ));
        }
    }
    let collectors = match raw.collectors {
        None => COLLECTOR_NAMES.iter().map(|(_, c)| *c).collect(),
        Some(names) => {
            let mut out = Vec::new();
            for (i, n) in names.iter().enumerate() {
                let c = COLLECTOR_NAMES
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, c)| *c)
                    .ok_or_else(|| {
                        ConfigError::invalid(
                            format!("sampling.collectors[{i}]"),
                            format!(
                                "{n:?} is not one of cpu, load, memory, disks, networks, processes, uptime, route, wifi, cellular, vpn"
                            ),
                        )
                    })?;
                if !out.contains(&c) {
                    out.push(c);
                }
            }
            out
        }
    };
    Ok(SamplingConfig {
        interval,
        processes,
        collectors,
        network: NetworkConfig::default(),
    })
}

// ------------------------------------------------------------- [network] (issue 12)

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    vpn: Option<Vec<String>>,
    cellular: Option<String>,
    cellular_timeout: Option<String>,
    cellular_refresh: Option<String>,
}

/// At most this many `network.vpn` patterns.
pub const MAX_VPN_PATTERNS: usize = 16;

/// `[network]`: the network context sent with every host sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `network.vpn`: interface name globs (`*`, `?`) of the tunnels to
    /// report up/down (`tun0`, `wg*`, `NetMotion*`); at most 16, each at
    /// most 64 bytes. Empty: no VPN is expected.
    pub vpn: Vec<String>,
    /// `network.cellular`: `auto` (default: report a modem if ModemManager
    /// has one), `required` (no modem is a failure), `off`.
    pub cellular: CellularMode,
    /// `network.cellular_timeout`: how long a sample waits for
    /// ModemManager, default 1s, 100ms..=10s.
    pub cellular_timeout: Duration,
    /// `network.cellular_refresh`: how often the modem's figures are
    /// refreshed (ModemManager's `Signal.Setup(rate)`) and so asked for; a
    /// reading younger than this is reused. Default 10s, 1s..=1h.
    pub cellular_refresh: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            vpn: Vec::new(),
            cellular: CellularMode::Auto,
            cellular_timeout: Duration::from_secs(1),
            cellular_refresh: DEFAULT_CELLULAR_REFRESH,
        }
    }
}

/// The default `network.cellular_refresh`.
pub const DEFAULT_CELLULAR_REFRESH: Duration = Duration::from_secs(10);

/// `network.cellular`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellularMode {
    Auto,
    Required,
    Off,
}

fn validate_network(raw: RawNetwork) -> Result<NetworkConfig, ConfigError> {
    let vpn = raw.vpn.unwrap_or_default();
    if vpn.len() > MAX_VPN_PATTERNS {
        return Err(ConfigError::invalid(
            "network.vpn",
            format!("{} patterns; at most {MAX_VPN_PATTERNS}", vpn.len()),
        ));
    }
    for (i, p) in vpn.iter().enumerate() {
        if p.is_empty() || p.len() > 64 || p.chars().any(|c| c.is_control() || c == '/') {
            return Err(ConfigError::invalid(
                format!("network.vpn[{i}]"),
                format!("{p:?} is not an interface name or glob (1..=64 bytes, no '/')"),
            ));
        }
    }
    let cellular = match raw.cellular.as_deref() {
        None | Some("auto") => CellularMode::Auto,
        Some("required") => CellularMode::Required,
        Some("off") => CellularMode::Off,
        Some(o) => {
            return Err(ConfigError::invalid(
                "network.cellular",
                format!("{o:?} is not one of \"auto\", \"required\", \"off\""),
            ));
        }
    };
    let cellular_timeout = duration_or(
        "network.cellular_timeout",
        raw.cellular_timeout.as_deref(),
        Duration::from_secs(1),
    )?;
    if cellular_timeout < Duration::from_millis(100) || cellular_timeout > Duration::from_secs(10) {
        return Err(ConfigError::invalid(
            "network.cellular_timeout",
            "must be between 100ms and 10s",
        ));
    }
    let cellular_refresh = duration_or(
        "network.cellular_refresh",
        raw.cellular_refresh.as_deref(),
        DEFAULT_CELLULAR_REFRESH,
    )?;
    if cellular_refresh < Duration::from_secs(1) || cellular_refresh > Duration::from_secs(3600) {
        return Err(ConfigError::invalid(
            "network.cellular_refresh",
            "must be between 1s and 1h",
        ));
    }
    Ok(NetworkConfig {
        vpn,
        cellular,
        cellular_timeout,
        cellular_refresh,
    })
}

fn validate_report(raw: RawReport) -> Result<Option<ReportConfig>, ConfigError> {
    let Some(listen) = raw.listen else {
        if raw.max_per_sec.is_some() {
            return Err(ConfigError::invalid(
                "report.listen",
                "missing (report.max_per_sec is set)",
            ));
        }
        return Ok(None);
    };
    let addr: SocketAddr = listen.parse().map_err(|_| {
        ConfigError::invalid(
            "report.listen",
            format!("{listen:?} is not an address like \"127.0.0.1:8125\""),
        )
    })?;
    if !addr.ip().is_loopback() {
        return Err(ConfigError::invalid(
            "report.listen",
            format!("{listen:?} is not a loopback address (the endpoint is loopback-only)"),
        ));
    }
    let max_per_sec = raw.max_per_sec.unwrap_or(50);
    if max_per_sec == 0 {
        return Err(ConfigError::invalid("report.max_per_sec", "must be >= 1"));
    }
    Ok(Some(ReportConfig {
        listen: addr,
        max_per_sec,
    }))
}

fn validate_log(raw: RawLog, data_dir: &Path) -> Result<LogConfig, ConfigError> {
    let level = raw.level.unwrap_or_else(|| "info".into());
    if let Err(e) = crate::service::log::parse_filter(&level) {
        return Err(ConfigError::invalid(
            "log.level",
            format!(
                "{level:?} is not a log filter: {e} (e.g. \"info\" or \"warn,muster_agent=debug\")"
            ),
        ));
    }
    let target = match raw.to.as_deref() {
        None | Some("stderr") => {
            if raw.dir.is_some() || raw.rotation.is_some() || raw.max_files.is_some() {
                return Err(ConfigError::invalid(
                    "log.to",
                    "log.dir/rotation/max_files need log.to = \"file\"",
                ));
            }
            LogTarget::Stderr
        }
        Some("file") => {
            let rotation = match raw.rotation.as_deref() {
                None | Some("daily") => Rotation::Daily,
                Some("hourly") => Rotation::Hourly,
                Some(o) => {
                    return Err(ConfigError::invalid(
                        "log.rotation",
                        format!("{o:?} is not one of \"daily\", \"hourly\""),
                    ));
                }
            };
            let max_files = raw.max_files.unwrap_or(7);
            if max_files == 0 {
                return Err(ConfigError::invalid("log.max_files", "must be >= 1"));
            }
            LogTarget::File {
                dir: raw.dir.unwrap_or_else(|| data_dir.join("log")),
                rotation,
                max_files,
            }
        }
        Some(o) => {
            return Err(ConfigError::invalid(
                "log.to",
                format!("{o:?} is not one of \"stderr\", \"file\""),
            ));
        }
    };
    Ok(LogConfig { level, target })
}

fn parse_status(key: &str, spec: &StatusSpec) -> Result<Vec<(u16, u16)>, ConfigError> {
    let check = |c: u16| {
        if (100..=599).contains(&c) {
            Ok(c)
        } else {
            Err(ConfigError::invalid(
                key,
                format!("{c} is not an HTTP status"),
            ))
        }
    };
    match spec {
        StatusSpec::One(c) => Ok(vec![(check(*c)?, *c)]),
        StatusSpec::Many(cs) if !cs.is_empty() => {
            cs.iter().map(|c| check(*c).map(|c| (c, c))).collect()
        }
        StatusSpec::Many(_) => Err(ConfigError::invalid(key, "is empty")),
        StatusSpec::Range(s) => {
            let bad = || {
                ConfigError::invalid(
                    key,
                    format!("{s:?} is not a status, a list, or a range like \"200-299\""),
                )
            };
            let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
            let lo = check(lo.trim().parse().map_err(|_| bad())?)?;
            let hi = check(hi.trim().parse().map_err(|_| bad())?)?;
            if lo > hi {
                return Err(bad());
            }
            Ok(vec![(lo, hi)])
        }
    }
}

/// Splits `host:port` / `[v6]:port`.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':')?;
        if h.contains(':') {
            return None;
        }
        (h, p)
    };
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0).then(|| (host.to_owned(), port))
}

fn valid_hostname(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() {
        return true;
    }
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn validate_probe(
    i: usize,
    mut raw: RawProbe,
    unit: &UnitId,
    local_credentials: &HashSet<PathBuf>,
) -> Result<ProbeSpec, ConfigError> {
    let k = |f: &str| format!("probe[{i}].{f}");
    let name = raw
        .name
        .take()
        .ok_or_else(|| ConfigError::invalid(k("name"), "missing"))?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ConfigError::invalid(
            k("name"),
            format!("{name:?} must be 1 to 64 of A-Z a-z 0-9 - _ ."),
        ));
    }
    let kind = raw
        .kind
        .take()
        .ok_or_else(|| ConfigError::invalid(k("kind"), "missing"))?;
    let is_transaction = kind == "transaction";
    if !is_transaction
        && let Some(f) = [
            ("credentials", raw.credentials.is_some()),
            ("step", raw.step.is_some()),
        ]
        .iter()
        .find(|(_, set)| *set)
    {
        return Err(ConfigError::invalid(
            k(f.0),
            format!("only applies to transaction probes, not {kind:?}"),
        ));
    }
    let target = match (is_transaction, raw.target.take()) {
        (true, Some(_)) => {
            return Err(ConfigError::invalid(
                k("target"),
                "does not apply to transaction probes: each [[probe.step]] has its url",
            ));
        }
        (true, None) => String::new(),
        (false, t) => t.ok_or_else(|| ConfigError::invalid(k("target"), "missing"))?,
    };
    let interval = duration_or(
        &k("interval"),
        raw.interval.as_deref(),
        Duration::from_secs(30),
    )?;
    let timeout = duration_or(
        &k("timeout"),
        raw.timeout.as_deref(),
        Duration::from_secs(5),
    )?;
    if interval < Duration::from_secs(1) {
        return Err(ConfigError::invalid(k("interval"), "must be at least 1s"));
    }
    if timeout.is_zero() {
        return Err(ConfigError::invalid(k("timeout"), "must be > 0"));
    }
    if timeout > interval {
        return Err(ConfigError::invalid(
            k("timeout"),
            format!(
                "{} is longer than the probe's interval ({})",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        ));
    }
    let is_http = matches!(kind.as_str(), "http" | "https");
    let http_only = [
        ("method", raw.method.is_some()),
        ("expect_status", raw.expect_status.is_some()),
        ("body_contains", raw.body_contains.is_some()),
        ("body_max_bytes", raw.body_max_bytes.is_some()),
        ("ca_file", raw.ca_file.is_some()),
        ("insecure_skip_verify", raw.insecure_skip_verify.is_some()),
    ];
    if is_transaction && let Some((f, _)) = http_only[..3].iter().find(|(_, set)| *set) {
        return Err(ConfigError::invalid(
            k(f),
            "set it on each [[probe.step]] of a transaction",
        ));
    }
    if !is_http
        && !is_transaction
        && let Some((f, _)) = http_only.iter().find(|(_, set)| *set)
    {
        return Err(ConfigError::invalid(
            k(f),
            format!("only applies to http probes, not {kind:?}"),
        ));
    }
    if kind != "icmp" && raw.count.is_some() {
        return Err(ConfigError::invalid(
            k("count"),
            "only applies to icmp probes",
        ));
    }
    let target = match kind.as_str() {
        "http" | "https" => {
            let bad = |why: &str| ConfigError::invalid(k("target"), format!("{target:?} {why}"));
            let url: hyper::Uri = target.parse().map_err(|_| bad("is not a URL"))?;
            let tls = match url.scheme_str() {
                Some("http") => false,
                Some("https") => true,
                _ => return Err(bad("must start with http:// or https://")),
            };
            let (host, port) = uri_host_port(&url, if tls { 443 } else { 80 })
                .ok_or_else(|| bad("has no host or a bad port"))?;
            if !valid_hostname(&host) {
                return Err(bad("has an invalid host name"));
            }
            if !tls && (raw.ca_file.is_some() || raw.insecure_skip_verify.is_some()) {
                return Err(ConfigError::invalid(
                    k(if raw.ca_file.is_some() {
                        "ca_file"
                    } else {
                        "insecure_skip_verify"
                    }),
                    "only applies to https:// targets",
                ));
            }
            if let Some(ca) = &raw.ca_file {
                check_file(&k("ca_file"), ca)?;
            }
            let method = match raw.method.as_deref() {
                None | Some("GET") | Some("get") => HttpMethod::Get,
                Some("HEAD") | Some("head") => HttpMethod::Head,
                Some(o) => {
                    return Err(ConfigError::invalid(
                        k("method"),
                        format!("{o:?} is not GET or HEAD (other methods: a transaction step)"),
                    ));
                }
            };
            if method == HttpMethod::Head && raw.body_contains.is_some() {
                return Err(ConfigError::invalid(
                    k("body_contains"),
                    "a HEAD request has no body",
                ));
            }
            let expect_status = match &raw.expect_status {
                None => vec![(200, 399)],
                Some(s) => parse_status(&k("expect_status"), s)?,
            };
            let body_max_bytes =
                body_max_bytes(&k("body_max_bytes"), raw.body_max_bytes.as_deref())?;
            if raw.body_contains.as_deref() == Some("") {
                return Err(ConfigError::invalid(k("body_contains"), "is empty"));
            }
            ProbeTarget::Http(HttpSpec {
                url,
                host,
                port,
                tls,
                method,
                expect_status,
                body_contains: raw.body_contains,
                body_max_bytes,
                ca_file: raw.ca_file,
                insecure_skip_verify: raw.insecure_skip_verify.unwrap_or(false),
            })
        }
        "tcp" => {
            let (host, port) = split_host_port(&target)
                .filter(|(h, _)| valid_hostname(h))
                .ok_or_else(|| {
                    ConfigError::invalid(k("target"), format!("{target:?} is not host:port"))
                })?;
            ProbeTarget::Tcp { host, port }
        }
        "dns" => {
            if !valid_hostname(&target) || target.parse::<IpAddr>().is_ok() {
                return Err(ConfigError::invalid(
                    k("target"),
                    format!("{target:?} is not a host name"),
                ));
            }
            ProbeTarget::Dns { name: target }
        }
        "icmp" => {
            if !valid_hostname(&target) {
                return Err(ConfigError::invalid(
                    k("target"),
                    format!("{target:?} is not a host name or address"),
                ));
            }
            let count = raw.count.unwrap_or(3);
            if !(1..=20).contains(&count) {
                return Err(ConfigError::invalid(k("count"), "must be between 1 and 20"));
            }
            ProbeTarget::Icmp {
                host: target,
                count,
            }
        }
        "transaction" => ProbeTarget::Transaction(Box::new(validate_transaction(
            i,
            &name,
            raw,
            unit,
            local_credentials,
        )?)),
        other => {
            return Err(ConfigError::invalid(
                k("kind"),
                format!("{other:?} is not one of http, https, tcp, dns, icmp, transaction"),
            ));
        }
    };
    Ok(ProbeSpec {
        name,
        interval,
        timeout,
        target,
    })
}

/// `body_max_bytes`: default 64 KiB, 1 byte to 16 MiB.
fn body_max_bytes(key: &str, raw: Option<&str>) -> Result<usize, ConfigError> {
    match raw.map(|s| bytes(key, s)).transpose()? {
        None => Ok(64 * 1024),
        Some(b) if (1..=16 << 20).contains(&b) => Ok(b as usize),
        Some(_) => Err(ConfigError::invalid(
            key,
            "must be between 1 byte and 16MiB",
        )),
    }
}

/// Reads a transaction's credentials file: TOML of `name = "secret"`
/// strings, at most 64 KiB and 64 names, on Unix readable by its owner only.
/// No error quotes the file's text (a TOML error would show the line).
fn read_credentials(
    key: &str,
    path: &Path,
) -> Result<crate::probe::template::Secrets, ConfigError> {
    use crate::probe::template::{Secret, valid_name};
    let bad = |msg: String| ConfigError::invalid(key, format!("{}: {msg}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("is not a file".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "is readable or writable by group or others (mode {mode:04o}); it holds \
                 secrets: make it the agent user's alone (chmod 600)"
            )));
        }
    }
    if meta.len() > MAX_CREDENTIALS_FILE {
        return Err(bad(format!(
            "is {} bytes; at most {MAX_CREDENTIALS_FILE}",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        bad(format!(
            "is not TOML of name = \"secret\" strings{}",
            line.map_or(String::new(), |l| format!(" (line {l})"))
        ))
    })?;
    if table.len() > MAX_CREDENTIALS {
        return Err(bad(format!(
            "has {} credentials; at most {MAX_CREDENTIALS}",
            table.len()
        )));
    }
    let mut out = crate::probe::template::Secrets::new();
    for (name, v) in table {
        if !valid_name(&name) {
            return Err(bad(format!(
                "credential name {name:?} must be 1 to 64 of A-Z a-z 0-9 _ -"
            )));
        }
        let toml::Value::String(v) = v else {
            return Err(bad(format!("{name} is not a string")));
        };
        out.insert(name, Secret::new(v));
    }
    Ok(out)
}

/// A step's URL: `http(s)://host[:port]` fixed, then a path-and-query template.
fn url_template(key: &str, text: &str) -> Result<UrlTemplate, ConfigError> {
    use crate::probe::template::{Encoding, Lookup, Template, Var};
    let bad = |why: &str| ConfigError::invalid(key, format!("{text:?} {why}"));
    let (scheme, rest) = text
        .split_once("://")
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let tls = match scheme {
        "http" => false,
        "https" => true,
        _ if scheme.contains("{{") => {
            return Err(bad(
                "has a variable in its scheme: variables may only be in the path and query",
            ));
        }
        _ => return Err(bad("must start with http:// or https://")),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains("{{") {
        return Err(bad(
            "has a variable in its host or port: variables may only be in the path and query",
        ));
    }
    if path.contains('#') {
        return Err(bad("has a fragment (#…), which is never sent"));
    }
    let path = match path {
        "" => "/".to_owned(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_owned(),
    };
    let tpl = Template::parse(&path).map_err(|e| ConfigError::invalid(key, e))?;
    // The URL must parse with any values (they are percent-encoded).
    struct Any;
    impl Lookup for Any {
        fn value(&self, _: &Var) -> Option<&str> {
            Some("x")
        }
    }
    let sample = tpl
        .render(&Any, Encoding::Url)
        .expect("Any has every value");
    let uri: hyper::Uri = format!("{scheme}://{authority}{sample}")
        .parse()
        .map_err(|_| bad("is not a URL"))?;
    let (host, port) = uri_host_port(&uri, if tls { 443 } else { 80 })
        .ok_or_else(|| bad("has no host or a bad port"))?;
    if !valid_hostname(&host) {
        return Err(bad("has an invalid host name"));
    }
    Ok(UrlTemplate {
        text: text.to_owned(),
        tls,
        host,
        port,
        authority: authority.to_owned(),
        path: tpl,
    })
}

/// The credentials files the local TOML's `[[probe]]` tables name: the only
/// ones a configuration may use, so that a remote document (which may set
/// `[[probe]]`) can never make the agent read another local secret file and
/// send its contents where the document says.
fn local_credentials(local: &str) -> HashSet<PathBuf> {
    let Ok(t) = local.parse::<toml::Table>() else {
        return HashSet::new();
    };
    t.get("probe")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("credentials")?.as_str())
        .map(PathBuf::from)
        .collect()
}

/// A `kind = "transaction"` probe: its steps, credentials and limits. Every
/// variable a step uses must be a credential in the file, a built-in, or
/// extracted by an earlier step.
fn validate_transaction(
    i: usize,
    probe: &str,
    raw: RawProbe,
    unit: &UnitId,
    local_credentials: &HashSet<PathBuf>,
) -> Result<TransactionSpec, ConfigError> {
    use crate::probe::template::{Template, Var, check_pointer, valid_name};
    use hyper::header::{HeaderName, HeaderValue};
    let k = |f: &str| format!("probe[{i}].{f}");
    let credentials = match &raw.credentials {
        None => crate::probe::template::Secrets::new(),
        Some(p) if !local_credentials.contains(p) => {
            return Err(ConfigError::invalid(
                k("credentials"),
                format!(
                    "{} is not a credentials file the local configuration names: remote \
                     documents may only use those",
                    p.display()
                ),
            ));
        }
        Some(p) => read_credentials(&k("credentials"), p)?,
    };
    let body_max_bytes = body_max_bytes(&k("body_max_bytes"), raw.body_max_bytes.as_deref())?;
    let raw_steps = raw.step.unwrap_or_default();
    if raw_steps.is_empty() {
        return Err(ConfigError::invalid(
            k("step"),
            "missing: a transaction needs at least one [[probe.step]]",
        ));
    }
    if raw_steps.len() > MAX_STEPS {
        return Err(ConfigError::invalid(
            k("step"),
            format!("{} steps; at most {MAX_STEPS}", raw_steps.len()),
        ));
    }
    // Every extraction first, with the step that makes it, so a use can be
    // told "not defined" from "defined too late".
    let mut extracted_by: std::collections::BTreeMap<String, usize> = Default::default();
    let mut n_extract = 0;
    for (j, st) in raw_steps.iter().enumerate() {
        for var in st.extract.iter().flat_map(|e| e.keys()) {
            let key = format!("probe[{i}].step[{j}].extract.{var}");
            if !valid_name(var) || matches!(var.as_str(), "unit" | "agency" | "cred") {
                return Err(ConfigError::invalid(
                    key,
                    "a variable name is 1 to 64 of A-Z a-z 0-9 _ -, and not unit, agency or cred",
                ));
            }
            if let Some(first) = extracted_by.get(var) {
                return Err(ConfigError::invalid(
                    key,
                    format!("{{{{{var}}}}} is already extracted by step[{first}]"),
                ));
            }
            extracted_by.insert(var.clone(), j);
            n_extract += 1;
        }
    }
    if n_extract > MAX_EXTRACTIONS {
        return Err(ConfigError::invalid(
            k("step"),
            format!("{n_extract} extractions; at most {MAX_EXTRACTIONS} in one transaction"),
        ));
    }
    let check_vars = |key: &str, tpl: &Template, j: usize| -> Result<(), ConfigError> {
        for v in tpl.vars() {
            match v {
                Var::Unit | Var::Agency => {}
                Var::Cred(n) => match &raw.credentials {
                    None => {
                        return Err(ConfigError::invalid(
                            key,
                            format!("{v} needs a credentials file (probe[{i}].credentials)"),
                        ));
                    }
                    Some(p) if !credentials.contains_key(n) => {
                        return Err(ConfigError::invalid(
                            key,
                            format!("{v}: no credential {n:?} in {}", p.display()),
                        ));
                    }
                    Some(_) => {}
                },
                Var::Extracted(n) => match extracted_by.get(n) {
                    Some(by) if *by < j => {}
                    Some(by) if *by == j => {
                        return Err(ConfigError::invalid(
                            key,
                            format!(
                                "{v} is extracted by this same step: a step can use only what earlier steps extracted"
                            ),
                        ));
                    }
                    Some(by) => {
                        return Err(ConfigError::invalid(
                            key,
                            format!(
                                "{v} is extracted by a later step (step[{by}]): a step can use only what earlier steps extracted"
                            ),
                        ));
                    }
                    None => {
                        return Err(ConfigError::invalid(
                            key,
                            format!("{v} is not defined by an earlier step"),
                        ));
                    }
                },
            }
        }
        Ok(())
    };
    let mut steps: Vec<StepSpec> = Vec::with_capacity(raw_steps.len());
    for (j, st) in raw_steps.into_iter().enumerate() {
        let sk = |f: &str| format!("probe[{i}].step[{j}].{f}");
        let name = st
            .name
            .ok_or_else(|| ConfigError::invalid(sk("name"), "missing"))?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(ConfigError::invalid(
                sk("name"),
                format!("{name:?} must be 1 or more of a-z 0-9 _ -"),
            ));
        }
        if probe.len() + 1 + name.len() > 64 {
            return Err(ConfigError::invalid(
                sk("name"),
                format!("\"{probe}.{name}\" (its results' name) is longer than 64"),
            ));
        }
        if let Some(other) = steps.iter().position(|s| s.name == name) {
            return Err(ConfigError::invalid(
                sk("name"),
                format!("{name:?} is used by step[{other}]"),
            ));
        }
        let method = HttpMethod::parse(st.method.as_deref()).ok_or_else(|| {
            ConfigError::invalid(
                sk("method"),
                format!(
                    "{:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE",
                    st.method.as_deref().unwrap_or_default()
                ),
            )
        })?;
        let url_text = st
            .url
            .ok_or_else(|| ConfigError::invalid(sk("url"), "missing"))?;
        let url = url_template(&sk("url"), &url_text)?;
        check_vars(&sk("url"), &url.path, j)?;
        let raw_headers = st.headers.unwrap_or_default();
        if raw_headers.len() > MAX_STEP_HEADERS {
            return Err(ConfigError::invalid(
                sk("headers"),
                format!("{} headers; at most {MAX_STEP_HEADERS}", raw_headers.len()),
            ));
        }
        let mut headers: Vec<(HeaderName, Template)> = Vec::with_capacity(raw_headers.len());
        for (hname, hval) in raw_headers {
            let hk = sk(&format!("headers.{hname}"));
            let header = HeaderName::from_bytes(hname.as_bytes())
                .map_err(|_| ConfigError::invalid(&hk, "is not a header name"))?;
            if AGENT_HEADERS.contains(&header.as_str()) {
                return Err(ConfigError::invalid(
                    &hk,
                    "is written by the agent itself; a step cannot set it",
                ));
            }
            if headers.iter().any(|(h, _)| *h == header) {
                return Err(ConfigError::invalid(
                    &hk,
                    "is set twice (header names are case-insensitive)",
                ));
            }
            let tpl = Template::parse(&hval).map_err(|e| ConfigError::invalid(&hk, e))?;
            if tpl.literals().any(|l| HeaderValue::from_str(l).is_err()) {
                return Err(ConfigError::invalid(
                    &hk,
                    "holds characters a header value cannot (only visible ASCII, space and tab)",
                ));
            }
            check_vars(&hk, &tpl, j)?;
            headers.push((header, tpl));
        }
        let body = match st.body {
            None => None,
            Some(_) if matches!(method, HttpMethod::Get | HttpMethod::Head) => {
                return Err(ConfigError::invalid(
                    sk("body"),
                    "a GET or HEAD request has no body",
                ));
            }
            Some(b) if b.len() > MAX_STEP_BODY => {
                return Err(ConfigError::invalid(
                    sk("body"),
                    format!("is {} bytes; at most {MAX_STEP_BODY}", b.len()),
                ));
            }
            Some(b) => {
                let tpl = Template::parse(&b).map_err(|e| ConfigError::invalid(sk("body"), e))?;
                check_vars(&sk("body"), &tpl, j)?;
                Some(tpl)
            }
        };
        let expect_status = match &st.expect_status {
            None => vec![(200, 399)],
            Some(s) => parse_status(&sk("expect_status"), s)?,
        };
        match st.body_contains.as_deref() {
            Some("") => return Err(ConfigError::invalid(sk("body_contains"), "is empty")),
            Some(_) if method == HttpMethod::Head => {
                return Err(ConfigError::invalid(
                    sk("body_contains"),
                    "a HEAD request has no body",
                ));
            }
            _ => {}
        }
        let mut extract = Vec::new();
        for (var, e) in st.extract.unwrap_or_default() {
            let ek = sk(&format!("extract.{var}"));
            let from = match (e.json, e.header) {
                (Some(p), None) => {
                    check_pointer(&p).map_err(|e| ConfigError::invalid(format!("{ek}.json"), e))?;
                    if method == HttpMethod::Head {
                        return Err(ConfigError::invalid(
                            format!("{ek}.json"),
                            "a HEAD request has no body",
                        ));
                    }
                    Extract::Json(p)
                }
                (None, Some(h)) => {
                    Extract::Header(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                        ConfigError::invalid(
                            format!("{ek}.header"),
                            format!("{h:?} is not a header name"),
                        )
                    })?)
                }
                _ => {
                    return Err(ConfigError::invalid(
                        ek,
                        "set exactly one of json (a JSON pointer) or header",
                    ));
                }
            };
            extract.push((var, from));
        }
        steps.push(StepSpec {
            name,
            method,
            url,
            headers,
            body,
            expect_status,
            body_contains: st.body_contains,
            extract,
        });
    }
    if !steps.iter().any(|s| s.url.tls)
        && (raw.ca_file.is_some() || raw.insecure_skip_verify.is_some())
    {
        return Err(ConfigError::invalid(
            k(if raw.ca_file.is_some() {
                "ca_file"
            } else {
                "insecure_skip_verify"
            }),
            "only applies to https:// steps, and this transaction has none",
        ));
    }
    if let Some(ca) = &raw.ca_file {
        check_file(&k("ca_file"), ca)?;
    }
    Ok(TransactionSpec {
        steps,
        credentials,
        body_max_bytes,
        ca_file: raw.ca_file,
        insecure_skip_verify: raw.insecure_skip_verify.unwrap_or(false),
        unit: unit.unit.clone(),
        agency: unit.agency.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports() {
        assert_eq!(split_host_port("a.b:80"), Some(("a.b".into(), 80)));
        assert_eq!(split_host_port("[::1]:53"), Some(("::1".into(), 53)));
        assert_eq!(split_host_port("a.b"), None);
        assert_eq!(split_host_port("a.b:0"), None);
        assert_eq!(split_host_port("::1:53"), None);
        assert_eq!(split_host_port(":80"), None);
    }

    const BASE: &str = "agency = \"metro-pd\"\nunit_id = \"car-12\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n[trust]\ncollector_keys = [\"ed25519:3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29\"]\n";

    fn actions(toml: &str) -> Result<Vec<ActionSpec>, (String, String)> {
        Config::parse(&format!("{BASE}{toml}"))
            .map(|c| c.actions)
            .map_err(|e| (e.key().unwrap_or("").to_owned(), e.to_string()))
    }

    #[test]
    fn actions_are_typed_with_defaults() {
        let a = actions(
            r#"
[[action]]
name = "restart-cad-client"
kind = "restart_process"
process = "cadclient"
start = ["/opt/cad/cadclient", "--mct"]
timeout = "20s"
rate = "3 per 1h"
[[action]]
name = "ping"
kind = "command"
argv = ["/usr/bin/ping", "-c", "3", "{host}"]
output_max = 100
[action.params.host]
type = "hostname"
[[action]]
name = "renew"
kind = "renew_dhcp"
[[action]]
name = "svc"
kind = "restart_service"
service = "cad-client.service"
[[action]]
name = "diag"
kind = "collect_diagnostics"
[[action]]
name = "dns"
kind = "flush_dns"
"#,
        )
        .unwrap();
        assert_eq!(a.len(), 6);
        assert!(
            matches!(&a[0].kind, ActionKind::RestartProcess { process, start }
            if process == "cadclient" && start.len() == 2)
        );
        assert_eq!(
            (a[0].timeout, a[0].rate, a[0].output_max),
            (
                Duration::from_secs(20),
                muster_base::rate::Rate {
                    max: 3,
                    per: Duration::from_secs(3600)
                },
                DEFAULT_ACTION_OUTPUT
            )
        );
        let ActionKind::Command { argv, params } = &a[1].kind else {
            panic!("{:?}", a[1].kind)
        };
        assert_eq!(argv[3], ArgPart::Param("host".into()));
        assert!(matches!(params["host"], ParamType::Hostname));
        assert_eq!(
            (a[1].timeout, a[1].rate, a[1].output_max),
            (DEFAULT_ACTION_TIMEOUT, DEFAULT_ACTION_RATE, 100)
        );
        assert!(matches!(
            a[2].kind,
            ActionKind::RenewDhcp { interface: None }
        ));
    }

    /// Each bad `[[action]]` names its key.
    #[test]
    fn bad_actions_name_their_key() {
        let cmd = |argv: &str, params: &str| {
            format!("[[action]]\nname = \"c\"\nkind = \"command\"\nargv = {argv}\n{params}")
        };
        let p = |body: &str| format!("[action.params.host]\n{body}\n");
        let cases: Vec<(String, &str, &str)> = vec![
            ("[[action]]\nkind = \"flush_dns\"".into(), "action[0].name", "missing"),
            ("[[action]]\nname = \"Bad Name\"\nkind = \"flush_dns\"".into(), "action[0].name", "a-z"),
            ("[[action]]\nname = \"a\"\nkind = \"reboot\"".into(), "action[0].kind", "not one of"),
            ("[[action]]\nname = \"a\"\nkind = \"flush_dns\"\n[[action]]\nname = \"a\"\nkind = \"flush_dns\"".into(), "action[1].name", "another action"),
            ("[[action]]\nname = \"a\"\nkind = \"flush_dns\"\nservice = \"x\"".into(), "action[0].service", "does not apply"),
            ("[[action]]\nname = \"a\"\nkind = \"restart_service\"".into(), "action[0].service", "missing"),
            ("[[action]]\nname = \"a\"\nkind = \"restart_process\"\nprocess = \"x\"".into(), "action[0].start", "missing"),
            ("[[action]]\nname = \"a\"\nkind = \"restart_process\"\nprocess = \"x\"\nstart = [\"cadclient\"]".into(), "action[0].start[0]", "absolute"),
            ("[[action]]\nname = \"a\"\nkind = \"flush_dns\"\ntimeout = \"11m\"".into(), "action[0].timeout", "between 1s and 10min"),
            ("[[action]]\nname = \"a\"\nkind = \"flush_dns\"\nrate = \"often\"".into(), "action[0].rate", "3 per 1h"),
            ("[[action]]\nname = \"a\"\nkind = \"flush_dns\"\nrate = \"0 per 1h\"".into(), "action[0].rate", "3 per 1h"),
            ("[[action]]\nname = \"a\"\nkind = \"flush_dns\"\noutput_max = 999999".into(), "action[0].output_max", "between"),
            (cmd("[\"/bin/echo\", \"{host}\"]", ""), "action[0].argv[1]", "names no [action.params.host]"),
            (cmd("[\"/bin/echo\", \"--to={host}\"]", &p("type = \"hostname\"")), "action[0].argv[1]", "whole argument"),
            (cmd("[\"{host}\"]", &p("type = \"hostname\"")), "action[0].argv[0]", "program"),
            (cmd("[\"/bin/echo\", \"{host}\", \"{host}\"]", &p("type = \"hostname\"")), "action[0].argv[2]", "twice"),
            (cmd("[\"/bin/echo\"]", &p("type = \"hostname\"")), "action[0].params.host", "not used in argv"),
            (cmd("[\"/bin/echo\", \"{host}\"]", &p("type = \"url\"")), "action[0].params.host.type", "not one of"),
            (cmd("[\"/bin/echo\", \"{host}\"]", &p("")), "action[0].params.host.type", "missing"),
            (cmd("[\"/bin/echo\", \"{host}\"]", &p("type = \"string\"")), "action[0].params.host.pattern", "missing"),
            (cmd("[\"/bin/echo\", \"{host}\"]", &p("type = \"string\"\npattern = \"[a-z\"")), "action[0].params.host.pattern", "not a regex"),
            (cmd("[\"/bin/echo\", \"{host}\"]", &p("type = \"string\"\npattern = \"(?m)^a$\"")), "action[0].params.host.pattern", "multi-line"),
            (cmd("[\"/bin/echo\", \"{host}\"]", &p("type = \"hostname\"\npattern = \"a\"")), "action[0].params.host.pattern", "does not apply"),
            (cmd("[\"/bin/echo\", \"{host}\"]", &p("type = \"integer\"\nmin = 5\nmax = 1")), "action[0].params.host.max", "below min"),
            (cmd("[\"/bin/echo\", \"{host}\"]", &p("type = \"hostname\"\nshell = true")), "", "unknown field"),
            ("[[action]]\nname = \"a\"\nkind = \"flush_dns\"\nshell = true".into(), "", "unknown field"),
        ];
        for (toml, key, frag) in cases {
            let (k, msg) = actions(&toml)
                .map(|a| panic!("{toml}: accepted {a:?}"))
                .unwrap_err();
            assert_eq!(k, key, "{toml}: {msg}");
            assert!(msg.contains(frag), "{toml}: {msg}");
        }
    }

    #[test]
    fn cellular_refresh_is_bounded_and_named() {
        let refresh = |v: Option<&str>| {
            validate_network(RawNetwork {
                cellular_refresh: v.map(str::to_owned),
                ..RawNetwork::default()
            })
            .map(|n| n.cellular_refresh)
            .map_err(|e| (e.key().map(str::to_owned), e.to_string()))
        };
        assert_eq!(refresh(None), Ok(Duration::from_secs(10)));
        assert_eq!(refresh(Some("1s")), Ok(Duration::from_secs(1)));
        assert_eq!(refresh(Some("1h")), Ok(Duration::from_secs(3600)));
        for (bad, frag) in [
            ("999ms", "between 1s and 1h"),
            ("61m", "between 1s and 1h"),
            ("often", "not a duration"),
        ] {
            let (key, msg) = refresh(Some(bad)).expect_err(bad);
            assert_eq!(key.as_deref(), Some("network.cellular_refresh"), "{bad}");
            assert!(msg.contains(frag), "{bad}: {msg}");
        }
    }
}
