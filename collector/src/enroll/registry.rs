//! The enrolment registry: which units hold which credential, and in which
//! state. A pure state machine ([`decide_claim`], [`decide_approve`],
//! [`decide_revoke`]) with the live view and its persistence in the
//! collector's store around it.
//!
//! Contract:
//! * A unit has at most one credential, named by the SHA-256 of the agent's
//!   secret (the secret never reaches the collector before the first MQTT
//!   CONNECT, and is never stored).
//! * States: `pending` (claimed, waiting for an admin), `active` (the broker
//!   gate accepts its credential), `revoked` (refused; the unit may be
//!   claimed again, with a NEW credential only).
//! * A claim never takes over a unit: a pending or active unit with another
//!   credential is refused (`taken`); the same credential again is an
//!   idempotent repeat. Only an admin's revoke frees a unit.
//! * At most `max_pending` claims are pending at once, all agencies together.
//! * Every change is durable (store flushed) before it is visible to
//!   [`UnitCredentials::verify`] or answered; a revoke is visible to `verify`
//!   as soon as it returns.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock};

use muster_proto::UnitId;
use serde::{Deserialize, Serialize};

use crate::config::EnrollMode;
use crate::store::{Store, StoreError};

use crate::broker::auth::UnitCredentials;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnrollState {
    Pending,
    Active,
    Revoked,
}

impl EnrollState {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollState::Pending => "pending",
            EnrollState::Active => "active",
            EnrollState::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(EnrollState::Pending),
            "active" => Some(EnrollState::Active),
            "revoked" => Some(EnrollState::Revoked),
            _ => None,
        }
    }
}

/// One unit's enrolment, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub unit: UnitId,
    pub state: EnrollState,
    /// Lowercase hex SHA-256 of the unit's secret.
    pub credential_sha256: String,
    /// Collector time (unix ms) of the claim that set this credential.
    pub created_ms: u64,
    /// Collector time of the last state change.
    pub updated_ms: u64,
}

impl Enrollment {
    /// The first 16 hex digits of the credential hash: what an admin compares
    /// with the terminal's log line before approving.
    pub fn fingerprint(&self) -> &str {
        &self.credential_sha256[..16]
    }
}

/// What one enrolment request or admin action came to: the `result` label
/// of `muster_enrollments_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new claim, active at once (`enroll = "auto"`).
    Active,
    /// A new claim waiting for approval.
    Pending,
    /// The same credential again: nothing changed.
    Repeat,
    /// Refused: the unit is enrolled with another credential.
    Taken,
    /// Refused: this credential was revoked.
    RevokedCredential,
    /// Refused: `enroll.max_pending` claims are already pending.
    OverLimit,
    /// Refused: a bad unit id, hash or body.
    Invalid,
    /// An admin approved a pending unit.
    Approved,
    /// An admin revoked a unit.
    Revoked,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Active,
        Outcome::Pending,
        Outcome::Repeat,
        Outcome::Taken,
        Outcome::RevokedCredential,
        Outcome::OverLimit,
        Outcome::Invalid,
        Outcome::Approved,
        Outcome::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Active => "active",
            Outcome::Pending => "pending",
            Outcome::Repeat => "repeat",
            Outcome::Taken => "taken",
            Outcome::RevokedCredential => "revoked_credential",
            Outcome::OverLimit => "over_limit",
            Outcome::Invalid => "invalid",
            Outcome::Approved => "approved",
            Outcome::Revoked => "revoked",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// A refusal (logged rate-limited, not as an event).
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            Outcome::Taken | Outcome::RevokedCredential | Outcome::OverLimit | Outcome::Invalid
        )
    }
}

impl crate::ingest::refusal::LogReason for Outcome {
    const COUNT: usize = Outcome::ALL.len();
    fn index(self) -> usize {
        Outcome::index(self)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("the unit is enrolled with another credential; an admin must revoke it first")]
    Taken,
    #[error("this credential was revoked; enrol with a new one")]
    RevokedCredential,
    #[error("too many enrolments are pending approval")]
    OverLimit,
    #[error("no enrolment for this unit")]
    NotFound,
    #[error("a revoked enrolment cannot be approved; the unit must enrol again")]
    NotPending,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegistryError {
    /// The metric label of a refused claim.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            RegistryError::Taken => Some(Outcome::Taken),
            RegistryError::RevokedCredential => Some(Outcome::RevokedCredential),
            RegistryError::OverLimit => Some(Outcome::OverLimit),
            _ => None,
        }
    }
}

// ------------------------------------------------------------ pure core

/// What a claim does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimDecision {
    /// Store a new enrolment in this state (201 active, 202 pending).
    Create(EnrollState),
    /// The same credential again: answer its current state (200).
    Repeat(EnrollState),
}

/// Decides a claim of `hash` for a unit whose current enrolment is
/// `existing`, with `pending` claims pending now.
pub fn decide_claim(
    existing: Option<&Enrollment>,
    hash: &str,
    mode: EnrollMode,
    pending: usize,
    max_pending: usize,
) -> Result<ClaimDecision, RegistryError> {
    if let Some(e) = existing {
        let same = same_hex(&e.credential_sha256, hash);
        match (e.state, same) {
            (EnrollState::Pending | EnrollState::Active, true) => {
                return Ok(ClaimDecision::Repeat(e.state));
            }
            (EnrollState::Pending | EnrollState::Active, false) => {
                return Err(RegistryError::Taken);
            }
            (EnrollState::Revoked, true) => return Err(RegistryError::RevokedCredential),
            // Revoked: the unit is free for a new credential.
            (EnrollState::Revoked, false) => {}
        }
    }
    match mode {
        EnrollMode::Auto => Ok(ClaimDecision::Create(EnrollState::Active)),
        EnrollMode::Approve if pending >= max_pending => Err(RegistryError::OverLimit),
        EnrollMode::Approve => Ok(ClaimDecision::Create(EnrollState::Pending)),
    }
}

/// Approve: pending -> active; active stays active (`None`: no change).
pub fn decide_approve(e: &Enrollment) -> Result<Option<EnrollState>, RegistryError> {
    match e.state {
        EnrollState::Pending => Ok(Some(EnrollState::Active)),
        EnrollState::Active => Ok(None),
        EnrollState::Revoked => Err(RegistryError::NotPending),
    }
}

/// Revoke: anything -> revoked (`None`: already revoked).
pub fn decide_revoke(e: &Enrollment) -> Option<EnrollState> {
    (e.state != EnrollState::Revoked).then_some(EnrollState::Revoked)
}

/// 64 lowercase hex digits (what `credential_sha256` must be).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Compares without an early exit.
fn same_hex(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The stored hash a password must match: the password is the hex of the
/// unit's 32-byte secret; the hash is the SHA-256 of those 32 bytes.
pub fn password_hash(password: &[u8]) -> Option<String> {
    if password.len() != 64 {
        return None;
    }
    let mut secret = [0u8; 32];
    for (i, pair) in password.chunks_exact(2).enumerate() {
        let nib = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        secret[i] = (nib(pair[0])? << 4) | nib(pair[1])?;
    }
    let d = ring::digest::digest(&ring::digest::SHA256, &secret);
    Some(crate::notify::sign::hex(d.as_ref()))
}

// ------------------------------------------------------------ the registry

/// The live registry over the store. Methods that write block on the
/// store's flush: call them from a blocking task.
pub struct Registry {
    store: Arc<dyn Store>,
    view: RwLock<BTreeMap<UnitId, Enrollment>>,
    /// Serialises changes: decide, persist, then publish to `view`.
    write: Mutex<()>,
    max_pending: usize,
    /// The collector's ack-signing public keys (`ed25519:<64 hex>`: the
    /// current one, then the announced next one), handed to a unit when its
    /// enrolment is active.
    keys: Vec<String>,
}

/// What a successful claim answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub enrollment: Enrollment,
    /// Created now (201/202) or a repeat (200).
    pub created: bool,
}

impl Registry {
    /// Loads every enrolment from the store.
    pub fn open(
        store: Arc<dyn Store>,
        max_pending: usize,
        keys: Vec<String>,
    ) -> Result<Registry, StoreError> {
        let view = store
            .load_enrollments()?
            .into_iter()
            .map(|e| (e.unit.clone(), e))
            .collect();
        Ok(Registry {
            store,
            view: RwLock::new(view),
            write: Mutex::new(()),
            max_pending,
            keys,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<UnitId, Enrollment>> {
        self.view.read().unwrap_or_else(|e| e.into_inner())
    }

    fn persist(&self, e: Enrollment) -> Result<Enrollment, RegistryError> {
        self.store.put_enrollment(&e)?;
        self.view
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(e.unit.clone(), e.clone());
        Ok(e)
    }

    pub fn get(&self, unit: &UnitId) -> Option<Enrollment> {
        self.read().get(unit).cloned()
    }

    pub fn pending(&self) -> usize {
        self.read()
            .values()
            .filter(|e| e.state == EnrollState::Pending)
            .count()
    }

    /// A claim of `unit` with credential hash `hash` (checked by the caller
    /// with [`is_sha256_hex`]).
    pub fn claim(
        &self,
        unit: &UnitId,
        hash: &str,
        mode: EnrollMode,
        now_ms: u64,
    ) -> Result<Claimed, RegistryError> {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let existing = self.get(unit);
        match decide_claim(
            existing.as_ref(),
            hash,
            mode,
            self.pending(),
            self.max_pending,
        )? {
            ClaimDecision::Repeat(_) => Ok(Claimed {
                enrollment: existing.expect("a repeat has an enrolment"),
                created: false,
            }),
            ClaimDecision::Create(state) => {
                let e = self.persist(Enrollment {
                    unit: unit.clone(),
                    state,
                    credential_sha256: hash.to_owned(),
                    created_ms: now_ms,
                    updated_ms: now_ms,
                })?;
                Ok(Claimed {
                    enrollment: e,
                    created: true,
                })
            }
        }
    }

    /// Admin: pending -> active. Returns the enrolment and whether it changed.
    pub fn approve(&self, unit: &UnitId, now_ms: u64) -> Result<(Enrollment, bool), RegistryError> {
        self.admin_change(unit, now_ms, decide_approve)
    }

    /// Admin: anything -> revoked. Returns the enrolment and whether it changed.
    pub fn revoke(&self, unit: &UnitId, now_ms: u64) -> Result<(Enrollment, bool), RegistryError> {
        self.admin_change(unit, now_ms, |e| Ok(decide_revoke(e)))
    }

    /// An admin's change of `unit`'s state, as `decide` says (`None`: none).
    fn admin_change(
        &self,
        unit: &UnitId,
        now_ms: u64,
        decide: impl FnOnce(&Enrollment) -> Result<Option<EnrollState>, RegistryError>,
    ) -> Result<(Enrollment, bool), RegistryError> {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let e = self.get(unit).ok_or(RegistryError::NotFound)?;
        match decide(&e)? {
            None => Ok((e, false)),
            Some(state) => Ok((
                self.persist(Enrollment {
                    state,
                    updated_ms: now_ms,
                    ..e
                })?,
                true,
            )),
        }
    }

    /// Enrolments in unit order after `after`, filtered; at most `limit`,
    /// with the last unit returned when more remain.
    pub fn list(
        &self,
        state: Option<EnrollState>,
        agency: Option<&str>,
        after: Option<&UnitId>,
        limit: usize,
    ) -> (Vec<Enrollment>, Option<UnitId>) {
        let view = self.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = Vec::new();
        for (id, e) in view.range::<UnitId, _>((start, Bound::Unbounded)) {
            if state.is_some_and(|s| s != e.state) || agency.is_some_and(|a| a != id.agency) {
                continue;
            }
            if out.len() == limit {
                let last = out.last().map(|l: &Enrollment| l.unit.clone());
                return (out, last);
            }
            out.push(e.clone());
        }
        (out, None)
    }

    pub fn collector_keys(&self) -> Vec<String> {
        self.keys.clone()
    }
}

impl UnitCredentials for Registry {
    fn verify(&self, unit: &UnitId, password: &[u8]) -> bool {
        // Hash before taking the lock: the lock is held only for a lookup.
        let Some(h) = password_hash(password) else {
            return false;
        };
        self.read()
            .get(unit)
            .is_some_and(|e| e.state == EnrollState::Active && same_hex(&e.credential_sha256, &h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn e(state: EnrollState, hash: &str) -> Enrollment {
        Enrollment {
            unit: UnitId::new("metro-fire", "E12").unwrap(),
            state,
            credential_sha256: hash.into(),
            created_ms: 1,
            updated_ms: 1,
        }
    }

    #[test]
    fn claims_table() {
        use ClaimDecision::*;
        use EnrollMode::*;
        use EnrollState::*;
        type Want = Result<ClaimDecision, &'static str>;
        let cases: &[(Option<Enrollment>, &str, EnrollMode, usize, Want)] = &[
            (None, A, Auto, 0, Ok(Create(Active))),
            (None, A, Approve, 0, Ok(Create(Pending))),
            (None, A, Approve, 9, Ok(Create(Pending))),
            (None, A, Approve, 10, Err("over")),
            // Auto mode creates no pending claim: the cap does not apply.
            (None, A, Auto, 10, Ok(Create(Active))),
            (Some(e(Pending, A)), A, Approve, 10, Ok(Repeat(Pending))),
            (Some(e(Active, A)), A, Approve, 0, Ok(Repeat(Active))),
            (Some(e(Active, A)), A, Auto, 0, Ok(Repeat(Active))),
            (Some(e(Active, A)), B, Auto, 0, Err("taken")),
            (Some(e(Pending, A)), B, Approve, 0, Err("taken")),
            (Some(e(Revoked, A)), A, Auto, 0, Err("revoked")),
            (Some(e(Revoked, A)), B, Auto, 0, Ok(Create(Active))),
            (Some(e(Revoked, A)), B, Approve, 0, Ok(Create(Pending))),
            (Some(e(Revoked, A)), B, Approve, 10, Err("over")),
        ];
        for (i, (existing, hash, mode, pending, want)) in cases.iter().enumerate() {
            let got =
                decide_claim(existing.as_ref(), hash, *mode, *pending, 10).map_err(|e| match e {
                    RegistryError::Taken => "taken",
                    RegistryError::RevokedCredential => "revoked",
                    RegistryError::OverLimit => "over",
                    _ => "other",
                });
            assert_eq!(&got, want, "case {i}");
        }
    }

    #[test]
    fn admin_transitions_table() {
        use EnrollState::*;
        assert_eq!(decide_approve(&e(Pending, A)).unwrap(), Some(Active));
        assert_eq!(decide_approve(&e(Active, A)).unwrap(), None);
        assert!(matches!(
            decide_approve(&e(Revoked, A)),
            Err(RegistryError::NotPending)
        ));
        assert_eq!(decide_revoke(&e(Pending, A)), Some(Revoked));
        assert_eq!(decide_revoke(&e(Active, A)), Some(Revoked));
        assert_eq!(decide_revoke(&e(Revoked, A)), None);
    }

    #[test]
    fn password_is_the_hex_of_the_secret_whose_hash_is_stored() {
        let secret = [0xabu8; 32];
        let password = crate::notify::sign::hex(&secret);
        let stored =
            crate::notify::sign::hex(ring::digest::digest(&ring::digest::SHA256, &secret).as_ref());
        assert_eq!(
            password_hash(password.as_bytes()).as_deref(),
            Some(&*stored)
        );
        assert!(is_sha256_hex(&stored));
        for bad in [
            &b""[..],
            &password.as_bytes()[..62],
            password.to_uppercase().as_bytes(),
            stored.as_bytes(), // the hash itself is not the password
        ] {
            assert_ne!(password_hash(bad).as_deref(), Some(&*stored));
        }
        assert!(!is_sha256_hex(&stored.to_uppercase()));
        assert!(!is_sha256_hex(&stored[1..]));
    }

    #[test]
    fn outcome_labels_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for o in Outcome::ALL {
            assert!(seen.insert(o.as_str()));
            assert_eq!(Outcome::ALL[o.index()], o);
        }
    }
}
