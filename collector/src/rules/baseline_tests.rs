//! Table tests of baselines: the pure streams, and the engine's
//! `above_baseline` / `below_baseline` rules on event time. Time is plain
//! numbers: nothing reads a clock.

use muster_proto::{
    BootId, ErrorClass, NetIf, Outcome, Payload, ProbeKind, Record, UnitId, fixtures,
};

use super::*;
use crate::model::{Change, Status};
use crate::rules::{Engine, RawRules, RulesConfig};

/// Midnight UTC (2023-11-14).
const DAY0: u64 = 1_699_920_000_000;
const S: u64 = 1_000;
const MIN: u64 = 60_000;
const DAY: u64 = 24 * HOUR_MS;

fn rules(body: &str) -> RulesConfig {
    #[derive(serde::Deserialize)]
    struct File {
        rules: RawRules,
    }
    let text = format!("[rules]\ndefaults = false\n[rules.clock_skew]\nenabled = false\n{body}");
    toml::from_str::<File>(&text)
        .unwrap()
        .rules
        .validate()
        .unwrap()
}

/// `latency-spike` as shipped unless `extra` changes it.
fn spike(name: &str, field: &str, extra: &str) -> String {
    format!(
        "[[rules.threshold]]\nname = \"{name}\"\nfield = '{field}'\nop = \"above_baseline\"\n{extra}\n"
    )
}

const SHIPPED_SPIKE: &str = "factor = 5\nmin_delta_ms = 100\nfor = \"2m\"\n";

/// One unit's records, with its own seq counter.
struct Unit {
    id: UnitId,
    seq: u64,
}

impl Unit {
    fn new(name: &str) -> Unit {
        Unit {
            id: UnitId::new("metro-fire", name).unwrap(),
            seq: 10_000,
        }
    }

    /// A live record at event time `at`, received 200 ms later.
    fn live(&mut self, e: &mut Engine, at: u64, p: Payload) -> Vec<Change> {
        self.seq += 1;
        let r = Record {
            boot: fixtures::BOOT,
            seq: self.seq,
            at_ms: at,
            payload: p,
        };
        e.on_record(&self.id, &r, at + 200)
    }

    /// A replayed record (an older seq of the same boot), received at `now`.
    fn history(&self, e: &mut Engine, seq: u64, at: u64, p: Payload, now: u64) -> Vec<Change> {
        assert!(seq < self.seq, "history has older seqs");
        let r = Record {
            boot: fixtures::BOOT,
            seq,
            at_ms: at,
            payload: p,
        };
        e.on_record(&self.id, &r, now)
    }
}

fn probe_ms(name: &str, ms: f64) -> Payload {
    let mut p = fixtures::http_probe();
    p.name = name.into();
    p.phases.total_us = (ms * 1000.0) as u32;
    Payload::Probe(p)
}

fn probe_failed(name: &str) -> Payload {
    let mut p = fixtures::http_probe();
    p.name = name.into();
    p.outcome = Outcome::Fail(ErrorClass::Timeout);
    Payload::Probe(p)
}

/// A host sample whose interfaces move `(name, rx, tx)` bytes/s (loopback
/// always busy: it never counts).
fn traffic(ifs: &[(&str, u64, u64)]) -> Payload {
    let mut h = fixtures::host_sample();
    h.nets = ifs
        .iter()
        .map(|(n, rx, tx)| NetIf {
            name: (*n).into(),
            up: true,
            rx_bps: *rx,
            tx_bps: *tx,
            ..NetIf::default()
        })
        .chain([NetIf {
            name: "lo".into(),
            up: true,
            rx_bps: 9_000_000,
            tx_bps: 9_000_000,
            ..NetIf::default()
        }])
        .collect();
    Payload::Host(h)
}

/// The (rule, field) of the unit's reasons.
fn flags(e: &Engine, u: &Unit) -> Vec<(String, String)> {
    e.health(&u.id)
        .map(|h| {
            h.reasons
                .iter()
                .map(|r| (r.rule.clone(), r.field.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn flagged(e: &Engine, u: &Unit, rule: &str) -> bool {
    flags(e, u).iter().any(|(r, _)| r == rule)
}

fn transitions(ch: &[Change]) -> usize {
    ch.iter()
        .filter(|c| matches!(c, Change::Transition(_)))
        .count()
}

/// A small deterministic wobble: 0, 1, ... 6.
fn wobble(i: u64) -> f64 {
    (i % 7) as f64
}

// ---- the pure parts ----

#[test]
fn log_codes_keep_a_value_to_a_tenth_of_a_percent() {
    for v in [1e-6, 0.05, 0.5, 2.0, 84.0, 912.0, 48_213.0, 1.2e9] {
        let back = decode(encode(v));
        assert!((back - v).abs() / v < 0.001, "{v} -> {back}");
    }
    assert_eq!(encode(0.0), 0);
    assert_eq!(encode(-3.0), 0);
    assert_eq!(encode(f64::NAN), 0);
    assert_eq!(decode(0), 0.0);
    assert_eq!(encode(1e12), u16::MAX, "clamped at 2^32");
}

#[test]
fn an_hour_is_summarised_from_at_most_32_of_its_samples() {
    // 720 samples (every 5 s): 100 ms with a spread of +-10.
    let mut a = Acc::new(7);
    for i in 0..720u32 {
        a.push(encode(100.0 + f64::from(i % 21) - 10.0));
    }
    assert!(usize::from(a.kept) <= KEEP && a.kept >= 16, "{}", a.kept);
    let [m, d, n] = a.summary().unwrap();
    assert_eq!(n, 720);
    assert!((decode(m) - 100.0).abs() <= 2.0, "median {}", decode(m));
    assert!((decode(d) - 5.0).abs() <= 2.0, "MAD {}", decode(d));
    // Exact for a few samples: median of 1, 2, 3, 10 is 2.5, MAD 1.
    let mut a = Acc::new(7);
    for v in [1.0, 2.0, 3.0, 10.0] {
        a.push(encode(v));
    }
    let [m, d, n] = a.summary().unwrap();
    assert!((decode(m) - 2.5).abs() < 0.01 && (decode(d) - 1.0).abs() < 0.01);
    assert_eq!(n, 4);
    assert_eq!(Acc::new(1).summary(), None);
}

#[test]
fn hours_combine_robustly() {
    // One hour: its own median and MAD.
    let one = [encode(80.0), encode(6.0), 120];
    let (m, d) = combine(&[one]);
    assert!((m - 80.0).abs() < 0.1 && (d - 6.0).abs() < 0.1, "{m} {d}");
    // 23 usual hours and one at 10x: the median does not move.
    let mut hours = vec![one; 23];
    hours.push([encode(800.0), encode(6.0), 120]);
    let (m, _) = combine(&hours);
    assert!((m - 80.0).abs() < 0.1, "{m}");
}

#[test]
fn the_baseline_comes_from_completed_hours_before_the_sample() {
    let cfg = BaselineConfig {
        hour_of_day: false,
        min_samples: 10,
        ..BaselineConfig::default()
    };
    let mut s = Stream::new(&cfg, 0, None, 100);
    for i in 0..20 {
        assert_eq!(s.push(100, 50.0 + wobble(i)), Taken::Kept);
    }
    assert_eq!(
        s.baseline(&cfg, 100),
        None,
        "the live hour is not its own baseline"
    );
    // A sample of hour 101 completes hour 100.
    s.push(101, 500.0);
    let b = s.baseline(&cfg, 101).unwrap();
    assert!((b.median - 53.0).abs() < 1.0, "{b:?}");
    assert_eq!(b.n, 20);
    assert_eq!(b.basis, Basis::Window { hours: 24 });
    // Replayed samples of an earlier hour fill it; older than the ring: dropped.
    for i in 0..20 {
        s.push(99, 60.0 + wobble(i));
    }
    assert_eq!(s.push(101 - 24 - 1, 1.0), Taken::TooOld);
    s.push(102, 50.0);
    let b = s.baseline(&cfg, 102).unwrap();
    assert_eq!(b.n, 41, "hours 99, 100, 101: {b:?}");
    // A gap longer than the ring forgets everything.
    s.push(102 + 25, 50.0);
    assert_eq!(s.baseline(&cfg, 127), None);
}

#[test]
fn verdicts_and_their_levels() {
    let b = Baseline {
        median: 80.0,
        mad: 6.0,
        n: 100,
        basis: Basis::Window { hours: 24 },
    };
    let up = BaselineOp {
        direction: Direction::Above,
        factor: 5.0,
        clear: 5f64.sqrt(),
        min_delta: 100.0,
    };
    assert!(up.raises(400.0, &b));
    assert!(!up.raises(399.0, &b));
    assert_eq!(up.level(&b), 400.0);
    assert!(up.stays(180.0, &b) && !up.stays(178.0, &b));
    // The noise gate: a noisy stream needs more than 3 MAD.
    let noisy = Baseline { mad: 200.0, ..b };
    assert!(!up.raises(600.0, &noisy) && up.raises(700.0, &noisy));
    assert_eq!(up.level(&noisy), 680.0);
    let down = BaselineOp {
        direction: Direction::Below,
        factor: 10.0,
        clear: 10f64.sqrt(),
        min_delta: 2000.0,
    };
    let t = Baseline {
        median: 48_000.0,
        mad: 9_000.0,
        ..b
    };
    assert!(down.raises(4_800.0, &t) && !down.raises(4_801.0, &t));
    assert!(down.stays(15_000.0, &t) && !down.stays(16_000.0, &t));
    let quiet = Baseline {
        median: 1_500.0,
        ..t
    };
    assert!(!down.raises(0.0, &quiet), "less than min_delta below");
    assert_eq!(
        describe(
            "probe[\"cad-api\"].total_ms",
            912.4,
            &Baseline {
                basis: Basis::HourOfDay { hour: 14, days: 3 },
                ..b
            },
            ValueUnit::Ms
        ),
        "probe[\"cad-api\"].total_ms 912 ms, usual 80 ms (median, MAD 6 ms, 14:00-15:00 UTC profile of 3 days)"
    );
    assert_eq!(
        describe("net.bps", 310.0, &t, ValueUnit::BytesPerSec),
        "net.bps 310 B/s, usual 48 kB/s (median, MAD 9 kB/s, last 24h)"
    );
}

// ---- the engine ----

#[test]
fn a_10x_jump_flags_after_for_and_not_before() {
    let mut e = Engine::new(rules(&spike(
        "latency-spike",
        "probe[*].total_ms",
        SHIPPED_SPIKE,
    )));
    let mut u = Unit::new("E1");
    // Two days at 80-86 ms, one result a minute, for the transaction
    // `cad-login` and its step `cad-login.fetch`.
    let mut at = DAY0;
    for i in 0..2 * 1440 {
        for name in ["cad-login", "cad-login.fetch"] {
            let ch = u.live(&mut e, at, probe_ms(name, 80.0 + wobble(i)));
            assert_eq!(transitions(&ch), 0, "learning, at {i}");
        }
        at += MIN;
    }
    // The step turns 10x slower (half an hour into the hour): every 30 s.
    at += 30 * MIN;
    let jump = at;
    while at < jump + 2 * MIN {
        u.live(&mut e, at, probe_ms("cad-login.fetch", 830.0));
        assert_eq!(status(&e, &u), Status::Ok, "before `for`: {}", at - jump);
        at += 30 * S;
    }
    let ch = u.live(&mut e, at, probe_ms("cad-login.fetch", 830.0));
    assert_eq!(transitions(&ch), 1);
    assert_eq!(status(&e, &u), Status::Degraded);
    let h = e.health(&u.id).unwrap();
    let r = &h.reasons[0];
    assert_eq!(r.rule, "latency-spike");
    assert_eq!(r.field, "probe[\"cad-login.fetch\"].total_ms");
    assert_eq!(r.since_ms, jump);
    assert_eq!(r.observed, Some(830.0));
    let level = r.threshold.unwrap();
    assert!((level - 415.0).abs() < 10.0, "5 x the usual: {level}");
    assert!(
        r.message
            .starts_with("probe[\"cad-login.fetch\"].total_ms 830 ms, usual 83 ms (median, MAD "),
        "{}",
        r.message
    );
    assert!(r.message.ends_with(", last 24h) for 2m"), "{}", r.message);
    assert_eq!(r.runbook.as_deref(), Some("/runbooks/latency-spike"));
}

fn status(e: &Engine, u: &Unit) -> Status {
    e.health(&u.id).map_or(Status::Ok, |h| h.status)
}

#[test]
fn a_slow_drift_never_flags() {
    // +1 % an hour for ten days (x 10.9 in all), one sample every 5
    // minutes; rules stricter than shipped: factor 2 either way, no
    // min_delta, no `for`.
    let body = format!(
        "{}{}",
        spike("up", "probe[*].total_ms", "factor = 2\nmin_delta_ms = 0\n"),
        "[[rules.threshold]]\nname = \"down\"\nfield = 'probe[*].total_ms'\nop = \"below_baseline\"\nfactor = 2\nmin_delta_ms = 0\n"
    );
    let mut e = Engine::new(rules(&body));
    let mut u = Unit::new("D1");
    let mut at = DAY0;
    let mut v = 50.0;
    let mut n = 0;
    while at < DAY0 + 10 * DAY {
        let ch = u.live(
            &mut e,
            at,
            probe_ms("cad-api", v * (1.0 + wobble(n) / 100.0)),
        );
        assert_eq!(
            transitions(&ch),
            0,
            "drift flagged at {} h: {v}",
            (at - DAY0) / HOUR_MS
        );
        at += 5 * MIN;
        n += 1;
        v *= 1.01f64.powf(1.0 / 12.0);
    }
    assert!(v > 540.0, "{v}");
    // The baseline followed: a real jump still flags.
    u.live(&mut e, at, probe_ms("cad-api", v * 3.0));
    assert!(flagged(&e, &u, "up"), "{:?}", flags(&e, &u));
    assert!(e.baseline_stats().samples >= 2880);
}

/// Feeds `days` days of a 40 ms probe that takes 400 ms from 08:00 to
/// 09:00 UTC (one result every 2 minutes), from minute `from_min` of day
/// `first`; returns whether `latency-spike` was raised during each day's
/// busy hour.
fn busy_mornings(e: &mut Engine, u: &mut Unit, first: u64, from_min: u64, days: u64) -> Vec<bool> {
    let mut out = Vec::new();
    for d in first..first + days {
        let mut raised = false;
        let start = if d == first { from_min } else { 0 };
        for m in (start..1440).step_by(2) {
            let at = DAY0 + d * DAY + m * MIN;
            let busy = (8 * 60..9 * 60).contains(&m);
            let v = if busy { 400.0 } else { 40.0 } + wobble(m);
            u.live(e, at, probe_ms("cad-api", v));
            raised |= busy && flagged(e, u, "latency-spike");
        }
        out.push(raised);
    }
    out
}

#[test]
fn an_hour_of_day_pattern_is_learned() {
    let cfg = rules(&spike("latency-spike", "probe[*].total_ms", SHIPPED_SPIKE));
    let mut e = Engine::new(cfg.clone());
    let mut u = Unit::new("P1");
    // Days 0 to 2: the busy hour is judged against the last 24 hours (no
    // profile before 3 days of it), and flags.
    assert_eq!(
        busy_mornings(&mut e, &mut u, 0, 0, 3),
        [true, true, true],
        "learning"
    );
    // Day 3, 03:00: the busy value at night flags (the 03:00 profile is 40 ms).
    let night = DAY0 + 3 * DAY + 3 * HOUR_MS;
    for m in (0..3 * 60).step_by(2) {
        u.live(&mut e, DAY0 + 3 * DAY + m * MIN, probe_ms("cad-api", 40.0));
    }
    for k in 0..=5 {
        u.live(&mut e, night + k * 30 * S, probe_ms("cad-api", 400.0));
    }
    let r = e.health(&u.id).unwrap().reasons[0].clone();
    assert_eq!(r.rule, "latency-spike");
    assert!(
        r.message.contains("usual 43 ms")
            && r.message.contains("03:00-04:00 UTC profile of 3 days"),
        "{}",
        r.message
    );
    // Back to normal: it clears; then the rest of day 3 and day 4: the busy
    // hour is usual now.
    u.live(&mut e, night + 3 * MIN, probe_ms("cad-api", 40.0));
    assert!(!flagged(&e, &u, "latency-spike"));
    let mornings = busy_mornings(&mut e, &mut u, 3, 3 * 60 + 4, 2);
    assert_eq!(mornings, [false, false], "the busy hour is learned");

    // Without hour_of_day, the same days keep flagging the busy hour.
    let flat = rules(&format!(
        "[rules.baseline]\nhour_of_day = false\n{}",
        spike("latency-spike", "probe[*].total_ms", SHIPPED_SPIKE)
    ));
    let mut e = Engine::new(flat);
    let mut u = Unit::new("P2");
    assert_eq!(
        busy_mornings(&mut e, &mut u, 0, 0, 5),
        [true, true, true, true, true]
    );
}

#[test]
fn replayed_history_builds_the_baseline_and_never_flags() {
    let mut e = Engine::new(rules(&spike(
        "latency-spike",
        "probe[*].total_ms",
        "factor = 5\nmin_delta_ms = 100\nfor = \"2m\"\n[rules.baseline]\nhour_of_day = false\n",
    )));
    let mut u = Unit::new("R1");
    // After two days away, the unit comes back: live first, 80 ms.
    let back = DAY0 + 2 * DAY;
    let mut at = back;
    for _ in 0..10 {
        u.live(&mut e, at, probe_ms("cad-api", 80.0));
        at += MIN;
    }
    // No baseline yet: even 10x does not flag.
    for _ in 0..6 {
        u.live(&mut e, at, probe_ms("cad-api", 800.0));
        at += 30 * S;
    }
    assert!(!flagged(&e, &u, "latency-spike"), "no baseline, no flag");
    // (21 samples live: fewer than min_samples without the history.)
    for _ in 0..5 {
        u.live(&mut e, at, probe_ms("cad-api", 80.0));
        at += MIN;
    }
    // The backlog: two days, one result a minute, with an hour at 30x in
    // it. It is history (older seqs): it neither raises nor clears.
    let now = at;
    for (i, seq) in (1..=2 * 1440).enumerate() {
        let t = DAY0 + i as u64 * MIN;
        let slow = (DAY0 + DAY + 10 * HOUR_MS..DAY0 + DAY + 11 * HOUR_MS).contains(&t);
        let v = if slow {
            2400.0
        } else {
            80.0 + wobble(i as u64)
        };
        let ch = u.history(&mut e, seq, t, probe_ms("cad-api", v), now);
        assert_eq!(transitions(&ch), 0, "replay at {i} min");
    }
    assert!(!flagged(&e, &u, "latency-spike"));
    // Live again, into the next hour: judged against the replayed days.
    at = at.max(back + HOUR_MS + 5 * MIN);
    let jump = at;
    while at <= jump + 2 * MIN {
        u.live(&mut e, at, probe_ms("cad-api", 800.0));
        at += 30 * S;
    }
    let r = &e.health(&u.id).unwrap().reasons[0];
    assert_eq!(r.rule, "latency-spike", "{r:?}");
    assert!(r.message.contains("usual 8"), "{}", r.message);
}

#[test]
fn a_jump_from_2_to_6_ms_stays_quiet() {
    let body = format!(
        "{}{}",
        spike(
            "spike",
            "probe[*].total_ms",
            "factor = 2.5\nmin_delta_ms = 100\n"
        ),
        spike(
            "spike0",
            "probe[*].total_ms",
            "factor = 2.5\nmin_delta_ms = 0\n"
        )
    );
    let mut e = Engine::new(rules(&body));
    let mut u = Unit::new("Q1");
    let mut at = DAY0;
    for i in 0..600 {
        u.live(&mut e, at, probe_ms("lan-gw", 2.0 + wobble(i) / 100.0));
        at += MIN;
    }
    u.live(&mut e, at, probe_ms("lan-gw", 6.0));
    let f = flags(&e, &u);
    assert!(f.iter().any(|(r, _)| r == "spike0"), "{f:?}");
    assert!(
        !f.iter().any(|(r, _)| r == "spike"),
        "min_delta_ms keeps it quiet: {f:?}"
    );
}

#[test]
fn no_baseline_before_min_samples() {
    let mut e = Engine::new(rules(&format!(
        "[rules.baseline]\nmin_samples = 30\nhour_of_day = false\n{}",
        spike(
            "spike",
            "probe[*].total_ms",
            "factor = 5\nmin_delta_ms = 100\n"
        )
    )));
    let mut u = Unit::new("M1");
    // One result every 5 minutes: 12 an hour. After two completed hours
    // (24 samples) a jump is not judged; after three (36) it is.
    let mut at = DAY0;
    for _ in 0..24 {
        u.live(&mut e, at, probe_ms("cad-api", 80.0));
        at += 5 * MIN;
    }
    u.live(&mut e, at, probe_ms("cad-api", 900.0));
    assert!(!flagged(&e, &u, "spike"), "24 samples: no baseline");
    at += 5 * MIN;
    for _ in 0..12 {
        u.live(&mut e, at, probe_ms("cad-api", 80.0));
        at += 5 * MIN;
    }
    u.live(&mut e, at, probe_ms("cad-api", 900.0));
    assert!(flagged(&e, &u, "spike"), "36 samples");
}

#[test]
fn below_baseline_sees_a_traffic_drop_and_not_a_roam() {
    let mut e = Engine::new(rules(
        "[[rules.threshold]]\nname = \"traffic-drop\"\nfield = \"net.bps\"\nop = \"below_baseline\"\nfactor = 10\nmin_delta = 2000\nfor = \"10m\"\n",
    ));
    let mut u = Unit::new("T1");
    let mut at = DAY0;
    // Two days on Wi-Fi, 48 kB/s, a sample every 30 s.
    while at < DAY0 + 2 * DAY {
        u.live(
            &mut e,
            at,
            traffic(&[("wlan0", 40_000, 8_000), ("wwan0", 0, 0)]),
        );
        at += 30 * S;
    }
    // Roams to cellular for an hour: the Wi-Fi interface drops to 0, the
    // total does not.
    let roam = at;
    while at < roam + HOUR_MS {
        let ch = u.live(
            &mut e,
            at,
            traffic(&[("wlan0", 0, 0), ("wwan0", 41_000, 7_500)]),
        );
        assert_eq!(transitions(&ch), 0, "roaming");
        at += 30 * S;
    }
    // The CAD client goes quiet: 300 B/s. Raised after 10 minutes, not before.
    let drop = at;
    while at < drop + 10 * MIN {
        u.live(&mut e, at, traffic(&[("wwan0", 200, 100)]));
        assert!(!flagged(&e, &u, "traffic-drop"), "{}", at - drop);
        at += 30 * S;
    }
    u.live(&mut e, at, traffic(&[("wwan0", 200, 100)]));
    let r = e.health(&u.id).unwrap().reasons[0].clone();
    assert_eq!(
        (r.rule.as_str(), r.field.as_str()),
        ("traffic-drop", "net.bps")
    );
    assert!(
        r.message.starts_with("net.bps 300 B/s, usual 48"),
        "{}",
        r.message
    );
    assert!(r.message.ends_with(" for 10m"), "{}", r.message);
    // Back: clears.
    at += 30 * S;
    u.live(&mut e, at, traffic(&[("wwan0", 30_000, 6_000)]));
    assert!(!flagged(&e, &u, "traffic-drop"));
}

#[test]
fn hysteresis_with_clear() {
    for (extra, at_300) in [("", true), ("clear = 4\n", false)] {
        let mut e = Engine::new(rules(&spike(
            "spike",
            "probe[*].total_ms",
            &format!("factor = 5\nmin_delta_ms = 100\n{extra}"),
        )));
        let mut u = Unit::new("H1");
        let mut at = DAY0;
        for i in 0..600 {
            u.live(&mut e, at, probe_ms("cad-api", 100.0 + wobble(i)));
            at += MIN;
        }
        u.live(&mut e, at, probe_ms("cad-api", 1000.0));
        assert!(flagged(&e, &u, "spike"));
        // 3x: above the default clear (sqrt 5 = 2.24 x), below 4 x.
        u.live(&mut e, at + MIN, probe_ms("cad-api", 310.0));
        assert_eq!(flagged(&e, &u, "spike"), at_300, "{extra:?}");
        // 2x: clears.
        u.live(&mut e, at + 2 * MIN, probe_ms("cad-api", 200.0));
        assert!(!flagged(&e, &u, "spike"));
        // 4.5 x: below the factor, does not raise again.
        u.live(&mut e, at + 3 * MIN, probe_ms("cad-api", 450.0));
        assert!(!flagged(&e, &u, "spike"));
    }
}

#[test]
fn the_failure_ratio_has_a_baseline_too() {
    let mut e = Engine::new(rules(
        "[[rules.threshold]]\nname = \"failing-more\"\nfield = 'probe[*].failure_ratio'\nop = \"above_baseline\"\nwindow = \"10m\"\nfactor = 3\nmin_delta = 0.3\n",
    ));
    let mut u = Unit::new("F1");
    let mut at = DAY0;
    // One result a minute, one in ten failing, for ten hours.
    for i in 0..600 {
        let p = if i % 10 == 0 {
            probe_failed("cad-api")
        } else {
            probe_ms("cad-api", 80.0)
        };
        u.live(&mut e, at, p);
        at += MIN;
    }
    assert!(!flagged(&e, &u, "failing-more"));
    for _ in 0..6 {
        u.live(&mut e, at, probe_failed("cad-api"));
        at += MIN;
    }
    let r = e.health(&u.id).unwrap().reasons[0].clone();
    assert_eq!(r.field, "probe[\"cad-api\"].failure_ratio");
    assert!(r.message.ends_with(" over 10m"), "{}", r.message);
}

#[test]
fn streams_beyond_the_bound_are_not_kept_and_counted_once() {
    let mut e = Engine::new(rules(&format!(
        "[rules.baseline]\nmax_streams_per_unit = 2\nhour_of_day = false\n{}",
        spike(
            "spike",
            "probe[*].total_ms",
            "factor = 5\nmin_delta_ms = 100\n"
        )
    )));
    let mut a = Unit::new("B1");
    let mut b = Unit::new("B2");
    let mut at = DAY0;
    for _ in 0..300 {
        for name in ["a", "b", "c"] {
            a.live(&mut e, at, probe_ms(name, 80.0));
        }
        b.live(&mut e, at, probe_ms("x", 80.0));
        at += MIN;
    }
    let st = e.baseline_stats();
    assert_eq!(st.streams, 3, "two of B1's, one of B2's");
    assert_eq!(st.refused, 1, "B1's third, once");
    assert_eq!(st.samples, 3 * 300);
    // The kept ones are judged; the refused one never.
    for name in ["a", "c"] {
        a.live(&mut e, at, probe_ms(name, 900.0));
    }
    let f = flags(&e, &a);
    assert_eq!(
        f,
        [("spike".to_owned(), "probe[\"a\"].total_ms".to_owned())]
    );
    // A unit the engine forgets drops its streams.
    let bytes = st.bytes;
    e.forget(&a.id);
    let st = e.baseline_stats();
    assert_eq!(st.streams, 1);
    assert_eq!(st.bytes, bytes / 3, "{bytes}");
}

#[test]
fn bytes_per_stream_with_the_defaults() {
    let cfg = BaselineConfig::default();
    let mut s = Stream::new(&cfg, 0, Some("cad-api"), 1);
    // Filled: three days of hours, the live one, an open late hour.
    for h in 0..80 {
        for i in 0..100 {
            s.push(h, 80.0 + wobble(i));
        }
    }
    s.push(20, 80.0);
    let bytes = s.bytes();
    println!(
        "baseline stream: {bytes} B ({} B the struct, {} hours x 6 B, a late hour {} B)",
        size_of::<Stream>(),
        cfg.ring_hours(),
        size_of::<Acc>()
    );
    assert_eq!(cfg.ring_hours(), 72);
    assert!(bytes <= 700, "{bytes}");
}

#[test]
fn replayed_samples_far_ahead_of_the_clock_are_dropped() {
    let mut e = Engine::new(rules(&spike(
        "spike",
        "probe[*].total_ms",
        "factor = 5\nmin_delta_ms = 100\n",
    )));
    let u = Unit::new("C1");
    let r = Record {
        boot: BootId(7),
        seq: 1,
        at_ms: DAY0 + 2 * HOUR_MS,
        payload: probe_ms("cad-api", 80.0),
    };
    e.on_record(&u.id, &r, DAY0);
    let st = e.baseline_stats();
    assert_eq!((st.future, st.samples, st.streams), (1, 0, 0));
    // The probe kind does not matter: a transaction step is a probe.
    let mut p = fixtures::http_probe();
    p.kind = ProbeKind::Transaction;
    let r = Record {
        boot: BootId(7),
        seq: 2,
        at_ms: DAY0,
        payload: Payload::Probe(p),
    };
    e.on_record(&u.id, &r, DAY0);
    assert_eq!(e.baseline_stats().streams, 1);
}

// ---- configuration ----

fn config_error(body: &str) -> String {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct File {
        rules: RawRules,
    }
    match toml::from_str::<File>(&format!("[rules]\ndefaults = false\n{body}")) {
        Err(e) => e.to_string(),
        Ok(f) => f.rules.validate().unwrap_err().to_string(),
    }
}

#[test]
fn baseline_keys_are_refused_naming_them() {
    let rule = |op: &str, field: &str, extra: &str| {
        format!("[[rules.threshold]]\nname = \"x\"\nfield = '{field}'\nop = \"{op}\"\n{extra}")
    };
    let ms = |extra: &str| rule("above_baseline", "probe[*].total_ms", extra);
    let cases: Vec<(String, &str)> = vec![
        (
            ms("factor = 5\nmin_delta_ms = 100\nthreshold = 900\n"),
            "rules.threshold[0].threshold: above_baseline compares with the unit's own baseline: give factor and min_delta_ms, not threshold",
        ),
        (
            ms("min_delta_ms = 100\n"),
            "rules.threshold[0].factor: above_baseline needs a factor above 1: how many times the usual, e.g. 5",
        ),
        (
            ms("factor = 1\nmin_delta_ms = 100\n"),
            "rules.threshold[0].factor: 1 is not above 1",
        ),
        (
            ms("factor = 5\n"),
            "rules.threshold[0].min_delta_ms: above_baseline needs min_delta_ms: the least difference from the usual that counts (0: the factor alone)",
        ),
        (
            ms("factor = 5\nmin_delta = 100\n"),
            "rules.threshold[0].min_delta: probe[*].total_ms is in milliseconds: give min_delta_ms",
        ),
        (
            ms("factor = 5\nmin_delta_ms = -1\n"),
            "rules.threshold[0].min_delta_ms: -1 is not a difference (0 or more)",
        ),
        (
            ms("factor = 5\nmin_delta_ms = 100\nclear = 6\n"),
            "rules.threshold[0].clear: on above_baseline, clear is a factor from 1 to factor (5): the flag stays up while the value is that far beyond the usual",
        ),
        (
            ms("factor = 5\nmin_delta_ms = 100\nclear = 0.5\n"),
            "rules.threshold[0].clear: on above_baseline, clear is a factor from 1 to factor (5): the flag stays up while the value is that far beyond the usual",
        ),
        (
            rule(
                "below_baseline",
                "net.bps",
                "factor = 10\nmin_delta_ms = 5\n",
            ),
            "rules.threshold[0].min_delta_ms: net.bps is not in milliseconds: give min_delta, in its own unit",
        ),
        (
            rule("below_baseline", "net.bps", "factor = 10\n"),
            "rules.threshold[0].min_delta: below_baseline needs min_delta: the least difference from the usual that counts (0: the factor alone)",
        ),
        (
            rule(
                "above_baseline",
                "net.vpn_up",
                "factor = 2\nmin_delta = 0\n",
            ),
            "rules.threshold[0].op: net.vpn_up is not a number: above_baseline needs one",
        ),
        (
            rule(
                "below_baseline",
                "net.signal_dbm",
                "factor = 2\nmin_delta = 0\n",
            ),
            "rules.threshold[0].op: net.signal_dbm can be negative: below_baseline judges magnitudes (0 and up)",
        ),
        (
            rule(">", "cpu.total", "threshold = 90\nfactor = 2\n"),
            "rules.threshold[0].factor: only above_baseline and below_baseline take factor",
        ),
        (
            rule(
                ">",
                "probe[*].total_ms",
                "threshold = 90\nmin_delta_ms = 2\n",
            ),
            "rules.threshold[0].min_delta_ms: only above_baseline and below_baseline take min_delta_ms",
        ),
        (
            rule(">", "cpu.total", ""),
            "rules.threshold[0].threshold: missing: give the value cpu.total is compared with",
        ),
        (
            rule(
                "above_baseline",
                "probe[*].failure_ratio",
                "factor = 2\nmin_delta = 0.2\n",
            ),
            "rules.threshold[0].window: probe[*].failure_ratio is judged over a window: give one, e.g. \"5m\"",
        ),
        (
            "[rules.baseline]\nwindow = \"30m\"\n".into(),
            "rules.baseline.window: must be 1h to 7d",
        ),
        (
            "[rules.baseline]\nwindow = \"8d\"\n".into(),
            "rules.baseline.window: must be 1h to 7d",
        ),
        (
            "[rules.baseline]\nwindow = \"90m\"\n".into(),
            "rules.baseline.window: \"90m\" is not whole hours (baselines keep hourly summaries)",
        ),
        (
            "[rules.baseline]\nwindow = \"a day\"\n".into(),
            "rules.baseline.window: \"a day\" is not a duration (e.g. \"30s\", \"5m\")",
        ),
        (
            "[rules.baseline]\nmin_samples = 0\n".into(),
            "rules.baseline.min_samples: must be 1 to 1000000",
        ),
        (
            "[rules.baseline]\nhour_of_day_days = 8\n".into(),
            "rules.baseline.hour_of_day_days: must be 1 to 7",
        ),
        (
            "[rules.baseline]\nmax_streams_per_unit = 0\n".into(),
            "rules.baseline.max_streams_per_unit: must be 1 to 1024",
        ),
    ];
    for (body, want) in &cases {
        assert_eq!(config_error(body), *want, "{body}");
    }
    for (body, key) in [
        ("[rules.baseline]\nwindows = \"24h\"\n", "windows"),
        ("[rules.baseline]\nmin_delta_ms = 3\n", "min_delta_ms"),
    ] {
        let e = config_error(body);
        assert!(e.contains(&format!("unknown field `{key}`")), "{e}");
    }
}

#[test]
fn shipped_baseline_rules() {
    let raw = RawRules::default();
    assert_eq!(raw.baseline, RawBaseline::default());
    let cfg = raw.validate().unwrap();
    assert_eq!(cfg.baseline, BaselineConfig::default());
    let find = |n: &str| cfg.threshold.iter().find(|r| &*r.name == n).unwrap();
    let spike = find("latency-spike");
    assert_eq!(
        spike.baseline,
        Some(BaselineOp {
            direction: Direction::Above,
            factor: 5.0,
            clear: 5f64.sqrt(),
            min_delta: 100.0,
        })
    );
    assert_eq!(
        (&*spike.field_text, spike.for_ms),
        ("probe[*].total_ms", 120_000)
    );
    let drop = find("traffic-drop");
    assert_eq!(
        drop.baseline,
        Some(BaselineOp {
            direction: Direction::Below,
            factor: 10.0,
            clear: 10f64.sqrt(),
            min_delta: 2000.0,
        })
    );
    assert_eq!((&*drop.field_text, drop.for_ms), ("net.bps", 600_000));
    // The shipped rules link to their runbooks.
    assert_eq!(
        cfg.runbook_link("latency-spike", None).as_deref(),
        Some("/runbooks/latency-spike")
    );
    assert_eq!(
        cfg.runbook_link("traffic-drop", None).as_deref(),
        Some("/runbooks/traffic-drop")
    );
}

/// The engine's time per record, the shipped rules with and without the
/// baseline rules, over four days of event time (hours completing,
/// hour-of-day profiles in use from day 3): 200 units, each a host sample
/// and a probe result a minute. A measurement, not a check:
/// `cargo test --release -p muster-collector --lib baseline_cost -- --ignored --nocapture`.
#[test]
#[ignore]
#[allow(clippy::disallowed_methods)] // Measures the engine's real elapsed time.
fn baseline_cost_per_record() {
    #[derive(serde::Deserialize)]
    struct File {
        rules: RawRules,
    }
    let mut per = Vec::new();
    for disabled in ["[\"latency-spike\", \"traffic-drop\"]", "[]"] {
        let cfg = toml::from_str::<File>(&format!("[rules]\ndisabled = {disabled}\n"))
            .unwrap()
            .rules
            .validate()
            .unwrap();
        let mut e = Engine::new(cfg);
        let mut units: Vec<Unit> = (0..200).map(|i| Unit::new(&format!("U{i}"))).collect();
        let host = traffic(&[("wlan0", 30_000, 6_000), ("wwan0", 1_000, 500)]);
        let mut records = 0u64;
        let started = std::time::Instant::now();
        for m in 0..4 * 1440u64 {
            let at = DAY0 + m * MIN;
            for (i, u) in units.iter_mut().enumerate() {
                let t = at + i as u64 * 100;
                u.live(&mut e, t, host.clone());
                u.live(
                    &mut e,
                    t + 50,
                    probe_ms("cad-api", 80.0 + wobble(m + i as u64)),
                );
                records += 2;
            }
        }
        let took = started.elapsed().as_secs_f64();
        let st = e.baseline_stats();
        println!(
            "disabled = {disabled}: {records} records in {took:.2} s: {:.2} us a record; {} streams, {} B ({} B a unit)",
            took * 1e6 / records as f64,
            st.streams,
            st.bytes,
            st.bytes / 200
        );
        per.push(took / records as f64);
    }
    println!(
        "baselines on / off, engine time per record: {:.3}",
        per[1] / per[0]
    );
}

// ---- the snapshot ----

/// An engine that has learned two days of one probe, on `unit`.
fn learned(body: &str) -> (Engine, Unit) {
    let mut e = Engine::new(rules(body));
    let mut u = Unit::new("S1");
    let mut at = DAY0;
    for i in 0..2 * 1440 {
        u.live(&mut e, at, probe_ms("cad-api", 80.0 + wobble(i)));
        at += MIN;
    }
    // A late hour open, to carry it too.
    u.history(
        &mut e,
        5,
        DAY0 + 30 * HOUR_MS,
        probe_ms("cad-api", 81.0),
        at,
    );
    (e, u)
}

#[test]
fn a_snapshot_carries_the_baselines_across_a_restart() {
    let body = spike("latency-spike", "probe[*].total_ms", SHIPPED_SPIKE);
    let (e, mut u) = learned(&body);
    let at = DAY0 + 2 * DAY + 30 * MIN;
    let bytes = e.baseline_snapshot(at).unwrap();
    let held = e.baseline_stats();
    assert_eq!(held.streams, 1);
    // Another engine (the restarted collector): the unit's streams are
    // given to it when it is first known, as they were.
    let mut fresh = Engine::new(rules(&body));
    assert_eq!(
        fresh.load_baselines(&bytes, 10).unwrap(),
        (1, 1, 0, at),
        "units, streams, dropped, saved"
    );
    assert_eq!(fresh.baseline_stats().streams, 0, "not known yet");
    for k in 0..=4 {
        u.live(&mut fresh, at + k * 30 * S, probe_ms("cad-api", 830.0));
    }
    assert!(flagged(&fresh, &u, "latency-spike"), "judged at once");
    let st = fresh.baseline_stats();
    // The same stream, less its late hour (merged as the live hour moved on).
    assert_eq!(
        (st.streams, st.bytes),
        (held.streams, held.bytes - size_of::<Acc>() as u64)
    );
    // A unit already known gets them at once.
    let mut known = Engine::new(rules(&body));
    u.live(&mut known, at, probe_ms("cad-api", 80.0));
    known.load_baselines(&bytes, 10).unwrap();
    assert_eq!(known.baseline_stats().streams, 1);
    // Without the snapshot, nothing is judged for a day.
    let mut empty = Engine::new(rules(&body));
    for k in 0..=4 {
        u.live(&mut empty, at + k * 30 * S, probe_ms("cad-api", 830.0));
    }
    assert!(!flagged(&empty, &u, "latency-spike"));
}

#[test]
fn a_bad_or_foreign_snapshot_is_refused() {
    let body = spike("latency-spike", "probe[*].total_ms", SHIPPED_SPIKE);
    let (e, _) = learned(&body);
    let bytes = e.baseline_snapshot(DAY0).unwrap();
    let load = |b: &[u8], body: &str, max: usize| {
        Engine::new(rules(body))
            .load_baselines(b, max)
            .map(|x| (x.0, x.1, x.2))
    };
    assert_eq!(load(&bytes, &body, 10), Ok((1, 1, 0)));
    // Damaged, cut, or not one at all.
    let mut bad = bytes.clone();
    bad[40] ^= 1;
    assert_eq!(
        load(&bad, &body, 10),
        Err(SnapshotError::Format("checksum"))
    );
    assert_eq!(
        load(&bytes[..bytes.len() - 1], &body, 10),
        Err(SnapshotError::Format("checksum"))
    );
    assert_eq!(
        load(b"{}", &body, 10),
        Err(SnapshotError::Format("no header"))
    );
    // Another version.
    let mut v2 = bytes[..bytes.len() - 8].to_vec();
    v2[8] = 2;
    let sum = fnv64(&v2);
    v2.extend_from_slice(&sum.to_le_bytes());
    assert_eq!(load(&v2, &body, 10), Err(SnapshotError::Version(2)));
    // Another ring length: the window or hour_of_day_days changed.
    let week = format!("[rules.baseline]\nwindow = \"7d\"\n{body}");
    assert_eq!(
        load(&bytes, &week, 10),
        Err(SnapshotError::Ring {
            saved: 72,
            now: 168
        })
    );
    // More units than this collector takes.
    assert_eq!(load(&bytes, &body, 0), Err(SnapshotError::TooMany("units")));
    // A metric no rule looks at any more: its streams are dropped.
    let other = spike("other", "probe[*].ttfb_ms", SHIPPED_SPIKE);
    assert_eq!(load(&bytes, &other, 10), Ok((1, 0, 1)));
    // Every prefix and every single-byte change fails cleanly (no panic).
    for n in 0..bytes.len() {
        assert!(load(&bytes[..n], &body, 10).is_err());
    }
    for i in (0..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[i] = b[i].wrapping_add(1);
        assert!(load(&b, &body, 10).is_err(), "byte {i}");
    }
}
