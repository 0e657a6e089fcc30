//! Table tests of peer comparison, through the engine: records built from
//! `muster_proto::fixtures`, time as plain numbers (the collector's clock
//! is the `now` each call takes; records' event time is the same unless a
//! test says otherwise).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use muster_proto::{
    BootId, ErrorClass, Outcome, Payload, Presence, PresenceReason, ProbeKind, ProbeResult, Record,
    UnitId, fixtures,
};

use super::*;
use crate::model::{Change, Incident, IncidentKind, Reason, Severity, Status, UnitHealth};
use crate::rules::{Engine, RawRules, RulesConfig};

const T0: u64 = fixtures::AT_MS; // 11:06:40Z
const S: u64 = 1_000;
const MIN: u64 = 60_000;

/// Rules with `[rules.peers]` = `peers` and no shipped threshold rules;
/// `extra` goes before it (threshold rules).
fn rules(peers: &str, extra: &str) -> RulesConfig {
    #[derive(serde::Deserialize)]
    struct File {
        rules: RawRules,
    }
    let text = format!("[rules]\ndefaults = false\n{extra}\n[rules.peers]\n{peers}\n");
    toml::from_str::<File>(&text)
        .unwrap()
        .rules
        .validate()
        .unwrap()
}

fn validate(body: &str) -> Result<RulesConfig, String> {
    #[derive(serde::Deserialize)]
    struct File {
        rules: RawRules,
    }
    toml::from_str::<File>(body)
        .map_err(|e| e.to_string())?
        .rules
        .validate()
        .map_err(|e| e.to_string())
}

/// A probe result of `unit` on `probe`: `Some(ms)` succeeded in that
/// long, `None` timed out (3 s, as a failure's timing is its timeout).
fn ping(probe: &str, unit: &UnitId, latency: Option<f64>) -> ProbeResult {
    let mut p = fixtures::http_probe();
    p.name = probe.into();
    // Each unit its own path on one server: one cohort.
    p.target = format!("http://cad:8080/api/ping/{}", unit.unit);
    match latency {
        Some(ms) => p.phases.total_us = (ms * 1000.0) as u32,
        None => {
            p.outcome = Outcome::Fail(ErrorClass::Timeout);
            p.status = None;
            p.phases.total_us = 3_000_000;
        }
    }
    p
}

/// `n` units E0…, each its own record stream.
struct Fleet {
    e: Engine,
    units: Vec<UnitId>,
    seq: Vec<u64>,
    probe: &'static str,
}

impl Fleet {
    fn new(cfg: RulesConfig, n: usize) -> Fleet {
        Fleet {
            e: Engine::new(cfg),
            units: (0..n)
                .map(|i| UnitId::new("metro-fire", format!("E{i}")).unwrap())
                .collect(),
            seq: vec![0; n],
            probe: "cad-api",
        }
    }

    fn record(&mut self, i: usize, at: u64, payload: Payload) -> Vec<Change> {
        self.seq[i] += 1;
        let rec = Record {
            boot: fixtures::BOOT,
            seq: self.seq[i],
            at_ms: at,
            payload,
        };
        self.e.on_record(&self.units[i], &rec, at)
    }

    fn result(&mut self, i: usize, now: u64, latency: Option<f64>) -> Vec<Change> {
        let p = ping(self.probe, &self.units[i], latency);
        self.record(i, now, Payload::Probe(p))
    }

    /// Every unit `lat(i)` says (`None` in the outer option: sends
    /// nothing), then a tick.
    fn round(&mut self, now: u64, lat: impl Fn(usize) -> Option<Option<f64>>) -> Vec<Change> {
        let mut out = Vec::new();
        for i in 0..self.units.len() {
            if let Some(l) = lat(i) {
                out.extend(self.result(i, now, l));
            }
        }
        out.extend(self.e.tick(now));
        out
    }

    fn health(&self, i: usize) -> &UnitHealth {
        self.e.health(&self.units[i]).unwrap()
    }

    fn reason(&self, i: usize, rule: &str) -> Option<&Reason> {
        self.health(i).reasons.iter().find(|r| r.rule == rule)
    }

    /// The units flagged `slower-than-peers`.
    fn slower(&self) -> Vec<usize> {
        (0..self.units.len())
            .filter(|&i| self.reason(i, SLOWER).is_some())
            .collect()
    }
}

fn incidents(ch: &[Change]) -> Vec<&Incident> {
    ch.iter()
        .filter_map(|c| match c {
            Change::Incident(i) => Some(i),
            _ => None,
        })
        .collect()
}

/// Runs rounds every `step` from `from` (inclusive) to `to` (exclusive);
/// returns every change and the first time `flagged` became non-empty.
fn run(
    f: &mut Fleet,
    from: u64,
    to: u64,
    step: u64,
    lat: impl Fn(usize, u64) -> Option<Option<f64>>,
) -> (Vec<Change>, Option<u64>) {
    let (mut all, mut first) = (Vec::new(), None);
    let mut t = from;
    while t < to {
        all.extend(f.round(t, |i| lat(i, t)));
        if first.is_none() && !f.slower().is_empty() {
            first = Some(t);
        }
        t += step;
    }
    (all, first)
}

#[test]
fn one_unit_ten_times_slower_than_five_fine_peers_flags_after_for_not_before() {
    let mut f = Fleet::new(rules("", ""), 6);
    // 3 minutes all at 20 ms, every 5 s: nobody is flagged.
    let (_, first) = run(&mut f, T0, T0 + 3 * MIN, 5 * S, |_, _| Some(Some(20.0)));
    assert_eq!(first, None);
    // E5 goes 10x slower. Its current latency (median of its newest 10)
    // turns at the 6th slow result (25 s in); then `for` = 1m.
    let slow = T0 + 3 * MIN;
    let lat = move |i: usize, t: u64| Some(Some(if i == 5 && t >= slow { 200.0 } else { 20.0 }));
    let (_, first) = run(&mut f, slow, slow + 84 * S, 5 * S, lat);
    assert_eq!(first, None, "not before `for` has passed");
    let (ch, first) = run(&mut f, slow + 85 * S, slow + 86 * S, 5 * S, lat);
    assert_eq!(first, Some(slow + 85 * S), "flagged once `for` has passed");
    assert_eq!(f.slower(), vec![5], "only the slow unit");
    let r = f.reason(5, SLOWER).unwrap().clone();
    assert_eq!(
        r.message,
        "cad-api (http://cad:8080) 200 ms, 5 peers' median 20 ms"
    );
    assert_eq!(r.field, "probe[\"cad-api\"].total_ms");
    assert_eq!(
        (r.observed, r.threshold, r.severity),
        (Some(200.0), Some(120.0), Severity::Degraded)
    );
    assert_eq!(r.since_ms, slow + 25 * S, "when the condition started");
    assert_eq!(r.runbook.as_deref(), Some("/runbooks/slower-than-peers"));
    assert_eq!(r.incident, None);
    assert_eq!(f.health(5).status, Status::Degraded);
    let t: Vec<_> = ch
        .iter()
        .filter_map(|c| match c {
            Change::Transition(t) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].unit.as_str(), t[0].to), ("E5", Status::Degraded));
    assert!(incidents(&ch).is_empty());
    assert_eq!(f.e.peers.metrics().flags_raised.load(Ordering::Relaxed), 1);
    // Back to normal: clears once its median falls under the clear level
    // (hysteresis: 2x and 50 ms above the peers), within the window.
    let back = slow + 90 * S;
    let (_, _) = run(&mut f, slow + 90 * S, back + 2 * MIN, 5 * S, |_, _| {
        Some(Some(20.0))
    });
    assert!(f.slower().is_empty());
    assert_eq!(f.health(5).status, Status::Ok);
}

#[test]
fn below_min_peers_never_flags() {
    // (units probing the target, flagged?): the slow unit's peers are the others.
    for (n, flags) in [(3, false), (4, true)] {
        let mut f = Fleet::new(rules("for = \"0s\"", ""), n);
        let (_, first) = run(&mut f, T0, T0 + 10 * MIN, 5 * S, |i, _| {
            Some(Some(if i == 0 { 500.0 } else { 20.0 }))
        });
        assert_eq!(first.is_some(), flags, "{n} units");
        assert_eq!(
            f.slower(),
            if flags { vec![0] } else { vec![] },
            "{n} units"
        );
    }
}

#[test]
fn factor_and_min_delta_both_needed() {
    // (peers' latency, the unit's, flagged?)
    let cases = [
        (2.0, 6.0, false),     // 3x, 4 ms: a jump from 2 ms to 6 ms stays quiet
        (2.0, 20.0, false),    // 10x, but 18 ms
        (20.0, 200.0, true),   // 10x and 180 ms
        (100.0, 250.0, false), // 150 ms but 2.5x
        (50.0, 150.0, true),   // exactly 3x and 100 ms
        (50.0, 149.0, false),
    ];
    for (peers, unit, flags) in cases {
        let mut f = Fleet::new(rules("for = \"10s\"", ""), 6);
        run(&mut f, T0, T0 + 5 * MIN, 5 * S, |i, _| {
            Some(Some(if i == 0 { unit } else { peers }))
        });
        assert_eq!(f.slower().len(), usize::from(flags), "{peers} -> {unit}");
    }
}

#[test]
fn everyone_slower_together_is_one_latency_shift_incident_and_no_unit_is_flagged() {
    let probe_slow = "[[rules.threshold]]\nname = \"probe-slow\"\nfield = 'probe[*].total_ms'\nop = \">\"\nthreshold = 500\n";
    let mut f = Fleet::new(rules("", probe_slow), 12);
    // 15 minutes at 85 ms, every 10 s: the cohort's baseline.
    let (ch, _) = run(&mut f, T0, T0 + 15 * MIN, 10 * S, |_, _| Some(Some(85.0)));
    assert!(incidents(&ch).is_empty());
    // At T every unit is 10x slower (half of them one round later).
    let t = T0 + 15 * MIN;
    let slow = move |i: usize, now: u64| now >= t + if i < 6 { 0 } else { 10 * S };
    let (ch, first) = run(&mut f, t, t + 5 * MIN, 10 * S, |i, now| {
        Some(Some(if slow(i, now) { 870.0 } else { 85.0 }))
    });
    assert_eq!(first, None, "no unit is slower than its peers");
    let inc = incidents(&ch);
    assert_eq!(inc.len(), 1, "{inc:#?}");
    let i = inc[0].clone();
    // 40 s after T the first six units' medians are half-way (5 of their
    // 10 results slow): the cohort's median, 281 ms, is 3x and 100 ms
    // above 85; the shift is held for `shift_for` = 1m.
    assert_eq!(i.kind, IncidentKind::LatencyShift);
    assert_eq!(i.since_ms, t + 100 * S);
    assert_eq!(i.id, format!("metro-fire:cad-api:shift:{}", t + 100 * S));
    assert_eq!(
        (i.probe.as_str(), i.target.as_str()),
        ("cad-api", "http://cad:8080")
    );
    assert_eq!(i.of_units, 12);
    let mut names: Vec<String> = (0..12).map(|n| format!("E{n}")).collect();
    names.sort();
    assert_eq!(i.affected, names);
    // T0 is 11:06:40Z; T + 40 s is 11:22:20Z.
    assert_eq!(
        i.summary,
        "cad-api (http://cad:8080) slower for 12 of 12 units: median 85 ms before, 870 ms since 11:22:20Z"
    );
    assert_eq!(f.e.incidents().count(), 1);
    for u in 0..12 {
        let r = f.reason(u, SHIFT).expect("a latency-shift reason");
        assert_eq!(r.incident.as_deref(), Some(i.id.as_str()));
        assert_eq!(r.runbook.as_deref(), Some("/runbooks/latency-shift"));
        assert_eq!(r.field, "probe[\"cad-api\"].total_ms");
        assert_eq!(
            r.message,
            format!(
                "cad-api (http://cad:8080) is slower for many units of metro-fire (usual median 85 ms): incident {}",
                i.id
            )
        );
        // The unit's own probe flags carry the incident.
        let ps = f.reason(u, "probe-slow").expect("probe-slow");
        assert_eq!(ps.incident.as_deref(), Some(i.id.as_str()), "E{u}");
    }
    // It lasts longer than `baseline` (30m): the baseline does not learn
    // the slow latency, so the incident stays open, once.
    let (ch, first) = run(&mut f, t + 5 * MIN, t + 40 * MIN, 10 * S, |_, _| {
        Some(Some(870.0))
    });
    assert_eq!(first, None);
    assert!(
        incidents(&ch)
            .iter()
            .all(|x| x.id == i.id && x.ended_ms.is_none()),
        "{:#?}",
        incidents(&ch)
    );
    assert_eq!(f.e.incidents().count(), 1);
    // Latency returns: it ends (the units' medians turn back after 50 s).
    let back = t + 40 * MIN;
    let (ch, first) = run(&mut f, back, back + 5 * MIN, 10 * S, |_, _| {
        Some(Some(85.0))
    });
    assert_eq!(first, None);
    let inc = incidents(&ch);
    assert_eq!(inc.len(), 1, "{inc:#?}");
    assert_eq!(inc[0].id, i.id);
    assert_eq!(inc[0].ended_ms, Some(back + 50 * S));
    assert_eq!(
        inc[0].summary,
        "cad-api (http://cad:8080) back to median 85 ms (usual 85 ms, 870 ms at worst) after being slower since 11:22:20Z; ended"
    );
    assert_eq!(f.e.incidents().count(), 0);
    for u in 0..12 {
        assert!(f.reason(u, SHIFT).is_none(), "E{u}");
        assert_eq!(f.health(u).status, Status::Ok, "E{u}");
    }
    assert_eq!(f.e.peers.metrics().shifts_opened.load(Ordering::Relaxed), 1);
    // The 40 slow minutes were never learned as the usual: 13 minutes
    // later (10 new slots of 85 ms), the server slowing again is a second
    // incident. (Had the baseline learned them, its median would still be
    // 870 ms and nothing would open.)
    let again = back + 13 * MIN;
    run(&mut f, back + 5 * MIN, again, 10 * S, |_, _| {
        Some(Some(85.0))
    });
    let (ch, first) = run(&mut f, again, again + 3 * MIN, 10 * S, |_, _| {
        Some(Some(870.0))
    });
    assert_eq!(first, None);
    let inc = incidents(&ch);
    assert_eq!(inc.len(), 1, "{inc:#?}");
    assert_ne!(inc[0].id, i.id);
    assert!(
        inc[0].summary.contains("median 85 ms before, 870 ms since"),
        "{}",
        inc[0].summary
    );
}

#[test]
fn a_drift_of_the_whole_cohort_smaller_than_the_factor_is_no_incident() {
    let mut f = Fleet::new(rules("", ""), 8);
    // 85 ms, then 2.5x: a median under shift_factor x baseline.
    let (ch, first) = run(&mut f, T0, T0 + 30 * MIN, 10 * S, |_, t| {
        Some(Some(if t >= T0 + 15 * MIN { 212.0 } else { 85.0 }))
    });
    assert!(incidents(&ch).is_empty());
    assert_eq!(first, None);
}

#[test]
fn replayed_history_is_never_a_current_latency() {
    let mut f = Fleet::new(rules("for = \"0s\"", ""), 6);
    run(&mut f, T0, T0 + MIN, 5 * S, |_, _| Some(Some(20.0)));
    // E5's agent delivers a backlog after a reconnect: live first, then
    // its older records (lower seq), slow ones. They are history.
    let live_seq = f.seq[5] + 1_000;
    let mut backlog: VecDeque<u64> = (f.seq[5] + 1..live_seq).collect();
    let mut t = T0 + MIN;
    while t < T0 + 10 * MIN {
        for i in 0..5 {
            f.result(i, t, Some(20.0));
        }
        f.seq[5] = live_seq + (t - T0) / S;
        let live = ping("cad-api", &f.units[5], Some(20.0));
        f.e.on_record(
            &f.units[5].clone(),
            &Record {
                boot: fixtures::BOOT,
                seq: f.seq[5],
                at_ms: t,
                payload: Payload::Probe(live),
            },
            t,
        );
        for _ in 0..5 {
            let seq = backlog.pop_front().unwrap();
            let old = ping("cad-api", &f.units[5], Some(2_000.0));
            f.e.on_record(
                &f.units[5].clone(),
                &Record {
                    boot: fixtures::BOOT,
                    seq,
                    at_ms: T0 - 3_600_000 + seq,
                    payload: Payload::Probe(old),
                },
                t,
            );
        }
        f.e.tick(t);
        assert!(f.slower().is_empty(), "at {}", t - T0);
        t += 5 * S;
    }
}

#[test]
fn a_failing_unit_is_not_slow_and_failing_peers_are_not_fine() {
    // A unit whose results all fail has no latency: never slower-than-peers.
    let mut f = Fleet::new(rules("for = \"0s\"", ""), 6);
    run(&mut f, T0, T0 + 5 * MIN, 5 * S, |i, _| {
        Some(if i == 0 { None } else { Some(20.0) })
    });
    assert!(f.slower().is_empty());
    // A slow unit among 5 peers of which `failing` fail: fine while at most
    // half of them fail (and min_peers still have a latency).
    for (failing, flags) in [(0, true), (2, true), (3, false)] {
        let mut f = Fleet::new(rules("for = \"0s\"", ""), 6);
        run(&mut f, T0, T0 + 5 * MIN, 5 * S, |i, _| {
            Some(match i {
                0 => Some(500.0),
                i if i <= failing => None,
                _ => Some(20.0),
            })
        });
        assert_eq!(
            f.slower(),
            if flags { vec![0] } else { vec![] },
            "{failing} failing"
        );
    }
    // A raised flag goes when the unit starts failing (it has no latency
    // once its successes leave the window).
    let mut f = Fleet::new(rules("for = \"0s\"", ""), 6);
    run(&mut f, T0, T0 + MIN, 5 * S, |i, _| {
        Some(Some(if i == 0 { 500.0 } else { 20.0 }))
    });
    assert_eq!(f.slower(), vec![0]);
    run(&mut f, T0 + MIN, T0 + 4 * MIN, 5 * S, |i, _| {
        Some(if i == 0 { None } else { Some(20.0) })
    });
    assert!(f.slower().is_empty());
}

#[test]
fn stale_and_departed_units_drop_out() {
    let mut f = Fleet::new(rules("for = \"0s\"", ""), 6);
    run(&mut f, T0, T0 + MIN, 5 * S, |i, _| {
        Some(Some(if i == 0 { 500.0 } else { 20.0 }))
    });
    assert_eq!(f.slower(), vec![0]);
    assert_eq!(f.e.peers.metrics().members.load(Ordering::Relaxed), 6);
    // Three peers stop reporting: after `window` (2m) they are not peers,
    // two are left (< min_peers 3) and the flag goes.
    let t = T0 + MIN;
    let (_, _) = run(&mut f, t, t + 2 * MIN, 5 * S, |i, _| {
        (i == 0 || i > 3).then_some(Some(if i == 0 { 500.0 } else { 20.0 }))
    });
    assert_eq!(f.slower(), vec![0], "within the window they still count");
    run(&mut f, t + 2 * MIN, t + 2 * MIN + 10 * S, 5 * S, |i, _| {
        (i == 0 || i > 3).then_some(Some(if i == 0 { 500.0 } else { 20.0 }))
    });
    assert!(f.slower().is_empty());
    assert_eq!(f.e.peers.metrics().members.load(Ordering::Relaxed), 3);
    // They come back; then the slow unit announces a shutdown: it leaves at once.
    let t = t + 3 * MIN;
    run(&mut f, t, t + MIN, 5 * S, |i, _| {
        Some(Some(if i == 0 { 500.0 } else { 20.0 }))
    });
    assert_eq!(f.slower(), vec![0]);
    let off = Presence {
        online: false,
        boot: fixtures::BOOT,
        connection: 0,
        at_ms: t + MIN,
        reason: PresenceReason::Shutdown,
    };
    f.e.on_presence(&f.units[0].clone(), &off, t + MIN);
    f.e.tick(t + MIN);
    assert!(f.slower().is_empty());
    assert_eq!(f.health(0).status, Status::Off);
    assert_eq!(f.e.peers.metrics().members.load(Ordering::Relaxed), 5);
}

#[test]
fn transaction_steps_are_cohorts_of_their_own() {
    let mut f = Fleet::new(rules("for = \"0s\"", ""), 6);
    let mut t = T0;
    while t < T0 + 2 * MIN {
        for i in 0..6 {
            for (step, ms) in [("login", 30.0), ("assignments", 40.0)] {
                let mut p = ping(&format!("cad-dispatch.{step}"), &f.units[i], Some(ms));
                p.kind = ProbeKind::Transaction;
                p.target = format!("https://cad.example.org/api/{step}");
                if i == 2 && step == "assignments" {
                    p.phases.total_us = 900_000;
                }
                f.record(i, t, Payload::Probe(p));
            }
        }
        f.e.tick(t);
        t += 5 * S;
    }
    assert_eq!(f.slower(), vec![2]);
    let r = f.reason(2, SLOWER).unwrap();
    assert_eq!(r.field, "probe[\"cad-dispatch.assignments\"].total_ms");
    assert_eq!(
        r.message,
        "cad-dispatch.assignments (https://cad.example.org) 900 ms, 5 peers' median 40 ms"
    );
    assert_eq!(f.e.peers.metrics().cohorts.load(Ordering::Relaxed), 2);
}

#[test]
fn cohorts_are_bounded_counted_and_dropped_when_empty() {
    let mut f = Fleet::new(
        rules(
            "for = \"0s\"\nmax_cohorts = 2\nbaseline = \"1m\"\nwindow = \"10s\"",
            "",
        ),
        4,
    );
    for (n, probe) in ["a", "b", "c"].into_iter().enumerate() {
        f.probe = probe;
        f.round(T0 + n as u64, |_| Some(Some(20.0)));
    }
    let m = f.e.peers.metrics();
    assert_eq!(m.cohorts.load(Ordering::Relaxed), 2);
    assert_eq!(
        m.cohorts_refused.load(Ordering::Relaxed),
        4,
        "c: one per result"
    );
    // Nothing for window + baseline: both dropped; "c" now fits, and the
    // units that cached the dropped ones find the new ones.
    f.e.tick(T0 + 71 * S);
    assert_eq!(f.e.peers.metrics().cohorts.load(Ordering::Relaxed), 0);
    for probe in ["c", "a"] {
        f.probe = probe;
        let t = T0 + 80 * S;
        f.round(t, |i| Some(Some(if i == 0 { 500.0 } else { 20.0 })));
        assert_eq!(f.slower(), vec![0], "{probe}");
    }
    assert_eq!(f.e.peers.metrics().cohorts.load(Ordering::Relaxed), 2);
}

#[test]
fn a_sample_ring_past_max_samples_evicts_and_counts() {
    let mut f = Fleet::new(rules("max_samples = 4", ""), 1);
    for k in 0..10 {
        f.result(0, T0 + k * S, Some(20.0));
    }
    assert_eq!(
        f.e.peers.metrics().samples_evicted.load(Ordering::Relaxed),
        6
    );
}

#[test]
fn stored_peer_reasons_are_not_restored() {
    let mut f = Fleet::new(rules("", ""), 1);
    let reason = |rule: &str| Reason {
        rule: rule.into(),
        severity: Severity::Degraded,
        field: "probe[\"cad-api\"].total_ms".into(),
        observed: Some(900.0),
        threshold: Some(300.0),
        since_ms: T0,
        runbook: None,
        message: "x".into(),
        incident: None,
    };
    f.e.restore(
        &f.units[0].clone(),
        UnitHealth {
            status: Status::Degraded,
            since_ms: T0,
            reasons: vec![reason(SLOWER), reason(SHIFT)],
        },
    );
    assert_eq!(f.health(0).status, Status::Ok, "re-derived from live data");
}

#[test]
fn cluster_mode_has_no_peer_comparison() {
    let e = Engine::clustered(rules("", ""));
    assert!(!e.peers.enabled());
}

#[test]
fn cohort_targets_and_medians() {
    for (target, want) in [
        ("http://cad:8080/api/ping/E3", "http://cad:8080"),
        ("https://cad.example.org", "https://cad.example.org"),
        ("https://cad.example.org?x=1", "https://cad.example.org"),
        ("https://u@cad.example.org/a#b", "https://u@cad.example.org"),
        ("cad.example.org:443", "cad.example.org:443"),
        ("192.0.2.1", "192.0.2.1"),
    ] {
        assert_eq!(cohort_target(target), want);
    }
    // The median without one element, against dropping it and sorting.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for n in 2..40 {
        let mut v: Vec<(f64, usize)> = (0..n)
            .map(|i| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                ((rng % 1000) as f64, i)
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        for skip in 0..n {
            let mut rest: Vec<f64> = v.iter().map(|x| x.0).collect();
            rest.remove(skip);
            assert_eq!(median_without(&v, skip), median_sorted(&rest), "{n} {skip}");
        }
    }
    assert_eq!(show_ms(870.4), "870");
    assert_eq!(show_ms(2.46), "2.5");
    assert_eq!(hhmmss(T0), "11:06:40");
}

#[test]
fn shipped_defaults_match_the_rust_defaults() {
    let raw = RawRules::default();
    assert_eq!(raw.peers, RawPeers::default());
    let cfg = RulesConfig::default().peers.expect("on by default");
    assert_eq!(
        (
            cfg.min_peers,
            cfg.factor,
            cfg.min_delta_ms,
            cfg.for_ms,
            cfg.window_ms
        ),
        (3, 3.0, 100.0, 60_000, 120_000)
    );
    assert_eq!(
        (
            cfg.shift_factor,
            cfg.shift_for_ms,
            cfg.baseline_ms,
            cfg.shift_min_units
        ),
        (3.0, 60_000, 1_800_000, 3)
    );
    assert_eq!((cfg.clear_factor, cfg.shift_clear_factor), (2.0, 2.0));
    assert!(
        validate("[rules.peers]\nenabled = false\n")
            .unwrap()
            .peers
            .is_none()
    );
}

#[test]
fn peers_config_errors_name_the_key() {
    let cases = [
        (
            "min_peers = 1",
            "rules.peers.min_peers: must be at least 2 (a median of one unit is that unit)",
        ),
        ("factor = 1", "rules.peers.factor: 1 is not above 1"),
        (
            "shift_factor = 0.5",
            "rules.peers.shift_factor: 0.5 is not above 1",
        ),
        (
            "min_delta_ms = -1",
            "rules.peers.min_delta_ms: -1 is not 0 or more (ms)",
        ),
        (
            "shift_min_delta_ms = -5",
            "rules.peers.shift_min_delta_ms: -5 is not 0 or more (ms)",
        ),
        (
            "for = \"soon\"",
            r#"rules.peers.for: "soon" is not a duration (e.g. "30s", "5m")"#,
        ),
        (
            "shift_for = \"1x\"",
            r#"rules.peers.shift_for: "1x" is not a duration (e.g. "30s", "5m")"#,
        ),
        (
            "window = \"500ms\"",
            "rules.peers.window: must be at least 1s",
        ),
        (
            "baseline = \"10s\"",
            "rules.peers.baseline: must be 30s to 7d",
        ),
        (
            "baseline = \"1m\"\nwindow = \"2m\"",
            r#"rules.peers.baseline: "1m" is shorter than window "2m": the usual median must span more than the current one"#,
        ),
        (
            "max_samples = 0",
            "rules.peers.max_samples: must be 1 to 64",
        ),
        (
            "max_cohorts = 0",
            "rules.peers.max_cohorts: must be 1 to 1000000",
        ),
        (
            "severity = \"bad\"",
            r#"rules.peers.severity: "bad" is not a severity; expected "degraded" or "critical""#,
        ),
        (
            "shift_severity = \"info\"",
            r#"rules.peers.shift_severity: "info" is not a severity; expected "degraded" or "critical""#,
        ),
        (
            "runbook = \"wiki/slow\"",
            r#"rules.peers.runbook: "wiki/slow" is not an http(s) URL"#,
        ),
        (
            "shift_runbook = \"ftp://x\"",
            r#"rules.peers.shift_runbook: "ftp://x" is not an http(s) URL"#,
        ),
        (
            "shift_min_units = 1",
            "rules.peers.shift_min_units: must be at least 2 (one slow unit is that unit's problem)",
        ),
    ];
    for (body, want) in cases {
        assert_eq!(
            validate(&format!("[rules.peers]\n{body}\n")).unwrap_err(),
            want,
            "{body}"
        );
    }
    let e = validate("[rules.peers]\nfactr = 3\n").unwrap_err();
    assert!(e.contains("unknown field `factr`"), "{e}");
    // A threshold rule may not take the peers' names.
    let e = validate("[rules]\ndefaults = false\n[[rules.threshold]]\nname = \"slower-than-peers\"\nfield = \"cpu.total\"\nop = \">\"\nthreshold = 1\n").unwrap_err();
    assert_eq!(
        e,
        r#"rules.threshold[0].name: "slower-than-peers" is reserved for a built-in rule"#
    );
}

/// The cost at 30,000 units (run it in release, it prints):
/// `cargo test -p muster-collector --release --lib peers_cost -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: run in release with --ignored --nocapture"]
#[allow(clippy::disallowed_methods)]
fn peers_cost_at_30000_units() {
    use std::time::Instant;
    /// 3 minutes: each unit runs each probe every 30 s (spread over the
    /// 30 s), the engine ticks every second. (ns a result, mean and worst
    /// tick ns over the last 2 minutes, the engine).
    fn simulate(peers: &str, agencies: usize, probes: usize) -> (f64, f64, f64, Engine) {
        let units = 30_000usize;
        let mut e = Engine::new(rules(peers, ""));
        let ids: Vec<UnitId> = (0..units)
            .map(|u| UnitId::new(format!("a{}", u % agencies), format!("U{u}")).unwrap())
            .collect();
        let names: Vec<String> = (0..probes).map(|p| format!("cad-{p}")).collect();
        let (mut seq, mut results) = (0u64, 0u64);
        let (mut rx_ns, mut tick_ns, mut ticks, mut worst) = (0u128, 0u128, 0u128, 0u128);
        for sec in 0..180u64 {
            let now = T0 + sec * S;
            let mut batch = Vec::new();
            for (u, id) in ids.iter().enumerate() {
                if (u as u64) % 30 != sec % 30 {
                    continue;
                }
                for n in &names {
                    let mut p = ping(n, id, Some(20.0 + (u % 7) as f64));
                    p.target = "https://cad.example.org/health".into();
                    seq += 1;
                    batch.push((
                        id,
                        Record {
                            boot: BootId(1),
                            seq,
                            at_ms: now,
                            payload: Payload::Probe(p),
                        },
                    ));
                }
            }
            let t = Instant::now();
            for (id, rec) in &batch {
                e.on_record(id, rec, now);
            }
            rx_ns += t.elapsed().as_nanos();
            results += batch.len() as u64;
            let t = Instant::now();
            e.tick(now);
            let d = t.elapsed().as_nanos();
            if sec >= 60 {
                tick_ns += d;
                ticks += 1;
                worst = worst.max(d);
            }
        }
        (
            rx_ns as f64 / results as f64,
            tick_ns as f64 / ticks as f64,
            worst as f64,
            e,
        )
    }
    for (agencies, probes) in [(100usize, 3usize), (1, 1)] {
        let (off_rx, off_tick, off_worst, _) = simulate("enabled = false", agencies, probes);
        let (rx, tick, worst, e) = simulate("", agencies, probes);
        let m = e.peers.metrics();
        // A stream: its member entry (hash map: key, value, a control
        // byte, at 7/8 load), its samples ring, the engine's handle.
        let stream_bytes = (std::mem::size_of::<(usize, Member)>() + 1) * 8 / 7
            + 10 * std::mem::size_of::<(u64, f32)>()
            + std::mem::size_of::<Option<Handle>>();
        println!(
            "peers at 30000 units, {agencies} agencies x {probes} probes: {} cohorts, {} streams, \
             ~{stream_bytes} B a stream ({} B a unit); \
             on_record {rx:.0} ns/result (peers off: {off_rx:.0}); \
             tick {:.2} ms mean, {:.2} ms worst (peers off: {:.2} / {:.2}); {} evaluations",
            m.cohorts.load(Ordering::Relaxed),
            m.members.load(Ordering::Relaxed),
            stream_bytes * probes,
            tick / 1e6,
            worst / 1e6,
            off_tick / 1e6,
            off_worst / 1e6,
            m.evaluations.load(Ordering::Relaxed),
        );
        assert!(e.incidents().next().is_none());
        assert_eq!(m.members.load(Ordering::Relaxed), (30_000 * probes) as u64);
    }
}
