//! A fake `org.freedesktop.login1` Manager on a private [`DbusDaemon`]: the
//! tests' stand-in for systemd-logind. The agent under test talks to it with
//! its production D-Bus code (`DBUS_SYSTEM_BUS_ADDRESS`).
//!
//! `Inhibit` hands out the write end of a real pipe and keeps the read end:
//! [`Logind::locks`] shows every lock taken (what, who, why, mode) and when
//! its holder released it (EOF). [`Logind::shutdown`] and [`Logind::sleep`]
//! emit `PrepareForShutdown` and `PrepareForSleep` as logind does.
//! [`Systemd`] is the fake `org.freedesktop.systemd1` manager of
//! [`crate::systemd`], whose `SystemState` the test sets (e.g. "stopping").

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use zbus::object_server::SignalEmitter;

use crate::DbusDaemon;

/// The delay locks handed out.
#[derive(Debug, Default)]
pub struct Locks {
    /// (what, who, why, mode) of every `Inhibit` call.
    pub calls: Vec<(String, String, String, String)>,
    /// When each lock's last holder closed it (EOF on the read end).
    pub released: Vec<Option<Instant>>,
}

struct FakeLogind {
    locks: Arc<Mutex<Locks>>,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl FakeLogind {
    fn inhibit(
        &self,
        what: &str,
        who: &str,
        why: &str,
        mode: &str,
    ) -> zbus::fdo::Result<zbus::zvariant::OwnedFd> {
        let (mut r, w) = std::io::pipe().map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        let i = {
            let mut l = self.locks.lock().unwrap();
            l.calls
                .push((what.into(), who.into(), why.into(), mode.into()));
            l.released.push(None);
            l.released.len() - 1
        };
        let locks = self.locks.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            // Blocks until every write end is closed.
            while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
            locks.lock().unwrap().released[i] = Some(Instant::now());
        });
        Ok(std::os::fd::OwnedFd::from(w).into())
    }

    #[zbus(signal)]
    async fn prepare_for_shutdown(emitter: &SignalEmitter<'_>, start: bool) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn prepare_for_sleep(emitter: &SignalEmitter<'_>, start: bool) -> zbus::Result<()>;
}

/// The fake logind, serving while this lives.
pub struct Logind {
    conn: zbus::Connection,
    locks: Arc<Mutex<Locks>>,
}

impl Logind {
    /// Owns `org.freedesktop.login1` on `bus` and serves the Manager at
    /// `/org/freedesktop/login1`. Call inside a tokio runtime.
    pub async fn start(bus: &DbusDaemon) -> Logind {
        let locks = Arc::new(Mutex::new(Locks::default()));
        let conn = zbus::connection::Builder::address(bus.address())
            .expect("bus address")
            .name("org.freedesktop.login1")
            .expect("logind's name")
            .serve_at(
                "/org/freedesktop/login1",
                FakeLogind {
                    locks: locks.clone(),
                },
            )
            .expect("serve the manager")
            .build()
            .await
            .expect("fake logind on the private bus");
        Logind { conn, locks }
    }

    async fn emitter(&self) -> zbus::object_server::InterfaceRef<FakeLogind> {
        self.conn
            .object_server()
            .interface::<_, FakeLogind>("/org/freedesktop/login1")
            .await
            .expect("the manager is served")
    }

    /// Emits `PrepareForShutdown(start)`.
    pub async fn shutdown(&self, start: bool) {
        let i = self.emitter().await;
        FakeLogind::prepare_for_shutdown(i.signal_emitter(), start)
            .await
            .expect("emit PrepareForShutdown");
    }

    /// Emits `PrepareForSleep(start)`.
    pub async fn sleep(&self, start: bool) {
        let i = self.emitter().await;
        FakeLogind::prepare_for_sleep(i.signal_emitter(), start)
            .await
            .expect("emit PrepareForSleep");
    }

    pub fn locks(&self) -> std::sync::MutexGuard<'_, Locks> {
        self.locks.lock().unwrap()
    }
}

/// The fake systemd manager lives in [`crate::systemd`] (units and their
/// restart jobs too); re-exported here for the power tests.
pub use crate::systemd::Systemd;
