//! The gates defined on this collector.
//!
//! Contract:
//! * At most `gates.max` gates (a full book refuses a new one: 409); ids
//!   `g<n>` are never reused while the file lives.
//! * Persisted (single node): every change rewrites `gates.json` in the
//!   store directory atomically (a temporary file, fsync, rename), before
//!   the change is answered; a collector restarted keeps its gates. A file
//!   that cannot be read at start is an error naming it, not an empty
//!   book. Cluster mode keeps gates in memory on the collector they were
//!   defined on (not shared; said in ARCHITECTURE.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::spec::GateSpec;
use crate::jsonfile::{self, FileError};

#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{max} gates are defined already (gates.max); delete one first")]
    Full { max: usize },
}

/// A defined gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub id: String,
    pub created_ms: u64,
    #[serde(flatten)]
    pub spec: GateSpec,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    next: u64,
    gates: BTreeMap<String, Gate>,
}

#[derive(Debug)]
pub struct GateBook {
    path: Option<PathBuf>,
    max: usize,
    inner: Mutex<File>,
}

impl GateBook {
    /// The book in `dir/gates.json` (`None`: in memory only).
    pub fn open(dir: Option<&Path>, max: usize) -> Result<GateBook, BookError> {
        let path = dir.map(|d| d.join("gates.json"));
        let file = jsonfile::load(path.as_deref())?;
        Ok(GateBook {
            path,
            max,
            inner: Mutex::new(file),
        })
    }

    fn save(&self, f: &File) -> Result<(), BookError> {
        Ok(jsonfile::save(self.path.as_deref(), f)?)
    }

    pub fn add(&self, spec: GateSpec, now_ms: u64) -> Result<Gate, BookError> {
        let mut f = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if f.gates.len() >= self.max {
            return Err(BookError::Full { max: self.max });
        }
        f.next += 1;
        let g = Gate {
            id: format!("g{}", f.next),
            created_ms: now_ms,
            spec,
        };
        f.gates.insert(g.id.clone(), g.clone());
        if let Err(e) = self.save(&f) {
            f.gates.remove(&g.id);
            return Err(e);
        }
        Ok(g)
    }

    pub fn get(&self, id: &str) -> Option<Gate> {
        let f = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f.gates.get(id).cloned()
    }

    pub fn list(&self) -> Vec<Gate> {
        let f = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f.gates.values().cloned().collect()
    }

    /// Whether it existed.
    pub fn remove(&self, id: &str) -> Result<bool, BookError> {
        let mut f = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(g) = f.gates.remove(id) else {
            return Ok(false);
        };
        if let Err(e) = self.save(&f) {
            f.gates.insert(g.id.clone(), g);
            return Err(e);
        }
        Ok(true)
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .gates
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::spec::RawGate;

    fn spec(name: &str) -> GateSpec {
        serde_json::from_str::<RawGate>(&format!(
            r#"{{"name":"{name}","cohort":{{"agency":"a","probe":"p"}},"baseline":{{"before_ms":1}}}}"#
        ))
        .unwrap()
        .validate()
        .unwrap()
    }

    #[test]
    fn gates_survive_a_reopen_are_bounded_and_ids_are_not_reused() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let b = GateBook::open(Some(dir.path()), 2).unwrap();
        let g1 = b.add(spec("one"), 5).unwrap();
        let g2 = b.add(spec("two"), 6).unwrap();
        assert!(matches!(
            b.add(spec("three"), 7),
            Err(BookError::Full { max: 2 })
        ));
        assert!(b.remove(&g1.id).unwrap());
        assert!(!b.remove(&g1.id).unwrap());
        drop(b);
        let b = GateBook::open(Some(dir.path()), 2).unwrap();
        assert_eq!(b.list(), vec![g2.clone()]);
        let g3 = b.add(spec("three"), 8).unwrap();
        assert_eq!(
            (g1.id.as_str(), g2.id.as_str(), g3.id.as_str()),
            ("g1", "g2", "g3")
        );
        std::fs::write(dir.path().join("gates.json"), b"{not json").unwrap();
        assert!(matches!(
            GateBook::open(Some(dir.path()), 2),
            Err(BookError::File(FileError::Corrupt { .. }))
        ));
    }
}
