//! The collector's remote config documents: pure validation, versions,
//! the bounded persisted book.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use muster_proto::{
    ConfigDoc, DocScope, MAX_CONFIG_BODY, REMOTE_SECTIONS, SigningKey, UnitId, sign, topic,
};
use serde::{Deserialize, Serialize};

use crate::jsonfile::{self, FileError};

#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("{0}")]
    Invalid(String),
    #[error("the collector holds {max} config documents already (remote_config.max_docs)")]
    Full { max: usize },
    #[error(transparent)]
    File(#[from] FileError),
}

/// One scope's current document (or its cleared state: `body: None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocEntry {
    pub agency: String,
    /// Absent: the agency's document.
    pub unit: Option<String>,
    pub version: u64,
    pub issued_ms: u64,
    /// The TOML; absent once cleared (the version is kept).
    pub body: Option<String>,
    /// SHA-256 of what is signed, hex; absent once cleared.
    pub hash: Option<String>,
}

impl DocEntry {
    pub fn scope(&self) -> Result<DocScope, DocError> {
        Ok(match &self.unit {
            None => DocScope::Agency {
                agency: self.agency.clone(),
            },
            Some(u) => DocScope::Unit {
                unit: UnitId::new(self.agency.clone(), u.clone())
                    .map_err(|e| DocError::Invalid(e.to_string()))?,
            },
        })
    }

    /// The retained topic it goes to.
    pub fn topic(&self) -> String {
        match &self.unit {
            None => format!("{}/{}/config", topic::PREFIX, self.agency),
            Some(u) => format!("{}/{}/{u}/config", topic::PREFIX, self.agency),
        }
    }
}

/// Checks a document body: TOML, only remotable top-level sections,
/// within the size limit.
pub fn check_body(body: &str) -> Result<(), DocError> {
    if body.len() > MAX_CONFIG_BODY {
        return Err(DocError::Invalid(format!(
            "the body is {} bytes; at most {MAX_CONFIG_BODY}",
            body.len()
        )));
    }
    let t: toml::Table = body.parse().map_err(|e: toml::de::Error| {
        DocError::Invalid(format!("the body is not TOML: {}", e.message()))
    })?;
    if t.is_empty() {
        return Err(DocError::Invalid(
            "the body sets no section (to remove a document, DELETE it)".into(),
        ));
    }
    for k in t.keys() {
        if !REMOTE_SECTIONS.contains(&k.as_str()) {
            return Err(DocError::Invalid(format!(
                "[{k}] cannot be set remotely; remotable sections: {}",
                REMOTE_SECTIONS.join(", ")
            )));
        }
    }
    Ok(())
}

type Key = (String, Option<String>);

/// The documents, by scope; persisted when `path` is set.
pub struct ConfigBook {
    path: Option<PathBuf>,
    max: usize,
    docs: Mutex<BTreeMap<Key, DocEntry>>,
}

impl ConfigBook {
    /// Opens the book at `<dir>/config_docs.json` (`dir` None: in memory).
    pub fn open(dir: Option<&Path>, max: usize) -> Result<ConfigBook, DocError> {
        let path = dir.map(|d| d.join("config_docs.json"));
        let list: Vec<DocEntry> = jsonfile::load(path.as_deref())?;
        let docs = list
            .into_iter()
            .map(|d| ((d.agency.clone(), d.unit.clone()), d))
            .collect();
        Ok(ConfigBook {
            path,
            max,
            docs: Mutex::new(docs),
        })
    }

    fn save(&self, docs: &BTreeMap<Key, DocEntry>) -> Result<(), DocError> {
        let list: Vec<&DocEntry> = docs.values().collect();
        Ok(jsonfile::save(self.path.as_deref(), &list)?)
    }

    /// Sets a scope's document: the next version, signed by `key`. Returns
    /// the entry and the signed document to publish.
    pub fn set(
        &self,
        agency: &str,
        unit: Option<&str>,
        body: String,
        key: &SigningKey,
        now_ms: u64,
    ) -> Result<(DocEntry, ConfigDoc), DocError> {
        muster_proto::ids::validate_part("agency", agency)
            .map_err(|e| DocError::Invalid(e.to_string()))?;
        if let Some(u) = unit {
            muster_proto::ids::validate_part("unit_id", u)
                .map_err(|e| DocError::Invalid(e.to_string()))?;
        }
        check_body(&body)?;
        let mut docs = self.docs.lock().unwrap_or_else(|e| e.into_inner());
        let k = (agency.to_owned(), unit.map(str::to_owned));
        let prev = docs.get(&k).map_or(0, |d| d.version);
        if prev == 0 && docs.len() >= self.max {
            return Err(DocError::Full { max: self.max });
        }
        let mut e = DocEntry {
            agency: agency.to_owned(),
            unit: unit.map(str::to_owned),
            version: prev + 1,
            issued_ms: now_ms,
            body: Some(body.clone()),
            hash: None,
        };
        let d = sign::sign_config(key, e.scope()?, e.version, now_ms, body);
        e.hash = Some(sign::hex_of(&sign::config_hash(&d)));
        let before = docs.insert(k.clone(), e.clone());
        if let Err(err) = self.save(&docs) {
            match before {
                Some(b) => docs.insert(k, b),
                None => docs.remove(&k),
            };
            return Err(err);
        }
        Ok((e, d))
    }

    /// Clears a scope's document: the next version, signed by `key`, with
    /// an empty body (the agents drop that scope's sections; an empty
    /// retained message would leave a running agent on the old ones).
    /// Returns the cleared entry and the document to publish; `None` if the
    /// scope had no document.
    pub fn clear(
        &self,
        agency: &str,
        unit: Option<&str>,
        key: &SigningKey,
        now_ms: u64,
    ) -> Result<Option<(DocEntry, ConfigDoc)>, DocError> {
        let mut docs = self.docs.lock().unwrap_or_else(|e| e.into_inner());
        let k = (agency.to_owned(), unit.map(str::to_owned));
        let Some(e) = docs.get(&k).filter(|e| e.body.is_some()).cloned() else {
            return Ok(None);
        };
        let mut cleared = DocEntry {
            version: e.version + 1,
            issued_ms: now_ms,
            body: None,
            hash: None,
            ..e.clone()
        };
        let d = sign::sign_config(
            key,
            cleared.scope()?,
            cleared.version,
            now_ms,
            String::new(),
        );
        cleared.hash = Some(sign::hex_of(&sign::config_hash(&d)));
        docs.insert(k.clone(), cleared.clone());
        if let Err(err) = self.save(&docs) {
            docs.insert(k, e);
            return Err(err);
        }
        Ok(Some((cleared, d)))
    }

    /// A unit's own document body now (`None`: it has none).
    pub fn unit_body(&self, agency: &str, unit: &str) -> Option<String> {
        self.get(agency, Some(unit)).and_then(|e| e.body)
    }

    /// A scope's version (set or cleared).
    pub fn version(&self, agency: &str, unit: Option<&str>) -> Option<u64> {
        let docs = self.docs.lock().unwrap_or_else(|e| e.into_inner());
        docs.get(&(agency.to_owned(), unit.map(str::to_owned)))
            .map(|e| e.version)
    }

    /// Scopes the book can still take.
    pub fn room(&self) -> usize {
        let docs = self.docs.lock().unwrap_or_else(|e| e.into_inner());
        self.max.saturating_sub(docs.len())
    }

    /// Is this scope held (set, or cleared with its version kept)?
    pub fn holds(&self, agency: &str, unit: Option<&str>) -> bool {
        let docs = self.docs.lock().unwrap_or_else(|e| e.into_inner());
        docs.contains_key(&(agency.to_owned(), unit.map(str::to_owned)))
    }

    pub fn get(&self, agency: &str, unit: Option<&str>) -> Option<DocEntry> {
        let docs = self.docs.lock().unwrap_or_else(|e| e.into_inner());
        docs.get(&(agency.to_owned(), unit.map(str::to_owned)))
            .filter(|e| e.body.is_some())
            .cloned()
    }

    /// Every current (not cleared) document.
    pub fn list(&self) -> Vec<DocEntry> {
        let docs = self.docs.lock().unwrap_or_else(|e| e.into_inner());
        docs.values()
            .filter(|e| e.body.is_some())
            .cloned()
            .collect()
    }

    /// Every scope's document signed again by `key` (same version, scope
    /// and body, so the same hash; a cleared scope's empty one too, so an
    /// agent that was away learns it), to republish at start.
    pub fn signed(&self, key: &SigningKey) -> Vec<(String, ConfigDoc)> {
        let docs = self.docs.lock().unwrap_or_else(|e| e.into_inner());
        docs.values()
            .filter_map(|e| {
                let scope = e.scope().ok()?;
                let body = e.body.clone().unwrap_or_default();
                Some((
                    e.topic(),
                    sign::sign_config(key, scope, e.version, e.issued_ms, body),
                ))
            })
            .collect()
    }
}

/// `change`'s top-level sections over `base`'s (whole sections, as the
/// agent merges a unit's document over its agency's): what a rollout
/// issues to a unit that has a document of its own. Both were checked
/// with [`check_body`].
pub fn merge_sections(base: Option<&str>, change: &str) -> Result<String, DocError> {
    let parse = |s: &str| {
        s.parse::<toml::Table>()
            .map_err(|e| DocError::Invalid(format!("not TOML: {}", e.message())))
    };
    let mut t = match base {
        Some(b) => parse(b)?,
        None => toml::Table::new(),
    };
    for (k, v) in parse(change)? {
        t.insert(k, v);
    }
    let out =
        toml::to_string(&t).map_err(|e| DocError::Invalid(format!("cannot write TOML: {e}")))?;
    check_body(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_seed(&[5; 32])
    }

    #[test]
    fn bodies_are_checked() {
        let cases: &[(&str, Option<&str>)] = &[
            ("[sampling]\ninterval = \"10s\"\n", None),
            ("labels = { station = \"7\" }\n", None),
            ("[[probe]]\nname = \"cad\"\n", None),
            (
                "[mqtt]\nurl = \"mqtt://x\"\n",
                Some("[mqtt] cannot be set remotely"),
            ),
            ("unit_id = \"x\"\n", Some("[unit_id] cannot")),
            ("", Some("sets no section")),
            ("[sampling\n", Some("not TOML")),
        ];
        for (body, want) in cases {
            match (check_body(body), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{body:?}: {e}"),
                (got, _) => panic!("{body:?}: {got:?}"),
            }
        }
        let big = format!("[sampling]\n#{}\n", "x".repeat(MAX_CONFIG_BODY));
        assert!(check_body(&big).unwrap_err().to_string().contains("bytes"));
    }

    #[test]
    fn versions_grow_across_clears_and_restarts_and_the_book_is_bounded() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let b = ConfigBook::open(Some(dir.path()), 2).unwrap();
        let body = || "[sampling]\ninterval = \"10s\"\n".to_owned();
        let (e1, d1) = b.set("metro", None, body(), &key(), 10).unwrap();
        assert_eq!((e1.version, d1.version), (1, 1));
        assert_eq!(e1.topic(), "muster/v1/metro/config");
        let (e2, _) = b.set("metro", None, body(), &key(), 11).unwrap();
        assert_eq!(e2.version, 2);
        let (c, cd) = b.clear("metro", None, &key(), 12).unwrap().unwrap();
        assert_eq!((c.version, cd.version, cd.body.as_str()), (3, 3, ""));
        assert!(b.get("metro", None).is_none());
        assert!(b.clear("metro", None, &key(), 12).unwrap().is_none());
        let (u1, _) = b.set("metro", Some("car-1"), body(), &key(), 12).unwrap();
        assert_eq!(u1.topic(), "muster/v1/metro/car-1/config");
        // Two scopes held (one cleared counts: its version is kept).
        assert!(matches!(
            b.set("county", None, body(), &key(), 13),
            Err(DocError::Full { max: 2 })
        ));
        let again = ConfigBook::open(Some(dir.path()), 2).unwrap();
        let (e3, d3) = again.set("metro", None, body(), &key(), 14).unwrap();
        assert_eq!(e3.version, 4, "a version is never issued twice");
        // Republished at start: the same hash as when it was set.
        let signed = again.signed(&key());
        let (_, same) = signed
            .iter()
            .find(|(t, _)| t == "muster/v1/metro/config")
            .unwrap();
        assert_eq!(sign::config_hash(same), sign::config_hash(&d3));
        assert!(b.set("a/b", None, body(), &key(), 1).is_err());
        assert!(b.set("metro", Some("x y"), body(), &key(), 1).is_err());
    }
}
