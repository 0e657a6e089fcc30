//! The webhook signature: HMAC-SHA256 with the agency's secret over
//! `"{timestamp}.{body}"`, where `timestamp` is the `X-Muster-Timestamp`
//! header (unix seconds of this attempt) and `body` the exact body bytes.
//! Sent as `X-Muster-Signature: sha256=<lowercase hex>`.
//!
//! A receiver recomputes it over the raw body it read (before any JSON
//! parsing), compares in constant time, and refuses a timestamp more than
//! [`DEFAULT_TOLERANCE_S`] from its own clock: a captured request cannot
//! be replayed later, and the timestamp cannot be changed without the
//! secret. Within the tolerance, `X-Muster-Delivery` (the notification id,
//! the same on every retry) lets it drop a duplicate.

use ring::hmac;

pub const SIGNATURE_HEADER: &str = "x-muster-signature";
pub const TIMESTAMP_HEADER: &str = "x-muster-timestamp";
pub const DELIVERY_HEADER: &str = "x-muster-delivery";
/// How far a receiver should let the timestamp be from its clock.
pub const DEFAULT_TOLERANCE_S: u64 = 300;

fn signed_material(timestamp: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 21);
    m.extend_from_slice(timestamp.to_string().as_bytes());
    m.push(b'.');
    m.extend_from_slice(body);
    m
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[usize::from(b >> 4)] as char);
        s.push(H[usize::from(b & 15)] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The `X-Muster-Signature` value: `sha256=<hex>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, &signed_material(timestamp, body));
    format!("sha256={}", hex(tag.as_ref()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature header is not sha256=<hex>")]
    Malformed,
    #[error("the signature does not match")]
    Mismatch,
    #[error("the timestamp is too far from now")]
    Stale,
}

/// What a receiver does (Rust receivers may call it; the test receiver
/// does): checks the signature in constant time and the timestamp's age.
pub fn verify(
    secret: &[u8],
    header: &str,
    timestamp: u64,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), VerifyError> {
    let tag = header
        .strip_prefix("sha256=")
        .and_then(unhex)
        .ok_or(VerifyError::Malformed)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, &signed_material(timestamp, body), &tag)
        .map_err(|_| VerifyError::Mismatch)?;
    if now_s.abs_diff(timestamp) > tolerance_s {
        return Err(VerifyError::Stale);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // Independently: printf '1700000000.{"a":1}' |
        //   openssl dgst -sha256 -hmac 'secret-0123456789'
        let got = sign(b"secret-0123456789", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            got,
            "sha256=692511b180bbcd561410894fd2bedac27a99690e45169490ea808f433b5d0097"
        );
    }

    #[test]
    fn verify_table() {
        let body = br#"{"id":"x"}"#;
        let s = sign(b"right-secret-0123", 1000, body);
        // (secret, header, timestamp, body, now, want)
        type Case<'a> = (
            &'a [u8],
            &'a str,
            u64,
            &'a [u8],
            u64,
            Result<(), VerifyError>,
        );
        let cases: &[Case] = &[
            (b"right-secret-0123", &s, 1000, body, 1000, Ok(())),
            (b"right-secret-0123", &s, 1000, body, 1300, Ok(())),
            (
                b"right-secret-0123",
                &s,
                1000,
                body,
                1301,
                Err(VerifyError::Stale),
            ),
            (
                b"wrong-secret-0123",
                &s,
                1000,
                body,
                1000,
                Err(VerifyError::Mismatch),
            ),
            // The timestamp is signed: moving it forward breaks the signature.
            (
                b"right-secret-0123",
                &s,
                2000,
                body,
                2000,
                Err(VerifyError::Mismatch),
            ),
            (
                b"right-secret-0123",
                &s,
                1000,
                br#"{"id":"y"}"#,
                1000,
                Err(VerifyError::Mismatch),
            ),
            (
                b"right-secret-0123",
                "sha1=00",
                1000,
                body,
                1000,
                Err(VerifyError::Malformed),
            ),
            (
                b"right-secret-0123",
                "sha256=zz",
                1000,
                body,
                1000,
                Err(VerifyError::Malformed),
            ),
        ];
        for (i, (secret, header, ts, body, now, want)) in cases.iter().enumerate() {
            assert_eq!(
                verify(secret, header, *ts, body, *now, 300),
                *want,
                "case {i}"
            );
        }
    }
}
