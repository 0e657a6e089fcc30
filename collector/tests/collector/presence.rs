//! Lost (the MQTT will, staleness), off (announced departures), overdue;
//! the status topic.

use std::time::Duration;

use muster_proto::{BootId, Payload, Presence};

use muster_collector::clock::Clock;
use muster_testkit::eventually;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_marks_a_unit_offline_and_a_birth_brings_it_back() {
    let w = World::start("").await;
    let c = w.c();
    let u = unit("metro-fire", "M1");
    let boot = BootId(11);
    let watcher = w.agent("watcher").await;
    watcher
        .client
        .subscribe("muster/v1/metro-fire/M1/status", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut stream = c.stream(FIRE).await;

    let a = Agent::connect(&w.broker, "m1", Some((&u, online(boot, 1, T0, false)))).await;
    a.presence(&u, online(boot, 1, T0, true)).await;
    a.record(&u, rec(boot, 1, T0, host(10.0))).await;
    c.wait_unit(&u, "online", |v| {
        v["online"] == true && v["seq"]["received"] == 1
    })
    .await;
    a.cut();
    let v = c
        .wait_unit(&u, "offline by will", |v| v["status"] == "lost")
        .await;
    let (_, reasons) = status_of(&v);
    assert_eq!(reasons, ["lost.will"], "{v:#}");
    assert_eq!(v["online"], false);
    let (ev, _) = stream
        .wait_for(Duration::from_secs(10), |e| e.event == "transition")
        .await;
    let ev = ev.expect("transition on the stream").json();
    assert_eq!(ev["type"], "transition");
    assert_eq!(ev["unit"], "M1");
    assert_eq!(ev["to"], "lost");
    assert_eq!(ev["reasons"][0]["rule"], "lost.will");

    // The retained status topic says so too.
    eventually(
        "a lost status published",
        Duration::from_secs(10),
        || async {
            let inbox = watcher.inbox.lock().unwrap();
            let statuses: Vec<_> = inbox
                .status
                .iter()
                .filter(|(t, _)| t.ends_with("/M1/status"))
                .collect();
            if statuses.iter().any(|(_, v)| v["status"] == "lost") {
                Ok(())
            } else {
                Err(format!("{statuses:?}"))
            }
        },
    )
    .await;

    // Reconnect: connection 2's birth. Then connection 1's will, late and
    // retained again, must not win over it.
    let a = w.agent("m1-again").await;
    a.presence(&u, online(boot, 2, T0 + 1_000, true)).await;
    a.record(&u, rec(boot, 2, T0 + 1_000, host(10.0))).await;
    c.wait_unit(&u, "back online", |v| {
        v["status"] == "ok" && v["online"] == true
    })
    .await;
    a.presence(&u, online(boot, 1, T0, false)).await;
    a.record(&u, rec(boot, 3, T0 + 2_000, host(10.0))).await;
    let v = c
        .wait_unit(&u, "late will processed", |v| v["seq"]["received"] == 3)
        .await;
    assert_eq!(
        v["status"], "ok",
        "a late will overrode a newer birth: {v:#}"
    );
    assert_eq!(v["presence"]["connection"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_makes_a_unit_stale_and_data_clears_it() {
    let w = World::start("").await;
    let c = w.c();
    let a = w.agent("agent").await;
    let u = unit("metro-fire", "S1");
    let boot = BootId(5);
    // Interval 5 s (the fixture's host sample); stale after 3 x 5 s, at least
    // 15 s. The witness is seen 6 s before S1.
    let witness = witness(&w, "W1").await;
    w.clock.set(T0 + 6_000);
    a.record(&u, rec(boot, 1, T0 + 6_000, host(10.0))).await;
    c.wait_unit(&u, "seen", |v| v["seq"]["received"] == 1).await;
    // 10 s of silence: not stale yet (the witness, 16 s silent, is).
    w.clock.set(T0 + 16_000);
    ticked(c, &witness).await;
    let v = c.unit(&u).await.unwrap();
    assert_eq!(v["status"], "ok", "{v:#}");
    // 20 s: stale.
    w.clock.set(T0 + 26_000);
    let v = c.wait_unit(&u, "stale", |v| v["status"] == "lost").await;
    let (_, reasons) = status_of(&v);
    assert_eq!(reasons, ["lost.stale"], "{v:#}");
    // Fresh data clears it.
    a.record(&u, rec(boot, 2, T0 + 26_000, host(10.0))).await;
    c.wait_unit(&u, "fresh again", |v| v["status"] == "ok")
        .await;
    let ev = c.json("/api/v1/events?unit=metro-fire/S1", ADMIN).await;
    let to = items(&ev, "to");
    assert_eq!(to, ["ok", "lost"], "newest first");
}

/// A will with the unit's boot, the largest connection number and a date a
/// year ahead (what a forged retained will looked like) pins nothing: the
/// unit's next records are newer data, and it is online again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_dated_will_does_not_pin_a_sending_unit_offline() {
    const YEAR: u64 = 365 * 24 * 3600 * 1000;
    let w = World::start("").await;
    let c = w.c();
    let u = unit("metro-fire", "F1");
    let boot = BootId(21);
    let a = w.agent("f1").await;
    a.presence(&u, online(boot, 1, T0, true)).await;
    a.record(&u, rec(boot, 1, T0, host(10.0))).await;
    c.wait_unit(&u, "online", |v| {
        v["online"] == true && v["seq"]["received"] == 1
    })
    .await;
    let forger = w.agent("forger").await;
    forger
        .presence(&u, online(boot, u32::MAX, T0 + YEAR, false))
        .await;
    let v = c
        .wait_unit(&u, "the forged will, believed for now", |v| {
            v["status"] == "lost"
        })
        .await;
    assert_eq!(status_of(&v).1, ["lost.will"], "{v:#}");
    // The agent keeps sending: newer data than the will.
    a.record(&u, rec(boot, 2, T0 + 5_000, host(10.0))).await;
    let v = c
        .wait_unit(&u, "online by newer data", |v| {
            v["status"] == "ok" && v["seq"]["received"] == 2
        })
        .await;
    assert_eq!(v["online"], true, "{v:#}");
    // The retained forgery delivered again changes nothing.
    forger
        .presence(&u, online(boot, u32::MAX, T0 + YEAR, false))
        .await;
    a.record(&u, rec(boot, 3, T0 + 10_000, host(10.0))).await;
    let v = c
        .wait_unit(&u, "third record", |v| v["seq"]["received"] == 3)
        .await;
    assert_eq!(v["status"], "ok", "{v:#}");
}

/// An agent whose clock was a year ahead: its boot's birth, data and will
/// are dated a year ahead. Its clock is fixed and it restarts (new boot):
/// the new boot's birth and data win, by receive order, not by date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_a_year_ahead_then_fixed_does_not_keep_the_unit_offline() {
    const YEAR: u64 = 365 * 24 * 3600 * 1000;
    let w = World::start("").await;
    let c = w.c();
    let u = unit("metro-fire", "Y1");
    let (old, new) = (BootId(31), BootId(32));
    let a = Agent::connect(
        &w.broker,
        "y1",
        Some((&u, online(old, 1, T0 + YEAR, false))),
    )
    .await;
    a.presence(&u, online(old, 1, T0 + YEAR, true)).await;
    a.record(&u, rec(old, 1, T0 + YEAR, host(10.0))).await;
    c.wait_unit(&u, "online, a year ahead", |v| v["seq"]["received"] == 1)
        .await;
    a.cut();
    c.wait_unit(&u, "offline by will", |v| v["status"] == "lost")
        .await;
    // Fixed clock, new boot.
    let b = w.agent("y1-again").await;
    b.presence(&u, online(new, 1, T0 + 60_000, true)).await;
    b.record(&u, rec(new, 1, T0 + 60_000, host(95.0))).await;
    let v = c
        .wait_unit(&u, "online with the new boot", |v| {
            v["online"] == true && v["seq"]["received"] == 2
        })
        .await;
    assert_ne!(v["status"], "lost", "{v:#}");
    // The new boot's data is current, not history: cpu 95 % raises cpu-high
    // after its `for`; a sample at 10 % later clears nothing it did not raise.
    assert_eq!(
        v["presence"]["boot"],
        format!("{:016x}", new.0),
        "the believed boot: {v:#}"
    );
    assert_eq!(v["last_at_ms"], T0 + YEAR, "newest event time seen");
}

/// A record refused as malformed (seq 0) never creates a unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_with_seq_zero_create_no_unit() {
    let w = World::start("").await;
    let c = w.c();
    let a = w.agent("ghost").await;
    for i in 0..20 {
        let u = unit("metro-fire", &format!("G{i}"));
        a.record(&u, rec(BootId(1), 0, T0, host(10.0))).await;
    }
    // A real unit after them, so we know the ghosts were processed.
    let real = unit("metro-fire", "REAL");
    a.record(&real, rec(BootId(2), 1, T0, host(10.0))).await;
    c.wait_unit(&real, "the real unit", |v| v["seq"]["received"] == 1)
        .await;
    let units = c.json("/api/v1/units", ADMIN).await;
    let names = items(&units, "unit");
    assert_eq!(names, ["REAL"], "{units:#}");
    assert_eq!(
        c.metric("muster_ingest_refused_total{reason=\"malformed\"}")
            .await,
        20.0
    );
}

/// `ingest.max_units` bounds the units the collector keeps state for: a
/// new unit beyond it is refused and counted, by its records and its
/// presence alike, and gets no ack (its agent keeps the records); the units
/// already known carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_beyond_max_units_are_refused_and_not_acked() {
    let broker = muster_testkit::Mosquitto::start();
    let dir = muster_testkit::TempDir::new().unwrap();
    let text = collector_config(&broker, &dir.path().join("store"), "collector-test")
        .set("ingest", "max_units", "2")
        .render();
    let c = Collector::start(&text, muster_collector::clock::ManualClock::new(T0)).await;
    let a = Agent::connect(&broker, "fleet", None).await;
    let [e1, e2, e3] = ["E1", "E2", "E3"].map(|n| unit("metro-fire", n));
    let boot = BootId(4);
    for u in [&e1, &e2] {
        a.record(u, rec(boot, 1, T0, host(10.0))).await;
        a.wait_acked(u, boot, [1]).await;
    }
    a.presence(&e3, online(boot, 1, T0, true)).await;
    a.record(&e3, rec(boot, 1, T0, host(10.0))).await;
    // A known unit after them, so we know they were processed.
    a.record(&e1, rec(boot, 2, T0 + 5_000, host(10.0))).await;
    a.wait_acked(&e1, boot, [2]).await;
    assert_eq!(
        c.metric("muster_ingest_refused_total{reason=\"unit_limit\"}")
            .await,
        2.0
    );
    assert!(
        !a.acked(&e3, boot, [1]),
        "a refused unit's record was acked"
    );
    let units = c.json("/api/v1/units", ADMIN).await;
    let names = items(&units, "unit");
    assert_eq!(names, ["E1", "E2"], "{units:#}");
    c.stop().await;
}

fn announce(boot: BootId, connection: u32, reason: muster_proto::PresenceReason) -> Presence {
    Presence {
        online: false,
        boot,
        connection,
        at_ms: T0,
        reason,
    }
}

/// A witness unit: one host sample, received at the clock's present time.
/// Once the clock is set 15 s or more ahead, [`ticked`] waits for the
/// witness to read `lost.stale`: the sign that the collector has ticked at
/// the new time (and so evaluated every other unit there too). The tests
/// wait for that instead of sleeping through "several ticks". The witness
/// must still be fresh when the clock jumps: make it right before.
async fn witness(w: &World, name: &str) -> muster_proto::UnitId {
    let u = unit("metro-fire", name);
    let a = w.agent(&format!("witness-{name}")).await;
    a.record(&u, rec(BootId(999), 1, w.clock.now_ms(), host(10.0)))
        .await;
    w.c()
        .wait_unit(&u, "the witness seen", |v| v["seq"]["received"] == 1)
        .await;
    u
}

/// Waits until the collector has ticked at the clock's time (see [`witness`]).
async fn ticked(c: &Collector, witness: &muster_proto::UnitId) {
    c.wait_unit(witness, "the witness stale: a tick at the new time", |v| {
        v["status"] == "lost"
    })
    .await;
}

fn reason0(v: &serde_json::Value) -> &serde_json::Value {
    &v["reasons"][0]
}

/// Hh:mm UTC of a unix time in ms (what the collector writes).
fn hhmm(ms: u64) -> String {
    let min = (ms / 60_000) % (24 * 60);
    format!("{:02}:{:02}", min / 60, min % 60)
}

/// An announced shutdown (the buffered record, acked like every record,
/// and the retained state) is `off`, neutral; the broker's will after it
/// (a DISCONNECT that got lost) does not make it `lost`; newer data after it
/// is online again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_shutdown_is_off_and_a_will_after_it_is_not_lost() {
    let w = World::start("").await;
    let c = w.c();
    let u = unit("metro-fire", "A1");
    let boot = BootId(41);
    let a = Agent::connect(&w.broker, "a1", Some((&u, online(boot, 1, T0, false)))).await;
    a.presence(&u, online(boot, 1, T0, true)).await;
    a.record(&u, rec(boot, 1, T0, host(10.0))).await;
    c.wait_unit(&u, "online", |v| v["seq"]["received"] == 1)
        .await;
    let shutdown = announce(boot, 1, muster_proto::PresenceReason::Shutdown);
    a.record(&u, rec(boot, 2, T0 + 1_000, Payload::Presence(shutdown)))
        .await;
    a.presence(&u, shutdown).await;
    let v = c.wait_unit(&u, "off", |v| v["status"] == "off").await;
    assert_eq!(status_of(&v).1, ["off"], "{v:#}");
    assert_eq!(
        reason0(&v)["message"],
        format!("shut down {} (OS shutdown)", hhmm(T0)),
        "{v:#}"
    );
    assert_eq!(reason0(&v)["severity"], "info");
    assert_eq!(v["online"], false, "{v:#}");
    // The announcement record is stored and acked like every record.
    a.wait_acked(&u, boot, [1, 2]).await;
    // The will of the same connection: counted, not believed.
    let lost_before = c
        .metric("muster_ingest_presence_total{reason=\"lost\"}")
        .await;
    a.cut();
    // The will came.
    c.wait_metric("muster_ingest_presence_total{reason=\"lost\"}", |n| {
        n > lost_before
    })
    .await;
    assert!(
        c.metric("muster_ingest_presence_total{reason=\"shutdown\"}")
            .await
            >= 2.0,
        "the record and the retained copy"
    );
    // Silence does not make an off unit stale.
    let witness = witness(&w, "W2").await;
    w.clock.set(T0 + 10 * 60_000);
    ticked(c, &witness).await;
    let v = c.unit(&u).await.unwrap();
    assert_eq!(v["status"], "off", "{v:#}");
    // Newer data of the live boot: online again.
    let b = w.agent("a1-again").await;
    b.record(&u, rec(boot, 3, T0 + 10 * 60_000, host(10.0)))
        .await;
    let v = c.wait_unit(&u, "back", |v| v["status"] == "ok").await;
    assert_eq!(v["online"], true, "{v:#}");
}

/// Off longer than `[rules.off] max` (per agency) is overdue; a restart not
/// back within its `back_within` is overdue, then lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_too_long_is_overdue_and_a_restart_never_back_is_lost() {
    let w = World::start(
        "[rules.off]\nmax = \"16h\"\n[rules.off.agency.\"metro-fire\"]\nmax = \"1h\"\n",
    )
    .await;
    let c = w.c();
    let a = w.agent("a").await;
    let fire = unit("metro-fire", "O1");
    let police = unit("county-police", "O2");
    let restart = unit("metro-fire", "O3");
    for (i, u) in [&fire, &police, &restart].into_iter().enumerate() {
        let boot = BootId(50 + i as u64);
        a.presence(u, online(boot, 1, T0, true)).await;
        a.record(u, rec(boot, 1, T0, host(10.0))).await;
        let reason = if *u == restart {
            muster_proto::PresenceReason::Stop {
                back_within_ms: Some(120_000),
            }
        } else {
            muster_proto::PresenceReason::Sleep
        };
        a.record(
            u,
            rec(boot, 2, T0, Payload::Presence(announce(boot, 1, reason))),
        )
        .await;
        c.wait_unit(u, "off", |v| v["status"] == "off").await;
    }
    let v = c.unit(&restart).await.unwrap();
    assert_eq!(
        reason0(&v)["message"],
        format!("restarting since {} (back within 2m)", hhmm(T0))
    );
    // 2 minutes: the restart is overdue.
    w.clock.set(T0 + 120_000);
    let v = c
        .wait_unit(&restart, "restart overdue", |v| v["status"] == "overdue")
        .await;
    assert_eq!(status_of(&v).1, ["overdue"], "{v:#}");
    // Past back_within + the stale allowance (15 s): lost.
    w.clock.set(T0 + 136_000);
    let v = c
        .wait_unit(&restart, "restart lost", |v| v["status"] == "lost")
        .await;
    assert_eq!(status_of(&v).1, ["lost.stale"], "{v:#}");
    // 1 h: metro-fire's max; the police unit (16 h) is still off.
    w.clock.set(T0 + 3_600_000);
    let v = c
        .wait_unit(&fire, "fire overdue", |v| v["status"] == "overdue")
        .await;
    assert_eq!(reason0(&v)["runbook"], "/runbooks/overdue");
    assert_eq!(c.unit(&police).await.unwrap()["status"], "off");
    assert_eq!(
        c.metric("muster_units{agency=\"metro-fire\",status=\"overdue\"}")
            .await,
        1.0
    );
    assert_eq!(
        c.metric("muster_units{agency=\"county-police\",status=\"off\"}")
            .await,
        1.0
    );
}

/// A will carries the last network context the unit reported; an offline
/// presence with a reason this build does not know is lost, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_says_the_network_and_unknown_reasons_are_lost_and_counted() {
    let w = World::start("").await;
    let c = w.c();
    let u = unit("metro-fire", "L1");
    let boot = BootId(61);
    let a = Agent::connect(&w.broker, "l1", Some((&u, online(boot, 1, T0, false)))).await;
    a.presence(&u, online(boot, 1, T0, true)).await;
    // The fixture's sample: default route on cellular wwan0, RSRP -109, tun0 up.
    a.record(&u, rec(boot, 1, T0, host(10.0))).await;
    c.wait_unit(&u, "online", |v| v["seq"]["received"] == 1)
        .await;
    // 10 s on: under the 15 s stale allowance, so only the will makes it
    // lost (at 60 s a tick could say lost.stale first; seen under load).
    w.clock.set(T0 + 10_000);
    a.cut();
    let v = c.wait_unit(&u, "lost", |v| v["status"] == "lost").await;
    assert_eq!(status_of(&v).1, ["lost.will"]);
    assert_eq!(
        reason0(&v)["message"],
        format!(
            "lost contact {} (MQTT will) on cellular (wwan0), signal -109 dBm (weak), VPN up",
            hhmm(T0 + 10_000)
        ),
        "{v:#}"
    );
    assert_eq!(reason0(&v)["observed"], -109.0);

    let n = unit("metro-fire", "N1");
    let nb = BootId(62);
    let b = w.agent("n1").await;
    b.presence(&n, online(nb, 1, T0, true)).await;
    b.record(&n, rec(nb, 1, T0, host(10.0))).await;
    c.wait_unit(&n, "online", |v| v["status"] == "ok").await;
    b.presence(
        &n,
        announce(nb, 1, muster_proto::PresenceReason::Unknown { code: 200 }),
    )
    .await;
    let v = c
        .wait_unit(&n, "unknown: lost", |v| v["status"] == "lost")
        .await;
    assert!(
        reason0(&v)["message"]
            .as_str()
            .unwrap()
            .contains("unknown reason code 200"),
        "{v:#}"
    );
    assert_eq!(
        c.metric("muster_ingest_presence_unknown_reason_total")
            .await,
        1.0
    );
    assert_eq!(
        c.metric("muster_ingest_presence_total{reason=\"unknown\"}")
            .await,
        1.0
    );
}

/// An off unit stays off across a collector restart, with its reason in
/// words (from the stored presence), and silence does not make it stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_off_unit_stays_off_across_a_collector_restart() {
    let mut w = World::start("").await;
    let u = unit("metro-fire", "R1");
    let boot = BootId(71);
    let a = w.agent("r1").await;
    a.presence(&u, online(boot, 1, T0, true)).await;
    a.record(&u, rec(boot, 1, T0, host(10.0))).await;
    let sleep = announce(boot, 1, muster_proto::PresenceReason::Sleep);
    a.record(&u, rec(boot, 2, T0, Payload::Presence(sleep)))
        .await;
    w.c().wait_unit(&u, "off", |v| v["status"] == "off").await;
    a.wait_acked(&u, boot, [1, 2]).await;
    w.stop_collector().await;
    w.clock.set(T0 + 3_600_000);
    w.start_collector().await;
    let c = w.c();
    // Silent past any stale allowance: still off.
    let witness = witness(&w, "W3").await;
    w.clock.set(T0 + 3_600_000 + 300_000);
    ticked(c, &witness).await;
    let v = c.unit(&u).await.unwrap();
    assert_eq!(v["status"], "off", "{v:#}");
    assert_eq!(status_of(&v).1, ["off"], "{v:#}");
    assert_eq!(
        reason0(&v)["message"],
        format!("asleep since {}", hhmm(T0)),
        "{v:#}"
    );
    // Resumed: ok again.
    let b = w.agent("r1-again").await;
    b.presence(
        &u,
        Presence {
            online: true,
            boot,
            connection: 2,
            at_ms: T0 + 3_600_000,
            reason: muster_proto::PresenceReason::Resumed {
                slept_ms: 3_600_000,
            },
        },
    )
    .await;
    let v = c.wait_unit(&u, "resumed", |v| v["status"] == "ok").await;
    assert_eq!(v["online"], true, "{v:#}");
}
