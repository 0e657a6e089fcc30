//! The collector's view of a unit's health: the types the rules engine
//! produces and the feed (HTTP JSON, SSE stream, MQTT status topics) carries.
//! Their JSON form is an API boundary (see ARCHITECTURE.md): add fields, do
//! not rename or remove them.

use muster_proto::UnitId;
use serde::{Deserialize, Serialize};

/// A unit's status, ordered by how bad it is
/// (`Ok < Off < Degraded < Overdue < Critical < Lost`).
///
/// * `off`: the unit announced it was going away (shutdown, stop, sleep):
///   neutral, not a fault; never counted as a failure.
/// * `overdue` (degraded): off for longer than `[rules.off] max`, or an
///   announced restart not back within its `back_within`.
/// * `lost` (critical): the MQTT will, or silence with no announcement.
///   Before wire schema v2 this status was called `offline`; the feed's
///   `?status=offline` still selects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Off,
    Degraded,
    Overdue,
    Critical,
    Lost,
}

impl Status {
    /// Every status, least bad first (metrics, dashboards).
    pub const ALL: [Status; 6] = [
        Status::Ok,
        Status::Off,
        Status::Degraded,
        Status::Overdue,
        Status::Critical,
        Status::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Off => "off",
            Status::Degraded => "degraded",
            Status::Overdue => "overdue",
            Status::Critical => "critical",
            Status::Lost => "lost",
        }
    }

    /// A status that is a fault (counted in incidents, top problems and
    /// webhooks as a failure): everything but `ok` and `off`.
    pub fn is_fault(self) -> bool {
        !matches!(self, Status::Ok | Status::Off)
    }

    /// Parses a status name; `offline` (the name before schema v2) is `lost`.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "offline" => Some(Status::Lost),
            s => Status::ALL.into_iter().find(|x| x.as_str() == s),
        }
    }
}

/// How bad a flag is. A unit's status is its worst active flag's severity,
/// unless its presence decides (`lost` outranks everything; `overdue` and
/// `off` outrank threshold flags, which stay listed underneath).
/// `info` is a neutral reason (`off`): it makes no unit less than `ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Degraded,
    Critical,
}

impl Severity {
    /// One step up (automation's escalation); `critical` stays.
    pub fn escalated(self) -> Severity {
        match self {
            Severity::Info => Severity::Degraded,
            Severity::Degraded | Severity::Critical => Severity::Critical,
        }
    }
}

impl From<Severity> for Status {
    fn from(s: Severity) -> Status {
        match s {
            Severity::Info => Status::Ok,
            Severity::Degraded => Status::Degraded,
            Severity::Critical => Status::Critical,
        }
    }
}

/// Why a unit is not `ok`: one active flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// The rule's name from config (`cpu-high`), or a built-in one:
    /// `lost.will`, `lost.stale` (before schema v2: `offline.will`,
    /// `offline.stale`), `off`, `overdue`, `clock_skew`, `incident`,
    /// `slower-than-peers`, `latency-shift` (`crate::rules::peers`).
    pub rule: String,
    pub severity: Severity,
    /// What the rule looks at, as written in config (`cpu.total`,
    /// `probe["cad-api"].total_ms`).
    pub field: String,
    /// The value that tripped the rule (latest while active), when numeric.
    pub observed: Option<f64>,
    /// The threshold it crossed.
    pub threshold: Option<f64>,
    /// Event time (unix ms) the condition started to hold.
    pub since_ms: u64,
    /// Where the support desk reads what to do: the rule's own runbook URL,
    /// else `/runbooks/<rule>` on this collector when it has a runbook of
    /// that name (`RulesConfig::runbook_link`), else none.
    pub runbook: Option<String>,
    /// One line for people: `cpu.total 96.2 > 90 for 2m`.
    pub message: String,
    /// Set when this flag is part of an agency-wide incident.
    pub incident: Option<String>,
}

/// A unit's current health as the rules engine sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitHealth {
    pub status: Status,
    /// Since when (unix ms) the unit has had this status.
    pub since_ms: u64,
    pub reasons: Vec<Reason>,
}

impl UnitHealth {
    pub fn ok(since_ms: u64) -> Self {
        UnitHealth {
            status: Status::Ok,
            since_ms,
            reasons: Vec::new(),
        }
    }
}

/// A unit's status changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub agency: String,
    pub unit: String,
    pub from: Status,
    pub to: Status,
    /// When it changed (unix ms).
    pub at_ms: u64,
    pub reasons: Vec<Reason>,
}

impl Transition {
    pub fn unit_id(&self) -> UnitId {
        UnitId {
            agency: self.agency.clone(),
            unit: self.unit.clone(),
        }
    }
}

/// What an agency-wide incident is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// Many units failing the same probe target (`[rules.incidents]`).
    #[default]
    ProbeFailing,
    /// The whole cohort probing one target got slower at once: the
    /// server's problem, not the units' (`[rules.peers]`, issue 18).
    LatencyShift,
    /// The agency's message rate fell far below its baseline: many units
    /// silent at once (a carrier or VPN concentrator down; `[rules.traffic]`).
    TrafficDrop,
}

/// An agency-wide incident: many units of one agency failing the same
/// probe target at the same time, the cohort of a target slower at once,
/// or many units falling silent at once ([`IncidentKind`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Stable while the incident lasts: `{agency}:{probe}:{since_ms}`
    /// (a latency shift: `{agency}:{probe}:shift:{since_ms}`).
    pub id: String,
    /// Absent in incidents stored before issue 18: `probe_failing`.
    #[serde(default)]
    pub kind: IncidentKind,
    pub agency: String,
    /// The probe's name and target the units fail. A traffic drop has
    /// probe `traffic` and target `messages` (`crate::rules::traffic`); a
    /// latency shift's target is the server, a URL cut to
    /// `scheme://host[:port]` (`crate::rules::peers`).
    pub probe: String,
    pub target: String,
    /// Affected unit ids, sorted. A traffic drop lists its units still
    /// silent, at most `[rules.traffic] max_affected` (the summary keeps
    /// the count).
    pub affected: Vec<String>,
    /// Units of the agency that run this probe; for a traffic drop, the
    /// agency's units counted (heard within the baseline span, not departed).
    pub of_units: usize,
    pub since_ms: u64,
    /// Set once the incident is over.
    pub ended_ms: Option<u64>,
    /// For people: `cad-api (https://cad/health) failing from 37 of 40 units`.
    pub summary: String,
}

/// What the engine reports after an input: the feed streams these and the
/// store keeps them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    Transition(Transition),
    /// An incident opened, changed its affected set, or ended.
    Incident(Incident),
    /// A rollout took a step (`crate::rollout`).
    Rollout(RolloutEvent),
    /// Automation took a step (`crate::automation`).
    Automation(AutomationEvent),
}

/// A step of automation on one unit's flag: an action requested, its
/// outcome, the flag cleared after it, escalated, or suppressed by the
/// agency's kill switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutomationEvent {
    pub agency: String,
    pub unit: String,
    /// The threshold rule whose flag it is about.
    pub rule: String,
    /// The action the rule names (`auto_action`).
    pub action: String,
    pub step: AutomationStep,
    pub at_ms: u64,
    /// For people: "restart-cad-client at 14:02Z, exit 0".
    pub summary: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutomationStep {
    /// The action was requested from the unit.
    Requested,
    /// The unit ran it and it exited 0.
    Succeeded,
    /// Not sent, refused, failed, non-zero, timed out or unanswered.
    Failed,
    /// The flag cleared within the window after a requested action.
    Helped,
    /// The flag went up a severity step and people were told.
    Escalated,
    /// Not requested: the agency's kill switch is off.
    Suppressed,
}

impl AutomationStep {
    pub const ALL: [AutomationStep; 6] = [
        AutomationStep::Requested,
        AutomationStep::Succeeded,
        AutomationStep::Failed,
        AutomationStep::Helped,
        AutomationStep::Escalated,
        AutomationStep::Suppressed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AutomationStep::Requested => "requested",
            AutomationStep::Succeeded => "succeeded",
            AutomationStep::Failed => "failed",
            AutomationStep::Helped => "helped",
            AutomationStep::Escalated => "escalated",
            AutomationStep::Suppressed => "suppressed",
        }
    }
}

/// A step of a staged rollout: started, wave issued, applied, judged,
/// paused, resumed, rolling back, rolled back, completed, aborted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutEvent {
    /// Its id (`r<n>`).
    pub rollout: String,
    pub name: String,
    pub agency: String,
    /// `started`, `wave_issued`, `wave_applied`, `wave_judged`, `paused`,
    /// `resumed`, `rolling_back`, `aborting`, `rolled_back`, `aborted`,
    /// `completed`.
    pub step: String,
    /// The wave (1-based) and how many there are.
    pub wave: usize,
    pub waves: usize,
    /// The rollout's phase after the step.
    pub phase: String,
    pub at_ms: u64,
    /// For people.
    pub summary: String,
}
