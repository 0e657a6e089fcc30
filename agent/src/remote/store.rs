//! What remote config keeps on disk, in `<data_dir>/remote/`: the signed
//! documents running now (`agency.doc`, `unit.doc`), the last known good
//! ones (`lkg-agency.doc`, `lkg-unit.doc`) and the highest document seen
//! per scope (`seen.json`). Documents are kept as received (signed bytes),
//! so they are verified again at every start. Every write is atomic.

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
}
