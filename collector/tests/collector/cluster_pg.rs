//! Cluster mode's PostgreSQL edge against a real PostgreSQL 15
//! (`muster_testkit::Postgres`): migrations once under concurrency, leases
//! split and taken over through the table's compare-and-sets, and the
//! fence refusing the write of a collector whose lease is gone.
//!
//! A lease running out is made by moving its expiry (and the dead
//! collector's heartbeat) into the past in the table: the database's clock
//! is real and cannot be paused, and waiting out a TTL would only test the
//! clock. The timing rules are the pure planner's tables
//! (`cluster::lease`).

use std::collections::BTreeMap;
use std::time::Duration;

use muster_collector::cluster::lease::Held;
use muster_collector::cluster::pg::{LeaseTable, MIGRATIONS, PgError, fence, migrate};
use muster_testkit::Postgres;
use tokio_postgres::{Client, NoTls};

async fn connect(pg: &Postgres) -> Client {
    let (client, conn) = tokio_postgres::connect(&pg.url(), NoTls)
        .await
        .expect("connect to the test postgres");
    tokio::spawn(conn);
    client
}

fn table(me: &str) -> LeaseTable {
    LeaseTable {
        partitions: 8,
        me: me.into(),
        ttl: Duration::from_secs(10),
        margin: Duration::from_secs(2),
    }
}

fn epochs(held: &BTreeMap<u32, Held>) -> Vec<(u32, u64)> {
    held.iter().map(|(p, h)| (*p, h.epoch)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_a_newer_schema_is_refused() {
    let pg = Postgres::start();
    let (mut a, mut b) = (connect(&pg).await, connect(&pg).await);
    let (ra, rb) = tokio::join!(migrate(&mut a), migrate(&mut b));
    let mut applied = [ra.unwrap(), rb.unwrap()];
    applied.sort();
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
    assert_eq!(
        applied,
        [vec![], all],
        "one collector applied them, the other none"
    );
    assert_eq!(migrate(&mut a).await.unwrap(), Vec::<i32>::new());
    pg.psql("INSERT INTO muster_migrations (version, name) VALUES (9999, 'from the future')")
        .unwrap();
    match migrate(&mut a).await {
        Err(PgError::NewerSchema { version: 9999 }) => {}
        other => panic!("a newer schema was not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_split_move_on_expiry_and_fence_the_old_owner() {
    let pg = Postgres::start();
    let (mut a, b) = (connect(&pg).await, connect(&pg).await);
    migrate(&mut a).await.unwrap();
    let (ta, tb) = (table("collector-a"), table("collector-b"));

    // a alone: every partition, at epoch 1.
    let held_a = ta.tick(&a, 0).await.unwrap();
    assert_eq!(epochs(&held_a), (0..8).map(|p| (p, 1)).collect::<Vec<_>>());

    // b joins: a keeps 0..4 and releases 4..8, which b takes at epoch 2.
    tb.heartbeat(&b).await.unwrap();
    let held_a = ta.tick(&a, 1).await.unwrap();
    assert_eq!(held_a.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
    let held_b = tb.tick(&b, 1).await.unwrap();
    assert_eq!(epochs(&held_b), (4..8).map(|p| (p, 2)).collect::<Vec<_>>());

    // Both write their own partitions; a cannot write b's.
    for (c, me, p, epoch) in [(&a, "collector-a", 0, 1), (&b, "collector-b", 4, 2)] {
        fence(c, p, me, epoch).await.unwrap();
    }
    assert!(matches!(
        fence(&a, 4, "collector-a", 1).await,
        Err(PgError::Fenced { partition: 4, .. })
    ));

    // Two collectors acting on one snapshot: one wins a free partition.
    pg.psql("UPDATE partition_leases SET owner = NULL WHERE partition = 7")
        .unwrap();
    let snap = tb.read(&b).await.unwrap();
    let grab = vec![muster_collector::cluster::lease::Action::Acquire {
        partition: 7,
        epoch: snap.leases[7].epoch,
    }];
    let won_a = ta.apply(&a, &grab, 2).await.unwrap();
    let won_b = tb.apply(&b, &grab, 2).await.unwrap();
    assert_eq!((won_a.len(), won_b.len()), (1, 0), "exactly one wins");
    assert_eq!(won_a[&7].epoch, 3);
    // A free partition taken on a stale snapshot (epoch 2, now 3) is
    // refused: the epoch never goes back. Several partitions in one
    // apply: each stands or falls on its own.
    pg.psql("UPDATE partition_leases SET owner = NULL WHERE partition IN (6, 7)")
        .unwrap();
    let stale = vec![
        muster_collector::cluster::lease::Action::Acquire {
            partition: 7,
            epoch: snap.leases[7].epoch,
        },
        muster_collector::cluster::lease::Action::Acquire {
            partition: 6,
            epoch: snap.leases[6].epoch,
        },
    ];
    let won_b = tb.apply(&b, &stale, 2).await.unwrap();
    assert_eq!(epochs(&won_b), [(6, 3)], "only the current epoch wins");

    // a is cut off: its heartbeat and leases run out. b takes them over at
    // the next epoch, and a's write with the epoch it held is refused.
    pg.psql(
        "UPDATE collectors SET heartbeat_at = now() - interval '1 hour' WHERE id = 'collector-a';
         UPDATE partition_leases SET expires_at = now() - interval '1 millisecond'
         WHERE owner = 'collector-a'",
    )
    .unwrap();
    let held_b = tb.tick(&b, 3).await.unwrap();
    assert_eq!(
        epochs(&held_b),
        [
            (0, 2),
            (1, 2),
            (2, 2),
            (3, 2),
            (4, 2),
            (5, 2),
            (6, 3),
            (7, 4)
        ]
    );
    let refused = fence(&a, 0, "collector-a", 1).await;
    assert!(
        matches!(
            refused,
            Err(PgError::Fenced {
                partition: 0,
                epoch: 1
            })
        ),
        "{refused:?}"
    );
    eprintln!("the cut-off collector's write: {}", refused.unwrap_err());
    fence(&b, 0, "collector-b", 2).await.unwrap();
    // a comes back: nothing to renew, and it is under its share only once
    // b sheds (b is over: 8 of 4). Its renewal of the old epoch fails.
    let back = ta
        .apply(
            &a,
            &[muster_collector::cluster::lease::Action::Renew {
                partition: 0,
                epoch: 1,
            }],
            4,
        )
        .await
        .unwrap();
    assert!(back.is_empty(), "a renewed a lease it lost");
}

/// The fence holds the lease row while the write's transaction lasts:
/// neither the expiry nor a takeover can change the row until the write
/// commits (each tried with a lock timeout, and refused by it); then both
/// go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_the_fenced_write_to_commit() {
    use muster_collector::cluster::lease::Action;
    let pg = Postgres::start();
    let (mut a, mut b) = (connect(&pg).await, connect(&pg).await);
    migrate(&mut a).await.unwrap();
    let (ta, tb) = (table("collector-a"), table("collector-b"));
    ta.tick(&a, 0).await.unwrap();
    let tx = a.transaction().await.unwrap();
    fence(&tx, 0, "collector-a", 1).await.unwrap();
    let expire = "UPDATE partition_leases SET expires_at = now() - interval '1 millisecond'
                  WHERE partition = 0";
    let lock_timeout = |e: &tokio_postgres::Error| {
        e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
    };
    {
        let t = b.transaction().await.unwrap();
        t.execute("SET LOCAL lock_timeout = '200ms'", &[])
            .await
            .unwrap();
        let e = t.execute(expire, &[]).await.unwrap_err();
        assert!(
            lock_timeout(&e),
            "the expiry went through under a's write: {e}"
        );
    }
    {
        let t = b.transaction().await.unwrap();
        t.execute("SET LOCAL lock_timeout = '200ms'", &[])
            .await
            .unwrap();
        let take = [Action::Acquire {
            partition: 0,
            epoch: 1,
        }];
        match tb.apply(&t, &take, 0).await {
            Err(PgError::Db(e)) if lock_timeout(&e) => {}
            other => panic!("the takeover did not wait for a's write: {other:?}"),
        }
    }
    tx.commit().await.unwrap();
    b.execute(expire, &[]).await.unwrap();
    let won = tb
        .apply(
            &b,
            &[Action::Acquire {
                partition: 0,
                epoch: 1,
            }],
            0,
        )
        .await
        .unwrap();
    assert_eq!(epochs(&won), [(0, 2)]);
}
