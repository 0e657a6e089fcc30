//! `GET /api/v1/units/{agency}/{unit}/timeline?hours=24`: the unit's last
//! hours as a strip of segments `{from_ms, to_ms, state, net_kind}`.
//!
//! Contract:
//! * `state` is `on` (ok), `off` (announced shutdown or stop), `asleep`
//!   (announced sleep), `overdue`, `degraded`, `critical` or `lost`, from
//!   the unit's stored transitions in the window and the status it had
//!   before the window (the newest transition before it; with none stored,
//!   the oldest transition's `from`, or the current status).
//! * `net_kind` (`ethernet`, `wifi`, `cellular`, `vpn`, `other`) is the
//!   default route's kind from the host samples in the window, sampled once
//!   per [`NET_BUCKETS`]th of the window (the first host sample of each
//!   bucket); `null` before the first one, when the unit has no default
//!   route, and while the unit is `off`, `asleep`, `overdue` or `lost` (no
//!   data is measured then).
//! * Bounded: at most [`MAX_EVENTS`] transitions are read, at most
//!   [`NET_BUCKETS`] × [`BUCKET_SAMPLES`] samples, and at most
//!   [`MAX_SEGMENTS`] segments come out: adjacent equal segments merge, and
//!   when there are still too many, segments shorter than the window /
//!   `MAX_SEGMENTS` merge into a neighbour, the worse state winning (a short
//!   outage is never hidden by the ok around it).
//!
//! The strip itself is [`strip`], pure and table-tested; the handler only
//! reads the store.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use muster_proto::{LinkKind, Payload, UnitId};
use serde::Serialize;

use super::FeedState;
use super::error::ApiError;
use super::query::{Params, digits};
use crate::model::{Change, Reason, Status};
use crate::store::{EventQuery, SampleQuery, Store, StoreError};

/// The longest window `?hours=` takes (a week).
pub const MAX_HOURS: u64 = 168;
/// The most segments a strip has.
pub const MAX_SEGMENTS: usize = 300;
/// Transitions read at most (newest first).
pub const MAX_EVENTS: usize = 5_000;
/// The window is cut into this many buckets for the network kind.
pub const NET_BUCKETS: u64 = 288;
/// Samples read per bucket, looking for a host sample.
pub const BUCKET_SAMPLES: usize = 16;

/// What the unit was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StripState {
    On,
    Off,
    Asleep,
    Degraded,
    Overdue,
    Critical,
    Lost,
}

impl StripState {
    /// A unit's status as a strip state: `off` with a sleep announcement is
    /// `asleep`.
    pub fn of(status: Status, reasons: &[Reason]) -> StripState {
        match status {
            Status::Ok => StripState::On,
            Status::Off if reasons.iter().any(is_sleep) => StripState::Asleep,
            Status::Off => StripState::Off,
            Status::Degraded => StripState::Degraded,
            Status::Overdue => StripState::Overdue,
            Status::Critical => StripState::Critical,
            Status::Lost => StripState::Lost,
        }
    }

    /// Is the unit measuring (so a network kind means something)?
    fn connected(self) -> bool {
        matches!(
            self,
            StripState::On | StripState::Degraded | StripState::Critical
        )
    }
}

/// The `off` reason of a sleep announcement: the engine's `off` Reason
/// names the presence reason in its field (`presence.sleep`).
fn is_sleep(r: &Reason) -> bool {
    r.rule == "off" && r.field == "presence.sleep"
}

/// One piece of the strip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Segment {
    pub from_ms: u64,
    pub to_ms: u64,
    pub state: StripState,
    pub net_kind: Option<&'static str>,
}

/// The strip's inputs.
#[derive(Debug, Clone)]
pub struct StripInput {
    pub from_ms: u64,
    pub to_ms: u64,
    /// The state at `from_ms`.
    pub before: StripState,
    /// State changes `(at_ms, to)`, in the order they happened (times
    /// outside the window are clamped to it).
    pub changes: Vec<(u64, StripState)>,
    /// Network kind from `at_ms` on (`None`: no default route).
    pub net: Vec<(u64, Option<LinkKind>)>,
    pub max_segments: usize,
}

/// The strip: contiguous segments covering `[from_ms, to_ms)`, merged and
/// bounded (see the module's contract).
pub fn strip(input: &StripInput) -> Vec<Segment> {
    let (from, to) = (input.from_ms, input.to_ms.max(input.from_ms));
    if from == to {
        return Vec::new();
    }
    // Every point where something changes, in time order; a state change
    // and a net change at the same time both apply.
    enum Ev {
        State(StripState),
        Net(Option<LinkKind>),
    }
    let mut evs: Vec<(u64, usize, Ev)> = Vec::new();
    let mut newest = from;
    for (i, (at, s)) in input.changes.iter().enumerate() {
        // Event times may step back a little (agent clocks): never before
        // the previous change.
        newest = newest.max((*at).clamp(from, to));
        evs.push((newest, i, Ev::State(*s)));
    }
    let base = evs.len();
    for (i, (at, k)) in input.net.iter().enumerate() {
        evs.push(((*at).clamp(from, to), base + i, Ev::Net(*k)));
    }
    evs.sort_by_key(|(at, i, _)| (*at, *i));

    let mut out: Vec<Segment> = Vec::new();
    let (mut state, mut net, mut start) = (input.before, None, from);
    let emit = |out: &mut Vec<Segment>, a: u64, b: u64, s: StripState, n: Option<LinkKind>| {
        if b <= a {
            return;
        }
        let net_kind = if s.connected() {
            n.map(LinkKind::as_str)
        } else {
            None
        };
        match out.last_mut() {
            Some(l) if l.state == s && l.net_kind == net_kind && l.to_ms == a => l.to_ms = b,
            _ => out.push(Segment {
                from_ms: a,
                to_ms: b,
                state: s,
                net_kind,
            }),
        }
    };
    for (at, _, ev) in evs {
        emit(&mut out, start, at, state, net);
        start = start.max(at);
        match ev {
            Ev::State(s) => state = s,
            Ev::Net(k) => net = k,
        }
    }
    emit(&mut out, start, to, state, net);
    bound(out, from, to, input.max_segments.max(1))
}

/// Merges short segments until at most `max` remain.
fn bound(segs: Vec<Segment>, from: u64, to: u64, max: usize) -> Vec<Segment> {
    if segs.len() <= max {
        return segs;
    }
    // A segment shorter than `min` absorbs the ones after it until it is
    // long enough, so every segment but the last is at least `min` long:
    // at most (to - from) / min + 1 <= max remain.
    let min = (to - from).div_ceil(max.saturating_sub(1).max(1) as u64);
    let mut out: Vec<Segment> = Vec::with_capacity(max);
    for s in segs {
        match out.last_mut() {
            Some(l)
                if l.to_ms - l.from_ms < min || (l.state, l.net_kind) == (s.state, s.net_kind) =>
            {
                if s.to_ms - s.from_ms > l.to_ms - l.from_ms {
                    l.net_kind = s.net_kind;
                }
                l.state = l.state.max(s.state);
                l.to_ms = s.to_ms;
            }
            _ => out.push(s),
        }
    }
    // Absorbing made neighbours equal again.
    let mut merged: Vec<Segment> = Vec::with_capacity(out.len());
    for s in out {
        match merged.last_mut() {
            Some(l) if (l.state, l.net_kind) == (s.state, s.net_kind) => l.to_ms = s.to_ms,
            _ => merged.push(s),
        }
    }
    merged
}

/// The response.
#[derive(Debug, Serialize)]
pub struct TimelineView {
    pub agency: String,
    pub unit: String,
    /// The window: `hours` back from now, but not before the unit was
    /// first seen.
    pub from_ms: u64,
    pub to_ms: u64,
    pub segments: Vec<Segment>,
}

/// What the store gives the strip: the state before the window, the
/// changes in it (oldest first) and the network points.
type Inputs = (
    StripState,
    Vec<(u64, StripState)>,
    Vec<(u64, Option<LinkKind>)>,
);

fn read_inputs(
    store: &dyn Store,
    id: &UnitId,
    from_ms: u64,
    to_ms: u64,
    current: StripState,
) -> Result<Inputs, StoreError> {
    let mut changes = Vec::new();
    let mut before = None;
    let mut oldest_from = None;
    let mut before_id = None;
    let mut read = 0;
    'pages: while read < MAX_EVENTS {
        let (page, more) = store.events(&EventQuery {
            agency: Some(id.agency.clone()),
            unit: Some(id.clone()),
            before_id,
            limit: 500.min(MAX_EVENTS - read),
        })?;
        for e in &page {
            read += 1;
            before_id = Some(e.id);
            let Change::Transition(t) = &e.change else {
                continue;
            };
            if t.at_ms < from_ms {
                before = Some(StripState::of(t.to, &t.reasons));
                break 'pages;
            }
            oldest_from = Some(StripState::of(t.from, &[]));
            changes.push((t.at_ms, StripState::of(t.to, &t.reasons)));
        }
        if !more || page.is_empty() {
            break;
        }
    }
    changes.reverse();
    let before = before.or(oldest_from).unwrap_or(current);

    let mut net = Vec::new();
    let width = (to_ms - from_ms).div_ceil(NET_BUCKETS).max(1);
    let mut at = from_ms;
    while at < to_ms {
        let end = (at + width).min(to_ms);
        let (page, _) = store.samples(
            id,
            SampleQuery {
                since_ms: at,
                until_ms: end - 1,
                after: None,
                limit: BUCKET_SAMPLES,
            },
        )?;
        if let Some((t, h)) = page.iter().find_map(|s| match &s.payload {
            Payload::Host(h) => Some((s.at_ms, h)),
            _ => None,
        }) {
            // A v1 agent's sample says nothing about the network.
            if let Some(n) = &h.network {
                net.push((t, n.route.as_ref().map(|r| r.kind)));
            }
        }
        at = end;
    }
    Ok((before, changes, net))
}

/// `GET /api/v1/units/{agency}/{unit}/timeline?hours=24`.
pub async fn timeline(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path((agency, unit)): Path<(String, String)>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<TimelineView>, ApiError> {
    let scope = st.auth.authenticate(&headers)?;
    scope.check(&agency)?;
    let id = UnitId::new(agency, unit).map_err(|e| ApiError::bad_request(format!("unit: {e}")))?;
    let q = Params::from(q)?;
    q.only(&["hours"])?;
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
    let rec = super::units::known_unit(&st, &id)?;
    let to_ms = st.clock.now_ms();
    let from_ms = to_ms
        .saturating_sub(hours * 3_600_000)
        .max(rec.first_seen_ms.min(to_ms));
    let current = StripState::of(rec.health.status, &rec.health.reasons);
    let store = st.shared.store.clone();
    let (agency, unit) = (id.agency.clone(), id.unit.clone());
    let (before, changes, net) =
        tokio::task::spawn_blocking(move || read_inputs(&*store, &id, from_ms, to_ms, current))
            .await
            .map_err(|e| ApiError::internal(&e))?
            .map_err(|e| ApiError::internal(&e))?;
    let segments = strip(&StripInput {
        from_ms,
        to_ms,
        before,
        changes,
        net,
        max_segments: MAX_SEGMENTS,
    });
    Ok(Json(TimelineView {
        agency,
        unit,
        from_ms,
        to_ms,
        segments,
    }))
}

#[cfg(test)]
mod tests {
    use super::StripState::*;
    use super::*;
    use crate::model::Severity;

    fn seg(from_ms: u64, to_ms: u64, state: StripState, net: Option<&'static str>) -> Segment {
        Segment {
            from_ms,
            to_ms,
            state,
            net_kind: net,
        }
    }

    fn input(
        before: StripState,
        changes: &[(u64, StripState)],
        net: &[(u64, Option<LinkKind>)],
    ) -> StripInput {
        StripInput {
            from_ms: 0,
            to_ms: 100,
            before,
            changes: changes.to_vec(),
            net: net.to_vec(),
            max_segments: 50,
        }
    }

    const CELL: Option<LinkKind> = Some(LinkKind::Cellular);
    const WIFI: Option<LinkKind> = Some(LinkKind::Wifi);

    #[test]
    fn the_strip_follows_states_and_networks() {
        let table: &[(&str, StripInput, Vec<Segment>)] = &[
            (
                "nothing happened",
                input(On, &[], &[]),
                vec![seg(0, 100, On, None)],
            ),
            (
                "off all along",
                input(Off, &[], &[(10, CELL)]),
                vec![seg(0, 100, Off, None)],
            ),
            (
                "on, then lost, then on again",
                input(On, &[(30, Lost), (60, On)], &[]),
                vec![
                    seg(0, 30, On, None),
                    seg(30, 60, Lost, None),
                    seg(60, 100, On, None),
                ],
            ),
            (
                "net kinds split an on segment, and vanish while asleep",
                input(On, &[(50, Asleep), (70, On)], &[(10, CELL), (40, WIFI)]),
                vec![
                    seg(0, 10, On, None),
                    seg(10, 40, On, Some("cellular")),
                    seg(40, 50, On, Some("wifi")),
                    seg(50, 70, Asleep, None),
                    seg(70, 100, On, Some("wifi")),
                ],
            ),
            (
                "the same kind again merges; no route is null",
                input(On, &[], &[(0, CELL), (20, CELL), (60, None)]),
                vec![seg(0, 60, On, Some("cellular")), seg(60, 100, On, None)],
            ),
            (
                "changes outside the window are clamped; same-time changes: the last wins",
                input(Off, &[(0, On), (0, Degraded), (150, Lost)], &[]),
                vec![seg(0, 100, Degraded, None)],
            ),
            (
                "an event time stepping back never reorders the strip",
                input(On, &[(50, Critical), (40, On)], &[]),
                vec![seg(0, 100, On, None)],
            ),
            (
                "overdue and critical keep or drop the network",
                input(
                    On,
                    &[(20, Critical), (40, Off), (60, Overdue)],
                    &[(0, WIFI)],
                ),
                vec![
                    seg(0, 20, On, Some("wifi")),
                    seg(20, 40, Critical, Some("wifi")),
                    seg(40, 60, Off, None),
                    seg(60, 100, Overdue, None),
                ],
            ),
        ];
        for (what, inp, want) in table {
            assert_eq!(&strip(inp), want, "{what}");
        }
    }

    #[test]
    fn an_empty_window_has_no_segments() {
        let mut i = input(On, &[], &[]);
        i.to_ms = 0;
        assert!(strip(&i).is_empty());
    }

    #[test]
    fn a_busy_unit_is_bounded_and_its_short_outages_stay_visible() {
        // 10,000 ms of flapping every 3 ms, and one 1 ms lost blip.
        let mut changes = Vec::new();
        for i in 0..3_333u64 {
            changes.push((i * 3, if i % 2 == 0 { On } else { Degraded }));
        }
        changes.push((5_000, Lost));
        changes.push((5_001, On));
        changes.sort_by_key(|c| c.0);
        let i = StripInput {
            from_ms: 0,
            to_ms: 10_000,
            before: On,
            changes,
            net: vec![],
            max_segments: 100,
        };
        let s = strip(&i);
        assert!(s.len() <= 100, "{} segments", s.len());
        assert_eq!(s.first().unwrap().from_ms, 0);
        assert_eq!(s.last().unwrap().to_ms, 10_000);
        for w in s.windows(2) {
            assert_eq!(w[0].to_ms, w[1].from_ms, "contiguous");
        }
        // The blip shows, in a piece about a hundredth of the window wide
        // (not the whole strip); the flapping shows as degraded.
        let lost: Vec<_> = s.iter().filter(|x| x.state == Lost).collect();
        assert_eq!(lost.len(), 1, "{s:?}");
        assert!(lost[0].to_ms - lost[0].from_ms <= 2 * 102, "{s:?}");
        assert!(lost[0].from_ms <= 5_000 && lost[0].to_ms >= 5_001, "{s:?}");
        assert_eq!(s[0].state, Degraded, "{s:?}");
    }

    fn reason(rule: &str, field: &str, message: &str) -> Reason {
        Reason {
            rule: rule.into(),
            severity: Severity::Degraded,
            field: field.into(),
            observed: None,
            threshold: None,
            since_ms: 0,
            runbook: None,
            message: message.into(),
            incident: None,
        }
    }

    #[test]
    fn off_for_sleep_is_asleep() {
        let table = [
            (Status::Ok, vec![], On),
            (
                Status::Off,
                vec![reason("off", "presence.sleep", "asleep since 14:10")],
                Asleep,
            ),
            (
                Status::Off,
                vec![reason("off", "presence.sleep", "off since 14:10")],
                Asleep,
            ),
            (
                Status::Off,
                vec![reason(
                    "off",
                    "presence.shutdown",
                    "shut down 18:02 (OS shutdown)",
                )],
                Off,
            ),
            (Status::Off, vec![], Off),
            (
                Status::Lost,
                vec![reason("lost.will", "presence", "lost contact")],
                Lost,
            ),
            (Status::Overdue, vec![], Overdue),
            (Status::Degraded, vec![], Degraded),
            (Status::Critical, vec![], Critical),
        ];
        for (status, reasons, want) in table {
            assert_eq!(
                StripState::of(status, &reasons),
                want,
                "{status:?} {reasons:?}"
            );
        }
    }
}
