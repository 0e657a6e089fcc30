//! Linux: systemd-logind over the system D-Bus (zbus, pure Rust: the agent
//! stays a static musl binary with no libdbus/libsystemd).
//!
//! Contract:
//! * At start: connect to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` or the
//!   default socket) and, if `org.freedesktop.login1` is there, subscribe to
//!   `PrepareForShutdown` and `PrepareForSleep`, then take a *delay*
//!   inhibitor lock (`Inhibit("shutdown:sleep", "muster-agent", …,
//!   "delay")`): an fd held while running.
//! * `PrepareForShutdown(true)` / `PrepareForSleep(true)`: announce through
//!   [`Power`] (bounded by `power.announce_timeout`), then close the fd, so
//!   logind goes on at once instead of waiting out `InhibitDelayMaxSec`.
//! * `PrepareForSleep(false)` (resumed) / `PrepareForShutdown(false)`
//!   (cancelled): connect again through [`Power`], take a new lock.
//! * No bus or no logind: logged once, and the agent falls back to SIGTERM
//!   while the system is going down = `Shutdown` ([`system_going_down`]).
//! * The task ends when the agent stops (or the bus goes away), releasing
//!   the lock.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use zbus::Connection;
use zbus::zvariant::OwnedFd;

use super::{Action, Event, Power};

/// logind's bus name.
pub const LOGIND: &str = "org.freedesktop.login1";
/// What the delay lock holds up.
pub const INHIBIT_WHAT: &str = "shutdown:sleep";
pub const INHIBIT_WHO: &str = "muster-agent";
pub const INHIBIT_WHY: &str = "announce the unit's departure to dispatch";
pub const INHIBIT_MODE: &str = "delay";

/// How long connecting to the bus and asking it may take at start and at
/// SIGTERM.
const BUS_TIMEOUT: Duration = Duration::from_secs(2);

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
pub trait Manager {
    fn inhibit(&self, what: &str, who: &str, why: &str, mode: &str) -> zbus::Result<OwnedFd>;

    #[zbus(signal)]
    fn prepare_for_shutdown(&self, start: bool) -> zbus::Result<()>;

    #[zbus(signal)]
    fn prepare_for_sleep(&self, start: bool) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
pub trait Systemd {
    #[zbus(property)]
    fn system_state(&self) -> zbus::Result<String>;
}

#[derive(Debug, thiserror::Error)]
pub enum LogindError {
    #[error("system bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("system bus: {0}")]
    Fdo(#[from] zbus::fdo::Error),
    #[error("no {LOGIND} on the system bus")]
    Absent,
    #[error("system bus: no answer within {BUS_TIMEOUT:?}")]
    Timeout,
}

async fn bounded<T, E>(f: impl Future<Output = Result<T, E>>) -> Result<T, LogindError>
where
    LogindError: From<E>,
{
    match tokio::time::timeout(BUS_TIMEOUT, f).await {
        Ok(r) => r.map_err(LogindError::from),
        Err(_) => Err(LogindError::Timeout),
    }
}

/// The system bus and logind's manager, if both are there.
pub async fn connect() -> Result<(Connection, ManagerProxy<'static>), LogindError> {
    let conn = bounded(Connection::system()).await?;
    let dbus = bounded(zbus::fdo::DBusProxy::new(&conn)).await?;
    let name = zbus::names::BusName::try_from(LOGIND).map_err(zbus::Error::from)?;
    if !bounded(dbus.name_has_owner(name)).await? {
        return Err(LogindError::Absent);
    }
    let manager = bounded(ManagerProxy::new(&conn)).await?;
    Ok((conn, manager))
}

/// Takes a delay lock; `None` (logged) if logind refuses.
async fn take_lock(manager: &ManagerProxy<'_>) -> Option<OwnedFd> {
    match bounded(manager.inhibit(INHIBIT_WHAT, INHIBIT_WHO, INHIBIT_WHY, INHIBIT_MODE)).await {
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
    let state = async {
        let conn = bounded(Connection::system()).await?;
        let proxy = bounded(SystemdProxy::new(&conn)).await?;
        bounded(proxy.system_state()).await
    };
    match state.await {
        Ok(s) => {
            tracing::debug!(system_state = %s, "systemd's system state.");
            s == "stopping"
        }
        Err(e) => {
            tracing::debug!(error = %e, "Cannot ask systemd whether the system is going down.");
            false
        }
    }
}

/// Follows logind until `stop` says true. Returns at once (after one log
/// line) without logind.
pub async fn run(power: Arc<Power>, mut stop: watch::Receiver<bool>) {
    let (_conn, manager) = match connect().await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "No logind: a SIGTERM while systemd is stopping is announced as a shutdown, any other as a stop; sleep is not announced.");
            return;
        }
    };
    // Subscribe before the lock: no signal between the two is missed.
    let subscribed = async {
        let shut = manager.receive_prepare_for_shutdown().await?;
        let sleep = manager.receive_prepare_for_sleep().await?;
        Ok::<_, zbus::Error>((shut, sleep))
    };
    let (mut shut, mut sleep) = match bounded(subscribed).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot subscribe to logind's signals; departures fall back to SIGTERM.");
            return;
        }
    };
    let mut lock = take_lock(&manager).await;
    tracing::info!(
        locked = lock.is_some(),
        "Following logind: shutdown and sleep are announced before they happen."
    );
    loop {
        let (ev, start) = tokio::select! {
            _ = crate::probe::schedule::stopped(&mut stop) => break,
            s = shut.next() => match s.map(|s| s.args().map(|a| a.start)) {
                Some(Ok(true)) => (Event::ShutdownPrepare, true),
                Some(Ok(false)) => (Event::ShutdownCancelled, false),
                Some(Err(e)) => { tracing::warn!(error = %e, "Malformed PrepareForShutdown."); continue }
                None => break,
            },
            s = sleep.next() => match s.map(|s| s.args().map(|a| a.start)) {
                Some(Ok(true)) => (Event::SleepPrepare, true),
                Some(Ok(false)) => (Event::Woke, false),
                Some(Err(e)) => { tracing::warn!(error = %e, "Malformed PrepareForSleep."); continue }
                None => break,
            },
        };
        tracing::info!(?ev, "logind signal.");
        let action = power.handle(ev).await;
        if start {
            // Announced (or nothing to announce): let logind go on.
            if lock.take().is_some() {
                tracing::debug!("logind delay lock released.");
            }
        } else if lock.is_none() && matches!(action, Action::Return { .. } | Action::Ignore) {
            lock = take_lock(&manager).await;
        }
    }
    drop(lock);
    tracing::debug!("logind task stopped.");
}
