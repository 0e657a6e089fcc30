//! The deploy gate's endpoints (`crate::gate`):
//!
//! * `POST /api/v1/gates`: define a gate (JSON, [`crate::gate::spec::RawGate`]);
//!   201 with the gate. A token must see every agency the gate reads.
//! * `GET /api/v1/gates`, `GET /api/v1/gates/{id}`, `DELETE /api/v1/gates/{id}`.
//! * `GET /api/v1/gates/{id}/verdict`: judged now, `200` whatever the
//!   verdict (Argo Rollouts' web provider reads `$.verdict`).
//! * `POST /api/v1/gates/{id}/check`: the same body, `200` only on `pass`,
//!   `412` otherwise (Flagger's webhooks proceed on 2xx).
//!
//! A verdict reads the store on a blocking thread, at most
//! `gates.max_results` results a side ([`crate::gate::collect`]).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::FeedState;
use super::error::ApiError;
use crate::gate::book::{BookError, Gate};
use crate::gate::collect::{self, Side};
use crate::gate::spec::{RawGate, Span};
use crate::gate::stats::{self, GateVerdict, MetricInput};

/// A gate definition's body, at most.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, Serialize)]
pub struct GateList {
    pub items: Vec<Gate>,
}

/// One side as judged.
#[derive(Debug, Serialize)]
pub struct SideView {
    pub agency: String,
    #[serde(flatten)]
    pub span: Span,
    pub units: usize,
    pub units_with_data: usize,
    pub results: u64,
    pub failed: u64,
    pub truncated: bool,
}

#[derive(Debug, Serialize)]
pub struct VerdictView {
    pub id: String,
    pub name: String,
    pub judged_ms: u64,
    #[serde(flatten)]
    pub verdict: GateVerdict,
    pub baseline: SideView,
    pub canary: SideView,
}

fn visible(st: &FeedState, headers: &HeaderMap, id: &str) -> Result<Gate, ApiError> {
    let scope = st.auth.authenticate(headers)?;
    let g = st
        .gates
        .get(id)
        .filter(|g| g.spec.agencies().iter().all(|a| scope.sees(a)))
        .ok_or_else(|| ApiError::not_found(format!("no gate {id:?}")))?;
    Ok(g)
}

fn book_error(e: BookError) -> ApiError {
    match e {
        BookError::Full { .. } => ApiError::conflict(e.to_string()),
        other => ApiError::internal(&other),
    }
}

/// `POST /api/v1/gates`.
pub async fn create(
    State(st): State<FeedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Gate>), ApiError> {
    let scope = st.auth.authenticate(&headers)?;
    let raw: RawGate = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a gate definition: {e}")))?;
    let spec = raw
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    for a in spec.agencies() {
        scope.check(a)?;
    }
    let (book, now) = (Arc::clone(&st.gates), st.clock.now_ms());
    let g = tokio::task::spawn_blocking(move || book.add(spec, now))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(book_error)?;
    tracing::info!(id = %g.id, name = %g.spec.name, "Gate defined.");
    Ok((StatusCode::CREATED, Json(g)))
}

/// `GET /api/v1/gates`.
pub async fn list(
    State(st): State<FeedState>,
    headers: HeaderMap,
) -> Result<Json<GateList>, ApiError> {
    let scope = st.auth.authenticate(&headers)?;
    let items = st
        .gates
        .list()
        .into_iter()
        .filter(|g| g.spec.agencies().iter().all(|a| scope.sees(a)))
        .collect();
    Ok(Json(GateList { items }))
}

/// `GET /api/v1/gates/{id}`.
pub async fn detail(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Gate>, ApiError> {
    visible(&st, &headers, &id).map(Json)
}

/// `DELETE /api/v1/gates/{id}`.
pub async fn delete(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let g = visible(&st, &headers, &id)?;
    let book = Arc::clone(&st.gates);
    tokio::task::spawn_blocking(move || book.remove(&g.id))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(book_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/gates/{id}/verdict`.
pub async fn verdict(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<VerdictView>, ApiError> {
    let g = visible(&st, &headers, &id)?;
    judge(&st, g).await.map(Json)
}

/// `POST /api/v1/gates/{id}/check`: 200 on pass, else 412, same body.
pub async fn check(
    State(st): State<FeedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let g = visible(&st, &headers, &id)?;
    let v = judge(&st, g).await?;
    let status = match v.verdict.verdict {
        stats::Verdict::Pass => StatusCode::OK,
        _ => StatusCode::PRECONDITION_FAILED,
    };
    Ok((status, Json(v)).into_response())
}

async fn judge(st: &FeedState, g: Gate) -> Result<VerdictView, ApiError> {
    let now = st.clock.now_ms();
    let (baseline_cohort, b_span, c_span) = {
        let (c, b, k) = g.spec.windows(now);
        (c.clone(), b, k)
    };
    let (b_units, c_units) = {
        let view = st.shared.units.read().unwrap_or_else(|e| e.into_inner());
        (
            collect::units_of(
                &baseline_cohort,
                view.values().map(|u| (&u.unit, u.labels())),
            ),
            collect::units_of(&g.spec.cohort, view.values().map(|u| (&u.unit, u.labels()))),
        )
    };
    let store = Arc::clone(&st.shared.store);
    let max = st.gate_max_results;
    let cohort = g.spec.cohort.clone();
    let bc = baseline_cohort.clone();
    let (baseline, canary) = tokio::task::spawn_blocking(move || {
        let b = collect::collect(store.as_ref(), &bc, &b_units, b_span, max)?;
        let c = collect::collect(store.as_ref(), &cohort, &c_units, c_span, max)?;
        Ok::<_, crate::store::StoreError>((b, c))
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(|e| ApiError::internal(&e))?;
    let inputs: Vec<MetricInput> = g
        .spec
        .metrics
        .iter()
        .map(|(metric, opts)| collect::probe_input(*metric, opts.key, &baseline, &canary))
        .collect();
    let verdict = stats::verdict(&inputs, &g.spec.config).map_err(|e| ApiError::internal(&e))?;
    let side = |agency: &str, span: Span, s: &Side| SideView {
        agency: agency.to_owned(),
        span,
        units: s.units,
        units_with_data: s.units_with_data,
        results: s.results,
        failed: s.failed,
        truncated: s.truncated,
    };
    Ok(VerdictView {
        id: g.id.clone(),
        name: g.spec.name.clone(),
        judged_ms: now,
        verdict,
        baseline: side(&baseline_cohort.agency, b_span, &baseline),
        canary: side(&g.spec.cohort.agency, c_span, &canary),
    })
}
