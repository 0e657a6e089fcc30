//! Collector signatures (Ed25519) on acks, hellos, config documents and
//! action requests: keys, key ids, the
//! signed bytes, signing and verification. Pure: no I/O, no clock, no RNG —
//! a [`SigningKey`] is made from 32 bytes the caller provides (the collector
//! reads them from its key file, created from the OS RNG).
//!
//! Contract:
//!
//! * What is signed is domain-separated: a fixed context string, then the
//!   bincode (standard config) of the fields. An ack signs
//!   `ACK_CONTEXT ‖ bincode(unit, boot, upto, ranges, collector_ms)`, so a
//!   signature cannot be moved to another unit, boot or range, nor to a
//!   hello (`HELLO_CONTEXT ‖ bincode(started_ms, counter, next_keys)`) or
//!   a config document (`CONFIG_CONTEXT ‖ bincode(scope, version,
//!   issued_ms, body)`, whose SHA-256 is the document's hash), or an action
//!   request (`ACTION_CONTEXT ‖ bincode(unit, action, params, nonce,
//!   issued_ms, expires_ms, requested_by)`).
//! * A [`KeyId`] is the first 8 bytes of SHA-256 of the public key; it names
//!   the key a message claims. Verification looks the id up in
//!   [`TrustedKeys`] and checks the signature with `verify_strict` (no
//!   malleable or small-order signatures). Any failure is a typed
//!   [`VerifyError`]; nothing panics on hostile input.
//! * Public keys have one text form, `ed25519:<64 lowercase hex digits>`
//!   (parsing accepts either case), used in configs, the agent's
//!   `trusted_keys` file and logs.

use std::fmt;
use std::str::FromStr;

use bincode::config::{Configuration, LittleEndian, Varint};
use ed25519_dalek::{Signer, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::action::ActionRequest;
use crate::ids::{BootId, UnitId};
use crate::message::{Ack, ConfigDoc, DocScope, Hello, SeqRange};

/// Prefix of every signed ack's bytes.
pub const ACK_CONTEXT: &[u8] = b"muster ack v2\0";
/// Prefix of every signed hello's bytes.
pub const HELLO_CONTEXT: &[u8] = b"muster hello v2\0";
/// Prefix of every signed config document's bytes.
pub const CONFIG_CONTEXT: &[u8] = b"muster config v1\0";
/// Prefix of every signed action request's bytes.
pub const ACTION_CONTEXT: &[u8] = b"muster action v1\0";
/// Most keys an agent trusts at once (configured, persisted and announced).
pub const MAX_TRUSTED_KEYS: usize = 16;
/// Text prefix of a public key.
pub const KEY_PREFIX: &str = "ed25519:";

fn config() -> Configuration<LittleEndian, Varint> {
    bincode::config::standard()
}

// ---------------------------------------------------------------- key ids

/// First 8 bytes of SHA-256 of a public key. All zeroes: unsigned (a v1 ack).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    pub const NONE: KeyId = KeyId([0; 8]);
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

// ------------------------------------------------------------- signatures

/// An Ed25519 signature: 64 bytes as two fixed halves (serde derives stop at
/// 32-byte arrays), so bincode writes exactly 64 bytes and no length prefix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Signature(pub [u8; 32], pub [u8; 32]);

impl Signature {
    /// No signature (a v1 ack, or a test's forgery).
    pub const NONE: Signature = Signature([0; 32], [0; 32]);

    pub fn from_bytes(b: &[u8; 64]) -> Signature {
        let mut lo = [0; 32];
        let mut hi = [0; 32];
        lo.copy_from_slice(&b[..32]);
        hi.copy_from_slice(&b[32..]);
        Signature(lo, hi)
    }

    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0; 64];
        out[..32].copy_from_slice(&self.0);
        out[32..].copy_from_slice(&self.1);
        out
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", &hex(&self.0)[..16])
    }
}

// ------------------------------------------------------------- public keys

/// An Ed25519 public key; text form `ed25519:<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

/// Why a public key's text or bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a public key is written \"{KEY_PREFIX}<64 hex digits>\"")]
    Prefix,
    #[error("expected 64 hex digits after \"{KEY_PREFIX}\", found {0} characters")]
    Length(usize),
    #[error("{0:?} is not a hex digit")]
    Hex(char),
    #[error("not a valid Ed25519 public key (not a curve point)")]
    NotAPoint,
}

impl PublicKey {
    /// Checks that the bytes are a point on the curve.
    pub fn from_bytes(b: [u8; 32]) -> Result<PublicKey, KeyError> {
        VerifyingKey::from_bytes(&b).map_err(|_| KeyError::NotAPoint)?;
        Ok(PublicKey(b))
    }

    pub fn key_id(&self) -> KeyId {
        let d = Sha256::digest(self.0);
        let mut id = [0; 8];
        id.copy_from_slice(&d[..8]);
        KeyId(id)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<PublicKey, KeyError> {
        let hexpart = s.trim().strip_prefix(KEY_PREFIX).ok_or(KeyError::Prefix)?;
        if hexpart.len() != 64 || !hexpart.is_ascii() {
            return Err(KeyError::Length(hexpart.chars().count()));
        }
        let mut b = [0u8; 32];
        let digits = hexpart.as_bytes();
        for (i, out) in b.iter_mut().enumerate() {
            let hi = nibble(digits[2 * i] as char)?;
            let lo = nibble(digits[2 * i + 1] as char)?;
            *out = (hi << 4) | lo;
        }
        PublicKey::from_bytes(b)
    }
}

fn nibble(c: char) -> Result<u8, KeyError> {
    c.to_digit(16).map(|d| d as u8).ok_or(KeyError::Hex(c))
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}", hex(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

// ------------------------------------------------------------ signing keys

/// The collector's private key. Made from 32 caller-provided bytes (the
/// seed); never printed.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    pub fn from_seed(seed: &[u8; 32]) -> SigningKey {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    pub fn key_id(&self) -> KeyId {
        self.public_key().key_id()
    }

    fn sign(&self, msg: &[u8]) -> Signature {
        Signature::from_bytes(&self.0.sign(msg).to_bytes())
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public_key())
    }
}

// ---------------------------------------------------------- trusted keys

/// Why a trusted set refused a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("at most {MAX_TRUSTED_KEYS} trusted keys")]
    Full,
}

/// The keys an agent accepts acks and hellos from: a small set, at most
/// [`MAX_TRUSTED_KEYS`], looked up by key id.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(KeyId, PublicKey, VerifyingKey)>,
}

impl TrustedKeys {
    pub fn new() -> TrustedKeys {
        TrustedKeys::default()
    }

    /// Adds a key; `Ok(false)` if it was already trusted.
    pub fn insert(&mut self, key: PublicKey) -> Result<bool, TrustError> {
        let id = key.key_id();
        if self.keys.iter().any(|(i, _, _)| *i == id) {
            return Ok(false);
        }
        if self.keys.len() >= MAX_TRUSTED_KEYS {
            return Err(TrustError::Full);
        }
        // A PublicKey was checked to be a point when it was made; a key
        // built from raw bytes that is not one is simply never trusted.
        let Ok(vk) = VerifyingKey::from_bytes(&key.0) else {
            return Ok(false);
        };
        self.keys.push((id, key, vk));
        Ok(true)
    }

    pub fn contains(&self, id: KeyId) -> bool {
        self.keys.iter().any(|(i, _, _)| *i == id)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted keys, in insertion order.
    pub fn keys(&self) -> impl Iterator<Item = PublicKey> + '_ {
        self.keys.iter().map(|(_, k, _)| *k)
    }

    fn verify(&self, id: KeyId, msg: &[u8], sig: &Signature) -> Result<KeyId, VerifyError> {
        if id == KeyId::NONE && *sig == Signature::NONE {
            return Err(VerifyError::Unsigned);
        }
        let (_, _, vk) = self
            .keys
            .iter()
            .find(|(i, _, _)| *i == id)
            .ok_or(VerifyError::UnknownKey(id))?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig.to_bytes());
        vk.verify_strict(msg, &sig)
            .map_err(|_| VerifyError::BadSignature(id))?;
        Ok(id)
    }
}

/// Why a signed message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("not signed")]
    Unsigned,
    #[error("signed by key {0}, which is not trusted")]
    UnknownKey(KeyId),
    #[error("signature by key {0} does not verify")]
    BadSignature(KeyId),
}

// --------------------------------------------------------------------- acks

/// The bytes an ack's signature covers.
pub fn ack_signed_bytes(unit: &UnitId, ack: &Ack) -> Vec<u8> {
    ack_bytes(unit, ack.boot, ack.upto, &ack.ranges, ack.collector_ms)
}

fn ack_bytes(unit: &UnitId, boot: BootId, upto: u64, ranges: &[SeqRange], ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + ranges.len() * 8);
    out.extend_from_slice(ACK_CONTEXT);
    // Writing to a Vec cannot fail, and these types always serialize.
    let _ =
        bincode::serde::encode_into_std_write((unit, boot, upto, ranges, ms), &mut out, config());
    out
}

/// Signs `ack` for `unit` with `key`: sets its `key_id` and `sig`.
pub fn sign_ack(key: &SigningKey, unit: &UnitId, mut ack: Ack) -> Ack {
    ack.key_id = key.key_id();
    ack.sig = key.sign(&ack_signed_bytes(unit, &ack));
    ack
}

/// Is `ack`, received on `unit`'s ack topic, signed by a trusted key?
/// Returns the key id that signed it.
pub fn verify_ack(trusted: &TrustedKeys, unit: &UnitId, ack: &Ack) -> Result<KeyId, VerifyError> {
    trusted.verify(ack.key_id, &ack_signed_bytes(unit, ack), &ack.sig)
}

// ------------------------------------------------------------------- hello

/// The bytes a hello's signature covers.
pub fn hello_signed_bytes(h: &Hello) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + h.next_keys.len() * 33);
    out.extend_from_slice(HELLO_CONTEXT);
    let _ = bincode::serde::encode_into_std_write(
        (h.started_ms, h.counter, &h.next_keys),
        &mut out,
        config(),
    );
    out
}

/// A signed hello.
pub fn sign_hello(
    key: &SigningKey,
    started_ms: u64,
    counter: u64,
    next_keys: Vec<PublicKey>,
) -> Hello {
    let mut h = Hello {
        started_ms,
        counter,
        next_keys,
        key_id: key.key_id(),
        sig: Signature::NONE,
    };
    h.sig = key.sign(&hello_signed_bytes(&h));
    h
}

/// Is the hello signed by a trusted key? Returns the key id that signed it.
pub fn verify_hello(trusted: &TrustedKeys, h: &Hello) -> Result<KeyId, VerifyError> {
    trusted.verify(h.key_id, &hello_signed_bytes(h), &h.sig)
}

// ----------------------------------------------------------- remote config

/// The bytes a config document's signature covers: its scope (agency, and
/// unit for a unit's document), version, issue time and body.
pub fn config_signed_bytes(d: &ConfigDoc) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + d.body.len());
    out.extend_from_slice(CONFIG_CONTEXT);
    let _ = bincode::serde::encode_into_std_write(
        (&d.scope, d.version, d.issued_ms, &d.body),
        &mut out,
        config(),
    );
    out
}

/// A document's hash: SHA-256 of what its signature covers, so two
/// documents with one hash say the same thing to the same units.
pub fn config_hash(d: &ConfigDoc) -> [u8; 32] {
    Sha256::digest(config_signed_bytes(d)).into()
}

/// A signed config document.
pub fn sign_config(
    key: &SigningKey,
    scope: DocScope,
    version: u64,
    issued_ms: u64,
    body: String,
) -> ConfigDoc {
    let mut d = ConfigDoc {
        scope,
        version,
        issued_ms,
        body,
        key_id: key.key_id(),
        sig: Signature::NONE,
    };
    d.sig = key.sign(&config_signed_bytes(&d));
    d
}

/// Is the document signed by a trusted key? Returns the key id that
/// signed it. Whether it is for this unit is the agent's check.
pub fn verify_config(trusted: &TrustedKeys, d: &ConfigDoc) -> Result<KeyId, VerifyError> {
    trusted.verify(d.key_id, &config_signed_bytes(d), &d.sig)
}

// ---------------------------------------------------------- action requests

/// The bytes an action request's signature covers: everything it says.
pub fn action_signed_bytes(r: &ActionRequest) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(ACTION_CONTEXT);
    let _ = bincode::serde::encode_into_std_write(
        (
            &r.unit,
            &r.action,
            &r.params,
            r.nonce,
            r.issued_ms,
            r.expires_ms,
            &r.requested_by,
        ),
        &mut out,
        config(),
    );
    out
}

/// Signs `r` with `key`: sets its `key_id` and `sig`.
pub fn sign_action(key: &SigningKey, mut r: ActionRequest) -> ActionRequest {
    r.key_id = key.key_id();
    r.sig = key.sign(&action_signed_bytes(&r));
    r
}

/// Is the request signed by a trusted key? Returns the key id that signed
/// it. The unit, the expiry and the nonce are the agent's checks.
pub fn verify_action(trusted: &TrustedKeys, r: &ActionRequest) -> Result<KeyId, VerifyError> {
    trusted.verify(r.key_id, &action_signed_bytes(r), &r.sig)
}

/// Lowercase hex of a hash or key id, for logs and JSON.
pub fn hex_of(b: &[u8]) -> String {
    hex(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_text_round_trips_and_refusals_are_typed() {
        let k = SigningKey::from_seed(&[9; 32]).public_key();
        let s = k.to_string();
        assert!(s.starts_with("ed25519:") && s.len() == 8 + 64, "{s}");
        assert_eq!(s.parse::<PublicKey>().unwrap(), k);
        assert_eq!(
            s.to_uppercase()
                .replace("ED25519", "ed25519")
                .parse::<PublicKey>()
                .unwrap(),
            k
        );
        let cases: &[(&str, KeyError)] = &[
            ("", KeyError::Prefix),
            ("rsa:00", KeyError::Prefix),
            ("ed25519:abcd", KeyError::Length(4)),
            (&format!("ed25519:{}", "g".repeat(64)), KeyError::Hex('g')),
            (&format!("ed25519:{}", "é".repeat(32)), KeyError::Length(32)),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<PublicKey>().unwrap_err(), *want, "{text:?}");
        }
        // Not every 32 bytes are a point: find one that is not, it is refused.
        let bad = (0u8..=255)
            .map(|b| [b; 32])
            .find(|b| VerifyingKey::from_bytes(b).is_err())
            .expect("some byte pattern is not a point");
        assert_eq!(PublicKey::from_bytes(bad), Err(KeyError::NotAPoint));
    }

    #[test]
    fn trusted_set_is_bounded_and_deduplicated() {
        let mut t = TrustedKeys::new();
        for i in 0..MAX_TRUSTED_KEYS {
            assert_eq!(
                t.insert(SigningKey::from_seed(&[i as u8; 32]).public_key()),
                Ok(true)
            );
        }
        assert_eq!(
            t.insert(SigningKey::from_seed(&[0; 32]).public_key()),
            Ok(false)
        );
        assert_eq!(
            t.insert(SigningKey::from_seed(&[200; 32]).public_key()),
            Err(TrustError::Full)
        );
        assert_eq!(t.len(), MAX_TRUSTED_KEYS);
    }
}
