//! Which partition a unit is in, the same way NATS computes it.
//!
//! Contract (cluster mode on NATS 2.9, issue 15):
//! * The NATS cluster maps every telemetry subject to one with a partition
//!   token ([`mapping`], in each node's config: [`nats_config`]):
//!   `muster.v1.<agency>.<unit>.telemetry` (MQTT topic
//!   `muster/v1/<agency>/<unit>/telemetry`) becomes
//!   `muster.v1.<agency>.<unit>.telemetry.<p>`, `p` in `0..partitions`.
//!   One JetStream consumer per partition filters on [`telemetry_filter`].
//! * Only telemetry is mapped. A mapped subject no longer matches a
//!   subscription to the original topic, and an agent subscribes to its own
//!   `state` topic (it reads back its retained state and its will to tell a
//!   late will from a live session) and to its `ack` topic; so those keep
//!   their topics, and the collector assigns their messages with
//!   [`of`], which gives the same partition as the mapping.
//! * [`of`] is NATS's `partition(n, 1, 2)`: FNV-1a (32 bit) over the agency
//!   and unit tokens concatenated, modulo `n` (nats-server 2.9.10, checked
//!   by `tests/collector/cluster_nats.rs` against a real cluster).
//! * NATS 2.9 cannot carry every id Muster accepts: it closes an MQTT
//!   connection that publishes to a topic with a `.` ("characters ' ' and
//!   '.' not supported for MQTT topics"), and a `>` or `*` token is a
//!   wildcard in a NATS subject (`>` is not mapped at all). [`check_id`]
//!   refuses those, for cluster mode to reject at enrolment and in config.

use muster_proto::UnitId;

/// Partitions a fleet is split into unless configured.
pub const DEFAULT_PARTITIONS: u32 = 64;

/// The most partitions: each is a JetStream consumer and a lease row.
pub const MAX_PARTITIONS: u32 = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PartitionError {
    #[error("partitions must be 1 to {MAX_PARTITIONS}, not {0}")]
    Count(u32),
    #[error("partition {partition} of {partitions}: partitions are numbered from 0")]
    OutOfRange { partition: u32, partitions: u32 },
    #[error("{field} {value:?} cannot travel through NATS 2.9: {why}")]
    Id {
        field: &'static str,
        value: String,
        why: &'static str,
    },
}

fn check_count(partitions: u32) -> Result<u32, PartitionError> {
    if (1..=MAX_PARTITIONS).contains(&partitions) {
        Ok(partitions)
    } else {
        Err(PartitionError::Count(partitions))
    }
}

/// The partition of `unit` among `partitions` (1 to [`MAX_PARTITIONS`]).
pub fn of(unit: &UnitId, partitions: u32) -> Result<u32, PartitionError> {
    let n = check_count(partitions)?;
    let mut h: u32 = 0x811c_9dc5;
    for b in unit.agency.bytes().chain(unit.unit.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    Ok(h % n)
}

/// The subject mapping, source and destination, for NATS's `mappings`.
pub fn mapping(partitions: u32) -> Result<(String, String), PartitionError> {
    let n = check_count(partitions)?;
    Ok((
        "muster.v1.*.*.telemetry".to_owned(),
        format!(
            "muster.v1.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.telemetry.{{{{partition({n},1,2)}}}}"
        ),
    ))
}

/// The `mappings` block of a NATS server config (every node the same).
pub fn nats_config(partitions: u32) -> Result<String, PartitionError> {
    let (from, to) = mapping(partitions)?;
    Ok(format!("mappings = {{\n  \"{from}\": \"{to}\"\n}}\n"))
}

/// The NATS subject filter of partition `p`'s telemetry.
pub fn telemetry_filter(p: u32) -> String {
    format!("muster.v1.*.*.telemetry.{p}")
}

/// Whether a unit's ids can travel through NATS 2.9's MQTT listener and its
/// subjects (module docs).
pub fn check_id(unit: &UnitId) -> Result<(), PartitionError> {
    for (field, value) in [("agency", &unit.agency), ("unit", &unit.unit)] {
        let why = if value.contains('.') {
            "NATS 2.9 refuses '.' in MQTT topics"
        } else if value == "*" || value == ">" {
            "a '*' or '>' token is a NATS wildcard"
        } else {
            continue;
        };
        return Err(PartitionError::Id {
            field,
            value: value.clone(),
            why,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(a: &str, u: &str) -> UnitId {
        UnitId::new(a, u).unwrap()
    }

    /// What nats-server 2.9.10 put in the partition token for these
    /// topics, with [`nats_config`]`(64)` (observed by publishing each).
    #[test]
    fn partitions_are_the_ones_nats_assigned() {
        for (agency, u, p) in [
            ("metro", "E1", 36),
            ("metro", "E2", 29),
            ("metro", "E3", 10),
            ("metro", "E4", 43),
            ("metro", "plain", 30),
            ("metro", "x*y", 55),
            ("metro", "ünï", 11),
        ] {
            assert_eq!(of(&unit(agency, u), 64), Ok(p), "{agency}/{u}");
        }
    }

    #[test]
    fn every_partition_is_used_and_none_is_out_of_range() {
        let mut seen = vec![0u32; 64];
        for i in 0..6_400 {
            seen[of(&unit("metro-fire", &format!("E{i}")), 64).unwrap() as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (50..=150).contains(&n)), "{seen:?}");
        assert_eq!(of(&unit("a", "b"), 1), Ok(0));
    }

    #[test]
    fn counts_outside_the_range_are_refused() {
        for n in [0, MAX_PARTITIONS + 1] {
            assert_eq!(of(&unit("a", "b"), n), Err(PartitionError::Count(n)));
            assert_eq!(mapping(n), Err(PartitionError::Count(n)));
        }
    }

    #[test]
    fn the_mapping_is_natss_partition_over_agency_and_unit() {
        assert_eq!(
            nats_config(64).unwrap(),
            "mappings = {\n  \"muster.v1.*.*.telemetry\": \"muster.v1.{{wildcard(1)}}.{{wildcard(2)}}.telemetry.{{partition(64,1,2)}}\"\n}\n"
        );
        assert_eq!(telemetry_filter(7), "muster.v1.*.*.telemetry.7");
    }

    #[test]
    fn ids_nats_cannot_carry_are_named() {
        assert_eq!(check_id(&unit("metro", "E1")), Ok(()));
        assert_eq!(check_id(&unit("metro", "x*y")), Ok(()));
        for (a, u, field) in [
            ("me.tro", "E1", "agency"),
            ("metro", "E.1", "unit"),
            ("metro", "*", "unit"),
            (">", "E1", "agency"),
        ] {
            match check_id(&unit(a, u)) {
                Err(PartitionError::Id { field: f, .. }) => assert_eq!(f, field, "{a}/{u}"),
                other => panic!("{a}/{u}: {other:?}"),
            }
        }
    }
}
