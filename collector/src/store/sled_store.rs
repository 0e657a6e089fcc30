//! The collector's store before issue 14: one sled database in the data
//! directory. Kept only so `FjallStore::open` can import an old data dir.
//!
//! Trees and keys:
//! * `units`: `agency 0x00 unit` -> JSON [`UnitRecord`].
//! * `samples`: `agency 0x00 unit 0x00 at_ms(be) boot(be) seq(be)` -> the
//!   record in the wire encoding (`muster_proto::encode` of a one-record
//!   message: compact, and versioned like everything else on the wire).
//! * `events`: `id(be)` -> JSON [`StoredEvent`]; `events_by_agency`:
//!   `agency 0x00 id(be)` -> empty, the index agency-scoped listings use.
//! * `incidents`: incident id -> JSON [`Incident`] (latest version).
//! * `enrollments`: `agency 0x00 unit` -> JSON [`Enrollment`], written and
//!   flushed one at a time (enrolments are rare; each is answered only once
//!   durable).
//!
//! A commit writes samples, then events and incidents, then units (which
//! hold the seq accounting), then flushes. sled recovers a prefix of its
//! log after a crash, so the seq state on disk never claims a record whose
//! sample is not there; what was not flushed was not acked and is resent.

use std::path::Path;

use muster_proto::{Body, Message, UnitId};

use super::keys::{
    EventPage, be_u64, corrupt, decode_sample, event_at, pick_latest, sample_key, sample_prefix,
    unit_key,
};
use super::{
    CommitBatch, EventQuery, Latest, PruneStats, SampleCursor, SampleQuery, Store, StoreError,
    StoredEvent, StoredSample, UnitRecord,
};
use crate::enroll::registry::Enrollment;
use crate::model::Incident;

pub struct SledStore {
    db: sled::Db,
    units: sled::Tree,
    samples: sled::Tree,
    events: sled::Tree,
    events_by_agency: sled::Tree,
    incidents: sled::Tree,
    enrollments: sled::Tree,
}

impl SledStore {
    pub fn open(path: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // Durability comes from the explicit flush of each group commit.
            .flush_every_ms(None)
            .open()?;
        Ok(SledStore {
            units: db.open_tree("units")?,
            samples: db.open_tree("samples")?,
            events: db.open_tree("events")?,
            events_by_agency: db.open_tree("events_by_agency")?,
            incidents: db.open_tree("incidents")?,
            enrollments: db.open_tree("enrollments")?,
            db,
        })
    }
}

impl Store for SledStore {
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
        Ok(self.events.last()?.map(|(k, _)| be_u64(&k)).unwrap_or(0))
    }

    fn commit(&self, batch: &CommitBatch) -> Result<(), StoreError> {
        if !batch.samples.is_empty() {
            let mut b = sled::Batch::default();
            for (unit, rec) in &batch.samples {
                let key = sample_key(&sample_prefix(unit), rec.at_ms, rec.boot.0, rec.seq);
                let msg = Message {
                    unit: unit.clone(),
                    body: Body::Record(rec.clone()),
                };
                let v = muster_proto::encode(&msg).map_err(|e| corrupt("samples", e))?;
                b.insert(key, v);
            }
            self.samples.apply_batch(b)?;
        }
        if !batch.events.is_empty() {
            let mut b = sled::Batch::default();
            let mut ix = sled::Batch::default();
            for ev in &batch.events {
                let v = serde_json::to_vec(ev).map_err(|e| corrupt("events", e))?;
                b.insert(&ev.id.to_be_bytes(), v);
                let mut k = ev.agency().as_bytes().to_vec();
                k.push(0);
                k.extend_from_slice(&ev.id.to_be_bytes());
                ix.insert(k, &[][..]);
            }
            self.events.apply_batch(b)?;
            self.events_by_agency.apply_batch(ix)?;
        }
        if !batch.incidents.is_empty() {
            let mut b = sled::Batch::default();
            for i in &batch.incidents {
                let v = serde_json::to_vec(i).map_err(|e| corrupt("incidents", e))?;
                b.insert(i.id.as_bytes(), v);
            }
            self.incidents.apply_batch(b)?;
        }
        if !batch.units.is_empty() {
            let mut b = sled::Batch::default();
            for u in &batch.units {
                let v = serde_json::to_vec(u).map_err(|e| corrupt("units", e))?;
                b.insert(unit_key(&u.unit), v);
            }
            self.units.apply_batch(b)?;
        }
        self.db.flush()?;
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
        pick_latest(
            self.samples
                .scan_prefix(sample_prefix(unit))
                .rev()
                .take(SCAN)
                .map(|kv| {
                    kv.map_err(StoreError::from)
                        .and_then(|(_, v)| decode_sample(&v))
                }),
        )
    }

    fn events(&self, q: &EventQuery) -> Result<(Vec<StoredEvent>, bool), StoreError> {
        let before = q.before_id.unwrap_or(u64::MAX);
        let mut page = EventPage::new(q);
        let mut more = false;
        match &q.agency {
            None => {
                for kv in self.events.range(..before.to_be_bytes()).rev() {
                    let (_, v) = kv?;
                    let ev = serde_json::from_slice(&v).map_err(|e| corrupt("events", e))?;
                    if !page.push(ev) {
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
                    if !page.push(ev) {
                        more = true;
                        break;
                    }
                }
            }
        }
        Ok(page.finish(more))
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
        for kv in self.units.iter() {
            let (k, _) = kv?;
            let mut prefix = k.to_vec();
            prefix.push(0);
            let end = sample_key(&prefix, samples_before_ms, 0, 0);
            let mut b = sled::Batch::default();
            for kv in self.samples.range(prefix.clone()..end) {
                let (k, _) = kv?;
                b.remove(k);
                stats.samples += 1;
            }
            self.samples.apply_batch(b)?;
        }
        let mut b = sled::Batch::default();
        let mut ix = sled::Batch::default();
        for kv in self.events.iter() {
            let (k, v) = kv?;
            let ev: StoredEvent = serde_json::from_slice(&v).map_err(|e| corrupt("events", e))?;
            if event_at(&ev) >= events_before_ms {
                break;
            }
            b.remove(k.clone());
            let mut ik = ev.agency().as_bytes().to_vec();
            ik.push(0);
            ik.extend_from_slice(&k);
            ix.remove(ik);
            stats.events += 1;
        }
        self.events.apply_batch(b)?;
        self.events_by_agency.apply_batch(ix)?;
        for inc in self.incidents()? {
            if inc.ended_ms.is_some_and(|e| e < events_before_ms) {
                self.incidents.remove(inc.id.as_bytes())?;
                stats.incidents += 1;
            }
        }
        if stats != PruneStats::default() {
            self.db.flush()?;
        }
        Ok(stats)
    }

    /// The sled store is only opened to import it (`FjallStore::open`):
    /// it has no rollups.
    fn retain(&self, _cut: &super::rollup::Cutoffs) -> Result<super::RetainStats, StoreError> {
        Ok(super::RetainStats::default())
    }

    fn rollups(
        &self,
        _unit: &UnitId,
        _res: super::rollup::Resolution,
        _since_ms: u64,
        _until_ms: u64,
        _limit: usize,
    ) -> Result<(Vec<super::rollup::Rollup>, bool), StoreError> {
        Ok((Vec::new(), false))
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
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
        self.enrollments.insert(unit_key(&e.unit), v)?;
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_survives_reopen_and_queries_page() {
        super::super::suite::commit_survives_reopen_and_queries_page(
            |dir| {
                // sled's flusher thread lets go of the file lock a moment
                // after the store is dropped: reopen once it has.
                Box::new(muster_testkit::eventually_blocking(
                    "the store's file lock to be released",
                    std::time::Duration::from_secs(10),
                    || SledStore::open(dir, 1 << 20),
                ))
            },
            2,
        );
    }

    #[test]
    fn bad_cursors_are_refused() {
        for c in ["", "x", "1.2", "1.2.3.4", "g.1.1"] {
            assert!(SampleCursor::decode(c).is_err(), "{c}");
        }
    }
}
