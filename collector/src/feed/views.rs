//! The feed's JSON shapes. They are an API boundary: add fields, do not
//! rename or remove them. Boot ids are 16-digit hex strings (a u64 does not
//! survive JavaScript's numbers); times are unix milliseconds.

use muster_proto::{AgentStatus, HostSample, Payload, Presence, ProbeResult};
use serde::Serialize;

use crate::ingest::seq::BootSeq;
use crate::model::{Change, Reason, Status};
use crate::store::{Latest, StoredEvent, StoredSample, UnitRecord};

/// A list response: `{"items": [...], "next_cursor": "..." | null}`. Pass
/// `next_cursor` back as `?cursor=` for the next page.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PresenceView {
    pub online: bool,
    pub boot: String,
    pub connection: u32,
    pub at_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct SeqView {
    /// Distinct records received (all boots remembered).
    pub received: u64,
    /// Copies received again and dropped.
    pub duplicates: u64,
    /// Seqs below the highest seen that never arrived.
    pub missing: u64,
    /// The unit's current boot id.
    pub boot: Option<String>,
}

/// A unit in the list.
#[derive(Debug, Serialize)]
pub struct UnitView {
    pub agency: String,
    pub unit: String,
    pub status: Status,
    /// Since when (unix ms) the unit has had this status.
    pub since_ms: u64,
    pub reasons: Vec<Reason>,
    /// From the agent's birth and will; `null` before any presence message.
    pub online: Option<bool>,
    pub presence: Option<PresenceView>,
    pub first_seen_ms: u64,
    /// Collector time of the last message from the unit.
    pub last_seen_ms: u64,
    /// Event time of the unit's newest record.
    pub last_at_ms: Option<u64>,
    pub interval_ms: Option<u32>,
    pub seq: SeqView,
    /// The agent's latest heartbeat: version, backlog, drops, reconnects.
    pub agent: Option<AgentStatus>,
    /// Open incidents the unit is affected by.
    pub incidents: Vec<String>,
}

pub fn hex(b: muster_proto::BootId) -> String {
    b.to_string()
}

impl From<&UnitRecord> for UnitView {
    fn from(u: &UnitRecord) -> Self {
        let t = u.seq.totals();
        let mut incidents: Vec<String> = u
            .health
            .reasons
            .iter()
            .filter_map(|r| r.incident.clone())
            .collect();
        incidents.sort();
        incidents.dedup();
        UnitView {
            agency: u.unit.agency.clone(),
            unit: u.unit.unit.clone(),
            status: u.health.status,
            since_ms: u.health.since_ms,
            reasons: u.health.reasons.clone(),
            online: u.online(),
            presence: u.presence.map(|p| PresenceView {
                online: p.online,
                boot: hex(p.boot),
                connection: p.connection,
                at_ms: p.at_ms,
            }),
            first_seen_ms: u.first_seen_ms,
            last_seen_ms: u.last_seen_ms,
            last_at_ms: u.last_at_ms,
            interval_ms: u.interval_ms,
            seq: SeqView {
                received: t.received,
                duplicates: t.duplicates,
                missing: t.missing,
                boot: u.seq.current_boot().map(|b| hex(b.boot)),
            },
            agent: u.agent.clone(),
            incidents,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct BootView {
    pub boot: String,
    pub received: u64,
    pub duplicates: u64,
    pub missing: u64,
    pub max_seq: u64,
}

impl From<&BootSeq> for BootView {
    fn from(b: &BootSeq) -> Self {
        BootView {
            boot: hex(b.boot),
            received: b.received,
            duplicates: b.duplicates,
            missing: b.missing(),
            max_seq: b.max_seq(),
        }
    }
}

/// A sample's content, tagged by kind: `"kind": "host", "data": {...}`.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum SampleData {
    Host(HostSample),
    Probe(ProbeResult),
    Status(AgentStatus),
    Presence(Presence),
}

#[derive(Debug, Serialize)]
pub struct SampleView {
    pub boot: String,
    pub seq: u64,
    /// Event time (unix ms), the agent's clock.
    pub at_ms: u64,
    #[serde(flatten)]
    pub data: SampleData,
}

impl From<StoredSample> for SampleView {
    fn from(s: StoredSample) -> Self {
        SampleView {
            boot: hex(s.boot),
            seq: s.seq,
            at_ms: s.at_ms,
            data: match s.payload {
                Payload::Host(h) => SampleData::Host(h),
                Payload::Probe(p) => SampleData::Probe(p),
                Payload::Status(st) => SampleData::Status(st),
                Payload::Presence(p) => SampleData::Presence(p),
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct LatestView {
    pub host: Option<SampleView>,
    /// Newest result of each probe, by name.
    pub probes: Vec<SampleView>,
    pub status: Option<SampleView>,
}

impl From<Latest> for LatestView {
    fn from(l: Latest) -> Self {
        LatestView {
            host: l.host.map(Into::into),
            probes: l.probes.into_iter().map(Into::into).collect(),
            status: l.status.map(Into::into),
        }
    }
}

/// One unit in detail.
#[derive(Debug, Serialize)]
pub struct UnitDetail {
    #[serde(flatten)]
    pub unit: UnitView,
    pub boots: Vec<BootView>,
    pub latest: LatestView,
}

/// A transition or incident change, as `/api/v1/events` lists it and the
/// stream sends it: `{"id": 7, "type": "transition", ...}`.
#[derive(Debug, Serialize)]
pub struct EventView<'a> {
    pub id: u64,
    #[serde(flatten)]
    pub change: &'a Change,
}

impl<'a> From<&'a StoredEvent> for EventView<'a> {
    fn from(e: &'a StoredEvent) -> Self {
        EventView {
            id: e.id,
            change: &e.change,
        }
    }
}
