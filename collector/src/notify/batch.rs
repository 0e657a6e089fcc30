//! Grouping (pure): one agency's changes are collected for a short window
//! from the first one, then go out as ONE notification. Transitions of
//! units whose reasons carry an incident id are folded under that incident,
//! so an incident across forty units is one message, not forty.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::time::{Duration, Instant};

use crate::model::{AutomationEvent, Change, Incident, RolloutEvent, Status, Transition};

/// The JSON body of a webhook. An API boundary like the feed's JSON: add
/// fields, do not rename or remove them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique per notification and the same on every retry of it: receivers
    /// use it to drop a duplicate delivery. Also sent as `X-Muster-Delivery`.
    pub id: String,
    pub agency: String,
    /// When the collector built it (unix ms).
    pub created_ms: u64,
    /// One line for people, e.g. for a chat channel.
    pub summary: String,
    /// Incidents that opened, changed or ended, each with the transitions
    /// of its units folded in.
    pub incidents: Vec<IncidentGroup>,
    /// Transitions not part of any incident, oldest first.
    pub transitions: Vec<Transition>,
    /// Rollout steps (`crate::rollout`), oldest first.
    #[serde(default)]
    pub rollouts: Vec<RolloutEvent>,
    /// Automation steps (`crate::automation`), oldest first: an
    /// `escalated` step is what pages people.
    #[serde(default)]
    pub automation: Vec<AutomationEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentGroup {
    /// The incident's latest state.
    pub incident: Incident,
    /// Transitions of its units in this window (reasons naming its id).
    pub transitions: Vec<Transition>,
}

/// Most changes one notification carries: a bigger storm goes out in
/// several, each full one as soon as it is full.
pub const MAX_CHANGES: usize = 500;

/// One agency's open window.
#[derive(Debug)]
pub struct Batcher {
    agency: String,
    window: Duration,
    opened: Option<Instant>,
    /// Incidents changed in this window, by id (latest state).
    incidents: BTreeMap<String, Incident>,
    /// Every incident seen and not yet ended: transitions naming one fold
    /// under it even when the incident itself did not change this window.
    known: BTreeMap<String, Incident>,
    transitions: Vec<Transition>,
    rollouts: Vec<RolloutEvent>,
    automation: Vec<AutomationEvent>,
}

impl Batcher {
    pub fn new(agency: impl Into<String>, window: Duration) -> Self {
        Batcher {
            agency: agency.into(),
            window,
            opened: None,
            incidents: BTreeMap::new(),
            known: BTreeMap::new(),
            transitions: Vec::new(),
            rollouts: Vec::new(),
            automation: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.opened.is_none()
    }

    fn len(&self) -> usize {
        self.incidents.len() + self.transitions.len() + self.rollouts.len() + self.automation.len()
    }

    /// Adds a change of this agency. Returns true when the window is full
    /// and should be taken now.
    pub fn add(&mut self, change: Change, now: Instant) -> bool {
        self.opened.get_or_insert(now);
        match change {
            Change::Transition(t) => self.transitions.push(t),
            Change::Rollout(r) => self.rollouts.push(r),
            Change::Automation(a) => self.automation.push(a),
            Change::Incident(i) => {
                if i.ended_ms.is_some() {
                    self.known.remove(&i.id);
                } else {
                    self.known.insert(i.id.clone(), i.clone());
                }
                self.incidents.insert(i.id.clone(), i);
            }
        }
        self.len() >= MAX_CHANGES
    }

    /// When the open window closes.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened.map(|t| t + self.window)
    }

    /// The window's notification once it has closed (or `force`, at
    /// shutdown or when full); `id` and `created_ms` are the caller's.
    pub fn take(
        &mut self,
        now: Instant,
        force: bool,
        id: String,
        created_ms: u64,
    ) -> Option<Notification> {
        let deadline = self.deadline()?;
        if !force && now < deadline {
            return None;
        }
        self.opened = None;
        let mut groups: BTreeMap<String, IncidentGroup> = std::mem::take(&mut self.incidents)
            .into_iter()
            .map(|(id, incident)| {
                (
                    id,
                    IncidentGroup {
                        incident,
                        transitions: Vec::new(),
                    },
                )
            })
            .collect();
        let mut loose = Vec::new();
        for t in std::mem::take(&mut self.transitions) {
            let mut ids: Vec<&String> = t
                .reasons
                .iter()
                .filter_map(|r| r.incident.as_ref())
                .collect();
            ids.sort();
            // The first incident it names that is in this window or known.
            let home = ids
                .into_iter()
                .find(|id| groups.contains_key(*id) || self.known.contains_key(*id))
                .cloned();
            match home {
                Some(id) => {
                    let g = groups.entry(id.clone()).or_insert_with(|| IncidentGroup {
                        incident: self.known[&id].clone(),
                        transitions: Vec::new(),
                    });
                    g.transitions.push(t);
                }
                None => loose.push(t),
            }
        }
        let incidents: Vec<IncidentGroup> = groups.into_values().collect();
        let rollouts = std::mem::take(&mut self.rollouts);
        let mut summary = summarize(&self.agency, &incidents, &loose);
        for r in &rollouts {
            if !summary.is_empty() {
                summary.push_str("; ");
            }
            summary.push_str(&format!(
                "rollout {} ({}): {}",
                r.rollout, r.name, r.summary
            ));
        }
        let automation = std::mem::take(&mut self.automation);
        for a in &automation {
            if !summary.is_empty() {
                summary.push_str("; ");
            }
            summary.push_str(&format!(
                "{}/{} {}: {}",
                a.agency, a.unit, a.rule, a.summary
            ));
        }
        Some(Notification {
            id,
            agency: self.agency.clone(),
            created_ms,
            summary,
            incidents,
            transitions: loose,
            rollouts,
            automation,
        })
    }
}

fn summarize(agency: &str, incidents: &[IncidentGroup], loose: &[Transition]) -> String {
    let mut parts: Vec<String> = incidents
        .iter()
        .map(|g| {
            let i = &g.incident;
            if i.ended_ms.is_some() {
                format!("incident ended: {}", i.summary)
            } else {
                format!("incident: {}", i.summary)
            }
        })
        .collect();
    match loose {
        [] => {}
        [t] => parts.push(format!(
            "{}/{} {} -> {}{}",
            t.agency,
            t.unit,
            t.from.as_str(),
            t.to.as_str(),
            match (t.reasons.first(), t.to.is_fault(), t.from) {
                (Some(r), false, _) => format!(", not a fault ({})", r.message),
                (Some(r), true, _) => format!(" ({})", r.message),
                (None, _, Status::Off) => " (back from off)".to_string(),
                (None, _, _) => String::new(),
            }
        )),
        many => {
            // Failures (faults) apart from neutral changes (off, ok): a
            // fleet parked for the night is not a storm of failures.
            let mut faults: BTreeMap<Status, usize> = BTreeMap::new();
            let mut neutral: BTreeMap<Status, usize> = BTreeMap::new();
            for t in many {
                let m = if t.to.is_fault() {
                    &mut faults
                } else {
                    &mut neutral
                };
                *m.entry(t.to).or_default() += 1;
            }
            let list = |m: &BTreeMap<Status, usize>| -> String {
                m.iter()
                    .rev()
                    .map(|(k, n)| format!("{n} {}", k.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut s = Vec::new();
            if !faults.is_empty() {
                s.push(format!(
                    "{} failing ({})",
                    faults.values().sum::<usize>(),
                    list(&faults)
                ));
            }
            if !neutral.is_empty() {
                s.push(format!("not a fault: {}", list(&neutral)));
            }
            parts.push(format!(
                "{} units of {agency} changed status: {}",
                many.len(),
                s.join("; ")
            ));
        }
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Reason, Severity};

    fn reason(incident: Option<&str>) -> Reason {
        Reason {
            rule: if incident.is_some() {
                "incident"
            } else {
                "cpu-high"
            }
            .into(),
            severity: Severity::Degraded,
            field: "cpu.total".into(),
            observed: Some(95.0),
            threshold: Some(90.0),
            since_ms: 1,
            runbook: None,
            message: "cpu.total 95 > 90 for 2m".into(),
            incident: incident.map(Into::into),
        }
    }

    fn tr(unit: &str, to: Status, incident: Option<&str>) -> Change {
        Change::Transition(Transition {
            agency: "fire".into(),
            unit: unit.into(),
            from: if to == Status::Ok {
                Status::Degraded
            } else {
                Status::Ok
            },
            to,
            at_ms: 5,
            reasons: if to == Status::Ok {
                vec![]
            } else {
                vec![reason(incident)]
            },
        })
    }

    fn inc(id: &str, ended: bool) -> Change {
        Change::Incident(Incident {
            id: id.into(),
            kind: crate::model::IncidentKind::ProbeFailing,
            agency: "fire".into(),
            probe: "cad-api".into(),
            target: "https://cad/health".into(),
            affected: vec!["E1".into(), "E2".into()],
            of_units: 3,
            since_ms: 1,
            ended_ms: ended.then_some(9),
            summary: "cad-api (https://cad/health) failing from 2 of 3 units".into(),
        })
    }

    /// (changes, want: incident ids with their folded unit counts, loose count)
    #[test]
    fn grouping_table() {
        type Case = (Vec<Change>, Vec<(&'static str, usize)>, usize);
        let cases: Vec<Case> = vec![
            (vec![tr("E1", Status::Degraded, None)], vec![], 1),
            (
                // Forty units into one incident: one group, 40 folded.
                (0..40)
                    .map(|i| tr(&format!("E{i}"), Status::Degraded, Some("fire:cad:1")))
                    .chain([inc("fire:cad:1", false)])
                    .collect(),
                vec![("fire:cad:1", 40)],
                0,
            ),
            (
                // Unrelated transitions stay loose beside the incident.
                vec![
                    tr("E1", Status::Degraded, Some("fire:cad:1")),
                    tr("E9", Status::Critical, None),
                    inc("fire:cad:1", false),
                ],
                vec![("fire:cad:1", 1)],
                1,
            ),
            (
                // A transition naming an incident nobody told us of stays loose.
                vec![tr("E1", Status::Degraded, Some("fire:other:1"))],
                vec![],
                1,
            ),
            (
                // Two incidents.
                vec![
                    tr("E1", Status::Degraded, Some("fire:a:1")),
                    tr("E2", Status::Degraded, Some("fire:b:1")),
                    inc("fire:a:1", false),
                    inc("fire:b:1", false),
                ],
                vec![("fire:a:1", 1), ("fire:b:1", 1)],
                0,
            ),
        ];
        for (i, (changes, want_groups, want_loose)) in cases.into_iter().enumerate() {
            let t0 = Instant::now();
            let mut b = Batcher::new("fire", Duration::from_secs(2));
            for c in changes {
                b.add(c, t0);
            }
            let n = b
                .take(t0 + Duration::from_secs(2), false, "x".into(), 0)
                .expect("window closed");
            let got: Vec<(&str, usize)> = n
                .incidents
                .iter()
                .map(|g| (g.incident.id.as_str(), g.transitions.len()))
                .collect();
            assert_eq!(got, want_groups, "case {i}");
            assert_eq!(n.transitions.len(), want_loose, "case {i}");
            assert!(b.is_empty(), "case {i}");
        }
    }

    #[test]
    fn window_timing_and_known_incidents() {
        let t0 = Instant::now();
        let w = Duration::from_secs(2);
        let mut b = Batcher::new("fire", w);
        assert_eq!(b.deadline(), None);
        assert!(b.take(t0, true, "x".into(), 0).is_none(), "nothing to send");
        b.add(inc("fire:cad:1", false), t0);
        b.add(
            tr("E1", Status::Degraded, Some("fire:cad:1")),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(
            b.deadline(),
            Some(t0 + w),
            "the window runs from the first change"
        );
        assert!(
            b.take(t0 + Duration::from_millis(1999), false, "x".into(), 0)
                .is_none()
        );
        let n = b.take(t0 + w, false, "x".into(), 0).unwrap();
        assert_eq!(n.incidents.len(), 1);
        assert!(n.summary.starts_with("incident: cad-api"), "{}", n.summary);
        // Later, a unit joins the known incident: folded under it, with the
        // incident's last known state.
        let t1 = t0 + Duration::from_secs(10);
        b.add(tr("E3", Status::Degraded, Some("fire:cad:1")), t1);
        let n = b.take(t1 + w, false, "y".into(), 0).unwrap();
        assert_eq!(n.incidents.len(), 1);
        assert_eq!(n.incidents[0].transitions.len(), 1);
        assert!(n.transitions.is_empty());
        // Once it ended, it is forgotten.
        b.add(inc("fire:cad:1", true), t1);
        let n = b.take(t1, true, "z".into(), 0).unwrap();
        assert!(n.summary.starts_with("incident ended:"), "{}", n.summary);
        b.add(tr("E3", Status::Ok, Some("fire:cad:1")), t1);
        let n = b.take(t1, true, "w".into(), 0).unwrap();
        assert_eq!(n.transitions.len(), 1);
        assert_eq!(n.summary, "fire/E3 degraded -> ok");
    }

    #[test]
    fn off_is_not_counted_as_a_failure() {
        let t0 = Instant::now();
        let off = |unit: &str, from: Status, to: Status, msg: &str| {
            let mut r = reason(None);
            r.rule = "off".into();
            r.severity = Severity::Info;
            r.message = msg.into();
            Change::Transition(Transition {
                agency: "fire".into(),
                unit: unit.into(),
                from,
                to,
                at_ms: 5,
                reasons: if to == Status::Off { vec![r] } else { vec![] },
            })
        };
        let mut b = Batcher::new("fire", Duration::from_secs(2));
        b.add(
            off(
                "E1",
                Status::Ok,
                Status::Off,
                "shut down 18:02 (OS shutdown)",
            ),
            t0,
        );
        let n = b.take(t0, true, "x".into(), 0).unwrap();
        assert_eq!(
            n.summary,
            "fire/E1 ok -> off, not a fault (shut down 18:02 (OS shutdown))"
        );
        b.add(off("E1", Status::Off, Status::Ok, ""), t0);
        let n = b.take(t0, true, "x".into(), 0).unwrap();
        assert_eq!(n.summary, "fire/E1 off -> ok (back from off)");
        for i in 0..3 {
            b.add(off(&format!("E{i}"), Status::Ok, Status::Off, "asleep"), t0);
        }
        b.add(tr("E9", Status::Critical, None), t0);
        let n = b.take(t0, true, "x".into(), 0).unwrap();
        assert_eq!(
            n.summary,
            "4 units of fire changed status: 1 failing (1 critical); not a fault: 3 off"
        );
    }

    #[test]
    fn a_full_window_asks_to_be_taken() {
        let t0 = Instant::now();
        let mut b = Batcher::new("fire", Duration::from_secs(2));
        for i in 0..MAX_CHANGES - 1 {
            assert!(!b.add(tr(&format!("E{i}"), Status::Degraded, None), t0));
        }
        assert!(b.add(tr("last", Status::Degraded, None), t0));
        let n = b.take(t0, true, "x".into(), 0).unwrap();
        assert_eq!(n.transitions.len(), MAX_CHANGES);
        assert!(
            n.summary
                .contains("500 units of fire changed status: 500 failing (500 degraded)"),
            "{}",
            n.summary
        );
    }

    #[test]
    fn rollout_steps_ride_in_the_window_and_say_so_in_the_summary() {
        let t0 = Instant::now();
        let mut b = Batcher::new("fire", Duration::from_secs(2));
        let step = |step: &str, summary: &str| {
            Change::Rollout(RolloutEvent {
                rollout: "r1".into(),
                name: "probe timeout".into(),
                agency: "fire".into(),
                step: step.into(),
                wave: 1,
                waves: 3,
                phase: "rolling_back".into(),
                at_ms: 7,
                summary: summary.into(),
            })
        };
        b.add(tr("E1", Status::Degraded, None), t0);
        b.add(step("wave_judged", "wave 1: fail: failure_ratio"), t0);
        b.add(step("rolling_back", "rolling back 1 units"), t0);
        let n = b.take(t0, true, "x".into(), 0).unwrap();
        assert_eq!(n.rollouts.len(), 2);
        assert_eq!(n.rollouts[1].step, "rolling_back");
        assert_eq!(n.transitions.len(), 1);
        assert!(
            n.summary
                .ends_with("; rollout r1 (probe timeout): wave 1: fail: failure_ratio; rollout r1 (probe timeout): rolling back 1 units"),
            "{}",
            n.summary
        );
        // A notification without rollouts still carries the (empty) list.
        b.add(tr("E2", Status::Degraded, None), t0);
        let n = b.take(t0, true, "y".into(), 0).unwrap();
        assert_eq!(
            serde_json::to_value(&n).unwrap()["rollouts"],
            serde_json::json!([])
        );
    }
}
