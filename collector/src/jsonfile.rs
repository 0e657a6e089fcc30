//! The small JSON files the collector's books keep beside the store
//! (`gates.json`, `rollouts.json`, `config_docs.json`): read whole at
//! start, rewritten whole and atomically (`muster_base::fsutil::write_atomic`,
//! owner-only) before a change is answered. One home for how they are
//! read and written, and for their errors.
//!
//! * A file that is not there is the empty book (`T::default()`).
//! * A file that cannot be read or parsed is an error naming it, never an
//!   empty book: a collector must not start without the rollouts or
//!   documents it had.
//! * `None` as the path: in memory only (cluster mode's gates), nothing is
//!   read or written.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a file of this collector's: {error}")]
    Corrupt {
        path: PathBuf,
        error: serde_json::Error,
    },
}

/// Reads `path`, or the default when there is no path or no file.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, FileError> {
    let Some(p) = path else {
        return Ok(T::default());
    };
    match std::fs::read(p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|error| FileError::Corrupt {
            path: p.to_owned(),
            error,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(error) => Err(FileError::Io {
            path: p.to_owned(),
            error,
        }),
    }
}

/// Writes `v` to `path` atomically, owner-only (no path: nothing).
pub fn save<T: Serialize + ?Sized>(path: Option<&Path>, v: &T) -> Result<(), FileError> {
    let Some(p) = path else {
        return Ok(());
    };
    let body = serde_json::to_vec(v).map_err(|error| FileError::Corrupt {
        path: p.to_owned(),
        error,
    })?;
    muster_base::fsutil::write_atomic(p, &body, muster_base::fsutil::Mode::Private).map_err(
        |error| FileError::Io {
            path: p.to_owned(),
            error,
        },
    )
}
