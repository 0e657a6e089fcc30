//! `GET` / `PUT /api/v1/agencies/{agency}/automation`: an agency's kill
//! switch for automation (`crate::automation`). Reading takes any token
//! that sees the agency; changing takes the admin or the agency's
//! operator (a viewer, or another agency's operator: 403). The switch is
//! persisted before it is answered. Single node only (501 in cluster
//! mode, like actions).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::FeedState;
use super::auth::{Role, Scope};
use super::error::ApiError;

/// A body at most (`{"enabled": false}` with room to spare).
pub const MAX_BODY_BYTES: usize = 1024;

#[derive(Debug, Serialize)]
pub struct Switch {
    pub agency: String,
    /// `false`: flags still raise and escalate, nothing is requested.
    pub enabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    pub enabled: bool,
}

fn automation(st: &FeedState) -> Result<&crate::automation::Automation, ApiError> {
    st.automation.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "automation runs on a single-node collector in this version",
        )
    })
}

/// The agency must be one this collector serves, and in the token's scope.
fn agency_in_scope(st: &FeedState, scope: &Scope, agency: &str) -> Result<(), ApiError> {
    if !scope.sees(agency) {
        return Err(ApiError::forbidden(
            "this token does not give access to that agency",
        ));
    }
    if !st.auth.knows_agency(agency) {
        return Err(ApiError::not_found(format!("no agency {agency:?}")));
    }
    Ok(())
}

pub async fn get(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path(agency): Path<String>,
) -> Result<Json<Switch>, ApiError> {
    let access = st.auth.access(&headers)?;
    let a = automation(&st)?;
    agency_in_scope(&st, &access.scope, &agency)?;
    let enabled = a.enabled(&agency);
    Ok(Json(Switch { agency, enabled }))
}

pub async fn put(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path(agency): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Switch>, ApiError> {
    let access = st.auth.access(&headers)?;
    let a = automation(&st)?;
    agency_in_scope(&st, &access.scope, &agency)?;
    if !matches!(access.role, Role::Admin | Role::Operator) {
        return Err(ApiError::forbidden(
            "a viewer token may not change automation; use the agency's operator token",
        ));
    }
    let body = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is over {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::bad_request("the body could not be read")
        }
    })?;
    let b: PutBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    let changed = a.set_enabled(&agency, b.enabled).map_err(|e| {
        tracing::error!(error = %e, %agency, "Cannot persist the automation switch.");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the switch could not be saved",
        )
    })?;
    if changed {
        tracing::warn!(%agency, enabled = b.enabled, by = ?access.role, "Automation switched.");
    }
    Ok(Json(Switch {
        agency,
        enabled: b.enabled,
    }))
}
