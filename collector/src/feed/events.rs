//! `/api/v1/events` (transitions and incident changes, newest first) and
//! `/api/v1/incidents`.

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
use crate::model::Incident;
use crate::store::EventQuery;

pub async fn list(
    State(st): State<FeedState>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let scope = st.auth.authenticate(&headers)?;
    let q = Params::from(q)?;
    q.only(&["agency", "unit", "limit", "cursor"])?;
    let limit = q.limit()?;
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
            return Ok(Json(Page::<EventView> {
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
    let before_id =
        match q.str("cursor") {
            Some(c) => Some(digits(c).ok_or_else(|| {
                ApiError::bad_request("cursor: not a cursor this endpoint gave out")
            })?),
            None => None,
        };
    let store = st.shared.store.clone();
    let query = EventQuery {
        agency,
        unit,
        before_id,
        limit,
    };
    let (events, more) = tokio::task::spawn_blocking(move || store.events(&query))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))?;
    let next_cursor = if more {
        events.last().map(|e| e.id.to_string())
    } else {
        None
    };
    let page = Page {
        items: events.iter().map(EventView::from).collect::<Vec<_>>(),
        next_cursor,
    };
    Ok(Json(page).into_response())
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
