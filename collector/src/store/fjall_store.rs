//! The embedded store: one fjall keyspace (an LSM tree per partition, lz4
//! blocks, one shared journal) under `<data dir>/store`.
//!
//! Why fjall and not sled: `benches/store.rs` measured it (issue 14): sled
//! takes 1.3-1.4 KB on disk per ~190-byte record and never gives space
//! back; fjall's compressed blocks take a fraction of that, and compaction
//! drops pruned entries, so the store's size follows its retention.
//!
//! Partitions and keys (the same order as the sled store had):
//! * `units`: `agency 0x00 unit` -> JSON [`UnitRecord`].
//! * `samples`: `agency 0x00 unit 0x00 at_ms(be) boot(be) seq(be)` -> the
//!   record in the wire encoding (`muster_proto::encode` of a one-record
//!   message: compact, and versioned like everything else on the wire).
//! * `minutes` / `hours`: `agency 0x00 unit 0x00 start_ms(be)` -> JSON
//!   [`super::rollup::Rollup`] of that minute / hour (`super::rollup`).
//! * `events`: `id(be)` -> JSON [`StoredEvent`]; `events_by_agency`:
//!   `agency 0x00 id(be)` -> empty, the index agency-scoped listings use.
//! * `incidents`: incident id -> JSON [`Incident`] (latest version).
//! * `enrollments`: `agency 0x00 unit` -> JSON [`Enrollment`].
//!
//! Durability and consistency: every commit (and every enrolment, and every
//! prune) is ONE fjall batch over all partitions, written to the journal
//! atomically and fsynced (`PersistMode::SyncAll`) before `commit` returns.
//! A crash recovers a prefix of whole batches, so the seq accounting in
//! `units` never claims a record whose sample is not there; what was not
//! synced was not acked and is resent.
//!
//! Memory: the block cache is `store.cache_mib`; memtables are bounded by
//! the write buffer ([`write_buffer_bytes`], derived from the cache) and the
//! journal by [`journal_bytes`].
//!
//! Upgrade: a data dir that holds a sled store (files `conf` and `db` from
//! before issue 14) is imported at open: units, enrolments, events and
//! incidents (not raw samples: they are short-lived), then the sled files
//! move to `<data dir>/sled-old/` (delete it once satisfied).

use std::path::Path;

use fjall::{
    Batch, CompressionType, Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode,
};
use muster_proto::{Body, Message, Payload, UnitId};

use super::rollup::{Resolution, Rollup};
use super::{
    CommitBatch, EventQuery, Latest, PruneStats, SampleCursor, SampleQuery, Store, StoreError,
    StoredEvent, StoredSample, UnitRecord,
};
use crate::enroll::registry::Enrollment;
use crate::model::{Change, Incident};

pub struct FjallStore {
    ks: Keyspace,
    units: PartitionHandle,
    samples: PartitionHandle,
    minutes: PartitionHandle,
    hours: PartitionHandle,
    events: PartitionHandle,
    events_by_agency: PartitionHandle,
    incidents: PartitionHandle,
    enrollments: PartitionHandle,
}

/// All memtables together at most this (fjall's write buffer): an eighth of
/// the block cache, 4 to 64 MiB.
pub fn write_buffer_bytes(cache_bytes: u64) -> u64 {
    (cache_bytes / 8).clamp(4 << 20, 64 << 20)
}

/// The journal at most this on disk before memtables are flushed (fjall's
/// floor is 24 MiB).
pub fn journal_bytes(cache_bytes: u64) -> u64 {
    (write_buffer_bytes(cache_bytes) * 2).max(32 << 20)
}

pub(super) fn unit_key(u: &UnitId) -> Vec<u8> {
    let mut k = Vec::with_capacity(u.agency.len() + u.unit.len() + 1);
    k.extend_from_slice(u.agency.as_bytes());
    k.push(0);
    k.extend_from_slice(u.unit.as_bytes());
    k
}

pub(super) fn sample_prefix(u: &UnitId) -> Vec<u8> {
    let mut k = unit_key(u);
    k.push(0);
    k
}

pub(super) fn sample_key(prefix: &[u8], at_ms: u64, boot: u64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 24);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&boot.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn rollup_key(prefix: &[u8], start_ms: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&start_ms.to_be_bytes());
    k
}

fn corrupt(tree: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        tree,
        detail: detail.to_string(),
    }
}

pub(super) fn decode_sample(v: &[u8]) -> Result<StoredSample, StoreError> {
    let d = muster_proto::decode(v).map_err(|e| corrupt("samples", e))?;
    match d.message.body {
        Body::Record(r) => Ok(StoredSample {
            boot: r.boot,
            seq: r.seq,
            at_ms: r.at_ms,
            payload: r.payload,
        }),
        _ => Err(corrupt("samples", "not a record")),
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn event_at(ev: &StoredEvent) -> u64 {
    match &ev.change {
        Change::Transition(t) => t.at_ms,
        Change::Incident(i) => i.ended_ms.unwrap_or(i.since_ms),
    }
}

/// Is there a sled store (from before issue 14) directly in `dir`?
fn holds_sled(dir: &Path) -> bool {
    dir.join("conf").is_file() && dir.join("db").is_file()
}

impl FjallStore {
    /// Opens (or creates) the store under the data directory `dir`,
    /// importing a sled store found there (see the module docs).
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<FjallStore, StoreError> {
        let store = Self::open_at(&dir.join("store"), cache_bytes)?;
        if holds_sled(dir) {
            store.import_sled(dir, cache_bytes)?;
        }
        Ok(store)
    }

    /// Opens the keyspace itself at `path`.
    pub fn open_at(path: &Path, cache_bytes: u64) -> Result<FjallStore, StoreError> {
        let ks = Config::new(path)
            .cache_size(cache_bytes)
            .max_write_buffer_size(write_buffer_bytes(cache_bytes))
            .max_journaling_size(journal_bytes(cache_bytes))
            // Durability comes from each batch's SyncAll.
            .fsync_ms(None)
            .open()?;
        let memtable = (write_buffer_bytes(cache_bytes) / 4) as u32;
        let open = |name: &str, block: u32| {
            ks.open_partition(
                name,
                PartitionCreateOptions::default()
                    .compression(CompressionType::Lz4)
                    .block_size(block)
                    .max_memtable_size(memtable),
            )
        };
        Ok(FjallStore {
            units: open("units", 4096)?,
            // Scanned in ranges: larger blocks compress better.
            samples: open("samples", 32 * 1024)?,
            minutes: open("minutes", 32 * 1024)?,
            hours: open("hours", 32 * 1024)?,
            events: open("events", 16 * 1024)?,
            events_by_agency: open("events_by_agency", 16 * 1024)?,
            incidents: open("incidents", 4096)?,
            enrollments: open("enrollments", 4096)?,
            ks,
        })
    }

    fn batch(&self) -> Batch {
        self.ks.batch().durability(Some(PersistMode::SyncAll))
    }

    /// Copies a sled store's units, enrolments, events and incidents in one
    /// batch, then moves the sled files aside to `sled-old/`.
    fn import_sled(&self, dir: &Path, cache_bytes: u64) -> Result<(), StoreError> {
        let old = super::SledStore::open(dir, cache_bytes)?;
        let mut batch = CommitBatch {
            units: old.load_units()?,
            incidents: old.incidents()?,
            ..CommitBatch::default()
        };
        let mut before_id = None;
        loop {
            let (evs, more) = old.events(&EventQuery {
                agency: None,
                unit: None,
                before_id,
                limit: 10_000,
            })?;
            before_id = evs.last().map(|e| e.id);
            batch.events.extend(evs);
            if !more {
                break;
            }
        }
        batch.events.reverse();
        let enrollments = old.load_enrollments()?;
        drop(old);
        self.commit(&batch)?;
        for e in &enrollments {
            self.put_enrollment(e)?;
        }
        let aside = dir.join("sled-old");
        std::fs::create_dir_all(&aside).map_err(|e| corrupt("import", e))?;
        for entry in std::fs::read_dir(dir).map_err(|e| corrupt("import", e))? {
            let entry = entry.map_err(|e| corrupt("import", e))?;
            let name = entry.file_name();
            let n = name.to_string_lossy();
            if n == "conf" || n == "db" || n == "blobs" || n.starts_with("snap.") {
                std::fs::rename(entry.path(), aside.join(&name))
                    .map_err(|e| corrupt("import", e))?;
            }
        }
        tracing::info!(
            units = batch.units.len(),
            events = batch.events.len(),
            incidents = batch.incidents.len(),
            enrollments = enrollments.len(),
            aside = %aside.display(),
            "Imported the sled store (raw samples not imported)."
        );
        Ok(())
    }

    fn rollup_tree(&self, r: Resolution) -> &PartitionHandle {
        match r {
            Resolution::Minute => &self.minutes,
            Resolution::Hour => &self.hours,
        }
    }

    /// Every unit's sample-key prefix.
    fn unit_prefixes(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.units
            .keys()
            .map(|k| {
                let mut p = k?.to_vec();
                p.push(0);
                Ok(p)
            })
            .collect()
    }
}

impl Store for FjallStore {
    fn load_units(&self) -> Result<Vec<UnitRecord>, StoreError> {
        self.units
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                let mut u: UnitRecord =
                    serde_json::from_slice(&v).map_err(|e| corrupt("units", e))?;
                u.upgrade_presence();
                Ok(u)
            })
            .collect()
    }

    fn last_event_id(&self) -> Result<u64, StoreError> {
        Ok(self
            .events
            .last_key_value()?
            .map(|(k, _)| be_u64(&k))
            .unwrap_or(0))
    }

    fn commit(&self, batch: &CommitBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut b = self.batch();
        for (unit, rec) in &batch.samples {
            let key = sample_key(&sample_prefix(unit), rec.at_ms, rec.boot.0, rec.seq);
            let msg = Message {
                unit: unit.clone(),
                body: Body::Record(rec.clone()),
            };
            let v = muster_proto::encode(&msg).map_err(|e| corrupt("samples", e))?;
            b.insert(&self.samples, key, v);
        }
        for ev in &batch.events {
            let v = serde_json::to_vec(ev).map_err(|e| corrupt("events", e))?;
            b.insert(&self.events, ev.id.to_be_bytes(), v);
            let mut k = ev.agency().as_bytes().to_vec();
            k.push(0);
            k.extend_from_slice(&ev.id.to_be_bytes());
            b.insert(&self.events_by_agency, k, []);
        }
        for i in &batch.incidents {
            let v = serde_json::to_vec(i).map_err(|e| corrupt("incidents", e))?;
            b.insert(&self.incidents, i.id.as_bytes(), v);
        }
        for u in &batch.units {
            let v = serde_json::to_vec(u).map_err(|e| corrupt("units", e))?;
            b.insert(&self.units, unit_key(&u.unit), v);
        }
        b.commit()?;
        Ok(())
    }

    fn samples(
        &self,
        unit: &UnitId,
        q: SampleQuery,
    ) -> Result<(Vec<StoredSample>, Option<SampleCursor>), StoreError> {
        let prefix = sample_prefix(unit);
        let start = match q.after {
            Some(c) => {
                let mut k = sample_key(&prefix, c.at_ms, c.boot, c.seq);
                k.push(0); // strictly after the cursor's key
                k
            }
            None => sample_key(&prefix, q.since_ms, 0, 0),
        };
        let end = sample_key(&prefix, q.until_ms, u64::MAX, u64::MAX);
        let mut out = Vec::new();
        if start > end {
            return Ok((out, None));
        }
        for kv in self.samples.range(start..=end) {
            let (_, v) = kv?;
            if out.len() == q.limit {
                let cursor = out.last().map(|last: &StoredSample| SampleCursor {
                    at_ms: last.at_ms,
                    boot: last.boot.0,
                    seq: last.seq,
                });
                return Ok((out, cursor));
            }
            out.push(decode_sample(&v)?);
        }
        Ok((out, None))
    }

    fn latest(&self, unit: &UnitId) -> Result<Latest, StoreError> {
        /// How far back to look for the newest result of each probe.
        const SCAN: usize = 500;
        let mut latest = Latest::default();
        let mut seen_probes = std::collections::HashSet::new();
        for kv in self.samples.prefix(sample_prefix(unit)).rev().take(SCAN) {
            let (_, v) = kv?;
            let s = decode_sample(&v)?;
            match &s.payload {
                Payload::Host(_) if latest.host.is_none() => latest.host = Some(s),
                Payload::Status(_) if latest.status.is_none() => latest.status = Some(s),
                Payload::Probe(p) if seen_probes.insert(p.name.clone()) => latest.probes.push(s),
                _ => {}
            }
        }
        latest
            .probes
            .sort_by(|a, b| match (&a.payload, &b.payload) {
                (Payload::Probe(x), Payload::Probe(y)) => x.name.cmp(&y.name),
                _ => std::cmp::Ordering::Equal,
            });
        Ok(latest)
    }

    fn events(&self, q: &EventQuery) -> Result<(Vec<StoredEvent>, bool), StoreError> {
        let before = q.before_id.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut push = |ev: StoredEvent| -> bool {
            if let Some(u) = &q.unit {
                match &ev.change {
                    Change::Transition(t) if t.agency == u.agency && t.unit == u.unit => {}
                    _ => return true,
                }
            }
            if out.len() == q.limit {
                return false;
            }
            out.push(ev);
            true
        };
        let mut more = false;
        match &q.agency {
            None => {
                for kv in self.events.range(..before.to_be_bytes()).rev() {
                    let (_, v) = kv?;
                    let ev = serde_json::from_slice(&v).map_err(|e| corrupt("events", e))?;
                    if !push(ev) {
                        more = true;
                        break;
                    }
                }
            }
            Some(agency) => {
                let mut lo = agency.as_bytes().to_vec();
                lo.push(0);
                let mut hi = lo.clone();
                hi.extend_from_slice(&before.to_be_bytes());
                for kv in self.events_by_agency.range(lo.clone()..hi).rev() {
                    let (k, _) = kv?;
                    let id = be_u64(&k[lo.len()..]);
                    let Some(v) = self.events.get(id.to_be_bytes())? else {
                        continue; // pruned between the index and the event
                    };
                    let ev = serde_json::from_slice(&v).map_err(|e| corrupt("events", e))?;
                    if !push(ev) {
                        more = true;
                        break;
                    }
                }
            }
        }
        Ok((out, more))
    }

    fn incidents(&self) -> Result<Vec<Incident>, StoreError> {
        self.incidents
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                serde_json::from_slice(&v).map_err(|e| corrupt("incidents", e))
            })
            .collect()
    }

    fn prune(
        &self,
        samples_before_ms: u64,
        events_before_ms: u64,
    ) -> Result<PruneStats, StoreError> {
        let mut stats = PruneStats::default();
        for prefix in self.unit_prefixes()? {
            let end = sample_key(&prefix, samples_before_ms, 0, 0);
            let mut b = self.batch();
            for kv in self.samples.range(prefix.clone()..end) {
                b.remove(&self.samples, kv?.0);
                stats.samples += 1;
            }
            if !b.is_empty() {
                b.commit()?;
            }
        }
        let mut b = self.batch();
        for kv in self.events.iter() {
            let (k, v) = kv?;
            let ev: StoredEvent = serde_json::from_slice(&v).map_err(|e| corrupt("events", e))?;
            if event_at(&ev) >= events_before_ms {
                break;
            }
            let mut ik = ev.agency().as_bytes().to_vec();
            ik.push(0);
            ik.extend_from_slice(&k);
            b.remove(&self.events, k);
            b.remove(&self.events_by_agency, ik);
            stats.events += 1;
        }
        for inc in self.incidents()? {
            if inc.ended_ms.is_some_and(|e| e < events_before_ms) {
                b.remove(&self.incidents, inc.id.as_bytes());
                stats.incidents += 1;
            }
        }
        if !b.is_empty() {
            b.commit()?;
        }
        Ok(stats)
    }

    fn size_on_disk(&self) -> u64 {
        self.ks.disk_space()
    }

    fn load_enrollments(&self) -> Result<Vec<Enrollment>, StoreError> {
        self.enrollments
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                serde_json::from_slice(&v).map_err(|e| corrupt("enrollments", e))
            })
            .collect()
    }

    fn put_enrollment(&self, e: &Enrollment) -> Result<(), StoreError> {
        let v = serde_json::to_vec(e).map_err(|err| corrupt("enrollments", err))?;
        let mut b = self.batch();
        b.insert(&self.enrollments, unit_key(&e.unit), v);
        b.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Status, Transition};
    use muster_proto::fixtures;

    fn unit(a: &str, u: &str) -> UnitId {
        UnitId::new(a, u).unwrap()
    }

    fn transition(a: &str, u: &str, at_ms: u64) -> Change {
        Change::Transition(Transition {
            agency: a.into(),
            unit: u.into(),
            from: Status::Ok,
            to: Status::Degraded,
            at_ms,
            reasons: vec![],
        })
    }

    #[test]
    fn commit_survives_reopen_and_queries_page() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let u = unit("metro-fire", "E12");
        {
            let s = FjallStore::open(dir.path(), 1 << 20).unwrap();
            let mut batch = CommitBatch::default();
            for seq in 1..=10 {
                let rec = fixtures::record(seq, Payload::Host(fixtures::host_sample()));
                batch.samples.push((u.clone(), rec));
            }
            batch.units.push(UnitRecord::new(u.clone(), 5));
            batch.events = (1..=5)
                .map(|id| StoredEvent {
                    id,
                    change: transition(if id % 2 == 0 { "a" } else { "b" }, "E1", id * 10),
                })
                .collect();
            s.commit(&batch).unwrap();
        }
        let s = FjallStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.load_units().unwrap().len(), 1);
        assert_eq!(s.last_event_id().unwrap(), 5);
        let q = SampleQuery {
            since_ms: 0,
            until_ms: u64::MAX,
            after: None,
            limit: 4,
        };
        let (page1, c) = s.samples(&u, q).unwrap();
        assert_eq!(
            page1.iter().map(|x| x.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let c = SampleCursor::decode(&c.unwrap().encode()).unwrap();
        let (page2, _) = s
            .samples(
                &u,
                SampleQuery {
                    after: Some(c),
                    ..q
                },
            )
            .unwrap();
        assert_eq!(
            page2.iter().map(|x| x.seq).collect::<Vec<_>>(),
            [5, 6, 7, 8]
        );
        // since filters by event time.
        let since = fixtures::AT_MS + 9 * 5_000;
        let (tail, more) = s
            .samples(
                &u,
                SampleQuery {
                    since_ms: since,
                    ..q
                },
            )
            .unwrap();
        assert_eq!(tail.iter().map(|x| x.seq).collect::<Vec<_>>(), [9, 10]);
        assert!(more.is_none());
        let latest = s.latest(&u).unwrap();
        assert_eq!(latest.host.unwrap().seq, 10);

        let evq = |agency: Option<&str>, before_id, limit| EventQuery {
            agency: agency.map(str::to_owned),
            unit: None,
            before_id,
            limit,
        };
        let (all, more) = s.events(&evq(None, None, 3)).unwrap();
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [5, 4, 3]);
        assert!(more);
        let (a, more) = s.events(&evq(Some("a"), None, 10)).unwrap();
        assert_eq!(a.iter().map(|e| e.id).collect::<Vec<_>>(), [4, 2]);
        assert!(!more);
        let (b, _) = s.events(&evq(Some("b"), Some(5), 10)).unwrap();
        assert_eq!(b.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 1]);

        let st = s.prune(fixtures::AT_MS + 3 * 5_000, 25).unwrap();
        assert_eq!(st.samples, 2);
        assert_eq!(st.events, 2);
        let (a, _) = s.events(&evq(Some("a"), None, 10)).unwrap();
        assert_eq!(a.iter().map(|e| e.id).collect::<Vec<_>>(), [4]);
    }

    /// A data dir from before issue 14 (a sled store) is imported at open:
    /// units, enrolments, events, incidents; the sled files move aside.
    #[test]
    fn a_sled_store_is_imported_and_moved_aside() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let u = unit("metro-fire", "E12");
        let enrollment = Enrollment {
            unit: u.clone(),
            state: crate::enroll::registry::EnrollState::Active,
            credential_sha256: "ab".repeat(32),
            created_ms: 1,
            updated_ms: 2,
        };
        {
            let s = crate::store::SledStore::open(dir.path(), 1 << 20).unwrap();
            let mut batch = CommitBatch::default();
            batch.units.push(UnitRecord::new(u.clone(), 5));
            batch.events = (1..=3)
                .map(|id| StoredEvent {
                    id,
                    change: transition("metro-fire", "E12", id * 10),
                })
                .collect();
            batch.samples.push((
                u.clone(),
                fixtures::record(1, Payload::Host(fixtures::host_sample())),
            ));
            s.commit(&batch).unwrap();
            s.put_enrollment(&enrollment).unwrap();
        }
        let s = muster_testkit::eventually_blocking(
            "sled's file lock to be released",
            std::time::Duration::from_secs(10),
            || FjallStore::open(dir.path(), 1 << 20),
        );
        assert_eq!(s.load_units().unwrap(), [UnitRecord::new(u.clone(), 5)]);
        assert_eq!(s.last_event_id().unwrap(), 3);
        assert_eq!(s.load_enrollments().unwrap(), [enrollment]);
        assert!(!dir.path().join("db").exists());
        assert!(dir.path().join("sled-old").join("db").exists());
        drop(s);
        // Opened again: nothing to import, the data stays.
        let s = FjallStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.load_units().unwrap().len(), 1);
        assert_eq!(s.last_event_id().unwrap(), 3);
    }

    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        #[derive(Debug, Clone)]
        enum Op {
            /// (unit index, at offset, seq) records in one commit.
            Commit(Vec<(usize, u64, u64)>),
            Prune(u64),
            Reopen,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => proptest::collection::vec((0usize..3, 0u64..50, 0u64..20), 0..12)
                    .prop_map(Op::Commit),
                1 => (0u64..50).prop_map(Op::Prune),
                1 => Just(Op::Reopen),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]
            /// commit / samples (paged) / prune / reopen against a BTreeMap.
            #[test]
            fn the_store_behaves_as_an_ordered_map(ops in proptest::collection::vec(op(), 1..20), page in 1usize..7) {
                let dir = muster_testkit::TempDir::new().unwrap();
                let units = [unit("a", "E1"), unit("a", "E10"), unit("b", "E1")];
                let mut model: BTreeMap<(usize, u64, u64), ()> = BTreeMap::new();
                let mut s = Some(FjallStore::open(dir.path(), 1 << 20).unwrap());
                for op in ops {
                    let st = s.as_ref().unwrap();
                    match op {
                        Op::Commit(recs) => {
                            let mut batch = CommitBatch::default();
                            for (u, at, seq) in recs {
                                let mut r = fixtures::record(seq, Payload::Host(fixtures::host_sample()));
                                r.at_ms = at;
                                batch.samples.push((units[u].clone(), r));
                                batch.units.push(UnitRecord::new(units[u].clone(), at));
                                model.insert((u, at, seq), ());
                            }
                            st.commit(&batch).unwrap();
                        }
                        Op::Prune(before) => {
                            let n = st.prune(before, 0).unwrap().samples;
                            let before_len = model.len();
                            model.retain(|(_, at, _), _| *at >= before);
                            prop_assert_eq!(n as usize, before_len - model.len());
                        }
                        Op::Reopen => {
                            drop(s.take());
                            s = Some(FjallStore::open(dir.path(), 1 << 20).unwrap());
                        }
                    }
                    let st = s.as_ref().unwrap();
                    for (i, u) in units.iter().enumerate() {
                        let want: Vec<(u64, u64)> = model
                            .keys()
                            .filter(|(m, _, _)| *m == i)
                            .map(|(_, at, seq)| (*at, *seq))
                            .collect();
                        let mut got = Vec::new();
                        let mut after = None;
                        loop {
                            let (items, c) = st
                                .samples(u, SampleQuery { since_ms: 0, until_ms: u64::MAX, after, limit: page })
                                .unwrap();
                            got.extend(items.iter().map(|x| (x.at_ms, x.seq)));
                            match c {
                                Some(c) => after = Some(c),
                                None => break,
                            }
                        }
                        prop_assert_eq!(got, want);
                    }
                }
            }
        }
    }
}
