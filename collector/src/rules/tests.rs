//! Table-driven tests of the engine, on records built from
//! `muster_proto::fixtures`. Time is plain numbers: nothing reads a clock.

use muster_proto::{
    AgentStatus, BootId, ErrorClass, HostSample, Outcome, Payload, Presence, Record, UnitId,
    fixtures,
};

use super::*;
use crate::model::{Change, Severity, Status, Transition};

const T0: u64 = fixtures::AT_MS;
const S: u64 = 1_000;
const MIN: u64 = 60_000;

/// Rules from a `[rules]` body; shipped threshold rules left out unless the
/// body says otherwise.
fn rules(body: &str) -> RulesConfig {
    #[derive(serde::Deserialize)]
    struct File {
        rules: RawRules,
    }
    let text = if body.contains("defaults") {
        format!("[rules]\n{body}")
    } else {
        format!("[rules]\ndefaults = false\n{body}")
    };
    toml::from_str::<File>(&text)
        .unwrap()
        .rules
        .validate()
        .unwrap()
}

fn rule(name: &str, field: &str, op: &str, threshold: &str, extra: &str) -> String {
    format!(
        "[[rules.threshold]]\nname = \"{name}\"\nfield = '{field}'\nop = \"{op}\"\nthreshold = {threshold}\n{extra}\n"
    )
}

fn unit(n: usize) -> UnitId {
    UnitId::new("metro-fire", format!("E{n}")).unwrap()
}

/// One unit's record stream, with its own seq counter.
struct Feed {
    unit: UnitId,
    seq: u64,
    boot: BootId,
}

impl Feed {
    fn new(unit: UnitId) -> Self {
        Feed {
            unit,
            seq: 0,
            boot: fixtures::BOOT,
        }
    }
    fn send(&mut self, e: &mut Engine, at: u64, payload: Payload, now_ms: u64) -> Vec<Change> {
        let rec = self.rec(at, payload);
        e.on_record(&self.unit, &rec, now_ms)
    }
    fn rec(&mut self, at: u64, payload: Payload) -> Record {
        self.seq += 1;
        Record {
            boot: self.boot,
            seq: self.seq,
            at_ms: at,
            payload,
        }
    }
}

fn host_with(f: impl FnOnce(&mut HostSample)) -> Payload {
    let mut s = fixtures::host_sample();
    f(&mut s);
    Payload::Host(s)
}

fn cpu(pct: f64) -> Payload {
    host_with(|s| s.cpu.as_mut().unwrap().total_bp = (pct * 100.0) as u16)
}

fn probe(ok: bool) -> Payload {
    let mut p = fixtures::http_probe();
    if !ok {
        p.outcome = Outcome::Fail(ErrorClass::Timeout);
        p.status = None;
        p.phases.total_us = 3_000_000;
    }
    Payload::Probe(p)
}

fn status_with(f: impl FnOnce(&mut AgentStatus)) -> Payload {
    let mut s = fixtures::status();
    s.clock_offset_ms = None;
    f(&mut s);
    Payload::Status(s)
}

fn transitions(changes: &[Change]) -> Vec<&Transition> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Transition(t) => Some(t),
            Change::Incident(_) | Change::Rollout(_) | Change::Automation(_) => None,
        })
        .collect()
}

fn rule_names(e: &Engine, u: &UnitId) -> Vec<String> {
    e.health(u)
        .map(|h| h.reasons.iter().map(|r| r.rule.clone()).collect())
        .unwrap_or_default()
}

fn status(e: &Engine, u: &UnitId) -> Status {
    e.health(u).unwrap().status
}

/// Feeds (seconds after T0, cpu %) live, one per 5 s unless given; returns
/// the statuses after each record and the transitions emitted.
fn run_cpu(cfg: &RulesConfig, samples: &[(u64, f64)]) -> (Vec<Status>, Vec<Transition>) {
    let mut e = Engine::new(cfg.clone());
    let mut f = Feed::new(unit(1));
    let mut statuses = Vec::new();
    let mut trs = Vec::new();
    for &(sec, v) in samples {
        let at = T0 + sec * S;
        let rec = f.rec(at, cpu(v));
        let ch = e.on_record(&f.unit, &rec, at + 200);
        trs.extend(transitions(&ch).into_iter().cloned());
        statuses.push(status(&e, &f.unit));
    }
    (statuses, trs)
}

fn every_5s(values: &[f64]) -> Vec<(u64, f64)> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64 * 5, *v))
        .collect()
}

#[test]
fn each_operator_raises_and_clears() {
    use Status::{Degraded as D, Ok as O};
    // (op, threshold, values, statuses)
    let cases: &[(&str, &str, &[f64], &[Status])] = &[
        (">", "90", &[50.0, 90.0, 90.5, 90.0], &[O, O, D, O]),
        (">=", "90", &[89.0, 90.0, 95.0, 89.99], &[O, D, D, O]),
        ("<", "10", &[50.0, 10.0, 9.0, 10.0], &[O, O, D, O]),
        ("<=", "10", &[10.0, 11.0, 10.0, 10.01], &[D, O, D, O]),
        ("==", "0", &[0.0, 1.0, 0.0], &[D, O, D]),
        ("!=", "0", &[0.0, 1.0, 0.0], &[O, D, O]),
    ];
    for (op, t, values, want) in cases {
        let cfg = rules(&rule("cpu", "cpu.total", op, t, ""));
        let (got, trs) = run_cpu(&cfg, &every_5s(values));
        assert_eq!(&got, want, "cpu.total {op} {t} over {values:?}");
        let flips = want.windows(2).filter(|w| w[0] != w[1]).count() + usize::from(want[0] != O);
        assert_eq!(trs.len(), flips, "{op}: one transition per change");
    }
}

#[test]
fn a_flag_links_its_own_url_else_the_collectors_runbook_else_none() {
    let body = format!(
        "{}{}",
        rule("wwan-errors", "cpu.total", ">", "90", ""),
        rule(
            "cpu-high",
            "cpu.total",
            ">",
            "90",
            "runbook = \"https://wiki.example.org/cpu\""
        )
    );
    let link = |cfg: RulesConfig| {
        let mut e = Engine::new(cfg);
        let mut f = Feed::new(unit(1));
        f.send(&mut e, T0, cpu(95.0), T0);
        let mut links: Vec<(String, Option<String>)> = e
            .health(&f.unit)
            .unwrap()
            .reasons
            .iter()
            .map(|r| (r.rule.clone(), r.runbook.clone()))
            .collect();
        links.sort();
        links
    };
    // No runbook of its own and none on the collector: no link.
    let own = |s: &str| Some(s.to_owned());
    assert_eq!(
        link(rules(&body)),
        [
            ("cpu-high".into(), own("https://wiki.example.org/cpu")),
            ("wwan-errors".into(), None),
        ]
    );
    // A site runbook of that name: the collector's page. A URL of its own
    // still wins over a runbook the collector has.
    let mut cfg = rules(&body);
    cfg.set_local_runbooks(["wwan-errors", "cpu-high"]);
    assert_eq!(
        link(cfg),
        [
            ("cpu-high".into(), own("https://wiki.example.org/cpu")),
            ("wwan-errors".into(), own("/runbooks/wwan-errors")),
        ]
    );
    // A built-in rule links to its built-in runbook: off, announced.
    let mut e = Engine::new(rules(""));
    let u = unit(2);
    let mut f = Feed::new(u.clone());
    e.on_presence(&u, &presence(true, fixtures::BOOT.0, 1, T0), T0);
    f.send(&mut e, T0, cpu(10.0), T0);
    let mut gone = presence(false, fixtures::BOOT.0, 1, T0 + 1_000);
    gone.reason = muster_proto::PresenceReason::Shutdown;
    e.on_presence(&u, &gone, T0 + 1_000);
    let r = &e.health(&u).unwrap().reasons[0];
    assert_eq!(
        (r.rule.as_str(), r.runbook.as_deref()),
        ("off", Some("/runbooks/off"))
    );
}

#[test]
fn for_needs_the_condition_sustained_on_event_time() {
    let cfg = rules(&rule(
        "cpu-high",
        "cpu.total",
        ">",
        "90",
        "for = \"2m\"\nclear = 80",
    ));
    // One spike: nothing.
    let mut spike = every_5s(&[50.0; 40]);
    spike[10].1 = 99.0;
    let (st, trs) = run_cpu(&cfg, &spike);
    assert!(st.iter().all(|s| *s == Status::Ok) && trs.is_empty());
    // Sustained: raised by the first record 2 minutes (event time) after the
    // first violating one: at 120 s, not 115 s.
    let sustained = every_5s(&[95.0; 30]);
    let (st, trs) = run_cpu(&cfg, &sustained);
    let first = st.iter().position(|s| *s == Status::Degraded).unwrap();
    assert_eq!(sustained[first].0, 120);
    assert_eq!(trs.len(), 1);
    let r = &trs[0].reasons[0];
    assert_eq!(
        (r.rule.as_str(), r.field.as_str()),
        ("cpu-high", "cpu.total")
    );
    assert_eq!(r.since_ms, T0, "since the condition started");
    assert_eq!(r.threshold, Some(90.0));
    assert_eq!(r.message, "cpu.total 95 > 90 for 2m");
    assert_eq!(trs[0].at_ms, T0 + 120 * S, "at the event time it tripped");
    // A dip below the threshold (even above clear) restarts a pending timer.
    let mut dip = every_5s(&[95.0; 60]);
    dip[20].1 = 85.0; // 100 s
    let (st, _) = run_cpu(&cfg, &dip);
    let first = st.iter().position(|s| *s == Status::Degraded).unwrap();
    assert_eq!(dip[first].0, 225, "pending again from 105 s");
    // Sparse samples count on event time, not on how many arrived.
    let (st, _) = run_cpu(&cfg, &[(0, 95.0), (60, 95.0), (119, 95.0), (121, 95.0)]);
    assert_eq!(
        st,
        vec![Status::Ok, Status::Ok, Status::Ok, Status::Degraded]
    );
}

#[test]
fn hysteresis_keeps_a_wobbling_value_from_flapping() {
    let cfg = rules(&rule("cpu-high", "cpu.total", ">", "90", "clear = 80"));
    // Up at 95, wobbling across 90 but above 80, then down at 79.
    let values = [95.0, 85.0, 91.0, 82.0, 93.0, 80.5, 89.0, 79.0, 85.0, 91.0];
    let (st, trs) = run_cpu(&cfg, &every_5s(&values));
    use Status::{Degraded as D, Ok as O};
    assert_eq!(st, vec![D, D, D, D, D, D, D, O, O, D]);
    assert_eq!(trs.len(), 3, "up, down at 79, up again at 91: {trs:#?}");
    // Without a clear threshold the same wobble flaps.
    let cfg = rules(&rule("cpu-high", "cpu.total", ">", "90", ""));
    let (_, trs) = run_cpu(&cfg, &every_5s(&values));
    assert_eq!(trs.len(), 7);
}

#[test]
fn observed_values_update_without_transitions() {
    let cfg = rules(&rule("cpu-high", "cpu.total", ">", "90", "clear = 80"));
    let mut e = Engine::new(cfg);
    let mut f = Feed::new(unit(1));
    let mut n = 0;
    for (i, v) in [95.0, 97.5, 99.0, 92.0].into_iter().enumerate() {
        let at = T0 + i as u64 * 5 * S;
        n += transitions(&f.send(&mut e, at, cpu(v), at)).len();
    }
    assert_eq!(n, 1);
    let h = e.health(&f.unit).unwrap();
    assert_eq!(h.reasons[0].observed, Some(92.0), "latest while active");
    assert_eq!(
        h.reasons[0].message, "cpu.total 95 > 90",
        "the value that tripped it"
    );
    assert_eq!(h.since_ms, T0);
}

#[test]
fn severity_ordering_and_reason_order() {
    let cfg = rules(&format!(
        "{}{}",
        rule(
            "cpu-high",
            "cpu.total",
            ">",
            "90",
            "severity = \"degraded\""
        ),
        rule(
            "mem-full",
            "memory.used_pct",
            ">",
            "99",
            "severity = \"critical\""
        ),
    ));
    let mut e = Engine::new(cfg);
    let mut f = Feed::new(unit(1));
    let at = T0;
    let both = host_with(|s| {
        s.cpu.as_mut().unwrap().total_bp = 9_500;
        let m = s.memory.as_mut().unwrap();
        m.used_kib = m.total_kib;
    });
    let ch = f.send(&mut e, at, both, at);
    let t = transitions(&ch);
    assert_eq!((t[0].from, t[0].to), (Status::Ok, Status::Critical));
    assert_eq!(
        rule_names(&e, &f.unit),
        vec!["mem-full", "cpu-high"],
        "worst first"
    );
    // Memory recovers: critical -> degraded.
    let ch = f.send(&mut e, at + 5 * S, cpu(95.0), at + 5 * S);
    let t = transitions(&ch);
    assert_eq!((t[0].from, t[0].to), (Status::Critical, Status::Degraded));
    // The will: offline outranks both, and the flags stay underneath.
    let p = Presence {
        online: false,
        boot: fixtures::BOOT,
        connection: 1,
        at_ms: T0 - MIN,
        reason: muster_proto::PresenceReason::Lost,
    };
    let ch = e.on_presence(&f.unit, &p, at + 6 * S);
    assert_eq!(transitions(&ch)[0].to, Status::Lost);
    assert_eq!(rule_names(&e, &f.unit), vec!["lost.will", "cpu-high"]);
    assert!(Status::Lost > Status::Critical && Status::Critical > Status::Degraded);
}

fn presence(online: bool, boot: u64, connection: u32, at_ms: u64) -> Presence {
    Presence {
        online,
        boot: BootId(boot),
        connection,
        at_ms,
        reason: if online {
            muster_proto::PresenceReason::Connected
        } else {
            muster_proto::PresenceReason::Lost
        },
    }
}

#[test]
fn the_will_and_late_wills_of_older_connections() {
    use Status::{Lost as X, Ok as O};
    // (presence, status after it)
    let steps: &[(Presence, Status)] = &[
        (presence(true, 7, 1, T0), O),
        (presence(false, 7, 1, T0), X), // the will of connection 1
        (presence(true, 7, 2, T0 + MIN), O), // reconnected
        (presence(false, 7, 1, T0), O), // a late will of connection 1: ignored
        (presence(true, 7, 2, T0 + MIN), O), // the same birth again (retained redelivery)
        (presence(true, 9, 1, T0 + 5 * MIN), O), // the agent restarted: new boot
        (presence(false, 7, 2, T0 + MIN), O), // a late will of the old boot: ignored
        (presence(false, 9, 1, T0 + 5 * MIN), X), // the new boot's will
        (presence(true, 9, 1, T0 + 5 * MIN), X), // its old birth again: still offline
        (presence(true, 9, 2, T0 + 7 * MIN), O),
    ];
    let mut e = Engine::new(rules(""));
    let u = unit(1);
    let mut n = 0;
    for (i, (p, want)) in steps.iter().enumerate() {
        let before = e.health(&u).map(|h| h.status);
        let ch = e.on_presence(&u, p, T0 + 10 * MIN + i as u64 * S);
        assert_eq!(status(&e, &u), *want, "step {i}: {p:?}");
        let t = transitions(&ch);
        assert_eq!(
            t.len(),
            usize::from(before.is_some_and(|b| b != *want))
                + usize::from(before.is_none() && *want != O),
            "step {i}"
        );
        n += t.len();
        if *want == X {
            let r = &e.health(&u).unwrap().reasons[0];
            assert_eq!(r.rule, "lost.will");
            assert_eq!(r.runbook.as_deref(), Some("/runbooks/lost.will"));
        }
    }
    assert_eq!(n, 4);
    // A will from another boot older than the newest data is ignored even
    // when no birth of the new boot was seen.
    let mut e = Engine::new(rules(""));
    let mut f = Feed::new(unit(2));
    f.boot = BootId(11);
    f.send(&mut e, T0 + MIN, cpu(10.0), T0 + MIN);
    e.on_presence(&f.unit, &presence(false, 10, 3, T0), T0 + MIN + S);
    assert_eq!(status(&e, &f.unit), Status::Ok);
}

#[test]
fn staleness_on_receipt_time_with_ticks() {
    // 5 s interval, factor 3: stale after 15 s of silence.
    let mut e = Engine::new(rules(
        "[rules.offline]\nstale_factor = 3\nmin_stale = \"1s\"\n",
    ));
    let mut f = Feed::new(unit(1));
    let rx = T0 + 500;
    f.send(&mut e, T0, cpu(20.0), rx);
    // (tick at ms after rx, status)
    let ticks = [
        (1_000, Status::Ok),
        (10_000, Status::Ok),
        (14_999, Status::Ok),
        (15_000, Status::Lost),
        (16_000, Status::Lost),
        (60_000, Status::Lost),
    ];
    let mut n = 0;
    for (dt, want) in ticks {
        let ch = e.tick(rx + dt);
        n += transitions(&ch).len();
        assert_eq!(status(&e, &f.unit), want, "tick +{dt}");
    }
    assert_eq!(n, 1, "one transition, not one per tick");
    let h = e.health(&f.unit).unwrap();
    assert_eq!(h.reasons[0].rule, "lost.stale");
    assert_eq!(h.reasons[0].since_ms, rx, "since last seen");
    assert!(
        h.reasons[0].message.starts_with("lost contact ")
            && h.reasons[0]
                .message
                .ends_with("; no data for 15s (allowed 3 x interval)"),
        "{}",
        h.reasons[0].message
    );
    // Data again clears it.
    let ch = f.send(&mut e, T0 + 61 * S, cpu(20.0), rx + 61 * S);
    assert_eq!(transitions(&ch)[0].to, Status::Ok);
    // A slower unit (agent status says 60 s) gets 3 minutes.
    let mut g = Feed::new(unit(2));
    let ch = g.send(&mut e, T0, status_with(|s| s.interval_ms = 60_000), T0);
    assert!(ch.is_empty());
    e.tick(T0 + 179 * S);
    assert_eq!(status(&e, &g.unit), Status::Ok);
    e.tick(T0 + 180 * S);
    assert_eq!(status(&e, &g.unit), Status::Lost);
    // min_stale is a floor.
    let mut e = Engine::new(rules("[rules.offline]\nmin_stale = \"1m\"\n"));
    f.send(&mut e, T0, cpu(20.0), T0);
    e.tick(T0 + 59 * S);
    assert_eq!(status(&e, &f.unit), Status::Ok);
    e.tick(T0 + 60 * S);
    assert_eq!(status(&e, &f.unit), Status::Lost);
}

#[test]
fn a_will_suppresses_stale_and_a_birth_clears_both() {
    let mut e = Engine::new(rules("[rules.offline]\nmin_stale = \"1s\"\n"));
    let mut f = Feed::new(unit(1));
    f.send(&mut e, T0, cpu(20.0), T0);
    e.tick(T0 + 20 * S); // half-open: stale first
    assert_eq!(rule_names(&e, &f.unit), vec!["lost.stale"]);
    e.on_presence(
        &f.unit,
        &presence(false, fixtures::BOOT.0, 1, T0 - MIN),
        T0 + 45 * S,
    );
    // The will replaces staleness: one presence reason at a time.
    assert_eq!(rule_names(&e, &f.unit), vec!["lost.will"]);
    let ch = e.on_presence(
        &f.unit,
        &presence(true, fixtures::BOOT.0, 2, T0 + 50 * S),
        T0 + 50 * S,
    );
    assert_eq!(transitions(&ch)[0].to, Status::Ok);
    // Will first: no stale on top.
    e.on_presence(
        &f.unit,
        &presence(false, fixtures::BOOT.0, 2, T0 + 50 * S),
        T0 + 60 * S,
    );
    e.tick(T0 + 100 * S);
    assert_eq!(rule_names(&e, &f.unit), vec!["lost.will"]);
}

#[test]
fn replayed_history_neither_raises_nor_clears_flags() {
    let cfg = rules(&format!(
        "{}[rules.offline]\nmin_stale = \"1s\"\n",
        rule("cpu-high", "cpu.total", ">", "90", "clear = 80")
    ));
    let mut e = Engine::new(cfg);
    // The unit buffered 720 records (seqs 1..=720) while out of coverage.
    let mut f = Feed::new(unit(1));
    f.seq = 720;
    let mut backlog = Feed::new(unit(1));
    // Back after an hour: the live record first (CPU high) ...
    let now = T0 + 60 * MIN;
    let ch = f.send(&mut e, now, cpu(95.0), now);
    assert_eq!(transitions(&ch).len(), 1);
    // ... then the backlog, oldest first, CPU low, delivered in a burst.
    for i in 0..720 {
        let at = T0 + i * 5 * S;
        let ch = backlog.send(&mut e, at, cpu(10.0), now + i);
        assert!(
            ch.is_empty(),
            "history record {i} changed something: {ch:?}"
        );
    }
    assert_eq!(rule_names(&e, &f.unit), vec!["cpu-high"]);
    // Old data is no reason to call the unit stale either: it arrived just now.
    assert!(transitions(&e.tick(now + 1_000)).is_empty());
    assert_eq!(status(&e, &f.unit), Status::Degraded);
    // History with a problem does not raise one on a healthy unit.
    let mut g = Feed::new(unit(2));
    g.seq = 10;
    let mut g_backlog = Feed::new(unit(2));
    g.send(&mut e, now, cpu(10.0), now);
    for i in 0..10 {
        let ch = g_backlog.send(&mut e, T0 + i * 5 * S, cpu(99.0), now + 10 + i);
        assert!(ch.is_empty());
    }
    assert_eq!(status(&e, &g.unit), Status::Ok);
    // New live data still counts.
    let ch = g.send(&mut e, now + 5 * S, cpu(99.0), now + 5 * S);
    assert_eq!(transitions(&ch)[0].to, Status::Degraded);
    // Streams are separate: a probe result taken before the newest host
    // sample is still the newest probe result.
    let cfg = rules(&rule("slow", "probe[*].total_ms", ">", "100", ""));
    let mut e = Engine::new(cfg);
    f.send(&mut e, now, cpu(10.0), now);
    let ch = f.send(&mut e, now - 2 * S, probe(true), now + 1);
    assert_eq!(
        transitions(&ch)[0].reasons[0].field,
        r#"probe["cad-api"].total_ms"#
    );
}

#[test]
fn clock_skew_from_live_data_and_from_the_agent() {
    let cfg = rules("");
    // (agent clock minus true time, agent-reported offset, flagged?)
    let cases: &[(i64, Option<i64>, bool)] = &[
        (0, None, false),
        (-90_000, None, false),
        (-5 * 60_000, None, true),         // agent 5 min behind
        (5 * 60_000, None, true),          // agent 5 min ahead
        (-5 * 60_000, Some(1_000), false), // the agent's own estimate wins
        (0, Some(-3 * 60_000), true),
    ];
    for (i, (skew, reported, flagged)) in cases.iter().enumerate() {
        let mut e = Engine::new(cfg.clone());
        let mut f = Feed::new(unit(1));
        let mut any = false;
        for k in 0..12u64 {
            let now = T0 + k * 5 * S;
            let at = (now as i64 + skew - 300) as u64; // 300 ms in transit
            let payload = if k % 4 == 0 {
                status_with(|s| s.clock_offset_ms = *reported)
            } else {
                cpu(20.0)
            };
            f.send(&mut e, at, payload, now);
            any |= rule_names(&e, &f.unit).contains(&"clock_skew".to_string());
        }
        assert_eq!(
            any, *flagged,
            "case {i}: skew {skew}, reported {reported:?}"
        );
        if *flagged {
            let r = &e.health(&f.unit).unwrap().reasons[0];
            assert_eq!(r.rule, "clock_skew");
            assert_eq!(r.threshold, Some(120_000.0));
            assert_eq!(r.severity, crate::model::Severity::Degraded);
        }
    }
    // A unit back from an outage whose backlog is delivered before any live
    // record (hours-old records in a burst) is not judged skewed: the burst
    // spans seconds of receipt, and the live records that follow are prompt.
    let mut e = Engine::new(cfg.clone());
    let mut f = Feed::new(unit(1));
    let now = T0 + 120 * MIN;
    let mut changes = Vec::new();
    for i in 0..1_000 {
        changes.extend(f.send(&mut e, T0 + i * 5 * S, cpu(20.0), now + i));
    }
    for k in 1..20 {
        changes.extend(f.send(&mut e, now + k * 5 * S - 200, cpu(20.0), now + k * 5 * S));
    }
    assert!(changes.is_empty(), "{changes:#?}");
    // The flag clears when the clock is fixed (below 3/4 of the threshold).
    let mut e = Engine::new(cfg);
    let mut f = Feed::new(unit(1));
    let mut trs = 0;
    for k in 0..40u64 {
        let now = T0 + k * 5 * S;
        let skew: i64 = if k < 20 { -10 * 60_000 } else { 0 };
        let ch = f.send(&mut e, (now as i64 + skew) as u64, cpu(20.0), now);
        trs += transitions(&ch).len();
    }
    // The fixed clock makes the agent's event times jump forward: those are
    // current records, and the minimum filter clears as soon as one arrives.
    assert_eq!(trs, 2);
    assert_eq!(status(&e, &f.unit), Status::Ok);
}

/// 40 units of one agency running cad-api; `failing` of them fail it.
fn fleet(e: &mut Engine, feeds: &mut [Feed], failing: usize, at: u64) -> Vec<Change> {
    let mut out = Vec::new();
    for (i, f) in feeds.iter_mut().enumerate() {
        let rec = f.rec(at, probe(i >= failing));
        out.extend(e.on_record(&f.unit.clone(), &rec, at));
    }
    out
}

fn incidents(ch: &[Change]) -> Vec<&crate::model::Incident> {
    ch.iter()
        .filter_map(|c| match c {
            Change::Incident(i) => Some(i),
            Change::Transition(_) | Change::Rollout(_) | Change::Automation(_) => None,
        })
        .collect()
}

#[test]
fn one_incident_for_many_units_failing_one_probe() {
    let cfg = rules(&rule(
        "cad-api-failing",
        r#"probe["cad-api"].failure_ratio"#,
        ">",
        "0.5",
        "window = \"5m\"\nclear = 0.2\nseverity = \"critical\"",
    ));
    let mut e = Engine::new(cfg);
    let mut feeds: Vec<Feed> = (0..40).map(|i| Feed::new(unit(i))).collect();
    // Another agency, also failing: its own business.
    let mut other: Vec<Feed> = (0..2)
        .map(|i| Feed::new(UnitId::new("county-ems", format!("M{i}")).unwrap()))
        .collect();
    // All fine.
    let mut t = T0;
    fleet(&mut e, &mut feeds, 0, t);
    assert!(incidents(&e.tick(t + 500)).is_empty());
    // 2 units failing: below min_units, no incident. Their ratio is 1/2,
    // not above 0.5: not flagged yet either.
    t += 30 * S;
    fleet(&mut e, &mut feeds, 2, t);
    assert!(incidents(&e.tick(t + 500)).is_empty());
    assert_eq!(status(&e, &unit(0)), Status::Ok);
    // 37 of 40 failing: one incident.
    t += 30 * S;
    let ch = fleet(&mut e, &mut feeds, 37, t);
    fleet(&mut e, &mut other, 2, t);
    assert!(incidents(&ch).is_empty(), "incidents are judged in tick");
    let ch = e.tick(t + 500);
    let inc = incidents(&ch);
    assert_eq!(inc.len(), 1, "{inc:#?}");
    let i = inc[0].clone();
    assert_eq!(
        i.summary,
        "cad-api (https://cad.example.org/health) failing from 37 of 40 units"
    );
    assert_eq!(
        (i.agency.as_str(), i.probe.as_str(), i.of_units),
        ("metro-fire", "cad-api", 40)
    );
    assert_eq!(i.target, "https://cad.example.org/health");
    assert_eq!(i.affected.len(), 37);
    assert!(i.affected.windows(2).all(|w| w[0] < w[1]), "sorted");
    assert_eq!(i.id, format!("metro-fire:cad-api:{}", t + 500));
    assert_eq!(i.ended_ms, None);
    assert_eq!(e.incidents().count(), 1);
    // The units show it: an `incident` reason, and their own cad-api flag
    // carries the id.
    let trs = transitions(&ch);
    assert_eq!(trs.len(), 37, "each affected unit's reasons changed");
    let h = e.health(&unit(0)).unwrap();
    assert!(
        h.reasons
            .iter()
            .all(|r| r.incident.as_deref() == Some(i.id.as_str())),
        "{h:#?}"
    );
    assert!(h.reasons.iter().any(|r| r.rule == "incident"));
    let h = e.health(&unit(5)).unwrap();
    let inc_reason = h.reasons.iter().find(|r| r.rule == "incident").unwrap();
    assert_eq!(inc_reason.field, r#"probe["cad-api"]"#);
    assert_eq!(status(&e, &unit(39)), Status::Ok);
    assert!(
        e.health(&other[0].unit)
            .unwrap()
            .reasons
            .iter()
            .all(|r| r.incident.is_none())
    );
    // Still failing: no new incident, no new changes.
    t += 30 * S;
    fleet(&mut e, &mut feeds, 37, t);
    let ch = e.tick(t + 500);
    assert!(ch.is_empty(), "{ch:#?}");
    // Recovering to 20 failing: ratio 0.5 >= clear 0.25: updated, not ended.
    t += 30 * S;
    fleet(&mut e, &mut feeds, 20, t);
    let ch = e.tick(t + 500);
    let inc = incidents(&ch);
    assert_eq!(inc.len(), 1);
    assert_eq!(
        (inc[0].id.as_str(), inc[0].affected.len()),
        (i.id.as_str(), 20)
    );
    assert!(
        e.health(&unit(30))
            .unwrap()
            .reasons
            .iter()
            .all(|r| r.incident.is_none())
    );
    // Down to 5 of 40: ended.
    t += 30 * S;
    fleet(&mut e, &mut feeds, 5, t);
    let ch = e.tick(t + 500);
    let inc = incidents(&ch);
    assert_eq!(inc.len(), 1);
    assert_eq!(inc[0].ended_ms, Some(t + 500));
    assert_eq!(inc[0].id, i.id);
    assert_eq!(e.incidents().count(), 0);
    assert!(
        e.health(&unit(0))
            .unwrap()
            .reasons
            .iter()
            .all(|r| r.incident.is_none() && r.rule != "incident")
    );
    assert!(incidents(&e.tick(t + 1_500)).is_empty(), "ended once");
}

#[test]
fn units_that_stop_reporting_leave_the_incident_count() {
    let mut e = Engine::new(rules("[rules.incidents]\nwindow = \"2m\"\n"));
    let mut feeds: Vec<Feed> = (0..4).map(|i| Feed::new(unit(i))).collect();
    fleet(&mut e, &mut feeds, 3, T0);
    let inc = incidents(&e.tick(T0 + S))
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(
        inc[0].summary,
        "cad-api (https://cad.example.org/health) failing from 3 of 4 units"
    );
    // Only the healthy unit keeps reporting: the failing ones expire out of
    // the window; the incident ends.
    let mut healthy = feeds.pop().unwrap();
    let mut t = T0;
    let mut ended = None;
    while t < T0 + 5 * MIN {
        t += 30 * S;
        healthy.send(&mut e, t, probe(true), t);
        for i in incidents(&e.tick(t + 1)) {
            ended = i.ended_ms;
        }
    }
    assert_eq!(
        ended,
        Some(T0 + 120 * S + 1),
        "expired after the 2 min window"
    );
}

#[test]
fn wildcard_instances_are_judged_and_reported_each() {
    let cfg = rules(&rule("disk-full", "disk[*].used_pct", ">", "95", ""));
    let mut e = Engine::new(cfg);
    let mut f = Feed::new(unit(1));
    let full = |mount: &'static str| {
        host_with(move |s| {
            for d in &mut s.disks {
                if d.mount == mount {
                    d.used_kib = d.total_kib / 100 * 97;
                }
            }
        })
    };
    let ch = f.send(&mut e, T0, full("/var"), T0);
    let r = &transitions(&ch)[0].reasons[0];
    assert_eq!(r.field, r#"disk["/var"].used_pct"#);
    assert_eq!(r.message, r#"disk["/var"].used_pct 97 > 95"#);
    // The disk disappears from the samples (unmounted): the flag goes.
    let gone = host_with(|s| s.disks.retain(|d| d.mount != "/var"));
    let ch = f.send(&mut e, T0 + 5 * S, gone, T0 + 5 * S);
    assert_eq!(transitions(&ch)[0].to, Status::Ok);
    // The disks collector failing says nothing about the disks: flag stays.
    f.send(&mut e, T0 + 10 * S, full("/"), T0 + 10 * S);
    let failed = host_with(|s| {
        s.disks.clear();
        s.failures.push(muster_proto::SamplerFailure {
            collector: muster_proto::SamplerFamily::Disks,
            reason: "timeout".into(),
        });
    });
    let ch = f.send(&mut e, T0 + 15 * S, failed, T0 + 15 * S);
    assert!(ch.is_empty());
    assert_eq!(rule_names(&e, &f.unit), vec!["disk-full"]);
}

#[test]
fn a_windows_drive_by_any_spelling() {
    let cfg = rules(&rule("c-full", r#"disk["C:"].used_pct"#, ">", "95", ""));
    let mut e = Engine::new(cfg);
    let mut f = Feed::new(unit(1));
    let win = host_with(|s| {
        s.disks[0].mount = "C:\\".into();
        s.disks[0].used_kib = s.disks[0].total_kib;
    });
    let ch = f.send(&mut e, T0, win, T0);
    assert_eq!(transitions(&ch)[0].reasons[0].observed, Some(100.0));
}

#[test]
fn watched_process_not_running_for_30s_is_critical() {
    let cfg = rules(&rule(
        "cad-client-down",
        r#"process["cadclient"].running"#,
        "==",
        "false",
        "for = \"30s\"\nseverity = \"critical\"",
    ));
    let down = || host_with(|s| s.processes[0].running = false);
    let up = || Payload::Host(fixtures::host_sample());
    // (seconds, payload, status)
    let steps: Vec<(u64, Payload, Status)> = vec![
        (0, up(), Status::Ok),
        (5, down(), Status::Ok),
        (10, up(), Status::Ok), // restarted in time
        (15, down(), Status::Ok),
        (40, down(), Status::Ok),
        (45, down(), Status::Critical),
        (50, up(), Status::Ok),
    ];
    let mut e = Engine::new(cfg);
    let mut f = Feed::new(unit(1));
    for (sec, p, want) in steps {
        let at = T0 + sec * S;
        f.send(&mut e, at, p, at);
        assert_eq!(status(&e, &f.unit), want, "at {sec}s");
        if want == Status::Critical {
            let r = &e.health(&f.unit).unwrap().reasons[0];
            assert_eq!(
                r.message,
                r#"process["cadclient"].running == false for 30s"#
            );
        }
    }
}

#[test]
fn failure_ratio_over_a_window_of_event_time() {
    let cfg = rules(&rule(
        "cad-api-failing",
        r#"probe["cad-api"].failure_ratio"#,
        ">",
        "0.5",
        "window = \"5m\"\nclear = 0.2",
    ));
    let mut e = Engine::new(cfg);
    let mut f = Feed::new(unit(1));
    // One result every 30 s: (ok?, status after)
    let seq: &[(bool, Status)] = &[
        (true, Status::Ok),
        (false, Status::Ok),       // 1/2
        (false, Status::Degraded), // 2/3
        (true, Status::Degraded),  // 2/4 = 0.5 > 0.2: stays up
        (true, Status::Degraded),  // 2/5
        (true, Status::Degraded),  // 2/6
        (true, Status::Degraded),  // 2/7
        (true, Status::Degraded),  // 2/8 = 0.25
        (true, Status::Degraded),  // 2/9 = 0.22
        (true, Status::Ok),        // 2/10 = 0.2, not > 0.2
    ];
    for (i, (ok, want)) in seq.iter().enumerate() {
        let at = T0 + i as u64 * 30 * S;
        f.send(&mut e, at, probe(*ok), at);
        assert_eq!(status(&e, &f.unit), *want, "result {i}");
    }
    // Old failures leave the window: two failures, then 5 min of nothing but
    // the window is judged on event time.
    let mut e = Engine::new(rules(&rule(
        "f",
        r#"probe["cad-api"].failure_ratio"#,
        ">=",
        "0.5",
        "window = \"5m\"",
    )));
    f.send(&mut e, T0, probe(false), T0);
    assert_eq!(status(&e, &f.unit), Status::Degraded);
    let at = T0 + 5 * MIN;
    f.send(&mut e, at, probe(true), at);
    assert_eq!(
        status(&e, &f.unit),
        Status::Ok,
        "the failure at T0 is out of the window"
    );
}

#[test]
fn probe_latency_ignores_failed_results() {
    let cfg = rules(&rule("slow", "probe[*].total_ms", ">", "2000", ""));
    let mut e = Engine::new(cfg);
    let mut f = Feed::new(unit(1));
    // A timeout's 3000 ms is not a latency.
    f.send(&mut e, T0, probe(false), T0);
    assert_eq!(status(&e, &f.unit), Status::Ok);
    let mut slow = fixtures::http_probe();
    slow.phases.total_us = 2_500_000;
    let ch = f.send(&mut e, T0 + S, Payload::Probe(slow), T0 + S);
    assert_eq!(
        transitions(&ch)[0].reasons[0].message,
        r#"probe["cad-api"].total_ms 2500 > 2000"#
    );
}

#[test]
fn agency_filter_and_agent_fields() {
    let cfg = rules(&format!(
        "{}{}",
        rule(
            "backlog",
            "agent.backlog_records",
            ">",
            "1000",
            "agencies = [\"metro-fire\"]"
        ),
        rule("dropping", "agent.dropped_new", ">", "0", ""),
    ));
    let mut e = Engine::new(cfg);
    let mut fire = Feed::new(unit(1));
    let mut ems = Feed::new(UnitId::new("county-ems", "M1").unwrap());
    let big = || status_with(|s| s.backlog_records = 50_000);
    fire.send(&mut e, T0, big(), T0);
    ems.send(&mut e, T0, big(), T0);
    assert_eq!(rule_names(&e, &fire.unit), vec!["backlog"]);
    assert_eq!(rule_names(&e, &ems.unit), Vec::<String>::new());
    // dropped_new: the first status only sets the baseline.
    let drops = |n: u64| status_with(move |s| s.dropped.full = n);
    ems.send(&mut e, T0 + S, drops(12), T0 + S);
    assert_eq!(status(&e, &ems.unit), Status::Ok);
    ems.send(&mut e, T0 + 2 * S, drops(20), T0 + 2 * S);
    assert_eq!(rule_names(&e, &ems.unit), vec!["dropping"]);
    ems.send(&mut e, T0 + 3 * S, drops(20), T0 + 3 * S);
    assert_eq!(status(&e, &ems.unit), Status::Ok);
}

#[test]
fn restore_reseeds_flags_and_counts_silence_from_start() {
    let cfg = rules(&format!(
        "{}[rules.offline]\nmin_stale = \"1s\"\n",
        rule("cpu-high", "cpu.total", ">", "90", "clear = 80")
    ));
    // Build a health the way the engine would have stored it.
    let mut before = Engine::new(cfg.clone());
    let mut f = Feed::new(unit(1));
    f.send(&mut before, T0, cpu(95.0), T0);
    let stored = before.health(&f.unit).unwrap().clone();
    let stored_json = serde_json::to_string(&stored).unwrap();
    let stored: crate::model::UnitHealth = serde_json::from_str(&stored_json).unwrap();

    let mut e = Engine::new(cfg.clone());
    e.restore(&f.unit, stored.clone());
    assert_eq!(e.health(&f.unit), Some(&stored));
    // 85 is above clear: the restored flag holds (hysteresis survives).
    let ch = f.send(&mut e, T0 + 10 * S, cpu(85.0), T0 + 10 * S);
    assert!(ch.is_empty());
    let ch = f.send(&mut e, T0 + 15 * S, cpu(70.0), T0 + 15 * S);
    assert_eq!(transitions(&ch)[0].to, Status::Ok);
    // A restored unit that never reports again goes stale, counted from the
    // first tick after start.
    let mut e = Engine::new(cfg.clone());
    let start = T0 + 60 * MIN;
    e.restore(&f.unit, stored.clone());
    e.tick(start);
    assert_eq!(status(&e, &f.unit), Status::Degraded);
    // Its interval is not known yet: 3 x the 30 s default interval.
    assert!(e.tick(start + 89 * S).is_empty());
    let ch = e.tick(start + 90 * S);
    assert_eq!(transitions(&ch)[0].to, Status::Lost);
    // Rules no longer configured are dropped on restore.
    let mut e = Engine::new(rules(""));
    e.restore(&f.unit, stored);
    assert_eq!(status(&e, &f.unit), Status::Ok);
    // A restored will stays until the retained birth comes.
    let mut e = Engine::new(cfg);
    let mut offline = crate::model::UnitHealth::ok(T0);
    e.on_presence(&f.unit, &presence(false, 1, 1, T0), T0);
    offline.status = Status::Lost;
    offline.reasons = e.health(&f.unit).unwrap().reasons.clone();
    let mut e2 = Engine::new(rules(""));
    e2.restore(&f.unit, offline);
    assert_eq!(status(&e2, &f.unit), Status::Lost);
    let ch = e2.on_presence(&f.unit, &presence(true, 1, 2, T0 + S), T0 + 2 * S);
    assert_eq!(transitions(&ch)[0].to, Status::Ok);
}

#[test]
fn shipped_defaults_flag_a_realistic_mct() {
    let mut e = Engine::new(RulesConfig::default());
    let mut f = Feed::new(unit(1));
    // The fixture is a healthy MCT (its updater not running is not watched).
    for k in 0..30 {
        let at = T0 + k * 5 * S;
        let ch = f.send(&mut e, at, Payload::Host(fixtures::host_sample()), at + 100);
        assert!(ch.is_empty(), "{ch:#?}");
        f.send(&mut e, at + 1, probe(true), at + 150);
        f.send(&mut e, at + 2, status_with(|_| {}), at + 200);
        assert!(e.tick(at + 1_000).is_empty());
    }
    assert_eq!(status(&e, &f.unit), Status::Ok);
    // The CAD client dies: critical 30 s later.
    let mut flagged_at = None;
    for k in 30..50 {
        let at = T0 + k * 5 * S;
        let ch = f.send(
            &mut e,
            at,
            host_with(|s| s.processes[0].running = false),
            at + 100,
        );
        if !ch.is_empty() && flagged_at.is_none() {
            flagged_at = Some(k);
        }
    }
    assert_eq!(flagged_at, Some(36));
    assert_eq!(status(&e, &f.unit), Status::Critical);
    assert_eq!(
        e.health(&f.unit).unwrap().reasons[0].runbook.as_deref(),
        Some("/runbooks/cad-client-down")
    );
}

#[test]
fn a_clock_stepped_back_within_a_boot_keeps_the_data_current() {
    let cfg = rules(&rule("cpu-high", "cpu.total", ">", "90", ""));
    let mut e = Engine::new(cfg);
    let mut f = Feed::new(unit(1));
    let ahead = 10 * MIN;
    let mut trs = Vec::new();
    // 20 records with the agent clock 10 minutes ahead: clock_skew.
    for k in 0..20 {
        let now = T0 + k * 5 * S;
        trs.extend(
            transitions(&f.send(&mut e, now + ahead, cpu(20.0), now))
                .into_iter()
                .cloned(),
        );
    }
    assert_eq!(rule_names(&e, &f.unit), vec!["clock_skew"]);
    assert!(
        e.health(&f.unit).unwrap().reasons[0]
            .message
            .contains("10m ahead of")
    );
    // NTP steps the clock back. Same boot, higher seqs: still the newest
    // data, though its event times are older than what came before.
    for k in 20..40 {
        let now = T0 + k * 5 * S;
        // The minimum filter forgets the old offset within a minute.
        let v = if k >= 34 { 95.0 } else { 20.0 };
        trs.extend(
            transitions(&f.send(&mut e, now - 100, cpu(v), now))
                .into_iter()
                .cloned(),
        );
    }
    assert_eq!(rule_names(&e, &f.unit), vec!["cpu-high"]);
    let seq: Vec<(Status, Status)> = trs.iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(
        seq,
        vec![
            (Status::Ok, Status::Degraded),
            (Status::Degraded, Status::Ok),
            (Status::Ok, Status::Degraded)
        ]
    );
    // A record of another boot with an older event time is history.
    let mut old = Feed::new(unit(1));
    old.boot = BootId(1);
    old.seq = 1_000;
    assert!(old.send(&mut e, T0, cpu(10.0), T0 + 40 * 5 * S).is_empty());
    assert_eq!(rule_names(&e, &f.unit), vec!["cpu-high"]);
}

mod model_based {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against a reference model of `>` with hysteresis and `for`: the
        /// engine's status after each sample and its transition count agree.
        #[test]
        fn threshold_with_hysteresis_and_for_matches_a_reference(
            values in proptest::collection::vec(60u16..100, 1..120),
            for_s in prop_oneof![Just(0u64), Just(10), Just(30)],
        ) {
            let cfg = rules(&rule("cpu-high", "cpu.total", ">", "90", &format!("clear = 80\nfor = \"{for_s}s\"")));
            let samples: Vec<(u64, f64)> = values.iter().enumerate().map(|(i, v)| (i as u64 * 5, f64::from(*v))).collect();
            let (got, trs) = run_cpu(&cfg, &samples);
            // The reference.
            let (mut up, mut pending): (bool, Option<u64>) = (false, None);
            let mut want = Vec::new();
            let mut flips = 0;
            for &(sec, v) in &samples {
                let was = up;
                if up {
                    up = v > 80.0;
                    pending = None;
                } else if v > 90.0 {
                    let since = *pending.get_or_insert(sec);
                    up = sec - since >= for_s;
                } else {
                    pending = None;
                }
                if up { pending = pending.or(Some(sec)); }
                flips += usize::from(was != up);
                want.push(if up { Status::Degraded } else { Status::Ok });
            }
            prop_assert_eq!(got, want);
            prop_assert_eq!(trs.len(), flips);
            for t in &trs {
                prop_assert!(t.from != t.to);
            }
        }

        /// Any interleaving of live records, history, presences and ticks:
        /// the status always follows from the reasons, and transitions chain
        /// (each starts where the previous one ended).
        #[test]
        fn status_always_follows_the_reasons(
            ops in proptest::collection::vec((0u8..6, 0u16..100, 0u64..40), 1..200),
        ) {
            let mut e = Engine::new(RulesConfig::default());
            let mut f = Feed::new(unit(1));
            let mut now = T0;
            let mut last = Status::Ok;
            for (op, v, dt) in ops {
                now += dt * S;
                let ch = match op {
                    0 => f.send(&mut e, now, cpu(f64::from(v)), now),
                    1 => f.send(&mut e, now.saturating_sub(u64::from(v) * MIN), cpu(f64::from(v)), now),
                    2 => f.send(&mut e, now, probe(v % 2 == 0), now),
                    3 => e.on_presence(&f.unit, &presence(v % 3 != 0, 1, u32::from(v % 4), now), now),
                    4 => f.send(&mut e, now, status_with(|s| s.backlog_records = u64::from(v) * 100), now),
                    _ => e.tick(now),
                };
                for t in transitions(&ch) {
                    prop_assert_eq!(t.from, last);
                    last = t.to;
                }
                if let Some(h) = e.health(&f.unit) {
                    prop_assert_eq!(h.status, last);
                    let has = |p: &str| h.reasons.iter().any(|r| r.rule.starts_with(p));
                    let worst = h.reasons.iter().map(|r| Status::from(r.severity)).max().unwrap_or(Status::Ok);
                    let want = if has("lost.") {
                        Status::Lost
                    } else if has("overdue") {
                        Status::Overdue
                    } else if has("off") {
                        Status::Off
                    } else {
                        worst
                    };
                    prop_assert_eq!(h.status, want);
                }
            }
        }
    }
}

#[test]
fn a_new_boot_after_a_clock_a_year_ahead_is_current_by_its_birth() {
    const YEAR: u64 = 365 * 24 * 3600 * 1000;
    let cfg = rules(&rule("cpu-high", "cpu.total", ">", "90", ""));
    let mut e = Engine::new(cfg);
    let mut old = Feed::new(unit(1));
    old.boot = BootId(1);
    e.on_presence(&old.unit, &presence(true, 1, 1, T0 + YEAR), T0);
    old.send(&mut e, T0 + YEAR, cpu(20.0), T0);
    e.on_presence(&old.unit, &presence(false, 1, 1, T0 + YEAR), T0 + S);
    assert_eq!(status(&e, &old.unit), Status::Lost);
    // The clock is fixed and the agent restarts: a new boot, dated today.
    let mut new = Feed::new(unit(1));
    new.boot = BootId(2);
    e.on_presence(&new.unit, &presence(true, 2, 1, T0 + MIN), T0 + MIN);
    assert_eq!(status(&e, &new.unit), Status::Ok);
    // Its data is the unit's current state, though dated before the old
    // boot's: 95 % raises cpu-high.
    new.send(&mut e, T0 + MIN, cpu(95.0), T0 + MIN);
    assert_eq!(rule_names(&e, &new.unit), vec!["cpu-high"]);
    // The old boot's replayed history (a year ahead) is not.
    old.send(&mut e, T0 + YEAR + S, cpu(10.0), T0 + MIN + S);
    assert_eq!(rule_names(&e, &new.unit), vec!["cpu-high"]);
}

/// Announced departures, `off`, `overdue` and `lost` (issue 12).
mod departures {
    use super::*;
    use muster_proto::PresenceReason as R;

    const H: u64 = 3_600_000;

    fn pres(boot: u64, connection: u32, reason: R) -> Presence {
        Presence {
            online: reason.is_online(),
            boot: BootId(boot),
            connection,
            at_ms: T0,
            reason,
        }
    }

    fn birth(boot: u64, connection: u32) -> Presence {
        pres(boot, connection, R::Connected)
    }

    const STOP: R = R::Stop {
        back_within_ms: None,
    };
    const RESTART: R = R::Stop {
        back_within_ms: Some(2 * MIN),
    };

    /// A unit of `agency` born (boot 1, connection 1) with one sample.
    fn born(e: &mut Engine, agency: &str) -> Feed {
        let mut f = Feed::new(UnitId::new(agency, "E1").unwrap());
        f.boot = BootId(1);
        e.on_presence(&f.unit, &birth(1, 1), T0);
        f.send(e, T0, cpu(10.0), T0);
        f
    }

    fn reason0(e: &Engine, u: &UnitId) -> crate::model::Reason {
        e.health(u).unwrap().reasons[0].clone()
    }

    #[test]
    fn an_announcement_is_off_in_words_and_neutral() {
        let cases = [
            (R::Shutdown, "shut down {t} (OS shutdown)"),
            (STOP, "stopped {t} by an operator"),
            (RESTART, "restarting since {t} (back within 2m)"),
            (R::Sleep, "asleep since {t}"),
        ];
        for (reason, words) in cases {
            let mut e = Engine::new(rules(""));
            let f = born(&mut e, "metro-fire");
            let at = T0 + MIN;
            let ch = e.on_presence(&f.unit, &pres(1, 1, reason), at);
            let t = transitions(&ch);
            assert_eq!(
                (t[0].from, t[0].to),
                (Status::Ok, Status::Off),
                "{reason:?}"
            );
            let r = reason0(&e, &f.unit);
            assert_eq!(r.rule, "off");
            assert_eq!(r.field, format!("presence.{}", reason.as_str()));
            assert_eq!(r.severity, crate::model::Severity::Info);
            assert_eq!(r.message, words.replace("{t}", &words::hhmm(at)));
            assert!(!Status::Off.is_fault());
            // Staleness does not apply to an off unit.
            assert!(e.tick(at + 90 * S).is_empty(), "{reason:?}");
            assert_eq!(status(&e, &f.unit), Status::Off);
        }
    }

    #[test]
    fn off_past_its_max_is_overdue_with_a_per_agency_max() {
        let cfg =
            rules("[rules.off]\nmax = \"16h\"\n[rules.off.agency.\"metro-fire\"]\nmax = \"10h\"\n");
        for (agency, max) in [("metro-fire", 10 * H), ("county-ems", 16 * H)] {
            let mut e = Engine::new(cfg.clone());
            let f = born(&mut e, agency);
            e.on_presence(&f.unit, &pres(1, 1, R::Shutdown), T0);
            assert!(e.tick(T0 + max - 1).is_empty(), "{agency}");
            assert_eq!(status(&e, &f.unit), Status::Off);
            let ch = e.tick(T0 + max);
            assert_eq!(transitions(&ch)[0].to, Status::Overdue, "{agency}");
            let r = reason0(&e, &f.unit);
            assert_eq!(
                (r.rule.as_str(), r.severity),
                ("overdue", crate::model::Severity::Degraded)
            );
            assert_eq!(r.since_ms, T0 + max);
            assert_eq!(r.runbook.as_deref(), Some("/runbooks/overdue"));
            assert!(
                r.message
                    .ends_with(&format!("off for longer than {}", words::span(max)))
            );
            assert!(e.tick(T0 + 3 * max).is_empty(), "overdue, not lost");
            // A birth: ok again.
            let ch = e.on_presence(&f.unit, &birth(2, 1), T0 + 3 * max);
            assert_eq!(transitions(&ch)[0].to, Status::Ok);
        }
    }

    #[test]
    fn off_config_errors_name_the_key() {
        let bad = |body: &str| {
            #[derive(serde::Deserialize)]
            struct File {
                rules: RawRules,
            }
            toml::from_str::<File>(&format!("[rules]\n{body}"))
                .unwrap()
                .rules
                .validate()
                .unwrap_err()
                .to_string()
        };
        assert!(bad("[rules.off]\nmax = \"soon\"").starts_with("rules.off.max: "));
        assert!(bad("[rules.off]\nmax = \"0s\"").starts_with("rules.off.max: "));
        assert!(
            bad("[rules.off.agency.\"metro-fire\"]\nmax = \"x\"")
                .starts_with("rules.off.agency.\"metro-fire\".max: ")
        );
        assert!(
            bad("[rules.off.agency.\"Bad Agency\"]\nmax = \"1h\"").starts_with("rules.off.agency.")
        );
        assert!(bad("[rules.off]\nrunbook = \"ftp://x\"").starts_with("rules.off.runbook: "));
    }

    #[test]
    fn a_restart_back_within_is_ok_and_one_never_back_is_overdue_then_lost() {
        let cfg = rules("[rules.offline]\nmin_stale = \"15s\"\ndefault_interval = \"5s\"\n");
        // Back within: a new boot's birth.
        let mut e = Engine::new(cfg.clone());
        let f = born(&mut e, "metro-fire");
        e.on_presence(&f.unit, &pres(1, 1, RESTART), T0);
        assert!(e.tick(T0 + MIN).is_empty());
        let ch = e.on_presence(&f.unit, &birth(2, 1), T0 + MIN);
        assert_eq!(transitions(&ch)[0].to, Status::Ok);
        // Never back.
        let mut e = Engine::new(cfg);
        let f = born(&mut e, "metro-fire");
        e.on_presence(&f.unit, &pres(1, 1, RESTART), T0);
        assert!(e.tick(T0 + 2 * MIN - 1).is_empty());
        assert_eq!(transitions(&e.tick(T0 + 2 * MIN))[0].to, Status::Overdue);
        assert!(e.tick(T0 + 2 * MIN + 14 * S).is_empty(), "stale allowance");
        let ch = e.tick(T0 + 2 * MIN + 15 * S);
        assert_eq!(transitions(&ch)[0].to, Status::Lost);
        let r = reason0(&e, &f.unit);
        assert_eq!(r.rule, "lost.stale");
        assert!(
            r.message.contains("not back from restarting since"),
            "{}",
            r.message
        );
        // Data again: ok.
        let mut f = f;
        let ch = f.send(&mut e, T0 + 3 * MIN, cpu(10.0), T0 + 3 * MIN);
        assert_eq!(transitions(&ch)[0].to, Status::Ok);
    }

    #[test]
    fn wills_and_announcements_of_one_boot() {
        use Status::{Lost as X, Off as F, Ok as O};
        // (presences in receive order, status after each), what
        let cases: &[(&[(Presence, Status)], &str)] = &[
            (
                &[(pres(1, 1, R::Shutdown), F), (pres(1, 1, R::Lost), F)],
                "a will after the announcement of the same connection stays off",
            ),
            (
                &[(pres(1, 1, R::Lost), X), (pres(1, 1, R::Sleep), F)],
                "the announcement (record) after the will of its connection",
            ),
            (
                &[
                    (birth(1, 2), O),
                    (pres(1, 2, R::Sleep), F),
                    (pres(1, 1, R::Lost), F),
                ],
                "a late will of an older connection never overrides a newer announcement",
            ),
            (
                &[(pres(1, 1, R::Sleep), F), (pres(1, 2, R::Lost), X)],
                "a will of a newer connection is believed",
            ),
            (
                &[(pres(1, 1, R::Unknown { code: 77 }), X)],
                "an unknown reason is lost",
            ),
            (
                &[
                    (pres(1, 1, R::Sleep), F),
                    (pres(1, 2, R::Resumed { slept_ms: 72 * MIN }), O),
                ],
                "resumed",
            ),
            (
                &[(birth(2, 1), O), (pres(1, 1, R::Shutdown), O)],
                "an announcement of a retired boot is history",
            ),
        ];
        for (steps, what) in cases {
            let mut e = Engine::new(rules(""));
            let f = born(&mut e, "metro-fire");
            for (i, (p, want)) in steps.iter().enumerate() {
                e.on_presence(&f.unit, p, T0 + (i as u64 + 1) * S);
                assert_eq!(status(&e, &f.unit), *want, "{what}: step {i}");
            }
        }
        // Resumed keeps slept_ms in the believed presence.
        let mut e = Engine::new(rules(""));
        let f = born(&mut e, "metro-fire");
        e.on_presence(&f.unit, &pres(1, 1, R::Sleep), T0 + S);
        e.on_presence(
            &f.unit,
            &pres(1, 2, R::Resumed { slept_ms: 72 * MIN }),
            T0 + 2 * S,
        );
        assert_eq!(
            e.presence(&f.unit).unwrap().reason,
            R::Resumed { slept_ms: 72 * MIN }
        );
        // An unknown reason says so.
        let mut e = Engine::new(rules(""));
        let f = born(&mut e, "metro-fire");
        e.on_presence(&f.unit, &pres(1, 1, R::Unknown { code: 77 }), T0 + S);
        let r = reason0(&e, &f.unit);
        assert_eq!(r.rule, "lost.will");
        assert!(
            r.message.contains("unknown reason code 77"),
            "{}",
            r.message
        );
    }

    #[test]
    fn announcement_records_before_after_or_without_the_retained_copy() {
        for order in ["record only", "record first", "retained first"] {
            let mut e = Engine::new(rules(""));
            let mut f = born(&mut e, "metro-fire");
            let a = pres(1, 1, R::Shutdown);
            if order == "retained first" {
                e.on_presence(&f.unit, &a, T0 + S);
                assert_eq!(status(&e, &f.unit), Status::Off, "{order}");
            }
            let ch = f.send(&mut e, T0 + S, Payload::Presence(a), T0 + 2 * S);
            assert_eq!(status(&e, &f.unit), Status::Off, "{order}");
            if order == "retained first" {
                assert!(transitions(&ch).is_empty(), "{order}: the same departure");
            }
            if order == "record first" {
                assert!(e.on_presence(&f.unit, &a, T0 + 3 * S).is_empty(), "{order}");
            }
            assert_eq!(status(&e, &f.unit), Status::Off, "{order}");
            // Newer data wins: a record after the announcement is online again.
            let ch = f.send(&mut e, T0 + 4 * S, cpu(10.0), T0 + 4 * S);
            assert_eq!(transitions(&ch)[0].to, Status::Ok, "{order}");
        }
        // Records older than the announcement (its backlog, arriving after
        // the retained copy) do not turn it back on.
        let mut e = Engine::new(rules(""));
        let mut f = born(&mut e, "metro-fire");
        e.on_presence(&f.unit, &pres(1, 1, R::Shutdown), T0 + S);
        let backlog = f.rec(T0, cpu(10.0));
        let ann = f.rec(T0 + S, Payload::Presence(pres(1, 1, R::Shutdown)));
        e.on_record(&f.unit, &backlog, T0 + 2 * S);
        e.on_record(&f.unit, &ann, T0 + 3 * S);
        assert_eq!(status(&e, &f.unit), Status::Off);
        // A replayed announcement of a retired boot is history.
        let mut e = Engine::new(rules(""));
        let mut old = born(&mut e, "metro-fire");
        let old_ann = old.rec(T0, Payload::Presence(pres(1, 1, R::Shutdown)));
        e.on_presence(&old.unit, &birth(2, 1), T0 + S);
        let mut new = Feed::new(old.unit.clone());
        new.boot = BootId(2);
        new.send(&mut e, T0 + S, cpu(10.0), T0 + S);
        e.on_record(&old.unit, &old_ann, T0 + 2 * S);
        assert_eq!(status(&e, &old.unit), Status::Ok);
    }

    #[test]
    fn lost_carries_the_last_network_context() {
        let mut e = Engine::new(rules(""));
        let mut f = born(&mut e, "metro-fire");
        let mut net = fixtures::net_context();
        net.route = Some(muster_proto::DefaultRoute {
            interface: "wwan0".into(),
            kind: muster_proto::LinkKind::Cellular,
        });
        net.cellular.get_or_insert_with(Default::default).rsrp_dbm = Some(-118);
        net.vpns = vec![muster_proto::Vpn {
            name: "tun0".into(),
            up: true,
        }];
        f.send(
            &mut e,
            T0 + S,
            host_with(|s| s.network = Some(Box::new(net))),
            T0 + S,
        );
        let at = T0 + 2 * S;
        e.on_presence(&f.unit, &pres(1, 1, R::Lost), at);
        let r = reason0(&e, &f.unit);
        assert_eq!(r.rule, "lost.will");
        assert_eq!(r.observed, Some(-118.0));
        assert_eq!(
            r.message,
            format!(
                "lost contact {} (MQTT will) on cellular (wwan0), signal -118 dBm (very weak), VPN up",
                words::hhmm(at)
            )
        );
    }

    #[test]
    fn an_off_unit_leaves_its_incidents() {
        let cfg = rules(&rule(
            "cad-api-failing",
            r#"probe["cad-api"].failure_ratio"#,
            ">",
            "0.5",
            "window = \"5m\"",
        ));
        let mut e = Engine::new(cfg);
        let mut feeds: Vec<Feed> = (0..4).map(|i| Feed::new(unit(i))).collect();
        let t = T0;
        fleet(&mut e, &mut feeds, 3, t);
        let ch = e.tick(t + 500);
        let inc = incidents(&ch);
        assert_eq!((inc[0].affected.len(), inc[0].of_units), (3, 4));
        // Two failing units shut down: 1 failing of 2 counted.
        for f in &mut feeds[..2] {
            let ann = pres(fixtures::BOOT.0, 1, R::Shutdown);
            f.send(&mut e, t + S, Payload::Presence(ann), t + S);
            assert_eq!(status(&e, &f.unit), Status::Off);
        }
        let ch = e.tick(t + S + 500);
        let inc = incidents(&ch);
        assert_eq!(inc.len(), 1, "{ch:#?}");
        // Off units are neither in the denominator nor failing.
        assert_eq!(
            (inc[0].affected.len(), inc[0].of_units),
            (1, 2),
            "{:#?}",
            inc[0]
        );
        for f in &feeds[..2] {
            let h = e.health(&f.unit).unwrap();
            assert_eq!(h.status, Status::Off);
            assert!(h.reasons.iter().all(|r| r.incident.is_none()));
        }
    }

    #[test]
    fn restore_accepts_the_names_before_schema_v2() {
        for (rule, want) in [
            ("offline.will", Status::Lost),
            ("lost.will", Status::Lost),
            ("offline.stale", Status::Lost),
            ("lost.stale", Status::Lost),
            ("off", Status::Off),
        ] {
            let mut e = Engine::new(rules(""));
            let u = unit(1);
            let health = crate::model::UnitHealth {
                status: want,
                since_ms: T0,
                reasons: vec![crate::model::Reason {
                    rule: rule.into(),
                    severity: crate::model::Severity::Critical,
                    field: "presence".into(),
                    observed: None,
                    threshold: None,
                    since_ms: T0,
                    runbook: None,
                    message: String::new(),
                    incident: None,
                }],
            };
            e.restore(&u, health);
            assert_eq!(status(&e, &u), want, "{rule}");
        }
        // A restored off unit names its reason once its presence is restored.
        let mut e = Engine::new(rules(""));
        let u = unit(1);
        let mut health = crate::model::UnitHealth::ok(T0);
        health.status = Status::Off;
        health.reasons.push(crate::model::Reason {
            rule: "off".into(),
            severity: crate::model::Severity::Info,
            field: "presence".into(),
            observed: None,
            threshold: None,
            since_ms: T0,
            runbook: None,
            message: String::new(),
            incident: None,
        });
        e.restore(&u, health);
        e.restore_presence(&u, pres(1, 1, R::Sleep), 5, T0);
        assert_eq!(
            reason0(&e, &u).message,
            format!("asleep since {}", words::hhmm(T0))
        );
    }
}

/// The network rule fields and the shipped `vpn-down` / `signal-weak`.
mod net_fields {
    use super::*;
    use muster_proto::{LinkKind, SamplerFailure, SamplerFamily};

    fn net(f: impl FnOnce(&mut muster_proto::NetContext)) -> Payload {
        host_with(|s| f(s.network.as_mut().unwrap()))
    }

    #[test]
    fn values_and_their_absence() {
        use super::super::field::Field;
        let get = |field: &str, s: &HostSample| {
            let mut got = Vec::new();
            Field::parse(field)
                .unwrap()
                .host_values(s, |_, v| got.push(v));
            got
        };
        let s = fixtures::host_sample();
        assert_eq!(get("net.kind", &s), [3.0], "cellular's code");
        assert_eq!(get("net.signal_dbm", &s), [-109.0], "RSRP");
        assert_eq!(get("net.vpn_up", &s), [1.0]);
        assert_eq!(get("net.route_changes", &s), [1.0]);
        let mut wifi = s.clone();
        wifi.network.as_mut().unwrap().route.as_mut().unwrap().kind = LinkKind::Wifi;
        assert_eq!(get("net.signal_dbm", &wifi), [-71.0]);
        // No VPN configured: no value, the rule never fires.
        let mut novpn = s.clone();
        novpn.network.as_mut().unwrap().vpns.clear();
        assert!(get("net.vpn_up", &novpn).is_empty());
        // A family that failed, or a v1 sample without a network: no value.
        let mut failed = s.clone();
        failed.failures.push(SamplerFailure {
            collector: SamplerFamily::Vpn,
            reason: "no such interface".into(),
        });
        assert!(get("net.vpn_up", &failed).is_empty());
        let mut v1 = s.clone();
        v1.network = None;
        assert!(get("net.kind", &v1).is_empty());
        // The interface metrics still need their selector.
        assert!(Field::parse("net.up").is_err());
        assert!(
            Field::parse("net.bogus")
                .unwrap_err()
                .contains("signal_dbm")
        );
    }

    #[test]
    fn shipped_signal_weak_has_for_and_hysteresis() {
        let mut e = Engine::new(RulesConfig::default());
        let mut f = Feed::new(unit(1));
        let weak = |dbm: i16| net(move |n| n.cellular.as_mut().unwrap().rsrp_dbm = Some(dbm));
        // (seconds, dBm, status)
        let steps = [
            (0, -109, Status::Ok),
            (10, -112, Status::Ok),
            (60, -118, Status::Ok),
            (130, -115, Status::Degraded),
            (140, -107, Status::Degraded),
            (150, -104, Status::Ok),
        ];
        for (t, dbm, want) in steps {
            let at = T0 + t * S;
            f.send(&mut e, at, weak(dbm), at);
            assert_eq!(status(&e, &f.unit), want, "{t}s {dbm} dBm");
        }
        f.send(&mut e, T0 + 200 * S, weak(-120), T0 + 200 * S);
        f.send(&mut e, T0 + 330 * S, weak(-120), T0 + 330 * S);
        let r = e.health(&f.unit).unwrap().reasons[0].clone();
        assert_eq!(
            (r.rule.as_str(), r.field.as_str(), r.observed),
            ("signal-weak", "net.signal_dbm", Some(-120.0))
        );
        assert_eq!(r.runbook.as_deref(), Some("/runbooks/signal-weak"));
    }

    #[test]
    fn shipped_vpn_down_only_for_units_with_a_vpn() {
        for (vpns, want) in [(true, Status::Critical), (false, Status::Ok)] {
            let mut e = Engine::new(RulesConfig::default());
            let mut f = Feed::new(unit(1));
            for t in [0, 30, 61] {
                let at = T0 + t * S;
                f.send(
                    &mut e,
                    at,
                    net(|n| {
                        if vpns {
                            n.vpns[0].up = false;
                        } else {
                            n.vpns.clear();
                        }
                    }),
                    at,
                );
            }
            assert_eq!(status(&e, &f.unit), want, "vpns: {vpns}");
            if vpns {
                let r = &e.health(&f.unit).unwrap().reasons[0];
                assert_eq!(r.rule, "vpn-down");
                assert_eq!(r.message, "net.vpn_up == false for 1m");
            }
        }
    }

    #[test]
    fn net_kind_compares_with_a_kind_name() {
        let cfg = rules(&rule("on-cellular", "net.kind", "==", "\"cellular\"", ""));
        let mut e = Engine::new(cfg);
        let mut f = Feed::new(unit(1));
        f.send(&mut e, T0, Payload::Host(fixtures::host_sample()), T0);
        let r = &e.health(&f.unit).unwrap().reasons[0];
        assert_eq!(r.message, "net.kind == \"cellular\"");
        f.send(
            &mut e,
            T0 + S,
            net(|n| n.route.as_mut().unwrap().kind = LinkKind::Ethernet),
            T0 + S,
        );
        assert_eq!(status(&e, &f.unit), Status::Ok);
        // Config errors name the key.
        let bad = |op: &str, v: &str| {
            #[derive(serde::Deserialize)]
            struct File {
                rules: RawRules,
            }
            toml::from_str::<File>(&format!(
                "[rules]\ndefaults = false\n{}",
                rule("k", "net.kind", op, v, "")
            ))
            .unwrap()
            .rules
            .validate()
            .unwrap_err()
            .to_string()
        };
        assert!(
            bad("==", "\"lte\"")
                .starts_with("rules.threshold[0].threshold: \"lte\" is not a link kind")
        );
        assert!(
            bad("==", "3").starts_with("rules.threshold[0].threshold: net.kind is a link kind")
        );
        assert!(bad(">", "\"wifi\"").starts_with("rules.threshold[0].op: "));
    }
}

/// Cluster mode: two owners' engines (each holding half the fleet) store
/// shares, the coordinator's board decides, and the owners tag their
/// units: the same incident, the same flags, as one engine holding all.
#[test]
fn a_cluster_decides_the_incident_a_single_node_does() {
    use super::incident::{Board, IncidentShare};
    let cfg = rules("[rules.incidents]\nwindow = \"2m\"\n");
    let mut single = Engine::new(cfg.clone());
    let mut owners = [
        Engine::clustered(cfg.clone()),
        Engine::clustered(cfg.clone()),
    ];
    let mut board = Board::new(cfg.incidents.clone().unwrap());
    let mut feeds: Vec<Feed> = (0..40).map(|i| Feed::new(unit(i))).collect();
    let mut t = T0;
    let mut round = |failing: usize, t: u64, owners: &mut [Engine; 2], single: &mut Engine| {
        let mut single_inc = Vec::new();
        for (i, f) in feeds.iter_mut().enumerate() {
            let rec = f.rec(t, probe(i >= failing));
            single.on_record(&f.unit.clone(), &rec, t);
            owners[i % 2].on_record(&f.unit.clone(), &rec, t);
        }
        single_inc.extend(incidents(&single.tick(t + 500)).into_iter().cloned());
        for (p, o) in owners.iter_mut().enumerate() {
            assert!(
                incidents(&o.tick(t + 500)).is_empty(),
                "owners decide nothing"
            );
            for g in o.incident_shares(t + 500) {
                board.share(IncidentShare {
                    partition: p as u32,
                    of_units: g.members.len(),
                    failing: g
                        .members
                        .iter()
                        .filter(|(_, f)| *f)
                        .map(|(u, _)| u.clone())
                        .collect(),
                    agency: g.agency,
                    probe: g.probe,
                    target: g.target,
                    as_of_ms: t + 500,
                });
            }
        }
        let mut decided = Vec::new();
        board.tick(t + 500, &mut decided);
        let open: Vec<crate::model::Incident> = board.open().cloned().collect();
        for o in owners.iter_mut() {
            o.tag_incidents(&open, t + 500);
        }
        (single_inc, decided)
    };
    let (s, c) = round(0, t, &mut owners, &mut single);
    assert!(s.is_empty() && c.is_empty());
    t += 30 * S;
    let (s, c) = round(37, t, &mut owners, &mut single);
    assert_eq!(s.len(), 1);
    assert_eq!(c, s, "the board opens what a single node opens");
    let reasons = |e: &Engine, u: &UnitId| e.health(u).unwrap().reasons.clone();
    for i in 0..40 {
        let u = unit(i);
        assert_eq!(
            reasons(&owners[i % 2], &u),
            reasons(&single, &u),
            "unit {i}'s flags"
        );
    }
    assert!(
        reasons(&owners[0], &unit(0))
            .iter()
            .any(|r| r.rule == "incident")
    );
    // Unchanged: nothing decided again; then healed: ended alike.
    t += 30 * S;
    let (s, c) = round(37, t, &mut owners, &mut single);
    assert!(s.is_empty() && c.is_empty(), "{c:#?}");
    t += 30 * S;
    let (s, c) = round(0, t, &mut owners, &mut single);
    assert_eq!(c, s);
    assert_eq!(c[0].ended_ms, Some(t + 500));
    for i in 0..40 {
        assert!(
            reasons(&owners[i % 2], &unit(i))
                .iter()
                .all(|r| r.rule != "incident")
        );
    }
}

/// The newest facts record is the one a unit carries: a facts record
/// replayed from before it never replaces it, a heartbeat sent after it
/// does not make it history, a new boot's facts replace the old boot's,
/// and a restored collector remembers which one it was.
#[test]
fn the_newest_facts_record_is_the_units_own_stream() {
    let facts = || Payload::Facts(muster_proto::UnitFacts::default());
    let mut e = Engine::new(rules(""));
    let mut f = Feed::new(unit(1));
    assert_eq!(e.newest_facts(&f.unit), None);
    // seq 1: facts; seq 2: a heartbeat; seq 3: facts again.
    f.send(&mut e, T0, facts(), T0);
    assert_eq!(e.newest_facts(&f.unit), Some((f.boot, 1)));
    f.send(&mut e, T0 + S, Payload::Status(fixtures::status()), T0 + S);
    assert_eq!(e.newest_facts(&f.unit), Some((f.boot, 1)));
    f.send(&mut e, T0 + 2 * S, facts(), T0 + 2 * S);
    assert_eq!(e.newest_facts(&f.unit), Some((f.boot, 3)));
    // Seq 1 again, replayed after a reconnect: history.
    let old = Record {
        boot: f.boot,
        seq: 1,
        at_ms: T0,
        payload: facts(),
    };
    e.on_record(&f.unit, &old, T0 + 3 * S);
    assert_eq!(e.newest_facts(&f.unit), Some((f.boot, 3)));
    // A facts record sent before a heartbeat it arrives after (out of
    // order within the boot) is still the newest facts: seq 5 before 4.
    f.seq += 1;
    f.send(
        &mut e,
        T0 + 4 * S,
        Payload::Status(fixtures::status()),
        T0 + 4 * S,
    );
    let late = Record {
        boot: f.boot,
        seq: 4,
        at_ms: T0 + 3 * S,
        payload: facts(),
    };
    e.on_record(&f.unit, &late, T0 + 5 * S);
    assert_eq!(e.newest_facts(&f.unit), Some((f.boot, 4)));
    // A new boot (its birth says it is live) replaces the old boot's.
    let next = BootId(f.boot.0 + 1);
    e.on_presence(&f.unit, &presence(true, next.0, 1, T0 + 6 * S), T0 + 6 * S);
    let fresh = Record {
        boot: next,
        seq: 1,
        at_ms: T0 + 6 * S,
        payload: facts(),
    };
    e.on_record(&f.unit, &fresh, T0 + 6 * S);
    assert_eq!(e.newest_facts(&f.unit), Some((next, 1)));

    // Restored: the stored newest stays newest against a replay.
    let mut e2 = Engine::new(rules(""));
    e2.restore(&f.unit, crate::model::UnitHealth::ok(T0));
    e2.restore_facts(&f.unit, f.boot, 3, T0 + 2 * S);
    e2.on_record(&f.unit, &old, T0 + 7 * S);
    assert_eq!(e2.newest_facts(&f.unit), Some((f.boot, 3)));
}

#[test]
fn automation_notes_join_the_reason_and_escalation_raises_severity_until_clear() {
    let cfg = rules(&rule(
        "cad-client-down",
        r#"process["cadclient"].running"#,
        "==",
        "false",
        "severity = \"degraded\"\nauto_action = \"restart-cad-client\"",
    ));
    let auto = cfg.threshold[0].auto.clone().unwrap();
    assert_eq!(auto.action, "restart-cad-client");
    assert_eq!(auto.max.to_string(), "1 per 1h");
    assert_eq!(auto.window_ms, 10 * MIN);
    let down = || host_with(|s| s.processes[0].running = false);
    let up = || Payload::Host(fixtures::host_sample());
    let mut e = Engine::new(cfg);
    let mut f = Feed::new(unit(1));
    // Not raised: nothing to say.
    assert!(
        e.annotate(&f.unit, "cad-client-down", Some("x"), true, T0)
            .is_empty()
    );
    f.send(&mut e, T0, down(), T0);
    assert_eq!(status(&e, &f.unit), Status::Degraded);
    // A note alone is a transition in place, carrying it.
    let ch = e.annotate(
        &f.unit,
        "cad-client-down",
        Some("auto: restart-cad-client at 14:02Z, exit 0"),
        false,
        T0 + S,
    );
    let t = transitions(&ch);
    assert_eq!(t.len(), 1, "{ch:?}");
    assert_eq!((t[0].from, t[0].to), (Status::Degraded, Status::Degraded));
    let r = &e.health(&f.unit).unwrap().reasons[0];
    assert_eq!(
        r.message,
        r#"process["cadclient"].running == false; auto: restart-cad-client at 14:02Z, exit 0"#
    );
    assert_eq!(r.severity, Severity::Degraded);
    // Escalated: one step up, a transition (webhooks see it).
    let ch = e.annotate(&f.unit, "cad-client-down", None, true, T0 + 2 * S);
    let t = transitions(&ch);
    assert_eq!(t.len(), 1, "{ch:?}");
    assert_eq!((t[0].from, t[0].to), (Status::Degraded, Status::Critical));
    assert_eq!(t[0].reasons[0].severity, Severity::Critical);
    // Still down: stays escalated; an unknown rule changes nothing.
    f.send(&mut e, T0 + 3 * S, down(), T0 + 3 * S);
    assert_eq!(status(&e, &f.unit), Status::Critical);
    assert!(e.annotate(&f.unit, "nope", Some("x"), true, T0).is_empty());
    // Cleared, then raised again: a fresh flag, no note, rule severity.
    f.send(&mut e, T0 + 4 * S, up(), T0 + 4 * S);
    assert_eq!(status(&e, &f.unit), Status::Ok);
    f.send(&mut e, T0 + 5 * S, down(), T0 + 5 * S);
    let r = &e.health(&f.unit).unwrap().reasons[0];
    assert_eq!(r.severity, Severity::Degraded);
    assert_eq!(r.message, r#"process["cadclient"].running == false"#);
    assert_eq!(Severity::Critical.escalated(), Severity::Critical);
    assert_eq!(Severity::Info.escalated(), Severity::Degraded);
}

#[test]
fn automation_keys_are_validated_naming_the_key() {
    let bad = |extra: &str| {
        #[derive(serde::Deserialize)]
        struct File {
            rules: RawRules,
        }
        let text = format!(
            "[rules]\ndefaults = false\n{}",
            rule("r", "cpu.total", ">", "90", extra)
        );
        toml::from_str::<File>(&text)
            .unwrap()
            .rules
            .validate()
            .unwrap_err()
            .to_string()
    };
    let cases = [
        (
            "auto_max = \"1 per 1h\"",
            "rules.threshold[0].auto_max: needs auto_action",
        ),
        (
            "auto_window = \"5m\"",
            "rules.threshold[0].auto_window: needs auto_action",
        ),
        ("auto_action = \"rm -rf\"", "rules.threshold[0].auto_action"),
        (
            "auto_action = \"a\"\nauto_max = \"often\"",
            "rules.threshold[0].auto_max",
        ),
        (
            "auto_action = \"a\"\nauto_window = \"0s\"",
            "rules.threshold[0].auto_window: must be 1s to 24h",
        ),
        (
            "auto_action = \"a\"\nauto_window = \"2d\"",
            "rules.threshold[0].auto_window: must be 1s to 24h",
        ),
    ];
    for (extra, want) in cases {
        let e = bad(extra);
        assert!(e.starts_with(want), "{extra}: {e}");
    }
    let cfg = rules(&rule(
        "r",
        "cpu.total",
        ">",
        "90",
        "auto_action = \"flush-dns\"\nauto_max = \"2 per 30m\"\nauto_window = \"90s\"",
    ));
    let a = cfg.threshold[0].auto.clone().unwrap();
    assert_eq!(
        (a.max.max, a.max.per_ms(), a.window_ms),
        (2, 30 * MIN, 90 * S)
    );
}
