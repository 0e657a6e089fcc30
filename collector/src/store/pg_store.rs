//! The PostgreSQL store, for cluster mode (issue 15): several collectors
//! share one fleet's state in one database, each writing only the
//! partitions it holds a lease on (`cluster::pg`). Schema:
//! `collector/migrations/0002_state.sql`, applied by
//! [`crate::cluster::pg::migrate`] at [`PgStore::open`].
//!
//! Contract:
//!
//! * Durability: [`Store::commit`] is ONE transaction; `Ok` means it
//!   committed (PostgreSQL's default `synchronous_commit`: the WAL is
//!   flushed), so ingest may ack. An error means nothing of the batch was
//!   written, except after a lost connection or a timeout during the
//!   COMMIT itself, where it may or may not have committed: the records
//!   were not acked, are resent, and a resent sample is a no-op
//!   (`ON CONFLICT DO NOTHING` on `(unit, boot, seq)`). `put_enrollment` is
//!   one durable transaction too.
//! * Fencing: a commit first computes the partition
//!   ([`crate::cluster::partition::of`]) of every unit it touches (samples,
//!   units, transition events; incidents are agency-wide and written as
//!   given) and runs [`crate::cluster::pg::fence`] for each, in ascending
//!   order, as the transaction's first statements, with the epoch from
//!   [`HeldEpochs`]. A partition not held, or a fence refused, fails the
//!   whole commit with [`StoreError::Fenced`] and writes nothing. The fence
//!   holds the lease rows `FOR SHARE` until the commit, so a takeover waits
//!   for this collector's last write.
//! * Event ids come from the store, not from the batch: a commit with
//!   events takes `pg_advisory_xact_lock(ORDER_LOCK)`, gives ids
//!   `max(id)+1..` in batch order (never below an id prune deleted), and
//!   holds the lock until it commits. Commits therefore become visible in id
//!   order across collectors: a reader that sees id `n` sees every id below
//!   it that will ever exist, and one tailing [`PgStore::events_after`]
//!   never skips an id that commits later. Unit revs (`units.rev`, from a
//!   sequence) are taken under the same lock, so
//!   [`PgStore::units_changed_since`] pages by rev without skipping either.
//!   The price: commits that write events or units are serialised from
//!   that point to their commit (their samples are written before it).
//!   Incident shares (`incident_shares.rev`) are written under the same
//!   lock and fenced by their partition, like units; the coordinator's
//!   incidents by partition 0 ([`PgStore::commit_fenced_on`]).
//! * Connections: a fixed pool of `pool` clients and one small tokio
//!   runtime (two `muster-pg` threads) of the store's own, on which the
//!   connections and every query run. Each sync method submits its work
//!   there and waits on a channel, so it may be called from any thread (a
//!   runtime's worker, a blocking-pool thread, a plain thread); it never
//!   blocks on a runtime of the caller's. A client whose connection closed
//!   (a PostgreSQL restart) is replaced on its next use: restarts heal by
//!   themselves.
//! * Timeouts: every call, connecting included, is bounded by the store's
//!   timeout ([`DEFAULT_TIMEOUT`], 10 s) and then returns
//!   `StoreError::Postgres("timeout ...")` (its client is dropped: the
//!   server rolls the transaction back). The server bounds each statement by
//!   the same `statement_timeout`, and an idle transaction by twice it, so
//!   a stalled collector cannot hold a lock for long. Failures are errors,
//!   never panics.
//! * Retention (`retain`): `commit` marks each (unit, minute) it writes a
//!   sample to in `dirty_minutes`; a sample whose minute is below the raw
//!   watermark is stored `late` (the commit reads the watermark holding
//!   `WATERMARK_LOCK` shared, and only a retention transaction holding it
//!   exclusively moves it). A round takes the marks from before it started
//!   (later ones wait for the next round, so a round ends under any
//!   ingest), [`ROLL_BATCH`] a transaction, skipping marks a running commit
//!   has locked (a commit upserts its marks `DO UPDATE`, so a round never
//!   takes a mark whose records it cannot see yet). Per mark: a minute whose
//!   raw records are all kept is rebuilt from them (`rollup::roll`); a
//!   minute below the raw watermark gets its late records merged in
//!   (`rollup::merge`), and they are deleted in the same transaction, so
//!   none counts twice; a minute below the minute watermark merges its late
//!   records into the hour. Every hour whose minutes changed is
//!   `rollup::roll_hour` of its minutes as stored. Then the watermarks move
//!   to the cut-offs in one short transaction that never moves the raw one
//!   past a marked minute (it rolls up to [`ROLL_BATCH`] of them first and
//!   stops short of the rest), and raw records, minutes and hours below
//!   them are deleted, [`PRUNE_BATCH`] rows a transaction. Watermarks: raw
//!   by the minute, minutes and hours by the hour, raw >= minutes >= hours.
//!   Rounds of several collectors may overlap: their transactions serialise
//!   on `RETAIN_LOCK` and share the marks. Each transaction is atomic (not a
//!   unit's whole round, as in the fjall store: a unit's marks may fall
//!   into two transactions, each leaving its hours consistent); an
//!   interrupted round leaves marks that the next one takes.
//!   [`RetainStats`]: `minutes_from_raw` counts the minutes rebuilt from
//!   raw (every minute whose raw records are kept: no merge shortcut here),
//!   the `*_pruned` fields count rows.
//! * `prune`: raw samples before the cut's minute (moving the raw watermark
//!   as `retain` does), events whose time (an incident's end, else its
//!   start) is before the event cut (all of them, not only a prefix of ids
//!   as the fjall store), and incidents that ended before it; in batches.
//! * Reads: `load_units` is the whole fleet (every partition);
//!   [`PgStore::load_units_in`] a takeover's partitions. `last_event_id` is
//!   the highest id given, even once pruned. `size_on_disk` is the whole
//!   database's size. Enrolments are not fenced (any collector answers a
//!   claim).
//! * Bounded: each transaction's work (marks rolled, rows deleted, samples a
//!   listing or `latest` reads) is bounded; a commit is as large as its
//!   batch. u64 values are stored as bigint: boot ids as `boot XOR 2^63`
//!   (order-preserving, lossless), everything else (times, seqs, ids,
//!   epochs) clamped to `i64::MAX`, which real values never reach.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::str::FromStr;
use std::sync::mpsc::{RecvTimeoutError, sync_channel};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use futures_util::future::{BoxFuture, try_join_all};
use muster_proto::{Body, Message, UnitId};
use tokio::sync::{Mutex, Semaphore};
use tokio::time::{Instant, timeout_at};
use tokio_postgres::{Client, Config, NoTls, Transaction};

use super::keys::{corrupt, decode_sample, event_at, pick_latest};
use super::rollup::{self, Action, Cutoffs, HOUR_MS, MINUTE_MS, Resolution, Rollup};
use super::{
    CommitBatch, EventQuery, Latest, PruneStats, RetainStats, SampleCursor, SampleQuery, Store,
    StoreError, StoredEvent, StoredSample, UnitRecord,
};
use crate::cluster::partition::{self, MAX_PARTITIONS, PartitionError};
use crate::cluster::pg::{PgError, fence, migrate};
use crate::enroll::registry::Enrollment;
use crate::model::{Change, Incident};
use crate::rules::incident::IncidentShare;

/// How long a call may take, connecting included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a caller waits beyond the timeout for the runtime to answer.
const GRACE: Duration = Duration::from_secs(2);

/// Held by a commit that writes events or units, from its first id or rev
/// to its commit ("musterev" in ASCII).
const ORDER_LOCK: i64 = 0x6d75_7374_6572_6576;

/// Held by each retention transaction ("musterrt" in ASCII).
const RETAIN_LOCK: i64 = 0x6d75_7374_6572_7274;

/// Shared by a commit that writes samples (from reading the raw watermark
/// to its commit), exclusive while retention moves the watermarks
/// ("musterwm" in ASCII): a sample is `late` exactly when its minute is
/// below the watermark it was committed under.
const WATERMARK_LOCK: i64 = 0x6d75_7374_6572_776d;

/// Dirty minutes a retention transaction rolls.
pub const ROLL_BATCH: usize = 256;

/// Rows a pruning transaction deletes.
pub const PRUNE_BATCH: i64 = 10_000;

/// How many of a unit's newest samples `latest` reads (as the fjall store).
const LATEST_SCAN: i64 = 500;

/// Where and as whom a [`PgStore`] connects.
#[derive(Debug, Clone)]
pub struct PgStoreOptions {
    /// `postgres://user@host:port/db` (libpq's keys also work).
    pub url: String,
    /// This collector's id: the owner in `partition_leases`.
    pub me: String,
    /// Partitions the fleet is split into (1 to [`MAX_PARTITIONS`]).
    pub partitions: u32,
    /// Connections, at least 1.
    pub pool: usize,
}

/// The partitions this collector holds, with their lease epochs: what
/// `commit` fences with. The lease loop sets it after every tick.
#[derive(Debug, Default)]
pub struct HeldEpochs {
    held: RwLock<BTreeMap<u32, u64>>,
}

impl HeldEpochs {
    /// Replaces the whole set (partition -> epoch).
    pub fn set(&self, held: BTreeMap<u32, u64>) {
        *self.held.write().unwrap_or_else(PoisonError::into_inner) = held;
    }

    /// The epoch `partition` is held at, if it is held.
    pub fn get(&self, partition: u32) -> Option<u64> {
        self.held
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&partition)
            .copied()
    }

    pub fn snapshot(&self) -> BTreeMap<u32, u64> {
        self.held
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The store (module docs).
pub struct PgStore {
    pool: Arc<Pool>,
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    leases: Arc<HeldEpochs>,
    me: String,
    partitions: u32,
    timeout: Duration,
    /// The database's size as last measured ([`Store::size_on_disk`]):
    /// `/metrics` reads it without waiting on PostgreSQL, and starts one
    /// measurement in the background (never two at once).
    size: Arc<SizeCache>,
}

/// The last measured database size, and whether a measurement is running.
#[derive(Debug, Default)]
struct SizeCache {
    bytes: std::sync::atomic::AtomicU64,
    busy: std::sync::atomic::AtomicBool,
}

/// A unit, minute: a dirty mark.
type Mark = (String, String, u64);

/// One piece of work on a pooled client.
type Op<T> = Box<dyn for<'c> FnOnce(&'c mut Client) -> BoxFuture<'c, Result<T, StoreError>> + Send>;

/// A tokio-postgres error with its causes (its own text is only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

trait PgResult<T> {
    fn pg(self) -> Result<T, StoreError>;
}

impl<T> PgResult<T> for Result<T, tokio_postgres::Error> {
    fn pg(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Postgres(describe(&e)))
    }
}

/// A u64 as bigint: clamped (times, seqs, ids never reach 2^63).
fn db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A bigint as u64 (negative: 0; the store writes none).
fn un(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A boot id as bigint, order-preserving and lossless (boot ids are random
/// u64s).
fn db_boot(boot: u64) -> i64 {
    (boot ^ (1 << 63)) as i64
}

/// A page size plus one (to tell whether more remain).
fn one_more(limit: usize) -> i64 {
    i64::try_from(limit)
        .unwrap_or(i64::MAX - 1)
        .saturating_add(1)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

struct Pool {
    config: Config,
    slots: Vec<Mutex<Option<Client>>>,
    /// As many as slots: a permit guarantees a free slot.
    permits: Semaphore,
    timeout: Duration,
}

impl Pool {
    async fn connect(&self) -> Result<Client, StoreError> {
        let (client, conn) = self.config.connect(NoTls).await.pg()?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %describe(&e), "store: a PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    fn timed_out(&self, what: &str) -> StoreError {
        StoreError::Postgres(format!("timeout: {what} took over {} ms", ms(self.timeout)))
    }

    /// Runs `op` on a free client (connected first if it has none or its
    /// connection closed), all within the timeout.
    async fn run<T>(&self, what: &'static str, op: Op<T>) -> Result<T, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let _permit = match timeout_at(deadline, self.permits.acquire()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(StoreError::Task("the store's pool is closed".into())),
            Err(_) => return Err(self.timed_out(what)),
        };
        let Some(mut slot) = self.slots.iter().find_map(|s| s.try_lock().ok()) else {
            return Err(StoreError::Task("no free connection for a permit".into()));
        };
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = None;
            match timeout_at(deadline, self.connect()).await {
                Ok(Ok(c)) => {
                    tracing::debug!(what, "store: connected to PostgreSQL");
                    *slot = Some(c);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(self.timed_out(what)),
            }
        }
        let Some(client) = slot.as_mut() else {
            return Err(StoreError::Task("no client after connecting".into()));
        };
        match timeout_at(deadline, op(client)).await {
            Ok(r) => {
                if r.is_err() && client.is_closed() {
                    *slot = None;
                }
                r
            }
            Err(_) => {
                // Mid-statement: the connection's state is unknown. Dropping
                // the client closes it; the server rolls back.
                *slot = None;
                Err(self.timed_out(what))
            }
        }
    }

    /// Fills every empty slot (at open).
    async fn connect_all(&self) -> Result<(), StoreError> {
        for s in &self.slots {
            let mut slot = s.lock().await;
            if slot.is_none() {
                *slot = Some(self.connect().await?);
            }
        }
        Ok(())
    }
}

/// Column vectors for `unnest`.
#[derive(Debug, Default)]
struct SampleRows {
    agency: Vec<String>,
    unit: Vec<String>,
    boot: Vec<i64>,
    seq: Vec<i64>,
    at: Vec<i64>,
    payload: Vec<Vec<u8>>,
}

#[derive(Debug, Default)]
struct MarkRows {
    agency: Vec<String>,
    unit: Vec<String>,
    ms: Vec<i64>,
}

impl MarkRows {
    fn push(&mut self, (agency, unit, m): &Mark) {
        self.agency.push(agency.clone());
        self.unit.push(unit.clone());
        self.ms.push(db(*m));
    }

    fn is_empty(&self) -> bool {
        self.agency.is_empty()
    }
}

#[derive(Debug, Default)]
struct IncidentRows {
    id: Vec<String>,
    agency: Vec<String>,
    ended: Vec<Option<i64>>,
    json: Vec<String>,
}

#[derive(Debug, Default)]
struct EventRows {
    agency: Vec<String>,
    unit: Vec<Option<String>>,
    at: Vec<i64>,
    json: Vec<String>,
}

#[derive(Debug, Default)]
struct ShareRows {
    agency: Vec<String>,
    probe: Vec<String>,
    target: Vec<String>,
    partition: Vec<i32>,
    of: Vec<i32>,
    failing: Vec<String>,
    as_of: Vec<i64>,
}

#[derive(Debug, Default)]
struct UnitRows {
    agency: Vec<String>,
    unit: Vec<String>,
    partition: Vec<i32>,
    json: Vec<String>,
}

/// A batch as the commit writes it (built on the caller's thread).
#[derive(Debug, Default)]
struct CommitRows {
    partitions: BTreeSet<u32>,
    samples: SampleRows,
    marks: MarkRows,
    incidents: IncidentRows,
    events: EventRows,
    units: UnitRows,
    shares: ShareRows,
}

impl CommitRows {
    fn new(batch: &CommitBatch, partitions: u32) -> Result<CommitRows, StoreError> {
        let mut rows = CommitRows::default();
        let mut touched = BTreeSet::new();
        let mut part = |u: &UnitId| -> Result<u32, StoreError> {
            let p = partition::of(u, partitions)?;
            touched.insert(p);
            Ok(p)
        };
        // Samples in key order, so concurrent commits lock alike.
        let mut samples: Vec<_> = batch.samples.iter().collect();
        samples.sort_by(|(ua, ra), (ub, rb)| {
            (&ua.agency, &ua.unit, ra.boot.0, ra.seq)
                .cmp(&(&ub.agency, &ub.unit, rb.boot.0, rb.seq))
        });
        let mut marks = BTreeSet::new();
        for (unit, rec) in samples {
            part(unit)?;
            let msg = Message {
                unit: unit.clone(),
                body: Body::Record(rec.clone()),
            };
            let v = muster_proto::encode(&msg).map_err(|e| corrupt("samples", e))?;
            let s = &mut rows.samples;
            s.agency.push(unit.agency.clone());
            s.unit.push(unit.unit.clone());
            s.boot.push(db_boot(rec.boot.0));
            s.seq.push(db(rec.seq));
            s.at.push(db(rec.at_ms));
            s.payload.push(v);
            // Every sample marks its minute (not only rolled-up ones): late
            // records of any kind are deleted by the round that merges
            // their minute.
            marks.insert((
                unit.agency.clone(),
                unit.unit.clone(),
                rollup::floor(un(db(rec.at_ms)), MINUTE_MS),
            ));
        }
        for m in &marks {
            rows.marks.push(m);
        }
        for ev in &batch.events {
            let unit = match &ev.change {
                Change::Transition(t) => {
                    part(&t.unit_id())?;
                    Some(t.unit.clone())
                }
                Change::Incident(_) | Change::Rollout(_) | Change::Automation(_) => None,
            };
            let e = &mut rows.events;
            e.agency.push(ev.agency().to_owned());
            e.unit.push(unit);
            e.at.push(db(event_at(ev)));
            e.json
                .push(serde_json::to_string(&ev.change).map_err(|e| corrupt("events", e))?);
        }
        // The last version of each, in key order.
        let units: BTreeMap<(&str, &str), &UnitRecord> = batch
            .units
            .iter()
            .map(|u| ((u.unit.agency.as_str(), u.unit.unit.as_str()), u))
            .collect();
        for u in units.into_values() {
            let p = part(&u.unit)?;
            let r = &mut rows.units;
            r.agency.push(u.unit.agency.clone());
            r.unit.push(u.unit.unit.clone());
            r.partition.push(i32::try_from(p).unwrap_or(i32::MAX));
            r.json
                .push(serde_json::to_string(u).map_err(|e| corrupt("units", e))?);
        }
        let incidents: BTreeMap<&str, &Incident> =
            batch.incidents.iter().map(|i| (i.id.as_str(), i)).collect();
        for i in incidents.into_values() {
            let r = &mut rows.incidents;
            r.id.push(i.id.clone());
            r.agency.push(i.agency.clone());
            r.ended.push(i.ended_ms.map(db));
            r.json
                .push(serde_json::to_string(i).map_err(|e| corrupt("incidents", e))?);
        }
        // The last share of each (group, partition), in key order.
        let shares: BTreeMap<(&str, &str, &str, u32), &IncidentShare> = batch
            .shares
            .iter()
            .map(|s| {
                (
                    (
                        s.agency.as_str(),
                        s.probe.as_str(),
                        s.target.as_str(),
                        s.partition,
                    ),
                    s,
                )
            })
            .collect();
        for s in shares.into_values() {
            if s.partition >= partitions {
                return Err(StoreError::Partition(PartitionError::OutOfRange {
                    partition: s.partition,
                    partitions,
                }));
            }
            touched.insert(s.partition);
            let r = &mut rows.shares;
            r.agency.push(s.agency.clone());
            r.probe.push(s.probe.clone());
            r.target.push(s.target.clone());
            r.partition
                .push(i32::try_from(s.partition).unwrap_or(i32::MAX));
            r.of.push(i32::try_from(s.of_units).unwrap_or(i32::MAX));
            r.failing.push(
                serde_json::to_string(&s.failing).map_err(|e| corrupt("incident_shares", e))?,
            );
            r.as_of.push(db(s.as_of_ms));
        }
        rows.partitions = touched;
        Ok(rows)
    }
}

const INSERT_SAMPLES: &str = "INSERT INTO samples (agency, unit, boot, seq, at_ms, late, payload)
     SELECT a, u, b, s, t, t < $7, p
     FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::bytea[])
          AS x(a, u, b, s, t, p)
     ON CONFLICT DO NOTHING";

/// DO UPDATE, not DO NOTHING: the mark's row lock is what keeps a
/// retention round from taking a mark whose records it cannot see yet
/// (`claim` skips locked marks; one it deleted is inserted again).
const MARK_MINUTES: &str = "INSERT INTO dirty_minutes (agency, unit, minute_ms)
     SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])
     ON CONFLICT (agency, unit, minute_ms) DO UPDATE SET marked_at = now()";

const UPSERT_INCIDENTS: &str = "INSERT INTO incidents (id, agency, ended_ms, incident)
     SELECT i, a, e, j::jsonb FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[])
          AS x(i, a, e, j)
     ON CONFLICT (id) DO UPDATE
     SET agency = excluded.agency, ended_ms = excluded.ended_ms, incident = excluded.incident";

const LAST_EVENT_ID: &str = "SELECT GREATEST(COALESCE(max(id), 0),
         (SELECT value FROM store_meta WHERE key = 'events_pruned_through'))
     FROM events";

const INSERT_EVENTS: &str = "INSERT INTO events (id, agency, unit, at_ms, change)
     SELECT i, a, u, t, c::jsonb
     FROM unnest($1::int8[], $2::text[], $3::text[], $4::int8[], $5::text[]) AS x(i, a, u, t, c)";

const UPSERT_UNITS: &str = "INSERT INTO units (agency, unit, partition, rev, record)
     SELECT a, u, p, nextval('units_rev'), r::jsonb
     FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[]) AS x(a, u, p, r)
     ON CONFLICT (agency, unit) DO UPDATE
     SET partition = excluded.partition, rev = excluded.rev, record = excluded.record";

const UPSERT_SHARES: &str = "INSERT INTO incident_shares
         (agency, probe, target, partition, of_units, failing, as_of_ms, rev)
     SELECT a, pr, t, p, o, f::jsonb, m, nextval('incident_shares_rev')
     FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int4[], $6::text[], $7::int8[])
          AS x(a, pr, t, p, o, f, m)
     ON CONFLICT (agency, probe, target, partition) DO UPDATE
     SET of_units = excluded.of_units, failing = excluded.failing,
         as_of_ms = excluded.as_of_ms, rev = excluded.rev";

const DELETE_RAW: &str = "DELETE FROM samples WHERE ctid = ANY(ARRAY(
         SELECT ctid FROM samples WHERE at_ms < $1 AND NOT late LIMIT $2))";

const DELETE_MINUTES: &str = "DELETE FROM rollups WHERE (agency, unit, res, start_ms) IN (
         SELECT agency, unit, res, start_ms FROM rollups
         WHERE res = 'minute' AND start_ms < $1 LIMIT $2)";

const DELETE_HOURS: &str = "DELETE FROM rollups WHERE (agency, unit, res, start_ms) IN (
         SELECT agency, unit, res, start_ms FROM rollups
         WHERE res = 'hour' AND start_ms < $1 LIMIT $2)";

const DELETE_INCIDENTS: &str = "DELETE FROM incidents WHERE id IN (
         SELECT id FROM incidents WHERE ended_ms < $1 LIMIT $2)";

/// Deletes a batch of events and remembers the highest id it deleted
/// (ids are never given twice: `LAST_EVENT_ID`).
const DELETE_EVENTS: &str = "WITH gone AS (
         DELETE FROM events WHERE id IN (
             SELECT id FROM events WHERE at_ms < $1 ORDER BY id LIMIT $2)
         RETURNING id),
     hw AS (
         UPDATE store_meta SET value = GREATEST(value, (SELECT max(id) FROM gone))
         WHERE key = 'events_pruned_through' AND EXISTS (SELECT 1 FROM gone))
     SELECT count(*) FROM gone";

/// The marks a round takes: from before it started, not locked by a
/// commit still running.
const CLAIM: &str = "DELETE FROM dirty_minutes WHERE (agency, unit, minute_ms) IN (
         SELECT agency, unit, minute_ms FROM dirty_minutes WHERE marked_at < $1
         ORDER BY agency, unit, minute_ms LIMIT $2 FOR UPDATE SKIP LOCKED)
     RETURNING agency, unit, minute_ms";

/// The raw records of whole minutes whose raw records are all kept.
const RAW_OF_MINUTES: &str = "SELECT d.a, d.u, d.m, s.payload
     FROM unnest($1::text[], $2::text[], $3::int8[]) AS d(a, u, m)
     JOIN samples s ON s.agency = d.a AND s.unit = d.u AND s.at_ms >= d.m AND s.at_ms < d.m + 60000";

/// The late records of minutes (merged once: deleted as they are read).
const TAKE_LATE: &str = "DELETE FROM samples s
     USING unnest($1::text[], $2::text[], $3::int8[]) AS d(a, u, m)
     WHERE s.agency = d.a AND s.unit = d.u AND s.at_ms >= d.m AND s.at_ms < d.m + 60000 AND s.late
     RETURNING d.a, d.u, d.m, s.payload";

const MINUTES_OF_HOURS: &str = "SELECT d.a, d.u, d.h, r.start_ms, r.data
     FROM unnest($1::text[], $2::text[], $3::int8[]) AS d(a, u, h)
     JOIN rollups r ON r.agency = d.a AND r.unit = d.u AND r.res = 'minute'
          AND r.start_ms >= d.h AND r.start_ms < d.h + 3600000";

const HOURS_OF: &str = "SELECT d.a, d.u, d.h, r.data
     FROM unnest($1::text[], $2::text[], $3::int8[]) AS d(a, u, h)
     JOIN rollups r ON r.agency = d.a AND r.unit = d.u AND r.res = 'hour' AND r.start_ms = d.h";

const UPSERT_ROLLUPS: &str = "INSERT INTO rollups (agency, unit, res, start_ms, data)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::bytea[])
     ON CONFLICT (agency, unit, res, start_ms) DO UPDATE SET data = excluded.data";

/// What retention already dropped (`store_meta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Watermarks {
    raw: u64,
    minutes: u64,
    hours: u64,
}

/// The watermarks; only retention transactions (under [`RETAIN_LOCK`])
/// change them.
async fn watermarks(tx: &Transaction<'_>) -> Result<Watermarks, StoreError> {
    let sql = "SELECT key, value FROM store_meta
         WHERE key IN ('raw_pruned_before', 'minutes_pruned_before', 'hours_pruned_before')";
    let mut w = Watermarks {
        raw: 0,
        minutes: 0,
        hours: 0,
    };
    for r in tx.query(sql, &[]).await.pg()? {
        let v = un(r.get(1));
        match r.get::<_, &str>(0) {
            "raw_pruned_before" => w.raw = v,
            "minutes_pruned_before" => w.minutes = v,
            _ => w.hours = v,
        }
    }
    Ok(w)
}

fn empty(r: &Rollup) -> bool {
    r.host.is_none() && r.probes.is_empty()
}

fn blank(start_ms: u64) -> Rollup {
    Rollup {
        start_ms,
        ..Rollup::default()
    }
}

/// Reads `(agency, unit, minute, payload)` rows into samples by mark.
fn samples_by_mark(
    rows: Vec<tokio_postgres::Row>,
) -> Result<HashMap<Mark, Vec<StoredSample>>, StoreError> {
    let mut out: HashMap<Mark, Vec<StoredSample>> = HashMap::new();
    for r in rows {
        let key = (r.get(0), r.get(1), un(r.get(2)));
        out.entry(key)
            .or_default()
            .push(decode_sample(r.get::<_, &[u8]>(3))?);
    }
    for v in out.values_mut() {
        v.sort_by_key(|s| (s.at_ms, s.boot.0, s.seq));
    }
    Ok(out)
}

/// What one retention transaction does to one unit-hour.
#[derive(Debug, Default)]
struct HourWork {
    /// Minutes rebuilt from raw (`true`) or late records merged (`false`).
    minutes: Vec<(u64, Rollup, bool)>,
    /// Late records of expired minutes, merged into the hour.
    into_hour: Vec<Rollup>,
}

/// Rolls the (already claimed) `marks` at watermarks `wm` (module docs).
async fn roll_marks(
    tx: &Transaction<'_>,
    marks: &[Mark],
    wm: Watermarks,
    st: &mut RetainStats,
) -> Result<(), StoreError> {
    if marks.is_empty() {
        return Ok(());
    }
    let (mut rebuild, mut merge) = (MarkRows::default(), MarkRows::default());
    for m in marks {
        match rollup::action(m.2, wm.raw, wm.minutes) {
            Action::Replace => rebuild.push(m),
            _ => merge.push(m),
        }
    }
    let mut raw = if rebuild.is_empty() {
        HashMap::new()
    } else {
        let rows = tx
            .query(
                RAW_OF_MINUTES,
                &[&rebuild.agency, &rebuild.unit, &rebuild.ms],
            )
            .await
            .pg()?;
        samples_by_mark(rows)?
    };
    let mut late = if merge.is_empty() {
        HashMap::new()
    } else {
        let rows = tx
            .query(TAKE_LATE, &[&merge.agency, &merge.unit, &merge.ms])
            .await
            .pg()?;
        samples_by_mark(rows)?
    };
    let mut work: BTreeMap<Mark, HourWork> = BTreeMap::new();
    for key in marks {
        let m = key.2;
        let act = rollup::action(m, wm.raw, wm.minutes);
        let rows = match act {
            Action::Replace => raw.remove(key),
            _ => late.remove(key),
        }
        .unwrap_or_default();
        let r = rollup::roll(m, &rows);
        let w = work
            .entry((key.0.clone(), key.1.clone(), rollup::floor(m, HOUR_MS)))
            .or_default();
        match act {
            Action::Replace => w.minutes.push((m, r, true)),
            Action::MergeMinute => w.minutes.push((m, r, false)),
            Action::MergeHour => w.into_hour.push(r),
        }
    }
    let (mut with_minutes, mut with_hour) = (MarkRows::default(), MarkRows::default());
    for (key, w) in &work {
        if !w.minutes.is_empty() && key.2 >= wm.minutes {
            with_minutes.push(key);
        }
        if !w.into_hour.is_empty() && key.2 >= wm.hours {
            with_hour.push(key);
        }
    }
    let mut stored_minutes: HashMap<Mark, BTreeMap<u64, Rollup>> = HashMap::new();
    if !with_minutes.is_empty() {
        let rows = tx
            .query(
                MINUTES_OF_HOURS,
                &[&with_minutes.agency, &with_minutes.unit, &with_minutes.ms],
            )
            .await
            .pg()?;
        for r in rows {
            let start = un(r.get(3));
            let v =
                rollup::decode(start, r.get::<_, &[u8]>(4)).map_err(|e| corrupt("rollups", e))?;
            stored_minutes
                .entry((r.get(0), r.get(1), un(r.get(2))))
                .or_default()
                .insert(start, v);
        }
    }
    let mut stored_hours: HashMap<Mark, Rollup> = HashMap::new();
    if !with_hour.is_empty() {
        let rows = tx
            .query(
                HOURS_OF,
                &[&with_hour.agency, &with_hour.unit, &with_hour.ms],
            )
            .await
            .pg()?;
        for r in rows {
            let h = un(r.get(2));
            let v = rollup::decode(h, r.get::<_, &[u8]>(3)).map_err(|e| corrupt("rollups", e))?;
            stored_hours.insert((r.get(0), r.get(1), h), v);
        }
    }
    // What to write, by key (each once). Each rollup as it reads back
    // (the stored form rounds sums), so an hour is exactly `roll_hour` of
    // its stored minutes.
    let mut out: BTreeMap<(String, String, &'static str, u64), Vec<u8>> = BTreeMap::new();
    let mut put = |key: &Mark, res: Resolution, r: &Rollup| -> Result<Rollup, StoreError> {
        let v = rollup::encode(r).map_err(|e| corrupt("rollups", e))?;
        let back = rollup::decode(r.start_ms, &v).map_err(|e| corrupt("rollups", e))?;
        out.insert((key.0.clone(), key.1.clone(), res.name(), r.start_ms), v);
        Ok(back)
    };
    for (key, w) in work {
        let h = key.2;
        if !w.minutes.is_empty() && h >= wm.minutes {
            let mut of_hour = stored_minutes.remove(&key).unwrap_or_default();
            let mut changed = false;
            for (m, r, from_raw) in w.minutes {
                let whole = if from_raw {
                    if empty(&r) && !of_hour.contains_key(&m) {
                        continue; // only records that are not rolled up
                    }
                    st.minutes_from_raw += 1;
                    r
                } else {
                    if empty(&r) {
                        continue;
                    }
                    let mut whole = of_hour.remove(&m).unwrap_or_else(|| blank(m));
                    rollup::merge(&mut whole, &r);
                    whole
                };
                of_hour.insert(m, put(&key, Resolution::Minute, &whole)?);
                st.minutes_rolled += 1;
                changed = true;
            }
            if changed && h >= wm.hours {
                put(
                    &key,
                    Resolution::Hour,
                    &rollup::roll_hour(h, of_hour.values()),
                )?;
                st.hours_rolled += 1;
            }
        }
        if !w.into_hour.is_empty() && h >= wm.hours {
            let mut hr = stored_hours.remove(&key).unwrap_or_else(|| blank(h));
            let mut changed = false;
            for r in w.into_hour.iter().filter(|r| !empty(r)) {
                rollup::merge(&mut hr, r);
                changed = true;
            }
            if changed {
                put(&key, Resolution::Hour, &hr)?;
                st.hours_rolled += 1;
            }
        }
    }
    if out.is_empty() {
        return Ok(());
    }
    let (mut a, mut u, mut res, mut start, mut data) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((agency, unit, r, s), v) in out {
        a.push(agency);
        u.push(unit);
        res.push(r);
        start.push(db(s));
        data.push(v);
    }
    tx.execute(UPSERT_ROLLUPS, &[&a, &u, &res, &start, &data])
        .await
        .pg()?;
    Ok(())
}

/// Moves the watermarks towards `target` (module docs): holding
/// [`WATERMARK_LOCK`] exclusively, so no commit with samples runs
/// meanwhile; never past a minute still marked, rolling such minutes first
/// (at most [`ROLL_BATCH`]). The watermarks after.
async fn advance(
    tx: &Transaction<'_>,
    target: Watermarks,
    st: &mut RetainStats,
) -> Result<Watermarks, StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RETAIN_LOCK])
        .await
        .pg()?;
    let old = watermarks(tx).await?;
    let mut raw = old.raw.max(rollup::floor(target.raw, MINUTE_MS));
    if raw > old.raw {
        // Commits with samples wait from here to this transaction's end
        // (only when the raw watermark moves).
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WATERMARK_LOCK])
            .await
            .pg()?;
        let rows = tx
            .query(
                "SELECT agency, unit, minute_ms FROM dirty_minutes
                 WHERE minute_ms >= $1 AND minute_ms < $2
                 ORDER BY minute_ms, agency, unit LIMIT $3 FOR UPDATE",
                &[&db(old.raw), &db(raw), &one_more(ROLL_BATCH)],
            )
            .await
            .pg()?;
        let mut marks: Vec<Mark> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), un(r.get(2))))
            .collect();
        if marks.len() > ROLL_BATCH {
            raw = marks[ROLL_BATCH].2;
            marks.retain(|m| m.2 < raw);
        }
        if !marks.is_empty() {
            let mut cols = MarkRows::default();
            for m in &marks {
                cols.push(m);
            }
            tx.execute(
                "DELETE FROM dirty_minutes WHERE (agency, unit, minute_ms) IN (
                     SELECT * FROM unnest($1::text[], $2::text[], $3::int8[]))",
                &[&cols.agency, &cols.unit, &cols.ms],
            )
            .await
            .pg()?;
            roll_marks(tx, &marks, old, st).await?;
        }
    }
    let minutes = old
        .minutes
        .max(rollup::floor(target.minutes, HOUR_MS).min(rollup::floor(raw, HOUR_MS)));
    let hours = old
        .hours
        .max(rollup::floor(target.hours, HOUR_MS).min(minutes));
    let new = Watermarks {
        raw,
        minutes,
        hours,
    };
    if new != old {
        tx.execute(
            "UPDATE store_meta m SET value = x.v
             FROM unnest($1::text[], $2::int8[]) AS x(k, v) WHERE m.key = x.k",
            &[
                &vec![
                    "raw_pruned_before",
                    "minutes_pruned_before",
                    "hours_pruned_before",
                ],
                &vec![db(raw), db(minutes), db(hours)],
            ],
        )
        .await
        .pg()?;
    }
    Ok(new)
}

fn add(a: &mut RetainStats, b: RetainStats) {
    a.minutes_rolled += b.minutes_rolled;
    a.minutes_from_raw += b.minutes_from_raw;
    a.hours_rolled += b.hours_rolled;
    a.samples_pruned += b.samples_pruned;
    a.minutes_pruned += b.minutes_pruned;
    a.hours_pruned += b.hours_pruned;
}

fn unit_record(json: &str) -> Result<UnitRecord, StoreError> {
    let mut u: UnitRecord = serde_json::from_str(json).map_err(|e| corrupt("units", e))?;
    u.upgrade_presence();
    Ok(u)
}

fn stored_event(id: i64, json: &str) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        id: un(id),
        change: serde_json::from_str(json).map_err(|e| corrupt("events", e))?,
    })
}

impl PgStore {
    /// Connects `pool` clients and applies the migrations the database
    /// lacks (`cluster::pg::migrate`). Calls time out after
    /// [`DEFAULT_TIMEOUT`].
    pub fn open(opts: PgStoreOptions) -> Result<PgStore, StoreError> {
        Self::open_with_timeout(opts, DEFAULT_TIMEOUT)
    }

    /// [`PgStore::open`] with another bound on every call.
    pub fn open_with_timeout(
        opts: PgStoreOptions,
        timeout: Duration,
    ) -> Result<PgStore, StoreError> {
        if !(1..=MAX_PARTITIONS).contains(&opts.partitions) {
            return Err(PartitionError::Count(opts.partitions).into());
        }
        if opts.pool == 0 {
            return Err(StoreError::Postgres(
                "the pool needs at least one connection".into(),
            ));
        }
        let mut config = Config::from_str(&opts.url)
            .map_err(|e| StoreError::Postgres(format!("url: {}", describe(&e))))?;
        config.connect_timeout(timeout);
        if config.get_application_name().is_none() {
            config.application_name(format!("muster-collector {}", opts.me));
        }
        let server = format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            ms(timeout),
            ms(timeout.saturating_mul(2))
        );
        let options = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {server}"),
            _ => server,
        };
        config.options(options);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("muster-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Task(format!("the store's runtime: {e}")))?;
        let pool = Arc::new(Pool {
            config,
            slots: (0..opts.pool).map(|_| Mutex::new(None)).collect(),
            permits: Semaphore::new(opts.pool),
            timeout,
        });
        let store = PgStore {
            pool,
            rt: Some(rt),
            leases: Arc::new(HeldEpochs::default()),
            me: opts.me,
            partitions: opts.partitions,
            timeout,
            size: Arc::new(SizeCache::default()),
        };
        let applied = store.call("migrate", |c| {
            Box::pin(async move {
                migrate(c)
                    .await
                    .map_err(|e| StoreError::Postgres(pg_error(&e)))
            })
        })?;
        let pool = store.pool.clone();
        store.wait("connect", async move { pool.connect_all().await })?;
        tracing::info!(
            me = %store.me,
            partitions = store.partitions,
            pool = opts.pool,
            migrations_applied = ?applied,
            "store: PostgreSQL ready"
        );
        Ok(store)
    }

    /// The partitions this collector holds and their epochs; `commit`
    /// fences with them.
    pub fn leases(&self) -> Arc<HeldEpochs> {
        self.leases.clone()
    }

    /// The units of `partitions` (a takeover loads only those).
    pub fn load_units_in(&self, partitions: &[u32]) -> Result<Vec<UnitRecord>, StoreError> {
        let ps: Vec<i32> = partitions
            .iter()
            .map(|p| i32::try_from(*p).unwrap_or(i32::MAX))
            .collect();
        let rows = self.call("load_units_in", move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT record::text FROM units WHERE partition = ANY($1)
                     ORDER BY agency, unit",
                    &[&ps],
                )
                .await
                .pg()
            })
        })?;
        rows.iter().map(|r| unit_record(r.get(0))).collect()
    }

    /// Units upserted after `rev` (oldest first, at most `limit`) and the
    /// rev to ask from next: the last one returned, else `rev`. Revs become
    /// visible in order (module docs), so paging never skips an upsert.
    pub fn units_changed_since(
        &self,
        rev: i64,
        limit: usize,
    ) -> Result<(Vec<UnitRecord>, i64), StoreError> {
        self.changed_since(
            "units_changed_since",
            "SELECT rev, record::text FROM units WHERE rev > $1 ORDER BY rev LIMIT $2",
            rev,
            limit,
            |r| unit_record(r.get(1)),
        )
    }

    /// Events with ids above `id`, oldest first, at most `limit`. Ids
    /// become visible in order (module docs): tailing this from the last id
    /// seen sees every event once.
    pub fn events_after(&self, id: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let (after, lim) = (db(id), i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = self.call("events_after", move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT id, change::text FROM events WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&after, &lim],
                )
                .await
                .pg()
            })
        })?;
        rows.iter()
            .map(|r| stored_event(r.get(0), r.get(1)))
            .collect()
    }

    /// Whether the database answers (readiness).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.call("ping", |c| {
            Box::pin(async move { c.simple_query("SELECT 1").await.pg().map(drop) })
        })
    }

    /// Incident shares stored after `rev` (oldest first, at most `limit`)
    /// and the rev to ask from next, as [`PgStore::units_changed_since`].
    pub fn shares_changed_since(
        &self,
        rev: i64,
        limit: usize,
    ) -> Result<(Vec<IncidentShare>, i64), StoreError> {
        self.changed_since(
            "shares_changed_since",
            "SELECT rev, agency, probe, target, partition, of_units, failing::text, as_of_ms
             FROM incident_shares WHERE rev > $1 ORDER BY rev LIMIT $2",
            rev,
            limit,
            |r| {
                let failing: Vec<String> =
                    serde_json::from_str(r.get(6)).map_err(|e| corrupt("incident_shares", e))?;
                Ok(IncidentShare {
                    agency: r.get(1),
                    probe: r.get(2),
                    target: r.get(3),
                    partition: u32::try_from(r.get::<_, i32>(4)).unwrap_or(0),
                    of_units: usize::try_from(r.get::<_, i32>(5)).unwrap_or(0),
                    failing,
                    as_of_ms: un(r.get(7)),
                })
            },
        )
    }

    /// One page of a table read by rev, the shape of
    /// [`PgStore::units_changed_since`] and [`PgStore::shares_changed_since`]:
    /// `sql` selects the rev first (`$1` the rev to read after, `$2` the
    /// limit, ordered by rev), `row` makes each row's item; and the rev to
    /// ask from next, the last one returned, else `rev`.
    fn changed_since<T>(
        &self,
        what: &'static str,
        sql: &'static str,
        rev: i64,
        limit: usize,
        row: impl Fn(&tokio_postgres::Row) -> Result<T, StoreError>,
    ) -> Result<(Vec<T>, i64), StoreError> {
        let lim = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.call(what, move |c| {
            Box::pin(async move { c.query(sql, &[&rev, &lim]).await.pg() })
        })?;
        let mut hw = rev;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            hw = hw.max(r.get(0));
            out.push(row(r)?);
        }
        Ok((out, hw))
    }

    /// Reads what lies past `*cursor` a page of `page` at a time until a
    /// page comes back short: the one home of tailing the store by rev or
    /// id. `fetch(self, cursor, page)` reads one page and the cursor to ask
    /// from next (e.g. [`PgStore::units_changed_since`]); `each` takes the
    /// pages in order, and `*cursor` moves past each page once `each` has
    /// it. A failed read ends the tail with its error; `*cursor` is then
    /// past the last page taken.
    pub fn tail<T, C: Copy>(
        &self,
        cursor: &mut C,
        page: usize,
        mut fetch: impl FnMut(&Self, C, usize) -> Result<(Vec<T>, C), StoreError>,
        mut each: impl FnMut(Vec<T>),
    ) -> Result<(), StoreError> {
        loop {
            let (items, next) = fetch(self, *cursor, page)?;
            let n = items.len();
            each(items);
            *cursor = next;
            if n < page {
                return Ok(());
            }
        }
    }

    /// [`Store::commit`], and the ids the store gave the batch's events, in
    /// batch order (the batch's own ids are ignored).
    pub fn commit_with_ids(&self, batch: &CommitBatch) -> Result<Vec<u64>, StoreError> {
        self.commit_fenced(batch, None)
    }

    /// [`PgStore::commit_with_ids`], fenced on `partition` too: the
    /// coordinator's incidents (agency-wide: no unit's partition) are
    /// written only while it holds partition 0.
    pub fn commit_fenced_on(
        &self,
        batch: &CommitBatch,
        partition: u32,
    ) -> Result<Vec<u64>, StoreError> {
        self.commit_fenced(batch, Some(partition))
    }

    fn commit_fenced(
        &self,
        batch: &CommitBatch,
        also: Option<u32>,
    ) -> Result<Vec<u64>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = CommitRows::new(batch, self.partitions)?;
        rows.partitions.extend(also);
        let mut fences = Vec::with_capacity(rows.partitions.len());
        for &p in &rows.partitions {
            match self.leases.get(p) {
                Some(epoch) => fences.push((p, epoch)),
                None => {
                    return Err(StoreError::Fenced {
                        partition: p,
                        epoch: None,
                    });
                }
            }
        }
        let me = self.me.clone();
        self.call("commit", move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.pg()?;
                // First statements: the fences, ascending, pipelined.
                let checks = fences.iter().map(|&(p, epoch)| fence(&tx, p, &me, epoch));
                try_join_all(checks).await.map_err(|e| match e {
                    PgError::Fenced { partition, epoch } => StoreError::Fenced {
                        partition,
                        epoch: Some(epoch),
                    },
                    other => StoreError::Postgres(pg_error(&other)),
                })?;
                let s = &rows.samples;
                if !s.agency.is_empty() {
                    // Shared: a retention round moving the watermark waits
                    // for this commit (and the next one sees the new one).
                    tx.execute(
                        "SELECT pg_advisory_xact_lock_shared($1)",
                        &[&WATERMARK_LOCK],
                    )
                    .await
                    .pg()?;
                    let raw_before: i64 = tx
                        .query_one(
                            "SELECT value FROM store_meta WHERE key = 'raw_pruned_before'",
                            &[],
                        )
                        .await
                        .pg()?
                        .get(0);
                    tx.execute(
                        INSERT_SAMPLES,
                        &[
                            &s.agency,
                            &s.unit,
                            &s.boot,
                            &s.seq,
                            &s.at,
                            &s.payload,
                            &raw_before,
                        ],
                    )
                    .await
                    .pg()?;
                    let m = &rows.marks;
                    tx.execute(MARK_MINUTES, &[&m.agency, &m.unit, &m.ms])
                        .await
                        .pg()?;
                }
                let i = &rows.incidents;
                if !i.id.is_empty() {
                    tx.execute(UPSERT_INCIDENTS, &[&i.id, &i.agency, &i.ended, &i.json])
                        .await
                        .pg()?;
                }
                let (e, u, sh) = (&rows.events, &rows.units, &rows.shares);
                let mut ids = Vec::new();
                if !e.agency.is_empty() || !u.agency.is_empty() || !sh.agency.is_empty() {
                    // Held until the commit: ids and revs become visible in
                    // order (module docs).
                    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ORDER_LOCK])
                        .await
                        .pg()?;
                    if !e.agency.is_empty() {
                        let last: i64 = tx.query_one(LAST_EVENT_ID, &[]).await.pg()?.get(0);
                        let id: Vec<i64> = (1..).map(|n| last + n).take(e.agency.len()).collect();
                        tx.execute(INSERT_EVENTS, &[&id, &e.agency, &e.unit, &e.at, &e.json])
                            .await
                            .pg()?;
                        ids = id.into_iter().map(un).collect();
                    }
                    if !u.agency.is_empty() {
                        tx.execute(UPSERT_UNITS, &[&u.agency, &u.unit, &u.partition, &u.json])
                            .await
                            .pg()?;
                    }
                    if !sh.agency.is_empty() {
                        tx.execute(
                            UPSERT_SHARES,
                            &[
                                &sh.agency,
                                &sh.probe,
                                &sh.target,
                                &sh.partition,
                                &sh.of,
                                &sh.failing,
                                &sh.as_of,
                            ],
                        )
                        .await
                        .pg()?;
                    }
                }
                tx.commit().await.pg()?;
                Ok(ids)
            })
        })
    }

    /// Runs `op` on a pooled client on the store's runtime and waits for it
    /// (module docs: callable from any thread).
    fn call<T: Send + 'static>(
        &self,
        what: &'static str,
        op: impl for<'c> FnOnce(&'c mut Client) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = self.pool.clone();
        self.wait(what, async move { pool.run(what, Box::new(op)).await })
    }

    /// Runs `fut` on the store's runtime; the caller's thread waits on a
    /// channel, at most the timeout and a grace.
    fn wait<T: Send + 'static>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let Some(rt) = &self.rt else {
            return Err(StoreError::Task("the store is closed".into()));
        };
        let (tx, rx) = sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        match rx.recv_timeout(self.timeout + GRACE) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(StoreError::Postgres(format!(
                "timeout: {what} got no answer in {} ms",
                ms(self.timeout + GRACE)
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(StoreError::Task(format!(
                "{what}: the store's runtime dropped the call"
            ))),
        }
    }

    /// Deletes by `sql` (`$1` the cut, `$2` the batch size) one batch a
    /// transaction until a batch finds fewer rows; the rows deleted.
    fn delete_in_batches(
        &self,
        what: &'static str,
        sql: &'static str,
        before: u64,
    ) -> Result<u64, StoreError> {
        let before = db(before);
        let mut total = 0;
        loop {
            let n = self.call(what, move |c| {
                Box::pin(async move { c.execute(sql, &[&before, &PRUNE_BATCH]).await.pg() })
            })?;
            total += n;
            if n < un(PRUNE_BATCH) {
                return Ok(total);
            }
        }
    }

    /// One `advance` transaction.
    fn advance_to(&self, target: Watermarks) -> Result<(Watermarks, RetainStats), StoreError> {
        self.call("retain", move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.pg()?;
                let mut st = RetainStats::default();
                let wm = advance(&tx, target, &mut st).await?;
                tx.commit().await.pg()?;
                Ok((wm, st))
            })
        })
    }
}

fn pg_error(e: &PgError) -> String {
    match e {
        PgError::Db(e) => describe(e),
        other => other.to_string(),
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            // A runtime must not be waited for from async context (tokio
            // panics); every call already has its answer, so nothing is
            // lost by not waiting there.
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(5));
            }
        }
    }
}

impl Store for PgStore {
    fn load_units(&self) -> Result<Vec<UnitRecord>, StoreError> {
        let rows = self.call("load_units", |c| {
            Box::pin(async move {
                c.query("SELECT record::text FROM units ORDER BY agency, unit", &[])
                    .await
                    .pg()
            })
        })?;
        rows.iter().map(|r| unit_record(r.get(0))).collect()
    }

    /// The highest event id the store gave (0 when none): ids are never
    /// given twice, even after every event was pruned.
    fn last_event_id(&self) -> Result<u64, StoreError> {
        self.call("last_event_id", |c| {
            Box::pin(async move { Ok(un(c.query_one(LAST_EVENT_ID, &[]).await.pg()?.get(0))) })
        })
    }

    fn commit(&self, batch: &CommitBatch) -> Result<(), StoreError> {
        self.commit_with_ids(batch).map(drop)
    }

    fn samples(
        &self,
        unit: &UnitId,
        q: SampleQuery,
    ) -> Result<(Vec<StoredSample>, Option<SampleCursor>), StoreError> {
        let (agency, name) = (unit.agency.clone(), unit.unit.clone());
        let (until, lim) = (db(q.until_ms), one_more(q.limit));
        let rows = self.call("samples", move |c| {
            Box::pin(async move {
                match q.after {
                    // Strictly after the cursor (`since` no longer matters).
                    Some(cur) => c
                        .query(
                            "SELECT payload FROM samples
                             WHERE agency = $1 AND unit = $2
                               AND (at_ms, boot, seq) > ($3, $4, $5) AND at_ms <= $6
                             ORDER BY at_ms, boot, seq LIMIT $7",
                            &[
                                &agency,
                                &name,
                                &db(cur.at_ms),
                                &db_boot(cur.boot),
                                &db(cur.seq),
                                &until,
                                &lim,
                            ],
                        )
                        .await
                        .pg(),
                    None => c
                        .query(
                            "SELECT payload FROM samples
                             WHERE agency = $1 AND unit = $2 AND at_ms >= $3 AND at_ms <= $4
                             ORDER BY at_ms, boot, seq LIMIT $5",
                            &[&agency, &name, &db(q.since_ms), &until, &lim],
                        )
                        .await
                        .pg(),
                }
            })
        })?;
        let mut out: Vec<StoredSample> = Vec::new();
        for r in &rows {
            if out.len() == q.limit {
                let cursor = out.last().map(|last| SampleCursor {
                    at_ms: last.at_ms,
                    boot: last.boot.0,
                    seq: last.seq,
                });
                return Ok((out, cursor));
            }
            out.push(decode_sample(r.get::<_, &[u8]>(0))?);
        }
        Ok((out, None))
    }

    fn latest(&self, unit: &UnitId) -> Result<Latest, StoreError> {
        let (agency, name) = (unit.agency.clone(), unit.unit.clone());
        let rows = self.call("latest", move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT payload FROM samples WHERE agency = $1 AND unit = $2
                     ORDER BY at_ms DESC, boot DESC, seq DESC LIMIT $3",
                    &[&agency, &name, &LATEST_SCAN],
                )
                .await
                .pg()
            })
        })?;
        pick_latest(rows.iter().map(|r| decode_sample(r.get::<_, &[u8]>(0))))
    }

    fn events(&self, q: &EventQuery) -> Result<(Vec<StoredEvent>, bool), StoreError> {
        // As the fjall store's listing: an agency's events, or a unit's
        // transitions (of the agency asked for, if one is).
        let (agency, unit) = match (&q.agency, &q.unit) {
            (Some(a), Some(u)) if *a != u.agency => return Ok((Vec::new(), false)),
            (_, Some(u)) => (Some(u.agency.clone()), Some(u.unit.clone())),
            (a, None) => (a.clone(), None),
        };
        let (before, lim) = (db(q.before_id.unwrap_or(u64::MAX)), one_more(q.limit));
        let rows = self.call("events", move |c| {
            Box::pin(async move {
                match (agency, unit) {
                    (Some(a), Some(u)) => c
                        .query(
                            "SELECT id, change::text FROM events
                             WHERE agency = $1 AND unit = $2 AND id < $3
                             ORDER BY id DESC LIMIT $4",
                            &[&a, &u, &before, &lim],
                        )
                        .await
                        .pg(),
                    (Some(a), None) => c
                        .query(
                            "SELECT id, change::text FROM events WHERE agency = $1 AND id < $2
                             ORDER BY id DESC LIMIT $3",
                            &[&a, &before, &lim],
                        )
                        .await
                        .pg(),
                    (None, _) => c
                        .query(
                            "SELECT id, change::text FROM events WHERE id < $1
                             ORDER BY id DESC LIMIT $2",
                            &[&before, &lim],
                        )
                        .await
                        .pg(),
                }
            })
        })?;
        let more = rows.len() > q.limit;
        let out = rows
            .iter()
            .take(q.limit)
            .map(|r| stored_event(r.get(0), r.get(1)))
            .collect::<Result<_, _>>()?;
        Ok((out, more))
    }

    fn incidents(&self) -> Result<Vec<Incident>, StoreError> {
        let rows = self.call("incidents", |c| {
            Box::pin(async move {
                c.query("SELECT incident::text FROM incidents ORDER BY id", &[])
                    .await
                    .pg()
            })
        })?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get(0)).map_err(|e| corrupt("incidents", e)))
            .collect()
    }

    /// Raw samples before `samples_before_ms`'s minute (the raw watermark
    /// moves there, as in `retain`), events whose time is before
    /// `events_before_ms` and incidents that ended before it.
    fn prune(
        &self,
        samples_before_ms: u64,
        events_before_ms: u64,
    ) -> Result<PruneStats, StoreError> {
        let (wm, _) = self.advance_to(Watermarks {
            raw: samples_before_ms,
            minutes: 0,
            hours: 0,
        })?;
        let samples = self.delete_in_batches("prune", DELETE_RAW, wm.raw)?;
        let before = db(events_before_ms);
        let mut events = 0;
        loop {
            let n: i64 = self.call("prune", move |c| {
                Box::pin(async move {
                    Ok(c.query_one(DELETE_EVENTS, &[&before, &PRUNE_BATCH])
                        .await
                        .pg()?
                        .get(0))
                })
            })?;
            events += un(n);
            if n < PRUNE_BATCH {
                break;
            }
        }
        let incidents = self.delete_in_batches("prune", DELETE_INCIDENTS, events_before_ms)?;
        Ok(PruneStats {
            samples,
            events,
            incidents,
        })
    }

    fn retain(&self, cut: &Cutoffs) -> Result<RetainStats, StoreError> {
        let mut st = RetainStats::default();
        let started: SystemTime = self.call("retain", |c| {
            Box::pin(async move { Ok(c.query_one("SELECT now()", &[]).await.pg()?.get(0)) })
        })?;
        loop {
            let (claimed, part) = self.call("retain", move |c| {
                Box::pin(async move {
                    let tx = c.transaction().await.pg()?;
                    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RETAIN_LOCK])
                        .await
                        .pg()?;
                    let wm = watermarks(&tx).await?;
                    let marks: Vec<Mark> = tx
                        .query(CLAIM, &[&started, &(ROLL_BATCH as i64)])
                        .await
                        .pg()?
                        .iter()
                        .map(|r| (r.get(0), r.get(1), un(r.get(2))))
                        .collect();
                    let mut st = RetainStats::default();
                    roll_marks(&tx, &marks, wm, &mut st).await?;
                    tx.commit().await.pg()?;
                    Ok((marks.len(), st))
                })
            })?;
            add(&mut st, part);
            if claimed < ROLL_BATCH {
                break;
            }
        }
        let (wm, part) = self.advance_to(Watermarks {
            raw: cut.raw_before,
            minutes: cut.minute_before,
            hours: cut.hour_before,
        })?;
        add(&mut st, part);
        st.samples_pruned += self.delete_in_batches("retain", DELETE_RAW, wm.raw)?;
        st.minutes_pruned += self.delete_in_batches("retain", DELETE_MINUTES, wm.minutes)?;
        st.hours_pruned += self.delete_in_batches("retain", DELETE_HOURS, wm.hours)?;
        tracing::debug!(
            minutes_rolled = st.minutes_rolled,
            hours_rolled = st.hours_rolled,
            samples_pruned = st.samples_pruned,
            raw_before = wm.raw,
            "store: retention round"
        );
        Ok(st)
    }

    fn rollups(
        &self,
        unit: &UnitId,
        res: Resolution,
        since_ms: u64,
        until_ms: u64,
        limit: usize,
    ) -> Result<(Vec<Rollup>, bool), StoreError> {
        if since_ms > until_ms {
            return Ok((Vec::new(), false));
        }
        let (agency, name) = (unit.agency.clone(), unit.unit.clone());
        let (since, until, lim) = (db(since_ms), db(until_ms), one_more(limit));
        let rows = self.call("rollups", move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT start_ms, data FROM rollups
                     WHERE agency = $1 AND unit = $2 AND res = $3
                       AND start_ms >= $4 AND start_ms <= $5
                     ORDER BY start_ms LIMIT $6",
                    &[&agency, &name, &res.name(), &since, &until, &lim],
                )
                .await
                .pg()
            })
        })?;
        let more = rows.len() > limit;
        let out = rows
            .iter()
            .take(limit)
            .map(|r| {
                rollup::decode(un(r.get(0)), r.get::<_, &[u8]>(1))
                    .map_err(|e| corrupt("rollups", e))
            })
            .collect::<Result<_, _>>()?;
        Ok((out, more))
    }

    /// The whole database's size (every collector's state), as last
    /// measured (0 before the first measurement ends): each call answers at
    /// once and starts the next measurement in the background, so a scrape
    /// of `/metrics` never waits out the store's timeout while PostgreSQL
    /// is unreachable.
    fn size_on_disk(&self) -> u64 {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
        fn query(c: &mut Client) -> BoxFuture<'_, Result<i64, StoreError>> {
            Box::pin(async move {
                Ok(
                    c.query_one("SELECT pg_database_size(current_database())", &[])
                        .await
                        .pg()?
                        .get::<_, i64>(0),
                )
            })
        }
        let cache = &self.size;
        if let Some(rt) = &self.rt
            && cache
                .busy
                .compare_exchange(false, true, AcqRel, Acquire)
                .is_ok()
        {
            let pool = self.pool.clone();
            let cache = Arc::clone(cache);
            rt.spawn(async move {
                match pool.run("size_on_disk", Box::new(query)).await {
                    Ok(n) => cache.bytes.store(un(n), Release),
                    Err(e) => {
                        tracing::warn!(error = %e, "store: cannot read the database's size")
                    }
                }
                cache.busy.store(false, Release);
            });
        }
        cache.bytes.load(Acquire)
    }

    fn load_enrollments(&self) -> Result<Vec<Enrollment>, StoreError> {
        let rows = self.call("load_enrollments", |c| {
            Box::pin(async move {
                c.query(
                    "SELECT enrollment::text FROM enrollments ORDER BY agency, unit",
                    &[],
                )
                .await
                .pg()
            })
        })?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get(0)).map_err(|e| corrupt("enrollments", e)))
            .collect()
    }

    fn put_enrollment(&self, e: &Enrollment) -> Result<(), StoreError> {
        let json = serde_json::to_string(e).map_err(|err| corrupt("enrollments", err))?;
        let (agency, unit) = (e.unit.agency.clone(), e.unit.unit.clone());
        self.call("put_enrollment", move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO enrollments (agency, unit, enrollment) VALUES ($1, $2, $3::text::jsonb)
                     ON CONFLICT (agency, unit) DO UPDATE SET enrollment = excluded.enrollment",
                    &[&agency, &unit, &json],
                )
                .await
                .pg()
                .map(drop)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use muster_proto::{Payload, Record, fixtures};
    use muster_testkit::Postgres;

    use super::super::suite::{self, transition, unit};
    use super::*;

    const PARTS: u32 = 8;

    fn opts(pg: &Postgres, me: &str) -> PgStoreOptions {
        PgStoreOptions {
            url: pg.url(),
            me: me.into(),
            partitions: PARTS,
            pool: 2,
        }
    }

    /// `s`'s collector holds `parts` at `epoch`: in the lease table (an hour
    /// from now) and in its `HeldEpochs`.
    fn hold(pg: &Postgres, s: &PgStore, parts: &[u32], epoch: u64) {
        let values: Vec<String> = parts
            .iter()
            .map(|p| format!("({p}, '{}', {epoch}, now() + interval '1 hour')", s.me))
            .collect();
        pg.psql(&format!(
            "INSERT INTO partition_leases (partition, owner, epoch, expires_at) VALUES {}
             ON CONFLICT (partition) DO UPDATE
             SET owner = excluded.owner, epoch = excluded.epoch, expires_at = excluded.expires_at",
            values.join(", ")
        ))
        .unwrap();
        s.leases().set(parts.iter().map(|p| (*p, epoch)).collect());
    }

    fn count(pg: &Postgres, what: &str) -> u64 {
        pg.psql(&format!("SELECT count(*) FROM {what}"))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// `n` units of `agency` in partition `p` (of [`PARTS`]).
    fn units_in(agency: &str, p: u32, n: usize) -> Vec<UnitId> {
        (0..)
            .map(|i| unit(agency, &format!("E{i}")))
            .filter(|u| partition::of(u, PARTS).unwrap() == p)
            .take(n)
            .collect()
    }

    fn incident(agency: &str, since_ms: u64) -> Incident {
        Incident {
            id: format!("{agency}:cad-api:{since_ms}"),
            kind: crate::model::IncidentKind::ProbeFailing,
            agency: agency.into(),
            probe: "cad-api".into(),
            target: "https://cad/health".into(),
            affected: vec!["E1".into()],
            of_units: 3,
            since_ms,
            ended_ms: None,
            summary: "cad-api failing".into(),
        }
    }

    fn probe_at(seq: u64, at: u64, ms: u32) -> Record {
        let mut p = fixtures::http_probe();
        p.phases.total_us = ms * 1000 + (seq % 7) as u32 * 13;
        let mut r = fixtures::record(seq, Payload::Probe(p));
        r.at_ms = at;
        r
    }

    fn host_at(seq: u64, at: u64) -> Record {
        let mut r = fixtures::record(seq, Payload::Host(fixtures::host_sample()));
        r.at_ms = at;
        r
    }

    #[test]
    fn commit_survives_reopen_and_queries_page() {
        let pg = Postgres::start();
        let all: Vec<u32> = (0..PARTS).collect();
        // Raw samples go by whole minutes of event time: the suite's cut
        // (AT_MS + 15 s) is 40 s into a minute, and its first record is
        // 5 s after AT_MS, so none goes.
        suite::commit_survives_reopen_and_queries_page(
            |_| {
                let s = PgStore::open(opts(&pg, "collector-a")).unwrap();
                hold(&pg, &s, &all, 1);
                Box::new(s)
            },
            0,
        );
    }

    /// The batch a collector commits for `u`: a sample, the unit, a
    /// transition and an incident.
    fn batch_for(u: &UnitId, seq: u64, first_seen_ms: u64) -> CommitBatch {
        CommitBatch {
            samples: vec![(
                u.clone(),
                fixtures::record(seq, Payload::Host(fixtures::host_sample())),
            )],
            events: vec![StoredEvent {
                id: 0,
                change: transition(&u.agency, &u.unit, 10 + seq),
            }],
            incidents: vec![incident(&u.agency, seq)],
            units: vec![UnitRecord::new(u.clone(), first_seen_ms)],
            shares: Vec::new(),
            actions: Vec::new(),
        }
    }

    /// Rows in samples, units, events, incidents, dirty_minutes.
    fn written(pg: &Postgres) -> [u64; 5] {
        ["samples", "units", "events", "incidents", "dirty_minutes"].map(|t| count(pg, t))
    }

    fn share(p: u32, of_units: usize, failing: &[&str], as_of_ms: u64) -> IncidentShare {
        IncidentShare {
            partition: p,
            agency: "metro-fire".into(),
            probe: "cad-api".into(),
            target: "https://cad/health".into(),
            of_units,
            failing: failing.iter().map(|s| s.to_string()).collect(),
            as_of_ms,
        }
    }

    /// Incident shares: fenced by their partition, tailed by rev (the last
    /// version of each), and the coordinator's incidents fenced on
    /// partition 0 however agency-wide they are.
    #[test]
    fn incident_shares_are_fenced_by_partition_and_tailed_by_rev() {
        let pg = Postgres::start();
        let s = PgStore::open(opts(&pg, "collector-a")).unwrap();
        hold(&pg, &s, &[1, 2], 1);
        let only = |shares: Vec<IncidentShare>| CommitBatch {
            shares,
            ..CommitBatch::default()
        };
        assert!(matches!(
            s.commit(&only(vec![share(0, 3, &["A"], 10)])),
            Err(StoreError::Fenced {
                partition: 0,
                epoch: None
            })
        ));
        assert!(matches!(
            s.commit(&only(vec![share(PARTS, 3, &["A"], 10)])),
            Err(StoreError::Partition(_))
        ));
        s.commit(&only(vec![
            share(1, 3, &["A", "B"], 10),
            share(2, 4, &[], 10),
        ]))
        .unwrap();
        let (got, rev) = s.shares_changed_since(0, 100).unwrap();
        assert_eq!(
            got,
            vec![share(1, 3, &["A", "B"], 10), share(2, 4, &[], 10)]
        );
        // Updated: the newer version, once, after the rev read.
        s.commit(&only(vec![share(1, 0, &[], 20)])).unwrap();
        let (again, rev2) = s.shares_changed_since(rev, 100).unwrap();
        assert_eq!(again, vec![share(1, 0, &[], 20)]);
        assert!(rev2 > rev);
        assert_eq!(s.shares_changed_since(rev2, 100).unwrap().0, vec![]);

        // The coordinator's incidents: refused without partition 0.
        let inc = CommitBatch {
            incidents: vec![incident("metro-fire", 7)],
            ..CommitBatch::default()
        };
        assert!(matches!(
            s.commit_fenced_on(&inc, 0),
            Err(StoreError::Fenced {
                partition: 0,
                epoch: None
            })
        ));
        assert_eq!(count(&pg, "incidents"), 0);
        hold(&pg, &s, &[0, 1, 2], 1);
        s.commit_fenced_on(&inc, 0).unwrap();
        assert_eq!(count(&pg, "incidents"), 1);
    }

    #[test]
    fn a_commit_to_a_partition_not_held_or_at_a_stale_epoch_is_fenced_and_writes_nothing() {
        let pg = Postgres::start();
        let s = PgStore::open(opts(&pg, "collector-a")).unwrap();
        let mine = units_in("metro-fire", 0, 1).remove(0);
        let theirs = units_in("metro-fire", 1, 1).remove(0);
        hold(&pg, &s, &[0], 1);

        // Not held: refused, nothing written.
        match s.commit(&batch_for(&theirs, 1, 5)) {
            Err(StoreError::Fenced {
                partition: 1,
                epoch: None,
            }) => {}
            other => panic!("a partition not held was not fenced: {other:?}"),
        }
        // One partition held and one not: the whole batch is refused.
        let mut mixed = batch_for(&mine, 1, 5);
        mixed.units.push(UnitRecord::new(theirs.clone(), 5));
        assert!(matches!(
            s.commit(&mixed),
            Err(StoreError::Fenced {
                partition: 1,
                epoch: None
            })
        ));
        assert_eq!(written(&pg), [0; 5]);

        s.commit(&batch_for(&mine, 1, 5)).unwrap();
        assert_eq!(written(&pg), [1; 5]);

        // Another collector took partition 0 (epoch 2): a's epoch 1 is stale.
        pg.psql("UPDATE partition_leases SET owner = 'collector-b', epoch = 2 WHERE partition = 0")
            .unwrap();
        match s.commit(&batch_for(&mine, 2, 99)) {
            Err(StoreError::Fenced {
                partition: 0,
                epoch: Some(1),
            }) => {}
            other => panic!("a stale epoch was not fenced: {other:?}"),
        }
        assert_eq!(written(&pg), [1; 5], "the refused commit wrote something");
        assert_eq!(
            pg.psql("SELECT record->>'first_seen_ms' FROM units")
                .unwrap(),
            "5"
        );
        assert_eq!(s.last_event_id().unwrap(), 1);

        // Back at a's epoch but expired: refused too.
        pg.psql(
            "UPDATE partition_leases SET owner = 'collector-a', epoch = 1,
             expires_at = now() - interval '1 second' WHERE partition = 0",
        )
        .unwrap();
        assert!(matches!(
            s.commit(&batch_for(&mine, 3, 99)),
            Err(StoreError::Fenced {
                partition: 0,
                epoch: Some(1)
            })
        ));
        assert_eq!(written(&pg), [1; 5]);

        // A lease held again (new epoch, as a tick would): commits go on.
        hold(&pg, &s, &[0], 3);
        s.commit(&batch_for(&mine, 4, 99)).unwrap();
        assert_eq!(count(&pg, "samples"), 2);
        assert_eq!(count(&pg, "events"), 2);
    }

    /// Two collectors (each its own partitions, four writer threads each)
    /// commit events while a tailer follows `events_after`: every id from 1
    /// to N is given once, each batch's ids are consecutive, and the tailer
    /// sees every id once, in order, never a gap it would have to skip.
    #[test]
    fn two_collectors_committing_events_give_every_id_once_and_a_tailer_sees_them_in_order() {
        const WRITERS: usize = 4;
        const BATCHES: usize = 40;
        const EVENTS: usize = 5;
        const N: u64 = (2 * WRITERS * BATCHES * EVENTS) as u64;
        let pg = Postgres::start();
        let open = |me: &str| {
            Arc::new(
                PgStore::open(PgStoreOptions {
                    pool: WRITERS,
                    ..opts(&pg, me)
                })
                .unwrap(),
            )
        };
        let (a, b) = (open("collector-a"), open("collector-b"));
        hold(&pg, &a, &[0, 1, 2, 3], 1);
        hold(&pg, &b, &[4, 5, 6, 7], 1);
        let tailer_store = open("collector-c");
        let done = Arc::new(AtomicBool::new(false));

        let tailer = {
            let (s, done) = (tailer_store.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut last, mut seen, mut gaps) = (0u64, Vec::new(), Vec::new());
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let page = s.events_after(last, 64).unwrap();
                    for e in &page {
                        if e.id != last + 1 {
                            gaps.push((last, e.id));
                        }
                        last = e.id;
                        seen.push(e.id);
                    }
                    if finished && page.is_empty() {
                        return (seen, gaps);
                    }
                    if page.is_empty() {
                        std::thread::yield_now();
                    }
                }
            })
        };
        let mut writers = Vec::new();
        for (s, first) in [(a.clone(), 0u32), (b.clone(), 4)] {
            for w in 0..WRITERS {
                let s = s.clone();
                writers.push(std::thread::spawn(move || {
                    let u = units_in("metro-fire", first + w as u32, 1).remove(0);
                    let mut got = Vec::new();
                    let mut errors = Vec::new();
                    for n in 0..BATCHES {
                        let batch = CommitBatch {
                            events: (0..EVENTS)
                                .map(|i| StoredEvent {
                                    id: 0,
                                    change: transition(&u.agency, &u.unit, (n * EVENTS + i) as u64),
                                })
                                .collect(),
                            units: vec![UnitRecord::new(u.clone(), n as u64)],
                            ..CommitBatch::default()
                        };
                        match s.commit_with_ids(&batch) {
                            Ok(ids) => got.push(ids),
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                    (got, errors)
                }));
            }
        }
        let mut all = Vec::new();
        for w in writers {
            let (got, errors) = w.join().unwrap();
            assert!(errors.is_empty(), "commits failed: {errors:?}");
            for ids in got {
                assert_eq!(ids.len(), EVENTS);
                assert!(
                    ids.windows(2).all(|p| p[1] == p[0] + 1),
                    "a batch's ids are not consecutive: {ids:?}"
                );
                all.extend(ids);
            }
        }
        done.store(true, Ordering::Release);
        let (seen, gaps) = tailer.join().unwrap();
        all.sort_unstable();
        let want: Vec<u64> = (1..=N).collect();
        assert_eq!(all, want, "every id given once");
        assert_eq!(
            pg.psql("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM events")
                .unwrap(),
            format!("{N}|{N}|1|{N}")
        );
        assert!(gaps.is_empty(), "the tailer saw ids out of order: {gaps:?}");
        assert_eq!(seen, want, "the tailer saw every event once, in order");
        assert_eq!(a.last_event_id().unwrap(), N);
    }

    /// Every minute rollup of `u` from `from` to `to` against `rollup::roll`
    /// of the raw records listed for it, and every hour against
    /// `rollup::roll_hour` of its minutes (as stored: `encode` rounds);
    /// the number of minutes checked.
    fn assert_rolled_from_raw(s: &PgStore, u: &UnitId, from: u64, to: u64) -> usize {
        let stored = |r: &Rollup| rollup::decode(r.start_ms, &rollup::encode(r).unwrap()).unwrap();
        let (minutes, more) = s.rollups(u, Resolution::Minute, from, to, 10_000).unwrap();
        assert!(!more);
        for m in &minutes {
            let q = SampleQuery {
                since_ms: m.start_ms,
                until_ms: m.start_ms + MINUTE_MS - 1,
                after: None,
                limit: 1000,
            };
            let raw = s.samples(u, q).unwrap().0;
            assert!(!raw.is_empty());
            assert_eq!(
                *m,
                stored(&rollup::roll(m.start_ms, &raw)),
                "minute {}",
                m.start_ms
            );
        }
        let (hours, _) = s.rollups(u, Resolution::Hour, from, to, 10_000).unwrap();
        for h in &hours {
            let of_hour: Vec<&Rollup> = minutes
                .iter()
                .filter(|m| rollup::floor(m.start_ms, HOUR_MS) == h.start_ms)
                .collect();
            assert_eq!(*h, stored(&rollup::roll_hour(h.start_ms, of_hour)));
        }
        minutes.len()
    }

    #[test]
    fn retain_rolls_minutes_and_hours_from_raw_merges_late_records_and_prunes_by_cutoffs() {
        let pg = Postgres::start();
        let s = PgStore::open(opts(&pg, "collector-a")).unwrap();
        hold(&pg, &s, &(0..PARTS).collect::<Vec<_>>(), 1);
        let t0 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR_MS;
        let units = [
            unit("metro-fire", "E1"),
            unit("metro-fire", "E2"),
            unit("county-ems", "M7"),
        ];
        // Two hours: a host sample and four probe results a minute (3 units
        // x 120 minutes: more marks than a retention batch takes).
        let mut seq = 0;
        for chunk in 0..12u64 {
            let mut batch = CommitBatch::default();
            for u in &units {
                for minute in chunk * 10..(chunk + 1) * 10 {
                    let m = t0 + minute * MINUTE_MS;
                    seq += 1;
                    batch.samples.push((u.clone(), host_at(seq, m + 1_000)));
                    for k in 0..4 {
                        seq += 1;
                        let ms = 40 + (minute as u32 * 7 + k) % 50;
                        batch.samples.push((
                            u.clone(),
                            probe_at(seq, m + 5_000 + u64::from(k) * 15_000, ms),
                        ));
                    }
                }
            }
            s.commit(&batch).unwrap();
        }
        assert_eq!(count(&pg, "dirty_minutes"), 360);
        let keep = Cutoffs {
            raw_before: 0,
            minute_before: 0,
            hour_before: 0,
        };
        let st = s.retain(&keep).unwrap();
        assert_eq!((st.minutes_rolled, st.minutes_from_raw), (360, 360));
        assert!(st.hours_rolled >= 6);
        assert_eq!(count(&pg, "dirty_minutes"), 0);
        for u in &units {
            assert_eq!(assert_rolled_from_raw(&s, u, t0, t0 + 2 * HOUR_MS), 120);
            assert_eq!(
                s.rollups(u, Resolution::Hour, t0, t0 + 2 * HOUR_MS, 10)
                    .unwrap()
                    .0
                    .len(),
                2
            );
        }
        // Nothing new: nothing rolled.
        assert_eq!(s.retain(&keep).unwrap().minutes_rolled, 0);

        // Records in time for a minute already rolled: rebuilt from raw.
        let (e1, m5) = (&units[0], t0 + 5 * MINUTE_MS);
        seq += 1;
        let mut batch = CommitBatch::default();
        batch
            .samples
            .push((e1.clone(), probe_at(seq, m5 + 59_000, 900)));
        s.commit(&batch).unwrap();
        let st = s.retain(&keep).unwrap();
        assert_eq!((st.minutes_rolled, st.hours_rolled), (1, 1));
        assert_rolled_from_raw(&s, e1, t0, t0 + 2 * HOUR_MS);

        // Raw records before the second hour go; their minutes stay.
        let raw_cut = Cutoffs {
            raw_before: t0 + HOUR_MS,
            ..keep
        };
        let st = s.retain(&raw_cut).unwrap();
        assert_eq!(st.samples_pruned, 3 * 60 * 5 + 1);
        assert_eq!(count(&pg, "samples"), 3 * 60 * 5);
        for u in &units {
            let q = SampleQuery {
                since_ms: 0,
                until_ms: u64::MAX,
                after: None,
                limit: 1,
            };
            assert!(s.samples(u, q).unwrap().0[0].at_ms >= t0 + HOUR_MS);
            assert_eq!(
                s.rollups(u, Resolution::Minute, t0, t0 + 2 * HOUR_MS, 1000)
                    .unwrap()
                    .0
                    .len(),
                120
            );
        }

        // A late record for a minute whose raw records are gone: merged
        // into the stored minute (and its hour), then deleted.
        let m10 = t0 + 10 * MINUTE_MS;
        let minute_of = |u: &UnitId, m: u64| {
            s.rollups(u, Resolution::Minute, m, m, 1)
                .unwrap()
                .0
                .remove(0)
        };
        let hour_of =
            |u: &UnitId, h: u64| s.rollups(u, Resolution::Hour, h, h, 1).unwrap().0.remove(0);
        let before = minute_of(e1, m10);
        seq += 1;
        let late = probe_at(seq, m10 + 30_000, 2_000);
        let mut batch = CommitBatch::default();
        batch.samples.push((e1.clone(), late.clone()));
        s.commit(&batch).unwrap();
        assert_eq!(count(&pg, "samples WHERE late"), 1);
        let st = s.retain(&raw_cut).unwrap();
        assert_eq!(
            (st.minutes_rolled, st.minutes_from_raw, st.hours_rolled),
            (1, 0, 1)
        );
        assert_eq!(
            count(&pg, "samples WHERE late"),
            0,
            "merged late records are deleted"
        );
        let mut want = before.clone();
        let late_sample = StoredSample {
            boot: late.boot,
            seq: late.seq,
            at_ms: late.at_ms,
            payload: late.payload.clone(),
        };
        rollup::merge(
            &mut want,
            &rollup::roll(m10, std::slice::from_ref(&late_sample)),
        );
        let stored = |r: &Rollup| rollup::decode(r.start_ms, &rollup::encode(r).unwrap()).unwrap();
        assert_eq!(minute_of(e1, m10), stored(&want));
        let (minutes, _) = s
            .rollups(e1, Resolution::Minute, t0, t0 + HOUR_MS - 1, 100)
            .unwrap();
        assert_eq!(hour_of(e1, t0), stored(&rollup::roll_hour(t0, &minutes)));

        // Minutes before the second hour go; the hours stay. A late record
        // for an expired minute merges into its hour.
        let minute_cut = Cutoffs {
            minute_before: t0 + HOUR_MS,
            ..raw_cut
        };
        let st = s.retain(&minute_cut).unwrap();
        assert_eq!(st.minutes_pruned, 3 * 60);
        for u in &units {
            assert_eq!(
                s.rollups(u, Resolution::Minute, t0, t0 + 2 * HOUR_MS, 1000)
                    .unwrap()
                    .0
                    .len(),
                60
            );
        }
        let hour_before = hour_of(e1, t0);
        seq += 1;
        let mut late2 = late.clone();
        late2.seq = seq;
        let mut batch = CommitBatch::default();
        batch.samples.push((e1.clone(), late2));
        s.commit(&batch).unwrap();
        let st = s.retain(&minute_cut).unwrap();
        assert_eq!((st.minutes_rolled, st.hours_rolled), (0, 1));
        let mut want = hour_before.clone();
        rollup::merge(
            &mut want,
            &rollup::roll(m10, &[StoredSample { seq, ..late_sample }]),
        );
        assert_eq!(hour_of(e1, t0), stored(&want));
        assert_eq!(count(&pg, "samples WHERE late"), 0);

        // Hours before the second go.
        let hour_cut = Cutoffs {
            hour_before: t0 + HOUR_MS,
            ..minute_cut
        };
        assert_eq!(s.retain(&hour_cut).unwrap().hours_pruned, 3);
        assert_eq!(
            count(&pg, &format!("rollups WHERE start_ms < {}", t0 + HOUR_MS)),
            0
        );
        assert_eq!(count(&pg, "rollups WHERE res = 'hour'"), 3);
        assert_eq!(
            pg.psql("SELECT value FROM store_meta WHERE key LIKE '%pruned_before' ORDER BY key")
                .unwrap(),
            format!("{}\n{}\n{}", t0 + HOUR_MS, t0 + HOUR_MS, t0 + HOUR_MS)
        );
    }

    /// A commit still running when a round starts: its mark is locked, so
    /// the round leaves that minute to the next round, which sees the
    /// commit's records (a round that took the mark would roll the minute
    /// without them, and nothing would mark it again). The commit is played
    /// by hand, statement by statement, to hold it open.
    #[test]
    fn a_round_leaves_a_minute_whose_commit_is_still_running_to_the_next() {
        let pg = Postgres::start();
        let s = PgStore::open(opts(&pg, "collector-a")).unwrap();
        hold(&pg, &s, &(0..PARTS).collect::<Vec<_>>(), 1);
        let t0 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR_MS;
        let keep = Cutoffs {
            raw_before: 0,
            minute_before: 0,
            hour_before: 0,
        };
        let u = unit("metro-fire", "E1");
        let mut batch = CommitBatch::default();
        batch.samples.push((u.clone(), probe_at(1, t0 + 1_000, 40)));
        s.commit(&batch).unwrap();

        let mut open = CommitBatch::default();
        open.samples.push((u.clone(), probe_at(2, t0 + 2_000, 900)));
        let rows = CommitRows::new(&open, PARTS).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let writer = rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
            tokio::spawn(conn);
            c.batch_execute("BEGIN").await.unwrap();
            c.execute(
                "SELECT pg_advisory_xact_lock_shared($1)",
                &[&WATERMARK_LOCK],
            )
            .await
            .unwrap();
            let (x, m) = (&rows.samples, &rows.marks);
            c.execute(
                INSERT_SAMPLES,
                &[
                    &x.agency, &x.unit, &x.boot, &x.seq, &x.at, &x.payload, &0i64,
                ],
            )
            .await
            .unwrap();
            c.execute(MARK_MINUTES, &[&m.agency, &m.unit, &m.ms])
                .await
                .unwrap();
            c
        });
        assert_eq!(s.retain(&keep).unwrap().minutes_rolled, 0);
        rt.block_on(writer.batch_execute("COMMIT")).unwrap();
        assert_eq!(s.retain(&keep).unwrap().minutes_rolled, 1);
        assert_eq!(assert_rolled_from_raw(&s, &u, t0, t0 + HOUR_MS), 1);
        let minute = s.rollups(&u, Resolution::Minute, t0, t0, 1).unwrap().0;
        assert_eq!(minute[0].probes[0].count, 2);
    }

    /// Retention rounds running while records are committed (as the prune
    /// task runs beside ingest), minutes getting records again and again:
    /// once the commits stop and a last round ran, every minute is the
    /// rollup of its raw records: no record a round could not see yet was
    /// left out, no mark lost.
    #[test]
    fn rounds_beside_commits_leave_every_minute_exact() {
        const MINUTES: u64 = 12;
        let pg = Postgres::start();
        let s = Arc::new(
            PgStore::open(PgStoreOptions {
                pool: 4,
                ..opts(&pg, "collector-a")
            })
            .unwrap(),
        );
        hold(&pg, &s, &(0..PARTS).collect::<Vec<_>>(), 1);
        let t0 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR_MS;
        let keep = Cutoffs {
            raw_before: 0,
            minute_before: 0,
            hour_before: 0,
        };
        let units: Vec<UnitId> = (0..4)
            .map(|i| unit("metro-fire", &format!("E{i}")))
            .collect();
        let writers: Vec<_> = units
            .chunks(2)
            .map(|mine| {
                let (s, mine) = (s.clone(), mine.to_vec());
                std::thread::spawn(move || {
                    for n in 0..150u64 {
                        let mut batch = CommitBatch::default();
                        for u in &mine {
                            for k in 0..3 {
                                let seq = n * 3 + k + 1;
                                let minute = (n * 5 + k) % MINUTES;
                                let at = t0 + minute * MINUTE_MS + (seq * 997) % MINUTE_MS;
                                let ms = 30 + (seq % 40) as u32;
                                batch.samples.push((u.clone(), probe_at(seq, at, ms)));
                            }
                        }
                        s.commit(&batch).unwrap();
                    }
                })
            })
            .collect();
        let mut rounds = 0;
        while !writers.iter().all(|w| w.is_finished()) {
            s.retain(&keep).unwrap();
            rounds += 1;
        }
        for w in writers {
            w.join().unwrap();
        }
        s.retain(&keep).unwrap();
        assert!(rounds > 1, "the rounds ran beside the commits ({rounds})");
        assert_eq!(count(&pg, "dirty_minutes"), 0);
        assert_eq!(count(&pg, "samples"), 4 * 150 * 3);
        for u in &units {
            assert_eq!(
                assert_rolled_from_raw(&s, u, t0, t0 + HOUR_MS),
                MINUTES as usize
            );
        }
    }

    #[test]
    fn load_units_in_takes_only_those_partitions_and_units_changed_since_pages_by_rev() {
        let pg = Postgres::start();
        let s = PgStore::open(opts(&pg, "collector-a")).unwrap();
        hold(&pg, &s, &(0..PARTS).collect::<Vec<_>>(), 1);
        let units: Vec<UnitId> = (0..40)
            .map(|i| unit("metro-fire", &format!("E{i}")))
            .collect();
        let batch = CommitBatch {
            units: units
                .iter()
                .map(|u| UnitRecord::new(u.clone(), 5))
                .collect(),
            ..CommitBatch::default()
        };
        s.commit(&batch).unwrap();
        assert_eq!(s.load_units().unwrap().len(), 40);

        let got: Vec<UnitId> = s
            .load_units_in(&[2, 5])
            .unwrap()
            .into_iter()
            .map(|u| u.unit)
            .collect();
        let mut want: Vec<UnitId> = units
            .iter()
            .filter(|u| [2, 5].contains(&partition::of(u, PARTS).unwrap()))
            .cloned()
            .collect();
        want.sort_by(|a, b| (&a.agency, &a.unit).cmp(&(&b.agency, &b.unit)));
        assert!(!want.is_empty());
        assert_eq!(got, want);
        assert!(s.load_units_in(&[]).unwrap().is_empty());

        // Pages of 7 by rev: every unit once, revs growing.
        let (mut rev, mut seen) = (0, Vec::new());
        loop {
            let (page, next) = s.units_changed_since(rev, 7).unwrap();
            assert!(page.len() <= 7);
            if page.is_empty() {
                assert_eq!(next, rev);
                break;
            }
            assert!(next > rev);
            rev = next;
            seen.extend(page.into_iter().map(|u| u.unit));
        }
        seen.sort_by(|a, b| (&a.agency, &a.unit).cmp(&(&b.agency, &b.unit)));
        let mut all = units.clone();
        all.sort_by(|a, b| (&a.agency, &a.unit).cmp(&(&b.agency, &b.unit)));
        assert_eq!(seen, all);

        // `tail` reads the same pages and stops at the first short one,
        // its cursor at the high-water.
        let (mut from, mut pages) = (0, Vec::new());
        s.tail(&mut from, 7, PgStore::units_changed_since, |p| {
            pages.push(p.len())
        })
        .unwrap();
        let (last, full) = pages.split_last().unwrap();
        assert!(*last < 7 && full.iter().all(|&n| n == 7), "{pages:?}");
        assert_eq!((pages.iter().sum::<usize>(), from), (units.len(), rev));

        // Three units change: the next page from the high-water has them only.
        let changed = [&units[3], &units[17], &units[31]];
        let batch = CommitBatch {
            units: changed
                .iter()
                .map(|u| UnitRecord::new((*u).clone(), 6))
                .collect(),
            ..CommitBatch::default()
        };
        s.commit(&batch).unwrap();
        let (page, next) = s.units_changed_since(rev, 100).unwrap();
        assert!(next > rev);
        let mut got: Vec<&UnitId> = page.iter().map(|u| &u.unit).collect();
        got.sort_by(|a, b| (&a.agency, &a.unit).cmp(&(&b.agency, &b.unit)));
        let mut want = changed.to_vec();
        want.sort_by(|a, b| (&a.agency, &a.unit).cmp(&(&b.agency, &b.unit)));
        assert_eq!(got, want);
        assert!(page.iter().all(|u| u.first_seen_ms == 6));
        assert!(s.units_changed_since(next, 100).unwrap().0.is_empty());
    }

    /// Time a call takes, by tokio's clock (not paused here).
    fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
        let t = tokio::time::Instant::now();
        let r = f();
        (r, t.elapsed())
    }

    #[test]
    fn a_killed_postgres_fails_calls_in_time_and_they_heal_after_it_restarts() {
        let timeout = Duration::from_secs(2);
        let bound = timeout + GRACE;
        let mut pg = Postgres::start();
        let s = PgStore::open_with_timeout(opts(&pg, "collector-a"), timeout).unwrap();
        hold(&pg, &s, &(0..PARTS).collect::<Vec<_>>(), 1);
        let u = unit("metro-fire", "E1");
        s.commit(&batch_for(&u, 1, 5)).unwrap();

        pg.kill();
        let (r, took) = timed(|| s.ping());
        assert!(r.is_err() && took < bound, "ping: {r:?} in {took:?}");
        let (r, took) = timed(|| s.commit(&batch_for(&u, 2, 5)));
        assert!(
            matches!(r, Err(StoreError::Postgres(_))) && took < bound,
            "commit: {r:?} in {took:?}"
        );
        let (r, took) = timed(|| s.load_units());
        assert!(r.is_err() && took < bound, "load_units: {r:?} in {took:?}");
        let (r, took) = timed(|| s.events_after(0, 10));
        assert!(
            r.is_err() && took < bound,
            "events_after: {r:?} in {took:?}"
        );
        assert_eq!(s.size_on_disk(), 0);

        pg.start_again();
        s.ping().unwrap();
        s.commit(&batch_for(&u, 2, 5)).unwrap();
        assert_eq!(s.load_units().unwrap().len(), 1);
        assert_eq!(s.events_after(0, 10).unwrap().len(), 2);
        assert_eq!(count(&pg, "samples"), 2);

        // A server that holds a call up (a lock another session keeps):
        // the call fails at the timeout, and the next one works.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let locker = rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
            tokio::spawn(conn);
            c.batch_execute("BEGIN; LOCK TABLE units IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            c
        });
        let (r, took) = timed(|| s.load_units());
        assert!(
            matches!(&r, Err(StoreError::Postgres(_))) && took >= timeout / 2 && took < bound,
            "load_units behind a lock: {r:?} in {took:?}"
        );
        rt.block_on(locker.batch_execute("ROLLBACK")).unwrap();
        assert_eq!(s.load_units().unwrap().len(), 1);
    }

    /// Called from a current-thread runtime's only thread (as `Worker::new`
    /// calls `load_units`) and dropped there: no deadlock, no panic.
    #[tokio::test(flavor = "current_thread")]
    async fn usable_and_dropped_inside_a_runtime() {
        let pg = Postgres::start();
        let s = PgStore::open(opts(&pg, "collector-a")).unwrap();
        s.ping().unwrap();
        assert!(s.load_units().unwrap().is_empty());
        assert_eq!(s.last_event_id().unwrap(), 0);
        // Measured in the background: the first answer may be 0.
        let mut size = s.size_on_disk();
        for _ in 0..100 {
            if size > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            size = s.size_on_disk();
        }
        assert!(size > 0);
        let s = Arc::new(s);
        let t = {
            let s = s.clone();
            tokio::task::spawn_blocking(move || s.incidents().map(|i| i.len()))
        };
        assert_eq!(t.await.unwrap().unwrap(), 0);
        drop(s);
    }
}
