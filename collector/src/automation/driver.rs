//! The machine's home in a running collector: shared by the ingest worker
//! (which feeds it and carries out what it says) and the feed's kill switch,
//! persisted in `<store.path>/automation.json` (the kill switches and each
//! unit's requests within its limit).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::jsonfile::{self, FileError};
use crate::rules::RulesConfig;

use super::{Machine, Persisted};

/// The file beside the store.
pub const FILE: &str = "automation.json";

#[derive(Debug)]
pub struct Automation {
    machine: Mutex<Machine>,
    path: Option<PathBuf>,
    /// Held from the snapshot to the end of its write, so two savers
    /// (the worker, the kill switch) never write an older snapshot last.
    saving: Mutex<()>,
}

impl Automation {
    /// The machine for `rules`' automation, restored from `dir`'s file
    /// (none: in memory only).
    pub fn open(rules: &RulesConfig, dir: Option<&Path>) -> Result<Automation, FileError> {
        let path = dir.map(|d| d.join(FILE));
        let mut machine = Machine::new(
            rules
                .threshold
                .iter()
                .filter_map(|r| r.auto.clone().map(|a| (r.name.clone(), a))),
        );
        machine.restore(jsonfile::load::<Persisted>(path.as_deref())?);
        Ok(Automation {
            machine: Mutex::new(machine),
            path,
            saving: Mutex::new(()),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes what is persisted.
    pub fn save(&self) -> Result<(), FileError> {
        let _one = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        let p = self.lock().persisted();
        jsonfile::save(self.path.as_deref(), &p)
    }

    /// Turns an agency's automation on or off, durably; `Ok(true)` when it
    /// changed. On a failed write the switch is put back.
    pub fn set_enabled(&self, agency: &str, on: bool) -> Result<bool, FileError> {
        let changed = self.lock().set_enabled(agency, on);
        if changed && let Err(e) = self.save() {
            self.lock().set_enabled(agency, !on);
            return Err(e);
        }
        Ok(changed)
    }

    pub fn enabled(&self, agency: &str) -> bool {
        self.lock().enabled(agency)
    }
}
