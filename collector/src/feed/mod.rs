//! The agencies' feed over HTTP (axum):
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /api/v1/units` | units with status, reasons, last seen, seq accounting (paginated) |
//! | `GET /api/v1/units/{agency}/{unit}` | one unit, with boots and its latest sample of each kind |
//! | `GET /api/v1/units/{agency}/{unit}/samples?since=` | stored samples (paginated) |
//! | `GET /api/v1/units/{agency}/{unit}/timeline?hours=24` | the unit's strip: on, off, asleep, lost… with the network kind (`timeline.rs`) |
//! | `GET /api/v1/events` | status transitions and incident changes, newest first (paginated) |
//! | `GET /api/v1/incidents` | agency-wide incidents (paginated) |
//! | `GET /api/v1/stream` | Server-Sent Events of transitions and incidents |
//! | `GET /api/v1/problems?hours=` | rules and probe targets ranked by degraded unit-minutes (paginated) |
//! | `GET /`, `GET /assets/{name}` | the supervisor's dashboard (no token needed to load it) |
//! | `GET /api/v1/openapi.json` | the OpenAPI 3.1 document of all of this (no token) |
//! | `GET /metrics` | Prometheus exposition |
//! | `GET /healthz`, `GET /readyz` | liveness, readiness |
//! | `POST /api/v1/enroll` | a terminal claims its credential (`crate::enroll::http`) |
//! | `GET /api/v1/enrollments`, `POST …/{agency}/{unit}/approve`, `…/revoke` | the admin's enrolment queue |
//! | `/api/v1/gates…` | the deploy gate (`gates.rs`) |
//! | `/api/v1/config…` | signed remote config documents (`config.rs`) |
//! | `/api/v1/rollouts…` | staged rollouts, pause, resume, abort (`rollouts.rs`) |
//! | `POST /api/v1/units/{agency}/{unit}/actions` | a signed action request to a unit (`actions.rs`) |
//! | `GET /api/v1/actions`, `GET /api/v1/actions/export` | the action audit, and its export (`actions.rs`) |
//! | `GET`/`PUT /api/v1/agencies/{agency}/automation` | an agency's automation kill switch (`automation.rs`) |
//! | `GET /runbooks`, `GET /runbooks/{rule}` | the runbooks as pages (no token; `runbooks.rs`) |
//! | `GET /api/v1/runbooks`, `GET /api/v1/runbooks/{rule}` | the runbooks' Markdown (`runbooks.rs`) |
//!
//! Every `/api/v1` request needs `Authorization: Bearer <token>`; an
//! agency's token (its viewer's, or its operator's: `auth.rs`) sees only its
//! units, on every endpoint and the stream.

pub mod actions;
pub(crate) mod auth;
pub mod automation;
pub mod config;
mod dashboard;
mod error;
mod events;
mod gates;
pub mod limits;
mod me;
pub mod openapi;
mod ops;
mod problems;
mod query;
mod rollouts;
mod runbooks;
pub mod server;
mod stream;
pub mod timeline;
mod units;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

pub(crate) use auth::same as same_token;
pub use auth::{Auth, Scope, bearer};
pub use error::ApiError;
pub use query::Params;

use crate::clock::SharedClock;
use crate::state::Shared;

/// What every handler gets.
#[derive(Clone)]
pub struct FeedState {
    pub shared: Arc<Shared>,
    pub auth: Arc<Auth>,
    pub clock: SharedClock,
    pub sse_keep_alive: Duration,
    pub metrics_require_token: bool,
    /// Cancelled at shutdown: open streams end so the server can stop.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Events queued per stream client before it is disconnected.
    pub sse_buffer: usize,
    /// How long a full stream queue may stay full.
    pub sse_send_timeout: Duration,
    /// Rate-limited logs of the feed's drops.
    pub drop_log: Arc<server::DropLog>,
    /// Enrolment by claim (`crate::enroll`).
    pub enroll: Arc<crate::enroll::Enroll>,
    /// Store retention: which resolution `samples?resolution=auto` serves.
    pub retention: crate::store::rollup::Retention,
    /// The deploy gates defined here (`gates`).
    pub gates: Arc<crate::gate::book::GateBook>,
    /// `gates.max_results`.
    pub gate_max_results: u64,
    /// Remote config documents (`config`); `None` in cluster mode.
    pub config_docs: Option<config::ConfigDocs>,
    /// Staged rollouts (`rollouts`); `None` in cluster mode.
    pub rollouts: Option<Arc<crate::rollout::Rollouts>>,
    /// The runbooks served (`runbooks`): built-in and the site's.
    pub runbooks: Arc<crate::runbooks::Runbooks>,
    /// Automation's kill switches (`automation.rs`); `None` in cluster mode.
    pub automation: Option<Arc<crate::automation::Automation>>,
    /// Action requests and their audit (`actions`); `None` in cluster mode.
    pub actions: Option<Arc<crate::actions::Actions>>,
    /// Rate-limited log of refused action requests.
    pub action_refusals: Arc<actions::RefusalLines>,
}

pub fn router(state: FeedState) -> Router {
    use crate::enroll::http as enroll;
    // Bound to names so every route call stays on one line (the OpenAPI
    // test reads the routes from this file).
    let claim = post(enroll::claim).layer(DefaultBodyLimit::max(enroll::MAX_BODY_BYTES));
    let (approve, revoke) = (post(enroll::approve), post(enroll::revoke));
    let strip = get(timeline::timeline);
    let gate_new = post(gates::create).layer(DefaultBodyLimit::max(gates::MAX_BODY_BYTES));
    let gate_one = get(gates::detail).delete(gates::delete);
    let (gate_verdict, gate_check) = (get(gates::verdict), post(gates::check));
    let cfg_limit = DefaultBodyLimit::max(config::MAX_BODY_BYTES);
    let cfg_agency = get(config::get_agency)
        .put(config::put_agency)
        .delete(config::delete_agency)
        .layer(cfg_limit);
    let cfg_unit = get(config::get_unit)
        .put(config::put_unit)
        .delete(config::delete_unit)
        .layer(cfg_limit);
    let ro_new = post(rollouts::create).layer(DefaultBodyLimit::max(rollouts::MAX_BODY_BYTES));
    let (ro_pause, ro_resume, ro_abort) = (
        post(rollouts::pause),
        post(rollouts::resume),
        post(rollouts::abort),
    );
    let act_new = post(actions::issue).layer(DefaultBodyLimit::max(actions::MAX_BODY_BYTES));
    let (act_list, act_export) = (get(actions::list), get(actions::export));
    let auto_switch = get(automation::get)
        .put(automation::put)
        .layer(DefaultBodyLimit::max(automation::MAX_BODY_BYTES));
    Router::new()
        .route("/api/v1/units", get(units::list))
        .route("/api/v1/units/{agency}/{unit}", get(units::detail))
        .route("/api/v1/units/{agency}/{unit}/samples", get(units::samples))
        .route("/api/v1/units/{agency}/{unit}/timeline", strip)
        .route("/api/v1/units/{agency}/{unit}/actions", act_new)
        .route("/api/v1/actions", act_list)
        .route("/api/v1/actions/export", act_export)
        .route("/api/v1/agencies/{agency}/automation", auto_switch)
        .route("/api/v1/events", get(events::list))
        .route("/api/v1/incidents", get(events::incidents))
        .route("/api/v1/problems", get(problems::list))
        .route("/api/v1/stream", get(stream::stream))
        .route("/api/v1/gates", gate_new.get(gates::list))
        .route("/api/v1/gates/{id}", gate_one)
        .route("/api/v1/gates/{id}/verdict", gate_verdict)
        .route("/api/v1/gates/{id}/check", gate_check)
        .route("/api/v1/config", get(config::list))
        .route("/api/v1/config/{agency}", cfg_agency)
        .route("/api/v1/config/{agency}/{unit}", cfg_unit)
        .route("/api/v1/rollouts", ro_new.get(rollouts::list))
        .route("/api/v1/rollouts/{id}", get(rollouts::detail))
        .route("/api/v1/rollouts/{id}/pause", ro_pause)
        .route("/api/v1/rollouts/{id}/resume", ro_resume)
        .route("/api/v1/rollouts/{id}/abort", ro_abort)
        .route("/api/v1/me", get(me::me))
        .route("/api/v1/runbooks", get(runbooks::list))
        .route("/api/v1/runbooks/{rule}", get(runbooks::get))
        .route("/runbooks", get(runbooks::index))
        .route("/runbooks/{rule}", get(runbooks::page))
        .route("/api/v1/enroll", claim)
        .route("/api/v1/enrollments", get(enroll::list))
        .route("/api/v1/enrollments/{agency}/{unit}/approve", approve)
        .route("/api/v1/enrollments/{agency}/{unit}/revoke", revoke)
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/api/v1/openapi.json", get(openapi::document))
        .merge(dashboard::routes())
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(axum::middleware::map_response(openapi::uniform_errors))
        .with_state(state)
}
