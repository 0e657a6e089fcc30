//! Automation (issue 17 part 4): a threshold rule that names
//! `auto_action` has the collector request that action from the unit
//! when its flag raises, once within `auto_max`, and escalate when that
//! does not help.
//!
//! Contract:
//!
//! * **Once per raise, within the limit.** A flag of a rule with
//!   `auto_action` raising on a unit requests the action once
//!   (`requested_by = "auto:<rule>"`), if the unit's requests for that rule
//!   within `auto_max` ("1 per 1h") allow it and the agency's kill switch
//!   is on. The limit's window is persisted (`automation.json`), so a
//!   collector restart does not reset it.
//! * **The result joins the flag's reason**: "auto: restart-cad-client at
//!   14:02Z, exit 0" (`Engine::annotate`), matched to the request by its
//!   nonce from the unit's audit records (exactly once: ingest dedups).
//! * **Escalation, never repetition.** The flag goes one severity step up
//!   (`Severity::escalated`, a transition) and an `escalated` step goes
//!   to the events, the stream and the agency's webhooks, when: the flag
//!   raises again with the limit reached; the action was not sent, was
//!   refused, failed, exited non-zero or timed out; or the flag has not
//!   cleared `auto_window` after the request (answered or not). An
//!   episode escalates at most once; it ends when the flag clears.
//! * **Kill switch** per agency (`PUT /api/v1/agencies/{agency}/automation`,
//!   admin or the agency's operator; persisted): off, a raise is a
//!   `suppressed` step and nothing is requested. Open episodes still
//!   escalate.
//! * **Counted for top problems**: every step (`requested`, `succeeded`,
//!   `failed`, `helped` = cleared within the window after the request,
//!   `escalated`, `suppressed`) is a stored event; top problems tallies
//!   them per rule and action.
//! * [`machine`] is pure (takes `now_ms`, table-tested); the ingest worker
//!   feeds it transitions, audit records and ticks, and carries out its
//!   outputs (issue, annotate, store the step).
//! * Bounded: one track per (unit, rule with automation), forgotten once
//!   it has neither an open episode nor requests within its limit; units
//!   are bounded by `ingest.max_units`.

pub mod driver;
pub mod machine;

pub use driver::Automation;
pub use machine::{Machine, Out, Persisted};

#[cfg(test)]
mod tests;
