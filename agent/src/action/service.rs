//! The `restart_service` action: restart a systemd unit (Linux) or a
//! Windows service, and wait (≤ a timeout) until it runs again.
//!
//! Contract:
//! * The name is checked first, before any bus or SCM call
//!   ([`ServiceError::BadName`]): no control characters, no path
//!   separators, bounded length. Linux: systemd's unit name characters
//!   (`[A-Za-z0-9:_.\@-]`, ≤ 255 bytes); a name without a unit type gets
//!   `.service` (as `systemctl restart cad-client` does), any other type
//!   (`.socket`, `.target`, …) is refused. Windows: ≤ 256 UTF-16 units, no
//!   `/` or `\`.
//! * Linux: the agent's own blocking D-Bus client ([`crate::dbus`]) on the
//!   system bus (`DBUS_SYSTEM_BUS_ADDRESS` honoured), on a blocking thread:
//!   `AddMatch` for the manager's `JobRemoved` (before the job exists, so it
//!   cannot be missed), `Subscribe`, `RestartUnit(unit, "replace")` → the
//!   job; its `JobRemoved` (only from systemd's unique name: a unicast
//!   signal from another client is ignored); a result other than `done` is
//!   [`ServiceError::JobFailed`] naming it; then `GetUnit` and the unit's
//!   `ActiveState`/`SubState` (waiting while `activating`/`reloading`) and
//!   the service's `MainPID`. Every call and wait is bounded by what is left
//!   of the one timeout.
//! * Windows: the SCM (`windows-service`), on a blocking thread: open the
//!   service (`QUERY_STATUS | STOP | START`), stop it unless stopped and wait
//!   for `Stopped`, start it, wait for `Running`; all within the timeout.
//! * Other OSes: [`ServiceError::Unsupported`].
//! * Ok: one line for the audit, e.g. `cad-client.service: restart job
//!   /org/freedesktop/systemd1/job/42 done; active (running), pid 1234` or
//!   `CadClient: stopped (pid 1200), started; running, pid 1234`.

use std::time::Duration;

/// Why a restart failed. `name` is the unit or service name as used
/// (Linux: with `.service` added).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// Refused before any bus or SCM call.
    #[error("bad service name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("{name}: no such service ({detail})")]
    NotFound { name: String, detail: String },
    #[error("{name}: access denied ({detail})")]
    AccessDenied { name: String, detail: String },
    #[error("{name}: timed out after {after:?} waiting for {waiting_for}")]
    TimedOut {
        name: String,
        after: Duration,
        waiting_for: String,
    },
    /// systemd finished the restart job with another result than `done`
    /// (`failed`, `canceled`, `timeout`, `dependency`, `skipped`, …).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    #[error("{name}: restart job {job} finished with result {result:?}")]
    JobFailed {
        name: String,
        job: String,
        result: String,
    },
    /// The restart went through but the service does not run.
    #[error("{name}: not running after the restart: {state}")]
    NotRunning { name: String, state: String },
    /// Any other D-Bus or systemd error (Linux).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    #[error("{name}: D-Bus: {detail}")]
    Bus { name: String, detail: String },
    /// Any other service control manager error (Windows).
    #[cfg_attr(not(windows), allow(dead_code))]
    #[error("{name}: service control manager: {detail}")]
    Scm { name: String, detail: String },
    /// Neither Linux nor Windows.
    #[cfg_attr(any(target_os = "linux", windows), allow(dead_code))]
    #[error("restarting a service is not supported on this OS")]
    Unsupported,
    /// The blocking task panicked or was cancelled.
    #[error("restart task failed: {0}")]
    Task(String),
}

/// Restarts the named systemd unit (Linux) or Windows service and waits
/// (≤ timeout) until it is running again.
/// Ok: a one-line account for the audit ("cad-client.service: restart job
/// /org/freedesktop/systemd1/job/42 done; active (running), pid 1234").
pub async fn restart_service(name: &str, timeout: Duration) -> Result<String, ServiceError> {
    #[cfg(target_os = "linux")]
    {
        restart_service_on(&crate::dbus::conn::bus_address(), name, timeout).await
    }
    #[cfg(windows)]
    {
        check_windows_name(name)?;
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || windows::restart(&name, timeout))
            .await
            .map_err(|e| ServiceError::Task(e.to_string()))?
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        let _ = (name, timeout);
        Err(ServiceError::Unsupported)
    }
}

/// [`restart_service`] on the bus at `address` (the tests' private bus).
#[cfg(target_os = "linux")]
async fn restart_service_on(
    address: &str,
    name: &str,
    timeout: Duration,
) -> Result<String, ServiceError> {
    let unit = unit_name(name)?;
    let address = address.to_owned();
    tokio::task::spawn_blocking(move || linux::restart(&address, &unit, timeout))
        .await
        .map_err(|e| ServiceError::Task(e.to_string()))?
}

/// At most this much of a refused name goes into the error (and the audit).
const NAME_SHOWN: usize = 80;

fn bad(name: &str, reason: impl Into<String>) -> ServiceError {
    ServiceError::BadName {
        name: name.chars().take(NAME_SHOWN).collect(),
        reason: reason.into(),
    }
}

/// What both platforms refuse.
fn check_common(name: &str) -> Result<(), ServiceError> {
    if name.is_empty() {
        return Err(bad(name, "empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad(name, "control character"));
    }
    if name.contains('/') {
        return Err(bad(name, "path separator '/'"));
    }
    Ok(())
}

/// systemd's unit types other than `service`.
const OTHER_UNIT_TYPES: &[&str] = &[
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// systemd's longest unit name (`UNIT_NAME_MAX` less the NUL).
const UNIT_NAME_MAX: usize = 255;

/// The systemd unit to restart: `name` checked, `.service` added when it
/// names no unit type.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn unit_name(name: &str) -> Result<String, ServiceError> {
    check_common(name)?;
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":_.\\@-".contains(*c)))
    {
        return Err(bad(
            name,
            format!("{c:?} is not allowed in a systemd unit name"),
        ));
    }
    if name.starts_with(['.', '@']) {
        return Err(bad(
            name,
            "a unit name starts with a letter, digit, ':', '_', '-' or '\\'",
        ));
    }
    let unit = match name.rsplit_once('.') {
        Some((_, "service")) => name.to_owned(),
        Some((_, t)) if OTHER_UNIT_TYPES.contains(&t) => {
            return Err(bad(name, format!("a .{t} unit, not a service")));
        }
        _ => format!("{name}.service"),
    };
    let stem = &unit[..unit.len() - ".service".len()];
    if stem.is_empty() || stem.ends_with('.') {
        return Err(bad(name, "no unit name before .service"));
    }
    if stem.ends_with('@') {
        return Err(bad(name, "a template without an instance"));
    }
    if unit.len() > UNIT_NAME_MAX {
        return Err(bad(
            name,
            format!("longer than {UNIT_NAME_MAX} bytes as a unit name"),
        ));
    }
    Ok(unit)
}

/// Windows' longest service name.
const WINDOWS_NAME_MAX: usize = 256;

/// A Windows service name: no `\` either, ≤ 256 UTF-16 units.
#[cfg_attr(not(windows), allow(dead_code))]
fn check_windows_name(name: &str) -> Result<(), ServiceError> {
    check_common(name)?;
    if name.contains('\\') {
        return Err(bad(name, "path separator '\\'"));
    }
    if name.encode_utf16().count() > WINDOWS_NAME_MAX {
        return Err(bad(
            name,
            format!("longer than {WINDOWS_NAME_MAX} characters"),
        ));
    }
    Ok(())
}

#[cfg(target_os = "linux")]
mod linux {
    // Real time: the blocking D-Bus work runs on a blocking thread and its
    // deadline bounds socket reads there.
    #![allow(clippy::disallowed_methods)]

    use std::time::{Duration, Instant};

    use super::ServiceError;
    use crate::dbus::conn::{DBUS, DBUS_PATH, PROPERTIES};
    use crate::dbus::wire::Kind;
    use crate::dbus::{Conn, DbusError, Message, Value};

    pub const SYSTEMD: &str = "org.freedesktop.systemd1";
    pub const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
    pub const MANAGER: &str = "org.freedesktop.systemd1.Manager";
    pub const UNIT: &str = "org.freedesktop.systemd1.Unit";
    pub const SERVICE: &str = "org.freedesktop.systemd1.Service";
    /// How often a unit still `activating` after its job is asked again.
    const POLL: Duration = Duration::from_millis(100);

    /// One restart: the unit, its timeout and deadline.
    struct Restart<'a> {
        unit: &'a str,
        timeout: Duration,
        deadline: Instant,
    }

    impl Restart<'_> {
        fn timed_out(&self, waiting_for: &str) -> ServiceError {
            ServiceError::TimedOut {
                name: self.unit.to_owned(),
                after: self.timeout,
                waiting_for: waiting_for.to_owned(),
            }
        }

        /// What is left of the deadline; timed out if nothing.
        fn left(&self, waiting_for: &str) -> Result<Duration, ServiceError> {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(1) {
                return Err(self.timed_out(waiting_for));
            }
            Ok(left)
        }

        /// A D-Bus error, typed; `step` says what was being done.
        fn error(&self, step: &str, e: DbusError) -> ServiceError {
            let name = self.unit.to_owned();
            match e {
                DbusError::Timeout(_) => self.timed_out(step),
                DbusError::Remote {
                    name: error,
                    message,
                } => match error.as_str() {
                    "org.freedesktop.systemd1.NoSuchUnit" => ServiceError::NotFound {
                        name,
                        detail: message,
                    },
                    "org.freedesktop.DBus.Error.AccessDenied"
                    | "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired" => {
                        ServiceError::AccessDenied {
                            name,
                            detail: format!("{step}: {error}: {message}"),
                        }
                    }
                    "org.freedesktop.DBus.Error.ServiceUnknown"
                    | "org.freedesktop.DBus.Error.NameHasNoOwner" => ServiceError::Bus {
                        name,
                        detail: format!("{step}: systemd is not on the system bus ({error})"),
                    },
                    _ => ServiceError::Bus {
                        name,
                        detail: format!("{step}: {error}: {message}"),
                    },
                },
                DbusError::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
                    ServiceError::AccessDenied {
                        name,
                        detail: format!("{step}: {io}"),
                    }
                }
                e => ServiceError::Bus {
                    name,
                    detail: format!("{step}: {e}"),
                },
            }
        }

        /// A method call bounded by what is left of the deadline.
        fn call(
            &self,
            c: &mut Conn,
            step: &str,
            (dest, path, iface, member): (&str, &str, &str, &str),
            args: Vec<Value>,
        ) -> Result<Vec<Value>, ServiceError> {
            c.set_timeout(self.left(step)?)
                .map_err(|e| self.error(step, e.into()))?;
            c.call(dest, path, iface, member, args)
                .map_err(|e| self.error(step, e))
        }

        fn property(
            &self,
            c: &mut Conn,
            path: &str,
            iface: &str,
            prop: &str,
        ) -> Result<Value, ServiceError> {
            let step = format!("reading {prop}");
            let r = self.call(
                c,
                &step,
                (SYSTEMD, path, PROPERTIES, "Get"),
                vec![Value::str(iface), Value::str(prop)],
            )?;
            match r.as_slice() {
                [Value::Variant(v)] => Ok((**v).clone()),
                _ => Err(self.error(
                    &step,
                    DbusError::Reply("Properties.Get did not return one variant"),
                )),
            }
        }

        fn string(&self, c: &mut Conn, path: &str, prop: &str) -> Result<String, ServiceError> {
            match self.property(c, path, UNIT, prop)? {
                Value::Str(s) => Ok(s),
                _ => Err(self.error(prop, DbusError::Reply("not a string"))),
            }
        }
    }

    /// The result of `job`'s `JobRemoved`, if `m` is that signal from
    /// systemd (`owner`, its unique name).
    pub fn job_removed<'m>(m: &'m Message, owner: &str, job: &str) -> Option<&'m str> {
        if m.kind != Kind::Signal
            || m.sender.as_deref() != Some(owner)
            || m.path.as_deref() != Some(SYSTEMD_PATH)
            || m.interface.as_deref() != Some(MANAGER)
            || m.member.as_deref() != Some("JobRemoved")
        {
            return None;
        }
        match m.body.as_slice() {
            [
                Value::U32(_),
                Value::ObjectPath(p),
                Value::Str(_),
                Value::Str(result),
            ] if p == job => Some(result),
            _ => None,
        }
    }

    /// Restarts `unit` through systemd on the bus at `address` (blocking).
    pub fn restart(address: &str, unit: &str, timeout: Duration) -> Result<String, ServiceError> {
        let r = Restart {
            unit,
            timeout,
            deadline: Instant::now() + timeout,
        };
        let mut c = Conn::connect(address, r.left("the system bus")?)
            .map_err(|e| r.error("connecting to the system bus", e))?;
        let bus = |m: &'static str| (DBUS, DBUS_PATH, DBUS, m);
        let owner = match r
            .call(
                &mut c,
                "GetNameOwner",
                bus("GetNameOwner"),
                vec![Value::str(SYSTEMD)],
            )?
            .as_slice()
        {
            [Value::Str(s)] => s.clone(),
            _ => {
                return Err(r.error(
                    "GetNameOwner",
                    DbusError::Reply("GetNameOwner did not return a name"),
                ));
            }
        };
        // Subscribed before the job exists: its JobRemoved cannot be missed.
        c.keep_signals(true);
        let rule = format!(
            "type='signal',sender='{SYSTEMD}',path='{SYSTEMD_PATH}',interface='{MANAGER}',member='JobRemoved'"
        );
        r.call(&mut c, "AddMatch", bus("AddMatch"), vec![Value::Str(rule)])?;
        let manager = |m: &'static str| (SYSTEMD, SYSTEMD_PATH, MANAGER, m);
        // systemd sends job signals on the system bus to subscribed clients
        // (and to a job's requester): ask, but go on without.
        if let Err(e) = r.call(&mut c, "Subscribe", manager("Subscribe"), vec![]) {
            tracing::debug!(error = %e, "systemd's Subscribe failed; waiting for the job anyway.");
        }
        let job = match r
            .call(
                &mut c,
                "RestartUnit",
                manager("RestartUnit"),
                vec![Value::str(unit), Value::str("replace")],
            )?
            .as_slice()
        {
            [Value::ObjectPath(p)] => p.clone(),
            _ => {
                return Err(r.error(
                    "RestartUnit",
                    DbusError::Reply("RestartUnit did not return a job path"),
                ));
            }
        };
        let waiting = format!("the restart job {job}");
        let result = loop {
            let left = r.left(&waiting)?;
            match c.next_signal(left).map_err(|e| r.error(&waiting, e))? {
                Some(m) => {
                    if let Some(result) = job_removed(&m, &owner, &job) {
                        break result.to_owned();
                    }
                }
                None => return Err(r.timed_out(&waiting)),
            }
        };
        if result != "done" {
            return Err(ServiceError::JobFailed {
                name: unit.to_owned(),
                job,
                result,
            });
        }
        let path = match r
            .call(
                &mut c,
                "GetUnit",
                manager("GetUnit"),
                vec![Value::str(unit)],
            )?
            .as_slice()
        {
            [Value::ObjectPath(p)] => p.clone(),
            _ => {
                return Err(r.error(
                    "GetUnit",
                    DbusError::Reply("GetUnit did not return a unit path"),
                ));
            }
        };
        let (active, sub) = loop {
            let active = r.string(&mut c, &path, "ActiveState")?;
            let sub = r.string(&mut c, &path, "SubState")?;
            match active.as_str() {
                "active" => break (active, sub),
                "activating" | "reloading" => {
                    let left = r.left(&format!("{unit} to be active (it is {active} ({sub}))"))?;
                    std::thread::sleep(POLL.min(left));
                }
                _ => {
                    return Err(ServiceError::NotRunning {
                        name: unit.to_owned(),
                        state: format!("{active} ({sub})"),
                    });
                }
            }
        };
        let pid = match r.property(&mut c, &path, SERVICE, "MainPID")? {
            Value::U32(0) => "no main process".to_owned(),
            Value::U32(p) => format!("pid {p}"),
            _ => return Err(r.error("MainPID", DbusError::Reply("not a u32"))),
        };
        Ok(format!(
            "{unit}: restart job {job} {result}; {active} ({sub}), {pid}"
        ))
    }
}

#[cfg(windows)]
mod windows {
    // Real time: the SCM is polled on a blocking thread.
    #![allow(clippy::disallowed_methods)]

    use std::ffi::OsStr;
    use std::time::{Duration, Instant};

    use windows_service::service::{Service, ServiceAccess, ServiceState, ServiceStatus};
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

    use super::ServiceError;

    const ERROR_ACCESS_DENIED: i32 = 5;
    const ERROR_INVALID_NAME: i32 = 123;
    const ERROR_SERVICE_ALREADY_RUNNING: i32 = 1056;
    const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
    const ERROR_SERVICE_CANNOT_ACCEPT_CTRL: i32 = 1061;
    const ERROR_SERVICE_NOT_ACTIVE: i32 = 1062;
    /// How often the SCM is asked for the service's state.
    const POLL: Duration = Duration::from_millis(100);

    struct Restart<'a> {
        name: &'a str,
        timeout: Duration,
        deadline: Instant,
    }

    fn os_code(e: &windows_service::Error) -> Option<i32> {
        match e {
            windows_service::Error::Winapi(io) => io.raw_os_error(),
            _ => None,
        }
    }

    impl Restart<'_> {
        fn error(&self, step: &str, e: windows_service::Error) -> ServiceError {
            let name = self.name.to_owned();
            let inner = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            let detail = format!("{step}: {e}{inner}");
            match os_code(&e) {
                Some(ERROR_SERVICE_DOES_NOT_EXIST) => ServiceError::NotFound { name, detail },
                Some(ERROR_ACCESS_DENIED) => ServiceError::AccessDenied { name, detail },
                Some(ERROR_INVALID_NAME) => ServiceError::BadName {
                    name,
                    reason: detail,
                },
                _ => ServiceError::Scm { name, detail },
            }
        }

        fn query(&self, s: &Service) -> Result<ServiceStatus, ServiceError> {
            s.query_status()
                .map_err(|e| self.error("querying the service", e))
        }

        /// Sleeps a poll interval, or times out at the deadline.
        fn wait(&self, waiting_for: &str) -> Result<(), ServiceError> {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ServiceError::TimedOut {
                    name: self.name.to_owned(),
                    after: self.timeout,
                    waiting_for: waiting_for.to_owned(),
                });
            }
            std::thread::sleep(POLL.min(left));
            Ok(())
        }
    }

    /// Stops `name` if it runs, starts it, waits until it runs (blocking).
    pub fn restart(name: &str, timeout: Duration) -> Result<String, ServiceError> {
        let r = Restart {
            name,
            timeout,
            deadline: Instant::now() + timeout,
        };
        let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
            .map_err(|e| r.error("connecting to the service control manager", e))?;
        let service = manager
            .open_service(
                name,
                ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::START,
            )
            .map_err(|e| r.error("opening the service", e))?;
        let before = r.query(&service)?;
        let stopped = match (before.current_state, before.process_id) {
            (ServiceState::Stopped, _) => "was stopped".to_owned(),
            (_, Some(pid)) => format!("stopped (pid {pid})"),
            (state, None) => format!("stopped (was {state:?})"),
        };
        let mut waiting_for = "the service to stop";
        let mut stop_sent = false;
        loop {
            let s = r.query(&service)?;
            match s.current_state {
                ServiceState::Stopped => break,
                ServiceState::Running | ServiceState::Paused if !stop_sent => {
                    match service.stop() {
                        Ok(_) => stop_sent = true,
                        // Stopped meanwhile.
                        Err(e) if os_code(&e) == Some(ERROR_SERVICE_NOT_ACTIVE) => stop_sent = true,
                        // Not now (or never: it does not accept STOP): ask again.
                        Err(e) if os_code(&e) == Some(ERROR_SERVICE_CANNOT_ACCEPT_CTRL) => {
                            waiting_for = "the service to stop (it does not accept STOP now)";
                        }
                        Err(e) => return Err(r.error("stopping the service", e)),
                    }
                }
                // Pending: wait for it to settle (or to stop).
                _ => {}
            }
            r.wait(waiting_for)?;
        }
        match service.start::<&OsStr>(&[]) {
            Ok(()) => {}
            // Started by someone else meanwhile: running again all the same.
            Err(e) if os_code(&e) == Some(ERROR_SERVICE_ALREADY_RUNNING) => {}
            Err(e) => return Err(r.error("starting the service", e)),
        }
        loop {
            let s = r.query(&service)?;
            match s.current_state {
                ServiceState::Running => {
                    let pid = s
                        .process_id
                        .map_or_else(|| "no pid".to_owned(), |p| format!("pid {p}"));
                    return Ok(format!("{name}: {stopped}, started; running, {pid}"));
                }
                ServiceState::Stopped => {
                    return Err(ServiceError::NotRunning {
                        name: name.to_owned(),
                        state: format!(
                            "stopped again after the start (exit code {:?})",
                            s.exit_code
                        ),
                    });
                }
                _ => {}
            }
            r.wait("the service to run")?;
        }
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    fn reason(r: Result<impl std::fmt::Debug, ServiceError>) -> String {
        match r {
            Err(ServiceError::BadName { reason, .. }) => reason,
            other => panic!("not a bad name: {other:?}"),
        }
    }

    #[test]
    fn unit_names_get_service_added_and_are_checked() {
        for (name, unit) in [
            ("cad-client", "cad-client.service"),
            ("cad-client.service", "cad-client.service"),
            ("cad.client", "cad.client.service"),
            ("getty@tty1.service", "getty@tty1.service"),
            (
                "systemd-cryptsetup@luks\\x2dabc",
                "systemd-cryptsetup@luks\\x2dabc.service",
            ),
            ("a:b_c", "a:b_c.service"),
        ] {
            assert_eq!(unit_name(name).unwrap(), unit, "{name}");
        }
        let long = "a".repeat(UNIT_NAME_MAX - ".service".len() + 1);
        for (name, why) in [
            ("", "empty"),
            ("../etc/passwd", "path separator"),
            ("cad/client", "path separator"),
            ("cad\nclient", "control character"),
            ("cad\u{0}client", "control character"),
            ("cad client", "not allowed"),
            ("cad;reboot", "not allowed"),
            ("cäd", "not allowed"),
            (".service", "starts with"),
            ("@x.service", "starts with"),
            ("getty@.service", "template"),
            ("getty@", "template"),
            ("sshd.socket", "not a service"),
            ("multi-user.target", "not a service"),
            (long.as_str(), "longer than 255"),
        ] {
            let r = reason(unit_name(name));
            assert!(r.contains(why), "{name:?}: {r}");
        }
        assert!(unit_name(&"a".repeat(UNIT_NAME_MAX - ".service".len())).is_ok());
        // A refused name is shown bounded.
        match unit_name(&"/".repeat(10_000)) {
            Err(ServiceError::BadName { name, .. }) => assert_eq!(name.len(), NAME_SHOWN),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn windows_names_are_checked() {
        for name in ["CadStandIn", "MusterAgent", "cad client (x86)", "Ünïcode"] {
            check_windows_name(name).unwrap();
        }
        check_windows_name(&"é".repeat(WINDOWS_NAME_MAX)).unwrap();
        for (name, why) in [
            ("", "empty"),
            ("a\\b", "path separator"),
            ("a/b", "path separator"),
            ("a\tb", "control character"),
            (&"é".repeat(WINDOWS_NAME_MAX + 1), "longer than 256"),
        ] {
            let r = reason(check_windows_name(name));
            assert!(r.contains(why), "{name:?}: {r}");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    // Real time: the fake systemd's processes and a timeout measured.
    #![allow(clippy::disallowed_methods)]

    use std::path::{Path, PathBuf};
    use std::time::Instant;

    use muster_testkit::DbusDaemon;
    use muster_testkit::systemd::{OnRestart, Systemd};

    use super::*;

    const UNIT: &str = "cad-client.service";

    /// The stand-in CAD client: `sleep` under another name (a symlink: no
    /// file written then executed, so no ETXTBSY with other tests forking).
    fn stand_in(dir: &Path) -> PathBuf {
        let exe = dir.join("cadclient");
        std::os::unix::fs::symlink(muster_testkit::program("sleep"), &exe).unwrap();
        exe
    }

    /// Whether `pid` runs (a reaped process has no /proc entry; a zombie
    /// does not count).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    fn argv(pid: u32) -> Vec<String> {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    struct Rig {
        bus: DbusDaemon,
        systemd: Systemd,
        dir: muster_testkit::TempDir,
    }

    /// A private bus, a fake systemd on it with `cad-client.service`
    /// running the stand-in; its pid.
    async fn rig(on_restart: OnRestart) -> (Rig, u32) {
        let bus = DbusDaemon::start();
        let systemd = Systemd::start(&bus, "running").await;
        let dir = muster_testkit::TempDir::new().unwrap();
        let exe = stand_in(dir.path());
        let pid = systemd.add_service(UNIT, &exe, &["600"], on_restart).await;
        (Rig { bus, systemd, dir }, pid)
    }

    #[tokio::test]
    async fn restarts_the_unit_and_reports_its_new_pid() {
        let (rig, old) = rig(OnRestart::Respawn).await;
        assert!(alive(old));
        let line = restart_service_on(rig.bus.address(), "cad-client", Duration::from_secs(10))
            .await
            .unwrap();
        let new = rig.systemd.main_pid(UNIT).unwrap();
        assert_ne!(new, old);
        assert!(!alive(old), "the old process {old} still runs");
        assert!(alive(new), "the new process {new} does not run");
        let exe = rig.dir.path().join("cadclient").display().to_string();
        assert_eq!(argv(new), [exe, "600".to_owned()]);
        assert_eq!(
            line,
            format!(
                "cad-client.service: restart job /org/freedesktop/systemd1/job/1 done; \
                 active (running), pid {new}"
            )
        );
        assert_eq!(
            rig.systemd.calls(),
            [
                "Subscribe",
                "RestartUnit cad-client.service replace",
                "GetUnit cad-client.service"
            ]
        );
    }

    #[tokio::test]
    async fn an_unknown_unit_is_not_found() {
        let (rig, pid) = rig(OnRestart::Respawn).await;
        let e = restart_service_on(rig.bus.address(), "nope", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ServiceError::NotFound { name, detail }
                if name == "nope.service" && detail.contains("not found")),
            "{e:?}"
        );
        assert_eq!(rig.systemd.main_pid(UNIT), Some(pid));
        assert!(alive(pid));
    }

    #[tokio::test]
    async fn a_job_that_never_completes_times_out() {
        let (rig, pid) = rig(OnRestart::Hang).await;
        let t0 = Instant::now();
        let e = restart_service_on(rig.bus.address(), UNIT, Duration::from_millis(800))
            .await
            .unwrap_err();
        let took = t0.elapsed();
        assert!(
            matches!(&e, ServiceError::TimedOut { name, after, waiting_for }
                if name == UNIT && *after == Duration::from_millis(800)
                    && waiting_for == "the restart job /org/freedesktop/systemd1/job/1"),
            "{e:?}"
        );
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert!(alive(pid));
    }

    #[tokio::test]
    async fn a_job_removed_from_another_client_is_ignored() {
        let (rig, pid) = rig(OnRestart::Hang).await;
        let address = rig.bus.address().to_owned();
        let restart = tokio::spawn(async move {
            restart_service_on(&address, UNIT, Duration::from_secs(2)).await
        });
        let t0 = Instant::now();
        let caller = loop {
            if let Some(c) = rig.systemd.caller() {
                break c;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "no RestartUnit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // Another local client sends systemd's signal straight to the
        // agent (a unicast signal bypasses the match rule).
        let forger = zbus::connection::Builder::address(rig.bus.address())
            .unwrap()
            .build()
            .await
            .unwrap();
        let job = zbus::zvariant::ObjectPath::try_from("/org/freedesktop/systemd1/job/1").unwrap();
        forger
            .emit_signal(
                Some(caller.as_str()),
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "JobRemoved",
                &(1u32, job, UNIT, "done"),
            )
            .await
            .unwrap();
        let e = restart.await.unwrap().unwrap_err();
        assert!(matches!(e, ServiceError::TimedOut { .. }), "{e:?}");
        assert_eq!(rig.systemd.main_pid(UNIT), Some(pid));
    }

    #[tokio::test]
    async fn a_failed_job_is_an_error_naming_its_result() {
        let (rig, _) = rig(OnRestart::Fail("dependency".into())).await;
        let e = restart_service_on(rig.bus.address(), UNIT, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            ServiceError::JobFailed {
                name: UNIT.into(),
                job: "/org/freedesktop/systemd1/job/1".into(),
                result: "dependency".into()
            }
        );
        assert!(e.to_string().contains("\"dependency\""), "{e}");
    }

    #[tokio::test]
    async fn access_denied_is_typed() {
        let (rig, pid) = rig(OnRestart::Deny).await;
        let e = restart_service_on(rig.bus.address(), UNIT, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ServiceError::AccessDenied { name, detail }
                if name == UNIT && detail.contains("org.freedesktop.DBus.Error.AccessDenied")),
            "{e:?}"
        );
        assert!(alive(pid));
    }

    #[tokio::test]
    async fn no_systemd_on_the_bus_is_a_bus_error() {
        let bus = DbusDaemon::start();
        let e = restart_service_on(bus.address(), UNIT, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ServiceError::Bus { detail, .. }
                if detail.contains("systemd is not on the system bus")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_bad_name_is_refused_before_any_bus_call() {
        let (rig, pid) = rig(OnRestart::Respawn).await;
        for name in ["../cad-client", "cad-client\n", "cad-client.socket", ""] {
            let e = restart_service_on(rig.bus.address(), name, Duration::from_secs(10))
                .await
                .unwrap_err();
            assert!(matches!(e, ServiceError::BadName { .. }), "{name:?}: {e:?}");
            // Not even a connection: an address nothing listens on.
            let e = restart_service_on("unix:path=/nonexistent/bus", name, Duration::from_secs(1))
                .await
                .unwrap_err();
            assert!(matches!(e, ServiceError::BadName { .. }), "{name:?}: {e:?}");
        }
        assert_eq!(rig.systemd.calls(), Vec::<String>::new());
        assert_eq!(rig.systemd.main_pid(UNIT), Some(pid));
    }
}

/// The Windows path against the real SCM: `packaging/test-msi.sh` registers
/// `CadStandIn` (a second service running the agent itself) under Wine,
/// then runs these tests there by name with `--ignored`.
#[cfg(all(test, windows))]
mod windows_tests {
    // Real time: waiting for a real process to go.
    #![allow(clippy::disallowed_methods)]

    use std::time::Instant;

    use sysinfo::{Pid, ProcessesToUpdate, System};
    use windows_service::service::{ServiceAccess, ServiceState};
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

    use super::*;

    const STAND_IN: &str = "CadStandIn";
    const TIMEOUT: Duration = Duration::from_secs(60);

    fn service(access: ServiceAccess) -> windows_service::service::Service {
        ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
            .expect("the SCM")
            .open_service(STAND_IN, access)
            .expect("the stand-in service (registered by packaging/test-msi.sh)")
    }

    /// The stand-in's state and pid, asked of the SCM directly.
    fn status() -> (ServiceState, Option<u32>) {
        let s = service(ServiceAccess::QUERY_STATUS)
            .query_status()
            .expect("query the stand-in");
        (s.current_state, s.process_id)
    }

    /// Starts the stand-in unless it runs (with the SCM directly: Wine stops
    /// its services when the prefix's last other process exits, so the
    /// script cannot leave it running for this test); its pid.
    fn ensure_running() -> u32 {
        if status().0 == ServiceState::Stopped {
            service(ServiceAccess::START)
                .start::<&std::ffi::OsStr>(&[])
                .expect("start the stand-in");
        }
        let t0 = Instant::now();
        loop {
            if let (ServiceState::Running, Some(pid)) = status() {
                return pid;
            }
            assert!(t0.elapsed() < TIMEOUT, "the stand-in does not run");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn process_runs(pid: u32) -> bool {
        let mut sys = System::new().expect("sysinfo");
        let pid = Pid::from_u32(pid);
        sys.refresh_processes(ProcessesToUpdate::Some(&[pid]), true);
        sys.process(pid).is_some()
    }

    #[tokio::test]
    #[ignore = "needs the CadStandIn service: packaging/test-msi.sh runs it under Wine"]
    async fn restarts_a_real_service() {
        // Running: stopped (its process goes), started again.
        let old = ensure_running();
        assert!(process_runs(old));
        let line = restart_service(STAND_IN, TIMEOUT).await.unwrap();
        let (state, new) = status();
        assert_eq!(state, ServiceState::Running);
        let new = new.expect("a running service has a pid");
        assert_ne!(new, old);
        assert!(process_runs(new), "the new process {new} does not run");
        assert_eq!(
            line,
            format!("{STAND_IN}: stopped (pid {old}), started; running, pid {new}")
        );
        let t0 = Instant::now();
        while process_runs(old) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the old process {old} still runs"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("restarted: {line}");

        // Stopped: started.
        let s = service(ServiceAccess::QUERY_STATUS | ServiceAccess::STOP);
        s.stop().expect("stop the stand-in");
        let t0 = Instant::now();
        while status().0 != ServiceState::Stopped {
            assert!(t0.elapsed() < TIMEOUT, "the stand-in does not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
        let line = restart_service(STAND_IN, TIMEOUT).await.unwrap();
        let (state, pid) = status();
        assert_eq!(state, ServiceState::Running);
        let pid = pid.expect("a running service has a pid");
        assert_eq!(
            line,
            format!("{STAND_IN}: was stopped, started; running, pid {pid}")
        );
        println!("started: {line}");

        // No time left: the stop is asked for, the wait times out, typed.
        let e = restart_service(STAND_IN, Duration::ZERO).await.unwrap_err();
        assert!(
            matches!(&e, ServiceError::TimedOut { name, waiting_for, .. }
                if name == STAND_IN && waiting_for == "the service to stop"),
            "{e:?}"
        );
        println!("no time: {e}");
    }

    #[tokio::test]
    #[ignore = "needs the SCM (run under Wine by packaging/test-msi.sh)"]
    async fn an_unknown_service_is_not_found_and_a_bad_name_is_refused() {
        let e = restart_service("NoSuchMusterService", TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ServiceError::NotFound { name, .. } if name == "NoSuchMusterService"),
            "{e:?}"
        );
        println!("unknown: {e}");
        let e = restart_service("..\\CadStandIn", TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::BadName { .. }), "{e:?}");
    }
}
