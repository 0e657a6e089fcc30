//! Enrolment: `muster_enrollments_total{agency,result}`, every claim and
//! admin action by outcome (the labels of `enroll::registry::Outcome`).
//! Agencies are the configured ones (a claim's agency comes from its token,
//! an admin action's from a unit the registry holds), so the label set is
//! bounded.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::expo::Exposition;
use crate::enroll::registry::Outcome;

#[derive(Debug, Default)]
pub struct EnrollMetrics {
    /// (agency, outcome index) -> count.
    counts: Mutex<BTreeMap<(String, usize), u64>>,
}

impl EnrollMetrics {
    pub fn count(&self, agency: &str, outcome: Outcome) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry((agency.to_owned(), outcome.index())).or_default() += 1;
    }

    pub fn get(&self, agency: &str, outcome: Outcome) -> u64 {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.get(&(agency.to_owned(), outcome.index()))
            .copied()
            .unwrap_or(0)
    }

    pub fn render(&self, e: &mut Exposition) {
        e.family(
            "muster_enrollments_total",
            "counter",
            "Enrolment claims and admin actions, by agency and result.",
        );
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for ((agency, i), n) in c.iter() {
            e.sample(
                "muster_enrollments_total",
                &[("agency", agency), ("result", Outcome::ALL[*i].as_str())],
                n,
            );
        }
    }
}
