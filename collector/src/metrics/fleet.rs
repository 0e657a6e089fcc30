//! Fleet gauges, computed from the live view at scrape time: units by
//! agency and status, open incidents, seq accounting; and transitions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use muster_proto::UnitId;

use super::expo::Exposition;
use crate::model::{Incident, Status};
use crate::seq::SeqTotals;
use crate::store::UnitRecord;

const STATUSES: [Status; 6] = Status::ALL;

fn status_index(s: Status) -> usize {
    STATUSES.iter().position(|x| *x == s).unwrap_or(0)
}

pub fn render<'a>(
    e: &mut Exposition,
    units: &BTreeMap<UnitId, Arc<UnitRecord>>,
    incidents: impl Iterator<Item = &'a Incident>,
) {
    let mut by_agency: BTreeMap<&str, ([u64; 6], SeqTotals)> = BTreeMap::new();
    for (id, u) in units {
        let entry = by_agency.entry(id.agency.as_str()).or_default();
        entry.0[status_index(u.health.status)] += 1;
        entry.1 += u.seq.totals();
    }
    let mut open: BTreeMap<&str, u64> = BTreeMap::new();
    for i in incidents.filter(|i| i.ended_ms.is_none()) {
        *open.entry(i.agency.as_str()).or_default() += 1;
    }
    e.family(
        "muster_units",
        "gauge",
        "Units known, by agency and status.",
    );
    for (agency, (counts, _)) in &by_agency {
        for s in STATUSES {
            e.sample(
                "muster_units",
                &[("agency", agency), ("status", s.as_str())],
                counts[status_index(s)],
            );
        }
    }
    e.family(
        "muster_unit_records_received",
        "gauge",
        "Distinct records received from the agency's units (all boots remembered).",
    );
    for (agency, (_, t)) in &by_agency {
        e.sample(
            "muster_unit_records_received",
            &[("agency", agency)],
            t.received,
        );
    }
    e.family(
        "muster_unit_records_duplicate",
        "gauge",
        "Duplicate records received from the agency's units.",
    );
    for (agency, (_, t)) in &by_agency {
        e.sample(
            "muster_unit_records_duplicate",
            &[("agency", agency)],
            t.duplicates,
        );
    }
    e.family(
        "muster_unit_records_missing",
        "gauge",
        "Records below a unit's highest seq that have not arrived (gaps).",
    );
    for (agency, (_, t)) in &by_agency {
        e.sample(
            "muster_unit_records_missing",
            &[("agency", agency)],
            t.missing,
        );
    }
    e.family(
        "muster_incidents_open",
        "gauge",
        "Open agency-wide incidents.",
    );
    for agency in by_agency.keys() {
        e.sample(
            "muster_incidents_open",
            &[("agency", agency)],
            open.get(agency).copied().unwrap_or(0),
        );
    }
}

/// Transitions the rules engine reported, by the status entered.
#[derive(Debug, Default)]
pub struct TransitionMetrics {
    to: [AtomicU64; STATUSES.len()],
    pub incidents: AtomicU64,
}

impl TransitionMetrics {
    pub fn count(&self, to: Status) {
        self.to[status_index(to)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, e: &mut Exposition) {
        e.family(
            "muster_transitions_total",
            "counter",
            "Unit status transitions, by the status entered.",
        );
        for s in STATUSES {
            e.sample(
                "muster_transitions_total",
                &[("to", s.as_str())],
                self.to[status_index(s)].load(Ordering::Relaxed),
            );
        }
        e.family(
            "muster_incident_changes_total",
            "counter",
            "Incident openings, changes and endings.",
        );
        e.sample(
            "muster_incident_changes_total",
            &[],
            self.incidents.load(Ordering::Relaxed),
        );
    }
}
