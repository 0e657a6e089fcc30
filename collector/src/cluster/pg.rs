//! The PostgreSQL edge of cluster mode: versioned migrations, the lease
//! table driven by [`super::lease::plan`], and the fence every state write
//! passes first.
//!
//! Contract:
//!
//! * [`migrate`] applies the repo's migrations (`collector/migrations/`,
//!   [`MIGRATIONS`]) that the database lacks, in one transaction under an
//!   advisory lock, so collectors starting together apply each once; a
//!   database that has a migration this build does not know is refused
//!   (a newer build ran there: no downgrade).
//! * Every lease write is a compare-and-set on the partition's epoch (and
//!   owner), with expiry judged by the database's `now()`: of two
//!   collectors acting on one snapshot, at most one wins a partition, and a
//!   lost race is simply not held. A tick's writes are one statement per
//!   kind (renew, acquire, release) over all its partitions, so its cost
//!   does not grow with the partitions held.
//! * [`fence`] runs first in every transaction that writes a partition's
//!   state: it takes the lease row `FOR SHARE` only if this collector still
//!   holds it at that epoch, unexpired. The row lock makes a takeover (an
//!   UPDATE of that row) wait until the write commits, so the new owner
//!   starts after the old owner's last write, never during it. Refused:
//!   [`PgError::Fenced`].

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::{Client, GenericClient};

use super::lease::{Action, Held, Lease, plan};

/// The repo's migrations: (version, name, SQL), in order.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "leases",
        include_str!("../../migrations/0001_leases.sql"),
    ),
    (2, "state", include_str!("../../migrations/0002_state.sql")),
    (
        3,
        "webhooks",
        include_str!("../../migrations/0003_webhooks.sql"),
    ),
    (
        4,
        "incident_shares",
        include_str!("../../migrations/0004_incident_shares.sql"),
    ),
];

/// The advisory lock key migrations take ("muster" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d75_7374_6572;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error(
        "the database has migration {version}, which this build does not know (a newer build ran there)"
    )]
    NewerSchema { version: i32 },
    #[error("partition {partition}: lease epoch {epoch} is no longer held; write refused")]
    Fenced { partition: u32, epoch: u64 },
}

/// Applies the migrations the database lacks; the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, PgError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS muster_migrations (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM muster_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(v) = applied
        .iter()
        .find(|v| !MIGRATIONS.iter().any(|(known, _, _)| known == *v))
    {
        return Err(PgError::NewerSchema { version: *v });
    }
    let mut now = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO muster_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        now.push(*version);
    }
    tx.commit().await?;
    Ok(now)
}

/// The lease table as one collector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The database's clock, unix ms.
    pub now_ms: u64,
    pub leases: Vec<Lease>,
    /// Collectors whose heartbeat is younger than the lease TTL.
    pub live: Vec<String>,
}

/// One collector's view of the lease table.
#[derive(Debug, Clone)]
pub struct LeaseTable {
    pub partitions: u32,
    pub me: String,
    pub ttl: Duration,
    /// How long before the database's expiry this collector stops acting.
    pub margin: Duration,
}

/// One kind of action's partitions and epochs, as the two array
/// parameters its statement unnests.
#[derive(Default)]
struct Columns {
    partitions: Vec<i32>,
    epochs: Vec<i64>,
}

impl Columns {
    fn push(&mut self, partition: u32, epoch: u64) {
        self.partitions.push(partition as i32);
        self.epochs.push(epoch as i64);
    }

    fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl LeaseTable {
    /// Says this collector is alive (for [`Snapshot::live`]).
    pub async fn heartbeat(&self, c: &impl GenericClient) -> Result<(), PgError> {
        c.execute(
            "INSERT INTO collectors (id, heartbeat_at) VALUES ($1, now())
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
            &[&self.me],
        )
        .await?;
        Ok(())
    }

    pub async fn read(&self, c: &impl GenericClient) -> Result<Snapshot, PgError> {
        let now: i64 = c
            .query_one("SELECT (extract(epoch FROM now()) * 1000)::bigint", &[])
            .await?
            .get(0);
        let leases = c
            .query(
                "SELECT partition, owner, epoch,
                        (extract(epoch FROM expires_at) * 1000)::bigint
                 FROM partition_leases ORDER BY partition",
                &[],
            )
            .await?
            .iter()
            .map(|r| Lease {
                partition: r.get::<_, i32>(0) as u32,
                owner: r.get(1),
                epoch: r.get::<_, i64>(2) as u64,
                expires_ms: r.get::<_, i64>(3).max(0) as u64,
            })
            .collect();
        let live = c
            .query(
                "SELECT id FROM collectors
                 WHERE heartbeat_at > now() - $1::bigint * interval '1 millisecond'
                 ORDER BY id",
                &[&ms(self.ttl)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(Snapshot {
            now_ms: now.max(0) as u64,
            leases,
            live,
        })
    }

    /// Applies `actions` (each a compare-and-set); the leases held after
    /// them, valid by this collector's monotonic clock from `sent_ms`.
    ///
    /// One statement per kind of action, whatever the number of
    /// partitions: a tick costs the same few round trips for 1 partition
    /// or 1024, so a slow database stretches it, never multiplies it (CI
    /// run of 0cc4ea7: 64 one-row statements under load outlasted the
    /// renewal timeout at every tick, and a first collector never held a
    /// partition).
    pub async fn apply(
        &self,
        c: &impl GenericClient,
        actions: &[Action],
        sent_ms: u64,
    ) -> Result<BTreeMap<u32, Held>, PgError> {
        let ttl = ms(self.ttl);
        let held = |epoch| Held::new(epoch, sent_ms, ttl as u64, ms(self.margin) as u64);
        let (mut renew, mut acquire, mut release) =
            (Columns::default(), Columns::default(), Columns::default());
        for a in actions {
            match *a {
                Action::Renew { partition, epoch } => renew.push(partition, epoch),
                Action::Acquire { partition, epoch } => acquire.push(partition, epoch),
                Action::Release { partition, epoch } => release.push(partition, epoch),
            }
        }
        let mut out = BTreeMap::new();
        let mut won = |rows: Vec<tokio_postgres::Row>| {
            for r in rows {
                out.insert(r.get::<_, i32>(0) as u32, held(r.get::<_, i64>(1) as u64));
            }
        };
        if !renew.is_empty() {
            won(c
                .query(
                    "UPDATE partition_leases AS l
                     SET expires_at = now() + $3::bigint * interval '1 millisecond'
                     FROM unnest($1::int[], $2::bigint[]) AS a(partition, epoch)
                     WHERE l.partition = a.partition AND l.epoch = a.epoch
                       AND l.owner = $4 AND l.expires_at > now()
                     RETURNING l.partition, l.epoch",
                    &[&renew.partitions, &renew.epochs, &ttl, &self.me],
                )
                .await?);
        }
        if !acquire.is_empty() {
            won(c
                .query(
                    "INSERT INTO partition_leases AS l (partition, owner, epoch, expires_at)
                     SELECT a.partition, $4, a.epoch + 1,
                            now() + $3::bigint * interval '1 millisecond'
                     FROM unnest($1::int[], $2::bigint[]) AS a(partition, epoch)
                     ON CONFLICT (partition) DO UPDATE
                     SET owner = excluded.owner, epoch = excluded.epoch,
                         expires_at = excluded.expires_at
                     WHERE l.epoch = excluded.epoch - 1
                       AND (l.owner IS NULL OR l.expires_at <= now())
                     RETURNING l.partition, l.epoch",
                    &[&acquire.partitions, &acquire.epochs, &ttl, &self.me],
                )
                .await?);
        }
        if !release.is_empty() {
            c.execute(
                "UPDATE partition_leases AS l SET owner = NULL
                 FROM unnest($1::int[], $2::bigint[]) AS a(partition, epoch)
                 WHERE l.partition = a.partition AND l.epoch = a.epoch AND l.owner = $3",
                &[&release.partitions, &release.epochs, &self.me],
            )
            .await?;
        }
        Ok(out)
    }

    /// One round: heartbeat, read, plan, apply. `sent_ms` is this
    /// collector's monotonic clock as the round starts.
    pub async fn tick(
        &self,
        c: &impl GenericClient,
        sent_ms: u64,
    ) -> Result<BTreeMap<u32, Held>, PgError> {
        self.heartbeat(c).await?;
        let snap = self.read(c).await?;
        let actions = plan(
            self.partitions,
            &snap.leases,
            &snap.live,
            &self.me,
            snap.now_ms,
        );
        self.apply(c, &actions, sent_ms).await
    }
}

/// The first statement of every transaction that writes `partition`'s
/// state: refused unless `me` still holds it at `epoch`, unexpired; while
/// the transaction lasts, nobody can take the partition (module docs).
pub async fn fence(
    tx: &impl GenericClient,
    partition: u32,
    me: &str,
    epoch: u64,
) -> Result<(), PgError> {
    let row = tx
        .query_opt(
            "SELECT 1 FROM partition_leases
             WHERE partition = $1 AND owner = $2 AND epoch = $3 AND expires_at > now()
             FOR SHARE",
            &[&(partition as i32), &me, &(epoch as i64)],
        )
        .await?;
    match row {
        Some(_) => Ok(()),
        None => Err(PgError::Fenced { partition, epoch }),
    }
}

impl LeaseTable {
    /// A clean stop: gives up every lease this collector holds (epochs
    /// kept: the next owner takes each at epoch + 1) and its heartbeat, so
    /// the others count it gone and take its partitions at their next
    /// tick, not after the TTL.
    pub async fn leave(&self, c: &impl GenericClient) -> Result<u64, PgError> {
        let n = c
            .execute(
                "UPDATE partition_leases SET owner = NULL WHERE owner = $1",
                &[&self.me],
            )
            .await?;
        c.execute("DELETE FROM collectors WHERE id = $1", &[&self.me])
            .await?;
        Ok(n)
    }
}
