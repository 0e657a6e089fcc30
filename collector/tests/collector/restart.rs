//! Restarts: a clean stop and a `kill -9` lose nothing that was acked.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use muster_proto::{Body, BootId};
use muster_testkit::{Mosquitto, signal};

use crate::harness::*;
use muster_testkit::{eventually, eventually_every, http};

async fn sample_seqs(addr: SocketAddr, agency: &str, unit: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut path = format!("/api/v1/units/{agency}/{unit}/samples?limit=1000");
    loop {
        let r = http::get(addr, &path, Some(ADMIN)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let p = r.json();
        out.extend(
            p["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["seq"].as_u64().unwrap()),
        );
        match p["next_cursor"].as_str() {
            Some(c) => {
                path = format!("/api/v1/units/{agency}/{unit}/samples?limit=1000&cursor={c}")
            }
            None => {
                // Pages are in event-time order; callers compare seq sets.
                out.sort_unstable();
                return out;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_keeps_units_samples_events_and_seq_state() {
    let mut w = World::start("").await;
    let a = w.agent("agent").await;
    let u = unit("metro-fire", "E1");
    let boot = BootId(21);
    a.send(
        &u,
        Body::Batch(
            (1..=50)
                .map(|s| rec(boot, s, T0 + s * 100, host(10.0)))
                .collect(),
        ),
    )
    .await;
    a.wait_acked(&u, boot, 1..=50).await;
    // A transition to remember: the will.
    let wa = Agent::connect(&w.broker, "e1", Some((&u, online(boot, 1, T0, false)))).await;
    wa.presence(&u, online(boot, 1, T0, true)).await;
    w.c().wait_unit(&u, "online", |v| v["online"] == true).await;
    wa.cut();
    w.c()
        .wait_unit(&u, "offline", |v| v["status"] == "lost")
        .await;
    let events_before = w.c().json("/api/v1/events", ADMIN).await;

    w.stop_collector().await;
    w.start_collector().await;
    let c = w.c();
    let v = c.unit(&u).await.expect("unit survives a restart");
    assert_eq!(v["seq"]["received"], 50);
    assert_eq!(v["status"], "lost");
    assert_eq!(
        sample_seqs(c.addr, "metro-fire", "E1").await,
        (1..=50).collect::<Vec<_>>()
    );
    assert_eq!(
        c.json("/api/v1/events", ADMIN).await["items"],
        events_before["items"]
    );
    // Seq state survived: a resend is a duplicate, not new data.
    a.record(&u, rec(boot, 50, T0 + 5_000, host(10.0))).await;
    a.record(&u, rec(boot, 51, T0 + 5_100, host(10.0))).await;
    let v = c
        .wait_unit(&u, "51 received", |v| v["seq"]["received"] == 51)
        .await;
    assert_eq!(v["seq"]["duplicates"], 1);
    // New events continue the id sequence.
    let ev = c.json("/api/v1/events", ADMIN).await;
    assert!(ev["items"][0]["id"].as_u64() >= events_before["items"][0]["id"].as_u64());
}

/// Never leaves a collector behind, whatever the test did.
struct Proc {
    child: muster_testkit::KillOnDrop,
    addr: SocketAddr,
}

fn spawn_collector(config: &std::path::Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_muster-collector"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start muster-collector");
    let Some(addr) = muster_testkit::collector_listen_addr(child.stdout.take().unwrap()) else {
        let _ = child.kill();
        panic!("muster-collector exited before saying where it listens");
    };
    Proc {
        child: muster_testkit::KillOnDrop(child),
        addr,
    }
}

async fn wait_ready(addr: SocketAddr) {
    eventually("collector ready", Duration::from_secs(20), || async {
        match http::get(addr, "/readyz", None).await {
            r if r.status == 200 => Ok(()),
            r => Err(r.text()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acked_record() {
    let broker = Mosquitto::start();
    let dir = muster_testkit::TempDir::new().unwrap();
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        config_text(&broker, &dir.path().join("store"), "collector-k9", ""),
    )
    .unwrap();
    let a = Agent::connect(&broker, "agent", None).await;
    let u = unit("metro-fire", "K9");
    let boot = BootId(99);
    let total = 3_000u64;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let mut next = 1u64;
    for round in 0..3 {
        let mut p = spawn_collector(&config);
        wait_ready(p.addr).await;
        // Everything acked before any earlier kill is there.
        let acked: Vec<u64> = (1..next).filter(|&s| a.acked(&u, boot, [s])).collect();
        if !acked.is_empty() {
            let stored = sample_seqs(p.addr, "metro-fire", "K9").await;
            let missing: Vec<u64> = acked
                .iter()
                .copied()
                .filter(|s| stored.binary_search(s).is_err())
                .collect();
            assert!(
                missing.is_empty(),
                "round {round}: acked but lost: {missing:?}"
            );
        }
        // Publish a slice, kill -9 while acks are still flowing.
        let end = (next + total / 3).min(total + 1);
        for chunk in (next..end).collect::<Vec<_>>().chunks(50) {
            let t = now();
            a.send(
                &u,
                Body::Batch(chunk.iter().map(|&s| rec(boot, s, t, host(10.0))).collect()),
            )
            .await;
        }
        next = end;
        eventually_every(
            "a first ack",
            Duration::from_secs(20),
            Duration::from_millis(5),
            || async { (1..next).any(|s| a.acked(&u, boot, [s])) },
        )
        .await;
        signal(p.child.id(), "KILL");
        let _ = p.child.wait();
        drop(p);
    }
    // Final start: resend whatever was never acked (what an agent does);
    // then every record is there exactly once.
    let mut p = spawn_collector(&config);
    wait_ready(p.addr).await;
    let acked_before: Vec<u64> = (1..next).filter(|&s| a.acked(&u, boot, [s])).collect();
    let stored = sample_seqs(p.addr, "metro-fire", "K9").await;
    for s in &acked_before {
        assert!(
            stored.binary_search(s).is_ok(),
            "acked seq {s} lost by kill -9"
        );
    }
    let unacked: Vec<u64> = (1..next).filter(|&s| !a.acked(&u, boot, [s])).collect();
    for chunk in unacked.chunks(100) {
        a.send(
            &u,
            Body::Batch(
                chunk
                    .iter()
                    .map(|&s| rec(boot, s, now(), host(10.0)))
                    .collect(),
            ),
        )
        .await;
    }
    a.wait_acked(&u, boot, 1..next).await;
    let r = http::get(p.addr, "/api/v1/units/metro-fire/K9", Some(ADMIN)).await;
    let v = r.json();
    assert_eq!(v["seq"]["received"], next - 1);
    assert_eq!(v["seq"]["missing"], 0);
    let stored = sample_seqs(p.addr, "metro-fire", "K9").await;
    assert!(
        stored == (1..next).collect::<Vec<_>>(),
        "{} samples stored for {} records",
        stored.len(),
        next - 1
    );
    signal(p.child.id(), "TERM");
    let status = p.child.wait().unwrap();
    assert!(status.success(), "clean stop on SIGTERM: {status}");
}
