//! Ingest, dedup, gaps, acks.

use muster_proto::{Body, BootId};

use std::sync::Arc;

use muster_collector::clock::ManualClock;
use muster_testkit::{Mosquitto, TempDir, eventually};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingests_records_and_batches_and_acks_them() {
    let w = World::start("").await;
    let c = w.c();
    let a = w.agent("agent-1").await;
    let u = unit("metro-fire", "E12");
    let boot = BootId(0xabc);
    a.record(&u, rec(boot, 1, T0, host(20.0))).await;
    a.send(
        &u,
        Body::Batch(vec![
            rec(boot, 2, T0 + 5_000, host(21.0)),
            rec(
                boot,
                3,
                T0 + 10_000,
                probe("cad-api", "https://cad/health", true),
            ),
        ]),
    )
    .await;
    c.wait_unit(&u, "3 records", |v| v["seq"]["received"] == 3)
        .await;
    // The unit's state moves on decode; `latest` comes from the store, which
    // has the records once they are acked (committed).
    a.wait_acked(&u, boot, 1..=3).await;
    let v = c.unit(&u).await.unwrap();
    assert_eq!(v["seq"]["duplicates"], 0);
    assert_eq!(v["seq"]["missing"], 0);
    assert_eq!(v["seq"]["boot"], "0000000000000abc");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["last_at_ms"], T0 + 10_000);
    assert_eq!(v["interval_ms"], 5_000);
    assert_eq!(v["latest"]["host"]["seq"], 2);
    assert_eq!(v["latest"]["host"]["kind"], "host");
    assert_eq!(v["latest"]["probes"][0]["data"]["name"], "cad-api");

    let s = c
        .json("/api/v1/units/metro-fire/E12/samples?since=0", ADMIN)
        .await;
    let seqs: Vec<u64> = s["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    // Pagination: one at a time, following next_cursor.
    let mut got = Vec::new();
    let mut path = "/api/v1/units/metro-fire/E12/samples?limit=1".to_owned();
    loop {
        let p = c.json(&path, ADMIN).await;
        got.extend(
            p["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["seq"].as_u64().unwrap()),
        );
        match p["next_cursor"].as_str() {
            Some(cur) => {
                path = format!("/api/v1/units/metro-fire/E12/samples?limit=1&cursor={cur}")
            }
            None => break,
        }
    }
    assert_eq!(got, [1, 2, 3]);
    // `since` is event time.
    let s = c
        .json(
            &format!("/api/v1/units/metro-fire/E12/samples?since={}", T0 + 5_000),
            ADMIN,
        )
        .await;
    assert_eq!(s["items"].as_array().unwrap().len(), 2);
    let s = c
        .json("/api/v1/units/metro-fire/E12/samples?kind=probe", ADMIN)
        .await;
    assert_eq!(s["items"].as_array().unwrap().len(), 1);
    assert_eq!(s["items"][0]["kind"], "probe");

    assert_eq!(c.metric("muster_ingest_records_total ").await, 3.0);
    assert!(c.metric("muster_store_commits_total ").await >= 1.0);
    assert!(c.metric("muster_acks_published_total ").await >= 1.0);
    drop(a);
    w.collector.unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_dropped_counted_and_acked_again() {
    let w = World::start("").await;
    let c = w.c();
    let a = w.agent("agent-1").await;
    let u = unit("metro-fire", "E7");
    let boot = BootId(7);
    for seq in 1..=5 {
        a.record(&u, rec(boot, seq, T0 + seq * 1000, host(10.0)))
            .await;
    }
    a.wait_acked(&u, boot, 1..=5).await;
    let acks_before = a.inbox.lock().unwrap().acks.len();
    // The agent resends 3..=5 (it never saw their ack) plus new 6.
    a.send(
        &u,
        Body::Batch(
            (3..=6)
                .map(|seq| rec(boot, seq, T0 + seq * 1000, host(10.0)))
                .collect(),
        ),
    )
    .await;
    let v = c
        .wait_unit(&u, "6 received", |v| v["seq"]["received"] == 6)
        .await;
    assert_eq!(v["seq"]["duplicates"], 3);
    assert_eq!(v["seq"]["missing"], 0);
    a.wait_acked(&u, boot, 1..=6).await;
    let acked_again = a.inbox.lock().unwrap().acks[acks_before..]
        .iter()
        .any(|(_, ack)| ack.covers(boot, 3) && ack.covers(boot, 5));
    assert!(acked_again, "the duplicates were acked again");
    // Stored once each.
    let s = c.json("/api/v1/units/metro-fire/E7/samples", ADMIN).await;
    assert_eq!(s["items"].as_array().unwrap().len(), 6);
    assert_eq!(c.metric("muster_ingest_duplicates_total ").await, 3.0);
    // A new boot is accounted separately: same seqs are not duplicates.
    let boot2 = BootId(8);
    a.record(&u, rec(boot2, 1, T0 + 10_000, host(10.0))).await;
    let v = c
        .wait_unit(&u, "new boot", |v| v["seq"]["received"] == 7)
        .await;
    assert_eq!(v["seq"]["boot"], "0000000000000008");
    assert_eq!(v["boots"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_are_counted_and_fill_in() {
    let w = World::start("").await;
    let c = w.c();
    let a = w.agent("agent-1").await;
    let u = unit("metro-fire", "L3");
    let boot = BootId(3);
    for seq in [1, 2, 5, 6, 9] {
        a.record(&u, rec(boot, seq, T0 + seq * 1000, host(10.0)))
            .await;
    }
    let v = c
        .wait_unit(&u, "5 received", |v| v["seq"]["received"] == 5)
        .await;
    assert_eq!(v["seq"]["missing"], 4);
    assert_eq!(v["boots"][0]["max_seq"], 9);
    // Selective ack: 5, 6 and 9 are acked though 3 is missing.
    a.wait_acked(&u, boot, [1, 2, 5, 6, 9]).await;
    assert!(!a.acked(&u, boot, [3]));
    let list = c.json("/api/v1/units", ADMIN).await;
    assert_eq!(list["items"][0]["seq"]["missing"], 4);
    assert!(
        c.metric("muster_unit_records_missing{agency=\"metro-fire\"}")
            .await
            == 4.0
    );
    // The backlog arrives.
    a.send(
        &u,
        Body::Batch(
            [3, 4, 7, 8]
                .into_iter()
                .map(|seq| rec(boot, seq, T0 + seq * 1000, host(10.0)))
                .collect(),
        ),
    )
    .await;
    let v = c
        .wait_unit(&u, "gaps filled", |v| v["seq"]["missing"] == 0)
        .await;
    assert_eq!(v["seq"]["received"], 9);
    a.wait_acked(&u, boot, 1..=9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collectors_in_a_shared_group_split_the_stream() {
    let broker = Mosquitto::start();
    let dirs = [TempDir::new().unwrap(), TempDir::new().unwrap()];
    let clock = ManualClock::new(T0);
    let mut cs = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let text = collector_config(&broker, &d.path().join("store"), &format!("collector-{i}"))
            .set_str("mqtt", "shared_group", "collectors")
            .render();
        cs.push(Collector::start(&text, Arc::clone(&clock)).await);
    }
    let a = Agent::connect(&broker, "agent", None).await;
    let boot = BootId(4);
    let units: Vec<_> = (0..10)
        .map(|i| unit("metro-fire", &format!("S{i}")))
        .collect();
    for seq in 1..=10 {
        for u in &units {
            a.record(u, rec(boot, seq, T0 + seq * 1000, host(10.0)))
                .await;
        }
    }
    for u in &units {
        a.wait_acked(u, boot, 1..=10).await;
    }
    // Every record went to exactly one of the two.
    // (Waits for all 100 to be counted; a record taken twice would show as
    // a sum over 100.)
    let per = eventually(
        "all 100 records ingested",
        std::time::Duration::from_secs(10),
        async || {
            let mut per = Vec::new();
            for c in &cs {
                per.push(c.metric("muster_ingest_records_total ").await);
            }
            if per.iter().sum::<f64>() >= 100.0 {
                Ok(per)
            } else {
                Err(per)
            }
        },
    )
    .await;
    assert_eq!(per.iter().sum::<f64>(), 100.0, "{per:?}");
    assert!(
        per.iter().all(|&n| n > 0.0),
        "both collectors took a share: {per:?}"
    );
    for c in cs {
        c.stop().await;
    }
}
