//! The pure core of automation: what to do when a flag with an
//! `auto_action` raises, when the agent's audit answers, when the flag
//! clears, and when time passes. No I/O, no clock: every entry point takes
//! `now_ms` (the collector's clock) and returns [`Out`]s for the driver.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use muster_base::rate::Window;
use muster_proto::{ActionStep, UnitId};
use serde::{Deserialize, Serialize};

use crate::model::{AutomationEvent, AutomationStep as StepKind};
use crate::rules::AutoRule;

/// What the driver does.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// Request `action` from `unit`; answer with [`Machine::issued`] or
    /// [`Machine::issue_failed`].
    Request {
        unit: UnitId,
        rule: Arc<str>,
        action: String,
    },
    /// Join `note` to the flag's reason and, with `escalate`, raise its
    /// severity one step (`Engine::annotate`).
    Annotate {
        unit: UnitId,
        rule: Arc<str>,
        note: Option<String>,
        escalate: bool,
    },
    /// A step for the events, the stream, webhooks and top problems.
    Event(AutomationEvent),
}

/// One raised flag's automation, from raise to clear.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Episode {
    /// The request, once sent.
    nonce: Option<[u8; 16]>,
    requested_ms: Option<u64>,
    /// Escalate if still raised then (requested + window).
    deadline_ms: Option<u64>,
    /// The unit answered (finished or failed, or was refused).
    answered: bool,
    escalated: bool,
}

/// What automation keeps per unit and rule: the requests within `auto_max`
/// (persisted: a restart does not reset the limit) and the open episode.
#[derive(Debug, Clone, Default)]
struct Track {
    fired: Window,
    episode: Option<Episode>,
    /// The flag is raised now (as the last transition said).
    up: bool,
}

/// What is persisted (`automation.json`): the kill switches and each
/// unit's requests within its limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// Agencies whose automation is off.
    pub disabled: BTreeSet<String>,
    /// (unit, rule) -> request times (unix ms) within the rule's limit.
    pub fired: Vec<(UnitId, String, Window)>,
}

/// The automation state machine.
#[derive(Debug, Default)]
pub struct Machine {
    rules: HashMap<Arc<str>, AutoRule>,
    tracks: HashMap<(UnitId, Arc<str>), Track>,
    /// Outstanding requests: nonce -> (unit, rule).
    pending: HashMap<[u8; 16], (UnitId, Arc<str>)>,
    disabled: BTreeSet<String>,
}

fn hhmm(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}Z", s / 3600, s / 60 % 60)
}

impl Machine {
    /// `rules`: every threshold rule with automation, by name.
    pub fn new(rules: impl IntoIterator<Item = (Arc<str>, AutoRule)>) -> Machine {
        Machine {
            rules: rules.into_iter().collect(),
            ..Machine::default()
        }
    }

    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    pub fn restore(&mut self, p: Persisted) {
        self.disabled = p.disabled;
        for (unit, rule, fired) in p.fired {
            if let Some((name, _)) = self.rules.get_key_value(rule.as_str()) {
                let key = (unit, name.clone());
                self.tracks.entry(key).or_default().fired = fired;
            }
        }
    }

    pub fn persisted(&self) -> Persisted {
        let mut fired: Vec<_> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.fired.times().next().is_some())
            .map(|((u, r), t)| (u.clone(), r.to_string(), t.fired.clone()))
            .collect();
        fired.sort_by(|a, b| (&a.0.agency, &a.0.unit, &a.1).cmp(&(&b.0.agency, &b.0.unit, &b.1)));
        Persisted {
            disabled: self.disabled.clone(),
            fired,
        }
    }

    /// The kill switch: `false` stops automatic requests for the agency's
    /// units (flags still raise; open episodes still escalate).
    pub fn set_enabled(&mut self, agency: &str, on: bool) -> bool {
        if on {
            self.disabled.remove(agency)
        } else {
            self.disabled.insert(agency.to_owned())
        }
    }

    pub fn enabled(&self, agency: &str) -> bool {
        !self.disabled.contains(agency)
    }

    pub fn disabled(&self) -> &BTreeSet<String> {
        &self.disabled
    }

    /// Outstanding requests.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// At start: the rules raised on `unit` in its restored health, so
    /// the next transition does not take them for new raises.
    pub fn seed<'a>(&mut self, unit: &UnitId, present: impl IntoIterator<Item = &'a str>) {
        for r in present {
            if let Some((name, _)) = self.rules.get_key_value(r) {
                let name = name.clone();
                self.tracks.entry((unit.clone(), name)).or_default().up = true;
            }
        }
    }

    /// A transition of `unit`: `present`, the rules of its reasons after
    /// it. Each rule with automation that is new there raised; each that
    /// is gone cleared.
    pub fn transition<'a>(
        &mut self,
        unit: &UnitId,
        present: impl IntoIterator<Item = &'a str>,
        now_ms: u64,
    ) -> Vec<Out> {
        if self.rules.is_empty() {
            return Vec::new();
        }
        let present: BTreeSet<&str> = present
            .into_iter()
            .filter(|r| self.rules.contains_key(*r))
            .collect();
        let mut raised = Vec::new();
        let mut cleared = Vec::new();
        for name in self.rules.keys() {
            let up_now = present.contains(&**name);
            let key = (unit.clone(), name.clone());
            let was = self.tracks.get(&key).is_some_and(|t| t.up);
            match (was, up_now) {
                (false, true) => raised.push(name.clone()),
                (true, false) => cleared.push(name.clone()),
                _ => {}
            }
        }
        let mut out = Vec::new();
        for r in cleared {
            if let Some(t) = self.tracks.get_mut(&(unit.clone(), r.clone())) {
                t.up = false;
            }
            out.extend(self.cleared(unit, &r, now_ms));
        }
        for r in raised {
            self.tracks.entry((unit.clone(), r.clone())).or_default().up = true;
            out.extend(self.raised(unit, &r, now_ms));
        }
        out
    }

    fn event(
        unit: &UnitId,
        rule: &str,
        auto: &AutoRule,
        kind: StepKind,
        at_ms: u64,
        summary: String,
    ) -> Out {
        Out::Event(AutomationEvent {
            agency: unit.agency.clone(),
            unit: unit.unit.clone(),
            rule: rule.to_owned(),
            action: auto.action.clone(),
            step: kind,
            at_ms,
            summary,
        })
    }

    /// The flag of `rule` raised on `unit`.
    pub fn raised(&mut self, unit: &UnitId, rule: &str, now_ms: u64) -> Vec<Out> {
        let Some((name, auto)) = self.rules.get_key_value(rule) else {
            return Vec::new();
        };
        let (name, auto) = (name.clone(), auto.clone());
        if !self.enabled(&unit.agency) {
            return vec![Self::event(
                unit,
                rule,
                &auto,
                StepKind::Suppressed,
                now_ms,
                format!(
                    "{} not requested: automation is off for {}",
                    auto.action, unit.agency
                ),
            )];
        }
        let track = self.tracks.entry((unit.clone(), name.clone())).or_default();
        if let Some(old) = track.episode.take()
            && let Some(n) = old.nonce
        {
            self.pending.remove(&n);
        }
        if !track.fired.take(auto.max, now_ms) {
            let last = track.fired.times().last().map(hhmm).unwrap_or_default();
            track.episode = Some(Episode {
                nonce: None,
                requested_ms: None,
                deadline_ms: None,
                answered: false,
                escalated: true,
            });
            let why = format!(
                "raised again; {} already ran {} (auto_max {}): escalated",
                auto.action, last, auto.max
            );
            return vec![
                Out::Annotate {
                    unit: unit.clone(),
                    rule: name,
                    note: Some(format!("auto: not repeated, {} ran {last}", auto.action)),
                    escalate: true,
                },
                Self::event(unit, rule, &auto, StepKind::Escalated, now_ms, why),
            ];
        }
        track.episode = Some(Episode {
            nonce: None,
            requested_ms: Some(now_ms),
            deadline_ms: Some(now_ms + auto.window_ms),
            answered: false,
            escalated: false,
        });
        let n = track.fired.times().count();
        vec![
            Out::Request {
                unit: unit.clone(),
                rule: name,
                action: auto.action.clone(),
            },
            Self::event(
                unit,
                rule,
                &auto,
                StepKind::Requested,
                now_ms,
                format!("{} requested ({n} of {})", auto.action, auto.max),
            ),
        ]
    }

    /// The request for `rule` on `unit` went out as `nonce`.
    pub fn issued(&mut self, unit: &UnitId, rule: &str, nonce: [u8; 16]) {
        let key = (unit.clone(), Arc::<str>::from(rule));
        if let Some(ep) = self.tracks.get_mut(&key).and_then(|t| t.episode.as_mut()) {
            ep.nonce = Some(nonce);
            self.pending.insert(nonce, key);
        }
    }

    /// The request for `rule` on `unit` could not be sent.
    pub fn issue_failed(
        &mut self,
        unit: &UnitId,
        rule: &str,
        error: &str,
        now_ms: u64,
    ) -> Vec<Out> {
        let Some(auto) = self.rules.get(rule).cloned() else {
            return Vec::new();
        };
        let key = (unit.clone(), Arc::<str>::from(rule));
        let Some(ep) = self.tracks.get_mut(&key).and_then(|t| t.episode.as_mut()) else {
            return Vec::new();
        };
        ep.answered = true;
        let why = format!("{} could not be sent: {error}", auto.action);
        let mut out = vec![Self::event(
            unit,
            rule,
            &auto,
            StepKind::Failed,
            now_ms,
            why.clone(),
        )];
        out.extend(self.escalate(&key, &auto, why, now_ms));
        out
    }

    fn escalate(
        &mut self,
        key: &(UnitId, Arc<str>),
        auto: &AutoRule,
        why: String,
        now_ms: u64,
    ) -> Vec<Out> {
        let Some(ep) = self.tracks.get_mut(key).and_then(|t| t.episode.as_mut()) else {
            return Vec::new();
        };
        if ep.escalated {
            return Vec::new();
        }
        ep.escalated = true;
        vec![
            Out::Annotate {
                unit: key.0.clone(),
                rule: key.1.clone(),
                note: Some(format!("auto: {why}")),
                escalate: true,
            },
            Self::event(&key.0, &key.1, auto, StepKind::Escalated, now_ms, why),
        ]
    }

    /// An audit record from a unit (exactly once per record). Steps of
    /// requests automation did not make are not its business.
    pub fn audit(
        &mut self,
        unit: &UnitId,
        nonce: [u8; 16],
        step: &ActionStep,
        now_ms: u64,
    ) -> Vec<Out> {
        // A `replayed` refusal is the unit turning away a second delivery
        // of the request (MQTT QoS 1 redelivers after a reconnect): it says
        // nothing about how the first one went.
        if matches!(
            step,
            ActionStep::Started
                | ActionStep::Refused {
                    reason: muster_proto::ActionRefusal::Replayed,
                    ..
                }
        ) {
            return Vec::new();
        }
        // Only the unit asked answers for its request.
        if self.pending.get(&nonce).is_none_or(|(u, _)| u != unit) {
            return Vec::new();
        }
        let Some(key) = self.pending.remove(&nonce) else {
            return Vec::new();
        };
        let Some(auto) = self.rules.get(&key.1).cloned() else {
            return Vec::new();
        };
        let at = self
            .tracks
            .get(&key)
            .and_then(|t| t.episode.as_ref())
            .and_then(|e| e.requested_ms)
            .map(hhmm)
            .unwrap_or_default();
        if let Some(ep) = self.tracks.get_mut(&key).and_then(|t| t.episode.as_mut()) {
            ep.answered = true;
        }
        let failure = match step {
            ActionStep::Finished {
                exit_code: Some(0), ..
            } => None,
            ActionStep::Finished {
                timed_out: true, ..
            } => Some("timed out".to_owned()),
            ActionStep::Finished {
                exit_code: Some(c), ..
            } => Some(format!("exit {c}")),
            ActionStep::Finished {
                exit_code: None, ..
            } => Some("killed".to_owned()),
            ActionStep::Failed { reason, .. } => Some(format!("failed: {reason}")),
            ActionStep::Refused { reason, .. } => Some(format!("refused ({})", reason.as_str())),
            ActionStep::Started => unreachable!("returned above"),
        };
        match failure {
            None => vec![
                Out::Annotate {
                    unit: key.0.clone(),
                    rule: key.1.clone(),
                    note: Some(format!("auto: {} at {at}, exit 0", auto.action)),
                    escalate: false,
                },
                Self::event(
                    &key.0,
                    &key.1,
                    &auto,
                    StepKind::Succeeded,
                    now_ms,
                    format!("{} at {at}, exit 0", auto.action),
                ),
            ],
            Some(f) => {
                let mut out = vec![Self::event(
                    &key.0,
                    &key.1,
                    &auto,
                    StepKind::Failed,
                    now_ms,
                    format!("{} at {at}: {f}", auto.action),
                )];
                out.extend(self.escalate(
                    &key,
                    &auto,
                    format!("{} at {at}: {f}", auto.action),
                    now_ms,
                ));
                out
            }
        }
    }

    /// The flag of `rule` on `unit` cleared.
    pub fn cleared(&mut self, unit: &UnitId, rule: &str, now_ms: u64) -> Vec<Out> {
        let key = (unit.clone(), Arc::<str>::from(rule));
        let Some(auto) = self.rules.get(rule).cloned() else {
            return Vec::new();
        };
        let Some(ep) = self.tracks.get_mut(&key).and_then(|t| t.episode.take()) else {
            return Vec::new();
        };
        if let Some(n) = ep.nonce {
            self.pending.remove(&n);
        }
        match (ep.requested_ms, ep.escalated) {
            (Some(at), false) => vec![Self::event(
                unit,
                rule,
                &auto,
                StepKind::Helped,
                now_ms,
                format!(
                    "cleared {} after {} at {}",
                    crate::rules::words::span(now_ms.saturating_sub(at)),
                    auto.action,
                    hhmm(at)
                ),
            )],
            _ => Vec::new(),
        }
    }

    /// Time passed: episodes whose flag outlived their window escalate
    /// (also when the unit never answered); tracks with nothing left are
    /// forgotten.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Out> {
        let due: Vec<_> = self
            .tracks
            .iter()
            .filter_map(|(k, t)| {
                let ep = t.episode.as_ref()?;
                (!ep.escalated && ep.deadline_ms.is_some_and(|d| now_ms >= d))
                    .then(|| (k.clone(), ep.answered, ep.requested_ms.unwrap_or(0)))
            })
            .collect();
        let mut out = Vec::new();
        for (key, answered, at) in due {
            let Some(auto) = self.rules.get(&key.1).cloned() else {
                continue;
            };
            if !answered
                && let Some(n) = self
                    .tracks
                    .get(&key)
                    .and_then(|t| t.episode.as_ref()?.nonce)
            {
                self.pending.remove(&n);
                out.push(Self::event(
                    &key.0,
                    &key.1,
                    &auto,
                    StepKind::Failed,
                    now_ms,
                    format!("{} at {}: no answer from the unit", auto.action, hhmm(at)),
                ));
            }
            let why = format!(
                "not cleared {} after {} at {}",
                crate::rules::words::span(auto.window_ms),
                auto.action,
                hhmm(at)
            );
            out.extend(self.escalate(&key, &auto, why, now_ms));
        }
        let rules = &self.rules;
        self.tracks.retain(|(_, r), t| {
            let Some(auto) = rules.get(r) else {
                return false;
            };
            // `allows` forgets the requests that left the window.
            t.fired.allows(auto.max, now_ms);
            t.up || t.episode.is_some() || t.fired.times().next().is_some()
        });
        out
    }

    /// Per (rule, action): how often each step happened, from the events
    /// (`crate::store`): top problems' "fix these first" for automation.
    pub fn tally<'a>(
        steps: impl IntoIterator<Item = &'a AutomationEvent>,
    ) -> BTreeMap<(String, String), BTreeMap<StepKind, u64>> {
        let mut t: BTreeMap<(String, String), BTreeMap<StepKind, u64>> = BTreeMap::new();
        for s in steps {
            *t.entry((s.rule.clone(), s.action.clone()))
                .or_default()
                .entry(s.step)
                .or_default() += 1;
        }
        t
    }
}
