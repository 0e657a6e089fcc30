//! The enrolment endpoints.
//!
//! | endpoint | token | answers |
//! |---|---|---|
//! | `POST /api/v1/enroll` | an agency's `enroll_token` | 201 active (+ `collector_keys`), 202 pending, 200 repeat, 400, 401, 403, 409, 413, 429 |
//! | `GET /api/v1/enrollments?state&agency` | admin | the enrolments (paginated) |
//! | `POST /api/v1/enrollments/{agency}/{unit}/approve` | admin | 200, 404, 409 (revoked) |
//! | `POST /api/v1/enrollments/{agency}/{unit}/revoke` | admin | 200, 404 |
//!
//! A feed or admin token on the claim endpoint is 403 (a known token, the
//! wrong purpose); an enrol token anywhere else is unknown (401). Every
//! claim and change is counted in `muster_enrollments_total{agency,result}`;
//! a change is an info log line with fields; a refusal a rate-limited warn.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use muster_proto::UnitId;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::registry::{EnrollState, Enrollment, Outcome, RegistryError, is_sha256_hex};
use crate::feed::views::Page;
use crate::feed::{ApiError, FeedState, Params, bearer};

/// The largest claim body: a unit id and a hash fit in a tenth of it.
pub const MAX_BODY_BYTES: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    unit: String,
    credential_sha256: String,
}

#[derive(Debug, Serialize)]
pub struct ClaimAnswer {
    state: EnrollState,
    /// Only when active: the keys the agent trusts for signed acks.
    #[serde(skip_serializing_if = "Option::is_none")]
    collector_keys: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct EnrollmentView {
    agency: String,
    unit: String,
    state: EnrollState,
    fingerprint: String,
    created_ms: u64,
    updated_ms: u64,
}

impl From<&Enrollment> for EnrollmentView {
    fn from(e: &Enrollment) -> Self {
        EnrollmentView {
            agency: e.unit.agency.clone(),
            unit: e.unit.unit.clone(),
            state: e.state,
            fingerprint: e.fingerprint().to_owned(),
            created_ms: e.created_ms,
            updated_ms: e.updated_ms,
        }
    }
}

fn count(st: &FeedState, agency: &str, o: Outcome) {
    st.shared.metrics.enroll.count(agency, o);
}

/// Counts a refused claim and logs it, rate-limited per kind.
fn refuse(st: &FeedState, unit: &str, agency: &str, o: Outcome, why: &dyn std::fmt::Display) {
    count(st, agency, o);
    if let Some(suppressed) = st.enroll.admit_log(o, st.clock.now_ms()) {
        warn!(agency, unit, result = o.as_str(), suppressed, reason = %why, "Enrolment refused.");
    }
}

fn unauthorized(st: &FeedState, e: ApiError) -> ApiError {
    let m = &st.shared.metrics.stream;
    if e.status == StatusCode::FORBIDDEN {
        m.http_forbidden.fetch_add(1, Ordering::Relaxed);
    } else {
        m.http_unauthorized.fetch_add(1, Ordering::Relaxed);
    }
    e
}

/// `POST /api/v1/enroll`.
pub async fn claim(
    State(st): State<FeedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<ClaimAnswer>), ApiError> {
    let token = bearer(&headers).map_err(|e| unauthorized(&st, e))?;
    let Some((agency, mode)) = st.enroll.agency_of(token) else {
        let e = if st.auth.scope_of(token).is_some() {
            ApiError::forbidden("this endpoint takes an agency's enroll_token")
        } else {
            ApiError::unauthorized("unknown token")
        };
        return Err(unauthorized(&st, e));
    };
    let req: ClaimBody = serde_json::from_slice(&body).map_err(|e| {
        refuse(&st, "", &agency, Outcome::Invalid, &e);
        ApiError::bad_request(format!(
            "the body must be JSON {{\"unit\", \"credential_sha256\"}}: {e}"
        ))
    })?;
    let unit = UnitId::new(agency.clone(), req.unit.clone()).map_err(|e| {
        refuse(&st, &req.unit, &agency, Outcome::Invalid, &e);
        ApiError::bad_request(format!("unit: {e}"))
    })?;
    if st.enroll.nats_ids
        && let Err(e) = crate::cluster::partition::check_id(&unit)
    {
        refuse(&st, &req.unit, &agency, Outcome::Invalid, &e);
        return Err(ApiError::bad_request(format!("unit: {e}")));
    }
    if !is_sha256_hex(&req.credential_sha256) {
        refuse(&st, &unit.unit, &agency, Outcome::Invalid, &"bad hash");
        return Err(ApiError::bad_request(
            "credential_sha256: must be 64 lowercase hex digits (the SHA-256 of the unit's secret)",
        ));
    }
    let now = st.clock.now_ms();
    let reg = Arc::clone(&st.enroll.registry);
    let (u, hash) = (unit.clone(), req.credential_sha256);
    let r = tokio::task::spawn_blocking(move || reg.claim(&u, &hash, mode, now))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let claimed = match r {
        Ok(c) => c,
        Err(e) => {
            if let Some(o) = e.outcome() {
                refuse(&st, &unit.unit, &agency, o, &e);
            }
            return Err(match e {
                RegistryError::Taken | RegistryError::RevokedCredential => {
                    ApiError::conflict(e.to_string())
                }
                RegistryError::OverLimit => ApiError::too_many_requests(
                    "too many enrolments are waiting for approval; try again later",
                ),
                other => ApiError::internal(&other),
            });
        }
    };
    let e = &claimed.enrollment;
    let (status, outcome) = match (claimed.created, e.state) {
        (false, _) => (StatusCode::OK, Outcome::Repeat),
        (true, EnrollState::Active) => (StatusCode::CREATED, Outcome::Active),
        (true, _) => (StatusCode::ACCEPTED, Outcome::Pending),
    };
    count(&st, &agency, outcome);
    if claimed.created {
        info!(
            agency = %agency,
            unit = %unit.unit,
            state = e.state.as_str(),
            fingerprint = e.fingerprint(),
            "Unit enrolled."
        );
    }
    let collector_keys =
        (e.state == EnrollState::Active).then(|| st.enroll.registry.collector_keys());
    Ok((
        status,
        Json(ClaimAnswer {
            state: e.state,
            collector_keys,
        }),
    ))
}

fn admin(st: &FeedState, headers: &HeaderMap) -> Result<(), ApiError> {
    let scope = st
        .auth
        .authenticate(headers)
        .map_err(|e| unauthorized(st, e))?;
    if scope.is_admin() {
        Ok(())
    } else {
        Err(unauthorized(
            st,
            ApiError::forbidden("enrolments need the admin token"),
        ))
    }
}

/// `GET /api/v1/enrollments?state=&agency=&limit=&cursor=`.
pub async fn list(
    State(st): State<FeedState>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Page<EnrollmentView>>, ApiError> {
    admin(&st, &headers)?;
    let q = Params::from(q)?;
    q.only(&["state", "agency", "limit", "cursor"])?;
    let limit = q.limit()?;
    let state = q
        .str("state")
        .map(|s| {
            EnrollState::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "state: {s:?} is not one of pending, active, revoked"
                ))
            })
        })
        .transpose()?;
    // A filter and a position, as on /api/v1/units: any agency (one that
    // cannot exist matches nothing), any `agency/unit` cursor.
    let agency = q.str("agency");
    let after = q.unit_cursor()?;
    let (items, last) = st
        .enroll
        .registry
        .list(state, agency, after.as_ref(), limit);
    Ok(Json(Page {
        items: items.iter().map(EnrollmentView::from).collect(),
        next_cursor: last.map(|u| format!("{}/{}", u.agency, u.unit)),
    }))
}

#[derive(Clone, Copy)]
enum Action {
    Approve,
    Revoke,
}

async fn act(
    st: FeedState,
    headers: HeaderMap,
    agency: String,
    unit: String,
    action: Action,
) -> Result<Json<EnrollmentView>, ApiError> {
    admin(&st, &headers)?;
    let id = UnitId::new(agency, unit).map_err(|e| ApiError::bad_request(format!("unit: {e}")))?;
    let now = st.clock.now_ms();
    let reg = Arc::clone(&st.enroll.registry);
    let u = id.clone();
    let r = tokio::task::spawn_blocking(move || match action {
        Action::Approve => reg.approve(&u, now),
        Action::Revoke => reg.revoke(&u, now),
    })
    .await
    .map_err(|e| ApiError::internal(&e))?;
    let (e, changed) = r.map_err(|e| match e {
        RegistryError::NotFound => ApiError::not_found(format!("no enrolment for {id}")),
        RegistryError::NotPending => ApiError::conflict(e.to_string()),
        other => ApiError::internal(&other),
    })?;
    if changed {
        let (o, msg) = match action {
            Action::Approve => (Outcome::Approved, "Enrolment approved."),
            Action::Revoke => (Outcome::Revoked, "Enrolment revoked."),
        };
        count(&st, &id.agency, o);
        info!(
            agency = %id.agency,
            unit = %id.unit,
            state = e.state.as_str(),
            fingerprint = e.fingerprint(),
            "{msg}"
        );
    }
    Ok(Json(EnrollmentView::from(&e)))
}

/// `POST /api/v1/enrollments/{agency}/{unit}/approve`.
pub async fn approve(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path((agency, unit)): Path<(String, String)>,
) -> Result<Json<EnrollmentView>, ApiError> {
    act(st, headers, agency, unit, Action::Approve).await
}

/// `POST /api/v1/enrollments/{agency}/{unit}/revoke`.
pub async fn revoke(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path((agency, unit)): Path<(String, String)>,
) -> Result<Json<EnrollmentView>, ApiError> {
    act(st, headers, agency, unit, Action::Revoke).await
}
