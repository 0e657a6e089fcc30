//! The Windows service: `muster-agent service install --config FILE`
//! registers it (auto start, LocalSystem, restart-on-failure recovery actions,
//! which an MSI cannot set), `service uninstall` removes it, and the SCM starts
//! it as `muster-agent service run --config FILE`, which hands control to the
//! service dispatcher. A service stop (or system shutdown) is a clean shutdown.
//!
//! Departures (`crate::power`): `PRESHUTDOWN` (preferred; the service asks
//! for [`PRESHUTDOWN_TIMEOUT`]) and `SHUTDOWN` announce `shutdown`; `STOP`
//! announces `stop` (with `back_within` after `announce-restart`, which the
//! MSI's upgrade runs before it stops the service); `POWER_EVENT`
//! `PBT_APMSUSPEND` announces `sleep` (the handler waits for the
//! announcement at most [`SUSPEND_WAIT`]: Windows gives a suspend handler
//! little time), `PBT_APMRESUMEAUTOMATIC`/`PBT_APMRESUMESUSPEND` connect
//! again with `resumed`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use windows_service::service::{
    PowerEventParam, ServiceAccess, ServiceAction, ServiceActionType, ServiceControl,
    ServiceControlAccept, ServiceErrorControl, ServiceExitCode, ServiceFailureActions,
    ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState, ServiceStatus,
    ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use crate::clock::SystemClock;
use crate::config::{Config, LogConfig, LogTarget, Rotation};
use crate::run::PowerRequest;

/// How long Windows waits for the service after `PRESHUTDOWN`: the
/// announcement (`power.announce_timeout`, ≤ 20 s, default 3 s) plus the
/// disconnect and the buffer's flush.
pub const PRESHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);

/// How long the control handler waits for the sleep announcement before it
/// lets Windows suspend.
pub const SUSPEND_WAIT: Duration = Duration::from_secs(2);

pub const SERVICE_NAME: &str = "MusterAgent";
const DISPLAY_NAME: &str = "Muster agent";
const DESCRIPTION: &str = "Samples this terminal's health and CAD latency and ships it to the dispatch centre's collector.";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("service control manager, {step}: {msg}")]
    Scm { step: &'static str, msg: String },
    #[error("{0}")]
    Io(std::io::Error),
    #[error("config: {0}")]
    Config(crate::config::ConfigError),
}

/// Names the step that failed, with the OS's own words.
fn scm<T>(step: &'static str, r: windows_service::Result<T>) -> Result<T, ServiceError> {
    r.map_err(|e| {
        let inner = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        ServiceError::Scm {
            step,
            msg: format!("{e}{inner}"),
        }
    })
}

static CONFIG_PATH: OnceLock<PathBuf> = OnceLock::new();

/// Registers the service with recovery actions: restart after 5 s, 30 s, then
/// every 60 s; the failure count resets after a day without failures. A
/// non-zero exit (not only a crash) counts as a failure.
pub fn install(config: &Path) -> Result<(), ServiceError> {
    // Refuse a config the service could not start with.
    Config::load(config)?;
    let config = std::path::absolute(config)?;
    let manager = scm(
        "connecting",
        ServiceManager::local_computer(
            None::<&str>,
            ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
        ),
    )?;
    let info = ServiceInfo {
        name: OsString::from(SERVICE_NAME),
        display_name: OsString::from(DISPLAY_NAME),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: std::env::current_exe()?,
        launch_arguments: vec![
            OsString::from("service"),
            OsString::from("run"),
            OsString::from("--config"),
            config.into_os_string(),
        ],
        dependencies: vec![],
        account_name: None, // LocalSystem
        account_password: None,
    };
    let service = scm(
        "creating the service",
        manager.create_service(
            &info,
            ServiceAccess::CHANGE_CONFIG | ServiceAccess::START | ServiceAccess::QUERY_STATUS,
        ),
    )?;
    scm(
        "setting the description",
        service.set_description(DESCRIPTION),
    )?;
    // Time to announce the shutdown before Windows goes on.
    if let Err(e) = scm(
        "setting the preshutdown timeout",
        service.set_preshutdown_timeout(PRESHUTDOWN_TIMEOUT),
    ) {
        eprintln!("muster-agent: warning: {e}; Windows' default preshutdown time applies");
    }
    scm(
        "setting the recovery actions",
        service.update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 3600)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![
                ServiceAction {
                    action_type: ServiceActionType::Restart,
                    delay: Duration::from_secs(5),
                },
                ServiceAction {
                    action_type: ServiceActionType::Restart,
                    delay: Duration::from_secs(30),
                },
                ServiceAction {
                    action_type: ServiceActionType::Restart,
                    delay: Duration::from_secs(60),
                },
            ]),
        }),
    )?;
    // Real Windows (Vista and later) has this; Wine answers ERROR_INVALID_LEVEL.
    // Without it the recovery actions still apply to crashes.
    if let Err(e) = scm(
        "enabling recovery on non-crash failures",
        service.set_failure_actions_on_non_crash_failures(true),
    ) {
        eprintln!("muster-agent: warning: {e}; recovery applies to crashes only");
    }
    Ok(())
}

/// Stops the service if it runs, then deletes it.
pub fn uninstall() -> Result<(), ServiceError> {
    let manager = scm(
        "connecting",
        ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT),
    )?;
    let service = scm(
        "opening the service",
        manager.open_service(
            SERVICE_NAME,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        ),
    )?;
    if scm("querying", service.query_status())?.current_state != ServiceState::Stopped {
        let _ = service.stop();
        for _ in 0..30 {
            if scm("querying", service.query_status())?.current_state == ServiceState::Stopped {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    scm("deleting the service", service.delete())?;
    Ok(())
}

/// The SCM's entry: blocks until the service stops.
pub fn dispatch(config: &Path) -> Result<(), ServiceError> {
    let _ = CONFIG_PATH.set(config.to_owned());
    scm(
        "starting the dispatcher (run by the service control manager only)",
        service_dispatcher::start(SERVICE_NAME, ffi_service_main),
    )?;
    Ok(())
}

define_windows_service!(ffi_service_main, service_main);

fn service_main(_args: Vec<OsString>) {
    if let Err(e) = run_service() {
        tracing::error!(error = %e, "Service failed.");
    }
}

fn status(state: ServiceState, exit: u32) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: if state == ServiceState::Running {
            ServiceControlAccept::STOP
                | ServiceControlAccept::PRESHUTDOWN
                | ServiceControlAccept::SHUTDOWN
                | ServiceControlAccept::POWER_EVENT
        } else {
            ServiceControlAccept::empty()
        },
        exit_code: if exit == 0 {
            ServiceExitCode::Win32(0)
        } else {
            ServiceExitCode::ServiceSpecific(exit)
        },
        checkpoint: 0,
        wait_hint: if state == ServiceState::StopPending {
            Duration::from_secs(20)
        } else {
            Duration::default()
        },
        process_id: None,
    }
}

/// The power request for a service control, if it is one.
fn request(ev: &ServiceControl) -> Option<PowerRequest> {
    match ev {
        ServiceControl::Stop => Some(PowerRequest::Terminate {
            going_down: Some(false),
        }),
        ServiceControl::Preshutdown | ServiceControl::Shutdown => Some(PowerRequest::Terminate {
            going_down: Some(true),
        }),
        ServiceControl::PowerEvent(PowerEventParam::Suspend) => {
            Some(PowerRequest::Sleep { done: None })
        }
        ServiceControl::PowerEvent(
            PowerEventParam::ResumeAutomatic | PowerEventParam::ResumeSuspend,
        ) => Some(PowerRequest::Woke),
        _ => None,
    }
}

fn run_service() -> Result<(), ServiceError> {
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel::<PowerRequest>();
    let handle = scm(
        "registering the control handler",
        service_control_handler::register(SERVICE_NAME, move |ev| match request(&ev) {
            Some(PowerRequest::Sleep { .. }) => {
                // Windows suspends when the handler returns: wait (bounded)
                // for the announcement.
                let (done, announced) = std::sync::mpsc::channel();
                let _ = events_tx.send(PowerRequest::Sleep { done: Some(done) });
                let _ = announced.recv_timeout(SUSPEND_WAIT);
                ServiceControlHandlerResult::NoError
            }
            Some(req) => {
                let _ = events_tx.send(req);
                ServiceControlHandlerResult::NoError
            }
            None if matches!(
                ev,
                ServiceControl::Interrogate | ServiceControl::PowerEvent(_)
            ) =>
            {
                ServiceControlHandlerResult::NoError
            }
            None => ServiceControlHandlerResult::NotImplemented,
        }),
    )?;
    let path = CONFIG_PATH.get().cloned().unwrap_or_default();
    let result = (|| -> Result<(), String> {
        let mut cfg = Config::load(&path).map_err(|e| e.to_string())?;
        // A service has no console: stderr logging becomes a file in the data dir.
        if cfg.log.target == LogTarget::Stderr {
            cfg.log = LogConfig {
                level: cfg.log.level.clone(),
                target: LogTarget::File {
                    dir: cfg.data_dir.join("log"),
                    rotation: Rotation::Daily,
                    max_files: 7,
                },
            };
        }
        let _ = crate::service::log::init(&cfg.log);
        handle
            .set_service_status(status(ServiceState::Running, 0))
            .map_err(|e| e.to_string())?;
        let rt = crate::run::runtime().map_err(|e| e.to_string())?;
        let r = rt.block_on(crate::run::run_with(
            cfg,
            Arc::new(SystemClock),
            std::future::pending::<PowerRequest>(),
            events_rx,
        ));
        let _ = handle.set_service_status(status(ServiceState::StopPending, 0));
        rt.shutdown_timeout(Duration::from_secs(5));
        r.map_err(|e| e.to_string())
    })();
    let exit = match &result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "Agent stopped with an error.");
            1
        }
    };
    scm(
        "reporting stopped",
        handle.set_service_status(status(ServiceState::Stopped, exit)),
    )?;
    Ok(())
}

impl From<std::io::Error> for ServiceError {
    fn from(e: std::io::Error) -> Self {
        ServiceError::Io(e)
    }
}

impl From<crate::config::ConfigError> for ServiceError {
    fn from(e: crate::config::ConfigError) -> Self {
        ServiceError::Config(e)
    }
}
