use std::collections::BTreeMap;

use super::*;
use crate::gate::stats::GateConfig;
use crate::rollout::spec::{RawRollout, RolloutSpec, Wave};

/// The config book, faked: versions per unit, what was issued.
#[derive(Default)]
struct FakeDocs {
    version: BTreeMap<String, u64>,
    body: BTreeMap<String, Option<String>>,
    log: Vec<String>,
    fail_issue: Option<String>,
}

impl Docs for FakeDocs {
    fn issue(
        &mut self,
        _agency: &str,
        unit: &str,
        change: &str,
    ) -> Result<(Option<String>, u64), String> {
        if self.fail_issue.as_deref() == Some(unit) {
            return Err("the config book is full".into());
        }
        let v = self.version.entry(unit.into()).or_default();
        *v += 1;
        let prev = self.body.insert(unit.into(), Some(change.into())).flatten();
        self.log.push(format!("issue {unit} v{v}"));
        Ok((prev, *v))
    }

    fn revert(&mut self, _agency: &str, unit: &str, prev: Option<&str>) -> Result<u64, String> {
        let v = self.version.entry(unit.into()).or_default();
        *v += 1;
        self.body.insert(unit.into(), prev.map(str::to_owned));
        self.log.push(format!("revert {unit} v{v}"));
        Ok(*v)
    }
}

/// What the units reported.
#[derive(Default)]
struct Units(BTreeMap<String, KnownConfig>);

impl Units {
    fn report(&mut self, unit: &str, version: u64, state: &str) {
        let k = self.0.entry(unit.into()).or_default();
        k.unit_step = Some((version, state.into(), Some(format!("{state} detail"))));
        if state == "applied" {
            k.running_unit = Some(version);
        }
    }

    fn seen(&self) -> impl Fn(&str) -> Option<KnownConfig> + '_ {
        |u| self.0.get(u).cloned()
    }
}

pub(super) const SOAK: u64 = 60_000;
pub(super) const APPLY: u64 = 30_000;

/// The definition the machine's tests and its model run: every unit of
/// `metro`, probe `cad`, soak [`SOAK`], apply timeout [`APPLY`].
pub(super) fn spec(waves: Vec<Wave>) -> RolloutSpec {
    RawRollout {
        name: "timeout".into(),
        change: "[sampling]\ninterval = \"10s\"\n".into(),
        target: crate::rollout::spec::Target {
            agency: "metro".into(),
            units: None,
            labels: None,
        },
        probe: "cad".into(),
        probe_target: None,
        waves: Some(waves),
        soak_ms: Some(SOAK),
        apply_timeout_ms: Some(APPLY),
        metrics: None,
        config: None,
    }
    .validate()
    .unwrap()
}

fn rollout(n: usize, waves: Vec<Wave>) -> Rollout {
    let spec = spec(waves);
    let units = (0..n).map(|i| format!("u{i:02}")).collect();
    Rollout::new("r1".into(), spec, units, 1_000)
}

fn verdict(v: Verdict) -> GateVerdict {
    GateVerdict {
        verdict: v,
        reason: format!("{v} because"),
        metrics: Vec::new(),
        config: GateConfig::default(),
    }
}

fn steps(ev: &[RolloutEvent]) -> Vec<&str> {
    ev.iter().map(|e| e.step.as_str()).collect()
}

/// Every unit of the current wave reports applied.
fn apply_wave(r: &Rollout, units: &mut Units) {
    for (u, s) in &r.issued {
        if s.wave == r.wave {
            units.report(u, s.version, "applied");
        }
    }
}

#[test]
fn a_good_change_goes_wave_by_wave_to_every_unit() {
    let (mut docs, mut units) = (FakeDocs::default(), Units::default());
    let mut r = rollout(
        10,
        vec![Wave::Units(1), Wave::Percent(50), Wave::Percent(100)],
    );
    assert_eq!(r.wave_ends, vec![1, 5, 10]);
    let t = r.tick(1_000, &units.seen(), &mut docs);
    assert_eq!(steps(&t.events), ["wave_issued"]);
    assert_eq!(r.issued.len(), 1);
    // Nothing reported yet: still applying, no judgement, nothing to write.
    let f = r.fingerprint();
    let t = r.tick(2_000, &units.seen(), &mut docs);
    assert!(t.events.is_empty() && t.judge.is_none());
    assert_eq!(r.fingerprint(), f);
    apply_wave(&r, &mut units);
    let t = r.tick(3_000, &units.seen(), &mut docs);
    assert_ne!(r.fingerprint(), f);
    assert_eq!(steps(&t.events), ["wave_applied"]);
    assert_eq!(r.phase.name(), "soaking");
    // Judged during the soak every fifth of it: the updated unit against
    // the nine not yet updated, over the soak so far.
    assert!(
        r.tick(3_000 + SOAK / 5 - 1, &units.seen(), &mut docs)
            .judge
            .is_none()
    );
    let req = r
        .tick(3_000 + SOAK / 5, &units.seen(), &mut docs)
        .judge
        .unwrap();
    assert!(!req.r#final);
    assert_eq!(req.canary.len(), 1);
    assert_eq!(req.span, (3_000, 3_000 + SOAK / 5));
    let Baseline::Units(b) = &req.baseline else {
        panic!("{req:?}")
    };
    assert_eq!(b.len(), 9);
    assert!(!b.contains(&req.canary[0]));
    // An interim pass changes nothing.
    let ev = r.judged(3_000 + SOAK / 5, &req, &verdict(Verdict::Pass), &mut docs);
    assert!(ev.is_empty());
    assert_eq!(r.phase.name(), "soaking");
    // The end of the soak: pass, the next wave is issued.
    let req = r
        .tick(3_000 + SOAK, &units.seen(), &mut docs)
        .judge
        .unwrap();
    assert!(req.r#final);
    let ev = r.judged(3_000 + SOAK, &req, &verdict(Verdict::Pass), &mut docs);
    assert_eq!(steps(&ev), ["wave_judged", "wave_issued"]);
    assert_eq!((r.wave, r.issued.len()), (1, 5));
    // Wave 2.
    apply_wave(&r, &mut units);
    let t0 = 100_000;
    r.tick(t0, &units.seen(), &mut docs);
    let req = r.tick(t0 + SOAK, &units.seen(), &mut docs).judge.unwrap();
    assert_eq!(req.canary.len(), 5);
    assert!(matches!(&req.baseline, Baseline::Units(b) if b.len() == 5));
    r.judged(t0 + SOAK, &req, &verdict(Verdict::Pass), &mut docs);
    // The last wave: its own units against themselves before it.
    let issued_at = t0 + SOAK;
    apply_wave(&r, &mut units);
    let t1 = 200_000;
    r.tick(t1, &units.seen(), &mut docs);
    let req = r.tick(t1 + SOAK, &units.seen(), &mut docs).judge.unwrap();
    assert_eq!(req.canary.len(), 5);
    assert_eq!(
        req.baseline,
        Baseline::Before((issued_at - SOAK, issued_at))
    );
    let ev = r.judged(t1 + SOAK, &req, &verdict(Verdict::Pass), &mut docs);
    assert_eq!(steps(&ev), ["wave_judged", "completed"]);
    assert!(r.phase.is_over());
    assert_eq!(
        docs.log.iter().filter(|l| l.starts_with("issue")).count(),
        10
    );
    assert!(!docs.log.iter().any(|l| l.starts_with("revert")));
    assert_eq!(r.verdicts.len(), 3, "{:?}", r.verdicts);
    // Over: ticks change nothing.
    assert!(
        r.tick(t1 + 2 * SOAK, &units.seen(), &mut docs)
            .events
            .is_empty()
    );
}

#[test]
fn a_failing_verdict_during_the_soak_rolls_back_every_changed_unit() {
    let (mut docs, mut units) = (FakeDocs::default(), Units::default());
    // u03 had a document of its own before: it gets it back.
    docs.body
        .insert("u03".into(), Some("[labels]\nx = \"1\"\n".into()));
    docs.version.insert("u03".into(), 4);
    let mut r = rollout(4, vec![Wave::Units(2), Wave::Percent(100)]);
    r.tick(1_000, &units.seen(), &mut docs);
    let wave: Vec<String> = r.issued.keys().cloned().collect();
    apply_wave(&r, &mut units);
    r.tick(2_000, &units.seen(), &mut docs);
    let req = r
        .tick(2_000 + SOAK / 5, &units.seen(), &mut docs)
        .judge
        .unwrap();
    let ev = r.judged(2_000 + SOAK / 5, &req, &verdict(Verdict::Fail), &mut docs);
    assert_eq!(steps(&ev), ["wave_judged", "rolling_back"]);
    assert_eq!(r.phase.name(), "rolling_back");
    for u in &wave {
        let UnitState::Reverting { version } = r.issued[u].state else {
            panic!("{u}: {:?}", r.issued[u])
        };
        assert_eq!(docs.body[u], r.issued[u].prev);
        // Not confirmed yet: still rolling back.
        assert!(r.tick(20_000, &units.seen(), &mut docs).events.is_empty());
        units.report(u, version, "applied");
    }
    // Stored mid-rollback and read back (a restarted collector): every
    // unit state round-trips (no field of a state shadows the unit's own).
    let json = serde_json::to_string(&r).unwrap();
    let back: Rollout = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    let t = r.tick(21_000, &units.seen(), &mut docs);
    assert_eq!(steps(&t.events), ["rolled_back"]);
    let Phase::RolledBack { reason, .. } = &r.phase else {
        panic!("{:?}", r.phase)
    };
    assert!(reason.contains("wave 1 failed its gate"), "{reason}");
    // Units of the next wave were never touched.
    assert_eq!(r.issued.len(), 2);
}

#[test]
fn a_unit_that_refuses_fails_or_rolls_back_rolls_the_rollout_back() {
    for (state, after_apply) in [
        ("refused", false),
        ("failed", false),
        ("rolled_back", false),
        ("rolled_back", true),
    ] {
        let (mut docs, mut units) = (FakeDocs::default(), Units::default());
        let mut r = rollout(3, vec![Wave::Units(2), Wave::Percent(100)]);
        r.tick(1_000, &units.seen(), &mut docs);
        let (u, v) = r
            .issued
            .iter()
            .next()
            .map(|(u, s)| (u.clone(), s.version))
            .unwrap();
        if after_apply {
            apply_wave(&r, &mut units);
            r.tick(2_000, &units.seen(), &mut docs);
            assert_eq!(r.phase.name(), "soaking");
        }
        units.report(&u, v, state);
        let t = r.tick(3_000, &units.seen(), &mut docs);
        assert_eq!(steps(&t.events), ["rolling_back"], "{state}");
        let Phase::RollingBack { reason, .. } = &r.phase else {
            panic!("{state}: {:?}", r.phase)
        };
        assert!(reason.contains(&u) && reason.contains(state), "{reason}");
        assert_eq!(
            docs.log.iter().filter(|l| l.starts_with("revert")).count(),
            2,
            "{state}"
        );
    }
}

#[test]
fn a_wave_without_data_or_units_pauses_and_resumes() {
    let (mut docs, mut units) = (FakeDocs::default(), Units::default());
    let mut r = rollout(4, vec![Wave::Units(2), Wave::Percent(100)]);
    r.tick(1_000, &units.seen(), &mut docs);
    // No unit applied within the timeout: paused, never judged.
    let t = r.tick(1_000 + APPLY, &units.seen(), &mut docs);
    assert_eq!(steps(&t.events), ["paused"]);
    assert!(t.judge.is_none());
    assert!(matches!(
        r.phase,
        Phase::Paused {
            resume: Resume::Applying,
            ..
        }
    ));
    assert!(
        r.tick(1_000 + 10 * APPLY, &units.seen(), &mut docs)
            .events
            .is_empty()
    );
    // Resumed: one of two applies in the new timeout, the wave soaks with it.
    let t = 500_000;
    assert_eq!(steps(&r.resume_now(t).unwrap()), ["resumed"]);
    let (u, s) = r.issued.iter().next().unwrap();
    units.report(u, s.version, "applied");
    assert!(
        r.tick(t + APPLY - 1, &units.seen(), &mut docs)
            .events
            .is_empty()
    );
    let ev = r.tick(t + APPLY, &units.seen(), &mut docs).events;
    assert_eq!(steps(&ev), ["wave_applied"]);
    assert!(ev[0].summary.contains("1 of 2"), "{}", ev[0].summary);
    // No data at the end of the soak: paused (to soak again), not passed.
    let t = t + APPLY;
    let req = r.tick(t + SOAK, &units.seen(), &mut docs).judge.unwrap();
    assert_eq!(req.canary.len(), 1);
    for v in [Verdict::NoData, Verdict::Inconclusive] {
        let mut r = r.clone();
        let ev = r.judged(t + SOAK, &req, &verdict(v), &mut docs);
        assert_eq!(steps(&ev), ["wave_judged", "paused"], "{v}");
        assert_eq!(r.wave, 0, "{v}: never the next wave");
        r.resume_now(t + SOAK + 1).unwrap();
        assert!(matches!(r.phase, Phase::Soaking { since_ms, .. } if since_ms == t + SOAK + 1));
    }
}

#[test]
fn operators_pause_resume_and_abort_within_what_the_phase_allows() {
    let (mut docs, mut units) = (FakeDocs::default(), Units::default());
    let mut r = rollout(3, vec![Wave::Units(1), Wave::Percent(100)]);
    r.tick(1_000, &units.seen(), &mut docs);
    assert!(r.resume_now(1_500).is_err());
    r.pause_now(2_000).unwrap();
    assert!(r.pause_now(2_001).is_err());
    r.resume_now(2_002).unwrap();
    apply_wave(&r, &mut units);
    r.tick(3_000, &units.seen(), &mut docs);
    assert_eq!(r.phase.name(), "soaking");
    // A verdict that comes back after a pause is ignored.
    let req = r
        .tick(3_000 + SOAK, &units.seen(), &mut docs)
        .judge
        .unwrap();
    r.pause_now(3_000 + SOAK).unwrap();
    assert!(
        r.judged(3_000 + SOAK, &req, &verdict(Verdict::Pass), &mut docs)
            .is_empty()
    );
    assert_eq!(r.wave, 0);
    let ev = r.abort_now(4_000_000, &mut docs).unwrap();
    assert_eq!(steps(&ev), ["aborting"]);
    assert!(r.abort_now(4_000_001, &mut docs).is_err());
    assert!(r.pause_now(4_000_001).is_err());
    // Unconfirmed past the apply timeout: over anyway, and it says so.
    let ev = r.tick(4_000_000 + APPLY, &units.seen(), &mut docs).events;
    assert_eq!(steps(&ev), ["aborted"]);
    assert!(ev[0].summary.contains("not confirmed"), "{}", ev[0].summary);
    assert!(r.abort_now(5_000_000, &mut docs).is_err());
}

#[test]
fn a_document_that_cannot_be_issued_pauses_and_a_resume_retries_it() {
    let (mut docs, units) = (FakeDocs::default(), Units::default());
    let mut r = rollout(1, vec![Wave::Percent(100)]);
    let u = r.units[0].clone();
    docs.fail_issue = Some(u.clone());
    let t = r.tick(1_000, &units.seen(), &mut docs);
    assert_eq!(steps(&t.events), ["paused"]);
    assert!(t.events[0].summary.contains("config book is full"));
    docs.fail_issue = None;
    r.resume_now(2_000).unwrap();
    let t = r.tick(2_000, &units.seen(), &mut docs);
    assert_eq!(steps(&t.events), ["wave_issued"]);
    assert!(r.issued.contains_key(&u));
}

#[test]
fn the_order_spreads_units_and_is_stable() {
    let units: Vec<String> = (0..50).map(|i| format!("u{i:02}")).collect();
    let a = order("r1", units.clone());
    assert_eq!(a, order("r1", units.iter().rev().cloned().collect()));
    assert_ne!(a, order("r2", units.clone()));
    assert_ne!(a, units, "not the sorted order");
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, units);
}
