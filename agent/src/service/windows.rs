//! The Windows service: `muster-agent service install --config FILE`
//! registers it (auto start, LocalSystem, restart-on-failure recovery actions,
//! which an MSI cannot set), `service uninstall` removes it, and the SCM starts
//! it as `muster-agent service run --config FILE`, which hands control to the
//! service dispatcher. A service stop (or system shutdown) is a clean shutdown.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use crate::clock::SystemClock;
use crate::config::{Config, LogConfig, LogTarget, Rotation};

pub const SERVICE_NAME: &str = "MusterAgent";
const DISPLAY_NAME: &str = "Muster agent";
const DESCRIPTION: &str = "Samples this terminal's health and CAD latency and ships it to the dispatch centre's collector.";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("service control manager, {step}: {msg}")]
    Scm { step: &'static str, msg: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
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
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
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

fn run_service() -> Result<(), ServiceError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let handle = scm(
        "registering the control handler",
        service_control_handler::register(SERVICE_NAME, move |ev| match ev {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                let _ = stop_tx.send(true);
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
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
        let mut stop = stop_rx;
        let r = rt.block_on(crate::run::run(cfg, Arc::new(SystemClock), async move {
            crate::probe::schedule::stopped(&mut stop).await;
            tracing::info!("Service stop requested.");
        }));
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
