//! What the collector publishes for agencies over MQTT, as retained JSON:
//! each unit's status on `muster/v1/{agency}/{unit}/status`, and each
//! agency's open incidents on `muster/v1/{agency}/incidents`. Pure: builds
//! the messages; ingest hands them to the MQTT publisher.

use muster_proto::{TopicKind, topic};
use serde::Serialize;

use crate::model::{Incident, Reason, Status};
use crate::store::UnitRecord;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// When the first input this answers arrived (ack latency).
    pub since: Option<tokio::time::Instant>,
    pub kind: OutboundKind,
}

/// What the worker hands the publisher (`ingest::outqueue` coalesces it).
#[derive(Debug, Clone)]
pub enum Out {
    /// A status message (retained: the newest per topic is what counts),
    /// or an action request (never coalesced).
    Message(Outbound),
    /// An ack, signed and encoded when it is sent, so one still queued can
    /// be merged with a newer one for the same unit and boot.
    Ack(AckOut),
}

impl From<Outbound> for Out {
    fn from(o: Outbound) -> Out {
        Out::Message(o)
    }
}

/// An unsigned ack for a unit, in the wire version it speaks.
#[derive(Debug, Clone)]
pub struct AckOut {
    pub unit: muster_proto::UnitId,
    pub ack: muster_proto::Ack,
    pub version: u8,
    /// When the first input it answers arrived (ack latency).
    pub since: Option<tokio::time::Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundKind {
    Ack,
    Status,
    /// A signed action request (`crate::actions`): QoS 1, never retained,
    /// never coalesced (each is its own entry in the publisher's queue,
    /// which holds at most `[actions] max_pending` of them).
    Action,
}

/// The retained JSON on a unit's status topic.
#[derive(Debug, Serialize)]
pub struct UnitStatusMessage<'a> {
    pub agency: &'a str,
    pub unit: &'a str,
    pub status: Status,
    pub since_ms: u64,
    pub reasons: &'a [Reason],
    pub online: Option<bool>,
    pub last_seen_ms: u64,
    pub last_at_ms: Option<u64>,
}

pub fn unit_status(u: &UnitRecord) -> Outbound {
    let msg = UnitStatusMessage {
        agency: &u.unit.agency,
        unit: &u.unit.unit,
        status: u.health.status,
        since_ms: u.health.since_ms,
        reasons: &u.health.reasons,
        online: u.online(),
        last_seen_ms: u.last_seen_ms,
        last_at_ms: u.last_at_ms,
    };
    Outbound {
        topic: topic::unit_topic(&u.unit, TopicKind::Status),
        payload: serde_json::to_vec(&msg).unwrap_or_default(),
        retain: true,
        since: None,
        kind: OutboundKind::Status,
    }
}

/// The retained JSON on an agency's incidents topic: `{"agency": ..,
/// "incidents": [open incidents]}`.
pub fn agency_incidents<'a>(
    agency: &str,
    open: impl Iterator<Item = &'a Incident>,
) -> Option<Outbound> {
    #[derive(Serialize)]
    struct Msg<'a> {
        agency: &'a str,
        incidents: Vec<&'a Incident>,
    }
    let topic = topic::incidents_topic(agency).ok()?;
    let msg = Msg {
        agency,
        incidents: open
            .filter(|i| i.agency == agency && i.ended_ms.is_none())
            .collect(),
    };
    Some(Outbound {
        topic,
        payload: serde_json::to_vec(&msg).ok()?,
        retain: true,
        since: None,
        kind: OutboundKind::Status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::UnitId;

    #[test]
    fn unit_status_is_retained_json_on_the_status_topic() {
        let u = UnitRecord::new(UnitId::new("metro-fire", "E12").unwrap(), 7);
        let o = unit_status(&u);
        assert_eq!(o.topic, "muster/v1/metro-fire/E12/status");
        assert!(o.retain);
        let v: serde_json::Value = serde_json::from_slice(&o.payload).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["unit"], "E12");
        assert_eq!(v["since_ms"], 7);
    }

    #[test]
    fn incidents_list_only_the_agencys_open_ones() {
        let inc = |agency: &str, ended: Option<u64>| Incident {
            id: format!("{agency}:cad:1"),
            kind: crate::model::IncidentKind::ProbeFailing,
            agency: agency.into(),
            probe: "cad".into(),
            target: "https://cad".into(),
            affected: vec!["E1".into()],
            of_units: 2,
            since_ms: 1,
            ended_ms: ended,
            summary: String::new(),
        };
        let all = [inc("a", None), inc("b", None), inc("a", Some(5))];
        let o = agency_incidents("a", all.iter()).unwrap();
        assert_eq!(o.topic, "muster/v1/a/incidents");
        let v: serde_json::Value = serde_json::from_slice(&o.payload).unwrap();
        assert_eq!(v["incidents"].as_array().unwrap().len(), 1);
        assert_eq!(v["incidents"][0]["agency"], "a");
    }
}
