//! `/api/v1/events` (transitions, incident changes, rollout steps and action
//! steps, newest first) and `/api/v1/incidents`.
//!
//! Action steps (`crate::actions`) are stored apart from the rules' changes
//! but take their ids from the same sequence, so a page is the two
//! listings merged by id ([`merge`]): `?unit=` gives a unit's transitions
//! and its action steps.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use muster_proto::UnitId;

use super::FeedState;
use super::auth::Scope;
use super::error::ApiError;
use super::query::{Params, digits};
use super::views::{EventView, Page};
use crate::actions::{ActionView, StoredAction};
use crate::model::Incident;
use crate::store::{ActionQuery, EventQuery, StoredEvent};

/// One item of `/api/v1/events`: `{"id", "type", ...}`.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum EventItem<'a> {
    Change(EventView<'a>),
    Action(ActionView<'a>),
}

impl EventItem<'_> {
    pub fn id(&self) -> u64 {
        match self {
            EventItem::Change(e) => e.id,
            EventItem::Action(a) => a.id,
        }
    }
}

/// Two newest-first pages (each of at most `limit`, with whether more
/// remain) as one newest-first page of at most `limit`, and whether more
/// remain. Pure.
pub fn merge<'a>(
    (events, more_events): (&'a [StoredEvent], bool),
    (actions, more_actions): (&'a [StoredAction], bool),
    limit: usize,
) -> (Vec<EventItem<'a>>, bool) {
    let (mut e, mut a) = (events.iter().peekable(), actions.iter().peekable());
    let mut out = Vec::with_capacity(limit.min(events.len() + actions.len()));
    while out.len() < limit {
        let take_event = match (e.peek(), a.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(x), Some(y)) => x.id > y.id,
        };
        out.push(if take_event {
            EventItem::Change(EventView::from(e.next().expect("peeked")))
        } else {
            EventItem::Action(ActionView::from(a.next().expect("peeked")))
        });
    }
    let left = e.peek().is_some() || a.peek().is_some();
    (out, more_events || more_actions || left)
}

pub async fn list(
    State(st): State<FeedState>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let scope = st.auth.authenticate(&headers)?;
    let q = Params::from(q)?;
    q.only(&["agency", "unit", "limit", "cursor"])?;
    let limit = q.limit()?;
    let before_id =
        match q.str("cursor") {
            Some(c) => Some(digits(c).ok_or_else(|| {
                ApiError::bad_request("cursor: not a cursor this endpoint gave out")
            })?),
            None => None,
        };
    let unit = match q.str("unit") {
        Some(s) => Some(
            s.split_once('/')
                .and_then(|(a, u)| UnitId::new(a, u).ok())
                .ok_or_else(|| ApiError::bad_request(format!("unit: {s:?} is not agency/unit")))?,
        ),
        None => None,
    };
    if let Some(u) = &unit {
        scope.check(&u.agency)?;
        let known = st
            .shared
            .units
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(u);
        if !known {
            return Err(ApiError::not_found(format!("no unit {u}")));
        }
    }
    let mut agency = q.str("agency").map(str::to_owned);
    if let Some(u) = &unit {
        scope.check(&u.agency)?;
        if agency.as_ref().is_some_and(|a| *a != u.agency) {
            // Both filters: no event is of both.
            scope.check(agency.as_deref().unwrap_or_default())?;
            return Ok(Json(Page::<EventItem> {
                items: Vec::new(),
                next_cursor: None,
            })
            .into_response());
        }
        agency = Some(u.agency.clone());
    }
    match (&scope, &agency) {
        (_, Some(a)) => scope.check(a)?,
        (Scope::Agency(a), None) => agency = Some(a.clone()),
        (Scope::Admin, None) => {}
    }
    let store = st.shared.store.clone();
    let query = EventQuery {
        agency: agency.clone(),
        unit: unit.clone(),
        before_id,
        limit,
    };
    let actions = ActionQuery {
        agency,
        unit,
        before_id,
        since_ms: 0,
        limit,
    };
    let (events, actions) = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::store::StoreError>((store.events(&query)?, store.actions(&actions)?))
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(|e| ApiError::internal(&e))?;
    let (items, more) = merge((&events.0, events.1), (&actions.0, actions.1), limit);
    let next_cursor = if more {
        items.last().map(|e| e.id().to_string())
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }).into_response())
}

/// Incidents newest first; `?state=open|ended|all` (default all).
pub async fn incidents(
    State(st): State<FeedState>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Page<Incident>>, ApiError> {
    let scope = st.auth.authenticate(&headers)?;
    let q = Params::from(q)?;
    q.only(&["agency", "state", "limit", "cursor"])?;
    let limit = q.limit()?;
    let agency = q.str("agency");
    if let Some(a) = agency {
        scope.check(a)?;
    }
    let state = q.str("state").unwrap_or("all");
    if !["open", "ended", "all"].contains(&state) {
        return Err(ApiError::bad_request(format!(
            "state: {state:?} is not one of open, ended, all"
        )));
    }
    // Cursor: `{since_ms}.{id}` of the last incident returned.
    let after = match q.str("cursor") {
        Some(c) => Some(
            c.split_once('.')
                .and_then(|(t, id)| Some((digits(t)?, id.to_owned())))
                .ok_or_else(|| {
                    ApiError::bad_request("cursor: not a cursor this endpoint gave out")
                })?,
        ),
        None => None,
    };
    let all = st
        .shared
        .incidents
        .read()
        .unwrap_or_else(|e| e.into_inner());
    let mut list: Vec<&Incident> = all
        .values()
        .filter(|i| scope.sees(&i.agency) && agency.is_none_or(|a| a == i.agency))
        .filter(|i| match state {
            "open" => i.ended_ms.is_none(),
            "ended" => i.ended_ms.is_some(),
            _ => true,
        })
        .collect();
    // Newest first: since_ms descending, then id.
    let key = |i: &Incident| (std::cmp::Reverse(i.since_ms), i.id.clone());
    list.sort_by_key(|i| key(i));
    let start = match &after {
        Some((t, id)) => {
            let k = (std::cmp::Reverse(*t), id.clone());
            list.partition_point(|i| key(i) <= k)
        }
        None => 0,
    };
    let page: Vec<Incident> = list[start..]
        .iter()
        .take(limit)
        .map(|i| (*i).clone())
        .collect();
    let next_cursor = if start + page.len() < list.len() {
        page.last().map(|i| format!("{}.{}", i.since_ms, i.id))
    } else {
        None
    };
    Ok(Json(Page {
        items: page,
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::{ActionEvent, Step};
    use crate::model::{Change, RolloutEvent};

    fn ev(id: u64) -> StoredEvent {
        StoredEvent {
            id,
            change: Change::Rollout(RolloutEvent {
                rollout: "r1".into(),
                name: "n".into(),
                agency: "a".into(),
                step: "started".into(),
                wave: 1,
                waves: 1,
                phase: "applying".into(),
                at_ms: id,
                summary: String::new(),
            }),
        }
    }

    fn act(id: u64) -> StoredAction {
        StoredAction {
            id,
            event: ActionEvent::denied(
                &muster_proto::UnitId::new("a", "E1").unwrap(),
                "viewer:a",
                None,
                "viewer",
                id,
            ),
        }
    }

    #[test]
    fn two_newest_first_pages_merge_by_id_and_say_whether_more_remain() {
        // (events, more), (actions, more), limit -> (ids, kinds, more)
        type Case = (
            Vec<u64>,
            bool,
            Vec<u64>,
            bool,
            usize,
            Vec<u64>,
            &'static str,
            bool,
        );
        let cases: Vec<Case> = vec![
            (vec![], false, vec![], false, 5, vec![], "", false),
            (
                vec![9, 4],
                false,
                vec![7, 3],
                false,
                5,
                vec![9, 7, 4, 3],
                "eaea",
                false,
            ),
            (
                vec![9, 4],
                false,
                vec![7, 3],
                false,
                3,
                vec![9, 7, 4],
                "eae",
                true,
            ),
            (vec![9, 4], true, vec![], false, 2, vec![9, 4], "ee", true),
            (vec![], false, vec![8, 6], true, 2, vec![8, 6], "aa", true),
            (
                vec![2],
                false,
                vec![8, 6, 5],
                false,
                3,
                vec![8, 6, 5],
                "aaa",
                true,
            ),
            (vec![10], false, vec![8], false, 1, vec![10], "e", true),
        ];
        for (e, me, a, ma, limit, ids, kinds, more) in cases {
            let events: Vec<StoredEvent> = e.iter().map(|&i| ev(i)).collect();
            let actions: Vec<StoredAction> = a.iter().map(|&i| act(i)).collect();
            let (items, got_more) = merge((&events, me), (&actions, ma), limit);
            let got: Vec<u64> = items.iter().map(EventItem::id).collect();
            let got_kinds: String = items
                .iter()
                .map(|i| match i {
                    EventItem::Change(_) => 'e',
                    EventItem::Action(_) => 'a',
                })
                .collect();
            assert_eq!(
                (got, got_kinds.as_str(), got_more),
                (ids, kinds, more),
                "{e:?} {a:?} {limit}"
            );
        }
        let v = serde_json::to_value(merge((&[], false), (&[act(3)], false), 1).0).unwrap();
        assert_eq!(v[0]["type"], "action");
        assert_eq!(v[0]["step"], Step::Denied.as_str());
        assert_eq!(v[0]["id"], 3);
    }
}
