//! `/api/v1/units`, one unit, and its samples.

use std::collections::HashMap;
use std::ops::Bound;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use muster_proto::UnitId;

use super::FeedState;
use super::error::ApiError;
use super::query::Params;
use super::views::{BootView, Page, SampleView, UnitDetail, UnitView};
use crate::model::Status;
use crate::selector::LabelSelector;
use crate::store::rollup::{self, Resolution, Rollup};
use crate::store::{SampleCursor, SampleQuery};

fn parse_status(s: &str) -> Result<Status, ApiError> {
    Status::parse(s).ok_or_else(|| {
        ApiError::bad_request(format!(
            "status: {s:?} is not one of ok, off, degraded, overdue, critical, lost (or offline, the old name of lost)"
        ))
    })
}

/// The unit's record as the collector knows it, or 404.
pub(super) fn known_unit(
    st: &FeedState,
    id: &muster_proto::UnitId,
) -> Result<std::sync::Arc<crate::store::UnitRecord>, ApiError> {
    st.shared
        .units
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no unit {id}")))
}

/// `GET /api/v1/units`: `?agency`, `?status`, and `?label=key=value`
/// (repeatable, at most [`crate::selector::MAX_TERMS`]; a unit must carry
/// every one).
pub async fn list(
    State(st): State<FeedState>,
    headers: HeaderMap,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Page<UnitView>>, ApiError> {
    let scope = st.auth.authenticate(&headers)?;
    let (q, label_terms) = Params::with_repeated(q, "label")?;
    q.only(&["agency", "status", "label", "limit", "cursor"])?;
    let labels = LabelSelector::parse(label_terms.iter().map(String::as_str))
        .map_err(|e| ApiError::bad_request(format!("label: {e}")))?;
    let limit = q.limit()?;
    let agency = q.str("agency");
    if let Some(a) = agency {
        scope.check(a)?;
    }
    let status = q.str("status").map(parse_status).transpose()?;
    let after = q.unit_cursor()?;
    let units = st.shared.units.read().unwrap_or_else(|e| e.into_inner());
    let start = match &after {
        Some(c) => Bound::Excluded(c),
        None => Bound::Unbounded,
    };
    let mut items = Vec::new();
    let mut next_cursor = None;
    for (id, u) in units.range::<UnitId, _>((start, Bound::Unbounded)) {
        if !scope.sees(&id.agency)
            || agency.is_some_and(|a| a != id.agency)
            || status.is_some_and(|s| s != u.health.status)
            || !labels.matches(u.labels())
        {
            continue;
        }
        if items.len() == limit {
            next_cursor = items
                .last()
                .map(|v: &UnitView| format!("{}/{}", v.agency, v.unit));
            break;
        }
        items.push(UnitView::from(&**u));
    }
    Ok(Json(Page { items, next_cursor }))
}

fn unit_id(agency: String, unit: String) -> Result<UnitId, ApiError> {
    UnitId::new(agency, unit).map_err(|e| ApiError::bad_request(format!("unit: {e}")))
}

pub async fn detail(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path((agency, unit)): Path<(String, String)>,
) -> Result<Json<UnitDetail>, ApiError> {
    let scope = st.auth.authenticate(&headers)?;
    scope.check(&agency)?;
    let id = unit_id(agency, unit)?;
    let rec = known_unit(&st, &id)?;
    let store = st.shared.store.clone();
    let latest = tokio::task::spawn_blocking(move || store.latest(&id))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))?;
    let mut boots: Vec<_> = rec.seq.boots.iter().collect();
    boots.sort_by_key(|b| std::cmp::Reverse(b.order));
    Ok(Json(UnitDetail {
        unit: UnitView::from(&*rec),
        boots: boots.into_iter().map(BootView::from).collect(),
        latest: latest.into(),
    }))
}

pub async fn samples(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path((agency, unit)): Path<(String, String)>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let scope = st.auth.authenticate(&headers)?;
    scope.check(&agency)?;
    let id = unit_id(agency, unit)?;
    let q = Params::from(q)?;
    q.only(&["since", "until", "kind", "limit", "cursor", "resolution"])?;
    let now = st.clock.now_ms();
    let limit = q.limit()?;
    let since = q.time("since", now)?;
    let rolled_kind = q.str("kind").is_none_or(|k| k == "host" || k == "probe");
    let auto = q.str("resolution").is_none_or(|r| r == "auto");
    let resolution = match q.str("resolution").unwrap_or("auto") {
        "raw" => None,
        "minute" => Some(Resolution::Minute),
        "hour" => Some(Resolution::Hour),
        // Status and presence records are never rolled up.
        "auto" if !rolled_kind => None,
        "auto" => rollup::auto_resolution(since, now, &st.retention),
        other => {
            return Err(ApiError::bad_request(format!(
                "resolution: {other:?} is not one of raw, minute, hour, auto"
            )));
        }
    };
    let since_ms = since.unwrap_or(0);
    let until_ms = q.time("until", now)?.unwrap_or(u64::MAX);
    let kind = q.str("kind").map(str::to_owned);
    if let Some(k) = &kind
        && ![
            "host", "probe", "status", "presence", "facts", "config", "action",
        ]
        .contains(&k.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "kind: {k:?} is not one of host, probe, status, presence, facts, config, action"
        )));
    }
    if let Some(res) = resolution {
        let until = q.time("until", now)?;
        let cursor = q.str("cursor");
        if let Some(page) =
            rollups(&st, &id, res, since_ms, until, &kind, cursor, limit, auto).await?
        {
            return Ok(page);
        }
    }
    let after = q
        .str("cursor")
        .map(|c| {
            SampleCursor::decode(c)
                .map_err(|_| ApiError::bad_request("cursor: not a cursor this endpoint gave out"))
        })
        .transpose()?;
    if !st
        .shared
        .units
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(&id)
    {
        return Err(ApiError::not_found(format!("no unit {id}")));
    }
    let store = st.shared.store.clone();
    let (items, next) = tokio::task::spawn_blocking(move || {
        // With a kind filter, read pages until the page is full.
        let mut out = Vec::new();
        let mut cursor = after;
        loop {
            let (batch, next) = store.samples(
                &id,
                SampleQuery {
                    since_ms,
                    until_ms,
                    after: cursor,
                    limit,
                },
            )?;
            for s in batch {
                if out.len() == limit {
                    return Ok((out, cursor));
                }
                let consumed = SampleCursor {
                    at_ms: s.at_ms,
                    boot: s.boot.0,
                    seq: s.seq,
                };
                if kind.as_deref().is_none_or(|k| s.payload.kind_name() == k) {
                    out.push(s);
                }
                cursor = Some(consumed);
            }
            if next.is_none() {
                return Ok((out, None));
            }
            if out.len() == limit {
                return Ok((out, next));
            }
        }
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(|e: crate::store::StoreError| ApiError::internal(&e))?;
    Ok(Json(Page {
        items: items.into_iter().map(SampleView::from).collect(),
        next_cursor: next.map(|c| c.encode()),
    })
    .into_response())
}

/// A page of rollups (`samples?resolution=minute|hour`, or `auto` for a
/// range past raw retention). Its cursor has the raw listing's form
/// (`start.0.0`).
/// `auto` with no rollups in the range yet (nothing rolled so far) serves
/// the raw records instead.
#[derive(Debug, serde::Serialize)]
pub struct RollupPage {
    pub resolution: &'static str,
    pub items: Vec<Rollup>,
    pub next_cursor: Option<String>,
}

#[allow(clippy::too_many_arguments)]
async fn rollups(
    st: &FeedState,
    id: &UnitId,
    res: Resolution,
    since_ms: u64,
    until_ms: Option<u64>,
    kind: &Option<String>,
    cursor: Option<&str>,
    limit: usize,
    auto: bool,
) -> Result<Option<Response>, ApiError> {
    // The same cursor form as raw listings: a rollup page continues after
    // the cursor's time, so a cursor of either listing works in both.
    let after = cursor
        .map(|c| {
            SampleCursor::decode(c)
                .map_err(|_| ApiError::bad_request("cursor: not a cursor this endpoint gave out"))
        })
        .transpose()?
        .map(|c| c.at_ms.saturating_add(1));
    if !st
        .shared
        .units
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(id)
    {
        return Err(ApiError::not_found(format!("no unit {id}")));
    }
    // A rollup covers its whole minute or hour: one that starts before
    // `since` but overlaps it is included.
    let from = after.unwrap_or(rollup::floor(since_ms, res.step_ms()));
    let until = until_ms.unwrap_or(u64::MAX);
    let store = st.shared.store.clone();
    let unit = id.clone();
    let (mut items, more) =
        tokio::task::spawn_blocking(move || store.rollups(&unit, res, from, until, limit))
            .await
            .map_err(|e| ApiError::internal(&e))?
            .map_err(|e| ApiError::internal(&e))?;
    if auto && after.is_none() && items.is_empty() {
        return Ok(None);
    }
    let rolled = kind.as_deref().is_none_or(|k| k == "host" || k == "probe");
    let next_cursor = if more && rolled {
        items.last().map(|r| {
            SampleCursor {
                at_ms: r.start_ms,
                boot: 0,
                seq: 0,
            }
            .encode()
        })
    } else {
        None
    };
    match kind.as_deref() {
        Some("host") => items.iter_mut().for_each(|r| r.probes.clear()),
        Some("probe") => items.iter_mut().for_each(|r| r.host = None),
        // Status and presence records have no rollups.
        Some(_) => items.clear(),
        None => {}
    }
    Ok(Some(
        Json(RollupPage {
            resolution: res.name(),
            items,
            next_cursor,
        })
        .into_response(),
    ))
}
