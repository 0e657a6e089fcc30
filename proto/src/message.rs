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
    /// Online or offline (agent's birth and will, retained on the state topic).
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
}

impl Payload {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Payload::Host(_) => "host",
            Payload::Probe(_) => "probe",
            Payload::Status(_) => "status",
        }
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
    pub failures: Vec<CollectorFailure>,
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
pub struct CollectorFailure {
    pub collector: Collector,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Collector {
    Cpu,
    Load,
    Memory,
    Disks,
    Networks,
    Processes,
    Uptime,
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

/// Retained on the unit's state topic: the agent's birth message says
/// online, its MQTT will says offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub online: bool,
    pub boot: BootId,
    /// Connection number within the boot (1 for the first connect); orders a
    /// late will of an old connection behind the birth of a newer one.
    pub connection: u32,
    /// When the connection was made, unix ms, agent clock.
    pub at_ms: u64,
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
