//! `/api/v1/stream`: Server-Sent Events of transitions (`event:
//! transition`) and incident changes (`event: incident`), each with the
//! event id `/api/v1/events` uses, filtered to what the token may see.
//! The first event is `ready` (the stream is subscribed); a client too slow
//! to keep up gets `lagged` with how many it missed, and should reload.
//! Comments keep the connection alive every `http.sse_keep_alive`.
//! Authenticates with the bearer header or, for browsers' `EventSource`,
//! `?access_token=<token>`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use futures_util::stream::{self, StreamExt};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::FeedState;
use super::error::ApiError;
use super::query::Params;
use super::views::EventView;
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
    let guard = ClientGuard::new(st.shared.clone());
    let shared = st.shared.clone();
    let ready = Event::default().event("ready").data("{}");
    let events = BroadcastStream::new(rx)
        .filter_map(move |item| {
            let _alive = &guard;
            let m = &shared.metrics.stream;
            let out = match item {
                Ok(ev) => {
                    let a = ev.agency();
                    if scope.sees(a) && agency.as_deref().is_none_or(|x| x == a) {
                        let name = match ev.change {
                            Change::Transition(_) => "transition",
                            Change::Incident(_) => "incident",
                        };
                        m.events.fetch_add(1, Ordering::Relaxed);
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
            std::future::ready(out.map(Ok))
        })
        .take_until(st.shutdown.clone().cancelled_owned());
    let body = stream::once(std::future::ready(Ok(ready))).chain(events);
    Ok(Sse::new(body).keep_alive(KeepAlive::new().interval(st.sse_keep_alive)))
}
