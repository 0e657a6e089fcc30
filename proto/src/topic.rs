//! The MQTT topic scheme. Every topic a unit uses has five levels:
//!
//! | topic                                  | who publishes | QoS | retained | payload                  |
//! |----------------------------------------|---------------|-----|----------|--------------------------|
//! | `muster/v1/{agency}/{unit}/telemetry`  | agent         | 1   | no       | `Record` or `Batch`      |
//! | `muster/v1/{agency}/{unit}/state`      | agent (birth, will) | 1 | yes   | `Presence`               |
//! | `muster/v1/{agency}/{unit}/ack`        | collector     | 1   | no       | `Ack`                    |
//! | `muster/v1/{agency}/{unit}/status`     | collector     | 1   | yes      | JSON, for agencies       |
//! | `muster/v1/{agency}/{unit}/config`     | collector     | 1   | yes      | signed `ConfigDoc`       |
//!
//! An agency's own config document goes, retained and signed, to the
//! four-level [`agency_config_topic`] `muster/v1/{agency}/config`.
//!
//! Agency-wide incidents go, as retained JSON, to the four-level topic
//! `muster/v1/{agency}/incidents`, which cannot collide with a unit topic.
//! The collector's signed `Hello` goes, retained, to the three-level
//! [`COLLECTOR_TOPIC`] `muster/v1/collector`, which can collide with
//! neither (every agent subscribes to it; only the collector publishes).
//! The `v1` level is the topic scheme's version, not the payload's schema
//! version (that is the envelope's first byte).

use std::fmt;

use crate::ids::{IdentityError, UnitId, validate_part};

/// First two levels of every Muster topic.
pub const PREFIX: &str = "muster/v1";

/// Retained, signed collector hello (QoS 1), republished on every
/// (re)subscription of the collector. Three levels: never a unit or an
/// agency topic.
pub const COLLECTOR_TOPIC: &str = "muster/v1/collector";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    Telemetry,
    State,
    Ack,
    Status,
    Config,
    /// Signed action requests, collector to one agent (never retained).
    Action,
}

impl TopicKind {
    pub const ALL: [TopicKind; 6] = [
        TopicKind::Telemetry,
        TopicKind::State,
        TopicKind::Ack,
        TopicKind::Status,
        TopicKind::Config,
        TopicKind::Action,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Telemetry => "telemetry",
            TopicKind::State => "state",
            TopicKind::Ack => "ack",
            TopicKind::Status => "status",
            TopicKind::Config => "config",
            TopicKind::Action => "action",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} is not under {PREFIX}/")]
    NotMuster(String),
    #[error("topic {0:?} does not have the form {PREFIX}/{{agency}}/{{unit}}/{{kind}}")]
    Shape(String),
    #[error("topic {topic:?} ends in unknown kind {kind:?}")]
    UnknownKind { topic: String, kind: String },
    #[error("topic {topic:?}: {error}")]
    Identity { topic: String, error: IdentityError },
    #[error("shared subscription group {0:?} must be non-empty and free of '+', '#' and '/'")]
    Group(String),
}

/// A parsed unit topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    pub unit: UnitId,
    pub kind: TopicKind,
}

impl Topic {
    pub fn new(unit: UnitId, kind: TopicKind) -> Self {
        Topic { unit, kind }
    }

    /// Parses and validates a concrete (wildcard-free) unit topic.
    pub fn parse(topic: &str) -> Result<Topic, TopicError> {
        let rest = topic
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| TopicError::NotMuster(topic.to_owned()))?;
        let mut parts = rest.split('/');
        let (Some(agency), Some(unit), Some(kind), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TopicError::Shape(topic.to_owned()));
        };
        let kind = TopicKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .ok_or_else(|| TopicError::UnknownKind {
                topic: topic.to_owned(),
                kind: kind.to_owned(),
            })?;
        let unit = UnitId::new(agency, unit).map_err(|source| TopicError::Identity {
            topic: topic.to_owned(),
            error: source,
        })?;
        Ok(Topic { unit, kind })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}/{}/{}/{}",
            self.unit.agency,
            self.unit.unit,
            self.kind.as_str()
        )
    }
}

/// `muster/v1/{agency}/{unit}/{kind}` for a validated unit.
pub fn unit_topic(unit: &UnitId, kind: TopicKind) -> String {
    format!("{PREFIX}/{}/{}/{}", unit.agency, unit.unit, kind.as_str())
}

/// The filter a collector subscribes to for one kind across the whole fleet,
/// e.g. `muster/v1/+/+/telemetry`; with `group`, the MQTT v5 shared
/// subscription `$share/{group}/muster/v1/+/+/telemetry`.
pub fn fleet_filter(kind: TopicKind, group: Option<&str>) -> Result<String, TopicError> {
    let filter = format!("{PREFIX}/+/+/{}", kind.as_str());
    match group {
        None => Ok(filter),
        Some(g) if validate_part("group", g).is_ok() => Ok(format!("$share/{g}/{filter}")),
        Some(g) => Err(TopicError::Group(g.to_owned())),
    }
}

/// Retained JSON list of an agency's open incidents.
pub fn incidents_topic(agency: &str) -> Result<String, IdentityError> {
    validate_part("agency", agency)?;
    Ok(format!("{PREFIX}/{agency}/incidents"))
}

/// Retained, signed config document for every unit of an agency.
pub fn agency_config_topic(agency: &str) -> Result<String, IdentityError> {
    validate_part("agency", agency)?;
    Ok(format!("{PREFIX}/{agency}/config"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_parse_round_trip() {
        let unit = UnitId::new("metro-fire", "E12").unwrap();
        for kind in TopicKind::ALL {
            let s = unit_topic(&unit, kind);
            let t = Topic::parse(&s).unwrap();
            assert_eq!(t, Topic::new(unit.clone(), kind));
            assert_eq!(t.to_string(), s);
        }
        assert_eq!(
            unit_topic(&unit, TopicKind::Telemetry),
            "muster/v1/metro-fire/E12/telemetry"
        );
    }

    #[test]
    fn parse_rejects_table() {
        let cases = [
            ("other/v1/a/b/telemetry", "not under"),
            ("muster/v1a/b/telemetry", "not under"),
            ("muster/v1/a/b", "form"),
            ("muster/v1/a/b/c/telemetry", "form"),
            ("muster/v1/a/b/logs", "unknown kind"),
            ("muster/v1//b/telemetry", "agency is empty"),
            ("muster/v1/a//telemetry", "unit_id is empty"),
            ("muster/v1/a/+/telemetry", "'+'"),
            ("muster/v1/#/b/telemetry", "'#'"),
            ("muster/v1/a/b c/state", "' '"),
            ("muster/v1/metro/incidents", "form"),
            (COLLECTOR_TOPIC, "form"),
        ];
        for (topic, want) in cases {
            let err = Topic::parse(topic).unwrap_err().to_string();
            assert!(err.contains(want), "{topic}: {err}");
        }
    }

    #[test]
    fn fleet_filters() {
        assert_eq!(
            fleet_filter(TopicKind::Telemetry, None).unwrap(),
            "muster/v1/+/+/telemetry"
        );
        assert_eq!(
            fleet_filter(TopicKind::State, Some("collectors")).unwrap(),
            "$share/collectors/muster/v1/+/+/state"
        );
        assert!(fleet_filter(TopicKind::State, Some("a/b")).is_err());
        assert!(fleet_filter(TopicKind::State, Some("")).is_err());
        assert_eq!(
            incidents_topic("metro-fire").unwrap(),
            "muster/v1/metro-fire/incidents"
        );
        assert!(incidents_topic("metro+fire").is_err());
        assert_eq!(
            agency_config_topic("metro-fire").unwrap(),
            "muster/v1/metro-fire/config"
        );
        assert!(agency_config_topic("metro/fire").is_err());
    }
}
