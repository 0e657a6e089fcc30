//! Linux: systemd-logind over the system D-Bus (the agent's own blocking
//! client, [`crate::dbus`]: a static musl binary with no libdbus/libsystemd).
//!
//! Contract:
//! * At start: connect to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` or the
//!   default socket) and, if `org.freedesktop.login1` is there, subscribe to
//!   `PrepareForShutdown` and `PrepareForSleep` (`AddMatch` with
//!   `sender='org.freedesktop.login1'`), then take a *delay* inhibitor lock
//!   (`Inhibit("shutdown:sleep", "muster-agent", …, "delay")`): an fd held
//!   while running.
//! * A signal counts only if its sender is logind's unique name
//!   (`GetNameOwner` at start; the bus fills the sender in, a client cannot
//!   forge it), its path, interface and member are logind's and its body is
//!   one boolean ([`classify`], pure): another local client sending a
//!   `PrepareForShutdown` (unicast to us bypasses the match rule) is ignored.
//! * `PrepareForShutdown(true)` / `PrepareForSleep(true)`: announce through
//!   [`Power`] (bounded by `power.announce_timeout`), then close the fd, so
//!   logind goes on at once instead of waiting out `InhibitDelayMaxSec`.
//! * `PrepareForSleep(false)` (resumed) / `PrepareForShutdown(false)`
//!   (cancelled): connect again through [`Power`], take a new lock.
//! * The bus is read on a blocking thread (`logind`) that owns the
//!   connection and the lock; it hands each event to the async task, which
//!   runs `power.handle` and answers with the action. No bus or no logind:
//!   logged once, and the agent falls back to SIGTERM while the system is
//!   going down = `Shutdown` ([`system_going_down`]).
//! * The task ends when the agent stops (or the bus goes away): the socket
//!   is shut down, which ends the thread at once; the thread is joined and
//!   the lock released.

// Real time: the logind thread's forged-signal log rate limit runs on a
// blocking std thread.
#![allow(clippy::disallowed_methods)]

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::{Action, Event, Power};
use crate::dbus::conn::{DBUS, DBUS_PATH};
use crate::dbus::wire::Kind;
use crate::dbus::{Conn, DbusError, Message, Value};

/// logind's bus name.
pub const LOGIND: &str = "org.freedesktop.login1";
pub const LOGIND_PATH: &str = "/org/freedesktop/login1";
pub const MANAGER: &str = "org.freedesktop.login1.Manager";
/// What the delay lock holds up.
pub const INHIBIT_WHAT: &str = "shutdown:sleep";
pub const INHIBIT_WHO: &str = "muster-agent";
pub const INHIBIT_WHY: &str = "announce the unit's departure to dispatch";
pub const INHIBIT_MODE: &str = "delay";

/// How long connecting to the bus and each call may take at start and at
/// SIGTERM.
const BUS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LogindError {
    #[error("system bus: {0}")]
    Bus(#[from] DbusError),
    #[error("no {LOGIND} on the system bus")]
    Absent,
    #[error("system bus: {0}")]
    Reply(&'static str),
}

/// A signal from logind, as an event, or `None` if it is not one (wrong
/// sender, path, interface, member or body).
pub fn classify(m: &Message, logind: &str) -> Option<Event> {
    if m.kind != Kind::Signal
        || m.sender.as_deref() != Some(logind)
        || m.path.as_deref() != Some(LOGIND_PATH)
        || m.interface.as_deref() != Some(MANAGER)
    {
        return None;
    }
    let [Value::Bool(start)] = m.body.as_slice() else {
        return None;
    };
    Some(match (m.member.as_deref()?, start) {
        ("PrepareForShutdown", true) => Event::ShutdownPrepare,
        ("PrepareForShutdown", false) => Event::ShutdownCancelled,
        ("PrepareForSleep", true) => Event::SleepPrepare,
        ("PrepareForSleep", false) => Event::Woke,
        _ => return None,
    })
}

/// The system bus, logind's unique name, subscribed to its signals.
pub fn connect() -> Result<(Conn, String), LogindError> {
    let mut conn = Conn::system(BUS_TIMEOUT)?;
    if !conn.name_has_owner(LOGIND)? {
        return Err(LogindError::Absent);
    }
    let owner = match conn.call(
        DBUS,
        DBUS_PATH,
        DBUS,
        "GetNameOwner",
        vec![Value::str(LOGIND)],
    ) {
        Ok(r) => match r.as_slice() {
            [Value::Str(s)] => s.clone(),
            _ => return Err(LogindError::Reply("GetNameOwner did not return a name")),
        },
        Err(e) if e.is_absent() => return Err(LogindError::Absent),
        Err(e) => return Err(e.into()),
    };
    conn.keep_signals(true);
    let rule =
        format!("type='signal',sender='{LOGIND}',path='{LOGIND_PATH}',interface='{MANAGER}'");
    conn.call(DBUS, DBUS_PATH, DBUS, "AddMatch", vec![Value::Str(rule)])?;
    Ok((conn, owner))
}

fn inhibit(conn: &mut Conn) -> Result<OwnedFd, DbusError> {
    if !conn.unix_fd() {
        return Err(DbusError::NoFdPassing);
    }
    let (body, mut fds) = conn.call_fds(
        LOGIND,
        LOGIND_PATH,
        MANAGER,
        "Inhibit",
        [INHIBIT_WHAT, INHIBIT_WHO, INHIBIT_WHY, INHIBIT_MODE]
            .into_iter()
            .map(Value::str)
            .collect(),
    )?;
    match body.as_slice() {
        [Value::UnixFd(i)] if (*i as usize) < fds.len() => Ok(fds.swap_remove(*i as usize)),
        _ => Err(DbusError::Reply("Inhibit did not return a unix fd")),
    }
}

/// Takes a delay lock; `None` (logged) if logind refuses.
fn take_lock(conn: &mut Conn) -> Option<OwnedFd> {
    match inhibit(conn) {
        Ok(fd) => {
            tracing::debug!("logind delay lock taken.");
            Some(fd)
        }
        Err(e) => {
            tracing::warn!(error = %e, "logind refused a delay lock: departures may not be announced in time.");
            None
        }
    }
}

/// Whether the OS is shutting down, without logind: systemd's manager says
/// `SystemState == "stopping"`. `false` when it cannot tell (no bus, no
/// systemd: a plain stop is then announced, never a shutdown by guess).
pub async fn system_going_down() -> bool {
    let state = tokio::task::spawn_blocking(|| {
        let mut conn = Conn::system(BUS_TIMEOUT)?;
        match conn.get_property(
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "SystemState",
        )? {
            Value::Str(s) => Ok(s),
            _ => Err(DbusError::Reply("SystemState is not a string")),
        }
    })
    .await;
    match state {
        Ok(Ok(s)) => {
            tracing::debug!(system_state = %s, "systemd's system state.");
            s == "stopping"
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "Cannot ask systemd whether the system is going down.");
            false
        }
        Err(e) => {
            tracing::debug!(error = %e, "Cannot ask systemd whether the system is going down.");
            false
        }
    }
}

/// An event for the async side and where its action goes.
type Ask = (Event, oneshot::Sender<Action>);

/// The `logind` thread: reads signals until the socket is shut down or the
/// async side goes; releases or retakes the lock after each action.
fn follow(mut conn: Conn, owner: String, mut lock: Option<OwnedFd>, tx: mpsc::Sender<Ask>) {
    // logind-like signals not from logind: counted, logged at most once a
    // minute with the count.
    let mut forged = 0u64;
    let mut forged_logged: Option<std::time::Instant> = None;
    loop {
        let m = match conn.next_signal(Duration::from_secs(3600)) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(DbusError::Closed) => break,
            Err(e) => {
                tracing::warn!(error = %e, "Lost the system bus: departures fall back to SIGTERM.");
                break;
            }
        };
        let Some(ev) = classify(&m, &owner) else {
            if m.member
                .as_deref()
                .is_some_and(|n| n.starts_with("PrepareFor"))
            {
                forged += 1;
                if forged_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    forged_logged = Some(std::time::Instant::now());
                    tracing::warn!(
                        sender = m.sender.as_deref().unwrap_or(""),
                        member = m.member.as_deref().unwrap_or(""),
                        ignored_total = forged,
                        "A logind-like signal not from logind: ignored (logged at most once a minute)."
                    );
                }
            }
            continue;
        };
        tracing::info!(?ev, "logind signal.");
        let start = matches!(ev, Event::ShutdownPrepare | Event::SleepPrepare);
        let (atx, arx) = oneshot::channel();
        if tx.blocking_send((ev, atx)).is_err() {
            break;
        }
        let Ok(action) = arx.blocking_recv() else {
            break;
        };
        if start {
            // Announced (or nothing to announce): let logind go on.
            if lock.take().is_some() {
                tracing::debug!("logind delay lock released.");
            }
        } else if lock.is_none() && matches!(action, Action::Return { .. } | Action::Ignore) {
            lock = take_lock(&mut conn);
        }
    }
    drop(lock);
    if conn.dropped_signals() > 0 {
        tracing::warn!(
            dropped = conn.dropped_signals(),
            "D-Bus signals dropped (queue full)."
        );
    }
}

/// Follows logind until `stop` says true. Returns at once (after one log
/// line) without logind.
pub async fn run(power: Arc<Power>, mut stop: watch::Receiver<bool>) {
    let setup = tokio::task::spawn_blocking(|| {
        // Subscribed before the lock: no signal between the two is missed.
        let (mut conn, owner) = connect()?;
        let lock = take_lock(&mut conn);
        Ok::<_, LogindError>((conn, owner, lock))
    })
    .await;
    let (conn, owner, lock) = match setup {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "No logind: a SIGTERM while systemd is stopping is announced as a shutdown, any other as a stop; sleep is not announced.");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "logind setup failed.");
            return;
        }
    };
    let handle = match conn.shutdown_handle() {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot follow logind; departures fall back to SIGTERM.");
            return;
        }
    };
    tracing::info!(
        locked = lock.is_some(),
        "Following logind: shutdown and sleep are announced before they happen."
    );
    let (tx, mut rx) = mpsc::channel::<Ask>(1);
    let thread = tokio::task::spawn_blocking(move || follow(conn, owner, lock, tx));
    loop {
        tokio::select! {
            _ = crate::probe::schedule::stopped(&mut stop) => break,
            ask = rx.recv() => match ask {
                Some((ev, reply)) => {
                    let action = power.handle(ev).await;
                    let _ = reply.send(action);
                }
                None => break,
            },
        }
    }
    // Wakes the thread's read at once; it drops the lock and ends.
    let _ = handle.shutdown(std::net::Shutdown::Both);
    drop(rx);
    let _ = thread.await;
    tracing::debug!("logind task stopped.");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(sender: &str, member: &str, body: Vec<Value>) -> Message {
        Message {
            sender: Some(sender.into()),
            path: Some(LOGIND_PATH.into()),
            interface: Some(MANAGER.into()),
            member: Some(member.into()),
            body,
            ..Message::new(Kind::Signal, 5)
        }
    }

    #[test]
    fn only_logind_signals_count() {
        let owner = ":1.3";
        let t = Value::Bool(true);
        let f = Value::Bool(false);
        let cases: Vec<(Message, Option<Event>)> = vec![
            (
                signal(owner, "PrepareForShutdown", vec![t.clone()]),
                Some(Event::ShutdownPrepare),
            ),
            (
                signal(owner, "PrepareForShutdown", vec![f.clone()]),
                Some(Event::ShutdownCancelled),
            ),
            (
                signal(owner, "PrepareForSleep", vec![t.clone()]),
                Some(Event::SleepPrepare),
            ),
            (
                signal(owner, "PrepareForSleep", vec![f.clone()]),
                Some(Event::Woke),
            ),
            // Forged: another client, or the well-known name (never a sender).
            (signal(":1.9", "PrepareForShutdown", vec![t.clone()]), None),
            (signal(LOGIND, "PrepareForShutdown", vec![t.clone()]), None),
            (signal(owner, "PrepareForShutdown", vec![]), None),
            (
                signal(owner, "PrepareForShutdown", vec![Value::U32(1)]),
                None,
            ),
            (
                signal(owner, "PrepareForShutdown", vec![t.clone(), t.clone()]),
                None,
            ),
            (signal(owner, "SessionNew", vec![t.clone()]), None),
            (
                Message {
                    path: Some("/elsewhere".into()),
                    ..signal(owner, "PrepareForShutdown", vec![t.clone()])
                },
                None,
            ),
            (
                Message {
                    interface: Some("org.example".into()),
                    ..signal(owner, "PrepareForShutdown", vec![t.clone()])
                },
                None,
            ),
            (
                Message {
                    kind: Kind::MethodCall,
                    ..signal(owner, "PrepareForShutdown", vec![t.clone()])
                },
                None,
            ),
        ];
        for (m, want) in cases {
            assert_eq!(classify(&m, owner), want, "{m:?}");
        }
    }
}
