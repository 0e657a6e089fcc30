//! Baselines end to end: the shipped `latency-spike` learns a unit's usual
//! probe latency from records' own event time and flags a 10x jump.

use muster_proto::{Body, BootId, Payload, Record, UnitId};

use crate::harness::*;

const MIN: u64 = 60_000;

fn cad_api(ms: f64) -> Payload {
    let mut p = match probe("cad-api", "https://cad.metro.example/api/health", true) {
        Payload::Probe(p) => p,
        _ => unreachable!(),
    };
    p.phases.total_us = (ms * 1000.0) as u32;
    Payload::Probe(p)
}

/// Two and a half hours of event time, one result a minute at 80-86 ms,
/// in batches; the fed clock follows the records. Returns the next seq.
async fn learn(w: &World, a: &Agent, u: &UnitId, boot: BootId) -> u64 {
    let c = w.c();
    let mut seq = 1;
    for chunk in (0..150u64).collect::<Vec<_>>().chunks(25) {
        let recs: Vec<Record> = chunk
            .iter()
            .map(|&i| rec(boot, i + 1, T0 + i * MIN, cad_api(80.0 + (i % 7) as f64)))
            .collect();
        seq += recs.len() as u64;
        w.clock.set(T0 + chunk.last().unwrap() * MIN);
        a.send(u, Body::Batch(recs)).await;
        c.wait_unit(u, "batch in", |v| v["seq"]["received"] == seq - 1)
            .await;
    }
    let v = c.unit(u).await.unwrap();
    assert_eq!(v["status"], "ok", "learning: {v:#}");
    c.wait_metric("muster_baseline_streams ", |v| v == 1.0)
        .await;
    c.wait_metric("muster_baseline_bytes ", |v| v > 0.0).await;
    seq
}

/// 10x slower from `jump`, a result every 30 s: not flagged before 2
/// minutes, then `latency-spike`.
async fn jump(w: &World, a: &Agent, u: &UnitId, boot: BootId, mut seq: u64, jump: u64) {
    let c = w.c();
    let received = c.unit(u).await.unwrap()["seq"]["received"]
        .as_u64()
        .unwrap();
    for k in 0..=4u64 {
        let at = jump + k * 30_000;
        w.clock.set(at);
        a.record(u, rec(boot, seq, at, cad_api(830.0))).await;
        let v = c
            .wait_unit(u, "jump in", |v| v["seq"]["received"] == received + k + 1)
            .await;
        seq += 1;
        if k < 4 {
            assert_eq!(v["status"], "ok", "before `for`, {k}: {v:#}");
        }
    }
    let v = c
        .wait_unit(u, "latency-spike", |v| v["status"] == "degraded")
        .await;
    let r = &v["reasons"][0];
    assert_eq!(r["rule"], "latency-spike", "{v:#}");
    assert_eq!(r["field"], "probe[\"cad-api\"].total_ms");
    assert_eq!(r["observed"], 830.0);
    assert_eq!(r["since_ms"], jump);
    assert_eq!(r["runbook"], "/runbooks/latency-spike");
    let m = r["message"].as_str().unwrap();
    assert!(
        m.starts_with("probe[\"cad-api\"].total_ms 830 ms, usual 83 ms (median, MAD ")
            && m.ends_with(", last 24h) for 2m"),
        "{m}"
    );
    let level = r["threshold"].as_f64().unwrap();
    assert!((400.0..430.0).contains(&level), "5 x the usual: {level}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10x_probe_latency_jump_after_a_learned_baseline_is_a_latency_spike() {
    // The shipped rules (latency-spike: 5 x the usual and 100 ms above it,
    // for 2m); judged against the last 24 h until three days are known.
    let w = World::start("[rules.clock_skew]\nenabled = false\n").await;
    let a = w.agent("agent").await;
    let u = unit("metro-fire", "L1");
    let seq = learn(&w, &a, &u, BootId(1)).await;
    jump(&w, &a, &u, BootId(1), seq, T0 + 150 * MIN + 30_000).await;
    w.c()
        .wait_metric("muster_baseline_samples_total ", |v| v == 155.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_baselines_survive_a_clean_restart() {
    let mut w = World::start("[rules.clock_skew]\nenabled = false\n").await;
    let a = w.agent("agent").await;
    let u = unit("metro-fire", "L2");
    let seq = learn(&w, &a, &u, BootId(1)).await;
    w.stop_collector().await;
    let file = w.store().join("baselines.bin");
    assert!(file.exists(), "saved at the stop");
    w.start_collector().await;
    // Loaded at start: the unit has its stream before it says anything.
    w.c()
        .wait_metric("muster_baseline_streams ", |v| v == 1.0)
        .await;
    jump(&w, &a, &u, BootId(1), seq, T0 + 150 * MIN + 30_000).await;
}
