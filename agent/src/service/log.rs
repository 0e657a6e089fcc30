//! Logging through `tracing`: to stderr (journald or the console picks it up)
//! or to a rotating file in the data directory (`[log] to = "file"`).

use tracing_appender::rolling::{RollingFileAppender, Rotation as AppRotation};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogTarget, Rotation};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log.dir {dir}: {msg}")]
    Dir { dir: String, msg: String },
    #[error("log.level: {0}")]
    Filter(String),
    #[error("a logger is already installed")]
    AlreadySet,
}

/// Installs the global subscriber for `run` / the service. `RUST_LOG`, when
/// set, overrides `log.level`.
pub fn init(cfg: &LogConfig) -> Result<(), LogError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.is_empty() => EnvFilter::try_new(s),
        _ => EnvFilter::try_new(&cfg.level),
    }
    .map_err(|e| LogError::Filter(e.to_string()))?;
    match &cfg.target {
        LogTarget::Stderr => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init()
            .map_err(|_| LogError::AlreadySet),
        LogTarget::File {
            dir,
            rotation,
            max_files,
        } => {
            std::fs::create_dir_all(dir).map_err(|e| LogError::Dir {
                dir: dir.display().to_string(),
                msg: e.to_string(),
            })?;
            let appender = RollingFileAppender::builder()
                .rotation(match rotation {
                    Rotation::Daily => AppRotation::DAILY,
                    Rotation::Hourly => AppRotation::HOURLY,
                })
                .filename_prefix("muster-agent")
                .filename_suffix("log")
                .max_log_files(*max_files)
                .build(dir)
                .map_err(|e| LogError::Dir {
                    dir: dir.display().to_string(),
                    msg: e.to_string(),
                })?;
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(appender)
                .try_init()
                .map_err(|_| LogError::AlreadySet)
        }
    }
}

/// For `once` and `check-config`: warnings and errors to stderr only, so
/// stdout stays clean JSON.
pub fn init_quiet() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
