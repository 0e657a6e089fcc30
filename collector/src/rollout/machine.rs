//! One rollout's state machine. Pure and synchronous: it takes `now`, what
//! the units last reported ([`KnownConfig`]) and a [`Docs`] to issue and
//! revert documents through, and answers with the events to publish and,
//! when a wave is to be judged, what to compare ([`JudgeRequest`]); the
//! verdict comes back through [`Rollout::judged`]. Table-tested below.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::spec::{RolloutSpec, wave_ends};
use crate::gate::stats::{GateVerdict, Verdict};
use crate::model::RolloutEvent;
use crate::store::KnownConfig;

/// Issues and reverts a unit's own document (the collector's config book
/// and publisher; a fake in tests).
pub trait Docs {
    /// Issues `change` over the unit's own document's sections; answers
    /// what the unit's document was before (`None`: it had none) and the
    /// version issued.
    fn issue(
        &mut self,
        agency: &str,
        unit: &str,
        change: &str,
    ) -> Result<(Option<String>, u64), String>;
    /// Puts the unit's own document back to `prev` (`None`: none, issued
    /// as an empty document); answers the version issued.
    fn revert(&mut self, agency: &str, unit: &str, prev: Option<&str>) -> Result<u64, String>;
}

/// Where a unit stands in the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum UnitState {
    /// Its document was issued; it has not reported applying it.
    Issued,
    Applied {
        at_ms: u64,
    },
    /// It refused, failed or rolled back the change by itself.
    Failed {
        step: String,
        reason: String,
    },
    /// Its previous document was issued again, as this version.
    Reverting {
        #[serde(rename = "revert_version")]
        version: u64,
    },
    Reverted {
        #[serde(rename = "revert_version")]
        version: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitStep {
    /// The wave (0-based) it was issued in.
    pub wave: usize,
    /// Its own document's body before the rollout (`None`: it had none).
    pub prev: Option<String>,
    /// The change's version in its scope.
    pub version: u64,
    pub issued_ms: u64,
    #[serde(flatten)]
    pub state: UnitState,
}

/// What a paused rollout goes back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resume {
    Applying,
    Soaking,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// The wave's units were issued the change; waiting for them to apply.
    Applying {
        since_ms: u64,
    },
    /// Compared, the updated cohort against the rest, until `until_ms`.
    Soaking {
        since_ms: u64,
        until_ms: u64,
    },
    Paused {
        reason: String,
        since_ms: u64,
        resume: Resume,
    },
    /// Every issued unit's previous document is being issued again.
    RollingBack {
        reason: String,
        since_ms: u64,
        aborted: bool,
    },
    Completed {
        at_ms: u64,
    },
    RolledBack {
        reason: String,
        at_ms: u64,
    },
    Aborted {
        reason: String,
        at_ms: u64,
    },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Applying { .. } => "applying",
            Phase::Soaking { .. } => "soaking",
            Phase::Paused { .. } => "paused",
            Phase::RollingBack { .. } => "rolling_back",
            Phase::Completed { .. } => "completed",
            Phase::RolledBack { .. } => "rolled_back",
            Phase::Aborted { .. } => "aborted",
        }
    }

    pub fn is_over(&self) -> bool {
        matches!(
            self,
            Phase::Completed { .. } | Phase::RolledBack { .. } | Phase::Aborted { .. }
        )
    }
}

/// A verdict as the rollout keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaveVerdict {
    /// 1-based.
    pub wave: usize,
    pub at_ms: u64,
    /// The end-of-soak verdict (else one judged during the soak).
    pub r#final: bool,
    pub verdict: String,
    pub reason: String,
    pub metrics: Vec<MetricSummary>,
    pub canary_units: usize,
    pub baseline_units: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    pub name: String,
    pub verdict: String,
    pub reason: String,
}

/// What to compare: `canary` over `span`, against `baseline` units over
/// the same span, or (nothing left to compare with: the last wave)
/// against the canary itself over `before`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgeRequest {
    pub r#final: bool,
    pub canary: Vec<String>,
    pub span: (u64, u64),
    pub baseline: Baseline,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Baseline {
    Units(Vec<String>),
    Before((u64, u64)),
}

impl Baseline {
    pub fn units<'a>(&'a self, canary: &'a [String]) -> &'a [String] {
        match self {
            Baseline::Units(u) => u,
            Baseline::Before(_) => canary,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MachineError {
    #[error("the rollout is {0}; {1}")]
    State(&'static str, &'static str),
}

/// A rollout and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub created_ms: u64,
    pub spec: RolloutSpec,
    /// The target's units when it was created, in rollout order.
    pub units: Vec<String>,
    /// Units in all at the end of each wave.
    pub wave_ends: Vec<usize>,
    /// The wave under way, 0-based.
    pub wave: usize,
    #[serde(flatten)]
    pub phase: Phase,
    pub issued: BTreeMap<String, UnitStep>,
    /// The final verdict of each wave judged, then the newest one judged
    /// during the soak.
    pub verdicts: Vec<WaveVerdict>,
    pub last_judged_ms: u64,
    pub updated_ms: u64,
}

/// What a tick asks of the driver.
#[derive(Debug, Default)]
pub struct Tick {
    pub events: Vec<RolloutEvent>,
    pub judge: Option<JudgeRequest>,
}

/// A stable, spread order: units by a hash of the rollout id and the unit
/// (FNV-1a), so wave 1 is not always the same unit across rollouts.
pub fn order(id: &str, mut units: Vec<String>) -> Vec<String> {
    let h = |u: &str| {
        let mut x: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.bytes().chain([0]).chain(u.bytes()) {
            x ^= u64::from(b);
            x = x.wrapping_mul(0x0100_0000_01b3);
        }
        x
    };
    units.sort_by(|a, b| h(a).cmp(&h(b)).then_with(|| a.cmp(b)));
    units
}

impl Rollout {
    /// A new rollout over `units` (already ordered, at least one).
    pub fn new(id: String, spec: RolloutSpec, units: Vec<String>, now: u64) -> Rollout {
        let ends = wave_ends(&spec.waves, units.len());
        Rollout {
            id,
            created_ms: now,
            spec,
            units,
            wave_ends: ends,
            wave: 0,
            phase: Phase::Applying { since_ms: now },
            issued: BTreeMap::new(),
            verdicts: Vec::new(),
            last_judged_ms: 0,
            updated_ms: now,
        }
    }

    fn event(&self, now: u64, step: &str, summary: String) -> RolloutEvent {
        RolloutEvent {
            rollout: self.id.clone(),
            name: self.spec.name.clone(),
            agency: self.spec.target.agency.clone(),
            step: step.to_owned(),
            wave: self.wave + 1,
            waves: self.wave_ends.len(),
            phase: self.phase.name().to_owned(),
            at_ms: now,
            summary,
        }
    }

    /// What changes whenever anything persisted changes (a round that
    /// leaves it alone writes nothing): the phase, the last judgement and
    /// verdict, and each issued unit's state.
    pub fn fingerprint(&self) -> (Phase, u64, usize, Vec<u8>) {
        let states = self
            .issued
            .values()
            .map(|s| match s.state {
                UnitState::Issued => 0,
                UnitState::Applied { .. } => 1,
                UnitState::Failed { .. } => 2,
                UnitState::Reverting { .. } => 3,
                UnitState::Reverted { .. } => 4,
            })
            .collect();
        (
            self.phase.clone(),
            self.last_judged_ms,
            self.verdicts.len(),
            states,
        )
    }

    /// The event that it was created.
    pub fn started(&self) -> RolloutEvent {
        self.event(
            self.created_ms,
            "started",
            format!(
                "rollout {} ({}) started over {} units of {} in {} waves",
                self.id,
                self.spec.name,
                self.units.len(),
                self.spec.target.agency,
                self.wave_ends.len()
            ),
        )
    }

    fn wave_units(&self, w: usize) -> &[String] {
        let start = if w == 0 { 0 } else { self.wave_ends[w - 1] };
        &self.units[start..self.wave_ends[w]]
    }

    /// Issues the change to the wave's units that do not have it yet; the
    /// first failure pauses.
    fn issue_wave(&mut self, now: u64, docs: &mut dyn Docs, out: &mut Vec<RolloutEvent>) -> bool {
        let agency = self.spec.target.agency.clone();
        let todo: Vec<String> = self
            .wave_units(self.wave)
            .iter()
            .filter(|u| !self.issued.contains_key(*u))
            .cloned()
            .collect();
        if todo.is_empty() {
            return true;
        }
        let mut n = 0;
        for u in todo {
            match docs.issue(&agency, &u, &self.spec.change) {
                Ok((prev, version)) => {
                    n += 1;
                    self.issued.insert(
                        u,
                        UnitStep {
                            wave: self.wave,
                            prev,
                            version,
                            issued_ms: now,
                            state: UnitState::Issued,
                        },
                    );
                }
                Err(e) => {
                    self.pause(
                        now,
                        format!("cannot issue the change to {agency}/{u}: {e}"),
                        Resume::Applying,
                        out,
                    );
                    return false;
                }
            }
        }
        let ev = self.event(
            now,
            "wave_issued",
            format!(
                "wave {} of {}: the change issued to {n} units ({} in all)",
                self.wave + 1,
                self.wave_ends.len(),
                self.wave_ends[self.wave]
            ),
        );
        out.push(ev);
        true
    }

    fn pause(&mut self, now: u64, reason: String, resume: Resume, out: &mut Vec<RolloutEvent>) {
        self.phase = Phase::Paused {
            reason: reason.clone(),
            since_ms: now,
            resume,
        };
        let ev = self.event(now, "paused", reason);
        out.push(ev);
    }

    fn roll_back(
        &mut self,
        now: u64,
        reason: String,
        aborted: bool,
        docs: &mut dyn Docs,
        out: &mut Vec<RolloutEvent>,
    ) {
        self.phase = Phase::RollingBack {
            reason: reason.clone(),
            since_ms: now,
            aborted,
        };
        let ev = self.event(
            now,
            if aborted { "aborting" } else { "rolling_back" },
            format!("rolling back {} units: {reason}", self.issued.len()),
        );
        out.push(ev);
        self.revert_pending(docs);
    }

    /// Issues the previous document again to every issued unit not yet
    /// reverting (a failure is retried at the next tick).
    fn revert_pending(&mut self, docs: &mut dyn Docs) {
        let agency = self.spec.target.agency.clone();
        for (u, s) in self.issued.iter_mut() {
            if matches!(
                s.state,
                UnitState::Reverting { .. } | UnitState::Reverted { .. }
            ) {
                continue;
            }
            if let Ok(version) = docs.revert(&agency, u, s.prev.as_deref()) {
                s.state = UnitState::Reverting { version };
            }
        }
    }

    /// Folds in what the units reported; the first unit that refused,
    /// failed or rolled back the change, if any.
    fn observe(&mut self, now: u64, seen: &dyn Fn(&str) -> Option<KnownConfig>) -> Option<String> {
        let mut failed = None;
        for (u, s) in self.issued.iter_mut() {
            let Some(k) = seen(u) else { continue };
            let step = k.unit_step.as_ref();
            match &s.state {
                UnitState::Issued => {
                    let v = s.version;
                    match step {
                        Some((sv, st, reason))
                            if *sv == v
                                && matches!(st.as_str(), "failed" | "refused" | "rolled_back") =>
                        {
                            let reason = reason.clone().unwrap_or_default();
                            if failed.is_none() {
                                failed = Some(format!("{u} {st} the change: {reason}"));
                            }
                            s.state = UnitState::Failed {
                                step: st.clone(),
                                reason,
                            };
                        }
                        _ if k.running_unit == Some(v)
                            || step.is_some_and(|(sv, st, _)| *sv == v && st == "applied") =>
                        {
                            s.state = UnitState::Applied { at_ms: now };
                        }
                        _ => {}
                    }
                }
                UnitState::Applied { .. } => {
                    // Applied, then rolled back by its own health window.
                    if let Some((sv, st, reason)) = step
                        && *sv == s.version
                        && st == "rolled_back"
                    {
                        let reason = reason.clone().unwrap_or_default();
                        if failed.is_none() {
                            failed = Some(format!("{u} rolled back the change: {reason}"));
                        }
                        s.state = UnitState::Failed {
                            step: st.clone(),
                            reason,
                        };
                    }
                }
                UnitState::Reverting { version } => {
                    let v = *version;
                    if k.running_unit.is_some_and(|r| r >= v)
                        || step.is_some_and(|(sv, st, _)| *sv >= v && st == "applied")
                    {
                        s.state = UnitState::Reverted { version: v };
                    }
                }
                UnitState::Failed { .. } | UnitState::Reverted { .. } => {}
            }
        }
        failed
    }

    fn applied(&self) -> Vec<String> {
        self.issued
            .iter()
            .filter(|(_, s)| matches!(s.state, UnitState::Applied { .. }))
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// One step at `now`.
    pub fn tick(
        &mut self,
        now: u64,
        seen: &dyn Fn(&str) -> Option<KnownConfig>,
        docs: &mut dyn Docs,
    ) -> Tick {
        let mut t = Tick::default();
        if self.phase.is_over() {
            return t;
        }
        let failed = self.observe(now, seen);
        if let Some(reason) = failed
            && !matches!(self.phase, Phase::RollingBack { .. })
        {
            self.roll_back(now, reason, false, docs, &mut t.events);
        }
        match self.phase.clone() {
            Phase::Applying { since_ms } => {
                if !self.issue_wave(now, docs, &mut t.events) {
                    return self.touched(now, t);
                }
                let wave = self.wave_units(self.wave).to_vec();
                let applied = wave
                    .iter()
                    .filter(|u| {
                        self.issued
                            .get(*u)
                            .is_some_and(|s| matches!(s.state, UnitState::Applied { .. }))
                    })
                    .count();
                let timed_out = now >= since_ms + self.spec.apply_timeout_ms;
                if applied == wave.len() || (timed_out && applied > 0) {
                    self.phase = Phase::Soaking {
                        since_ms: now,
                        until_ms: now + self.spec.soak_ms,
                    };
                    self.last_judged_ms = now;
                    let late = if applied < wave.len() {
                        format!(
                            "; {} did not report in time (they apply when they connect)",
                            wave.len() - applied
                        )
                    } else {
                        String::new()
                    };
                    let ev = self.event(
                        now,
                        "wave_applied",
                        format!(
                            "wave {}: {applied} of {} units applied the change{late}; soaking for {} s",
                            self.wave + 1,
                            wave.len(),
                            self.spec.soak_ms / 1000
                        ),
                    );
                    t.events.push(ev);
                } else if timed_out {
                    self.pause(
                        now,
                        format!(
                            "no unit of wave {} applied the change within {} s",
                            self.wave + 1,
                            self.spec.apply_timeout_ms / 1000
                        ),
                        Resume::Applying,
                        &mut t.events,
                    );
                }
            }
            Phase::Soaking { since_ms, until_ms } => {
                let r#final = now >= until_ms;
                let every = (self.spec.soak_ms / 5).max(5_000);
                if r#final || now >= self.last_judged_ms + every {
                    let canary = if self.wave + 1 == self.wave_ends.len() {
                        // Nothing left to compare with: the last wave's
                        // units against themselves before it.
                        let last: Vec<String> = self
                            .wave_units(self.wave)
                            .iter()
                            .filter(|u| {
                                self.issued
                                    .get(*u)
                                    .is_some_and(|s| matches!(s.state, UnitState::Applied { .. }))
                            })
                            .cloned()
                            .collect();
                        last
                    } else {
                        self.applied()
                    };
                    let span = (since_ms, now.min(until_ms).max(since_ms + 1));
                    let baseline = if self.wave + 1 == self.wave_ends.len() {
                        let issued = self
                            .issued
                            .values()
                            .filter(|s| s.wave == self.wave)
                            .map(|s| s.issued_ms)
                            .min()
                            .unwrap_or(since_ms);
                        let len = span.1 - span.0;
                        Baseline::Before((issued.saturating_sub(len), issued))
                    } else {
                        Baseline::Units(
                            self.units
                                .iter()
                                .filter(|u| !self.issued.contains_key(*u))
                                .cloned()
                                .collect(),
                        )
                    };
                    t.judge = Some(JudgeRequest {
                        r#final,
                        canary,
                        span,
                        baseline,
                    });
                }
            }
            Phase::RollingBack {
                reason,
                since_ms,
                aborted,
            } => {
                self.revert_pending(docs);
                let waiting = self
                    .issued
                    .values()
                    .filter(|s| !matches!(s.state, UnitState::Reverted { .. }))
                    .count();
                // The timeout ends the wait for reports, not the retries of
                // a revert the book refused: that unit would keep the change.
                let unissued = self.issued.values().any(|s| {
                    !matches!(
                        s.state,
                        UnitState::Reverting { .. } | UnitState::Reverted { .. }
                    )
                });
                if waiting == 0 || (!unissued && now >= since_ms + self.spec.apply_timeout_ms) {
                    let note = if waiting > 0 {
                        format!(
                            "; {waiting} units have not confirmed yet (they get it when they connect)"
                        )
                    } else {
                        String::new()
                    };
                    let (step, summary) = if aborted {
                        self.phase = Phase::Aborted {
                            reason: reason.clone(),
                            at_ms: now,
                        };
                        (
                            "aborted",
                            format!("aborted and rolled back: {reason}{note}"),
                        )
                    } else {
                        self.phase = Phase::RolledBack {
                            reason: reason.clone(),
                            at_ms: now,
                        };
                        ("rolled_back", format!("rolled back: {reason}{note}"))
                    };
                    let ev = self.event(now, step, summary);
                    t.events.push(ev);
                }
            }
            Phase::Paused { .. }
            | Phase::Completed { .. }
            | Phase::RolledBack { .. }
            | Phase::Aborted { .. } => {}
        }
        self.touched(now, t)
    }

    fn touched(&mut self, now: u64, t: Tick) -> Tick {
        if !t.events.is_empty() {
            self.updated_ms = now;
        }
        t
    }

    /// The verdict on `req` (from [`Rollout::tick`]), judged at `now`.
    pub fn judged(
        &mut self,
        now: u64,
        req: &JudgeRequest,
        v: &GateVerdict,
        docs: &mut dyn Docs,
    ) -> Vec<RolloutEvent> {
        let mut out = Vec::new();
        if !matches!(self.phase, Phase::Soaking { since_ms, .. } if since_ms == req.span.0) {
            // Paused, aborted or rolled back meanwhile (or paused and
            // resumed: a verdict over the soak before is not this one's).
            return out;
        }
        self.last_judged_ms = now;
        let kept = WaveVerdict {
            wave: self.wave + 1,
            at_ms: now,
            r#final: req.r#final,
            verdict: v.verdict.to_string(),
            reason: v.reason.clone(),
            metrics: v
                .metrics
                .iter()
                .map(|m| MetricSummary {
                    name: m.name.clone(),
                    verdict: m.verdict.to_string(),
                    reason: m.reason.clone(),
                })
                .collect(),
            canary_units: req.canary.len(),
            baseline_units: req.baseline.units(&req.canary).len(),
        };
        if self.verdicts.last().is_some_and(|l| !l.r#final) {
            self.verdicts.pop();
        }
        self.verdicts.push(kept);
        let wave = self.wave + 1;
        match (v.verdict, req.r#final) {
            (Verdict::Fail, _) => {
                out.push(self.event(
                    now,
                    "wave_judged",
                    format!("wave {wave}: fail: {}", v.reason),
                ));
                self.roll_back(
                    now,
                    format!("wave {wave} failed its gate: {}", v.reason),
                    false,
                    docs,
                    &mut out,
                );
            }
            (_, false) => {}
            (Verdict::Pass, true) => {
                out.push(self.event(
                    now,
                    "wave_judged",
                    format!("wave {wave}: pass: {}", v.reason),
                ));
                if self.wave + 1 == self.wave_ends.len() {
                    self.phase = Phase::Completed { at_ms: now };
                    let ev = self.event(
                        now,
                        "completed",
                        format!("completed: {} units run the change", self.applied().len()),
                    );
                    out.push(ev);
                } else {
                    self.wave += 1;
                    self.phase = Phase::Applying { since_ms: now };
                    self.issue_wave(now, docs, &mut out);
                }
            }
            (Verdict::Inconclusive | Verdict::NoData, true) => {
                out.push(self.event(
                    now,
                    "wave_judged",
                    format!("wave {wave}: {}: {}", v.verdict, v.reason),
                ));
                self.pause(
                    now,
                    format!(
                        "wave {wave} could not be judged ({}): {}; resume to soak again, or abort",
                        v.verdict, v.reason
                    ),
                    Resume::Soaking,
                    &mut out,
                );
            }
        }
        self.updated_ms = now;
        out
    }

    /// An operator pauses it.
    pub fn pause_now(&mut self, now: u64) -> Result<Vec<RolloutEvent>, MachineError> {
        let resume = match self.phase {
            Phase::Applying { .. } => Resume::Applying,
            Phase::Soaking { .. } => Resume::Soaking,
            Phase::Paused { .. } => return Err(MachineError::State("paused", "resume it")),
            Phase::RollingBack { .. } => {
                return Err(MachineError::State("rolling back", "it cannot be paused"));
            }
            _ => return Err(MachineError::State("over", "nothing to pause")),
        };
        let mut out = Vec::new();
        self.pause(now, "paused by an operator".into(), resume, &mut out);
        self.updated_ms = now;
        Ok(out)
    }

    /// An operator resumes it: a wave paused while applying waits again
    /// for the apply timeout; one paused while soaking soaks again.
    pub fn resume_now(&mut self, now: u64) -> Result<Vec<RolloutEvent>, MachineError> {
        let Phase::Paused { resume, .. } = self.phase else {
            return Err(MachineError::State(
                self.phase.name(),
                "only a paused rollout resumes",
            ));
        };
        self.phase = match resume {
            Resume::Applying => Phase::Applying { since_ms: now },
            Resume::Soaking => {
                self.last_judged_ms = now;
                Phase::Soaking {
                    since_ms: now,
                    until_ms: now + self.spec.soak_ms,
                }
            }
        };
        self.updated_ms = now;
        Ok(vec![self.event(
            now,
            "resumed",
            format!("resumed at wave {}", self.wave + 1),
        )])
    }

    /// An operator aborts it: every issued unit is rolled back.
    pub fn abort_now(
        &mut self,
        now: u64,
        docs: &mut dyn Docs,
    ) -> Result<Vec<RolloutEvent>, MachineError> {
        if self.phase.is_over() {
            return Err(MachineError::State(self.phase.name(), "nothing to abort"));
        }
        if matches!(self.phase, Phase::RollingBack { .. }) {
            return Err(MachineError::State("rolling back", "already rolling back"));
        }
        let mut out = Vec::new();
        self.roll_back(now, "aborted by an operator".into(), true, docs, &mut out);
        self.updated_ms = now;
        Ok(out)
    }
}

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
