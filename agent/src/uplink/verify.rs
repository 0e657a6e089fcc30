//! Which acks and collector hellos the agent believes: a pure core, `now`
//! passed in, table-tested.
//!
//! Contract:
//!
//! * **A record leaves the disk only on an ack signed by a trusted key.**
//!   [`apply_ack`] verifies first (`muster_proto::sign::verify_ack`: key id
//!   trusted, Ed25519 signature over the unit, boot, upto, ranges and
//!   collector time) and touches the in-flight table only if that holds. A
//!   refused ack frees nothing; the caller counts it in `acks_refused`.
//! * A hello ([`judge_hello`]) must verify too. Hellos are ordered by
//!   `(started_ms, counter)`: a newer one means the collector has just
//!   (re)subscribed, so what is in flight may have been dropped by a broker
//!   with no subscriber and is resent now ([`ReplayLimiter`]: at most once
//!   per `min_interval`, a request inside the window is deferred, not lost).
//!   The same hello again (the retained copy after our own reconnect) is
//!   ignored; an older one (a replay) is refused and counted. A newer
//!   verified hello's announced keys become trusted.
//! * Refusals are logged at most once per interval, with the count since the
//!   last line ([`RefusalLog`]).

use muster_proto::sign::{self, VerifyError};
use muster_proto::{Ack, Hello, PublicKey, TrustedKeys, UnitId};

use super::inflight::{Acked, Inflight};

/// Verifies `ack` (received on `unit`'s ack topic) and only then applies it.
pub fn apply_ack(
    inflight: &mut Inflight,
    trusted: &TrustedKeys,
    unit: &UnitId,
    ack: &Ack,
    now_ms: u64,
) -> Result<Acked, VerifyError> {
    sign::verify_ack(trusted, unit, ack)?;
    Ok(inflight.ack(ack, now_ms))
}

/// What to do with a hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloVerdict {
    /// Not signed by a trusted key: count it, nothing else.
    Refused(VerifyError),
    /// Verified, but older than the newest seen: a replay; count it.
    Old,
    /// The newest seen, again (retained copy after a reconnect): ignore.
    Same,
    /// Newer: resend what is in flight, trust the announced keys.
    New { announced: Vec<PublicKey> },
}

/// Judges a hello against the trusted keys and the newest hello seen.
pub fn judge_hello(trusted: &TrustedKeys, newest: Option<(u64, u64)>, h: &Hello) -> HelloVerdict {
    if let Err(e) = sign::verify_hello(trusted, h) {
        return HelloVerdict::Refused(e);
    }
    match newest.map(|n| h.order().cmp(&n)) {
        Some(std::cmp::Ordering::Less) => HelloVerdict::Old,
        Some(std::cmp::Ordering::Equal) => HelloVerdict::Same,
        _ => HelloVerdict::New {
            announced: h
                .next_keys
                .iter()
                .filter(|k| !trusted.contains(k.key_id()))
                .copied()
                .collect(),
        },
    }
}

/// At most one replay per `min_interval_ms`; a request inside the window is
/// kept and becomes due when the window ends.
#[derive(Debug, Clone)]
pub struct ReplayLimiter {
    min_interval_ms: u64,
    last_ms: Option<u64>,
    due_ms: Option<u64>,
}

impl ReplayLimiter {
    pub fn new(min_interval_ms: u64) -> Self {
        ReplayLimiter {
            min_interval_ms,
            last_ms: None,
            due_ms: None,
        }
    }

    /// Asks for a replay; returns when it is due.
    pub fn request(&mut self, now_ms: u64) -> u64 {
        let earliest = self
            .last_ms
            .map_or(now_ms, |l| now_ms.max(l + self.min_interval_ms));
        let due = self.due_ms.map_or(earliest, |d| d.min(earliest));
        self.due_ms = Some(due);
        due
    }

    /// When a requested replay is due, if one is.
    pub fn due(&self) -> Option<u64> {
        self.due_ms
    }

    /// Is a replay due now? If so it is taken (and the window restarts).
    pub fn take(&mut self, now_ms: u64) -> bool {
        match self.due_ms {
            Some(d) if d <= now_ms => {
                self.due_ms = None;
                self.last_ms = Some(now_ms);
                true
            }
            _ => false,
        }
    }
}

/// Rate-limits the refusal log line: at most one per `interval_ms`, saying
/// how many refusals since the previous line.
#[derive(Debug, Clone)]
pub struct RefusalLog {
    interval_ms: u64,
    last_line_ms: Option<u64>,
    since_line: u64,
}

impl RefusalLog {
    pub fn new(interval_ms: u64) -> Self {
        RefusalLog {
            interval_ms,
            last_line_ms: None,
            since_line: 0,
        }
    }

    /// One more refusal; `Some(n)`: log a line now, for `n` refusals.
    pub fn refused(&mut self, now_ms: u64) -> Option<u64> {
        self.since_line += 1;
        self.flush(now_ms)
    }

    /// Refusals not logged yet, if a line is allowed now.
    pub fn flush(&mut self, now_ms: u64) -> Option<u64> {
        let allowed = self
            .last_line_ms
            .is_none_or(|l| now_ms.saturating_sub(l) >= self.interval_ms);
        if self.since_line == 0 || !allowed {
            return None;
        }
        self.last_line_ms = Some(now_ms);
        Some(std::mem::take(&mut self.since_line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::sign::{sign_ack, sign_hello};
    use muster_proto::{BootId, KeyId, SeqRange, Signature, SigningKey};

    use crate::uplink::inflight::Sent;

    const B: BootId = BootId(7);

    fn unit() -> UnitId {
        UnitId::new("metro-fire", "E12").unwrap()
    }

    fn key() -> SigningKey {
        SigningKey::from_seed(&[1; 32])
    }

    fn trusted() -> TrustedKeys {
        let mut t = TrustedKeys::new();
        t.insert(key().public_key()).unwrap();
        t
    }

    fn unsigned(upto: u64) -> Ack {
        Ack {
            boot: B,
            upto,
            ranges: vec![SeqRange {
                first: 10,
                last: 10,
            }],
            collector_ms: 0,
            key_id: KeyId::NONE,
            sig: Signature::NONE,
        }
    }

    fn table() -> Inflight {
        let mut t = Inflight::new();
        let sent = (1..=3)
            .map(|seq| Sent {
                key: seq * 100,
                boot: B,
                seq,
            })
            .collect();
        t.insert(sent, 30, 0);
        t
    }

    /// Forged, unsigned, misdirected and untrusted acks free nothing; a
    /// signed one frees what it covers.
    #[test]
    fn only_trusted_signed_acks_free_records() {
        let other_unit = UnitId::new("metro-fire", "E13").unwrap();
        let stranger = SigningKey::from_seed(&[2; 32]);
        let good = sign_ack(&key(), &unit(), unsigned(1 << 62));
        let mut garbage = good.clone();
        garbage.sig = Signature([0xab; 32], [0xcd; 32]);
        type Case = (&'static str, Ack, Result<Vec<u64>, VerifyError>);
        let cases: Vec<Case> = vec![
            ("unsigned", unsigned(1 << 62), Err(VerifyError::Unsigned)),
            (
                "garbage signature",
                garbage,
                Err(VerifyError::BadSignature(key().key_id())),
            ),
            (
                "untrusted key",
                sign_ack(&stranger, &unit(), unsigned(1 << 62)),
                Err(VerifyError::UnknownKey(stranger.key_id())),
            ),
            (
                "another unit's ack",
                sign_ack(&key(), &other_unit, unsigned(1 << 62)),
                Err(VerifyError::BadSignature(key().key_id())),
            ),
            ("signed", good, Ok(vec![100, 200, 300])),
            (
                "signed, partial",
                sign_ack(&key(), &unit(), unsigned(2)),
                Ok(vec![100, 200]),
            ),
        ];
        for (name, ack, want) in cases {
            let mut t = table();
            let got = apply_ack(&mut t, &trusted(), &unit(), &ack, 5).map(|a| a.freed);
            assert_eq!(got, want, "{name}");
            if want.is_err() {
                assert_eq!(t.len(), 1, "{name}: the table is untouched");
                assert!((1..=3).all(|s| t.contains_key(s * 100)), "{name}");
            }
        }
    }

    #[test]
    fn hello_table() {
        let next = SigningKey::from_seed(&[3; 32]).public_key();
        let h = |started, counter, keys: Vec<PublicKey>| sign_hello(&key(), started, counter, keys);
        let stranger = SigningKey::from_seed(&[2; 32]);
        let mut forged = h(10, 1, vec![next]);
        forged.counter = 99;
        type Case = (&'static str, Option<(u64, u64)>, Hello, HelloVerdict);
        let cases: Vec<Case> = vec![
            (
                "first",
                None,
                h(10, 1, vec![next]),
                HelloVerdict::New {
                    announced: vec![next],
                },
            ),
            (
                "same again",
                Some((10, 1)),
                h(10, 1, vec![]),
                HelloVerdict::Same,
            ),
            (
                "resubscribed",
                Some((10, 1)),
                h(10, 2, vec![]),
                HelloVerdict::New { announced: vec![] },
            ),
            (
                "restarted (lower counter, later start)",
                Some((10, 5)),
                h(11, 1, vec![]),
                HelloVerdict::New { announced: vec![] },
            ),
            (
                "already trusted key is not announced again",
                None,
                h(10, 1, vec![key().public_key()]),
                HelloVerdict::New { announced: vec![] },
            ),
            (
                "replayed old",
                Some((10, 2)),
                h(10, 1, vec![]),
                HelloVerdict::Old,
            ),
            (
                "forged counter",
                None,
                forged,
                HelloVerdict::Refused(VerifyError::BadSignature(key().key_id())),
            ),
            (
                "untrusted signer announcing itself",
                None,
                sign_hello(&stranger, 99, 99, vec![stranger.public_key()]),
                HelloVerdict::Refused(VerifyError::UnknownKey(stranger.key_id())),
            ),
        ];
        for (name, newest, hello, want) in cases {
            assert_eq!(judge_hello(&trusted(), newest, &hello), want, "{name}");
        }
    }

    #[test]
    fn replays_are_rate_limited_not_lost() {
        let mut r = ReplayLimiter::new(3_000);
        assert!(!r.take(0));
        assert_eq!(r.request(1_000), 1_000);
        assert!(r.take(1_000));
        // Inside the window: deferred to its end.
        assert_eq!(r.request(2_000), 4_000);
        assert_eq!(r.request(2_500), 4_000);
        assert!(!r.take(3_999));
        assert!(r.take(4_000));
        assert_eq!(r.due(), None);
        // After the window: at once.
        assert_eq!(r.request(9_000), 9_000);
    }

    #[test]
    fn refusal_log_lines_are_rate_limited_with_counts() {
        let mut l = RefusalLog::new(10_000);
        assert_eq!(l.refused(0), Some(1));
        assert_eq!(l.refused(100), None);
        assert_eq!(l.refused(5_000), None);
        assert_eq!(l.flush(9_999), None);
        assert_eq!(l.flush(10_000), Some(2));
        assert_eq!(l.flush(30_000), None);
        assert_eq!(l.refused(30_000), Some(1));
    }
}
