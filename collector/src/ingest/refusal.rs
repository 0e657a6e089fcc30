//! Why a message was refused, and a per-reason rate limit for logging them.
//! Pure: the caller passes `now_ms`.

use muster_proto::DecodeError;

/// A reason a message from the broker was dropped. The labels are stable:
/// they are the `reason` label of `muster_ingest_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Not decodable: empty, truncated, garbage, trailing bytes, seq 0.
    Malformed,
    /// Over `MAX_MESSAGE_BYTES` or `MAX_BATCH_RECORDS`.
    Oversized,
    /// A schema version this build does not read.
    UnknownVersion,
    /// The payload's unit id is not a valid identity.
    BadIdentity,
    /// The topic's unit differs from the payload's.
    Spoofed,
    /// A topic that is not a Muster unit topic.
    BadTopic,
    /// A well-formed message of the wrong kind for its topic (an ack on the
    /// telemetry topic, a record on the state topic).
    UnexpectedBody,
    /// From a unit the collector does not know while it already holds
    /// `ingest.max_units`: not stored and not acked, so the agent keeps
    /// its records and sends them again.
    UnitLimit,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::Malformed,
        Refusal::Oversized,
        Refusal::UnknownVersion,
        Refusal::BadIdentity,
        Refusal::Spoofed,
        Refusal::BadTopic,
        Refusal::UnexpectedBody,
        Refusal::UnitLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Oversized => "oversized",
            Refusal::UnknownVersion => "unknown_version",
            Refusal::BadIdentity => "bad_identity",
            Refusal::Spoofed => "spoofed",
            Refusal::BadTopic => "bad_topic",
            Refusal::UnexpectedBody => "unexpected_body",
            Refusal::UnitLimit => "unit_limit",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_decode(e: &DecodeError) -> Refusal {
        match e.reason() {
            "oversized" => Refusal::Oversized,
            "unknown_version" => Refusal::UnknownVersion,
            "bad_identity" => Refusal::BadIdentity,
            _ => Refusal::Malformed,
        }
    }
}

/// A closed set of refusal reasons, each with a dense index: ingest's
/// [`Refusal`] and the embedded broker gate's `broker::acl::Refusal`.
pub trait LogReason: Copy {
    const COUNT: usize;
    fn index(self) -> usize;
}

impl LogReason for Refusal {
    const COUNT: usize = Refusal::ALL.len();
    fn index(self) -> usize {
        Refusal::index(self)
    }
}

/// Presences that are accepted but worth a (rate-limited) log line: a
/// reason code this build does not know (a newer agent's). Offline, it is
/// treated as `lost`; online, as a birth. Counted in
/// `muster_ingest_presence_unknown_reason_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceNote {
    UnknownReason,
}

impl LogReason for PresenceNote {
    const COUNT: usize = 1;
    fn index(self) -> usize {
        0
    }
}

/// Lets through at most one log line per reason per interval, and says how
/// many were suppressed since the last one. Any closed set of reasons
/// ([`LogReason`]) has its own log: ingest's, the broker gate's, enrolment's.
#[derive(Debug)]
pub struct RefusalLog<R: LogReason = Refusal> {
    interval_ms: u64,
    last: Vec<Option<u64>>,
    suppressed: Vec<u64>,
    _reason: std::marker::PhantomData<R>,
}

impl<R: LogReason> RefusalLog<R> {
    pub fn new(interval_ms: u64) -> Self {
        RefusalLog {
            interval_ms,
            last: vec![None; R::COUNT],
            suppressed: vec![0; R::COUNT],
            _reason: std::marker::PhantomData,
        }
    }

    /// `Some(suppressed_since_last_line)` when this refusal should be logged.
    pub fn admit(&mut self, r: R, now_ms: u64) -> Option<u64> {
        let i = r.index();
        match self.last[i] {
            Some(t) if now_ms < t.saturating_add(self.interval_ms) => {
                self.suppressed[i] += 1;
                None
            }
            _ => {
                self.last[i] = Some(now_ms);
                Some(std::mem::take(&mut self.suppressed[i]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_per_reason() {
        let mut log = RefusalLog::<Refusal>::new(10_000);
        assert_eq!(log.admit(Refusal::Malformed, 0), Some(0));
        assert_eq!(log.admit(Refusal::Malformed, 1), None);
        assert_eq!(log.admit(Refusal::Malformed, 9_999), None);
        // Another reason has its own budget.
        assert_eq!(log.admit(Refusal::Spoofed, 5), Some(0));
        assert_eq!(log.admit(Refusal::Malformed, 10_000), Some(2));
        assert_eq!(log.admit(Refusal::Malformed, 10_001), None);
    }

    #[test]
    fn labels_are_distinct_and_match_proto() {
        let mut seen = std::collections::HashSet::new();
        for r in Refusal::ALL {
            assert!(seen.insert(r.as_str()));
            assert_eq!(Refusal::ALL[r.index()], r);
        }
        let e = muster_proto::decode(&[]).unwrap_err();
        assert_eq!(Refusal::from_decode(&e).as_str(), e.reason());
        let e = muster_proto::decode(&[200, 1, 2]).unwrap_err();
        assert_eq!(Refusal::from_decode(&e).as_str(), e.reason());
    }
}
