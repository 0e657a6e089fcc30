//! A store for tests: the real one behind a valve the test opens and
//! closes, with a delay per commit; it remembers every seq of every commit
//! that returned Ok (what is durably stored, to check acks against).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use muster_collector::app::Wiring;
use muster_collector::enroll::registry::Enrollment;
use muster_collector::model::Incident;
use muster_collector::store::rollup::{Cutoffs, Resolution, Rollup};
use muster_collector::store::{
    CommitBatch, EventQuery, Latest, PruneStats, RetainStats, SampleCursor, SampleQuery, Store,
    StoreError, StoredEvent, StoredSample, UnitRecord,
};
use muster_proto::UnitId;

/// The real store behind a valve the test opens and closes, and a delay
/// per commit; it remembers every seq of every commit that returned Ok.
pub struct Valve {
    open: Mutex<bool>,
    cv: Condvar,
    pub delay_ms: AtomicU64,
    stored: Mutex<BTreeSet<(UnitId, u64, u64)>>,
}

impl Valve {
    pub fn new() -> Arc<Valve> {
        Arc::new(Valve {
            open: Mutex::new(true),
            cv: Condvar::new(),
            delay_ms: AtomicU64::new(0),
            stored: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn set(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.cv.notify_all();
    }

    pub fn stored(&self) -> BTreeSet<(UnitId, u64, u64)> {
        self.stored.lock().unwrap().clone()
    }

    /// Closes the valve until the guard drops (also when the test fails,
    /// so a blocked commit never outlives it).
    pub fn close(self: &Arc<Self>) -> Closed {
        self.set(false);
        Closed(Arc::clone(self))
    }
}

pub struct Closed(Arc<Valve>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

struct SlowStore {
    inner: Arc<dyn Store>,
    valve: Arc<Valve>,
}

impl Store for SlowStore {
    fn load_units(&self) -> Result<Vec<UnitRecord>, StoreError> {
        self.inner.load_units()
    }
    fn last_event_id(&self) -> Result<u64, StoreError> {
        self.inner.last_event_id()
    }
    fn commit(&self, batch: &CommitBatch) -> Result<(), StoreError> {
        {
            let open = self.valve.open.lock().unwrap();
            let _open = self.valve.cv.wait_while(open, |o| !*o).unwrap();
        }
        std::thread::sleep(Duration::from_millis(
            self.valve.delay_ms.load(Ordering::Relaxed),
        ));
        self.inner.commit(batch)?;
        let mut stored = self.valve.stored.lock().unwrap();
        for (u, r) in &batch.samples {
            stored.insert((u.clone(), r.boot.0, r.seq));
        }
        Ok(())
    }
    fn samples(
        &self,
        unit: &UnitId,
        q: SampleQuery,
    ) -> Result<(Vec<StoredSample>, Option<SampleCursor>), StoreError> {
        self.inner.samples(unit, q)
    }
    fn latest(&self, unit: &UnitId) -> Result<Latest, StoreError> {
        self.inner.latest(unit)
    }
    fn events(&self, q: &EventQuery) -> Result<(Vec<StoredEvent>, bool), StoreError> {
        self.inner.events(q)
    }
    fn incidents(&self) -> Result<Vec<Incident>, StoreError> {
        self.inner.incidents()
    }
    fn prune(
        &self,
        samples_before_ms: u64,
        events_before_ms: u64,
    ) -> Result<PruneStats, StoreError> {
        self.inner.prune(samples_before_ms, events_before_ms)
    }
    fn retain(&self, cut: &Cutoffs) -> Result<RetainStats, StoreError> {
        self.inner.retain(cut)
    }
    fn rollups(
        &self,
        unit: &UnitId,
        res: Resolution,
        since_ms: u64,
        until_ms: u64,
        limit: usize,
    ) -> Result<(Vec<Rollup>, bool), StoreError> {
        self.inner.rollups(unit, res, since_ms, until_ms, limit)
    }
    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }
    fn load_enrollments(&self) -> Result<Vec<Enrollment>, StoreError> {
        self.inner.load_enrollments()
    }
    fn put_enrollment(&self, e: &Enrollment) -> Result<(), StoreError> {
        self.inner.put_enrollment(e)
    }
}

impl Valve {
    /// The app wiring that puts this valve around the store.
    pub fn wiring(self: &Arc<Self>) -> Wiring {
        let v = Arc::clone(self);
        Wiring {
            store_layer: Some(Box::new(move |inner| {
                Arc::new(SlowStore { inner, valve: v }) as Arc<dyn Store>
            })),
            ..Wiring::default()
        }
    }
}
