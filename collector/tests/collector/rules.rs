//! Flags end to end: hysteresis, event-time replay, agency-wide incidents.

use std::time::Duration;

use muster_proto::{Body, BootId, Record, UnitId};
use muster_testkit::eventually;

use crate::harness::*;

/// Publishes host samples 5 s apart in event time, moving the fed clock
/// with them; returns the next seq.
async fn samples(
    w: &World,
    a: &Agent,
    u: &UnitId,
    boot: BootId,
    mut seq: u64,
    cpus: &[f64],
) -> u64 {
    for cpu in cpus {
        let at = T0 + seq * 5_000;
        live(w, a, u, rec(boot, seq, at, host(*cpu)), seq).await;
        seq += 1;
    }
    seq
}

/// A live record: the fed clock moves to its event time, and the next
/// step waits until the collector has it (the clock must not run ahead of
/// ingest, or the unit would look stale). `received` is the unit's count
/// once it is in.
async fn live(w: &World, a: &Agent, u: &UnitId, r: Record, received: u64) {
    w.clock.set(r.at_ms);
    a.record(u, r).await;
    w.c()
        .wait_unit(u, "record in", |v| v["seq"]["received"] == received)
        .await;
}

fn transitions(ev: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = ev["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "transition")
        .map(|e| e["to"].as_str().unwrap().to_owned())
        .collect();
    v.reverse(); // oldest first
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wobble_across_the_threshold_does_not_flap() {
    // The shipped cpu-high: > 90 for 2m, clears at <= 80.
    let w = World::start("").await;
    let c = w.c();
    let a = w.agent("agent").await;
    let u = unit("metro-fire", "H1");
    let boot = BootId(1);
    // A spike shorter than `for`: no flag.
    let mut seq = samples(&w, &a, &u, boot, 1, &[20.0, 95.0, 96.0, 20.0]).await;
    assert_eq!(c.unit(&u).await.unwrap()["status"], "ok");
    // Sustained for over 2 minutes: degraded.
    seq = samples(&w, &a, &u, boot, seq, &[95.0; 27]).await;
    let v = c
        .wait_unit(&u, "degraded", |v| v["status"] == "degraded")
        .await;
    let r = &v["reasons"][0];
    assert_eq!(r["rule"], "cpu-high");
    assert_eq!(r["field"], "cpu.total");
    assert_eq!(r["threshold"], 90.0);
    assert_eq!(r["runbook"], "/runbooks/cpu-high", "its built-in runbook");
    // Wobbling around the threshold but above the clear level: stays.
    seq = samples(
        &w,
        &a,
        &u,
        boot,
        seq,
        &[89.0, 91.0, 85.0, 92.0, 81.0, 90.5, 84.0],
    )
    .await;
    assert_eq!(c.unit(&u).await.unwrap()["status"], "degraded");
    // Below the clear level: ok.
    samples(&w, &a, &u, boot, seq, &[70.0]).await;
    c.wait_unit(&u, "cleared", |v| v["status"] == "ok").await;
    let ev = c.json("/api/v1/events?unit=metro-fire/H1", ADMIN).await;
    assert_eq!(transitions(&ev), ["degraded", "ok"], "{ev:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_history_neither_raises_stale_nor_clears_current_flags() {
    let w = World::start("").await;
    let c = w.c();
    let a = w.agent("agent").await;
    let u = unit("metro-fire", "R1");
    let boot = BootId(9);
    // Seqs 1..=100 were taken during an outage an hour ago; live data
    // (seq 101 on) goes out first, hot enough to flag cpu-high.
    let live_from = 101;
    let mut seq = live_from;
    for cpu in [95.0; 28] {
        let at = T0 + 3_600_000 + (seq - live_from) * 5_000;
        let received = seq - live_from + 1;
        live(&w, &a, &u, rec(boot, seq, at, host(cpu)), received).await;
        seq += 1;
    }
    let v = c
        .wait_unit(&u, "degraded", |v| v["status"] == "degraded")
        .await;
    let now = T0 + 3_600_000 + (seq - 1 - live_from) * 5_000;
    assert_eq!(v["last_at_ms"], now);
    // The backlog drains: an hour-old, idle, 5 s apart.
    for chunk in (1..live_from).collect::<Vec<_>>().chunks(25) {
        a.send(
            &u,
            Body::Batch(
                chunk
                    .iter()
                    .map(|&s| rec(boot, s, T0 + s * 5_000, host(5.0)))
                    .collect(),
            ),
        )
        .await;
    }
    let v = c
        .wait_unit(&u, "backlog in", |v| v["seq"]["received"] == seq - 1)
        .await;
    assert_eq!(v["seq"]["missing"], 0);
    assert_eq!(
        v["status"], "degraded",
        "replay cleared a current flag: {v:#}"
    );
    assert_eq!(
        v["last_at_ms"], now,
        "replay moved the unit's newest time back"
    );
    let ev = c.json("/api/v1/events?unit=metro-fire/R1", ADMIN).await;
    assert_eq!(transitions(&ev), ["degraded"], "{ev:#}");
    a.wait_acked(&u, boot, 1..seq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_units_failing_one_probe_raise_one_incident() {
    let w = World::start("").await;
    let c = w.c();
    let a = w.agent("agent").await;
    a.client
        .subscribe("muster/v1/metro-fire/incidents", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut stream = c.stream(FIRE).await;
    let target = "https://cad.metro.example/api/health";
    let units: Vec<UnitId> = (1..=4)
        .map(|i| unit("metro-fire", &format!("E{i}")))
        .collect();
    // A police unit fails the same target: another agency, not counted.
    let p = unit("county-police", "P1");
    for (i, u) in units.iter().enumerate() {
        a.record(u, rec(BootId(1), 1, T0, probe("cad-api", target, i != 3)))
            .await;
    }
    a.record(&p, rec(BootId(1), 1, T0, probe("cad-api", target, true)))
        .await;
    for u in &units {
        c.wait_unit(u, "first probe", |v| v["seq"]["received"] == 1)
            .await;
    }
    // Three of the four start failing.
    for seq in 2..=4 {
        for (i, u) in units.iter().enumerate() {
            let at = T0 + seq * 5_000;
            let r = rec(BootId(1), seq, at, probe("cad-api", target, i == 3));
            live(&w, &a, u, r, seq).await;
        }
    }
    let inc = eventually("an open incident", Duration::from_secs(20), || async {
        let l = c.json("/api/v1/incidents?state=open", FIRE).await;
        l["items"].as_array().unwrap().first().cloned().ok_or(l)
    })
    .await;
    assert_eq!(inc["agency"], "metro-fire");
    assert_eq!(inc["target"], target);
    assert_eq!(inc["of_units"], 4);
    assert_eq!(inc["affected"], serde_json::json!(["E1", "E2", "E3"]));
    let id = inc["id"].as_str().unwrap().to_owned();
    let (ev, _) = stream
        .wait_for(Duration::from_secs(10), |e| e.event == "incident")
        .await;
    assert_eq!(ev.expect("incident on the stream").json()["id"], id);
    // The affected units point at it.
    for u in &units[..3] {
        let v = c
            .wait_unit(u, "affected", |v| {
                v["incidents"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| *x == id.as_str()))
            })
            .await;
        assert!(
            v["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["incident"] == id.as_str()),
            "{v:#}"
        );
    }
    // Agencies subscribed over MQTT get the retained list of open incidents.
    eventually("the incidents message", Duration::from_secs(10), || async {
        a.inbox.lock().unwrap().status.iter().any(|(t, v)| {
            t == "muster/v1/metro-fire/incidents" && v["incidents"][0]["id"] == id.as_str()
        })
    })
    .await;
    // One incident, not one per unit; police sees none of it.
    let all = c.json("/api/v1/incidents", ADMIN).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
    let police = c.json("/api/v1/incidents", POLICE).await;
    assert!(police["items"].as_array().unwrap().is_empty());
    assert_eq!(
        c.metric("muster_incidents_open{agency=\"metro-fire\"}")
            .await,
        1.0
    );
}
