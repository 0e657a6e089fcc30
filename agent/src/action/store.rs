//! What actions keep on disk, in `<data_dir>/actions/state.json`: the
//! nonces of requests seen (each until its expiry plus
//! [`NONCE_GRACE_MS`]) and each action's recent start times (for its rate
//! limit, a `muster_base::rate::Window` each). [`State`] is the pure,
//! bounded model; [`Store`] reads and
//! writes it atomically (`muster_base::fsutil::write_atomic`: a crash
//! leaves the old or the new file, never a torn one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use muster_base::fsutil::{Mode, write_atomic};
use muster_base::rate::{Rate, Window};
use serde::{Deserialize, Serialize};

/// The most nonces remembered at once. Every remembered nonce belongs to
/// an authentic request (signed by a trusted key) valid for at most
/// 15 minutes, so filling this takes the collector 4096 requests to one
/// unit within 15 minutes.
pub const MAX_NONCES: usize = 4096;

/// A nonce is kept this long past its request's expiry: a clock corrected
/// backwards (a new offset to the collector) must not make an expired,
/// forgotten request look valid again.
pub const NONCE_GRACE_MS: u64 = 5 * 60_000;

/// An action whose newest start is older than this is forgotten (the
/// longest rate window `muster_base::rate` allows is 30 days).
pub const MAX_WINDOW_MS: u64 = 30 * 86_400_000;

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
}

/// Nonces and starts; pure and bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// nonce → forget after (unix ms).
    nonces: BTreeMap<[u8; 16], u64>,
    /// action → its recent starts (unix ms; at most its rate's `max`).
    starts: BTreeMap<String, Window>,
}

impl State {
    pub fn seen(&self, nonce: &[u8; 16]) -> bool {
        self.nonces.contains_key(nonce)
    }

    /// No room for another nonce.
    pub fn nonces_full(&self) -> bool {
        self.nonces.len() >= MAX_NONCES
    }

    pub fn nonces(&self) -> usize {
        self.nonces.len()
    }

    /// Remembers `nonce` until `expires_ms` plus [`NONCE_GRACE_MS`]. Full:
    /// not remembered (`false`); the caller must not run the request.
    pub fn remember(&mut self, nonce: [u8; 16], expires_ms: u64) -> bool {
        if !self.seen(&nonce) && self.nonces_full() {
            return false;
        }
        let until = expires_ms.saturating_add(NONCE_GRACE_MS);
        let e = self.nonces.entry(nonce).or_insert(until);
        *e = (*e).max(until);
        true
    }

    /// Would one more start of `action` at `now_ms` stay within `rate`?
    pub fn allows(&self, action: &str, rate: Rate, now_ms: u64) -> bool {
        self.starts
            .get(action)
            .is_none_or(|w| w.clone().allows(rate, now_ms))
    }

    /// Records a start of `action` at `at_ms` (when `rate` allows it: the
    /// caller checked [`State::allows`]).
    pub fn started(&mut self, action: &str, rate: Rate, at_ms: u64) {
        let _ = self
            .starts
            .entry(action.to_owned())
            .or_default()
            .take(rate, at_ms);
    }

    /// Starts of `action` within `per` before `now_ms` (a start at
    /// exactly `now - per` is outside).
    pub fn starts_within(&self, action: &str, now_ms: u64, per: Duration) -> usize {
        let from = now_ms.saturating_sub(per.as_millis() as u64);
        self.starts
            .get(action)
            .map_or(0, |w| w.times().filter(|t| *t > from).count())
    }

    /// Forgets nonces past their keep time and starts older than
    /// [`MAX_WINDOW_MS`]. `true` when something went.
    pub fn prune(&mut self, now_ms: u64) -> bool {
        let before = (self.nonces.len(), self.starts.len());
        self.nonces.retain(|_, until| *until >= now_ms);
        let from = now_ms.saturating_sub(MAX_WINDOW_MS);
        self.starts
            .retain(|_, w| w.times().max().is_some_and(|t| t > from));
        before != (self.nonces.len(), self.starts.len())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateJson {
    /// hex nonce → forget after (unix ms).
    nonces: BTreeMap<String, u64>,
    starts: BTreeMap<String, Window>,
}

fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// `<data_dir>/actions/state.json`.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(data_dir: &Path) -> Store {
        Store {
            path: data_dir.join("actions").join("state.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The persisted state; none yet is an empty one. Entries past the
    /// bounds are dropped (the newest nonces kept), a bad nonce skipped.
    pub fn load(&self) -> Result<State, StoreError> {
        let j: StateJson = match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|error| StoreError::Json {
                path: self.path.clone(),
                error,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateJson::default(),
            Err(error) => {
                return Err(StoreError::Io {
                    path: self.path.clone(),
                    error,
                });
            }
        };
        let mut nonces: Vec<([u8; 16], u64)> = j
            .nonces
            .iter()
            .filter_map(|(k, v)| parse_hex16(k).map(|n| (n, *v)))
            .collect();
        nonces.sort_by_key(|(_, until)| std::cmp::Reverse(*until));
        nonces.truncate(MAX_NONCES);
        Ok(State {
            nonces: nonces.into_iter().collect(),
            starts: j.starts,
        })
    }

    /// Persists `s` atomically (owner-only).
    pub fn save(&self, s: &State) -> Result<(), StoreError> {
        let j = StateJson {
            nonces: s
                .nonces
                .iter()
                .map(|(n, t)| (muster_proto::sign::hex_of(n), *t))
                .collect(),
            starts: s.starts.clone(),
        };
        let body = serde_json::to_vec(&j).map_err(|error| StoreError::Json {
            path: self.path.clone(),
            error,
        })?;
        write_atomic(&self.path, &body, Mode::Private).map_err(|error| StoreError::Io {
            path: self.path.clone(),
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: u64 = 1_700_000_000_000;

    #[test]
    fn nonces_and_starts_survive_a_reopen_and_expire() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let store = Store::new(dir.path());
        assert_eq!(store.load().unwrap(), State::default());
        let mut s = State::default();
        assert!(s.remember([1; 16], T + 60_000));
        let rate = Rate {
            max: 2,
            per: Duration::from_secs(1),
        };
        s.started("ping", rate, T - 10);
        s.started("ping", rate, T);
        assert!(!s.allows("ping", rate, T + 989));
        assert!(s.allows("ping", rate, T + 990));
        store.save(&s).unwrap();
        let again = Store::new(dir.path()).load().unwrap();
        assert_eq!(again, s);
        assert!(again.seen(&[1; 16]));
        assert_eq!(again.starts_within("ping", T, Duration::from_secs(1)), 2);
        assert_eq!(
            again.starts_within("ping", T + 995, Duration::from_secs(1)),
            1
        );
        // Kept through the grace after the expiry, then gone.
        let mut p = again.clone();
        assert!(!p.prune(T + 60_000 + NONCE_GRACE_MS));
        assert!(p.seen(&[1; 16]));
        assert!(p.prune(T + 60_001 + NONCE_GRACE_MS));
        assert!(!p.seen(&[1; 16]));
        // Unreadable: an error, not an empty state.
        std::fs::write(store.path(), b"{").unwrap();
        assert!(store.load().is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Remember(u8, u32),
        Start(u8, u32),
        Prune(u32),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), 0..2_000_000u32).prop_map(|(n, t)| Op::Remember(n, t)),
            (0..3u8, 0..2_000_000u32).prop_map(|(a, t)| Op::Start(a, t)),
            (0..4_000_000u32).prop_map(Op::Prune),
            Just(Op::Reopen),
        ]
    }

    /// A rate no model run reaches.
    const BIG: Rate = Rate {
        max: 10_000,
        per: Duration::from_secs(30 * 86_400),
    };

    proptest! {
        /// Model test: the state against a plain map and list, through
        /// saves and reopens. A nonce is seen from when it is remembered
        /// until a prune past its expiry plus the grace; starts are
        /// counted per window exactly.
        #[test]
        fn the_state_is_its_model_through_reopens(ops in proptest::collection::vec(op(), 1..60)) {
            let dir = muster_testkit::TempDir::new().unwrap();
            let store = Store::new(dir.path());
            let mut s = State::default();
            let mut nonces: BTreeMap<[u8; 16], u64> = BTreeMap::new();
            let mut starts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Remember(n, t) => {
                        let until = T + u64::from(t) + NONCE_GRACE_MS;
                        prop_assert!(s.remember([n; 16], T + u64::from(t)));
                        let e = nonces.entry([n; 16]).or_insert(until);
                        *e = (*e).max(until);
                    }
                    Op::Start(a, t) => {
                        s.started(&format!("a{a}"), BIG, T + u64::from(t));
                        starts.entry(format!("a{a}")).or_default().push(T + u64::from(t));
                    }
                    Op::Prune(t) => {
                        let now = T + u64::from(t);
                        s.prune(now);
                        nonces.retain(|_, u| *u >= now);
                        let from = now.saturating_sub(MAX_WINDOW_MS);
                        starts.retain(|_, v| v.iter().any(|x| *x > from));
                    }
                    Op::Reopen => {
                        store.save(&s).unwrap();
                        s = store.load().unwrap();
                    }
                }
                for n in 0..=255u8 {
                    prop_assert_eq!(s.seen(&[n; 16]), nonces.contains_key(&[n; 16]));
                }
                prop_assert_eq!(s.nonces(), nonces.len());
                for (a, v) in &starts {
                    for per in [1_000u64, 500_000, 3_600_000] {
                        let now = T + 1_000_000;
                        let want = v.iter().filter(|x| **x > now - per).count();
                        prop_assert_eq!(s.starts_within(a, now, Duration::from_millis(per)), want);
                    }
                }
            }
        }
    }

    #[test]
    fn the_nonce_memory_is_bounded() {
        let mut s = State::default();
        for i in 0..MAX_NONCES {
            let mut n = [0; 16];
            n[..8].copy_from_slice(&(i as u64).to_le_bytes());
            assert!(s.remember(n, T));
        }
        assert!(s.nonces_full());
        assert!(!s.remember([0xee; 16], T), "full: not remembered");
        assert!(!s.seen(&[0xee; 16]));
        // One already remembered is still fine (its time may only grow).
        assert!(s.remember([0; 16], T + 5));
        // A file with more than the bound keeps the newest.
        let dir = muster_testkit::TempDir::new().unwrap();
        let store = Store::new(dir.path());
        let mut j = StateJson::default();
        for i in 0..(MAX_NONCES + 10) as u64 {
            let mut n = [0; 16];
            n[..8].copy_from_slice(&i.to_le_bytes());
            j.nonces.insert(muster_proto::sign::hex_of(&n), T + i);
        }
        j.nonces.insert("zz".into(), T);
        std::fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        std::fs::write(store.path(), serde_json::to_vec(&j).unwrap()).unwrap();
        let s = store.load().unwrap();
        assert_eq!(s.nonces(), MAX_NONCES);
        let mut oldest = [0; 16];
        oldest[..8].copy_from_slice(&0u64.to_le_bytes());
        assert!(!s.seen(&oldest));
    }
}
