//! `/api/v1/stream`: Server-Sent Events of transitions (`event:
//! transition`), incident changes (`event: incident`), rollout steps
//! (`event: rollout`) and action steps (`event: action`, single node), each
//! with the event id `/api/v1/events` uses, filtered to what the token may
//! see.
//! The first event is `ready` (the stream is subscribed); a client too slow
//! to keep up gets `lagged` with how many it missed, and should reload.
//! Comments keep the connection alive every `http.sse_keep_alive`.
//! Authenticates with the bearer header or, for browsers' `EventSource`,
//! `?access_token=<token>`.
//!
//! Flow control: each client has its own queue of `http.sse_buffer` events,
//! filled by a forwarding task from the change broadcast. A client that
//! stops reading (its socket buffers full, so its queue fills) is
//! disconnected once an event has waited `http.sse_send_timeout` for room
//! in its queue: counted in `muster_sse_dropped_total`, rate-limited log,
//! and its connection closed (through the server's [`ConnKill`]), so
//! neither its task nor its socket outlives it. A burst larger than the
//! queue only makes a reading client wait. Other clients never wait for a
//! stuck one (each has its own broadcast receiver); keep-alive comments are
//! written per connection and keep flowing to healthy clients.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};
use tracing::warn;

use super::FeedState;
use super::error::ApiError;
use super::limits::HttpDrop;
use super::query::Params;
use super::server::ConnKill;
use super::views::EventView;
use crate::actions::ActionView;
use crate::model::Change;
use crate::state::Shared;

/// Counts a connected client while its stream lives.
struct ClientGuard(Arc<Shared>);

impl ClientGuard {
    fn new(s: Arc<Shared>) -> Self {
        s.metrics.stream.clients.fetch_add(1, Ordering::Relaxed);
        ClientGuard(s)
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0
            .metrics
            .stream
            .clients
            .fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn stream(
    State(st): State<FeedState>,
    kill: Option<Extension<ConnKill>>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let q = Params::from(q)?;
    q.only(&["agency", "access_token"])?;
    // Browsers' EventSource cannot send headers: the stream (only) also
    // takes the token as `?access_token=`, with the same scoping. The
    // query string is never logged.
    let scope = match (
        headers.contains_key(header::AUTHORIZATION),
        q.str("access_token"),
    ) {
        (false, Some(t)) => st
            .auth
            .scope_of(t)
            .ok_or_else(|| ApiError::unauthorized("unknown token"))?,
        _ => st.auth.authenticate(&headers)?,
    };
    let agency = q.str("agency").map(str::to_owned);
    if let Some(a) = &agency {
        scope.check(a)?;
    }
    let rx = st.shared.changes.subscribe();
    let action_rx = st.actions.as_ref().map(|a| a.subscribe());
    let guard = ClientGuard::new(st.shared.clone());
    let shared = st.shared.clone();
    let ready = Event::default().event("ready").data("{}");
    let (action_scope, action_agency) = (scope.clone(), agency.clone());
    let events = BroadcastStream::new(rx).filter_map(move |item| {
        let m = &shared.metrics.stream;
        let out = match item {
            Ok(ev) => {
                let a = ev.agency();
                if scope.sees(a) && agency.as_deref().is_none_or(|x| x == a) {
                    let name = match ev.change {
                        Change::Transition(_) => "transition",
                        Change::Incident(_) => "incident",
                        Change::Rollout(_) => "rollout",
                        Change::Automation(_) => "automation",
                    };
                    Event::default()
                        .id(ev.id.to_string())
                        .event(name)
                        .json_data(EventView::from(&*ev))
                        .ok()
                } else {
                    None
                }
            }
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                m.lagged.fetch_add(n, Ordering::Relaxed);
                Some(
                    Event::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{n}}}")),
                )
            }
        };
        std::future::ready(out)
    });
    let shared = st.shared.clone();
    let action_events = stream::iter(action_rx)
        .flat_map(BroadcastStream::new)
        .filter_map(move |item| {
            let out = match item {
                Ok(a) => {
                    let ag = a.event.agency.as_str();
                    (action_scope.sees(ag) && action_agency.as_deref().is_none_or(|x| x == ag))
                        .then(|| {
                            Event::default()
                                .id(a.id.to_string())
                                .event("action")
                                .json_data(ActionView::from(&*a))
                                .ok()
                        })
                        .flatten()
                }
                Err(BroadcastStreamRecvError::Lagged(n)) => {
                    shared.metrics.stream.lagged.fetch_add(n, Ordering::Relaxed);
                    Some(
                        Event::default()
                            .event("lagged")
                            .data(format!("{{\"missed\":{n}}}")),
                    )
                }
            };
            std::future::ready(out)
        });
    let events = stream::select(events, action_events);
    let (tx, queue) = mpsc::channel(st.sse_buffer);
    tokio::spawn(forward(
        events,
        tx,
        st.shared.clone(),
        st.drop_log.clone(),
        st.sse_send_timeout,
        kill.map(|Extension(k)| k),
        st.shutdown.clone(),
    ));
    let shared = st.shared.clone();
    let events = ReceiverStream::new(queue).map(move |ev| {
        let _alive = &guard;
        shared.metrics.stream.events.fetch_add(1, Ordering::Relaxed);
        Ok(ev)
    });
    let body = stream::once(std::future::ready(Ok(ready))).chain(events);
    Ok(Sse::new(body).keep_alive(KeepAlive::new().interval(st.sse_keep_alive)))
}

/// Moves one client's events from the broadcast into its queue; ends when
/// the client is gone, at shutdown, or when the queue stays full for
/// `send_timeout` (the client stopped reading): then the client's
/// connection is closed.
async fn forward(
    events: impl Stream<Item = Event> + Send + 'static,
    tx: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    log: Arc<super::server::DropLog>,
    send_timeout: std::time::Duration,
    kill: Option<ConnKill>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut events = std::pin::pin!(events);
    loop {
        let ev = tokio::select! {
            _ = tx.closed() => return,
            _ = shutdown.cancelled() => return,
            ev = events.next() => match ev {
                Some(ev) => ev,
                None => return,
            },
        };
        let ev = match tx.try_send(ev) {
            Ok(()) => continue,
            Err(mpsc::error::TrySendError::Closed(_)) => return,
            Err(mpsc::error::TrySendError::Full(ev)) => ev,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(send_timeout, tx.send(ev)) => match r {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return,
                Err(_) => {}
            },
        }
        shared.metrics.http.dropped(HttpDrop::SseOverflow);
        if let Some(suppressed) = log.admit(HttpDrop::SseOverflow) {
            warn!(
                suppressed,
                buffer = tx.max_capacity(),
                "Stream client disconnected: it stopped reading (http.sse_buffer full for http.sse_send_timeout)."
            );
        }
        if let Some(k) = kill {
            k.0.cancel();
        }
        return;
    }
}
