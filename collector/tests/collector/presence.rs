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
        .wait_unit(&u, "offline by will", |v| v["status"] == "offline")
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
    assert_eq!(ev["to"], "offline");
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
            .any(|(t, v)| t == "muster/v1/metro-fire/M1/status" && v["status"] == "offline");
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
    let v = c.wait_unit(&u, "stale", |v| v["status"] == "offline").await;
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
    assert_eq!(to, ["ok", "offline"], "newest first");
}
