//! A full data disk (a small tmpfs): a clear error and a readiness
//! failure, not a crash and not a crash loop; nothing unstored is acked;
//! it stops cleanly, and once there is room again a restart on the same
//! store takes everything the agent resends. (The embedded store cannot
//! write again in place after a failed write: see ARCHITECTURE.md,
//! "Backpressure".) Mounting needs
//! root, which the suite has (`.ci/run` runs as root): a failed mount is a
//! failure, not a skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use muster_collector::clock::ManualClock;
use muster_proto::{Body, BootId, Record, fixtures};
use muster_testkit::{Mosquitto, TempDir, eventually, http};

use crate::harness::{Agent, Collector, T0, collector_config, host, unit};
use crate::valve::Valve;

/// A tmpfs of a given size, unmounted on drop.
struct Tmpfs {
    _dir: TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(mib: u32) -> Tmpfs {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            ok.success(),
            "mount a {mib} MiB tmpfs (the suite runs as root)"
        );
        Tmpfs { _dir: dir, path }
    }

    fn resize(&self, mib: u32) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.path)
            .status()
            .expect("run mount");
        assert!(ok.success(), "remount to {mib} MiB");
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn batch(boot: BootId, seqs: std::ops::RangeInclusive<u64>) -> Body {
    Body::Batch(
        seqs.map(|seq| {
            let mut r: Record = fixtures::record(seq, host(20.0));
            r.boot = boot;
            r.at_ms = T0 + seq * 1_000;
            r
        })
        .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error_and_not_ready_and_ingest_resumes_when_there_is_room() {
    let fs = Tmpfs::mount(8);
    let broker = Mosquitto::start();
    let text = collector_config(&broker, &fs.path().join("store"), "collector-disk-full")
        .set_str("ingest", "overload_wait", "300ms")
        .render();
    let valve = Valve::new();
    let c = Collector::start_with(&text, ManualClock::new(T0), valve.wiring()).await;
    let agent = Agent::connect(&broker, "disk-full-agent", None).await;
    let u = unit("metro-fire", "E9");
    let boot = BootId(4);

    // Fill the disk: batches of 200 records until a commit fails.
    let started = Instant::now();
    let mut sent = 0u64;
    while c.metric("muster_store_errors_total ").await == 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the store never failed on an 8 MiB disk ({sent} records sent)"
        );
        agent.send(&u, batch(boot, sent + 1..=sent + 200)).await;
        sent += 200;
        if sent.is_multiple_of(2_000) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!("the store failed after {sent} records sent");

    // Not ready, says why, and still serving.
    eventually("not ready", Duration::from_secs(10), || async {
        let r = http::get(c.addr, "/readyz", None).await;
        r.status == 503 && r.json()["store"] == false
    })
    .await;
    assert_eq!(http::get(c.addr, "/healthz", None).await.status, 200);
    // No ack covers a record that is not stored.
    let stored = valve.stored();
    for seq in 1..=sent {
        if agent.acked(&u, boot, [seq]) {
            assert!(
                stored.contains(&(u.clone(), boot.0, seq)),
                "seq {seq} acked, not stored"
            );
        }
    }
    eprintln!(
        "disk full: {} of {sent} records stored and acked; /readyz 503 (store false)",
        stored.len()
    );

    // It stops within systemd's stop timeout even so.
    let asked = Instant::now();
    c.stop().await;
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "stopped in {:?}",
        asked.elapsed()
    );

    // Room again: a restart on the same store takes what the agent resends
    // (a real agent resends what is unacked on the new collector's hello).
    fs.resize(256);
    let resumed = Instant::now();
    let c = Collector::start_with(&text, ManualClock::new(T0), valve.wiring()).await;
    let unacked: Vec<u64> = (1..=sent)
        .filter(|s| !agent.acked(&u, boot, [*s]))
        .collect();
    for chunk in unacked.chunks(200) {
        agent
            .send(&u, batch(boot, chunk[0]..=chunk[chunk.len() - 1]))
            .await;
    }
    agent.wait_acked(&u, boot, 1..=sent).await;
    eventually("every record stored", Duration::from_secs(30), || async {
        valve.stored().len() as u64 == sent
    })
    .await;
    eprintln!(
        "room again: restarted, all {sent} stored and acked in {:?}",
        resumed.elapsed()
    );
    c.stop().await;
}
