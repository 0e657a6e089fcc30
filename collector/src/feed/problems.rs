//! `/api/v1/problems`: which rule or probe target cost the most degraded
//! unit-minutes over the last hours, worst first. The list an operations
//! team reads to decide what to fix first.
//!
//! Computed from the stored transitions: every transition carries the
//! unit's full set of active reasons after it, so a reason counts for a
//! unit from the transition that raised it to the one that cleared it (or
//! to now while it is still active), clipped to the window. Reasons on a
//! probe field (`probe["cad-api"].total_ms`, agency-wide `incident` flags)
//! count under that probe, with the target the incidents name for it.
//!
//! Automation (`crate::automation`) is tallied beside the ranking from its
//! stored steps in the window: per rule and action, how often it was
//! requested, succeeded, failed, helped (the flag cleared within its
//! window), escalated or was suppressed by the kill switch.
//!
//! Only faults count: while a unit is `off` (announced; see
//! `model::Status::is_fault`) nothing of it counts, and neutral reasons
//! (`Severity::Info`, the `off` reason itself) never do.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::Serialize;

use super::FeedState;
use super::auth::Scope;
use super::error::ApiError;
use super::query::{Params, digits};
use crate::model::{AutomationStep, Change, Severity, Status};
use crate::store::{EventQuery, StoredEvent};

/// The longest window `?hours=` takes (the store keeps events 30 days by default).
pub const MAX_HOURS: u64 = 24 * 31;
/// Events read per store call while collecting the window.
const READ_PAGE: usize = 1000;

/// One row of the ranking.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// `"probe"` when the reason is about a probe, else `"rule"`.
    pub cause: &'static str,
    /// The rule's name (`cpu-high`, `lost.stale`, `incident`...).
    pub rule: String,
    /// The probe's name, for probe causes.
    pub probe: Option<String>,
    /// The probe's target, when an incident of the window named it.
    pub target: Option<String>,
    /// Unit-minutes the reason was active within the window.
    pub unit_minutes: f64,
    /// Distinct units it hit.
    pub units: usize,
    /// Agencies of those units, sorted.
    pub agencies: Vec<String>,
}

/// The probe name of a reason's field: `probe["cad-api"].total_ms` ->
/// `cad-api` (with `\"` and `\\` unescaped); `None` for other fields.
pub fn probe_of(field: &str) -> Option<String> {
    let rest = field.strip_prefix("probe[\"")?;
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return Some(out),
            c => out.push(c),
        }
    }
    None
}

#[derive(Default)]
struct Acc {
    ms: u64,
    units: BTreeSet<(String, String)>,
}

/// Ranks causes by unit-minutes within `[now_ms - window_ms, now_ms]`.
///
/// `events` may come in any order and may start before the window (a
/// reason raised before the window counts from the window's start). A
/// unit's reasons before its first known transition are unknown and count
/// nothing. Reasons are told apart by rule and field; ties in the ranking
/// are broken by rule, probe and target so the order is stable.
pub fn rank(now_ms: u64, window_ms: u64, events: &[StoredEvent]) -> Vec<Problem> {
    let start = now_ms.saturating_sub(window_ms);
    let mut evs: Vec<&StoredEvent> = events.iter().collect();
    evs.sort_by_key(|e| e.id);
    // The target of each (agency, probe), from incidents (latest wins).
    let mut targets: HashMap<(&str, &str), &str> = HashMap::new();
    for e in &evs {
        if let Change::Incident(i) = &e.change {
            targets.insert((&i.agency, &i.probe), &i.target);
        }
    }
    // Per unit: active (rule, field) -> since (ms).
    type Active = BTreeMap<(String, String), u64>;
    let mut active: HashMap<(String, String), Active> = HashMap::new();
    let mut acc: BTreeMap<(String, String, String), Acc> = BTreeMap::new();
    let mut add = |agency: &str, unit: &str, rule: &str, field: &str, from: u64, to: u64| {
        let (from, to) = (from.max(start), to.min(now_ms));
        if to <= from {
            return;
        }
        let a = acc
            .entry((agency.to_owned(), rule.to_owned(), field.to_owned()))
            .or_default();
        a.ms += to - from;
        a.units.insert((agency.to_owned(), unit.to_owned()));
    };
    for e in &evs {
        let Change::Transition(t) = &e.change else {
            continue;
        };
        let key = (t.agency.clone(), t.unit.clone());
        let now_active: BTreeSet<(String, String)> = t
            .reasons
            .iter()
            .filter(|r| t.to != Status::Off && r.severity != Severity::Info)
            .map(|r| (r.rule.clone(), r.field.clone()))
            .collect();
        let cur = active.entry(key).or_default();
        // Cleared by this transition.
        cur.retain(|(rule, field), since| {
            let keep = now_active.contains(&(rule.clone(), field.clone()));
            if !keep {
                add(&t.agency, &t.unit, rule, field, *since, t.at_ms);
            }
            keep
        });
        for k in now_active {
            cur.entry(k).or_insert(t.at_ms);
        }
    }
    for ((agency, unit), cur) in &active {
        for ((rule, field), since) in cur {
            add(agency, unit, rule, field, *since, now_ms);
        }
    }
    // Merge agencies: one row per (rule, probe, target) or (rule).
    let mut rows: BTreeMap<(String, Option<String>, Option<String>), Acc> = BTreeMap::new();
    for ((agency, rule, field), a) in acc {
        let probe = probe_of(&field);
        let target = probe
            .as_deref()
            .and_then(|p| targets.get(&(agency.as_str(), p)))
            .map(|t| (*t).to_owned());
        let row = rows.entry((rule, probe, target)).or_default();
        row.ms += a.ms;
        row.units.extend(a.units);
    }
    let mut out: Vec<Problem> = rows
        .into_iter()
        .map(|((rule, probe, target), a)| Problem {
            cause: if probe.is_some() { "probe" } else { "rule" },
            agencies: a
                .units
                .iter()
                .map(|(ag, _)| ag.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            units: a.units.len(),
            unit_minutes: (a.ms as f64 / 60_000.0 * 100.0).round() / 100.0,
            rule,
            probe,
            target,
        })
        .collect();
    // BTreeMap order already sorts ties by (rule, probe, target); a stable
    // sort by minutes keeps that.
    out.sort_by(|a, b| b.unit_minutes.total_cmp(&a.unit_minutes));
    out
}

/// `GET /api/v1/problems?hours=24&agency=&limit=&cursor=`.
pub async fn list(
    State(st): State<FeedState>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<ProblemPage>, ApiError> {
    let scope = st.auth.authenticate(&headers)?;
    let q = Params::from(q)?;
    q.only(&["hours", "agency", "limit", "cursor"])?;
    let limit = q.limit()?;
    let hours = match q.str("hours") {
        None => 24,
        Some(s) => match digits(s) {
            Some(h) if (1..=MAX_HOURS).contains(&h) => h,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "hours: {s:?} is not a whole number of hours from 1 to {MAX_HOURS}"
                )));
            }
        },
    };
    let mut agency = q.str("agency").map(str::to_owned);
    match (&scope, &agency) {
        (_, Some(a)) => scope.check(a)?,
        (Scope::Agency(a), None) => agency = Some(a.clone()),
        (Scope::Admin, None) => {}
    }
    // Cursor: the offset into the ranking.
    let offset = match q.str("cursor") {
        Some(c) => digits(c)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .ok_or_else(|| ApiError::bad_request("cursor: not a cursor this endpoint gave out"))?,
        None => 0,
    };
    let now = st.clock.now_ms();
    let store = st.shared.store.clone();
    // Every stored event of the scope: a reason active since before the
    // window needs the transition that raised it. Retention bounds this.
    let events = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        let mut before_id = None;
        loop {
            let (page, more) = store.events(&EventQuery {
                agency: agency.clone(),
                unit: None,
                before_id,
                limit: READ_PAGE,
            })?;
            before_id = page.last().map(|e| e.id);
            all.extend(page);
            if !more || before_id.is_none() {
                return Ok(all);
            }
        }
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(|e: crate::store::StoreError| ApiError::internal(&e))?;
    let ranked = rank(now, hours * 3_600_000, &events);
    let items: Vec<Problem> = ranked.iter().skip(offset).take(limit).cloned().collect();
    let next_cursor =
        (offset + items.len() < ranked.len()).then(|| (offset + items.len()).to_string());
    Ok(Json(ProblemPage {
        items,
        next_cursor,
        automation: automation(now, hours * 3_600_000, &events),
    }))
}

/// The ranking, and what automation did in the same window.
#[derive(Debug, Serialize)]
pub struct ProblemPage {
    pub items: Vec<Problem>,
    pub next_cursor: Option<String>,
    pub automation: Vec<AutomationTally>,
}

/// How often automation acted on one rule's flags with one action, and
/// whether it helped (`crate::automation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AutomationTally {
    pub rule: String,
    pub action: String,
    pub requested: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// The flag cleared within the window after the action.
    pub helped: u64,
    pub escalated: u64,
    /// Not requested: the agency's kill switch was off.
    pub suppressed: u64,
}

/// Automation's steps within the window, per rule and action, most
/// requested first.
pub fn automation(now_ms: u64, window_ms: u64, events: &[StoredEvent]) -> Vec<AutomationTally> {
    let from = now_ms.saturating_sub(window_ms);
    let steps = events.iter().filter_map(|e| match &e.change {
        Change::Automation(a) if a.at_ms >= from => Some(a),
        _ => None,
    });
    let mut out: Vec<AutomationTally> = crate::automation::Machine::tally(steps)
        .into_iter()
        .map(|((rule, action), n)| {
            let c = |s: AutomationStep| n.get(&s).copied().unwrap_or(0);
            AutomationTally {
                rule,
                action,
                requested: c(AutomationStep::Requested),
                succeeded: c(AutomationStep::Succeeded),
                failed: c(AutomationStep::Failed),
                helped: c(AutomationStep::Helped),
                escalated: c(AutomationStep::Escalated),
                suppressed: c(AutomationStep::Suppressed),
            }
        })
        .collect();
    out.sort_by_key(|t| std::cmp::Reverse(t.requested));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Incident, Reason, Severity, Status, Transition};

    const MIN: u64 = 60_000;
    const NOW: u64 = 1_000 * MIN;
    /// The window of the tables: minutes 400 to 1000.
    const WINDOW: u64 = 600 * MIN;

    fn reason(rule: &str, field: &str) -> Reason {
        Reason {
            rule: rule.into(),
            severity: Severity::Degraded,
            field: field.into(),
            observed: None,
            threshold: None,
            since_ms: 0,
            runbook: None,
            message: String::new(),
            incident: None,
        }
    }

    /// A transition of `unit` (agency a unless "agency/unit") at minute
    /// `at` to the given (rule, field) set.
    fn tr(id: u64, unit: &str, at_min: u64, reasons: &[(&str, &str)]) -> StoredEvent {
        let (agency, unit) = unit.split_once('/').unwrap_or(("a", unit));
        StoredEvent {
            id,
            change: Change::Transition(Transition {
                agency: agency.into(),
                unit: unit.into(),
                from: Status::Ok,
                to: if reasons.is_empty() {
                    Status::Ok
                } else {
                    Status::Degraded
                },
                at_ms: at_min * MIN,
                reasons: reasons.iter().map(|(r, f)| reason(r, f)).collect(),
            }),
        }
    }

    fn incident(id: u64, agency: &str, probe: &str, target: &str) -> StoredEvent {
        StoredEvent {
            id,
            change: Change::Incident(Incident {
                id: format!("{agency}:{probe}:1"),
                kind: crate::model::IncidentKind::ProbeFailing,
                agency: agency.into(),
                probe: probe.into(),
                target: target.into(),
                affected: vec![],
                of_units: 3,
                since_ms: 1,
                ended_ms: None,
                summary: String::new(),
            }),
        }
    }

    type Row = (&'static str, &'static str, Option<&'static str>, f64, usize);

    fn rows(p: &[Problem]) -> Vec<(String, String, Option<String>, f64, usize)> {
        p.iter()
            .map(|p| {
                (
                    p.cause.to_owned(),
                    p.rule.clone(),
                    p.probe.clone(),
                    p.unit_minutes,
                    p.units,
                )
            })
            .collect()
    }

    #[test]
    fn ranking_table() {
        let cpu = ("cpu-high", "cpu.total");
        let mem = ("memory-high", "memory.used_pct");
        let cad = ("cad-slow", r#"probe["cad-api"].total_ms"#);
        let cases: Vec<(&str, Vec<StoredEvent>, Vec<Row>)> = vec![
            ("nothing", vec![], vec![]),
            (
                "raised and cleared",
                vec![tr(1, "u1", 900, &[cpu]), tr(2, "u1", 930, &[])],
                vec![("rule", "cpu-high", None, 30.0, 1)],
            ),
            (
                "still active counts to now",
                vec![tr(1, "u1", 990, &[cpu])],
                vec![("rule", "cpu-high", None, 10.0, 1)],
            ),
            (
                "raised before the window is clipped to its start",
                vec![tr(1, "u1", 0, &[cpu]), tr(2, "u1", 405, &[])],
                vec![("rule", "cpu-high", None, 5.0, 1)],
            ),
            (
                "ended before the window counts nothing",
                vec![tr(1, "u1", 0, &[cpu]), tr(2, "u1", 1, &[])],
                vec![],
            ),
            (
                "a second reason joins without ending the first",
                vec![
                    tr(1, "u1", 900, &[cpu]),
                    tr(2, "u1", 950, &[cpu, mem]),
                    tr(3, "u1", 960, &[mem]),
                    tr(4, "u1", 970, &[]),
                ],
                vec![
                    ("rule", "cpu-high", None, 60.0, 1),
                    ("rule", "memory-high", None, 20.0, 1),
                ],
            ),
            (
                "units add up and ties sort by rule",
                vec![
                    tr(1, "u1", 990, &[mem]),
                    tr(2, "u2", 990, &[mem]),
                    tr(3, "u3", 980, &[cpu]),
                ],
                vec![
                    ("rule", "cpu-high", None, 20.0, 1),
                    ("rule", "memory-high", None, 20.0, 2),
                ],
            ),
            (
                "probe reasons count under the probe, across agencies",
                vec![
                    tr(1, "a/u1", 940, &[cad]),
                    tr(2, "b/u1", 970, &[cad, cpu]),
                    tr(3, "b/u1", 980, &[cpu]),
                ],
                vec![
                    ("probe", "cad-slow", Some("cad-api"), 70.0, 2),
                    ("rule", "cpu-high", None, 30.0, 1),
                ],
            ),
            (
                "events out of order are ordered by id",
                vec![tr(2, "u1", 930, &[]), tr(1, "u1", 900, &[cpu])],
                vec![("rule", "cpu-high", None, 30.0, 1)],
            ),
        ];
        for (name, events, want) in cases {
            let got = rank(NOW, WINDOW, &events);
            let want: Vec<_> = want
                .into_iter()
                .map(|(c, r, p, m, u)| (c.to_owned(), r.to_owned(), p.map(str::to_owned), m, u))
                .collect();
            assert_eq!(rows(&got), want, "{name}");
        }
    }

    #[test]
    fn probe_targets_come_from_incidents_of_the_same_agency() {
        let inc = ("incident", r#"probe["cad-api"]"#);
        let events = vec![
            incident(1, "a", "cad-api", "https://cad-a/health"),
            tr(2, "a/u1", 990, &[inc]),
            tr(3, "b/u1", 990, &[inc]),
        ];
        let got = rank(NOW, WINDOW, &events);
        let targets: Vec<_> = got
            .iter()
            .map(|p| (p.target.clone(), p.agencies.clone(), p.unit_minutes))
            .collect();
        assert_eq!(
            targets,
            vec![
                (None, vec!["b".to_string()], 10.0),
                (
                    Some("https://cad-a/health".to_string()),
                    vec!["a".to_string()],
                    10.0
                ),
            ]
        );
    }

    #[test]
    fn off_minutes_are_not_degraded() {
        // u1: cpu-high from minute 900; off (with the flag still listed
        // underneath) from 930 to 960; then the flag alone until now.
        let mut off = tr(
            2,
            "u1",
            930,
            &[("off", "presence"), ("cpu-high", "cpu.total")],
        );
        if let Change::Transition(t) = &mut off.change {
            t.to = Status::Off;
            t.reasons[0].severity = Severity::Info;
        }
        let events = vec![
            tr(1, "u1", 900, &[("cpu-high", "cpu.total")]),
            off,
            tr(3, "u1", 960, &[("cpu-high", "cpu.total")]),
        ];
        let got = rank(NOW, WINDOW, &events);
        assert_eq!(got.len(), 1, "{got:#?}");
        assert_eq!(
            (got[0].rule.as_str(), got[0].unit_minutes),
            ("cpu-high", 30.0 + 40.0)
        );
    }

    #[test]
    fn probe_names_parse() {
        assert_eq!(
            probe_of(r#"probe["cad-api"].total_ms"#).as_deref(),
            Some("cad-api")
        );
        assert_eq!(
            probe_of(r#"probe["a \"q\""].ttfb_ms"#).as_deref(),
            Some("a \"q\"")
        );
        assert_eq!(probe_of(r#"probe["x"]"#).as_deref(), Some("x"));
        assert_eq!(probe_of("cpu.total"), None);
        assert_eq!(probe_of(r#"probe[*].total_ms"#), None);
        assert_eq!(probe_of(r#"probe["open"#), None);
    }
}

#[cfg(test)]
mod automation_tests {
    use super::*;
    use crate::model::AutomationEvent;

    const MIN: u64 = 60_000;

    fn step(id: u64, unit: &str, rule: &str, step: AutomationStep, at_min: u64) -> StoredEvent {
        StoredEvent {
            id,
            change: Change::Automation(AutomationEvent {
                agency: "metro-fire".into(),
                unit: unit.into(),
                rule: rule.into(),
                action: "restart-cad-client".into(),
                step,
                at_ms: at_min * MIN,
                summary: String::new(),
            }),
        }
    }

    #[test]
    fn automation_is_tallied_per_rule_and_action_within_the_window() {
        use AutomationStep::*;
        let events = vec![
            // Before the window: not counted.
            step(1, "E1", "cad-client-down", Requested, 10),
            step(2, "E1", "cad-client-down", Requested, 100),
            step(3, "E1", "cad-client-down", Succeeded, 100),
            step(4, "E1", "cad-client-down", Helped, 101),
            step(5, "E2", "cad-client-down", Requested, 110),
            step(6, "E2", "cad-client-down", Failed, 110),
            step(7, "E2", "cad-client-down", Escalated, 110),
            step(8, "E3", "cad-api-failing", Suppressed, 120),
        ];
        let t = automation(180 * MIN, 120 * MIN, &events);
        assert_eq!(
            t,
            vec![
                AutomationTally {
                    rule: "cad-client-down".into(),
                    action: "restart-cad-client".into(),
                    requested: 2,
                    succeeded: 1,
                    failed: 1,
                    helped: 1,
                    escalated: 1,
                    suppressed: 0,
                },
                AutomationTally {
                    rule: "cad-api-failing".into(),
                    action: "restart-cad-client".into(),
                    requested: 0,
                    succeeded: 0,
                    failed: 0,
                    helped: 0,
                    escalated: 0,
                    suppressed: 1,
                },
            ]
        );
        assert!(automation(180 * MIN, 120 * MIN, &[]).is_empty());
    }
}
