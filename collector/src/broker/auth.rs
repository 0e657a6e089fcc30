//! Who a CONNECT's user name and password say a client is. A unit's user
//! name is `{agency}/{unit}` (a validated identity) and its password is
//! checked by a [`UnitCredentials`] (an enrolment registry, or
//! [`StaticUnitCredentials`] in tests and the demo); an agency's status
//! reader uses the agency's name and its feed token (`[[agency]] token`).
//! Anything else (anonymous, unknown, wrong password) is no principal.
//! Secrets are compared in constant time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use muster_proto::UnitId;

use super::acl::Principal;
use crate::feed::auth::ct_eq;

pub trait UnitCredentials: Send + Sync + 'static {
    /// true when `unit` is enrolled and active (not pending, not revoked) and `password` is its credential.
    fn verify(&self, unit: &muster_proto::UnitId, password: &[u8]) -> bool;
}

impl std::fmt::Debug for dyn UnitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnitCredentials")
    }
}

/// A fixed map unit → SHA-256 of its secret.
#[derive(Default)]
pub struct StaticUnitCredentials {
    units: HashMap<UnitId, [u8; 32]>,
}

impl std::fmt::Debug for StaticUnitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticUnitCredentials")
            .field("units", &self.units.len())
            .finish()
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl StaticUnitCredentials {
    pub fn new() -> Self {
        Self::default()
    }

    /// Enrols `unit` with `secret` (only its hash is kept).
    pub fn insert(&mut self, unit: UnitId, secret: &[u8]) {
        self.units.insert(unit, sha256(secret));
    }

    /// Enrols `unit` by the SHA-256 of its secret (`[[broker.unit]]`).
    pub fn insert_hash(&mut self, unit: UnitId, sha256: [u8; 32]) {
        self.units.insert(unit, sha256);
    }

    /// The units of `[[broker.unit]]`.
    pub fn from_config(units: &[(UnitId, [u8; 32])]) -> Self {
        let mut s = Self::new();
        for (u, h) in units {
            s.insert_hash(u.clone(), *h);
        }
        s
    }
}

impl UnitCredentials for StaticUnitCredentials {
    fn verify(&self, unit: &UnitId, password: &[u8]) -> bool {
        // Hash first, so the time taken does not depend on the unit being known.
        let h = sha256(password);
        self.units.get(unit).is_some_and(|want| ct_eq(want, &h))
    }
}

/// The units the gate admits: those listed in `[[broker.unit]]`, and those
/// enrolled and active in the collector's enrolment registry once the
/// collector has opened it (until then, only the listed ones).
#[derive(Debug, Default)]
pub struct FleetCredentials {
    listed: StaticUnitCredentials,
    enrolled: std::sync::OnceLock<Arc<dyn UnitCredentials>>,
}

impl FleetCredentials {
    pub fn new(listed: StaticUnitCredentials) -> Self {
        FleetCredentials {
            listed,
            enrolled: std::sync::OnceLock::new(),
        }
    }

    /// The enrolment registry, once open (set once; later calls are ignored).
    pub fn set_enrolled(&self, registry: Arc<dyn UnitCredentials>) {
        let _ = self.enrolled.set(registry);
    }
}

impl UnitCredentials for FleetCredentials {
    fn verify(&self, unit: &UnitId, password: &[u8]) -> bool {
        self.listed.verify(unit, password)
            || self
                .enrolled
                .get()
                .is_some_and(|r| r.verify(unit, password))
    }
}

/// A random secret: 32 bytes from the OS, hex.
pub fn generate_secret() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the OS random source failed");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Turns CONNECT credentials into a principal.
#[derive(Clone)]
pub struct Authenticator {
    units: Arc<dyn UnitCredentials>,
    /// Agency name -> feed token.
    agencies: BTreeMap<String, String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("agencies", &self.agencies.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(units: Arc<dyn UnitCredentials>, agencies: BTreeMap<String, String>) -> Self {
        Authenticator { units, agencies }
    }

    /// The principal these credentials prove, or None.
    pub fn authenticate(&self, username: &str, password: &[u8]) -> Option<Principal> {
        if let Some((agency, unit)) = username.split_once('/') {
            let unit = UnitId::new(agency, unit).ok()?;
            return self
                .units
                .verify(&unit, password)
                .then_some(Principal::Unit(unit));
        }
        let token = self.agencies.get(username)?;
        ct_eq(token.as_bytes(), password).then(|| Principal::Agency(username.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        let mut u = StaticUnitCredentials::new();
        u.insert(UnitId::new("metro-fire", "E12").unwrap(), b"e12-secret");
        Authenticator::new(
            Arc::new(u),
            BTreeMap::from([("metro-fire".into(), "fire-token-0123456789".into())]),
        )
    }

    #[test]
    fn credentials_table() {
        let a = auth();
        let e12 = Principal::Unit(UnitId::new("metro-fire", "E12").unwrap());
        let fire = Principal::Agency("metro-fire".into());
        let cases: &[(&str, &[u8], Option<&Principal>)] = &[
            ("metro-fire/E12", b"e12-secret", Some(&e12)),
            ("metro-fire/E12", b"e12-secreT", None),
            ("metro-fire/E12", b"", None),
            ("metro-fire/E13", b"e12-secret", None),
            ("county-ems/E12", b"e12-secret", None),
            ("metro-fire/E12/x", b"e12-secret", None),
            ("metro-fire/+", b"e12-secret", None),
            ("metro-fire", b"fire-token-0123456789", Some(&fire)),
            ("metro-fire", b"fire-token-012345678", None),
            ("metro-fire", b"e12-secret", None),
            ("county-ems", b"fire-token-0123456789", None),
            ("", b"", None),
        ];
        for (user, pass, want) in cases {
            assert_eq!(
                a.authenticate(user, pass).as_ref(),
                *want,
                "{user} {:?}",
                String::from_utf8_lossy(pass)
            );
        }
    }

    #[test]
    fn secrets_are_random_hex() {
        let (a, b) = (generate_secret(), generate_secret());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
