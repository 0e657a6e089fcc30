//! The rollouts this collector runs, persisted (`rollouts.json` beside
//! the store, rewritten atomically before a change is answered, so a
//! restarted collector carries on where it stood) and bounded
//! (`[rollouts] max`): a full book forgets its oldest finished rollout to
//! take a new one, and refuses (409) only when every one is still running.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::jsonfile::{self, FileError};

use super::machine::Rollout;

#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{max} rollouts are under way already (rollouts.max); abort one first")]
    Full { max: usize },
    #[error("no rollout {0:?}")]
    NotFound(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    next: u64,
    rollouts: BTreeMap<u64, Rollout>,
}

#[derive(Debug)]
pub struct RolloutBook {
    path: Option<PathBuf>,
    max: usize,
    inner: Mutex<File>,
    pub save_failures: AtomicU64,
}

fn number(id: &str) -> Option<u64> {
    id.strip_prefix('r')?.parse().ok()
}

impl RolloutBook {
    /// The book in `dir/rollouts.json` (`None`: in memory only).
    pub fn open(dir: Option<&Path>, max: usize) -> Result<RolloutBook, BookError> {
        let path = dir.map(|d| d.join("rollouts.json"));
        let file = jsonfile::load(path.as_deref())?;
        Ok(RolloutBook {
            path,
            max,
            inner: Mutex::new(file),
            save_failures: AtomicU64::new(0),
        })
    }

    fn save(&self, f: &File) -> Result<(), BookError> {
        Ok(jsonfile::save(self.path.as_deref(), f)?)
    }

    /// The next id, to build a rollout with (ids are never reused).
    pub fn next_id(&self) -> String {
        let f = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        format!("r{}", f.next + 1)
    }

    /// Makes a rollout under the book's lock: `make` gets the id and the
    /// running rollouts (to refuse overlapping targets); its error is
    /// passed through.
    pub fn add<E: From<BookError>>(
        &self,
        make: impl FnOnce(String, &[&Rollout]) -> Result<Rollout, E>,
    ) -> Result<Rollout, E> {
        let mut f = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let evict = if f.rollouts.len() >= self.max {
            match f
                .rollouts
                .iter()
                .find(|(_, r)| r.phase.is_over())
                .map(|(n, _)| *n)
            {
                Some(n) => Some(n),
                None => return Err(BookError::Full { max: self.max }.into()),
            }
        } else {
            None
        };
        let n = f.next + 1;
        let running: Vec<&Rollout> = f.rollouts.values().filter(|r| !r.phase.is_over()).collect();
        let r = make(format!("r{n}"), &running)?;
        let evicted = evict.and_then(|e| f.rollouts.remove(&e).map(|r| (e, r)));
        f.next = n;
        f.rollouts.insert(n, r.clone());
        if let Err(e) = self.save(&f) {
            f.rollouts.remove(&n);
            f.next = n - 1;
            if let Some((k, old)) = evicted {
                f.rollouts.insert(k, old);
            }
            return Err(e.into());
        }
        Ok(r)
    }

    pub fn get(&self, id: &str) -> Option<Rollout> {
        let f = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f.rollouts.get(&number(id)?).cloned()
    }

    pub fn list(&self) -> Vec<Rollout> {
        let f = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f.rollouts.values().cloned().collect()
    }

    /// Ids of the rollouts still under way.
    pub fn running(&self) -> Vec<String> {
        let f = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f.rollouts
            .values()
            .filter(|r| !r.phase.is_over())
            .map(|r| r.id.clone())
            .collect()
    }

    /// Changes one rollout under the book's lock and persists it when
    /// `change` says it changed (`(changed, answer)`). A failed write
    /// keeps the change in memory (the documents it issued are out
    /// already): it is logged and counted
    /// (`muster_rollout_save_failures_total`), and the next change writes
    /// the file again.
    pub fn update<T>(
        &self,
        id: &str,
        change: impl FnOnce(&mut Rollout) -> (bool, T),
    ) -> Result<T, BookError> {
        let mut f = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let r = number(id)
            .and_then(|n| f.rollouts.get_mut(&n))
            .ok_or_else(|| BookError::NotFound(id.to_owned()))?;
        let (changed, out) = change(r);
        if changed && let Err(e) = self.save(&f) {
            self.save_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(rollout = id, error = %e, "Cannot persist the rollouts; a restart would resume from the last saved state.");
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::machine::Phase;
    use crate::rollout::spec::RawRollout;

    fn make(id: String) -> Result<Rollout, BookError> {
        let spec: RawRollout = serde_json::from_value(serde_json::json!({
            "name": "n",
            "change": "[sampling]\ninterval = \"10s\"\n",
            "target": {"agency": "metro"},
            "probe": "cad",
        }))
        .unwrap();
        Ok(Rollout::new(
            id,
            spec.validate().unwrap(),
            vec!["E1".into()],
            5,
        ))
    }

    #[test]
    fn rollouts_survive_a_reopen_forget_the_oldest_finished_and_never_reuse_ids() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let b = RolloutBook::open(Some(dir.path()), 2).unwrap();
        let r1 = b.add(|id, _| make(id)).unwrap();
        let r2 = b
            .add(|id, running| {
                assert_eq!(running.len(), 1, "r1 runs");
                make(id)
            })
            .unwrap();
        assert_eq!((r1.id.as_str(), r2.id.as_str()), ("r1", "r2"));
        // Full, and both running: refused.
        assert!(matches!(
            b.add(|id, _| make(id)),
            Err(BookError::Full { max: 2 })
        ));
        // r1 finishes: the next one takes its place.
        b.update("r1", |r| {
            r.phase = Phase::Completed { at_ms: 9 };
            (true, ())
        })
        .unwrap();
        assert_eq!(b.running(), ["r2"]);
        let r3 = b.add(|id, _| make(id)).unwrap();
        assert_eq!(r3.id, "r3");
        assert!(b.get("r1").is_none());
        assert!(matches!(
            b.update("r1", |_| (true, ())),
            Err(BookError::NotFound(_))
        ));
        // A make that refuses leaves nothing behind and uses no id.
        b.update("r2", |r| {
            r.phase = Phase::Aborted {
                reason: "x".into(),
                at_ms: 9,
            };
            (true, ())
        })
        .unwrap();
        assert!(matches!(
            b.add(|_, _| Err::<Rollout, _>(BookError::NotFound("no".into()))),
            Err(BookError::NotFound(_))
        ));
        assert!(b.get("r2").is_some(), "a refused add forgets nothing");
        drop(b);
        let b = RolloutBook::open(Some(dir.path()), 2).unwrap();
        let ids: Vec<String> = b.list().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["r2", "r3"]);
        assert_eq!(b.get("r2").unwrap().phase.name(), "aborted");
        assert_eq!(b.add(|id, _| make(id)).unwrap().id, "r4");
        assert!(b.get("x1").is_none() && b.get("r").is_none());
        std::fs::write(dir.path().join("rollouts.json"), b"{nope").unwrap();
        assert!(matches!(
            RolloutBook::open(Some(dir.path()), 2),
            Err(BookError::File(FileError::Corrupt { .. }))
        ));
    }
}
