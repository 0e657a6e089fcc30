//! Actions (issue 17): a signed request from the collector that one agent
//! run one of the actions its own config defines, and the audit records the
//! agent answers with.
//!
//! Contract:
//!
//! * A request travels on the unit's `action` topic
//!   (`muster/v1/{agency}/{unit}/action`), QoS 1, never retained, in the
//!   schema-2 envelope (`crate::codec::encode_action` / `decode_action`).
//!   It is signed (`crate::sign::sign_action`) over everything it says: the
//!   unit it is for, the action's name, the parameters, the nonce, when it
//!   was issued and when it expires, and who asked. A signature cannot be
//!   moved to another unit, action, parameter or time.
//! * The bounds here are the wire's: names and values are length-limited
//!   and every list is short, so a decoder allocates little. What a value
//!   may *contain* is the agent's check, against the parameter's pattern in
//!   its config: the wire carries a value with a newline so that the agent
//!   can refuse it, count it and audit it.
//! * Every request the agent hears of is answered by [`ActionAudit`]
//!   records, which are ordinary buffered records (durable, acked, exactly
//!   once in the collector's store): `refused` with a typed
//!   [`ActionRefusal`], or `started` and then `finished` (exit code,
//!   duration, stdout and stderr cut at [`MAX_ACTION_OUTPUT`] bytes) or
//!   `failed` (it could not be started). A request too broken to name is
//!   audited with `request: None`.

use serde::{Deserialize, Serialize};

use crate::ids::UnitId;
use crate::sign::{KeyId, Signature};

/// Longest action name, in bytes (`[a-z0-9_-]`, starting with a letter).
pub const MAX_ACTION_NAME: usize = 64;
/// Most parameters in one request.
pub const MAX_ACTION_PARAMS: usize = 16;
/// Longest parameter name, in bytes (same characters as an action name).
pub const MAX_PARAM_NAME: usize = 32;
/// Longest parameter value, in bytes.
pub const MAX_PARAM_VALUE: usize = 256;
/// Longest `requested_by`, in bytes.
pub const MAX_REQUESTED_BY: usize = 128;
/// Most bytes of stdout, and of stderr, an audit record carries (an
/// agent cuts to its own, smaller or equal, `output_max`; diagnostics use
/// all of it).
pub const MAX_ACTION_OUTPUT: usize = 16 * 1024;
/// Longest reason or detail in an audit record, in characters.
pub const MAX_ACTION_REASON: usize = 512;
/// Longest a request may be valid for (expiry minus issue time): an agent
/// refuses a request that claims more, so a nonce is remembered at most
/// this long.
pub const MAX_ACTION_TTL_MS: u64 = 15 * 60_000;

/// One named parameter of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ActionParam {
    pub name: String,
    pub value: String,
}

/// Collector to one agent: run `action` with `params`. Not a `Message`: it
/// has its own codec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRequest {
    /// The one unit this request is for.
    pub unit: UnitId,
    /// The name of an `[[action]]` in the agent's config.
    pub action: String,
    #[serde(deserialize_with = "crate::codec::bounded_vec")]
    pub params: Vec<ActionParam>,
    /// Random, chosen by the collector: the agent remembers it until
    /// `expires_ms` and refuses it again.
    pub nonce: [u8; 16],
    /// Unix ms, collector clock.
    pub issued_ms: u64,
    /// Unix ms, collector clock; the agent refuses the request after this
    /// (by its own clock).
    pub expires_ms: u64,
    /// Who asked, for the audit: `operator:<agency>`, `admin`,
    /// `auto:<rule>`.
    pub requested_by: String,
    pub key_id: KeyId,
    pub sig: Signature,
}

impl ActionRequest {
    /// The wire's bounds (see the module's contract).
    pub fn validate(&self) -> Result<(), String> {
        self.unit.validate().map_err(|e| e.to_string())?;
        check_name("action name", &self.action, MAX_ACTION_NAME)?;
        if self.params.len() > MAX_ACTION_PARAMS {
            return Err(format!(
                "{} parameters; the limit is {MAX_ACTION_PARAMS}",
                self.params.len()
            ));
        }
        for p in &self.params {
            check_name("parameter name", &p.name, MAX_PARAM_NAME)?;
            if p.value.len() > MAX_PARAM_VALUE {
                return Err(format!(
                    "parameter {:?} is {} bytes; the limit is {MAX_PARAM_VALUE}",
                    p.name,
                    p.value.len()
                ));
            }
        }
        if self.requested_by.len() > MAX_REQUESTED_BY {
            return Err(format!(
                "requested_by is {} bytes; the limit is {MAX_REQUESTED_BY}",
                self.requested_by.len()
            ));
        }
        Ok(())
    }

    /// How the audit names this request.
    pub fn reference(&self) -> ActionRef {
        ActionRef {
            nonce: self.nonce,
            action: self.action.clone(),
            requested_by: self.requested_by.clone(),
            issued_ms: self.issued_ms,
        }
    }
}

/// An action or parameter name: `[a-z0-9_-]`, starting with a letter, at
/// most `max` bytes.
pub fn check_name(what: &str, s: &str, max: usize) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {s:?} must be 1 to {max} of a-z, 0-9, '_' and '-', starting with a letter"
        ))
    }
}

/// How an audit record names the request it is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ActionRef {
    pub nonce: [u8; 16],
    pub action: String,
    pub requested_by: String,
    pub issued_ms: u64,
}

/// Agent to collector, a buffered record: one step of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionAudit {
    /// `None`: the request could not be read far enough to name it.
    pub request: Option<ActionRef>,
    pub step: ActionStep,
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionStep {
    /// Refused before anything ran.
    Refused {
        reason: ActionRefusal,
        detail: String,
    },
    /// Verified, within its limits: running now.
    Started,
    /// It ran. `exit_code` is `None` when it was killed (by its timeout:
    /// `timed_out`, or by a signal).
    Finished {
        exit_code: Option<i32>,
        timed_out: bool,
        duration_ms: u64,
        stdout: String,
        stderr: String,
    },
    /// It could not be started (the program is missing, the service
    /// manager refused, ...).
    Failed { reason: String, duration_ms: u64 },
}

impl ActionStep {
    pub fn as_str(&self) -> &'static str {
        match self {
            ActionStep::Refused { .. } => "refused",
            ActionStep::Started => "started",
            ActionStep::Finished { .. } => "finished",
            ActionStep::Failed { .. } => "failed",
        }
    }
}

/// Why an agent refused a request, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActionRefusal {
    /// It did not decode, or broke the wire's bounds.
    Malformed,
    Unsigned,
    UntrustedKey,
    BadSignature,
    /// Signed for another unit (or another agency's unit).
    WrongUnit,
    /// Past its expiry, or claiming a validity longer than
    /// [`MAX_ACTION_TTL_MS`].
    Expired,
    /// Its nonce was seen before.
    Replayed,
    /// No `[[action]]` of that name in the agent's config.
    UnknownAction,
    /// A parameter missing, unknown, or failing its pattern.
    BadParams,
    /// Over the action's per-unit rate limit.
    RateLimited,
    /// The same action is still running.
    Busy,
}

impl ActionRefusal {
    pub const ALL: [ActionRefusal; 11] = [
        ActionRefusal::Malformed,
        ActionRefusal::Unsigned,
        ActionRefusal::UntrustedKey,
        ActionRefusal::BadSignature,
        ActionRefusal::WrongUnit,
        ActionRefusal::Expired,
        ActionRefusal::Replayed,
        ActionRefusal::UnknownAction,
        ActionRefusal::BadParams,
        ActionRefusal::RateLimited,
        ActionRefusal::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionRefusal::Malformed => "malformed",
            ActionRefusal::Unsigned => "unsigned",
            ActionRefusal::UntrustedKey => "untrusted_key",
            ActionRefusal::BadSignature => "bad_signature",
            ActionRefusal::WrongUnit => "wrong_unit",
            ActionRefusal::Expired => "expired",
            ActionRefusal::Replayed => "replayed",
            ActionRefusal::UnknownAction => "unknown_action",
            ActionRefusal::BadParams => "bad_params",
            ActionRefusal::RateLimited => "rate_limited",
            ActionRefusal::Busy => "busy",
        }
    }
}

impl ActionAudit {
    /// The wire's bounds: names as in a request, output within
    /// [`MAX_ACTION_OUTPUT`] bytes, reasons within [`MAX_ACTION_REASON`]
    /// characters.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(r) = &self.request
            && (r.action.len() > MAX_ACTION_NAME || r.requested_by.len() > MAX_REQUESTED_BY)
        {
            return Err("action audit names a request past the wire's bounds".into());
        }
        let reason = |s: &str| {
            if s.chars().count() > MAX_ACTION_REASON {
                Err(format!(
                    "action audit reason is {} characters; the limit is {MAX_ACTION_REASON}",
                    s.chars().count()
                ))
            } else {
                Ok(())
            }
        };
        match &self.step {
            ActionStep::Refused { detail, .. } => reason(detail),
            ActionStep::Failed { reason: r, .. } => reason(r),
            ActionStep::Started => Ok(()),
            ActionStep::Finished { stdout, stderr, .. } => {
                if stdout.len() > MAX_ACTION_OUTPUT || stderr.len() > MAX_ACTION_OUTPUT {
                    Err(format!(
                        "action output is {} + {} bytes; the limit is {MAX_ACTION_OUTPUT} each",
                        stdout.len(),
                        stderr.len()
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// `s` cut to at most `max` bytes on a character boundary, with "…" when
/// cut (the marker counts within `max`).
pub fn truncate_output(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    const MARK: &str = "…";
    let mut end = max.saturating_sub(MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_anchored_and_bounded() {
        assert!(check_name("n", "restart-cad-client", 64).is_ok());
        assert!(check_name("n", "flush_dns2", 64).is_ok());
        for bad in [
            "",
            "Restart",
            "1x",
            "a b",
            "a\nb",
            "a;b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(check_name("n", bad, 64).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn output_is_cut_on_a_character_boundary_within_the_limit() {
        assert_eq!(truncate_output("abc", 3), "abc");
        let cut = truncate_output(&"é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with('…'), "{cut:?}");
        assert_eq!(cut, format!("{}…", "é".repeat(4)));
    }
}
