//! The requests a collector has issued and no unit has answered yet, and
//! the per-agency issue rate. Pure: times are the caller's unix ms.
//!
//! * A request is **pending** from when it is issued until its unit sends
//!   the first audit step about it (any step: refused, started, finished,
//!   failed), or until its expiry passes (then it is expired unanswered,
//!   once). At most `max` are pending collector-wide; past that a new one
//!   is refused with how long until the next expiry frees room.
//! * An answer counts only from **the unit it was issued to**: a unit
//!   naming another unit's nonce answers nothing (its step is still
//!   logged, uncorrelated).
//! * Each agency issues at most `per_min` requests within any minute.

use std::collections::HashMap;
use std::time::Duration;

use muster_base::rate::{Rate, Window};
use muster_proto::UnitId;

/// One issued, unanswered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRequest {
    pub unit: UnitId,
    pub action: String,
    pub requested_by: String,
    pub issued_ms: u64,
    pub expires_ms: u64,
}

/// Room ran out: retry after this many ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub retry_after_ms: u64,
}

/// The unanswered requests, by nonce.
#[derive(Debug)]
pub struct PendingBook {
    max: usize,
    by_nonce: HashMap<[u8; 16], PendingRequest>,
}

impl PendingBook {
    pub fn new(max: usize) -> Self {
        PendingBook {
            max,
            by_nonce: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_nonce.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_nonce.is_empty()
    }

    pub fn contains(&self, nonce: &[u8; 16]) -> bool {
        self.by_nonce.contains_key(nonce)
    }

    /// Is there room for one more at `now_ms`? When full: until the first
    /// pending request expires (at least 1 s).
    pub fn room(&self, now_ms: u64) -> Result<(), Full> {
        if self.by_nonce.len() < self.max {
            return Ok(());
        }
        let next = self
            .by_nonce
            .values()
            .map(|p| p.expires_ms)
            .min()
            .unwrap_or(now_ms);
        Err(Full {
            retry_after_ms: next.saturating_sub(now_ms).max(1_000),
        })
    }

    /// Adds a request (after [`PendingBook::room`] said yes). A nonce
    /// already pending is refused (`false`).
    pub fn insert(&mut self, nonce: [u8; 16], p: PendingRequest) -> bool {
        if self.by_nonce.len() >= self.max || self.by_nonce.contains_key(&nonce) {
            return false;
        }
        self.by_nonce.insert(nonce, p);
        true
    }

    /// `unit` sent a step about `nonce`: the request it answers, if it was
    /// pending for that unit (then no longer pending).
    pub fn answered(&mut self, unit: &UnitId, nonce: &[u8; 16]) -> Option<PendingRequest> {
        if self.by_nonce.get(nonce).is_some_and(|p| p.unit == *unit) {
            self.by_nonce.remove(nonce)
        } else {
            None
        }
    }

    /// Takes every request whose expiry is at or before `now_ms`, in
    /// expiry order (then nonce): each is expired unanswered exactly once.
    pub fn expire(&mut self, now_ms: u64) -> Vec<([u8; 16], PendingRequest)> {
        let mut due: Vec<[u8; 16]> = self
            .by_nonce
            .iter()
            .filter(|(_, p)| p.expires_ms <= now_ms)
            .map(|(n, _)| *n)
            .collect();
        due.sort_by_key(|n| (self.by_nonce[n].expires_ms, *n));
        due.into_iter()
            .filter_map(|n| self.by_nonce.remove(&n).map(|p| (n, p)))
            .collect()
    }
}

/// Each agency's issue rate: at most `per_min` within any minute.
#[derive(Debug)]
pub struct AgencyRates {
    rate: Rate,
    windows: HashMap<String, Window>,
}

impl AgencyRates {
    pub fn new(per_min: u32) -> Self {
        AgencyRates {
            rate: Rate {
                max: per_min,
                per: Duration::from_secs(60),
            },
            windows: HashMap::new(),
        }
    }

    /// May `agency` issue one more at `now_ms`? When not: until a slot
    /// frees (at least 1 s).
    pub fn check(&mut self, agency: &str, now_ms: u64) -> Result<(), Full> {
        let Some(w) = self.windows.get_mut(agency) else {
            return Ok(());
        };
        if w.allows(self.rate, now_ms) {
            return Ok(());
        }
        let at = w.frees_at(self.rate).unwrap_or(now_ms);
        Err(Full {
            retry_after_ms: at.saturating_sub(now_ms).max(1_000),
        })
    }

    /// Counts one issued by `agency` at `now_ms` (after `check`).
    pub fn take(&mut self, agency: &str, now_ms: u64) {
        // An agency idle for a minute holds nothing: forget empty windows
        // now and then, so the map holds only recent issuers.
        if self.windows.len() > 64 {
            let rate = self.rate;
            self.windows.retain(|_, w| {
                // `allows` drops what left the window; a full one stays.
                let _ = w.allows(rate, now_ms);
                w.times().next().is_some()
            });
        }
        self.windows
            .entry(agency.to_owned())
            .or_default()
            .take(self.rate, now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(unit: &str, expires_ms: u64) -> PendingRequest {
        PendingRequest {
            unit: UnitId::new("metro-fire", unit).unwrap(),
            action: "restart-cad-client".into(),
            requested_by: "admin".into(),
            issued_ms: 0,
            expires_ms,
        }
    }

    #[test]
    fn pending_is_bounded_answered_once_by_its_own_unit_and_expires_once() {
        let mut b = PendingBook::new(2);
        assert_eq!(b.room(0), Ok(()));
        assert!(b.insert([1; 16], req("E1", 60_000)));
        assert!(!b.insert([1; 16], req("E1", 60_000)), "a nonce twice");
        assert!(b.insert([2; 16], req("E2", 30_000)));
        // Full: retry when the first one expires.
        assert_eq!(
            b.room(10_000),
            Err(Full {
                retry_after_ms: 20_000
            })
        );
        assert!(!b.insert([3; 16], req("E3", 1)), "past max");
        // Already expired but not yet taken: at least a second.
        assert_eq!(
            b.room(40_000),
            Err(Full {
                retry_after_ms: 1_000
            })
        );
        // Another unit naming E1's nonce answers nothing.
        let e2 = UnitId::new("metro-fire", "E2").unwrap();
        let e1 = UnitId::new("metro-fire", "E1").unwrap();
        assert_eq!(b.answered(&e2, &[1; 16]), None);
        assert_eq!(b.answered(&e1, &[9; 16]), None);
        assert_eq!(b.answered(&e1, &[1; 16]).unwrap().unit, e1);
        assert_eq!(b.answered(&e1, &[1; 16]), None, "answered once");
        assert_eq!(b.len(), 1);
        // Expiry: at its expiry, once.
        assert!(b.expire(29_999).is_empty());
        let gone = b.expire(30_000);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, [2; 16]);
        assert!(b.expire(99_000).is_empty());
        assert!(b.is_empty());
        assert_eq!(b.room(99_000), Ok(()));
    }

    #[test]
    fn expiry_order_is_by_time_then_nonce() {
        let mut b = PendingBook::new(10);
        for (n, at) in [(5u8, 300), (1, 200), (3, 200), (2, 100)] {
            assert!(b.insert([n; 16], req("E1", at)));
        }
        let order: Vec<u8> = b.expire(1_000).iter().map(|(n, _)| n[0]).collect();
        assert_eq!(order, [2, 1, 3, 5]);
    }

    #[test]
    fn an_agency_issues_at_most_its_rate_per_minute() {
        let mut r = AgencyRates::new(2);
        for t in [0, 10_000] {
            assert_eq!(r.check("a", t), Ok(()));
            r.take("a", t);
        }
        assert_eq!(
            r.check("a", 20_000),
            Err(Full {
                retry_after_ms: 40_000
            })
        );
        // Another agency has its own.
        assert_eq!(r.check("b", 20_000), Ok(()));
        // A minute after the first, one frees.
        assert_eq!(r.check("a", 60_000), Ok(()));
        r.take("a", 60_000);
        assert_eq!(
            r.check("a", 60_001),
            Err(Full {
                retry_after_ms: 9_999
            })
        );
    }
}
