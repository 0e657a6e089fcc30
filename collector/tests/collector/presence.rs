//! Offline from the MQTT will and from staleness; the status topic.

use std::time::Duration;

use muster_proto::BootId;

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
    assert_eq!(reasons, ["offline.will"], "{v:#}");
    assert_eq!(v["online"], false);
    let (ev, _) = stream
        .wait_for(Duration::from_secs(10), |e| e.event == "transition")
        .await;
    let ev = ev.expect("transition on the stream").json();
    assert_eq!(ev["type"], "transition");
    assert_eq!(ev["unit"], "M1");
    assert_eq!(ev["to"], "lost");
    assert_eq!(ev["reasons"][0]["rule"], "offline.will");

    // The retained status topic says so too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let offline = watcher
            .inbox
            .lock()
            .unwrap()
            .status
            .iter()
            .any(|(t, v)| t == "muster/v1/metro-fire/M1/status" && v["status"] == "lost");
        if offline {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no offline status published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

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
    // Interval 5 s (the fixture's host sample); stale after 3 x 5 s, at least 15 s.
    a.record(&u, rec(boot, 1, T0, host(10.0))).await;
    c.wait_unit(&u, "seen", |v| v["seq"]["received"] == 1).await;
    // 10 s of silence: not stale yet.
    w.clock.set(T0 + 10_000);
    tokio::time::sleep(Duration::from_millis(300)).await; // several ticks at 50 ms
    let v = c.unit(&u).await.unwrap();
    assert_eq!(v["status"], "ok", "{v:#}");
    // 20 s: stale.
    w.clock.set(T0 + 20_000);
    let v = c.wait_unit(&u, "stale", |v| v["status"] == "lost").await;
    let (_, reasons) = status_of(&v);
    assert_eq!(reasons, ["offline.stale"], "{v:#}");
    // Fresh data clears it.
    a.record(&u, rec(boot, 2, T0 + 20_000, host(10.0))).await;
    c.wait_unit(&u, "fresh again", |v| v["status"] == "ok")
        .await;
    let ev = c.json("/api/v1/events?unit=metro-fire/S1", ADMIN).await;
    let to: Vec<&str> = ev["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"].as_str().unwrap())
        .collect();
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
    assert_eq!(status_of(&v).1, ["offline.will"], "{v:#}");
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
    let names: Vec<&str> = units["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["unit"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["REAL"], "{units:#}");
    assert_eq!(
        c.metric("muster_ingest_refused_total{reason=\"malformed\"}")
            .await,
        20.0
    );
}
