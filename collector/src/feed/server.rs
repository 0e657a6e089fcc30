//! The feed's HTTP server: an accept loop around hyper's HTTP/1 connection
//! (`axum::serve` exposes neither timeouts nor a connection cap).
//!
//! Contract (the decisions are the pure [`super::limits`]):
//! - At most `http.max_connections` connections are open. One more is
//!   accepted and closed at once (no bytes written), counted as
//!   `muster_http_refused_total{reason="connection_cap"}` and logged at
//!   most once per `ingest.refusal_log_interval` with how many were
//!   suppressed.
//! - A connection must complete a request head within
//!   `http.header_read_timeout` of being accepted, or of the first byte of
//!   its next request: else it is closed,
//!   `muster_http_refused_total{reason="header_timeout"}`, rate-limited log.
//! - A keep-alive connection with no request in progress is closed after
//!   `http.idle_timeout` (`muster_http_idle_closed_total`, no log: normal).
//! - While a response is being written no timer runs; a stream client that
//!   stops reading is handled by the stream's own buffer (`stream.rs`),
//!   which ends the connection through the [`ConnKill`] in the request's
//!   extensions.
//! - A request head over [`MAX_HEAD_BYTES`] is refused (hyper answers 431).
//! - `accept()` errors (EMFILE when out of file descriptors, ENFILE,
//!   ENOBUFS...) back off 50 ms doubling to 1 s, are counted in
//!   `muster_http_accept_errors_total` and logged once per interval with a
//!   count. A per-connection error (reset before accept) is skipped.
//! - Shutdown: the listener is closed at once; idle connections and those
//!   reading a head are closed; a connection answering a request finishes
//!   it (streams end on `FeedState::shutdown`) within [`DRAIN_GRACE`], then
//!   is dropped. [`serve`] returns when every connection is gone.

use std::future::pending;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{debug, warn};

use super::limits::{ConnPhase, Expiry, HttpDrop, Timeouts};
use crate::ingest::refusal::RefusalLog;
use crate::state::Shared;

/// How long a connection answering a request at shutdown may take to
/// finish it.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// The most a request head may take (start line and headers): bounds a
/// connection's read buffer, so the feed's memory is at most
/// `max_connections` times this plus responses.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The server's limits, from `[http]`.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub timeouts: Timeouts,
    pub max_connections: usize,
}

/// Closes the connection a request came on (in the request's extensions;
/// absent when the router is served some other way).
#[derive(Clone, Debug)]
pub struct ConnKill(pub CancellationToken);

/// Rate-limited logging of the feed's drops, per [`HttpDrop`].
#[derive(Debug)]
pub struct DropLog {
    start: Instant,
    log: Mutex<RefusalLog<HttpDrop>>,
}

impl DropLog {
    pub fn new(interval: Duration) -> Self {
        DropLog {
            start: Instant::now(),
            log: Mutex::new(RefusalLog::new(interval.as_millis() as u64)),
        }
    }

    /// `Some(suppressed_since_last_line)` when this drop should be logged.
    pub fn admit(&self, why: HttpDrop) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64;
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.admit(why, now)
    }
}

/// Serves `router` on `listener` until `shutdown`, within `limits`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shared: Arc<Shared>,
    log: Arc<DropLog>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let conns = TaskTracker::new();
    let mut backoff = super::limits::accept_backoff();
    let m = &shared.metrics.http;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff.reset();
                a
            }
            Err(e) if per_connection(&e) => continue,
            Err(e) => {
                m.dropped(HttpDrop::AcceptError);
                let wait = backoff.next_plain();
                if let Some(suppressed) = log.admit(HttpDrop::AcceptError) {
                    warn!(error = %e, suppressed, backoff_ms = wait.as_millis() as u64,
                        "HTTP accept failed (out of file descriptors?); backing off.");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = sleep(wait) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            m.dropped(HttpDrop::ConnectionCap);
            if let Some(suppressed) = log.admit(HttpDrop::ConnectionCap) {
                warn!(%peer, suppressed, max_connections = limits.max_connections,
                    "HTTP connection refused: at http.max_connections.");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        conns.spawn(connection(
            stream,
            peer,
            router.clone(),
            limits.timeouts,
            Arc::clone(&shared),
            Arc::clone(&log),
            shutdown.clone(),
            permit,
        ));
    }
    drop(listener);
    conns.close();
    conns.wait().await;
}

/// Errors of one incoming connection, not of the listener.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One connection's phase, shared by its reads, its requests and its task.
struct Conn {
    phase: Mutex<ConnPhase>,
    changed: Notify,
}

impl Conn {
    fn update<R>(&self, f: impl FnOnce(&mut ConnPhase) -> R) -> R {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut p)
    }
}

/// Marks the end of a request when the response body is done (or dropped).
struct RequestGuard(Arc<Conn>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.update(|p| p.request_ended(Instant::now()));
        self.0.changed.notify_one();
    }
}

/// Counts an open connection while it lives.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0
            .metrics
            .http
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The socket, noting when an idle connection starts its next request.
struct Tracked {
    io: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && self.conn.update(|p| p.bytes_read(Instant::now()))
        {
            self.conn.changed.notify_one();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => pending().await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    timeouts: Timeouts,
    shared: Arc<Shared>,
    log: Arc<DropLog>,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    shared
        .metrics
        .http
        .connections
        .fetch_add(1, Ordering::Relaxed);
    let _open = Open(Arc::clone(&shared));
    let conn = Arc::new(Conn {
        phase: Mutex::new(ConnPhase::accepted(Instant::now())),
        changed: Notify::new(),
    });
    let kill = CancellationToken::new();
    let svc = {
        let conn = Arc::clone(&conn);
        let kill = kill.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            conn.update(|p| p.request_started());
            conn.changed.notify_one();
            let guard = RequestGuard(Arc::clone(&conn));
            req.extensions_mut().insert(ConnKill(kill.clone()));
            let mut router = router.clone();
            async move {
                let resp = router.call(req).await?;
                Ok::<_, std::convert::Infallible>(resp.map(|b| {
                    Body::new(b.map_frame(move |f| {
                        let _alive = &guard;
                        f
                    }))
                }))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Our own clocks (ConnPhase) tell a slow head from an idle keep-alive.
    builder.header_read_timeout(None);
    builder.max_header_size(MAX_HEAD_BYTES);
    builder.max_buf_size(MAX_HEAD_BYTES);
    let io = TokioIo::new(Tracked {
        io: stream,
        conn: Arc::clone(&conn),
    });
    let c = builder.serve_connection(io, svc);
    tokio::pin!(c);
    let mut draining: Option<Instant> = None;
    loop {
        let deadline = conn.update(|p| p.deadline(&timeouts)).map(|(at, _)| at);
        tokio::select! {
            r = c.as_mut() => {
                if let Err(e) = r {
                    debug!(%peer, error = %e, "HTTP connection ended with an error.");
                }
                return;
            }
            _ = conn.changed.notified() => {}
            _ = until(deadline) => match conn.update(|p| p.expired(&timeouts, Instant::now())) {
                Some(Expiry::Header) => {
                    shared.metrics.http.dropped(HttpDrop::HeaderTimeout);
                    if let Some(suppressed) = log.admit(HttpDrop::HeaderTimeout) {
                        warn!(%peer, suppressed, timeout_ms = timeouts.header_read.as_millis() as u64,
                            "HTTP connection closed: no complete request head in http.header_read_timeout.");
                    }
                    return;
                }
                Some(Expiry::Idle) => {
                    shared.metrics.http.idle_closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                None => {}
            },
            _ = kill.cancelled() => return,
            _ = shutdown.cancelled(), if draining.is_none() => {
                if !conn.update(|p| p.is_busy()) {
                    return;
                }
                c.as_mut().graceful_shutdown();
                draining = Some(Instant::now() + DRAIN_GRACE);
            }
            _ = until(draining) => return,
        }
    }
}
