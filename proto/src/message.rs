//! The message kinds. Field units are in the names: `_kib` kibibytes, `_bps`
//! bytes per second, `_bp` basis points (1/100 of a percent, 0..=10000),
//! `_pct` whole percent, `_us` microseconds, `_ms` milliseconds. Times are
//! unix milliseconds (UTC) taken from the agent's clock.
//!
//! Integers, never floats: varint-encoded integers keep a typical host sample
//! under 300 bytes on metered cellular links, and compare exactly.
//!
//! Adding, removing or reordering a field changes the wire format: see
//! `proto/tests/golden/README.md` for how to bump [`crate::SCHEMA_VERSION`].

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::ids::{BootId, UnitId};
use crate::sign::{KeyId, PublicKey, Signature};

/// What one MQTT publish carries: who it is about, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub unit: UnitId,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// One record, published live (agent to collector, telemetry topic).
    Record(Record),
    /// Many records in one publish, for replay (agent to collector, telemetry topic).
    Batch(#[serde(deserialize_with = "crate::codec::bounded_vec")] Vec<Record>),
    /// "These records are durably stored" (collector to agent, ack topic).
    Ack(Ack),
    /// Online or offline, and why (agent's birth, announcement and will,
    /// retained on the state topic).
    Presence(Presence),
}

/// One buffered, acknowledged unit of telemetry. `(unit, boot, seq)` names it
/// uniquely: `seq` starts at 1 for every boot and grows by exactly one per
/// record, whatever its kind, so the collector can count gaps exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub boot: BootId,
    pub seq: u64,
    /// When the record was taken (event time), unix ms, agent clock.
    pub at_ms: u64,
    pub payload: Payload,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    Host(HostSample),
    Probe(ProbeResult),
    Status(AgentStatus),
    /// The agent announces it is going away (shutdown, stop, sleep), schema
    /// v2. Buffered and acked like every record, and also published
    /// retained on the state topic: a collector that was down when it was
    /// said still learns it. Always `online: false`, with the record's boot.
    Presence(Presence),
    /// The unit's labels and the facts it reports about itself (schema v2,
    /// issue 16): sent at start and whenever one changes.
    Facts(UnitFacts),
    /// A step of the agent's configuration (schema v2, issue 16): a remote
    /// document applying, applied, failed, refused or rolled back.
    Config(ConfigStatus),
    /// One step of an action request (schema v2, issue 17): refused,
    /// started, finished or failed, for the audit.
    Action(crate::action::ActionAudit),
}

impl Payload {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Payload::Host(_) => "host",
            Payload::Probe(_) => "probe",
            Payload::Status(_) => "status",
            Payload::Presence(_) => "presence",
            Payload::Facts(_) => "facts",
            Payload::Config(_) => "config",
            Payload::Action(_) => "action",
        }
    }
}

// ------------------------------------------------------- labels and facts

/// Most labels a unit carries.
pub const MAX_LABELS: usize = 16;
/// Longest label key, in bytes (`[a-z0-9_.-]`, starting with a letter).
pub const MAX_LABEL_KEY: usize = 32;
/// Longest label value, in characters.
pub const MAX_LABEL_VALUE: usize = 64;
/// Longest reported fact (agent version, OS, CAD client version), in characters.
pub const MAX_FACT_LEN: usize = 128;

/// One operator-given label: `station = "7"`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Label {
    pub key: String,
    pub value: String,
}

/// Why a label or a fact was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("{count} labels; at most {MAX_LABELS} are allowed")]
    TooMany { count: usize },
    #[error(
        "label key {key:?}: 1 to {MAX_LABEL_KEY} of a-z, 0-9, '_', '.', '-', starting with a letter"
    )]
    Key { key: String },
    #[error("label {key:?} is given twice")]
    Duplicate { key: String },
    #[error("{field} {value:?}: at most {max} characters, no control characters")]
    Value {
        field: String,
        value: String,
        max: usize,
    },
}

/// Checks a label key: `[a-z][a-z0-9_.-]{0,31}`.
pub fn validate_label_key(key: &str) -> Result<(), LabelError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_LABEL_KEY
        && key.starts_with(|c: char| c.is_ascii_lowercase())
        && key.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(LabelError::Key {
            key: key.chars().take(MAX_LABEL_KEY + 8).collect(),
        })
    }
}

/// Checks a label value or a fact: at most `max` characters, none a
/// control character (C0, DEL or C1).
pub fn validate_text(field: &str, value: &str, max: usize) -> Result<(), LabelError> {
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(LabelError::Value {
            field: field.to_owned(),
            value: value.chars().take(max + 8).collect(),
            max,
        });
    }
    Ok(())
}

/// What a unit is: its labels (from its local config, or set remotely)
/// and what it reports about itself. Labels are sorted by key, each key
/// once ([`UnitFacts::validate`]; `decode` refuses anything else as
/// `malformed`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UnitFacts {
    #[serde(deserialize_with = "crate::codec::bounded_vec")]
    pub labels: Vec<Label>,
    /// The agent's version (`CARGO_PKG_VERSION`).
    pub agent_version: String,
    /// The operating system, e.g. "Debian GNU/Linux 12 (bookworm)" or
    /// "Windows 10 Pro 22H2 (19045)".
    pub os: String,
    /// The watched CAD client's version, where the platform shows it.
    pub cad_version: Option<String>,
}

impl UnitFacts {
    /// Labels sorted by key, unique, within bounds; facts within bounds.
    pub fn validate(&self) -> Result<(), LabelError> {
        if self.labels.len() > MAX_LABELS {
            return Err(LabelError::TooMany {
                count: self.labels.len(),
            });
        }
        for (i, l) in self.labels.iter().enumerate() {
            validate_label_key(&l.key)?;
            validate_text(&format!("label {}", l.key), &l.value, MAX_LABEL_VALUE)?;
            if i > 0 && self.labels[i - 1].key >= l.key {
                return Err(LabelError::Duplicate { key: l.key.clone() });
            }
        }
        validate_text("agent_version", &self.agent_version, MAX_FACT_LEN)?;
        validate_text("os", &self.os, MAX_FACT_LEN)?;
        if let Some(v) = &self.cad_version {
            validate_text("cad_version", v, MAX_FACT_LEN)?;
        }
        Ok(())
    }

    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|l| l.key.as_str().cmp(key))
            .ok()
            .map(|i| self.labels[i].value.as_str())
    }
}

// ---------------------------------------------------------------- host health

/// A host health sample. A collector (cpu, disks, ...) that failed leaves its
/// field empty and says why in `failures`; the rest of the sample still goes out.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostSample {
    /// The agent's sampling interval: the collector's staleness rule is a multiple of it.
    pub interval_ms: u32,
    pub cpu: Option<Cpu>,
    /// 1, 5 and 15 minute load averages × 100, where the OS has them.
    pub load_x100: Option<[u32; 3]>,
    pub memory: Option<Memory>,
    #[serde(deserialize_with = "crate::codec::bounded_vec")]
    pub disks: Vec<Disk>,
    #[serde(deserialize_with = "crate::codec::bounded_vec")]
    pub nets: Vec<NetIf>,
    pub uptime_s: u64,
    #[serde(deserialize_with = "crate::codec::bounded_vec")]
    pub processes: Vec<Process>,
    #[serde(deserialize_with = "crate::codec::bounded_vec")]
    pub failures: Vec<SamplerFailure>,
    /// The network the unit is on (schema v2): default route, Wi-Fi,
    /// cellular, VPNs, roaming. `None` from a v1 agent, or when every
    /// network family failed (then `failures` says why).
    #[serde(default)]
    pub network: Option<Box<NetContext>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cpu {
    /// Whole-machine usage in basis points (0..=10000).
    pub total_bp: u16,
    /// Usage per logical core, whole percent (0..=100).
    #[serde(deserialize_with = "crate::codec::bounded_vec")]
    pub per_core_pct: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Memory {
    pub total_kib: u64,
    pub used_kib: u64,
    pub swap_total_kib: u64,
    pub swap_used_kib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Disk {
    /// Mount point (`/`, `/var`) or drive (`C:\`).
    pub mount: String,
    pub total_kib: u64,
    pub used_kib: u64,
    pub read_bps: u64,
    pub write_bps: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetIf {
    pub name: String,
    pub up: bool,
    pub rx_bps: u64,
    pub tx_bps: u64,
    /// Errors since the previous sample.
    pub rx_errors: u32,
    pub tx_errors: u32,
}

/// The network context of one host sample (schema v2). Each part is
/// read by its own family; a family that cannot be read leaves its part
/// empty and says why in `HostSample.failures` (`Route`, `Wifi`,
/// `Cellular`, `Vpn`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetContext {
    /// The interface that carries the default route; `None` when there is
    /// no default route (a dead zone, or no link at all).
    pub route: Option<DefaultRoute>,
    /// The Wi-Fi association, when a Wi-Fi interface is associated.
    pub wifi: Option<Wifi>,
    /// The cellular modem's registration and signal, when there is one.
    pub cellular: Option<Cellular>,
    /// The tunnels the agent's config names (`[network] vpn`), up or down.
    /// Empty when the config names none.
    #[serde(deserialize_with = "crate::codec::bounded_vec")]
    pub vpns: Vec<Vpn>,
    /// Default-route changes (another interface, or none) since the
    /// previous sample: roaming between Wi-Fi, cellular and dead zones.
    pub route_changes: u32,
}

impl NetContext {
    /// The signal of the link carrying the default route, in dBm: Wi-Fi's
    /// signal, or the modem's RSRP (LTE/5G) or RSSI (older technologies).
    pub fn route_signal_dbm(&self) -> Option<i16> {
        match self.route.as_ref()?.kind {
            LinkKind::Wifi => self.wifi.as_ref()?.signal_dbm,
            LinkKind::Cellular => {
                let c = self.cellular.as_ref()?;
                c.rsrp_dbm.or(c.rssi_dbm)
            }
            _ => None,
        }
    }

    /// Are the configured VPNs up? `None` when the config names none.
    pub fn vpn_up(&self) -> Option<bool> {
        (!self.vpns.is_empty()).then(|| self.vpns.iter().any(|v| v.up))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DefaultRoute {
    pub interface: String,
    pub kind: LinkKind,
}

/// What kind of link an interface is. On the wire a `u8` code; a code this
/// build does not know (a newer agent's) reads as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
pub enum LinkKind {
    #[default]
    Other,
    Ethernet,
    Wifi,
    /// A cellular modem (wwan).
    Cellular,
    /// A VPN or other tunnel (tun, wg, ppp over a tunnel).
    Vpn,
}

impl LinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkKind::Other => "other",
            LinkKind::Ethernet => "ethernet",
            LinkKind::Wifi => "wifi",
            LinkKind::Cellular => "cellular",
            LinkKind::Vpn => "vpn",
        }
    }
}

impl From<u8> for LinkKind {
    fn from(code: u8) -> Self {
        match code {
            1 => LinkKind::Ethernet,
            2 => LinkKind::Wifi,
            3 => LinkKind::Cellular,
            4 => LinkKind::Vpn,
            _ => LinkKind::Other,
        }
    }
}

impl From<LinkKind> for u8 {
    fn from(k: LinkKind) -> u8 {
        match k {
            LinkKind::Other => 0,
            LinkKind::Ethernet => 1,
            LinkKind::Wifi => 2,
            LinkKind::Cellular => 3,
            LinkKind::Vpn => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Wifi {
    pub interface: String,
    /// The network name, as broadcast (may be empty for a hidden network).
    pub ssid: String,
    pub signal_dbm: Option<i16>,
}

/// A cellular modem's view (ModemManager on Linux, the Mobile Broadband
/// API on Windows). Quality figures are those of the current access
/// technology; a figure the modem does not report is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cellular {
    /// The modem's data interface (`wwan0`), when known.
    pub interface: String,
    /// Access technology: `lte`, `5gnr`, `umts`, `gsm`, ... (empty: unknown).
    pub technology: String,
    /// The operator's name (or MCC/MNC), as the modem reports it.
    pub operator: String,
    pub rssi_dbm: Option<i16>,
    pub rsrp_dbm: Option<i16>,
    /// RSRQ in tenths of a dB.
    pub rsrq_db_x10: Option<i16>,
    /// SINR (or SNR) in tenths of a dB.
    pub sinr_db_x10: Option<i16>,
}

/// One tunnel the config names: the interface it matched (or the pattern,
/// when nothing matches), and whether it is up.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Vpn {
    pub name: String,
    pub up: bool,
}

/// A watched process (the CAD client, its updater).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Process {
    pub name: String,
    pub running: bool,
    pub pid: Option<u32>,
    /// CPU usage in basis points of one core (may exceed 10000 on several cores).
    pub cpu_bp: u32,
    pub rss_kib: u64,
    /// New pids seen for this name since the agent started: a crash loop shows here.
    pub restarts: u32,
}

/// Which host collector failed, and why, in the agent's words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerFailure {
    pub collector: SamplerFamily,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SamplerFamily {
    Cpu,
    Load,
    Memory,
    Disks,
    Networks,
    Processes,
    Uptime,
    /// The default route and its interface's kind (schema v2).
    Route,
    Wifi,
    Cellular,
    Vpn,
}

// --------------------------------------------------------------------- probes

/// The result of one synthetic transaction, or a timing the CAD client reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub name: String,
    pub kind: ProbeKind,
    /// URL, `host:port` or name, as configured.
    pub target: String,
    pub outcome: Outcome,
    pub phases: Phases,
    /// HTTP status code, when one was received.
    pub status: Option<u16>,
    /// HTTPS: days until the server certificate expires (negative once expired).
    pub cert_days_left: Option<i32>,
    /// DNS: the addresses the name resolved to (at most a handful).
    #[serde(deserialize_with = "crate::codec::bounded_vec")]
    pub addrs: Vec<IpAddr>,
    pub icmp: Option<IcmpStats>,
    /// A short human-readable detail of a failure; empty on success.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProbeKind {
    Http,
    Tcp,
    Dns,
    Icmp,
    /// A transaction timing the CAD client reported to the agent itself.
    Reported,
    /// A synthetic transaction (issue 18): one result named `<probe>` for
    /// the whole flow (its outcome names the failing step), and one named
    /// `<probe>.<step>` for each step that ran, with that step's phases.
    /// Appended last, so the schema-v2 bytes of the other kinds are unchanged.
    Transaction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    Ok,
    Fail(ErrorClass),
}

/// Why a probe failed. Never just "error".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorClass {
    /// No answer within the probe's timeout.
    Timeout,
    /// The connection was refused (nothing listening, or a firewall's RST).
    Refused,
    /// The name did not resolve.
    Dns,
    /// The TLS handshake or certificate check failed.
    Tls,
    /// The HTTP status was not the expected one.
    BadStatus,
    /// The HTTP body did not contain the expected text.
    BodyMismatch,
    /// No route, host or network unreachable, or all ICMP packets lost.
    Unreachable,
    /// The peer reset or closed the connection mid-transaction.
    Reset,
    /// The OS refused the operation (e.g. no ICMP socket allowed).
    Permission,
    /// The peer spoke something other than the expected protocol.
    Protocol,
    /// The client reported a failed transaction (`Reported` probes).
    Reported,
    /// A transaction step's extraction found nothing: the JSON pointer or
    /// header it names is absent, or the body is not JSON (issue 18).
    Extract,
}

/// Phase timings in microseconds, where the probe kind has them. For HTTP the
/// phases are sequential, so `dns + connect + tls + ttfb <= total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Phases {
    pub dns_us: Option<u32>,
    pub connect_us: Option<u32>,
    pub tls_us: Option<u32>,
    /// From request sent to the first response byte.
    pub ttfb_us: Option<u32>,
    pub total_us: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IcmpStats {
    pub sent: u16,
    pub lost: u16,
    /// Round-trip times of the answered packets; `None` when all were lost.
    pub min_us: Option<u32>,
    pub avg_us: Option<u32>,
    pub max_us: Option<u32>,
}

// ------------------------------------------------------------ agent heartbeat

/// The agent's heartbeat: its own health and its buffer's.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentStatus {
    pub version: String,
    pub interval_ms: u32,
    /// Records on disk not yet acknowledged by the collector.
    pub backlog_records: u64,
    pub backlog_bytes: u64,
    /// Age of the oldest unacknowledged record.
    pub oldest_unsent_ms: Option<u64>,
    /// Records the buffer dropped since it was created, by reason.
    pub dropped: DropCounts,
    /// MQTT reconnects since the agent started.
    pub reconnects: u32,
    /// Collector clock minus agent clock, estimated from acks, when known.
    pub clock_offset_ms: Option<i64>,
    /// Acks and collector hellos refused since the agent started: unsigned,
    /// signed by an untrusted key, a signature that does not verify, or an
    /// older hello replayed (schema v2). `serde(default)` only for JSON
    /// written before v2 (the collector's stored unit records); bincode
    /// always carries the field.
    #[serde(default)]
    pub acks_refused: u64,
    /// Observations (samples, probe results, CAD reports) dropped because
    /// the channel to the uplink was full, since the agent started (schema
    /// v2). `serde(default)` for JSON stored before the field existed.
    #[serde(default)]
    pub observations_dropped: u64,
}

/// Records dropped by the disk buffer, by reason. Cumulative over the life of
/// the buffer on disk (a buffer moved aside starts again at zero, and says so
/// in `resets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DropCounts {
    /// Oldest records dropped because the buffer reached `max_bytes`.
    pub full: u64,
    /// Records older than `max_age`.
    pub expired: u64,
    /// Records thinned out (keep 1 of N) to make room.
    pub thinned: u64,
    /// Torn or corrupt records skipped on read.
    pub corrupt: u64,
    /// Times the buffer could not be opened and was moved aside.
    pub resets: u32,
}

impl DropCounts {
    /// Records lost, all reasons together.
    pub fn total(&self) -> u64 {
        self.full + self.expired + self.thinned + self.corrupt
    }
}

// ------------------------------------------------------- acks and presence

/// Collector to agent: these records of `boot` are durably stored and may
/// leave the agent's disk — once the signature verifies against a key the
/// agent trusts (`crate::sign::verify_ack`). The signature covers the unit
/// the ack is about as well as every field here but `key_id` and `sig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub boot: BootId,
    /// Every seq in `1..=upto` is stored (or was never sent): a cumulative ack.
    pub upto: u64,
    /// Stored seqs above `upto` (selective ack), ascending and disjoint. Live
    /// records published ahead of a backlog are freed through these.
    #[serde(deserialize_with = "crate::codec::bounded_vec")]
    pub ranges: Vec<SeqRange>,
    /// The collector's clock when it sent the ack, unix ms: lets the agent
    /// estimate its clock offset.
    pub collector_ms: u64,
    /// The collector key that signed this ack (schema v2; zero in v1).
    pub key_id: KeyId,
    /// Ed25519 signature (schema v2; zero in v1), see [`crate::sign`].
    pub sig: Signature,
}

impl Ack {
    /// Does this ack cover `seq` of `boot`?
    pub fn covers(&self, boot: BootId, seq: u64) -> bool {
        boot == self.boot && (seq <= self.upto || self.ranges.iter().any(|r| r.contains(seq)))
    }
}

/// An inclusive range of sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
}

impl SeqRange {
    pub fn contains(&self, seq: u64) -> bool {
        self.first <= seq && seq <= self.last
    }
}

/// Retained on the unit's state topic: the agent's birth says online, its
/// announcement (schema v2) says it is going away and why, its MQTT will
/// says the connection was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub online: bool,
    pub boot: BootId,
    /// Connection number within the boot (1 for the first connect); orders a
    /// late will of an old connection behind the birth of a newer one.
    pub connection: u32,
    /// When the connection was made (birth, will) or the announcement was
    /// made, unix ms, agent clock. Shown, never trusted for ordering.
    pub at_ms: u64,
    /// Why (schema v2; a v1 presence reads as `Connected` or `Lost`).
    /// `serde(default)` only for JSON stored before the field existed.
    #[serde(default)]
    pub reason: PresenceReason,
}

impl Presence {
    /// Is the online flag consistent with the reason? A birth carries
    /// `Connected` or `Resumed`; an offline presence `Lost`, `Shutdown`,
    /// `Stop` or `Sleep`. A code this build does not know fits either.
    pub fn is_consistent(&self) -> bool {
        match self.reason {
            PresenceReason::Unknown { .. } => true,
            r => r.is_online() == self.online,
        }
    }
}

/// Why a unit comes or goes. On the wire a code and one optional number
/// (a fixed shape), so a code from a newer agent still decodes, as
/// `Unknown`, instead of failing the whole message: the collector treats an
/// unknown departure as `Lost` and counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(from = "RawReason", into = "RawReason")]
pub enum PresenceReason {
    /// A birth: the agent (re)connected.
    Connected,
    /// A birth after the OS resumed from sleep, and how long it slept
    /// (agent clock, from the sleep announcement to the resume).
    Resumed { slept_ms: u64 },
    /// The MQTT will: the connection went away unannounced.
    #[default]
    Lost,
    /// The OS is shutting down or rebooting.
    Shutdown,
    /// The service was stopped by an operator; for a restart or an upgrade,
    /// how long until it is back.
    Stop { back_within_ms: Option<u64> },
    /// The OS is suspending.
    Sleep,
    /// A code this build does not know (a newer agent's).
    Unknown { code: u32 },
}

impl PresenceReason {
    /// A birth's reason (`Connected`, `Resumed`)?
    pub fn is_online(self) -> bool {
        matches!(
            self,
            PresenceReason::Connected | PresenceReason::Resumed { .. }
        )
    }

    /// An announced departure (`Shutdown`, `Stop`, `Sleep`)?
    pub fn is_announced(self) -> bool {
        matches!(
            self,
            PresenceReason::Shutdown | PresenceReason::Stop { .. } | PresenceReason::Sleep
        )
    }

    /// A short, stable name (a metric label, the feed's `presence.reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceReason::Connected => "connected",
            PresenceReason::Resumed { .. } => "resumed",
            PresenceReason::Lost => "lost",
            PresenceReason::Shutdown => "shutdown",
            PresenceReason::Stop { .. } => "stop",
            PresenceReason::Sleep => "sleep",
            PresenceReason::Unknown { .. } => "unknown",
        }
    }
}

/// The wire shape of [`PresenceReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct RawReason {
    code: u32,
    ms: Option<u64>,
}

impl From<RawReason> for PresenceReason {
    fn from(r: RawReason) -> Self {
        match r.code {
            0 => PresenceReason::Connected,
            1 => PresenceReason::Resumed {
                slept_ms: r.ms.unwrap_or(0),
            },
            2 => PresenceReason::Lost,
            3 => PresenceReason::Shutdown,
            4 => PresenceReason::Stop {
                back_within_ms: r.ms,
            },
            5 => PresenceReason::Sleep,
            code => PresenceReason::Unknown { code },
        }
    }
}

impl From<PresenceReason> for RawReason {
    fn from(r: PresenceReason) -> Self {
        let (code, ms) = match r {
            PresenceReason::Connected => (0, None),
            PresenceReason::Resumed { slept_ms } => (1, Some(slept_ms)),
            PresenceReason::Lost => (2, None),
            PresenceReason::Shutdown => (3, None),
            PresenceReason::Stop { back_within_ms } => (4, back_within_ms),
            PresenceReason::Sleep => (5, None),
            PresenceReason::Unknown { code } => (code, None),
        };
        RawReason { code, ms }
    }
}

// -------------------------------------------------------------- collector hello

/// Most next keys a hello announces.
pub const MAX_HELLO_KEYS: usize = 4;

/// Collector to every agent, retained on `muster/v1/collector` and
/// republished each time the collector's subscription is (re)established:
/// "I am subscribed now". An agent that sees a newer one resends what it
/// has in flight at once instead of waiting out its ack timeout; a hello
/// also announces the collector's next keys (rotation). Not a [`Message`]:
/// it has its own codec (`encode_hello` / `decode_hello`, schema v2 on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// When this collector process started, unix ms, collector clock.
    pub started_ms: u64,
    /// Grows by one with every (re)subscription of this process.
    /// `(started_ms, counter)` orders hellos.
    pub counter: u64,
    /// Keys the collector will sign with next: agents that verify this
    /// hello trust them from now on. At most [`MAX_HELLO_KEYS`].
    #[serde(deserialize_with = "crate::codec::bounded_vec")]
    pub next_keys: Vec<PublicKey>,
    pub key_id: KeyId,
    pub sig: Signature,
}

impl Hello {
    /// The order of hellos: a later process start, or a later subscription
    /// of the same process.
    pub fn order(&self) -> (u64, u64) {
        (self.started_ms, self.counter)
    }
}

// ------------------------------------------------------------ remote config

/// Top-level sections of the agent's TOML a remote document may ever set
/// (an agent's `[remote] allow` names a subset); identity, mqtt, buffer,
/// uplink, power, log, enroll, trust and remote itself are local only.
pub const REMOTE_SECTIONS: [&str; 5] = ["probe", "sampling", "network", "report", "labels"];

/// Largest remote configuration document body (TOML), in bytes.
pub const MAX_CONFIG_BODY: usize = 64 * 1024;
/// Longest reason in a [`ConfigStatus`], in characters.
pub const MAX_CONFIG_REASON: usize = 512;

/// Which units a remote document is for: every unit of an agency, or one
/// unit (a unit's document overrides its agency's, section by section).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DocScope {
    Agency { agency: String },
    Unit { unit: UnitId },
}

impl DocScope {
    pub fn agency(&self) -> &str {
        match self {
            DocScope::Agency { agency } => agency,
            DocScope::Unit { unit } => &unit.agency,
        }
    }
}

/// Collector to agents, retained on the scope's config topic: the
/// sections a collector sets remotely, as TOML, signed (see
/// `crate::sign::verify_config`). `version` only grows per scope. Not a
/// [`Message`]: it has its own codec (`encode_config` / `decode_config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDoc {
    pub scope: DocScope,
    pub version: u64,
    /// When it was signed, unix ms, collector clock (shown, never trusted
    /// for ordering: `version` orders).
    pub issued_ms: u64,
    /// TOML: only top-level sections, at most [`MAX_CONFIG_BODY`] bytes.
    pub body: String,
    pub key_id: KeyId,
    pub sig: Signature,
}

/// A document as a status names it: its version and hash
/// (`crate::sign::config_hash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DocRef {
    pub version: u64,
    pub hash: [u8; 32],
}

/// Where a configuration step stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigState {
    /// Verified and valid; being applied.
    Applying,
    /// Running; its health window passed (or it is the local config).
    Applied,
    /// Could not be applied (a probe would not build, ...); the previous
    /// configuration keeps running.
    Failed { reason: String },
    /// Refused before anything was applied: unsigned, untrusted or bad
    /// signature, bound to another unit or agency, an older version, a
    /// section not allowed, or invalid.
    Refused {
        reason: RefusalReason,
        detail: String,
    },
    /// Applied, then the agent's own health regressed within the window:
    /// back on the last known good.
    RolledBack { reason: String },
}

/// Why a remote document was refused, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefusalReason {
    Malformed,
    Unsigned,
    UntrustedKey,
    BadSignature,
    WrongUnit,
    WrongAgency,
    OldVersion,
    SectionNotAllowed,
    Invalid,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 9] = [
        RefusalReason::Malformed,
        RefusalReason::Unsigned,
        RefusalReason::UntrustedKey,
        RefusalReason::BadSignature,
        RefusalReason::WrongUnit,
        RefusalReason::WrongAgency,
        RefusalReason::OldVersion,
        RefusalReason::SectionNotAllowed,
        RefusalReason::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Malformed => "malformed",
            RefusalReason::Unsigned => "unsigned",
            RefusalReason::UntrustedKey => "untrusted_key",
            RefusalReason::BadSignature => "bad_signature",
            RefusalReason::WrongUnit => "wrong_unit",
            RefusalReason::WrongAgency => "wrong_agency",
            RefusalReason::OldVersion => "old_version",
            RefusalReason::SectionNotAllowed => "section_not_allowed",
            RefusalReason::Invalid => "invalid",
        }
    }
}

impl ConfigState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ConfigState::Applying => "applying",
            ConfigState::Applied => "applied",
            ConfigState::Failed { .. } => "failed",
            ConfigState::Refused { .. } => "refused",
            ConfigState::RolledBack { .. } => "rolled_back",
        }
    }

    fn reason(&self) -> Option<&str> {
        match self {
            ConfigState::Failed { reason } | ConfigState::RolledBack { reason } => Some(reason),
            ConfigState::Refused { detail, .. } => Some(detail),
            ConfigState::Applying | ConfigState::Applied => None,
        }
    }
}

/// Agent to collector, a buffered record: one step of its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// The document this step is about (`None`: the local config alone,
    /// reported at start).
    pub doc: Option<(DocScopeKind, DocRef)>,
    pub state: ConfigState,
    /// What runs after this step: SHA-256 of the effective configuration's
    /// canonical form, and the remote documents it was made from.
    pub running: [u8; 32],
    pub running_agency: Option<DocRef>,
    pub running_unit: Option<DocRef>,
}

/// Which of a unit's two documents (its agency's or its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DocScopeKind {
    Agency,
    Unit,
}

impl ConfigStatus {
    /// Reasons within [`MAX_CONFIG_REASON`] characters.
    pub fn validate(&self) -> Result<(), String> {
        match self.state.reason() {
            Some(r) if r.chars().count() > MAX_CONFIG_REASON => Err(format!(
                "config status reason is {} characters; the limit is {MAX_CONFIG_REASON}",
                r.chars().count()
            )),
            _ => Ok(()),
        }
    }
}
