//! `/metrics`, `/healthz`, `/readyz`, and the JSON 404/405.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::FeedState;
use super::error::ApiError;

pub async fn metrics(
    State(st): State<FeedState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if st.metrics_require_token {
        let scope = st.auth.authenticate(&headers)?;
        if !scope.is_admin() {
            return Err(ApiError::forbidden("/metrics needs the admin token"));
        }
    }
    let shared = st.shared.clone();
    let body = tokio::task::spawn_blocking(move || shared.render_metrics())
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(r)
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// Liveness: the process serves HTTP.
pub async fn healthz() -> Json<impl Serialize> {
    Json(Health { status: "ok" })
}

#[derive(Serialize)]
struct Ready {
    ready: bool,
    mqtt: bool,
    store: bool,
    started: bool,
    overloaded: bool,
    /// Cluster mode: partition leases are being renewed (PostgreSQL reachable).
    leases: bool,
}

/// Readiness: connected and subscribed to the broker, the last commit
/// succeeded, the state is restored, and ingest is not overloaded
/// (`ingest::flow`).
pub async fn readyz(State(st): State<FeedState>) -> Response {
    let s = &st.shared;
    let r = Ready {
        mqtt: s.mqtt_ready(),
        store: s.store_ok.load(Ordering::Relaxed),
        started: s.started.load(Ordering::Relaxed),
        overloaded: s.overloaded.load(Ordering::Relaxed),
        leases: s.leases_ok.load(Ordering::Relaxed),
        ready: false,
    };
    let r = Ready {
        ready: r.mqtt && r.store && r.started && !r.overloaded && r.leases,
        ..r
    };
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r)).into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not answer this method (the Allow header lists those it does)",
    )
}
