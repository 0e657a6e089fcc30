//! Actions' endpoints (`crate::actions`, whose contract is the rule):
//!
//! * `POST /api/v1/units/{agency}/{unit}/actions`: body `{"action":
//!   "<name>", "params": {"<name>": "<value>"}, "ttl_ms": 60000}` (params
//!   and ttl optional; at most [`MAX_BODY_BYTES`]). The admin token, or the
//!   operator token of the unit's agency: 202 `{"request": "<nonce hex>",
//!   "expires_ms": …}`. A viewer token, or another agency's operator: 403
//!   (as every endpoint answers a token asking about another agency's
//!   units; audited as a `denied` step). 404 for a unit this collector
//!   does not know, 400 for a bad body, name, parameter or validity, 413
//!   one byte over the limit, 429 with `Retry-After` past
//!   `[actions] max_pending` or the agency's `per_agency_per_min`, 501 in
//!   cluster mode. Every refusal is counted
//!   (`muster_actions_api_refused_total{reason}`) and logged rate-limited.
//! * `GET /api/v1/actions?agency&unit&since_ms&limit&cursor`: the logged
//!   steps newest first (`unit` is `agency/unit`); the admin sees all, an
//!   agency's tokens their agency's (403 for another's).
//! * `GET /api/v1/actions/export` (admin): the audit file, previous then
//!   current, as NDJSON (`application/x-ndjson`), oldest first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use muster_proto::UnitId;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tracing::warn;

use super::FeedState;
use super::auth::{Role, Scope};
use super::error::ApiError;
use super::query::{Params, digits};
use super::views::Page;
use crate::actions::request::{Body as RequestBody, RequestedBy, parse_body};
use crate::actions::{ActionError, ActionView};
use crate::ingest::refusal::RefusalLog;
use crate::metrics::actions::ApiRefusal;
use crate::store::ActionQuery;

/// A request's body at most: 16 parameters of 32-byte names and 256-byte
/// values, every byte JSON-escaped as `\u00XX`, and the rest.
pub const MAX_BODY_BYTES: usize = 32 * 1024;

/// The 202 answer.
#[derive(Debug, Serialize)]
pub struct IssuedView {
    /// The nonce, hex: how the audit names the request.
    pub request: String,
    pub expires_ms: u64,
}

/// Rate-limited log lines of refused requests: one per reason per
/// `ingest.refusal_log_interval`, with how many were suppressed.
pub type RefusalLines = Mutex<RefusalLog<ApiRefusal>>;

fn not_implemented() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "actions are issued by a single-node collector in this version",
    )
}

/// Counts and logs (rate-limited) a refusal, and answers it.
fn refuse(st: &FeedState, why: ApiRefusal, e: ApiError, retry_after_s: Option<u64>) -> Response {
    st.shared.metrics.actions.api_refused(why);
    let now = st.clock.now_ms();
    let suppressed = st
        .action_refusals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(why, now);
    if let Some(suppressed) = suppressed {
        warn!(reason = why.as_str(), status = e.status.as_u16(), suppressed, message = %e.message, "Action request refused.");
    }
    let mut r = e.into_response();
    if let Some(s) = retry_after_s
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// The action a refused body named, when it names a valid one (for the
/// audit of a denial).
fn named_action(body: &Result<Bytes, BytesRejection>) -> Option<String> {
    let b = body.as_ref().ok()?;
    let parsed: RequestBody = parse_body(b).ok()?;
    muster_proto::action::check_name(
        "action",
        &parsed.action,
        muster_proto::action::MAX_ACTION_NAME,
    )
    .ok()?;
    Some(parsed.action)
}

fn known(st: &FeedState, id: &UnitId) -> bool {
    st.shared
        .units
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(id)
}

/// `POST /api/v1/units/{agency}/{unit}/actions`.
pub async fn issue(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path((agency, unit)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let access = match st.auth.access(&headers) {
        Ok(a) => a,
        Err(e) => return refuse(&st, ApiRefusal::Unauthorized, e, None),
    };
    let Some(actions) = st.actions.clone() else {
        return refuse(&st, ApiRefusal::NotImplemented, not_implemented(), None);
    };
    let id = match UnitId::new(agency, unit) {
        Ok(id) => id,
        Err(e) => {
            let e = ApiError::bad_request(format!("unit: {e}"));
            return refuse(&st, ApiRefusal::BadRequest, e, None);
        }
    };
    let requested_by = match (&access.scope, access.role) {
        (Scope::Admin, _) => RequestedBy::Admin,
        (Scope::Agency(a), Role::Operator) if *a == id.agency => RequestedBy::Operator(a.clone()),
        (Scope::Agency(a), role) => {
            let (why, who, message) = if role == Role::Operator {
                (
                    ApiRefusal::OtherAgency,
                    format!("operator:{a}"),
                    "this token does not give access to that agency's units",
                )
            } else {
                (
                    ApiRefusal::Viewer,
                    format!("viewer:{a}"),
                    "a viewer token may not request actions; use the agency's operator token",
                )
            };
            if known(&st, &id) {
                actions.denied(
                    &id,
                    a,
                    &who,
                    named_action(&body).as_deref(),
                    why.as_str(),
                    st.clock.now_ms(),
                );
            }
            return refuse(&st, why, ApiError::forbidden(message), None);
        }
    };
    let body = match body {
        Ok(b) => b,
        Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let e = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is over {MAX_BODY_BYTES} bytes"),
            );
            return refuse(&st, ApiRefusal::TooLarge, e, None);
        }
        Err(rej) => {
            let e = ApiError::bad_request(format!("the body cannot be read: {}", rej.body_text()));
            return refuse(&st, ApiRefusal::BadRequest, e, None);
        }
    };
    if !known(&st, &id) {
        let e = ApiError::not_found(format!("no unit {id}"));
        return refuse(&st, ApiRefusal::UnknownUnit, e, None);
    }
    let req = match parse_body(&body) {
        Ok(r) => r,
        Err(m) => return refuse(&st, ApiRefusal::BadRequest, ApiError::bad_request(m), None),
    };
    let ttl = req
        .ttl_ms
        .map_or(actions.config().ttl, std::time::Duration::from_millis);
    let now = st.clock.now_ms();
    match actions.request_with_ttl(&id, &req.action, &req.params, &requested_by, ttl, now) {
        Ok(issued) => (
            StatusCode::ACCEPTED,
            Json(IssuedView {
                request: issued.request(),
                expires_ms: issued.expires_ms,
            }),
        )
            .into_response(),
        Err(e) => {
            let retry = e.retry_after_s();
            let (why, api) = match &e {
                ActionError::Invalid(m) => {
                    (ApiRefusal::BadRequest, ApiError::bad_request(m.clone()))
                }
                ActionError::UnknownUnit(_) => {
                    (ApiRefusal::UnknownUnit, ApiError::not_found(e.to_string()))
                }
                ActionError::TooManyPending { .. } => (
                    ApiRefusal::MaxPending,
                    ApiError::too_many_requests(e.to_string()),
                ),
                ActionError::RateLimited { .. } => (
                    ApiRefusal::RateLimited,
                    ApiError::too_many_requests(e.to_string()),
                ),
                ActionError::Busy => (ApiRefusal::Busy, ApiError::too_many_requests(e.to_string())),
                ActionError::Unavailable => (
                    ApiRefusal::Unavailable,
                    ApiError::unavailable(e.to_string()),
                ),
            };
            refuse(&st, why, api, retry)
        }
    }
}

/// `GET /api/v1/actions`.
pub async fn list(
    State(st): State<FeedState>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let scope = st.auth.authenticate(&headers)?;
    let q = Params::from(q)?;
    q.only(&["agency", "unit", "since_ms", "limit", "cursor"])?;
    let limit = q.limit()?;
    // Every parameter is checked before any answer (an empty one included).
    let since_ms = q.time("since_ms", st.clock.now_ms())?.unwrap_or(0);
    let before_id =
        match q.str("cursor") {
            Some(c) => Some(digits(c).ok_or_else(|| {
                ApiError::bad_request("cursor: not a cursor this endpoint gave out")
            })?),
            None => None,
        };
    let mut agency = q.str("agency").map(str::to_owned);
    let unit = match q.str("unit") {
        None => None,
        Some(s) => Some(
            s.split_once('/')
                .and_then(|(a, u)| UnitId::new(a, u).ok())
                .ok_or_else(|| ApiError::bad_request(format!("unit: {s:?} is not agency/unit")))?,
        ),
    };
    if let Some(u) = &unit {
        scope.check(&u.agency)?;
        if agency.as_ref().is_some_and(|a| *a != u.agency) {
            scope.check(agency.as_deref().unwrap_or_default())?;
            // Both filters: no step is of both.
            return Ok(Json(Page::<ActionView> {
                items: Vec::new(),
                next_cursor: None,
            })
            .into_response());
        }
    }
    if let Some(u) = &unit {
        agency = Some(u.agency.clone());
    }
    match (&scope, &agency) {
        (_, Some(a)) => scope.check(a)?,
        (Scope::Agency(a), None) => agency = Some(a.clone()),
        (Scope::Admin, None) => {}
    }
    let store = Arc::clone(&st.shared.store);
    let query = ActionQuery {
        agency,
        unit,
        before_id,
        since_ms,
        limit,
    };
    let (items, more) = tokio::task::spawn_blocking(move || store.actions(&query))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))?;
    let next_cursor = if more {
        items.last().map(|a| a.id.to_string())
    } else {
        None
    };
    Ok(Json(Page {
        items: items.iter().map(ActionView::from).collect::<Vec<_>>(),
        next_cursor,
    })
    .into_response())
}

/// `GET /api/v1/actions/export`.
pub async fn export(
    State(st): State<FeedState>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let scope = st.auth.authenticate(&headers)?;
    Params::from(q)?.only(&[])?;
    if !scope.is_admin() {
        return Err(ApiError::forbidden(
            "the action audit export needs the admin token",
        ));
    }
    let actions = st.actions.clone().ok_or_else(not_implemented)?;
    let files = tokio::task::spawn_blocking(move || actions.audit().files())
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))?;
    let readers: Vec<_> = files
        .into_iter()
        .map(|(f, len)| tokio::fs::File::from_std(f).take(len))
        .collect();
    // Each file to its length (whole lines), 64 KiB at a time.
    let chunks = stream::unfold(
        (
            readers.into_iter(),
            None::<tokio::io::Take<tokio::fs::File>>,
        ),
        |(mut rest, mut cur)| async move {
            loop {
                let r = match cur.as_mut() {
                    Some(r) => r,
                    None => {
                        cur = Some(rest.next()?);
                        continue;
                    }
                };
                let mut buf = vec![0u8; 64 * 1024];
                match r.read(&mut buf).await {
                    Ok(0) => cur = None,
                    Ok(n) => {
                        buf.truncate(n);
                        return Some((Ok::<_, std::io::Error>(Bytes::from(buf)), (rest, cur)));
                    }
                    Err(e) => return Some((Err(e), (rest, None))),
                }
            }
        },
    );
    let mut r = Response::new(Body::from_stream(chunks));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"muster-actions-audit.ndjson\""),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}
