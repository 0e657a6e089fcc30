//! What remote config keeps on disk, in `<data_dir>/remote/`: the signed
//! documents running now (`agency.doc`, `unit.doc`), the last known good
//! ones (`lkg-agency.doc`, `lkg-unit.doc`), the highest document seen
//! per scope (`seen.json`) and the open health window (`window.json`, see
//! [`Window`]). Documents are kept as received (signed bytes), so they are
//! verified again at every start. Every write is atomic.

use std::path::{Path, PathBuf};

use muster_base::fsutil::{Mode, write_atomic};
use muster_proto::{ConfigDoc, DocRef, DocScopeKind, encode_config};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {error}")]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("encoding a document: {0}")]
    Encode(#[from] muster_proto::EncodeError),
}

/// One scope's highest document seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SeenJson {
    version: u64,
    hash: [u8; 32],
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SeenFile {
    agency: Option<SeenJson>,
    unit: Option<SeenJson>,
}

/// The running or last known good pair of documents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Docs {
    pub agency: Option<ConfigDoc>,
    pub unit: Option<ConfigDoc>,
}

impl Docs {
    pub fn get(&self, k: DocScopeKind) -> Option<&ConfigDoc> {
        match k {
            DocScopeKind::Agency => self.agency.as_ref(),
            DocScopeKind::Unit => self.unit.as_ref(),
        }
    }

    pub fn set(&mut self, k: DocScopeKind, d: Option<ConfigDoc>) {
        match k {
            DocScopeKind::Agency => self.agency = d,
            DocScopeKind::Unit => self.unit = d,
        }
    }
}

/// The open health window, persisted so that it survives a restart
/// (`window.json`): written when a document is applied, updated at each
/// start and at a clean stop, removed when the window passes or rolls
/// back. The rule it serves is in [`super::health::at_start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The document the window is about.
    pub scope: DocScopeKind,
    pub doc: DocRef,
    /// When it opened (unix ms, the agent's clock) and how long it is.
    pub opened_ms: u64,
    pub window_ms: u64,
    /// Starts made while it is open; the process that applied the
    /// document is the first.
    pub starts: u32,
    /// The last process stopped in order (SIGTERM, a service stop, the OS
    /// going down): the next start is not counted.
    pub clean_stop: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct WindowJson {
    scope: DocScopeKind,
    version: u64,
    hash: [u8; 32],
    opened_ms: u64,
    window_ms: u64,
    starts: u32,
    clean_stop: bool,
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

fn name(k: DocScopeKind) -> &'static str {
    match k {
        DocScopeKind::Agency => "agency",
        DocScopeKind::Unit => "unit",
    }
}

impl Store {
    pub fn new(data_dir: &Path) -> Store {
        Store {
            dir: data_dir.join("remote"),
        }
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |error| StoreError::Io {
            path: path.to_owned(),
            error,
        }
    }

    /// The raw bytes of the running (`lkg = false`) or last known good
    /// documents; a missing file is no document.
    pub fn load_raw(&self, lkg: bool) -> Result<Vec<(DocScopeKind, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for k in [DocScopeKind::Agency, DocScopeKind::Unit] {
            let p = self.doc_path(k, lkg);
            match std::fs::read(&p) {
                Ok(b) => out.push((k, b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Self::io(&p)(e)),
            }
        }
        Ok(out)
    }

    fn doc_path(&self, k: DocScopeKind, lkg: bool) -> PathBuf {
        let prefix = if lkg { "lkg-" } else { "" };
        self.dir.join(format!("{prefix}{}.doc", name(k)))
    }

    /// Persists `docs` as running (`lkg = false`) or last known good.
    pub fn save(&self, docs: &Docs, lkg: bool) -> Result<(), StoreError> {
        for k in [DocScopeKind::Agency, DocScopeKind::Unit] {
            let p = self.doc_path(k, lkg);
            match docs.get(k) {
                Some(d) => {
                    write_atomic(&p, &encode_config(d)?, Mode::Private).map_err(Self::io(&p))?
                }
                None => match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Self::io(&p)(e)),
                },
            }
        }
        Ok(())
    }

    /// The highest document seen per scope.
    pub fn seen(&self) -> Result<(Option<DocRef>, Option<DocRef>), StoreError> {
        let p = self.dir.join("seen.json");
        let f: SeenFile = match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|error| StoreError::Json {
                path: p.clone(),
                error,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SeenFile::default(),
            Err(e) => return Err(Self::io(&p)(e)),
        };
        let r = |s: Option<SeenJson>| {
            s.map(|s| DocRef {
                version: s.version,
                hash: s.hash,
            })
        };
        Ok((r(f.agency), r(f.unit)))
    }

    pub fn save_seen(
        &self,
        agency: Option<DocRef>,
        unit: Option<DocRef>,
    ) -> Result<(), StoreError> {
        let p = self.dir.join("seen.json");
        let j = |d: Option<DocRef>| {
            d.map(|d| SeenJson {
                version: d.version,
                hash: d.hash,
            })
        };
        let body = serde_json::to_vec(&SeenFile {
            agency: j(agency),
            unit: j(unit),
        })
        .map_err(|error| StoreError::Json {
            path: p.clone(),
            error,
        })?;
        write_atomic(&p, &body, Mode::Private).map_err(Self::io(&p))
    }

    /// The persisted open health window, if any.
    pub fn window(&self) -> Result<Option<Window>, StoreError> {
        let p = self.dir.join("window.json");
        let j: WindowJson = match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|error| StoreError::Json {
                path: p.clone(),
                error,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io(&p)(e)),
        };
        Ok(Some(Window {
            scope: j.scope,
            doc: DocRef {
                version: j.version,
                hash: j.hash,
            },
            opened_ms: j.opened_ms,
            window_ms: j.window_ms,
            starts: j.starts,
            clean_stop: j.clean_stop,
        }))
    }

    /// Persists the open health window; `None` removes it.
    pub fn save_window(&self, w: Option<&Window>) -> Result<(), StoreError> {
        let p = self.dir.join("window.json");
        let Some(w) = w else {
            return match std::fs::remove_file(&p) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Self::io(&p)(e)),
            };
        };
        let body = serde_json::to_vec(&WindowJson {
            scope: w.scope,
            version: w.doc.version,
            hash: w.doc.hash,
            opened_ms: w.opened_ms,
            window_ms: w.window_ms,
            starts: w.starts,
            clean_stop: w.clean_stop,
        })
        .map_err(|error| StoreError::Json {
            path: p.clone(),
            error,
        })?;
        write_atomic(&p, &body, Mode::Private).map_err(Self::io(&p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::{DocScope, SigningKey, UnitId, sign};

    #[test]
    fn documents_and_seen_versions_survive_a_reopen() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let s = Store::new(dir.path());
        assert!(s.load_raw(false).unwrap().is_empty());
        assert_eq!(s.seen().unwrap(), (None, None));
        let k = SigningKey::from_seed(&[3; 32]);
        let unit = UnitId::new("a", "u").unwrap();
        let d = sign::sign_config(&k, DocScope::Unit { unit }, 4, 1, "[sampling]\n".into());
        let docs = Docs {
            agency: None,
            unit: Some(d.clone()),
        };
        s.save(&docs, false).unwrap();
        let r = DocRef {
            version: 4,
            hash: sign::config_hash(&d),
        };
        s.save_seen(None, Some(r)).unwrap();
        let again = Store::new(dir.path());
        assert_eq!(
            again.load_raw(false).unwrap(),
            vec![(DocScopeKind::Unit, encode_config(&d).unwrap())]
        );
        assert!(again.load_raw(true).unwrap().is_empty());
        assert_eq!(again.seen().unwrap(), (None, Some(r)));
        // Cleared: the file goes.
        again.save(&Docs::default(), false).unwrap();
        assert!(again.load_raw(false).unwrap().is_empty());
    }

    #[test]
    fn the_open_window_survives_a_reopen_and_is_removed() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let s = Store::new(dir.path());
        assert_eq!(s.window().unwrap(), None);
        // Removing what is not there is nothing.
        s.save_window(None).unwrap();
        let w = Window {
            scope: DocScopeKind::Agency,
            doc: DocRef {
                version: 7,
                hash: [0xab; 32],
            },
            opened_ms: 1_700_000_000_123,
            window_ms: 60_000,
            starts: 2,
            clean_stop: true,
        };
        s.save_window(Some(&w)).unwrap();
        assert_eq!(Store::new(dir.path()).window().unwrap(), Some(w));
        let next = Window {
            starts: 3,
            clean_stop: false,
            ..w
        };
        s.save_window(Some(&next)).unwrap();
        assert_eq!(Store::new(dir.path()).window().unwrap(), Some(next));
        s.save_window(None).unwrap();
        assert_eq!(s.window().unwrap(), None);
        assert!(!dir.path().join("remote").join("window.json").exists());
        // Unreadable: an error, not a window.
        std::fs::write(dir.path().join("remote").join("window.json"), b"{").unwrap();
        assert!(s.window().is_err());
    }
}
