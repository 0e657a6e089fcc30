//! The feed's JSON shapes. They are an API boundary: add fields, do not
//! rename or remove them. Boot ids are 16-digit hex strings (a u64 does not
//! survive JavaScript's numbers); times are unix milliseconds.

use std::collections::BTreeMap;

use muster_proto::{
    AgentStatus, Cellular, Cpu, Disk, HostSample, Memory, NetContext, NetIf, Payload, Presence,
    PresenceReason, ProbeResult, Process, SamplerFailure, UnitFacts, Vpn, Wifi,
};
use serde::Serialize;

use crate::model::{Change, Reason, Status};
use crate::seq::BootSeq;
use crate::store::{KnownFacts, Latest, StoredEvent, StoredSample, UnitRecord};

/// A list response: `{"items": [...], "next_cursor": "..." | null}`. Pass
/// `next_cursor` back as `?cursor=` for the next page.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// The agent's last birth, announcement or will, and why (schema v2).
#[derive(Debug, Serialize)]
pub struct PresenceView {
    pub online: bool,
    pub boot: String,
    pub connection: u32,
    pub at_ms: u64,
    /// `connected`, `resumed`, `lost`, `shutdown`, `stop`, `sleep`, or
    /// `unknown` (a code from a newer agent; the collector treats it as lost).
    pub reason: &'static str,
    /// `resumed`: how long the unit slept (agent clock).
    pub slept_ms: Option<u64>,
    /// `stop` for a restart or an upgrade: how long until it is back.
    pub back_within_ms: Option<u64>,
}

impl From<&Presence> for PresenceView {
    fn from(p: &Presence) -> Self {
        let (slept_ms, back_within_ms) = match p.reason {
            PresenceReason::Resumed { slept_ms } => (Some(slept_ms), None),
            PresenceReason::Stop { back_within_ms } => (None, back_within_ms),
            _ => (None, None),
        };
        PresenceView {
            online: p.online,
            boot: hex(p.boot),
            connection: p.connection,
            at_ms: p.at_ms,
            reason: p.reason.as_str(),
            slept_ms,
            back_within_ms,
        }
    }
}

/// The default route: its interface and what kind of link it is.
#[derive(Debug, Serialize)]
pub struct RouteView {
    pub interface: String,
    /// `ethernet`, `wifi`, `cellular`, `vpn` or `other` (the wire's code
    /// never leaks: an unknown code from a newer agent reads `other`).
    pub kind: &'static str,
}

/// A host sample's network context (schema v2), in the feed's own shape.
#[derive(Debug, Serialize)]
pub struct NetView {
    /// `null`: no default route (a dead zone, or no link at all).
    pub route: Option<RouteView>,
    pub wifi: Option<Wifi>,
    /// Quality figures of the current access technology; `rsrq_db_x10`
    /// and `sinr_db_x10` are tenths of a dB.
    pub cellular: Option<Cellular>,
    pub vpns: Vec<Vpn>,
    /// Any configured VPN up? `null` when the agent's config names none.
    pub vpn_up: Option<bool>,
    /// The signal of the link carrying the default route, in dBm (Wi-Fi
    /// signal, or the modem's RSRP or RSSI).
    pub signal_dbm: Option<i16>,
    /// Default-route changes since the previous sample (roaming).
    pub route_changes: u32,
}

impl From<&NetContext> for NetView {
    fn from(n: &NetContext) -> Self {
        NetView {
            route: n.route.as_ref().map(|r| RouteView {
                interface: r.interface.clone(),
                kind: r.kind.as_str(),
            }),
            wifi: n.wifi.clone(),
            cellular: n.cellular.clone(),
            vpns: n.vpns.clone(),
            vpn_up: n.vpn_up(),
            signal_dbm: n.route_signal_dbm(),
            route_changes: n.route_changes,
        }
    }
}

/// A host sample as the feed shows it: the wire's fields, with the
/// network context as a [`NetView`].
#[derive(Debug, Serialize)]
pub struct HostView {
    pub interval_ms: u32,
    pub cpu: Option<Cpu>,
    pub load_x100: Option<[u32; 3]>,
    pub memory: Option<Memory>,
    pub disks: Vec<Disk>,
    pub nets: Vec<NetIf>,
    pub uptime_s: u64,
    pub processes: Vec<Process>,
    pub failures: Vec<SamplerFailure>,
    /// `null` from a v1 agent, or when every network family failed.
    pub network: Option<NetView>,
}

impl From<HostSample> for HostView {
    fn from(h: HostSample) -> Self {
        HostView {
            network: h.network.as_deref().map(NetView::from),
            interval_ms: h.interval_ms,
            cpu: h.cpu,
            load_x100: h.load_x100,
            memory: h.memory,
            disks: h.disks,
            nets: h.nets,
            uptime_s: h.uptime_s,
            processes: h.processes,
            failures: h.failures,
        }
    }
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
    /// The unit's labels from its local config (issue 16): `{}` until it
    /// reports them.
    pub labels: BTreeMap<String, String>,
    /// What the unit last reported about itself; `null` before its first
    /// facts record (an agent older than issue 16 never sends one).
    pub facts: Option<FactsView>,
}

/// What a unit reports about itself (issue 16), from its newest facts record.
#[derive(Debug, Serialize)]
pub struct FactsView {
    pub agent_version: String,
    pub os: String,
    /// The watched CAD client's version; `null` when the unit's config
    /// names no source or it could not be read.
    pub cad_version: Option<String>,
    /// Event time of the facts record (the agent's clock).
    pub at_ms: u64,
}

impl From<&KnownFacts> for FactsView {
    fn from(k: &KnownFacts) -> Self {
        FactsView {
            agent_version: k.facts.agent_version.clone(),
            os: k.facts.os.clone(),
            cad_version: k.facts.cad_version.clone(),
            at_ms: k.at_ms,
        }
    }
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
            presence: u.presence.as_ref().map(PresenceView::from),
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
            labels: u
                .labels()
                .iter()
                .map(|l| (l.key.clone(), l.value.clone()))
                .collect(),
            facts: u.facts.as_ref().map(FactsView::from),
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
    Host(Box<HostView>),
    Probe(ProbeResult),
    Status(AgentStatus),
    /// An announcement record (schema v2): the unit going away, and why.
    Presence(PresenceView),
    /// The unit's labels and reported facts.
    Facts(UnitFacts),
    /// A step of the unit's configuration.
    Config(ConfigStatusView),
    /// A step of an action request: the audit.
    Action(ActionAuditView),
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
                Payload::Host(h) => SampleData::Host(Box::new(h.into())),
                Payload::Probe(p) => SampleData::Probe(p),
                Payload::Status(st) => SampleData::Status(st),
                Payload::Presence(p) => SampleData::Presence(PresenceView::from(&p)),
                Payload::Facts(f) => SampleData::Facts(f),
                Payload::Config(c) => SampleData::Config(ConfigStatusView::from(&c)),
                Payload::Action(a) => SampleData::Action(ActionAuditView::from(&a)),
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

#[cfg(test)]
mod tests {
    use muster_proto::{PresenceReason, fixtures};
    use serde_json::json;

    use super::*;

    #[test]
    fn the_network_says_its_kind_in_words_not_the_wire_code() {
        let mut h = fixtures::host_sample();
        h.network = Some(Box::new(fixtures::net_context()));
        let v = serde_json::to_value(HostView::from(h.clone())).unwrap();
        let n = &v["network"];
        assert_eq!(
            n["route"],
            json!({"interface": "wwan0", "kind": "cellular"})
        );
        assert_eq!(n["signal_dbm"], -109);
        assert_eq!(n["vpn_up"], true);
        assert_eq!(n["cellular"]["technology"], "lte");
        assert_eq!(n["wifi"]["ssid"], "STATION-12");
        assert_eq!(n["route_changes"], 1);
        // A v1 agent's sample: no network.
        h.network = None;
        let v = serde_json::to_value(HostView::from(h)).unwrap();
        assert_eq!(v["network"], json!(null));
    }

    #[test]
    fn the_presence_says_why() {
        let table = [
            (PresenceReason::Connected, true, "connected", None, None),
            (
                PresenceReason::Resumed { slept_ms: 9 },
                true,
                "resumed",
                Some(9),
                None,
            ),
            (PresenceReason::Shutdown, false, "shutdown", None, None),
            (
                PresenceReason::Stop {
                    back_within_ms: Some(60_000),
                },
                false,
                "stop",
                None,
                Some(60_000),
            ),
            (PresenceReason::Sleep, false, "sleep", None, None),
            (PresenceReason::Lost, false, "lost", None, None),
            (
                PresenceReason::Unknown { code: 77 },
                false,
                "unknown",
                None,
                None,
            ),
        ];
        for (reason, online, name, slept, back) in table {
            let v = serde_json::to_value(PresenceView::from(&fixtures::presence(online, reason)))
                .unwrap();
            assert_eq!(v["reason"], name);
            assert_eq!(v["slept_ms"], json!(slept), "{name}");
            assert_eq!(v["back_within_ms"], json!(back), "{name}");
            assert_eq!(v["online"], online);
        }
    }
}

/// A [`muster_proto::ConfigStatus`] for JSON: hashes in hex, the state by name.
#[derive(Debug, Serialize)]
pub struct ActionAuditView {
    /// The request's nonce, hex: names the request across its steps.
    /// Absent when the agent could not read the request far enough.
    pub request: Option<String>,
    pub action: Option<String>,
    pub requested_by: Option<String>,
    pub issued_ms: Option<u64>,
    /// `refused`, `started`, `finished` or `failed`.
    pub step: &'static str,
    #[serde(flatten)]
    pub fields: crate::actions::event::StepFields,
}

impl From<&muster_proto::ActionAudit> for ActionAuditView {
    fn from(a: &muster_proto::ActionAudit) -> Self {
        use muster_proto::sign::hex_of;
        ActionAuditView {
            request: a.request.as_ref().map(|r| hex_of(&r.nonce)),
            action: a.request.as_ref().map(|r| r.action.clone()),
            requested_by: a.request.as_ref().map(|r| r.requested_by.clone()),
            issued_ms: a.request.as_ref().map(|r| r.issued_ms),
            step: a.step.as_str(),
            fields: crate::actions::event::StepFields::of(&a.step),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ConfigStatusView {
    /// `agency` or `unit`: which document the step is about; absent for the
    /// local config alone.
    pub doc_scope: Option<&'static str>,
    pub doc_version: Option<u64>,
    pub doc_hash: Option<String>,
    /// `applying`, `applied`, `failed`, `refused` or `rolled_back`.
    pub state: &'static str,
    /// A refusal's reason (`unsigned`, `wrong_unit`, ...).
    pub refusal: Option<&'static str>,
    pub reason: Option<String>,
    /// SHA-256 of the configuration running after this step.
    pub running_hash: String,
    pub running_agency_version: Option<u64>,
    pub running_unit_version: Option<u64>,
}

impl From<&muster_proto::ConfigStatus> for ConfigStatusView {
    fn from(c: &muster_proto::ConfigStatus) -> Self {
        use muster_proto::{ConfigState, DocScopeKind, sign::hex_of};
        let (refusal, reason) = match &c.state {
            ConfigState::Refused { reason, detail } => {
                (Some(reason.as_str()), Some(detail.clone()))
            }
            ConfigState::Failed { reason } | ConfigState::RolledBack { reason } => {
                (None, Some(reason.clone()))
            }
            ConfigState::Applying | ConfigState::Applied => (None, None),
        };
        ConfigStatusView {
            doc_scope: c.doc.map(|(k, _)| match k {
                DocScopeKind::Agency => "agency",
                DocScopeKind::Unit => "unit",
            }),
            doc_version: c.doc.map(|(_, d)| d.version),
            doc_hash: c.doc.map(|(_, d)| hex_of(&d.hash)),
            state: c.state.as_str(),
            refusal,
            reason,
            running_hash: hex_of(&c.running),
            running_agency_version: c.running_agency.map(|d| d.version),
            running_unit_version: c.running_unit.map(|d| d.version),
        }
    }
}
