//! Actions (issue 17):
//!
//! * `muster_actions_requested_total{requested_by_kind}`: requests issued,
//!   by who asked (`admin`, `operator`, `auto`);
//! * `muster_action_steps_total{step}`: steps units reported (`refused`,
//!   `started`, `finished`, `failed`; new records only, not duplicates);
//! * `muster_action_refusals_total{reason}`: requests units refused, by
//!   reason (`muster_proto::ActionRefusal`);
//! * `muster_automation_steps_total{step}`: automation steps (`crate::automation`)
//! * `muster_actions_api_refused_total{reason}`: requests the API refused
//!   ([`ApiRefusal`]);
//! * `muster_actions_unanswered_total`: requests that expired with no step
//!   from their unit;
//! * `muster_actions_pending`: requests issued and not yet answered;
//! * `muster_actions_queued`: request messages not yet handed to MQTT
//!   (held until their audit is durable, then in the publisher's queue);
//! * `muster_actions_published_total`, `muster_action_publish_errors_total`;
//! * `muster_actions_audit_dropped_total`: audit file entries dropped by
//!   rotation (`[actions] audit_max_bytes`);
//! * `muster_actions_audit_errors_total`: failed writes of the audit file
//!   (it catches up from the store);
//! * `muster_actions_audit_bytes`: the audit file's size (both files).
//!
//! Every label set is bounded: fixed names.

use std::sync::atomic::{AtomicU64, Ordering};

use muster_proto::{ActionRefusal, ActionStep};

use super::expo::Exposition;
use crate::actions::RequestedBy;

const STEPS: [&str; 4] = ["refused", "started", "finished", "failed"];

/// Why the API refused an action request (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiRefusal {
    /// No token or an unknown one (401).
    Unauthorized,
    /// A viewer token (403).
    Viewer,
    /// Another agency's operator (403).
    OtherAgency,
    /// No such unit (404).
    UnknownUnit,
    /// A bad body, name, parameter or validity (400).
    BadRequest,
    /// A body over the limit (413).
    TooLarge,
    /// `[actions] max_pending` pending (429).
    MaxPending,
    /// The agency's `[actions] per_agency_per_min` (429).
    RateLimited,
    /// Requests queued behind MQTT or the worker (429).
    Busy,
    /// Cluster mode (501).
    NotImplemented,
    /// Stopping, or no random source (503).
    Unavailable,
}

impl ApiRefusal {
    pub const ALL: [ApiRefusal; 11] = [
        ApiRefusal::Unauthorized,
        ApiRefusal::Viewer,
        ApiRefusal::OtherAgency,
        ApiRefusal::UnknownUnit,
        ApiRefusal::BadRequest,
        ApiRefusal::TooLarge,
        ApiRefusal::MaxPending,
        ApiRefusal::RateLimited,
        ApiRefusal::Busy,
        ApiRefusal::NotImplemented,
        ApiRefusal::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApiRefusal::Unauthorized => "unauthorized",
            ApiRefusal::Viewer => "viewer",
            ApiRefusal::OtherAgency => "other_agency",
            ApiRefusal::UnknownUnit => "unknown_unit",
            ApiRefusal::BadRequest => "bad_request",
            ApiRefusal::TooLarge => "too_large",
            ApiRefusal::MaxPending => "max_pending",
            ApiRefusal::RateLimited => "rate_limited",
            ApiRefusal::Busy => "busy",
            ApiRefusal::NotImplemented => "not_implemented",
            ApiRefusal::Unavailable => "unavailable",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl crate::ingest::refusal::LogReason for ApiRefusal {
    const COUNT: usize = ApiRefusal::ALL.len();
    fn index(self) -> usize {
        ApiRefusal::index(self)
    }
}

#[derive(Debug, Default)]
pub struct ActionMetrics {
    requested: [AtomicU64; RequestedBy::KINDS.len()],
    steps: [AtomicU64; STEPS.len()],
    refusals: [AtomicU64; ActionRefusal::ALL.len()],
    api_refused: [AtomicU64; ApiRefusal::ALL.len()],
    automation: [AtomicU64; crate::model::AutomationStep::ALL.len()],
    pub unanswered: AtomicU64,
    pub pending: AtomicU64,
    pub queued: AtomicU64,
    pub published: AtomicU64,
    pub publish_errors: AtomicU64,
    pub audit_dropped: AtomicU64,
    pub audit_errors: AtomicU64,
    pub audit_bytes: AtomicU64,
}

impl ActionMetrics {
    /// A request issued by this kind of requester.
    pub fn requested(&self, kind: &str) {
        if let Some(i) = RequestedBy::KINDS.iter().position(|k| *k == kind) {
            self.requested[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A step a unit reported (a new record, not a duplicate).
    pub fn step(&self, s: &ActionStep) {
        if let Some(i) = STEPS.iter().position(|x| *x == s.as_str()) {
            self.steps[i].fetch_add(1, Ordering::Relaxed);
        }
        if let ActionStep::Refused { reason, .. } = s
            && let Some(i) = ActionRefusal::ALL.iter().position(|r| r == reason)
        {
            self.refusals[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An automation step (`crate::automation`).
    pub fn automation_step(&self, s: crate::model::AutomationStep) {
        self.automation[s as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn api_refused(&self, r: ApiRefusal) {
        self.api_refused[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A request message left the queue (published or not).
    pub fn dequeued(&self, ok: bool) {
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(1))
            });
        if ok {
            self.published.fetch_add(1, Ordering::Relaxed);
        } else {
            self.publish_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn render(&self, e: &mut Exposition) {
        e.counters(
            "muster_actions_requested_total",
            "Action requests issued, by who asked.",
            "requested_by_kind",
            &RequestedBy::KINDS,
            &self.requested,
        );
        e.counters(
            "muster_action_steps_total",
            "Action steps units reported, by step.",
            "step",
            &STEPS,
            &self.steps,
        );
        let reasons: Vec<&str> = ActionRefusal::ALL.iter().map(|r| r.as_str()).collect();
        e.counters(
            "muster_action_refusals_total",
            "Action requests units refused, by reason.",
            "reason",
            &reasons,
            &self.refusals,
        );
        let auto: Vec<&str> = crate::model::AutomationStep::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        e.counters(
            "muster_automation_steps_total",
            "Automation steps (auto_action): requested, succeeded, failed, helped, escalated, suppressed.",
            "step",
            &auto,
            &self.automation,
        );
        let api: Vec<&str> = ApiRefusal::ALL.iter().map(|r| r.as_str()).collect();
        e.counters(
            "muster_actions_api_refused_total",
            "Action requests the API refused, by reason.",
            "reason",
            &api,
            &self.api_refused,
        );
        for (name, kind, help, v) in [
            (
                "muster_actions_unanswered_total",
                "counter",
                "Action requests that expired with no step from their unit.",
                &self.unanswered,
            ),
            (
                "muster_actions_pending",
                "gauge",
                "Action requests issued and not yet answered by their unit.",
                &self.pending,
            ),
            (
                "muster_actions_queued",
                "gauge",
                "Action request messages not yet handed to MQTT.",
                &self.queued,
            ),
            (
                "muster_actions_published_total",
                "counter",
                "Action request messages handed to MQTT.",
                &self.published,
            ),
            (
                "muster_action_publish_errors_total",
                "counter",
                "Action request messages MQTT did not take, or dropped with a lost commit.",
                &self.publish_errors,
            ),
            (
                "muster_actions_audit_dropped_total",
                "counter",
                "Action audit file entries dropped by rotation (actions.audit_max_bytes).",
                &self.audit_dropped,
            ),
            (
                "muster_actions_audit_errors_total",
                "counter",
                "Failed writes of the action audit file.",
                &self.audit_errors,
            ),
            (
                "muster_actions_audit_bytes",
                "gauge",
                "Bytes of the action audit file (current and previous).",
                &self.audit_bytes,
            ),
        ] {
            e.family(name, kind, help);
            e.sample(name, &[], v.load(Ordering::Relaxed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_renders_with_bounded_labels() {
        let m = ActionMetrics::default();
        m.requested("operator");
        m.requested("nobody");
        m.step(&ActionStep::Refused {
            reason: ActionRefusal::Replayed,
            detail: String::new(),
        });
        m.step(&ActionStep::Started);
        m.api_refused(ApiRefusal::OtherAgency);
        m.queued.store(1, Ordering::Relaxed);
        m.dequeued(true);
        m.dequeued(false);
        let mut e = Exposition::default();
        m.render(&mut e);
        let text = e.finish();
        for line in [
            "muster_actions_requested_total{requested_by_kind=\"operator\"} 1",
            "muster_actions_requested_total{requested_by_kind=\"auto\"} 0",
            "muster_action_steps_total{step=\"refused\"} 1",
            "muster_action_steps_total{step=\"started\"} 1",
            "muster_action_refusals_total{reason=\"replayed\"} 1",
            "muster_actions_api_refused_total{reason=\"other_agency\"} 1",
            "muster_actions_api_refused_total{reason=\"viewer\"} 0",
            "muster_actions_queued 0",
            "muster_actions_published_total 1",
            "muster_action_publish_errors_total 1",
            "muster_actions_pending 0",
            "muster_actions_unanswered_total 0",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        let mut seen = std::collections::HashSet::new();
        for r in ApiRefusal::ALL {
            assert!(seen.insert(r.as_str()));
            assert_eq!(ApiRefusal::ALL[r.index()], r);
        }
    }
}
