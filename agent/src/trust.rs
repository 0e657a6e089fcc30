//! The collector keys this agent trusts: acks and hellos are accepted only
//! when signed by one of them (`muster_proto::sign`).
//!
//! Contract:
//!
//! * Two sources, merged: `[trust] collector_keys` in the config (validated
//!   at parse time) and the persisted file `<data_dir>/trusted_keys`.
//! * The file is text, one `ed25519:<64 hex>` per line; blank lines and
//!   lines starting with `#` are ignored. A missing file is an empty set.
//!   Writers (this module's [`add`] / [`persist`], and enrolment) write the
//!   same format, whole, through a temporary file renamed into place, so a
//!   crash never leaves half a file.
//! * A key announced in a hello verified by an already-trusted key is added
//!   to the file ([`add`]), so it stays trusted across restarts.
//! * At most `muster_proto::sign::MAX_TRUSTED_KEYS` keys in all.
//! * No key at all is an error ([`TrustError::NoKeys`]) for `run` and
//!   `check-config`: such an agent could never free a record. The one
//!   exception is an agent that enrols ([`TrustConfig::enrolling`]).

use std::path::{Path, PathBuf};

use muster_proto::sign::{KeyError, TrustError as SetError};
use muster_proto::{PublicKey, TrustedKeys};

/// The persisted file's name in `data_dir`.
pub const TRUSTED_KEYS_FILE: &str = "trusted_keys";

/// `[trust]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustConfig {
    /// `trust.collector_keys`.
    pub collector_keys: Vec<PublicKey>,
    /// The config has an `[enroll]` section: starting with no trusted key
    /// is allowed (enrolment writes the `trusted_keys` file).
    pub enrolling: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}: {error}")]
    Parse {
        path: PathBuf,
        line: usize,
        error: KeyError,
    },
    #[error("{path}: {error}")]
    Full { path: PathBuf, error: SetError },
    #[error(
        "no collector key is trusted: set [trust] collector_keys = [\"ed25519:…\"] (print it with `muster-collector keys --config …`) or put it in {path}"
    )]
    NoKeys { path: PathBuf },
}

/// `<data_dir>/trusted_keys`.
pub fn trusted_keys_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TRUSTED_KEYS_FILE)
}

/// Parses the file's text.
pub fn parse(path: &Path, text: &str) -> Result<Vec<PublicKey>, TrustError> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.parse().map_err(|source| TrustError::Parse {
            path: path.to_owned(),
            line: i + 1,
            error: source,
        })?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// Reads the persisted keys; a missing file is none.
pub fn load_file(path: &Path) -> Result<Vec<PublicKey>, TrustError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(TrustError::Io {
            path: path.to_owned(),
            error: source,
        }),
    }
}

/// Writes `keys` as the whole file, atomically.
pub fn persist(path: &Path, keys: &[PublicKey]) -> Result<(), TrustError> {
    let mut text = String::with_capacity(keys.len() * 73);
    for k in keys {
        text.push_str(&k.to_string());
        text.push('\n');
    }
    muster_base::fsutil::write_atomic(path, text.as_bytes(), muster_base::fsutil::Mode::Default)
        .map_err(|source| TrustError::Io {
            path: path.to_owned(),
            error: source,
        })
}

/// Adds `key` to the file unless it is there; `Ok(true)` if it was added.
pub fn add(path: &Path, key: PublicKey) -> Result<bool, TrustError> {
    let mut keys = load_file(path)?;
    if keys.contains(&key) {
        return Ok(false);
    }
    keys.push(key);
    persist(path, &keys)?;
    Ok(true)
}

/// The trusted set at start: the config's keys, then the file's.
pub fn load(cfg: &TrustConfig, data_dir: &Path) -> Result<TrustedKeys, TrustError> {
    let path = trusted_keys_path(data_dir);
    let mut set = TrustedKeys::new();
    for k in cfg.collector_keys.iter().copied().chain(load_file(&path)?) {
        set.insert(k).map_err(|source| TrustError::Full {
            path: path.clone(),
            error: source,
        })?;
    }
    if set.is_empty() && !cfg.enrolling {
        return Err(TrustError::NoKeys { path });
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::SigningKey;

    fn key(b: u8) -> PublicKey {
        SigningKey::from_seed(&[b; 32]).public_key()
    }

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "muster-trust-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn file_round_trips_and_merges_with_config() {
        let d = tmp();
        let p = trusted_keys_path(&d);
        assert!(load_file(&p).unwrap().is_empty());
        assert!(add(&p, key(1)).unwrap());
        assert!(!add(&p, key(1)).unwrap());
        assert!(add(&p, key(2)).unwrap());
        assert_eq!(load_file(&p).unwrap(), vec![key(1), key(2)]);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text, format!("{}\n{}\n", key(1), key(2)));
        let cfg = TrustConfig {
            collector_keys: vec![key(3), key(1)],
            enrolling: false,
        };
        let set = load(&cfg, &d).unwrap();
        assert_eq!(set.keys().collect::<Vec<_>>(), vec![key(3), key(1), key(2)]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn parse_table() {
        let p = Path::new("/x/trusted_keys");
        let ok = format!("# comment\n\n  {}  \n{}\n", key(1), key(1));
        assert_eq!(parse(p, &ok).unwrap(), vec![key(1)]);
        let err = parse(p, &format!("{}\ned25519:zz\n", key(1)))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/x/trusted_keys:2: "), "{err}");
    }

    #[test]
    fn no_key_is_an_error_unless_enrolling() {
        let d = tmp();
        let err = load(&TrustConfig::default(), &d).unwrap_err().to_string();
        assert!(err.contains("no collector key is trusted"), "{err}");
        let enrolling = TrustConfig {
            collector_keys: vec![],
            enrolling: true,
        };
        assert!(load(&enrolling, &d).unwrap().is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
