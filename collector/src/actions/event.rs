//! One logged step of an action request, as the collector stores, lists,
//! streams and exports it (`ActionEvent`), and the pure constructors from
//! what it comes from: a request the collector issued, an audit record a
//! unit sent, a request that expired unanswered. Its JSON is an API
//! boundary (`/api/v1/actions`, `/api/v1/events`, the `action` stream
//! event, the export): add fields, do not rename or remove them.

use std::collections::BTreeMap;

use muster_proto::sign::hex_of;
use muster_proto::{ActionAudit, ActionRequest, ActionStep, UnitId};
use serde::{Deserialize, Serialize};

use super::pending::PendingRequest;

/// Where a request stands, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The collector signed and published it.
    Requested,
    /// The unit refused it (`refusal` says why).
    Refused,
    /// The unit verified it and started the action.
    Started,
    /// The action ran (`exit_code`, `timed_out`, `duration_ms`, output).
    Finished,
    /// The action could not be started.
    Failed,
    /// Its expiry passed with no answer from the unit.
    ExpiredUnanswered,
    /// The API refused to issue it: a viewer token, or another agency's
    /// operator (`reason`: `viewer` or `other_agency`). Nothing was sent.
    Denied,
}

impl Step {
    pub const ALL: [Step; 7] = [
        Step::Requested,
        Step::Refused,
        Step::Started,
        Step::Finished,
        Step::Failed,
        Step::ExpiredUnanswered,
        Step::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Requested => "requested",
            Step::Refused => "refused",
            Step::Started => "started",
            Step::Finished => "finished",
            Step::Failed => "failed",
            Step::ExpiredUnanswered => "expired_unanswered",
            Step::Denied => "denied",
        }
    }

    /// The step of a unit's audit record.
    pub fn of(s: &ActionStep) -> Step {
        match s {
            ActionStep::Refused { .. } => Step::Refused,
            ActionStep::Started => Step::Started,
            ActionStep::Finished { .. } => Step::Finished,
            ActionStep::Failed { .. } => Step::Failed,
        }
    }
}

/// The unit's record an audit step came in: `(boot, seq)` names it
/// exactly once; `at_ms` is the unit's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    pub boot: String,
    pub seq: u64,
    pub at_ms: u64,
}

/// One step of one request. Fields that do not apply to the step are
/// absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionEvent {
    pub agency: String,
    pub unit: String,
    pub step: Step,
    /// When the collector logged it (its clock, unix ms).
    pub at_ms: u64,
    /// The request's nonce, hex: names the request across its steps.
    /// Absent when a unit could not read a request far enough to name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `admin`, `operator:<agency>` or `auto:<rule>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// `requested` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_ms: Option<u64>,
    /// `requested` and `expired_unanswered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Steps a unit reported: the record they came in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordRef>,
    /// `refused`: why (`bad_signature`, `replayed`, `unknown_action`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// `refused`: the unit's detail; `failed`: why it could not start;
    /// `denied`: `viewer` or `other_agency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `finished`: `None` when killed (by its timeout, or a signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// `finished`: as the unit cut them (at most
    /// `muster_proto::action::MAX_ACTION_OUTPUT` bytes each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// For people: `restart-cad-client finished: exit 0 in 1.2s`.
    pub summary: String,
}

/// An [`ActionEvent`] with its id, from the same sequence as the store's
/// events (`/api/v1/events` lists both, newest first by id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAction {
    pub id: u64,
    #[serde(flatten)]
    pub event: ActionEvent,
}

/// How every API shows a [`StoredAction`]: `{"id": 7, "type": "action", ...}`
/// (the shape of `/api/v1/events` items).
#[derive(Debug, Serialize)]
pub struct ActionView<'a> {
    pub id: u64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(flatten)]
    pub event: &'a ActionEvent,
}

impl<'a> From<&'a StoredAction> for ActionView<'a> {
    fn from(s: &'a StoredAction) -> Self {
        ActionView {
            id: s.id,
            kind: "action",
            event: &s.event,
        }
    }
}

fn blank(unit: &UnitId, step: Step, at_ms: u64) -> ActionEvent {
    ActionEvent {
        agency: unit.agency.clone(),
        unit: unit.unit.clone(),
        step,
        at_ms,
        request: None,
        action: None,
        requested_by: None,
        params: None,
        issued_ms: None,
        expires_ms: None,
        record: None,
        refusal: None,
        reason: None,
        exit_code: None,
        timed_out: None,
        duration_ms: None,
        stdout: None,
        stderr: None,
        summary: String::new(),
    }
}

/// What a unit's step says beyond its kind, as the audit and the unit's
/// samples (`feed::views`) both show it; fields that do not apply are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StepFields {
    /// `refused`: why (`bad_signature`, `replayed`, ...).
    pub refusal: Option<&'static str>,
    /// `refused`: the unit's detail; `failed`: why it could not start.
    pub reason: Option<String>,
    /// `finished`: `None` when killed (by its timeout, or a signal).
    pub exit_code: Option<i32>,
    pub timed_out: Option<bool>,
    pub duration_ms: Option<u64>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
}

impl StepFields {
    pub fn of(step: &ActionStep) -> StepFields {
        let mut f = StepFields::default();
        match step {
            ActionStep::Refused { reason, detail } => {
                f.refusal = Some(reason.as_str());
                f.reason = Some(detail.clone());
            }
            ActionStep::Started => {}
            ActionStep::Finished {
                exit_code,
                timed_out,
                duration_ms,
                stdout,
                stderr,
            } => {
                f.exit_code = *exit_code;
                f.timed_out = Some(*timed_out);
                f.duration_ms = Some(*duration_ms);
                f.stdout = Some(stdout.clone());
                f.stderr = Some(stderr.clone());
            }
            ActionStep::Failed {
                reason,
                duration_ms,
            } => {
                f.reason = Some(reason.clone());
                f.duration_ms = Some(*duration_ms);
            }
        }
        f
    }
}

/// `1.2s`, `340ms`, `2m05s`.
fn took(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

impl ActionEvent {
    pub fn unit_id(&self) -> Option<UnitId> {
        UnitId::new(self.agency.clone(), self.unit.clone()).ok()
    }

    /// The collector issued `r` (signed) at `at_ms`.
    pub fn requested(r: &ActionRequest, at_ms: u64) -> ActionEvent {
        let mut e = blank(&r.unit, Step::Requested, at_ms);
        e.request = Some(hex_of(&r.nonce));
        e.action = Some(r.action.clone());
        e.requested_by = Some(r.requested_by.clone());
        e.params = Some(
            r.params
                .iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect(),
        );
        e.issued_ms = Some(r.issued_ms);
        e.expires_ms = Some(r.expires_ms);
        e.summary = format!(
            "{} requested by {}, valid {}",
            r.action,
            r.requested_by,
            took(r.expires_ms.saturating_sub(r.issued_ms))
        );
        e
    }

    /// `unit` reported step `a` in its record `(boot, seq, at)`; logged at
    /// `at_ms` (collector clock).
    pub fn from_unit(
        unit: &UnitId,
        boot: muster_proto::BootId,
        seq: u64,
        record_at_ms: u64,
        a: &ActionAudit,
        at_ms: u64,
    ) -> ActionEvent {
        let mut e = blank(unit, Step::of(&a.step), at_ms);
        if let Some(r) = &a.request {
            e.request = Some(hex_of(&r.nonce));
            e.action = Some(r.action.clone());
            e.requested_by = Some(r.requested_by.clone());
            e.issued_ms = Some(r.issued_ms);
        }
        e.record = Some(RecordRef {
            boot: boot.to_string(),
            seq,
            at_ms: record_at_ms,
        });
        let name = e.action.clone().unwrap_or_else(|| "a request".into());
        let f = StepFields::of(&a.step);
        e.summary = match &a.step {
            ActionStep::Refused { reason, detail } if detail.is_empty() => {
                format!("{name} refused: {}", reason.as_str())
            }
            ActionStep::Refused { reason, detail } => {
                format!("{name} refused: {} ({detail})", reason.as_str())
            }
            ActionStep::Started => format!("{name} started"),
            ActionStep::Finished {
                exit_code,
                timed_out,
                duration_ms,
                ..
            } => {
                let how = match (exit_code, timed_out) {
                    (_, true) => "timed out".to_owned(),
                    (Some(c), false) => format!("exit {c}"),
                    (None, false) => "killed".to_owned(),
                };
                format!("{name} finished: {how} in {}", took(*duration_ms))
            }
            ActionStep::Failed { reason, .. } => format!("{name} failed: {reason}"),
        };
        (e.refusal, e.reason, e.exit_code, e.timed_out) = (
            f.refusal.map(str::to_owned),
            f.reason,
            f.exit_code,
            f.timed_out,
        );
        (e.duration_ms, e.stdout, e.stderr) = (f.duration_ms, f.stdout, f.stderr);
        e
    }

    /// The API refused `requested_by`'s request of `action` (when the body
    /// named a valid one) from `unit`: `reason` is `viewer` or
    /// `other_agency`.
    pub fn denied(
        unit: &UnitId,
        requested_by: &str,
        action: Option<&str>,
        reason: &str,
        at_ms: u64,
    ) -> ActionEvent {
        let mut e = blank(unit, Step::Denied, at_ms);
        e.action = action.map(str::to_owned);
        e.requested_by = Some(requested_by.to_owned());
        e.reason = Some(reason.to_owned());
        let why = match reason {
            "viewer" => "a viewer token may not request actions",
            "other_agency" => "an operator may request actions only from its own agency's units",
            other => other,
        };
        e.summary = format!(
            "{} by {requested_by} denied: {why}",
            action.unwrap_or("a request")
        );
        e
    }

    /// Request `nonce` to `p.unit` expired at `p.expires_ms` with no
    /// answer; logged at `at_ms`.
    pub fn expired(nonce: &[u8; 16], p: &PendingRequest, at_ms: u64) -> ActionEvent {
        let mut e = blank(&p.unit, Step::ExpiredUnanswered, at_ms);
        e.request = Some(hex_of(nonce));
        e.action = Some(p.action.clone());
        e.requested_by = Some(p.requested_by.clone());
        e.issued_ms = Some(p.issued_ms);
        e.expires_ms = Some(p.expires_ms);
        e.summary = format!(
            "{} expired unanswered (requested by {})",
            p.action, p.requested_by
        );
        e
    }
}

#[cfg(test)]
mod tests {
    use muster_proto::{ActionParam, ActionRef, ActionRefusal, BootId, KeyId, Signature};
    use serde_json::json;

    use super::*;

    fn unit() -> UnitId {
        UnitId::new("metro-fire", "E12").unwrap()
    }

    fn audit(step: ActionStep) -> ActionAudit {
        ActionAudit {
            request: Some(ActionRef {
                nonce: [0xab; 16],
                action: "restart-cad-client".into(),
                requested_by: "operator:metro-fire".into(),
                issued_ms: 1_000,
            }),
            step,
        }
    }

    #[test]
    fn each_step_says_what_happened_in_one_line() {
        let table: Vec<(ActionAudit, Step, &str)> = vec![
            (
                audit(ActionStep::Refused {
                    reason: ActionRefusal::Replayed,
                    detail: "seen 12:00".into(),
                }),
                Step::Refused,
                "restart-cad-client refused: replayed (seen 12:00)",
            ),
            (
                audit(ActionStep::Started),
                Step::Started,
                "restart-cad-client started",
            ),
            (
                audit(ActionStep::Finished {
                    exit_code: Some(0),
                    timed_out: false,
                    duration_ms: 1_234,
                    stdout: "ok".into(),
                    stderr: String::new(),
                }),
                Step::Finished,
                "restart-cad-client finished: exit 0 in 1.2s",
            ),
            (
                audit(ActionStep::Finished {
                    exit_code: None,
                    timed_out: true,
                    duration_ms: 125_000,
                    stdout: String::new(),
                    stderr: String::new(),
                }),
                Step::Finished,
                "restart-cad-client finished: timed out in 2m05s",
            ),
            (
                audit(ActionStep::Finished {
                    exit_code: None,
                    timed_out: false,
                    duration_ms: 7,
                    stdout: String::new(),
                    stderr: String::new(),
                }),
                Step::Finished,
                "restart-cad-client finished: killed in 7ms",
            ),
            (
                audit(ActionStep::Failed {
                    reason: "no such program".into(),
                    duration_ms: 1,
                }),
                Step::Failed,
                "restart-cad-client failed: no such program",
            ),
            (
                ActionAudit {
                    request: None,
                    step: ActionStep::Refused {
                        reason: ActionRefusal::Malformed,
                        detail: String::new(),
                    },
                },
                Step::Refused,
                "a request refused: malformed",
            ),
        ];
        for (a, step, summary) in table {
            let e = ActionEvent::from_unit(&unit(), BootId(7), 3, 900, &a, 2_000);
            assert_eq!((e.step, e.summary.as_str()), (step, summary));
            assert_eq!(e.record.as_ref().unwrap().seq, 3);
            assert_eq!(e.at_ms, 2_000);
            assert_eq!(e.request.is_some(), a.request.is_some());
        }
    }

    #[test]
    fn a_denial_names_who_and_why() {
        let e = ActionEvent::denied(&unit(), "viewer:metro-fire", Some("flush-dns"), "viewer", 5);
        assert_eq!(e.step, Step::Denied);
        assert_eq!(
            e.summary,
            "flush-dns by viewer:metro-fire denied: a viewer token may not request actions"
        );
        let e = ActionEvent::denied(&unit(), "operator:county-police", None, "other_agency", 5);
        assert_eq!(
            e.summary,
            "a request by operator:county-police denied: an operator may request actions only from its own agency's units"
        );
        assert_eq!(e.request, None);
        let mut seen = std::collections::HashSet::new();
        for s in Step::ALL {
            assert!(seen.insert(s.as_str()));
            let v = serde_json::to_value(s).unwrap();
            assert_eq!(v, s.as_str());
        }
    }

    #[test]
    fn a_stored_action_round_trips_and_shows_as_an_event() {
        let r = ActionRequest {
            unit: unit(),
            action: "flush-dns".into(),
            params: vec![ActionParam {
                name: "iface".into(),
                value: "wwan0".into(),
            }],
            nonce: [1; 16],
            issued_ms: 10_000,
            expires_ms: 70_000,
            requested_by: "admin".into(),
            key_id: KeyId::NONE,
            sig: Signature::NONE,
        };
        let s = StoredAction {
            id: 9,
            event: ActionEvent::requested(&r, 10_000),
        };
        assert_eq!(s.event.summary, "flush-dns requested by admin, valid 1m00s");
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<StoredAction>(&text).unwrap(), s);
        let v = serde_json::to_value(ActionView::from(&s)).unwrap();
        assert_eq!(v["id"], 9);
        assert_eq!(v["type"], "action");
        assert_eq!(v["step"], "requested");
        assert_eq!(v["request"], "01".repeat(16));
        assert_eq!(v["params"], json!({"iface": "wwan0"}));
        assert!(v.get("stdout").is_none(), "absent, not null: {v}");
    }
}
