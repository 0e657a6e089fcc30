//! The collector's signing keys (`[signing]`): the key that signs every ack
//! to a v2 unit and every hello, and the optional next key it announces.
//!
//! Contract:
//!
//! * A key file is exactly 32 bytes, an Ed25519 seed. `signing.key_file`
//!   (default `<store.path>/signing.key`) is created on first start from the
//!   OS RNG with mode 0600; `signing.next_key_file`, when set, likewise.
//!   A key file that is group- or other-accessible, or not 32 bytes, is
//!   refused at start (Unix; on Windows the ACL of the data directory is
//!   the protection).
//! * Rotation: set `next_key_file`, restart; every hello announces that
//!   key and agents that verify the hello persist it as trusted. Once the
//!   fleet has seen it (its heartbeats arrive and `acks_refused` stays
//!   flat), make it `key_file` (and drop or replace `next_key_file`),
//!   restart. Agents then accept acks signed by it. The old key stays
//!   trusted by agents until their operator removes it.
//! * The private key is never logged or printed; its public key is logged
//!   at start and printed by `muster-collector keys`.

use std::io::Write;
use std::path::{Path, PathBuf};

use muster_proto::{Ack, Hello, PublicKey, SigningKey, UnitId, sign};

/// `[signing]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningConfig {
    /// `signing.key_file`: the key that signs.
    pub key_file: PathBuf,
    /// `signing.next_key_file`: the key announced in hellos, for rotation.
    pub next_key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("{key} {path}: {error}")]
    Io {
        key: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{key} {path}: is {len} bytes; a signing key file is exactly 32 bytes")]
    Length {
        key: &'static str,
        path: PathBuf,
        len: u64,
    },
    #[error("{key} {path}: mode {mode:o} lets group or others read it; run: chmod 600 {path}")]
    Permissions {
        key: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{key} {path}: the OS random number generator failed")]
    Rng { key: &'static str, path: PathBuf },
}

/// The loaded keys.
#[derive(Debug, Clone)]
pub struct Signer {
    current: SigningKey,
    next: Option<SigningKey>,
}

impl Signer {
    /// Loads the key files, creating missing ones.
    pub fn load(cfg: &SigningConfig) -> Result<Signer, SigningError> {
        let current = load_or_create("signing.key_file", &cfg.key_file)?;
        let next = cfg
            .next_key_file
            .as_deref()
            .map(|p| load_or_create("signing.next_key_file", p))
            .transpose()?;
        Ok(Signer { current, next })
    }

    /// From keys already in memory (tests, benches).
    pub fn from_keys(current: SigningKey, next: Option<SigningKey>) -> Signer {
        Signer { current, next }
    }

    pub fn public_key(&self) -> PublicKey {
        self.current.public_key()
    }

    pub fn next_public_key(&self) -> Option<PublicKey> {
        self.next.as_ref().map(SigningKey::public_key)
    }

    /// Signs an ack to `unit`.
    /// The key that signs now, for remote config documents
    /// (`crate::remote`); never printed or logged.
    pub fn current_key(&self) -> &SigningKey {
        &self.current
    }

    pub fn sign_ack(&self, unit: &UnitId, ack: Ack) -> Ack {
        sign::sign_ack(&self.current, unit, ack)
    }

    /// The hello for the `counter`-th subscription of a process started at
    /// `started_ms`.
    pub fn hello(&self, started_ms: u64, counter: u64) -> Hello {
        let next = self
            .next_public_key()
            .filter(|k| *k != self.public_key())
            .into_iter()
            .collect();
        sign::sign_hello(&self.current, started_ms, counter, next)
    }
}

fn io<'a>(key: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SigningError + 'a {
    move |source| SigningError::Io {
        key,
        path: path.to_owned(),
        error: source,
    }
}

fn load_or_create(key: &'static str, path: &Path) -> Result<SigningKey, SigningError> {
    match std::fs::metadata(path) {
        Ok(_) => read_key(key, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(key, path),
        Err(e) => Err(io(key, path)(e)),
    }
}

fn read_key(key: &'static str, path: &Path) -> Result<SigningKey, SigningError> {
    let meta = std::fs::metadata(path).map_err(io(key, path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SigningError::Permissions {
                key,
                path: path.to_owned(),
                mode,
            });
        }
    }
    if meta.len() != 32 {
        return Err(SigningError::Length {
            key,
            path: path.to_owned(),
            len: meta.len(),
        });
    }
    let bytes = std::fs::read(path).map_err(io(key, path))?;
    let seed: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| SigningError::Length {
            key,
            path: path.to_owned(),
            len: bytes.len() as u64,
        })?;
    Ok(SigningKey::from_seed(&seed))
}

fn create_key(key: &'static str, path: &Path) -> Result<SigningKey, SigningError> {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| SigningError::Rng {
            key,
            path: path.to_owned(),
        })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(key, path))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(key, path))?;
    f.write_all(&seed).map_err(io(key, path))?;
    f.sync_all().map_err(io(key, path))?;
    // Read it back through the same checks a restart makes.
    read_key(key, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "muster-signing-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn rand_suffix() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    }

    #[test]
    fn created_once_then_reloaded_the_same() {
        let d = dir();
        let cfg = SigningConfig {
            key_file: d.join("sub/signing.key"),
            next_key_file: Some(d.join("next.key")),
        };
        let a = Signer::load(&cfg).unwrap();
        let b = Signer::load(&cfg).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.next_public_key(), b.next_public_key());
        assert_ne!(Some(a.public_key()), a.next_public_key());
        assert_eq!(std::fs::metadata(&cfg.key_file).unwrap().len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&cfg.key_file)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let h = a.hello(1, 2);
        assert_eq!(h.next_keys, vec![a.next_public_key().unwrap()]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn readable_or_wrong_size_key_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir();
        let p = d.join("k");
        std::fs::write(&p, [1u8; 32]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let cfg = SigningConfig {
            key_file: p.clone(),
            next_key_file: None,
        };
        let err = Signer::load(&cfg).unwrap_err().to_string();
        assert!(
            err.starts_with("signing.key_file") && err.contains("chmod 600"),
            "{err}"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        Signer::load(&cfg).unwrap();
        std::fs::write(&p, [1u8; 31]).unwrap();
        let err = Signer::load(&cfg).unwrap_err().to_string();
        assert!(err.contains("exactly 32 bytes"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
