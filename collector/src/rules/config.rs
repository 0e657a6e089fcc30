//! The `[rules]` table: raw (serde, as written) and validated (typed).

use muster_base::value::BadValue;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::Deserialize;

use super::baseline::{BaselineOp, Direction};
use super::field::{Field, LINK_KINDS, kind_name, kind_value};
use crate::model::Severity;

/// The shipped defaults (a `[rules]` table).
pub const DEFAULT_RULES_TOML: &str = include_str!("default_rules.toml");

/// Rule names the engine uses itself.
const RESERVED: &[&str] = &[
    "offline.will",
    "offline.stale",
    "lost.will",
    "lost.stale",
    "off",
    "overdue",
    "clock_skew",
    "incident",
    super::peers::SLOWER,
    super::peers::SHIFT,
    super::traffic::RULE,
];

/// The `[rules]` table of the collector's TOML config, as written.
///
/// `RawRules::default()` is the shipped rules (`default_rules.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRules {
    /// Include the shipped threshold rules (yours replace them by name).
    #[serde(default = "yes")]
    pub defaults: bool,
    /// Names of shipped (or own) threshold rules to drop.
    #[serde(default)]
    pub disabled: Vec<String>,
    #[serde(default)]
    pub offline: RawOffline,
    #[serde(default)]
    pub off: RawOff,
    #[serde(default)]
    pub clock_skew: RawClockSkew,
    #[serde(default)]
    pub incidents: RawIncidents,
    /// `[rules.peers]`: compared with its peers (`super::peers`).
    #[serde(default)]
    pub peers: super::peers::RawPeers,
    /// `[rules.traffic]`: the agency's message rate (`super::traffic`).
    #[serde(default)]
    pub traffic: super::traffic::RawTraffic,
    /// `[rules.baseline]`: each stream's own past (`super::baseline`).
    #[serde(default)]
    pub baseline: super::baseline::RawBaseline,
    #[serde(default)]
    pub threshold: Vec<RawThreshold>,
}

fn yes() -> bool {
    true
}

/// `[rules.offline]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawOffline {
    pub stale_factor: u32,
    pub min_stale: String,
    pub default_interval: String,
    pub runbook: Option<String>,
}

impl Default for RawOffline {
    fn default() -> Self {
        RawOffline {
            stale_factor: 3,
            min_stale: "15s".into(),
            default_interval: "30s".into(),
            runbook: None,
        }
    }
}

/// `[rules.off]`: how long an announced departure (shutdown, stop, sleep)
/// stays `off` before it is `overdue`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawOff {
    pub max: String,
    pub runbook: Option<String>,
    /// `[rules.off.agency."metro-fire"] max = "10h"`.
    pub agency: BTreeMap<String, RawOffAgency>,
}

/// `[rules.off.agency."<agency>"]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOffAgency {
    pub max: String,
}

impl Default for RawOff {
    fn default() -> Self {
        RawOff {
            max: "16h".into(),
            runbook: None,
            agency: BTreeMap::new(),
        }
    }
}

/// `[rules.clock_skew]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawClockSkew {
    pub enabled: bool,
    pub threshold: String,
    pub severity: String,
    pub runbook: Option<String>,
}

impl Default for RawClockSkew {
    fn default() -> Self {
        RawClockSkew {
            enabled: true,
            threshold: "2m".into(),
            severity: "degraded".into(),
            runbook: None,
        }
    }
}

/// `[rules.incidents]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawIncidents {
    pub enabled: bool,
    pub min_units: usize,
    pub min_ratio: f64,
    pub clear_ratio: f64,
    pub window: String,
    pub severity: String,
    pub runbook: Option<String>,
}

impl Default for RawIncidents {
    fn default() -> Self {
        RawIncidents {
            enabled: true,
            min_units: 3,
            min_ratio: 0.5,
            clear_ratio: 0.25,
            window: "2m".into(),
            severity: "degraded".into(),
            runbook: None,
        }
    }
}

/// One `[[rules.threshold]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThreshold {
    pub name: String,
    pub field: String,
    pub op: String,
    /// Required, except on `above_baseline` / `below_baseline` (refused there).
    pub threshold: Option<RawValue>,
    pub clear: Option<RawValue>,
    /// Baseline ops: how far beyond the usual (`> 1`).
    pub factor: Option<f64>,
    /// Baseline ops on millisecond fields: the least difference from the
    /// usual that counts.
    pub min_delta_ms: Option<f64>,
    /// Baseline ops on other fields: the same, in the field's unit.
    pub min_delta: Option<f64>,
    #[serde(rename = "for")]
    pub for_: Option<String>,
    pub window: Option<String>,
    pub severity: Option<String>,
    pub runbook: Option<String>,
    pub agencies: Option<Vec<String>>,
    /// The agent action automation requests when this flag raises
    /// (`crate::automation`).
    pub auto_action: Option<String>,
    /// At most this many automatic requests per unit: `"1 per 1h"`.
    pub auto_max: Option<String>,
    /// The flag must clear within this after the action, else it escalates.
    pub auto_window: Option<String>,
}

/// A threshold: a number, `true` / `false` for true/false fields, or a
/// link kind name for `net.kind`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RawValue {
    Bool(bool),
    Num(f64),
    Str(String),
}

impl Default for RawRules {
    fn default() -> Self {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            rules: RawRules,
        }
        let f: File = toml::from_str(DEFAULT_RULES_TOML).expect("shipped default rules parse");
        f.rules
    }
}

/// Why a `[rules]` table was refused; every message starts with the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RulesError {
    #[error(transparent)]
    Value(#[from] BadValue),
    #[error("{key}: {value:?} is not a field: {problem}")]
    Field {
        key: String,
        value: String,
        problem: String,
    },
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

pub(super) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> RulesError {
    RulesError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    /// Does `v op t` hold?
    #[allow(clippy::float_cmp)]
    pub fn holds(self, v: f64, t: f64) -> bool {
        match self {
            Op::Gt => v > t,
            Op::Ge => v >= t,
            Op::Lt => v < t,
            Op::Le => v <= t,
            Op::Eq => v == t,
            Op::Ne => v != t,
        }
    }
}

/// A validated threshold rule.
#[derive(Debug, Clone)]
pub struct ThresholdRule {
    pub name: Arc<str>,
    /// The field as written in config.
    pub field_text: Arc<str>,
    pub field: Field,
    pub op: Op,
    pub threshold: f64,
    /// While the flag is up, it stays up as long as `value op clear` holds.
    pub clear: f64,
    pub for_ms: u64,
    /// For windowed fields (`failure_ratio`): the window, else 0.
    pub window_ms: u64,
    pub severity: Severity,
    pub runbook: Option<Arc<str>>,
    /// Only units of these agencies; `None` = all.
    pub agencies: Option<Vec<String>>,
    /// What automation does when this flag raises.
    pub auto: Option<AutoRule>,
    /// `above_baseline` / `below_baseline`: judged against the unit's own
    /// past (`super::baseline`), not `threshold` (then 0).
    pub baseline: Option<super::baseline::BaselineOp>,
}

/// A rule's automation (`auto_action`, `auto_max`, `auto_window`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoRule {
    /// The name of an `[[action]]` in the units' own configs.
    pub action: String,
    /// Automatic requests per unit at most; past it the flag escalates.
    pub max: muster_base::rate::Rate,
    /// The flag must clear within this after the action ran.
    pub window_ms: u64,
}

/// `auto_max` when a rule names only `auto_action`.
pub const DEFAULT_AUTO_MAX: &str = "1 per 1h";
/// `auto_window` when a rule names only `auto_action`.
pub const DEFAULT_AUTO_WINDOW_MS: u64 = 10 * 60_000;

impl ThresholdRule {
    pub fn applies_to(&self, agency: &str) -> bool {
        self.agencies
            .as_ref()
            .is_none_or(|a| a.iter().any(|x| x == agency))
    }

    /// The threshold as people read it (`false` for true/false fields).
    pub fn show(&self, v: f64) -> String {
        if self.field.is_kind() {
            format!("{:?}", kind_name(v))
        } else if self.field.is_bool() {
            (v != 0.0).to_string()
        } else {
            show_num(v)
        }
    }
}

/// A number without noise: `96.2`, `90`, `0.5`.
pub fn show_num(v: f64) -> String {
    let r = (v * 100.0).round() / 100.0;
    if r.fract() == 0.0 && r.abs() < 1e15 {
        format!("{}", r as i64)
    } else {
        format!("{r}")
    }
}

#[derive(Debug, Clone)]
pub struct OfflineConfig {
    pub stale_factor: u32,
    pub min_stale_ms: u64,
    pub default_interval_ms: u64,
    pub runbook: Option<String>,
}

#[derive(Debug, Clone)]
pub struct OffConfig {
    pub max_ms: u64,
    pub runbook: Option<String>,
    /// Per-agency `max`.
    pub agency_max_ms: HashMap<String, u64>,
}

impl OffConfig {
    /// How long a unit of `agency` may be off before it is overdue.
    pub fn max_for(&self, agency: &str) -> u64 {
        self.agency_max_ms
            .get(agency)
            .copied()
            .unwrap_or(self.max_ms)
    }
}

#[derive(Debug, Clone)]
pub struct SkewConfig {
    pub threshold_ms: u64,
    pub severity: Severity,
    pub runbook: Option<String>,
}

#[derive(Debug, Clone)]
pub struct IncidentConfig {
    pub min_units: usize,
    pub min_ratio: f64,
    pub clear_ratio: f64,
    pub window_ms: u64,
    pub severity: Severity,
    pub runbook: Option<String>,
}

/// The validated `[rules]` table.
#[derive(Debug, Clone)]
pub struct RulesConfig {
    pub threshold: Vec<ThresholdRule>,
    pub offline: OfflineConfig,
    pub off: OffConfig,
    /// `None` when disabled.
    pub clock_skew: Option<SkewConfig>,
    /// `None` when disabled.
    pub incidents: Option<IncidentConfig>,
    /// `[rules.peers]`; `None` when disabled.
    pub peers: Option<super::peers::PeerConfig>,
    /// `[rules.traffic]`; `None` when disabled.
    pub traffic: Option<super::traffic::TrafficConfig>,
    /// `[rules.baseline]`.
    pub baseline: super::baseline::BaselineConfig,
    /// The rules this collector serves a runbook for (`/runbooks/<rule>`):
    /// the built-in runbooks, and the site's once the collector's config
    /// has read them ([`RulesConfig::set_local_runbooks`]).
    pub local_runbooks: Arc<BTreeSet<String>>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RawRules::default()
            .validate()
            .expect("shipped default rules are valid")
    }
}

impl RulesConfig {
    /// The names of the threshold rules in force.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.threshold.iter().map(|r| &*r.name)
    }

    /// The runbook link of a flag of `rule`: the URL configured for it,
    /// else this collector's own page `/runbooks/<rule>` when it has a
    /// runbook of that name, else none.
    pub fn runbook_link(&self, rule: &str, configured: Option<&str>) -> Option<String> {
        match configured {
            Some(url) => Some(url.to_owned()),
            None if self.local_runbooks.contains(rule) => Some(format!("/runbooks/{rule}")),
            None => None,
        }
    }

    /// The rules this config can raise a flag for, each with the config
    /// key of its runbook URL and that URL: the built-in rules (`off`,
    /// `overdue`, `lost.will`, `lost.stale`, and `clock_skew` and
    /// `incident` unless disabled, `slower-than-peers` and `latency-shift`
    /// unless `[rules.peers]` is), then the threshold rules in force.
    pub fn runbook_sources(&self) -> Vec<(String, String, Option<String>)> {
        let mut out = vec![
            ("off".to_owned(), "rules.off".to_owned(), None),
            (
                "overdue".to_owned(),
                "rules.off.runbook".to_owned(),
                self.off.runbook.clone(),
            ),
        ];
        for rule in ["lost.will", "lost.stale"] {
            out.push((
                rule.to_owned(),
                "rules.offline.runbook".to_owned(),
                self.offline.runbook.clone(),
            ));
        }
        if let Some(s) = &self.clock_skew {
            out.push((
                "clock_skew".to_owned(),
                "rules.clock_skew.runbook".to_owned(),
                s.runbook.clone(),
            ));
        }
        if let Some(i) = &self.incidents {
            out.push((
                "incident".to_owned(),
                "rules.incidents.runbook".to_owned(),
                i.runbook.clone(),
            ));
        }
        if let Some(p) = &self.peers {
            out.push((
                super::peers::SLOWER.to_owned(),
                "rules.peers.runbook".to_owned(),
                p.runbook.clone(),
            ));
            out.push((
                super::peers::SHIFT.to_owned(),
                "rules.peers.shift_runbook".to_owned(),
                p.shift_runbook.clone(),
            ));
        }
        if let Some(t) = &self.traffic {
            out.push((
                super::traffic::RULE.to_owned(),
                "rules.traffic.runbook".to_owned(),
                t.runbook.clone(),
            ));
        }
        for r in &self.threshold {
            out.push((
                r.name.to_string(),
                format!("the runbook of [[rules.threshold]] {:?}", &*r.name),
                r.runbook.as_deref().map(str::to_owned),
            ));
        }
        out
    }

    /// Which rules have a runbook this collector serves (replaces the
    /// built-in names `validate` starts with).
    pub fn set_local_runbooks<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        self.local_runbooks = Arc::new(names.into_iter().map(str::to_owned).collect());
    }
}

pub(super) fn duration(key: &str, value: &str) -> Result<u64, RulesError> {
    let d = muster_base::value::duration(key, value)?;
    u64::try_from(d.as_millis())
        .map_err(|_| BadValue::new(key, format!("{value:?} is too long")).into())
}

pub(super) fn severity(key: &str, value: &str) -> Result<Severity, RulesError> {
    match value {
        "degraded" => Ok(Severity::Degraded),
        "critical" => Ok(Severity::Critical),
        _ => Err(invalid(
            key,
            format!("{value:?} is not a severity; expected \"degraded\" or \"critical\""),
        )),
    }
}

pub(super) fn runbook(key: &str, value: Option<String>) -> Result<Option<String>, RulesError> {
    match value {
        Some(url) if !(url.starts_with("https://") || url.starts_with("http://")) => {
            Err(invalid(key, format!("{url:?} is not an http(s) URL")))
        }
        v => Ok(v),
    }
}

pub(super) fn ratio(key: &str, v: f64) -> Result<f64, RulesError> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(key, format!("{v} is not a ratio between 0 and 1")))
    }
}

impl RawRules {
    /// Checks the table and types it. Errors name the key:
    /// `rules.threshold[2].for: "5x" is not a duration`.
    pub fn validate(self) -> Result<RulesConfig, RulesError> {
        // Offline.
        let o = &self.offline;
        if o.stale_factor == 0 {
            return Err(invalid("rules.offline.stale_factor", "must be at least 1"));
        }
        let offline = OfflineConfig {
            stale_factor: o.stale_factor,
            min_stale_ms: duration("rules.offline.min_stale", &o.min_stale)?,
            default_interval_ms: duration("rules.offline.default_interval", &o.default_interval)?,
            runbook: runbook("rules.offline.runbook", o.runbook.clone())?,
        };
        if offline.default_interval_ms == 0 {
            return Err(invalid(
                "rules.offline.default_interval",
                "must not be zero",
            ));
        }

        // Off.
        let positive = |key: &str, v: &str| -> Result<u64, RulesError> {
            match duration(key, v)? {
                0 => Err(invalid(key, "must not be zero")),
                ms => Ok(ms),
            }
        };
        let mut agency_max_ms = HashMap::new();
        for (agency, a) in &self.off.agency {
            if muster_proto::ids::validate_part("agency", agency).is_err() {
                return Err(invalid(
                    format!("rules.off.agency.{agency:?}"),
                    format!("{agency:?} is not an agency id"),
                ));
            }
            agency_max_ms.insert(
                agency.clone(),
                positive(&format!("rules.off.agency.{agency:?}.max"), &a.max)?,
            );
        }
        let off = OffConfig {
            max_ms: positive("rules.off.max", &self.off.max)?,
            runbook: runbook("rules.off.runbook", self.off.runbook.clone())?,
            agency_max_ms,
        };

        // Clock skew.
        let s = &self.clock_skew;
        let skew = SkewConfig {
            threshold_ms: duration("rules.clock_skew.threshold", &s.threshold)?,
            severity: severity("rules.clock_skew.severity", &s.severity)?,
            runbook: runbook("rules.clock_skew.runbook", s.runbook.clone())?,
        };
        if skew.threshold_ms < 1_000 {
            return Err(invalid(
                "rules.clock_skew.threshold",
                "must be at least 1s (transport delay alone is that much)",
            ));
        }

        // Incidents.
        let i = &self.incidents;
        let incidents = IncidentConfig {
            min_units: i.min_units,
            min_ratio: ratio("rules.incidents.min_ratio", i.min_ratio)?,
            clear_ratio: ratio("rules.incidents.clear_ratio", i.clear_ratio)?,
            window_ms: duration("rules.incidents.window", &i.window)?,
            severity: severity("rules.incidents.severity", &i.severity)?,
            runbook: runbook("rules.incidents.runbook", i.runbook.clone())?,
        };
        if incidents.min_units < 2 {
            return Err(invalid(
                "rules.incidents.min_units",
                "must be at least 2 (one unit failing is that unit's problem)",
            ));
        }
        if incidents.clear_ratio > incidents.min_ratio {
            return Err(invalid(
                "rules.incidents.clear_ratio",
                format!(
                    "{} is above min_ratio {}: the incident would flap",
                    incidents.clear_ratio, incidents.min_ratio
                ),
            ));
        }
        if incidents.window_ms == 0 {
            return Err(invalid("rules.incidents.window", "must not be zero"));
        }

        let peers = self.peers.validate()?;
        let traffic = self.traffic.validate(&offline)?;

        let baseline = self.baseline.validate()?;

        // Threshold rules: the user's, then the shipped ones not replaced.
        let mut rules = Vec::new();
        for (n, raw) in self.threshold.into_iter().enumerate() {
            let rule = threshold_rule(&format!("rules.threshold[{n}]"), raw)?;
            if rules.iter().any(|r: &ThresholdRule| r.name == rule.name) {
                return Err(invalid(
                    format!("rules.threshold[{n}].name"),
                    format!("{:?} is used by an earlier rule", &*rule.name),
                ));
            }
            rules.push(rule);
        }
        if self.defaults {
            let shipped = RawRules::default();
            for (n, raw) in shipped.threshold.into_iter().enumerate() {
                if rules.iter().any(|r| *r.name == *raw.name) {
                    continue;
                }
                rules.push(threshold_rule(
                    &format!("(shipped) rules.threshold[{n}]"),
                    raw,
                )?);
            }
        }
        for (n, name) in self.disabled.iter().enumerate() {
            let before = rules.len();
            rules.retain(|r| *r.name != **name);
            if rules.len() == before {
                return Err(invalid(
                    format!("rules.disabled[{n}]"),
                    format!("no threshold rule is named {name:?}"),
                ));
            }
        }
        if rules.len() > usize::from(u16::MAX) {
            return Err(invalid("rules.threshold", "too many rules"));
        }

        Ok(RulesConfig {
            threshold: rules,
            offline,
            off,
            clock_skew: self.clock_skew.enabled.then_some(skew),
            incidents: self.incidents.enabled.then_some(incidents),
            peers,
            traffic,
            baseline,
            local_runbooks: Arc::new(
                crate::runbooks::builtin_names()
                    .map(str::to_owned)
                    .collect(),
            ),
        })
    }
}

fn threshold_rule(key: &str, raw: RawThreshold) -> Result<ThresholdRule, RulesError> {
    let k = |sub: &str| format!("{key}.{sub}");
    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            k("name"),
            format!("{:?} is not a rule name (letters, digits, - _ .)", raw.name),
        ));
    }
    if RESERVED.contains(&raw.name.as_str())
        || raw.name.starts_with("offline.")
        || raw.name.starts_with("lost.")
    {
        return Err(invalid(
            k("name"),
            format!("{:?} is reserved for a built-in rule", raw.name),
        ));
    }
    let field = Field::parse(&raw.field).map_err(|problem| RulesError::Field {
        key: k("field"),
        value: raw.field.clone(),
        problem,
    })?;
    let baseline = match Direction::parse(raw.op.trim()) {
        Some(dir) => Some(baseline_op(key, &raw, &field, dir)?),
        None => {
            for (sub, given) in [
                ("factor", raw.factor.is_some()),
                ("min_delta_ms", raw.min_delta_ms.is_some()),
                ("min_delta", raw.min_delta.is_some()),
            ] {
                if given {
                    return Err(invalid(
                        k(sub),
                        format!("only above_baseline and below_baseline take {sub}"),
                    ));
                }
            }
            None
        }
    };
    let op = match &baseline {
        Some(b) => match b.direction {
            Direction::Above => Op::Ge,
            Direction::Below => Op::Le,
        },
        None => Op::parse(raw.op.trim()).ok_or_else(|| {
            invalid(
                k("op"),
                format!(
                    "{:?} is not an operator; expected >, >=, <, <=, ==, !=, above_baseline or below_baseline",
                    raw.op
                ),
            )
        })?,
    };
    let value = |sub: &str, v: RawValue| -> Result<f64, RulesError> {
        if field.is_kind() {
            let names: Vec<&str> = LINK_KINDS.iter().map(|k| k.as_str()).collect();
            return match &v {
                RawValue::Str(s) => LINK_KINDS
                    .iter()
                    .find(|k| k.as_str() == s)
                    .map(|k| kind_value(*k))
                    .ok_or_else(|| {
                        invalid(
                            k(sub),
                            format!(
                                "{s:?} is not a link kind; expected one of {}",
                                names.join(", ")
                            ),
                        )
                    }),
                _ => Err(invalid(
                    k(sub),
                    format!(
                        "{} is a link kind: compare with one of {}",
                        raw.field,
                        names.join(", ")
                    ),
                )),
            };
        }
        match (field.is_bool(), v) {
            (true, RawValue::Bool(b)) => Ok(super::field::bool_value(b)),
            (false, RawValue::Num(x)) if x.is_finite() => Ok(x),
            (true, _) => Err(invalid(
                k(sub),
                format!("{} is true/false: compare with true or false", raw.field),
            )),
            (false, _) => Err(invalid(
                k(sub),
                format!("{} is a number: give a number", raw.field),
            )),
        }
    };
    let threshold = match (raw.threshold, &baseline) {
        // Refused with a baseline op (baseline_op).
        (_, Some(_)) => 0.0,
        (Some(t), None) => value("threshold", t)?,
        (None, None) => {
            return Err(invalid(
                k("threshold"),
                format!("missing: give the value {} is compared with", raw.field),
            ));
        }
    };
    if field.is_bool() && !matches!(op, Op::Eq | Op::Ne) {
        return Err(invalid(
            k("op"),
            format!("{} is true/false: use == or !=", raw.field),
        ));
    }
    if field.is_kind() && !matches!(op, Op::Eq | Op::Ne) {
        return Err(invalid(
            k("op"),
            format!("{} is a link kind: use == or !=", raw.field),
        ));
    }
    let clear = match raw.clear {
        // A factor, in `baseline`.
        _ if baseline.is_some() => 0.0,
        None => threshold,
        Some(_) if matches!(op, Op::Eq | Op::Ne) => {
            return Err(invalid(
                k("clear"),
                "a clear threshold needs an ordering operator (>, >=, <, <=)",
            ));
        }
        Some(c) => {
            let c = value("clear", c)?;
            let wrong_side = match op {
                Op::Gt | Op::Ge => c > threshold,
                _ => c < threshold,
            };
            if wrong_side {
                return Err(invalid(
                    k("clear"),
                    format!(
                        "{} is on the wrong side of threshold {}: the flag would never clear",
                        show_num(c),
                        show_num(threshold)
                    ),
                ));
            }
            c
        }
    };
    let for_ms = match &raw.for_ {
        Some(v) => duration(&k("for"), v)?,
        None => 0,
    };
    let window_ms = match (&raw.window, field.is_windowed()) {
        (Some(v), true) => {
            let w = duration(&k("window"), v)?;
            if w == 0 {
                return Err(invalid(k("window"), "must not be zero"));
            }
            w
        }
        (None, true) => {
            return Err(invalid(
                k("window"),
                format!(
                    "{} is judged over a window: give one, e.g. \"5m\"",
                    raw.field
                ),
            ));
        }
        (Some(_), false) => {
            return Err(invalid(
                k("window"),
                format!("{} is not windowed (only failure_ratio is)", raw.field),
            ));
        }
        (None, false) => 0,
    };
    if let Some(agencies) = &raw.agencies
        && let Some((n, bad)) = agencies
            .iter()
            .enumerate()
            .find(|(_, a)| muster_proto::ids::validate_part("agency", a).is_err())
    {
        return Err(invalid(
            format!("{key}.agencies[{n}]"),
            format!("{bad:?} is not an agency id"),
        ));
    }
    Ok(ThresholdRule {
        name: raw.name.as_str().into(),
        field_text: raw.field.trim().into(),
        field,
        op,
        threshold,
        clear,
        for_ms,
        window_ms,
        severity: severity(
            &k("severity"),
            raw.severity.as_deref().unwrap_or("degraded"),
        )?,
        runbook: runbook(&k("runbook"), raw.runbook)?.map(Into::into),
        agencies: raw.agencies,
        auto: auto_rule(key, raw.auto_action, raw.auto_max, raw.auto_window)?,
        baseline,
    })
}

/// `above_baseline` / `below_baseline`: `factor`, `min_delta_ms` (or
/// `min_delta`) and `clear` as a factor; `threshold` refused.
fn baseline_op(
    key: &str,
    raw: &RawThreshold,
    field: &Field,
    direction: Direction,
) -> Result<BaselineOp, RulesError> {
    let k = |sub: &str| format!("{key}.{sub}");
    let op = direction.as_str();
    let name = raw.field.trim();
    if raw.threshold.is_some() {
        return Err(invalid(
            k("threshold"),
            format!(
                "{op} compares with the unit's own baseline: give factor and {}, not threshold",
                if field.is_ms() {
                    "min_delta_ms"
                } else {
                    "min_delta"
                }
            ),
        ));
    }
    if field.is_bool() || field.is_kind() {
        return Err(invalid(
            k("op"),
            format!("{name} is not a number: {op} needs one"),
        ));
    }
    if field.is_signed() {
        return Err(invalid(
            k("op"),
            format!("{name} can be negative: {op} judges magnitudes (0 and up)"),
        ));
    }
    let factor = match raw.factor {
        Some(f) if f.is_finite() && f > 1.0 => f,
        Some(f) => {
            return Err(invalid(
                k("factor"),
                format!("{} is not above 1", show_num(f)),
            ));
        }
        None => {
            return Err(invalid(
                k("factor"),
                format!("{op} needs a factor above 1: how many times the usual, e.g. 5"),
            ));
        }
    };
    let (wrong, right) = if field.is_ms() {
        ("min_delta", "min_delta_ms")
    } else {
        ("min_delta_ms", "min_delta")
    };
    let (given, wrong_given) = if field.is_ms() {
        (raw.min_delta_ms, raw.min_delta.is_some())
    } else {
        (raw.min_delta, raw.min_delta_ms.is_some())
    };
    if wrong_given {
        return Err(invalid(
            k(wrong),
            if field.is_ms() {
                format!("{name} is in milliseconds: give min_delta_ms")
            } else {
                format!("{name} is not in milliseconds: give min_delta, in its own unit")
            },
        ));
    }
    let min_delta = match given {
        Some(d) if d.is_finite() && d >= 0.0 => d,
        Some(d) => {
            return Err(invalid(
                k(right),
                format!("{} is not a difference (0 or more)", show_num(d)),
            ));
        }
        None => {
            return Err(invalid(
                k(right),
                format!(
                    "{op} needs {right}: the least difference from the usual that counts (0: the factor alone)"
                ),
            ));
        }
    };
    let clear = match &raw.clear {
        None => factor.sqrt(),
        Some(RawValue::Num(c)) if c.is_finite() && (1.0..=factor).contains(c) => *c,
        Some(_) => {
            return Err(invalid(
                k("clear"),
                format!(
                    "on {op}, clear is a factor from 1 to factor ({}): the flag stays up while the value is that far beyond the usual",
                    show_num(factor)
                ),
            ));
        }
    };
    Ok(BaselineOp {
        direction,
        factor,
        clear,
        min_delta,
    })
}

fn auto_rule(
    key: &str,
    action: Option<String>,
    max: Option<String>,
    window: Option<String>,
) -> Result<Option<AutoRule>, RulesError> {
    let k = |sub: &str| format!("{key}.{sub}");
    let Some(action) = action else {
        if max.is_some() {
            return Err(invalid(k("auto_max"), "needs auto_action"));
        }
        if window.is_some() {
            return Err(invalid(k("auto_window"), "needs auto_action"));
        }
        return Ok(None);
    };
    muster_proto::action::check_name(
        "an action name",
        &action,
        muster_proto::action::MAX_ACTION_NAME,
    )
    .map_err(|e| invalid(k("auto_action"), e))?;
    let max = muster_base::rate::rate(&k("auto_max"), max.as_deref().unwrap_or(DEFAULT_AUTO_MAX))?;
    let window_ms = match window {
        None => DEFAULT_AUTO_WINDOW_MS,
        Some(w) => match duration(&k("auto_window"), &w)? {
            ms @ 1_000..=86_400_000 => ms,
            _ => return Err(invalid(k("auto_window"), "must be 1s to 24h")),
        },
    };
    Ok(Some(AutoRule {
        action,
        max,
        window_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<RawRules, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            rules: RawRules,
        }
        toml::from_str::<File>(body)
            .map(|f| f.rules)
            .map_err(|e| e.to_string())
    }

    fn validate(body: &str) -> Result<RulesConfig, String> {
        parse(body)?.validate().map_err(|e| e.to_string())
    }

    const CPU: &str = "[[rules.threshold]]\nname = \"cpu-high\"\nfield = \"cpu.total\"\nop = \">\"\nthreshold = 90\n";

    #[test]
    fn shipped_defaults_are_valid_and_match_the_rust_defaults() {
        let raw = RawRules::default();
        assert_eq!(raw.offline, RawOffline::default());
        assert_eq!(raw.clock_skew, RawClockSkew::default());
        assert_eq!(raw.incidents, RawIncidents::default());
        assert!(raw.defaults);
        let cfg = raw.validate().unwrap();
        let names: Vec<&str> = cfg.rule_names().collect();
        for want in [
            "cpu-high",
            "memory-high",
            "disk-full",
            "cad-client-down",
            "cad-api-failing",
            "probe-slow",
            "buffer-backlog",
        ] {
            assert!(names.contains(&want), "{want} in {names:?}");
        }
        let cpu = &cfg.threshold[0];
        assert_eq!(
            (cpu.threshold, cpu.clear, cpu.for_ms),
            (90.0, 80.0, 120_000)
        );
        // No shipped rule names a URL: each links to its built-in runbook.
        for r in &cfg.threshold {
            assert_eq!(r.runbook, None, "{}", r.name);
            assert_eq!(
                cfg.runbook_link(&r.name, None),
                Some(format!("/runbooks/{}", r.name))
            );
        }
        assert_eq!(
            cfg.runbook_link("cpu-high", Some("https://wiki.example.org/cpu")),
            Some("https://wiki.example.org/cpu".to_owned()),
            "a URL of its own wins"
        );
        assert_eq!(cfg.runbook_link("wwan-errors", None), None);
        // An empty [rules] table is the shipped rules too.
        let empty = validate("[rules]\n").unwrap();
        assert_eq!(empty.threshold.len(), cfg.threshold.len());
        assert_eq!(empty.offline.min_stale_ms, 15_000);
        assert_eq!(empty.clock_skew.unwrap().threshold_ms, 120_000);
        assert_eq!(empty.incidents.unwrap().min_units, 3);
    }

    #[test]
    fn merging_with_the_shipped_rules() {
        let shipped = RulesConfig::default().threshold.len();
        // Same name replaces, a new name adds.
        let cfg = validate(&format!(
            "[rules]\n{CPU}for = \"5m\"\n[[rules.threshold]]\nname = \"wwan-errors\"\nfield = 'net[\"wwan0\"].rx_errors'\nop = \">\"\nthreshold = 100\n"
        ))
        .unwrap();
        assert_eq!(cfg.threshold.len(), shipped + 1);
        let cpu = cfg
            .threshold
            .iter()
            .find(|r| &*r.name == "cpu-high")
            .unwrap();
        assert_eq!(cpu.for_ms, 300_000);
        assert_eq!(cpu.clear, 90.0, "clear defaults to the threshold");
        // defaults = false: only your own.
        let cfg = validate(&format!("[rules]\ndefaults = false\n{CPU}")).unwrap();
        assert_eq!(cfg.rule_names().collect::<Vec<_>>(), vec!["cpu-high"]);
        // disabled drops by name.
        let cfg = validate("[rules]\ndisabled = [\"swap-high\", \"icmp-loss\"]\n").unwrap();
        assert_eq!(cfg.threshold.len(), shipped - 2);
        assert!(!cfg.rule_names().any(|n| n == "swap-high"));
        // Disabled features.
        let cfg =
            validate("[rules.clock_skew]\nenabled = false\n[rules.incidents]\nenabled = false\n")
                .unwrap();
        assert!(cfg.clock_skew.is_none() && cfg.incidents.is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let rule = |extra: &str| format!("[rules]\ndefaults = false\n{CPU}{extra}");
        let two_then = |bad: &str| {
            format!(
                "[rules]\ndefaults = false\n{CPU}{}{}",
                CPU.replace("cpu-high", "cpu-a"),
                bad
            )
        };
        let third = "[[rules.threshold]]\nname = \"cpu-b\"\nfield = \"cpu.total\"\nop = \">\"\nthreshold = 90\nfor = \"5x\"\n";
        let cases: Vec<(String, &str)> = vec![
            (two_then(third), r#"rules.threshold[2].for: "5x" is not a duration (e.g. "30s", "5m")"#),
            (
                rule("window = \"5m\"\n"),
                "rules.threshold[0].window: cpu.total is not windowed (only failure_ratio is)",
            ),
            (
                CPU.replace("cpu.total", "cpux.total").replace("[[rules", "[rules]\ndefaults = false\n[[rules"),
                r#"rules.threshold[0].field: "cpux.total" is not a field: unknown scope "cpux"; expected one of cpu, load, memory, swap, disk, net, process, host, probe, agent"#,
            ),
            (
                CPU.replace("cpu.total", "disk.used_pct").replace("[[rules", "[rules]\ndefaults = false\n[[rules"),
                r#"rules.threshold[0].field: "disk.used_pct" is not a field: disk needs a selector: disk["name"].metric or disk[*].metric"#,
            ),
            (
                CPU.replace("\">\"", "\"=>\"").replace("[[rules", "[rules]\ndefaults = false\n[[rules"),
                r#"rules.threshold[0].op: "=>" is not an operator; expected >, >=, <, <=, ==, !=, above_baseline or below_baseline"#,
            ),
            (
                rule("clear = 95\n"),
                "rules.threshold[0].clear: 95 is on the wrong side of threshold 90: the flag would never clear",
            ),
            (
                rule("severity = \"urgent\"\n"),
                r#"rules.threshold[0].severity: "urgent" is not a severity; expected "degraded" or "critical""#,
            ),
            (
                rule("runbook = \"wiki/cpu\"\n"),
                r#"rules.threshold[0].runbook: "wiki/cpu" is not an http(s) URL"#,
            ),
            (
                rule("agencies = [\"metro/fire\"]\n"),
                r#"rules.threshold[0].agencies[0]: "metro/fire" is not an agency id"#,
            ),
            (
                format!("{}{CPU}", rule("")),
                r#"rules.threshold[1].name: "cpu-high" is used by an earlier rule"#,
            ),
            (
                rule("").replace("cpu-high", "clock_skew"),
                r#"rules.threshold[0].name: "clock_skew" is reserved for a built-in rule"#,
            ),
            (
                rule("").replace("cpu-high", "cpu high"),
                r#"rules.threshold[0].name: "cpu high" is not a rule name (letters, digits, - _ .)"#,
            ),
            (
                "[rules]\ndefaults = false\n[[rules.threshold]]\nname = \"cad\"\nfield = 'process[\"cadclient\"].running'\nop = \">\"\nthreshold = false\n".into(),
                r#"rules.threshold[0].op: process["cadclient"].running is true/false: use == or !="#,
            ),
            (
                "[rules]\ndefaults = false\n[[rules.threshold]]\nname = \"cad\"\nfield = 'process[\"cadclient\"].running'\nop = \"==\"\nthreshold = 0\n".into(),
                r#"rules.threshold[0].threshold: process["cadclient"].running is true/false: compare with true or false"#,
            ),
            (
                rule("").replace("threshold = 90", "threshold = true"),
                "rules.threshold[0].threshold: cpu.total is a number: give a number",
            ),
            (
                "[rules]\ndefaults = false\n[[rules.threshold]]\nname = \"cad\"\nfield = 'probe[\"cad-api\"].failure_ratio'\nop = \">\"\nthreshold = 0.5\n".into(),
                r#"rules.threshold[0].window: probe["cad-api"].failure_ratio is judged over a window: give one, e.g. "5m""#,
            ),
            (
                "[rules]\ndefaults = false\n[[rules.threshold]]\nname = \"cad\"\nfield = 'process[\"cadclient\"].running'\nop = \"==\"\nthreshold = false\nclear = true\n".into(),
                "rules.threshold[0].clear: a clear threshold needs an ordering operator (>, >=, <, <=)",
            ),
            (
                "[rules]\ndisabled = [\"cpu-hgh\"]\n".into(),
                r#"rules.disabled[0]: no threshold rule is named "cpu-hgh""#,
            ),
            (
                "[rules.offline]\nstale_factor = 0\n".into(),
                "rules.offline.stale_factor: must be at least 1",
            ),
            (
                "[rules.offline]\nmin_stale = \"soon\"\n".into(),
                r#"rules.offline.min_stale: "soon" is not a duration (e.g. "30s", "5m")"#,
            ),
            (
                "[rules.clock_skew]\nthreshold = \"10ms\"\n".into(),
                "rules.clock_skew.threshold: must be at least 1s (transport delay alone is that much)",
            ),
            (
                "[rules.incidents]\nclear_ratio = 0.8\n".into(),
                "rules.incidents.clear_ratio: 0.8 is above min_ratio 0.5: the incident would flap",
            ),
            (
                "[rules.incidents]\nmin_ratio = 1.5\n".into(),
                "rules.incidents.min_ratio: 1.5 is not a ratio between 0 and 1",
            ),
            (
                "[rules.incidents]\nmin_units = 1\n".into(),
                "rules.incidents.min_units: must be at least 2 (one unit failing is that unit's problem)",
            ),
        ];
        for (body, want) in &cases {
            assert_eq!(validate(body).unwrap_err(), *want, "{body}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_by_the_parser() {
        for (body, key) in [
            ("[rules]\nthresholds = []\n", "thresholds"),
            ("[rules.offline]\nstale = 3\n", "stale"),
            (
                &format!("[rules]\n{CPU}treshold_clear = 3\n") as &str,
                "treshold_clear",
            ),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.contains(&format!("unknown field `{key}`")), "{e}");
        }
    }

    #[test]
    fn operators() {
        let cases = [
            (Op::Gt, 91.0, 90.0, true),
            (Op::Gt, 90.0, 90.0, false),
            (Op::Ge, 90.0, 90.0, true),
            (Op::Ge, 89.9, 90.0, false),
            (Op::Lt, 13.0, 14.0, true),
            (Op::Lt, 14.0, 14.0, false),
            (Op::Le, 14.0, 14.0, true),
            (Op::Le, 14.1, 14.0, false),
            (Op::Eq, 0.0, 0.0, true),
            (Op::Eq, 1.0, 0.0, false),
            (Op::Ne, 1.0, 0.0, true),
            (Op::Ne, 0.0, 0.0, false),
        ];
        for (op, v, t, want) in cases {
            assert_eq!(op.holds(v, t), want, "{v} {} {t}", op.as_str());
            assert_eq!(Op::parse(op.as_str()), Some(op));
        }
        assert_eq!(show_num(96.2), "96.2");
        assert_eq!(show_num(90.0), "90");
        assert_eq!(show_num(0.123), "0.12");
    }
}
