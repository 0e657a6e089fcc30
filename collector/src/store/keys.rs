//! What both embedded stores share: the key layout, the decoding of stored
//! values, and the pure parts of two queries (a unit's newest data, a page
//! of events). Pure: no engine, no I/O.
//!
//! Keys: a unit is `agency 0x00 unit`; a sample `unit 0x00 at_ms(be)
//! boot(be) seq(be)` with the record in the wire encoding (a one-record
//! message: compact, and versioned like everything on the wire).

use std::collections::HashSet;

use muster_proto::{Body, Payload, UnitId};

use super::{EventQuery, Latest, StoreError, StoredEvent, StoredSample};
use crate::model::Change;

pub fn unit_key(u: &UnitId) -> Vec<u8> {
    let mut k = Vec::with_capacity(u.agency.len() + u.unit.len() + 1);
    k.extend_from_slice(u.agency.as_bytes());
    k.push(0);
    k.extend_from_slice(u.unit.as_bytes());
    k
}

/// An agency index's key: `agency 0x00 id(be)`.
pub fn agency_key(agency: &str, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(agency.len() + 9);
    k.extend_from_slice(agency.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn sample_prefix(u: &UnitId) -> Vec<u8> {
    let mut k = unit_key(u);
    k.push(0);
    k
}

pub fn sample_key(prefix: &[u8], at_ms: u64, boot: u64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 24);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&boot.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn corrupt(tree: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        tree,
        detail: detail.to_string(),
    }
}

pub fn decode_sample(v: &[u8]) -> Result<StoredSample, StoreError> {
    let d = muster_proto::decode(v).map_err(|e| corrupt("samples", e))?;
    match d.message.body {
        Body::Record(r) => Ok(StoredSample {
            boot: r.boot,
            seq: r.seq,
            at_ms: r.at_ms,
            payload: r.payload,
        }),
        _ => Err(corrupt("samples", "not a record")),
    }
}

pub fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// When an event happened, for retention.
pub fn event_at(ev: &StoredEvent) -> u64 {
    match &ev.change {
        Change::Transition(t) => t.at_ms,
        Change::Incident(i) => i.ended_ms.unwrap_or(i.since_ms),
        Change::Rollout(r) => r.at_ms,
        Change::Automation(a) => a.at_ms,
    }
}

/// A unit's newest host sample, heartbeat and result per probe, from its
/// samples newest first (the caller bounds how many it reads).
pub fn pick_latest(
    newest_first: impl Iterator<Item = Result<StoredSample, StoreError>>,
) -> Result<Latest, StoreError> {
    let mut latest = Latest::default();
    let mut seen_probes = HashSet::new();
    for s in newest_first {
        let s = s?;
        match &s.payload {
            Payload::Host(_) if latest.host.is_none() => latest.host = Some(s),
            Payload::Status(_) if latest.status.is_none() => latest.status = Some(s),
            Payload::Probe(p) if seen_probes.insert(p.name.clone()) => latest.probes.push(s),
            _ => {}
        }
    }
    latest
        .probes
        .sort_by(|a, b| match (&a.payload, &b.payload) {
            (Payload::Probe(x), Payload::Probe(y)) => x.name.cmp(&y.name),
            _ => std::cmp::Ordering::Equal,
        });
    Ok(latest)
}

/// A page of events, newest first, as the store reads them: those of the
/// query's unit (if any), up to its limit.
pub struct EventPage<'a> {
    q: &'a EventQuery,
    out: Vec<StoredEvent>,
}

impl<'a> EventPage<'a> {
    pub fn new(q: &'a EventQuery) -> Self {
        EventPage { q, out: Vec::new() }
    }

    /// Offers the next event; false once the page is full (more remain).
    pub fn push(&mut self, ev: StoredEvent) -> bool {
        if let Some(u) = &self.q.unit {
            match &ev.change {
                Change::Transition(t) if t.agency == u.agency && t.unit == u.unit => {}
                _ => return true,
            }
        }
        if self.out.len() == self.q.limit {
            return false;
        }
        self.out.push(ev);
        true
    }

    pub fn finish(self, more: bool) -> (Vec<StoredEvent>, bool) {
        (self.out, more)
    }
}
