//! Schema version 1, frozen: the layouts of the types that changed in v2
//! (`Ack` gained `key_id` and `sig`; `AgentStatus` gained `acks_refused`
//! and `observations_dropped`; `Presence` gained `reason`; `HostSample`
//! gained `network`; `Payload` gained `Presence`; `SamplerFamily` (then `Collector`) gained four
//! variants at its end) and of the types that contain them. Every other type
//! is shared with the current schema unchanged. Converting v1 → current
//! fills the new fields with "unsigned", 0, no network, and `Connected` /
//! `Lost` (a v1 will means lost, as it always did); current → v1 drops
//! them, so a collector answers a v1 unit in v1 (an unsigned ack, which an
//! upgraded agent refuses, and an old agent accepts as before).
//!
//! Do not edit: these bytes are in the field (`tests/golden/v1/`).

use serde::{Deserialize, Serialize};

use crate::codec::EncodeError;
use crate::ids::{BootId, UnitId};
use crate::message as cur;
use crate::message::{
    Cpu, Disk, DropCounts, Memory, NetIf, PresenceReason, ProbeResult, Process, SamplerFailure,
    SamplerFamily, SeqRange,
};
use crate::sign::{KeyId, Signature};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Message {
    pub unit: UnitId,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Body {
    Record(Record),
    Batch(#[serde(deserialize_with = "crate::codec::bounded_vec")] Vec<Record>),
    Ack(Ack),
    Presence(Presence),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub boot: BootId,
    pub seq: u64,
    pub at_ms: u64,
    pub payload: Payload,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Payload {
    Host(HostSample),
    Probe(ProbeResult),
    Status(AgentStatus),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HostSample {
    pub interval_ms: u32,
    pub cpu: Option<Cpu>,
    pub load_x100: Option<[u32; 3]>,
    pub memory: Option<Memory>,
    #[serde(deserialize_with = "crate::codec::bounded_vec")]
    pub disks: Vec<Disk>,
    #[serde(deserialize_with = "crate::codec::bounded_vec")]
    pub nets: Vec<NetIf>,
    pub uptime_s: u64,
    #[serde(deserialize_with = "crate::codec::bounded_vec")]
    pub processes: Vec<Process>,
    /// Only the v1 `SamplerFamily` variants (`Cpu` ..= `Uptime`) are written.
    #[serde(deserialize_with = "crate::codec::bounded_vec")]
    pub failures: Vec<SamplerFailure>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Presence {
    pub online: bool,
    pub boot: BootId,
    pub connection: u32,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AgentStatus {
    pub version: String,
    pub interval_ms: u32,
    pub backlog_records: u64,
    pub backlog_bytes: u64,
    pub oldest_unsent_ms: Option<u64>,
    pub dropped: DropCounts,
    pub reconnects: u32,
    pub clock_offset_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ack {
    pub boot: BootId,
    pub upto: u64,
    #[serde(deserialize_with = "crate::codec::bounded_vec")]
    pub ranges: Vec<SeqRange>,
    pub collector_ms: u64,
}

// ------------------------------------------------------------ v1 → current

impl From<Message> for cur::Message {
    fn from(m: Message) -> Self {
        cur::Message {
            unit: m.unit,
            body: match m.body {
                Body::Record(r) => cur::Body::Record(r.into()),
                Body::Batch(rs) => cur::Body::Batch(rs.into_iter().map(Into::into).collect()),
                Body::Ack(a) => cur::Body::Ack(cur::Ack {
                    boot: a.boot,
                    upto: a.upto,
                    ranges: a.ranges,
                    collector_ms: a.collector_ms,
                    key_id: KeyId::NONE,
                    sig: Signature::NONE,
                }),
                Body::Presence(p) => cur::Body::Presence(p.into()),
            },
        }
    }
}

impl From<Presence> for cur::Presence {
    fn from(p: Presence) -> Self {
        cur::Presence {
            online: p.online,
            boot: p.boot,
            connection: p.connection,
            at_ms: p.at_ms,
            reason: if p.online {
                PresenceReason::Connected
            } else {
                PresenceReason::Lost
            },
        }
    }
}

impl From<HostSample> for cur::HostSample {
    fn from(h: HostSample) -> Self {
        cur::HostSample {
            interval_ms: h.interval_ms,
            cpu: h.cpu,
            load_x100: h.load_x100,
            memory: h.memory,
            disks: h.disks,
            nets: h.nets,
            uptime_s: h.uptime_s,
            processes: h.processes,
            failures: h.failures,
            network: None,
        }
    }
}

impl From<Record> for cur::Record {
    fn from(r: Record) -> Self {
        cur::Record {
            boot: r.boot,
            seq: r.seq,
            at_ms: r.at_ms,
            payload: match r.payload {
                Payload::Host(h) => cur::Payload::Host(h.into()),
                Payload::Probe(p) => cur::Payload::Probe(p),
                Payload::Status(s) => cur::Payload::Status(cur::AgentStatus {
                    version: s.version,
                    interval_ms: s.interval_ms,
                    backlog_records: s.backlog_records,
                    backlog_bytes: s.backlog_bytes,
                    oldest_unsent_ms: s.oldest_unsent_ms,
                    dropped: s.dropped,
                    reconnects: s.reconnects,
                    clock_offset_ms: s.clock_offset_ms,
                    acks_refused: 0,
                    observations_dropped: 0,
                }),
            },
        }
    }
}

// ------------------------------------------------------------ current → v1

impl TryFrom<&cur::Message> for Message {
    type Error = EncodeError;

    fn try_from(m: &cur::Message) -> Result<Self, EncodeError> {
        Ok(Message {
            unit: m.unit.clone(),
            body: match &m.body {
                cur::Body::Record(r) => Body::Record(r.try_into()?),
                cur::Body::Batch(rs) => {
                    Body::Batch(rs.iter().map(TryInto::try_into).collect::<Result<_, _>>()?)
                }
                cur::Body::Ack(a) => Body::Ack(Ack {
                    boot: a.boot,
                    upto: a.upto,
                    ranges: a.ranges.clone(),
                    collector_ms: a.collector_ms,
                }),
                cur::Body::Presence(p) => Body::Presence(p.into()),
            },
        })
    }
}

impl TryFrom<&cur::Record> for Record {
    type Error = EncodeError;

    fn try_from(r: &cur::Record) -> Result<Self, EncodeError> {
        Ok(Record {
            boot: r.boot,
            seq: r.seq,
            at_ms: r.at_ms,
            payload: match &r.payload {
                cur::Payload::Host(h) => Payload::Host(h.into()),
                cur::Payload::Probe(p) => Payload::Probe(p.clone()),
                cur::Payload::Status(s) => Payload::Status(AgentStatus {
                    version: s.version.clone(),
                    interval_ms: s.interval_ms,
                    backlog_records: s.backlog_records,
                    backlog_bytes: s.backlog_bytes,
                    oldest_unsent_ms: s.oldest_unsent_ms,
                    dropped: s.dropped,
                    reconnects: s.reconnects,
                    clock_offset_ms: s.clock_offset_ms,
                }),
                cur::Payload::Presence(_) => {
                    return Err(EncodeError::NotInVersion("an announcement record", 1));
                }
                cur::Payload::Facts(_) => {
                    return Err(EncodeError::NotInVersion("a facts record", 1));
                }
                cur::Payload::Config(_) => {
                    return Err(EncodeError::NotInVersion("a config status record", 1));
                }
                cur::Payload::Action(_) => {
                    return Err(EncodeError::NotInVersion("an action audit record", 1));
                }
            },
        })
    }
}

impl From<&cur::Presence> for Presence {
    fn from(p: &cur::Presence) -> Self {
        Presence {
            online: p.online,
            boot: p.boot,
            connection: p.connection,
            at_ms: p.at_ms,
        }
    }
}

impl From<&cur::HostSample> for HostSample {
    fn from(h: &cur::HostSample) -> Self {
        HostSample {
            interval_ms: h.interval_ms,
            cpu: h.cpu.clone(),
            load_x100: h.load_x100,
            memory: h.memory.clone(),
            disks: h.disks.clone(),
            nets: h.nets.clone(),
            uptime_s: h.uptime_s,
            processes: h.processes.clone(),
            failures: h
                .failures
                .iter()
                .filter(|f| {
                    matches!(
                        f.collector,
                        SamplerFamily::Cpu
                            | SamplerFamily::Load
                            | SamplerFamily::Memory
                            | SamplerFamily::Disks
                            | SamplerFamily::Networks
                            | SamplerFamily::Processes
                            | SamplerFamily::Uptime
                    )
                })
                .cloned()
                .collect(),
        }
    }
}
