//! Enrolment by claim: a terminal that holds its agency's enrol token gets
//! its own broker credential without a hand-made account.
//!
//! Flow: the agent makes a random 32-byte secret, keeps it on its disk and
//! sends only its SHA-256 with `POST /api/v1/enroll` (`Authorization: Bearer
//! <enroll_token>`; the token names the agency). With `enroll = "auto"` the
//! unit is active at once (201, with the collector's ack-signing keys);
//! with `"approve"` (the default) it is pending (202) until an admin
//! approves it. The agent then connects to the broker as `{agency}/{unit}`
//! with the hex of its secret as password, which the broker gate checks
//! with [`registry::UnitCredentials::verify`].
//!
//! * [`registry`]: the state machine (pure decisions) and its persistence.
//! * [`http`]: the endpoints (claim, and the admin's list/approve/revoke).

pub mod http;
pub mod registry;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub use crate::broker::auth::UnitCredentials;
use crate::config::{AgencyEnroll, EnrollConfig, EnrollMode};
use crate::ingest::refusal::RefusalLog;
pub use registry::Registry;

/// What the enrolment endpoints need: the registry, the agencies' enrol
/// tokens, and the rate limit of refusal log lines.
pub struct Enroll {
    pub registry: Arc<Registry>,
    agencies: BTreeMap<String, AgencyEnroll>,
    log: Mutex<RefusalLog<registry::Outcome>>,
    /// Cluster mode: refuse ids NATS cannot carry (`EnrollConfig::nats_ids`).
    pub nats_ids: bool,
}

impl Enroll {
    pub fn new(registry: Arc<Registry>, cfg: &EnrollConfig, log_interval_ms: u64) -> Self {
        Enroll {
            registry,
            agencies: cfg.agencies.clone(),
            log: Mutex::new(RefusalLog::new(log_interval_ms)),
            nats_ids: cfg.nats_ids,
        }
    }

    /// The agency (and its mode) whose enrol token this is. Compares every
    /// token in full, without an early exit.
    pub fn agency_of(&self, token: &str) -> Option<(String, EnrollMode)> {
        let mut found = None;
        for (agency, a) in &self.agencies {
            if crate::feed::same_token(&a.token.0, token) {
                found = Some((agency.clone(), a.mode));
            }
        }
        found
    }

    /// `Some(suppressed)` when a refusal of this kind should be logged now.
    pub fn admit_log(&self, o: registry::Outcome, now_ms: u64) -> Option<u64> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(o, now_ms)
    }
}
