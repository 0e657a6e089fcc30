//! A fake systemd manager (`org.freedesktop.systemd1`) on a private
//! [`DbusDaemon`]: the tests' stand-in for PID 1, which cannot run here.
//! The agent under test talks to it with its production D-Bus code.
//!
//! * `SystemState` is what the test gave [`Systemd::start`] (e.g.
//!   "stopping").
//! * [`Systemd::add_service`] registers a unit backed by a REAL process the
//!   fake starts at once (killed on drop). Its object, at systemd's path
//!   (`/org/freedesktop/systemd1/unit/cad_2dclient_2eservice`), serves
//!   `org.freedesktop.systemd1.Unit` (`Id`, `ActiveState`, `SubState`) and
//!   `org.freedesktop.systemd1.Service` (`MainPID`).
//! * `RestartUnit(name, mode)` answers a job path
//!   (`/org/freedesktop/systemd1/job/N`, N from 1), emits `JobNew`, and then,
//!   after the reply (as systemd does), acts as the unit's [`OnRestart`]
//!   says: [`OnRestart::Respawn`] SIGKILLs and reaps the process, starts it
//!   again and emits `JobRemoved(N, job, unit, "done")`. Unknown names:
//!   `org.freedesktop.systemd1.NoSuchUnit`, as `GetUnit` for them.
//! * `Subscribe` is accepted; every Manager call is recorded
//!   ([`Systemd::calls`]), and `RestartUnit`'s caller ([`Systemd::caller`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

use crate::{DbusDaemon, KillOnDrop};

pub const SYSTEMD: &str = "org.freedesktop.systemd1";
pub const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";

/// What `RestartUnit` does to a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnRestart {
    /// Kill the process (SIGKILL, reaped), start it again (`active
    /// (running)`, the new `MainPID`), `JobRemoved(…, "done")`.
    Respawn,
    /// The job is queued (`JobNew`) and never finishes: no `JobRemoved`,
    /// the process is left alone.
    Hang,
    /// Kill the process and do not start it again (`failed (failed)`,
    /// `MainPID` 0), `JobRemoved(…, result)`.
    Fail(String),
    /// Refuse the call: `org.freedesktop.DBus.Error.AccessDenied`.
    Deny,
}

struct Unit {
    program: PathBuf,
    args: Vec<String>,
    on_restart: OnRestart,
    child: Option<KillOnDrop>,
    active: &'static str,
    sub: &'static str,
}

impl Unit {
    fn main_pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Starts the process: `active (running)`, or `failed (failed)`.
    fn spawn(&mut self) -> bool {
        match Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => {
                self.child = Some(KillOnDrop(c));
                (self.active, self.sub) = ("active", "running");
                true
            }
            Err(e) => {
                eprintln!(
                    "[fake systemd] cannot start {}: {e}",
                    self.program.display()
                );
                (self.active, self.sub) = ("failed", "failed");
                false
            }
        }
    }

    /// SIGKILL and reap: the pid is gone when this returns.
    fn kill(&mut self) {
        drop(self.child.take());
        (self.active, self.sub) = ("inactive", "dead");
    }
}

#[derive(Default)]
struct State {
    units: HashMap<String, Unit>,
    jobs: u32,
    calls: Vec<String>,
    /// The unique bus name of the last `RestartUnit` caller.
    caller: Option<String>,
}

type Shared = Arc<Mutex<State>>;

/// systemd's errors the fake answers.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop")]
enum SdError {
    #[zbus(name = "systemd1.NoSuchUnit")]
    NoSuchUnit(String),
    #[zbus(name = "DBus.Error.AccessDenied")]
    AccessDenied(String),
}

/// systemd's object path for a unit (`sd_bus_path_encode`: every byte but
/// `[A-Za-z0-9]` as `_xx`).
pub fn unit_path(name: &str) -> String {
    let mut p = format!("{SYSTEMD_PATH}/unit/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            p.push(b as char);
        } else {
            p.push_str(&format!("_{b:02x}"));
        }
    }
    p
}

struct Manager {
    state: String,
    shared: Shared,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    #[zbus(property)]
    fn system_state(&self) -> String {
        self.state.clone()
    }

    fn subscribe(&self) {
        self.shared.lock().unwrap().calls.push("Subscribe".into());
    }

    fn get_unit(&self, name: &str) -> Result<OwnedObjectPath, SdError> {
        let mut st = self.shared.lock().unwrap();
        st.calls.push(format!("GetUnit {name}"));
        if !st.units.contains_key(name) {
            return Err(SdError::NoSuchUnit(format!("Unit {name} not loaded.")));
        }
        Ok(ObjectPath::try_from(unit_path(name))
            .expect("a valid unit path")
            .into())
    }

    async fn restart_unit(
        &self,
        #[zbus(connection)] conn: &zbus::Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
        name: String,
        mode: String,
    ) -> Result<OwnedObjectPath, SdError> {
        let (id, on_restart) = {
            let mut st = self.shared.lock().unwrap();
            st.calls.push(format!("RestartUnit {name} {mode}"));
            st.caller = header.sender().map(|s| s.to_string());
            let Some(on_restart) = st.units.get(&name).map(|u| u.on_restart.clone()) else {
                return Err(SdError::NoSuchUnit(format!("Unit {name} not found.")));
            };
            if on_restart == OnRestart::Deny {
                return Err(SdError::AccessDenied(format!(
                    "Access denied to restart {name}."
                )));
            }
            st.jobs += 1;
            (st.jobs, on_restart)
        };
        let job = format!("{SYSTEMD_PATH}/job/{id}");
        let emitter = SignalEmitter::new(conn, SYSTEMD_PATH)
            .expect("the manager's path")
            .into_owned();
        let job_path = ObjectPath::try_from(job.clone()).expect("a valid job path");
        Manager::job_new(&emitter, id, job_path.clone(), &name)
            .await
            .expect("emit JobNew");
        if on_restart != OnRestart::Hang {
            let shared = self.shared.clone();
            let job_path = job_path.clone().into_owned();
            tokio::spawn(async move {
                // After the reply, as systemd runs the job.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let result = {
                    let mut st = shared.lock().unwrap();
                    let u = st.units.get_mut(&name).expect("the unit");
                    u.kill();
                    match &on_restart {
                        OnRestart::Respawn if u.spawn() => "done".to_owned(),
                        OnRestart::Respawn => "failed".to_owned(),
                        OnRestart::Fail(result) => {
                            (u.active, u.sub) = ("failed", "failed");
                            result.clone()
                        }
                        OnRestart::Hang | OnRestart::Deny => unreachable!(),
                    }
                };
                Manager::job_removed(&emitter, id, job_path, &name, &result)
                    .await
                    .expect("emit JobRemoved");
            });
        }
        Ok(job_path.into())
    }

    #[zbus(signal)]
    async fn job_new(
        emitter: &SignalEmitter<'_>,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn job_removed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

struct UnitObject {
    name: String,
    shared: Shared,
}

impl UnitObject {
    fn read<T>(&self, f: impl FnOnce(&Unit) -> T) -> T {
        f(self
            .shared
            .lock()
            .unwrap()
            .units
            .get(&self.name)
            .expect("the unit"))
    }
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl UnitObject {
    #[zbus(property)]
    fn id(&self) -> String {
        self.name.clone()
    }

    #[zbus(property)]
    fn active_state(&self) -> String {
        self.read(|u| u.active.to_owned())
    }

    #[zbus(property)]
    fn sub_state(&self) -> String {
        self.read(|u| u.sub.to_owned())
    }
}

struct ServiceObject(UnitObject);

#[zbus::interface(name = "org.freedesktop.systemd1.Service")]
impl ServiceObject {
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> u32 {
        self.0.read(Unit::main_pid)
    }
}

/// The fake systemd, serving while this lives; its units' processes are
/// killed when it is dropped.
pub struct Systemd {
    conn: zbus::Connection,
    shared: Shared,
}

impl Systemd {
    /// Owns `org.freedesktop.systemd1` on `bus` with `SystemState` =
    /// `state`, no units. Call inside a tokio runtime.
    pub async fn start(bus: &DbusDaemon, state: &str) -> Systemd {
        let shared = Shared::default();
        let conn = zbus::connection::Builder::address(bus.address())
            .expect("bus address")
            .name(SYSTEMD)
            .expect("systemd's name")
            .serve_at(
                SYSTEMD_PATH,
                Manager {
                    state: state.into(),
                    shared: shared.clone(),
                },
            )
            .expect("serve the manager")
            .build()
            .await
            .expect("fake systemd on the private bus");
        Systemd { conn, shared }
    }

    /// A service unit `name` (e.g. "cad-client.service") running `program
    /// args` now; its pid. A program that cannot start fails the test.
    pub async fn add_service(
        &self,
        name: &str,
        program: &Path,
        args: &[&str],
        on_restart: OnRestart,
    ) -> u32 {
        let mut unit = Unit {
            program: program.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            on_restart,
            child: None,
            active: "inactive",
            sub: "dead",
        };
        assert!(unit.spawn(), "cannot start {}", program.display());
        let pid = unit.main_pid();
        self.shared
            .lock()
            .unwrap()
            .units
            .insert(name.to_owned(), unit);
        let path = unit_path(name);
        let server = self.conn.object_server();
        let object = || UnitObject {
            name: name.to_owned(),
            shared: self.shared.clone(),
        };
        server
            .at(path.as_str(), object())
            .await
            .expect("serve the unit");
        server
            .at(path.as_str(), ServiceObject(object()))
            .await
            .expect("serve the service");
        pid
    }

    /// The unit's process now (`MainPID`); `None` for an unknown unit, 0 if
    /// none runs.
    pub fn main_pid(&self, name: &str) -> Option<u32> {
        self.shared
            .lock()
            .unwrap()
            .units
            .get(name)
            .map(Unit::main_pid)
    }

    /// The unique bus name (`:1.42`) of the last `RestartUnit` caller: a
    /// test can forge a signal to it.
    pub fn caller(&self) -> Option<String> {
        self.shared.lock().unwrap().caller.clone()
    }

    /// The Manager calls so far: "Subscribe", "GetUnit NAME", "RestartUnit
    /// NAME MODE".
    pub fn calls(&self) -> Vec<String> {
        self.shared.lock().unwrap().calls.clone()
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // The object server may outlive this handle: kill the processes now.
        if let Ok(mut st) = self.shared.lock() {
            for u in st.units.values_mut() {
                u.kill();
            }
        }
    }
}
