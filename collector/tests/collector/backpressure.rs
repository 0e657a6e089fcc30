//! Backpressure (ingest::flow): a slow or stuck store throttles ingest to
//! its window (TCP pushes back on the broker, which holds the rest),
//! overload is reported, and every record arrives once the store recovers.
//! Stopping under overload is prompt and never acks an unstored record.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use muster_collector::clock::ManualClock;
use muster_proto::{BootId, UnitId, fixtures};
use muster_testkit::{Mosquitto, TempDir, eventually, http};

use crate::harness::{Agent, Collector, T0, collector_config, host, unit};
use crate::valve::Valve;

const WINDOW: u64 = 32;

fn config(broker: &Mosquitto, dir: &TempDir) -> String {
    collector_config(broker, &dir.path().join("store"), "collector-backpressure")
        .set("ingest", "receive_maximum", &WINDOW.to_string())
        .set("ingest", "queue", &WINDOW.to_string())
        .set_str("ingest", "overload_wait", "300ms")
        .set_str("ingest", "tick_interval", "100ms")
        .render()
}

async fn start(broker: &Mosquitto, dir: &TempDir, valve: &Arc<Valve>) -> Collector {
    Collector::start_with(&config(broker, dir), ManualClock::new(T0), valve.wiring()).await
}

pub async fn publish(agent: &Agent, u: &UnitId, boot: BootId, seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        let mut r = fixtures::record(seq, host(10.0));
        r.boot = boot;
        r.at_ms = T0 + seq * 1_000;
        agent.record(u, r).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_store_holds_messages_at_the_broker_and_every_record_arrives_once_it_recovers() {
    const N: u64 = 2_000;
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let valve = Valve::new();
    let c = start(&broker, &dir, &valve).await;
    let agent = Agent::connect(&broker, "bp-agent", None).await;
    let u = unit("metro-fire", "E1");
    let boot = BootId(7);

    let closed = valve.close();
    publish(&agent, &u, boot, 1..=N).await;
    // The collector takes no more than its window while nothing is stored.
    c.wait_metric("muster_ingest_overloaded ", |v| v == 1.0)
        .await;
    let ready = http::get(c.addr, "/readyz", None).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.json()["overloaded"], true);
    let mut most = 0.0f64;
    for _ in 0..10 {
        let taken = c.metric("muster_ingest_messages_total ").await;
        let holding = c.metric("muster_ingest_holding ").await;
        assert!(
            holding <= WINDOW as f64,
            "holding {holding} > window {WINDOW}"
        );
        most = most.max(taken);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        most <= WINDOW as f64,
        "the collector took {most} messages of {N} with its store stuck (window {WINDOW})"
    );
    eprintln!("store stuck: the collector holds {most} of {N} messages; the broker holds the rest");

    let opened = Instant::now();
    drop(closed);
    agent.wait_acked(&u, boot, 1..=N).await;
    eprintln!(
        "store recovered: {N} records acked in {:?}",
        opened.elapsed()
    );
    c.wait_metric("muster_ingest_overloaded ", |v| v == 0.0)
        .await;
    c.wait_ready().await;
    assert_eq!(
        c.metric("muster_ingest_stored_records_total ").await,
        N as f64
    );
    let stored = valve.stored();
    assert_eq!(stored.len() as u64, N, "every record stored once");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_under_overload_is_prompt_and_acks_only_stored_records() {
    const N: u64 = 600;
    let broker = Mosquitto::start();
    let dir = TempDir::new().unwrap();
    let valve = Valve::new();
    let c = start(&broker, &dir, &valve).await;
    let agent = Agent::connect(&broker, "bp-agent-2", None).await;
    let u = unit("metro-fire", "E2");
    let boot = BootId(9);

    valve.delay_ms.store(1_000, Ordering::Relaxed);
    publish(&agent, &u, boot, 1..=N).await;
    c.wait_metric("muster_ingest_overloaded ", |v| v == 1.0)
        .await;
    let asked = Instant::now();
    c.stop().await;
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    // Every ack the agent holds covers only records the store has.
    let stored = valve.stored();
    let acked: Vec<u64> = (1..=N).filter(|s| agent.acked(&u, boot, [*s])).collect();
    for s in &acked {
        assert!(
            stored.contains(&(u.clone(), boot.0, *s)),
            "seq {s} was acked but not stored"
        );
    }
    eprintln!(
        "stopped under overload in {took:?}: {} of {N} acked, {} stored",
        acked.len(),
        stored.len()
    );
    assert!(
        (acked.len() as u64) < N,
        "the overload test never overloaded"
    );

    // Restarted on the same store: the agent resends what was never acked
    // (a real agent does on the collector's new hello, or after its ack
    // timeout), and every record is stored.
    valve.delay_ms.store(0, Ordering::Relaxed);
    let c = start(&broker, &dir, &valve).await;
    let unacked: Vec<u64> = (1..=N).filter(|s| !acked.contains(s)).collect();
    for s in unacked {
        publish(&agent, &u, boot, s..=s).await;
    }
    eventually("every record stored", Duration::from_secs(30), || async {
        valve.stored().len() as u64 == N
    })
    .await;
    agent.wait_acked(&u, boot, 1..=N).await;
    c.stop().await;
}
