//! Staged rollouts' endpoints (`crate::rollout`):
//!
//! * `POST /api/v1/rollouts` (admin): start one (JSON,
//!   [`crate::rollout::spec::RawRollout`]); 201 with it. 400 for a bad
//!   definition or a target no known unit matches, 409 when a target unit
//!   is in another running rollout or the books are full, 501 in cluster
//!   mode.
//! * `GET /api/v1/rollouts`, `GET /api/v1/rollouts/{id}`: a token sees the
//!   rollouts of the agencies it sees, newest first, at most
//!   `rollouts.max` (not paged); the detail adds the change's TOML and
//!   every issued unit's state.
//! * `POST /api/v1/rollouts/{id}/pause`, `…/resume`, `…/abort` (admin):
//!   200 with the rollout; 409 when its phase does not allow it.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;

use super::FeedState;
use super::error::ApiError;
use crate::rollout::machine::{Phase, UnitState, WaveVerdict};
use crate::rollout::spec::RawRollout;
use crate::rollout::{Action, Rollout, RolloutError, Rollouts};

/// A rollout definition's body, at most: the change (64 KiB of TOML,
/// JSON-escaped) and a target of 10000 listed units.
pub const MAX_BODY_BYTES: usize = 2 * muster_proto::MAX_CONFIG_BODY + 1024 * 1024;

#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub issued: usize,
    pub applied: usize,
    pub failed: usize,
    pub reverting: usize,
    pub reverted: usize,
}

#[derive(Debug, Serialize)]
pub struct UnitView<'a> {
    pub unit: &'a str,
    /// 1-based.
    pub wave: usize,
    pub version: u64,
    pub issued_ms: u64,
    #[serde(flatten)]
    pub state: &'a UnitState,
}

#[derive(Debug, Serialize)]
pub struct RolloutView<'a> {
    pub id: &'a str,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub name: &'a str,
    /// The change's TOML (the detail only: up to 64 KiB each).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<&'a str>,
    pub target: &'a crate::rollout::spec::Target,
    pub probe: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_target: Option<&'a str>,
    pub waves: &'a [crate::rollout::spec::Wave],
    pub soak_ms: u64,
    pub apply_timeout_ms: u64,
    pub metrics: &'a crate::rollout::spec::Metrics,
    pub config: &'a crate::gate::stats::GateConfig,
    #[serde(flatten)]
    pub phase: &'a Phase,
    /// The wave under way (1-based), of how many.
    pub wave: usize,
    pub wave_count: usize,
    /// Units in all at the end of each wave.
    pub wave_ends: &'a [usize],
    pub target_units: usize,
    pub counts: Counts,
    pub verdicts: &'a [WaveVerdict],
    /// Every issued unit (the detail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units: Option<Vec<UnitView<'a>>>,
}

impl<'a> RolloutView<'a> {
    pub fn of(r: &'a Rollout, detail: bool) -> RolloutView<'a> {
        let mut counts = Counts::default();
        for s in r.issued.values() {
            counts.issued += 1;
            match s.state {
                UnitState::Issued => {}
                UnitState::Applied { .. } => counts.applied += 1,
                UnitState::Failed { .. } => counts.failed += 1,
                UnitState::Reverting { .. } => counts.reverting += 1,
                UnitState::Reverted { .. } => counts.reverted += 1,
            }
        }
        RolloutView {
            id: &r.id,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            name: &r.spec.name,
            change: detail.then_some(r.spec.change.as_str()),
            target: &r.spec.target,
            probe: &r.spec.probe,
            probe_target: r.spec.probe_target.as_deref(),
            waves: &r.spec.waves,
            soak_ms: r.spec.soak_ms,
            apply_timeout_ms: r.spec.apply_timeout_ms,
            metrics: &r.spec.metrics,
            config: &r.spec.config,
            phase: &r.phase,
            wave: r.wave + 1,
            wave_count: r.wave_ends.len(),
            wave_ends: &r.wave_ends,
            target_units: r.units.len(),
            counts,
            verdicts: &r.verdicts,
            units: detail.then(|| {
                r.issued
                    .iter()
                    .map(|(u, s)| UnitView {
                        unit: u,
                        wave: s.wave + 1,
                        version: s.version,
                        issued_ms: s.issued_ms,
                        state: &s.state,
                    })
                    .collect()
            }),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RolloutList<'a> {
    pub items: Vec<RolloutView<'a>>,
}

fn rollouts(st: &FeedState) -> Result<Arc<Rollouts>, ApiError> {
    st.rollouts.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "rollouts are run by a single-node collector in this version",
        )
    })
}

fn admin(st: &FeedState, headers: &HeaderMap) -> Result<Arc<Rollouts>, ApiError> {
    let scope = st.auth.authenticate(headers)?;
    if !scope.is_admin() {
        return Err(ApiError::forbidden("rollouts need the admin token"));
    }
    rollouts(st)
}

fn error(e: RolloutError) -> ApiError {
    match e {
        RolloutError::Invalid(m) => ApiError::bad_request(m),
        RolloutError::Conflict(m) => ApiError::conflict(m),
        RolloutError::State(m) => ApiError::conflict(m.to_string()),
        RolloutError::Book(crate::rollout::book::BookError::Full { .. }) => {
            ApiError::conflict(e.to_string())
        }
        RolloutError::Book(crate::rollout::book::BookError::NotFound(id)) => {
            ApiError::not_found(format!("no rollout {id:?}"))
        }
        RolloutError::Book(other) => ApiError::internal(&other),
    }
}

/// `POST /api/v1/rollouts`.
pub async fn create(
    State(st): State<FeedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, axum::response::Response), ApiError> {
    let ro = admin(&st, &headers)?;
    let raw: RawRollout = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a rollout definition: {e}")))?;
    let spec = raw
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let r = tokio::task::spawn_blocking(move || ro.create(spec))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(error)?;
    Ok((
        StatusCode::CREATED,
        axum::response::IntoResponse::into_response(Json(RolloutView::of(&r, true))),
    ))
}

/// `GET /api/v1/rollouts`.
pub async fn list(
    State(st): State<FeedState>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    let scope = st.auth.authenticate(&headers)?;
    let ro = rollouts(&st)?;
    let all = ro.book.list();
    let items = all
        .iter()
        .rev()
        .filter(|r| scope.sees(&r.spec.target.agency))
        .map(|r| RolloutView::of(r, false))
        .collect();
    Ok(axum::response::IntoResponse::into_response(Json(
        RolloutList { items },
    )))
}

/// `GET /api/v1/rollouts/{id}`.
pub async fn detail(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    let scope = st.auth.authenticate(&headers)?;
    let ro = rollouts(&st)?;
    let r = ro
        .book
        .get(&id)
        .filter(|r| scope.sees(&r.spec.target.agency))
        .ok_or_else(|| ApiError::not_found(format!("no rollout {id:?}")))?;
    Ok(axum::response::IntoResponse::into_response(Json(
        RolloutView::of(&r, true),
    )))
}

async fn act(
    st: FeedState,
    headers: HeaderMap,
    id: String,
    action: Action,
) -> Result<axum::response::Response, ApiError> {
    let ro = admin(&st, &headers)?;
    let r = tokio::task::spawn_blocking(move || ro.act(&id, action))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(error)?;
    tracing::info!(rollout = %r.id, action = ?action, phase = r.phase.name(), "Rollout action.");
    Ok(axum::response::IntoResponse::into_response(Json(
        RolloutView::of(&r, true),
    )))
}

/// `POST /api/v1/rollouts/{id}/pause`.
pub async fn pause(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    act(st, headers, id, Action::Pause).await
}

/// `POST /api/v1/rollouts/{id}/resume`.
pub async fn resume(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    act(st, headers, id, Action::Resume).await
}

/// `POST /api/v1/rollouts/{id}/abort`.
pub async fn abort(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    act(st, headers, id, Action::Abort).await
}
