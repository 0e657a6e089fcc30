//! Logging through `tracing`: to stderr (journald or the console picks it up)
//! or to a rotating file in the data directory (`[log] to = "file"`).

use tracing_appender::rolling::{RollingFileAppender, Rotation as AppRotation};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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

/// Parses a log filter: comma-separated directives, each a level
/// (`trace`, `debug`, `info`, `warn`, `error`, `off`) or `target=level`
/// (`"warn,muster_agent::uplink=debug"`). Stricter than `Targets`' own
/// parser, which takes any other word for a target: a typo such as `"wran"`
/// must be an error, not a silent "log everything from a target called wran".
/// This is `Targets`, not `EnvFilter`: no span or field directives, and no
/// regex engine in a binary that must stay small.
pub fn parse_filter(s: &str) -> Result<Targets, String> {
    fn level(l: &str) -> Result<LevelFilter, String> {
        l.parse::<LevelFilter>()
            .map_err(|_| format!("{l:?} is not a level (trace, debug, info, warn, error, off)"))
    }
    fn is_target(t: &str) -> bool {
        t.split("::").all(|part| {
            let mut c = part.chars();
            c.next()
                .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
                && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
    }
    let mut filter = Targets::new();
    let mut any = false;
    for directive in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        any = true;
        filter = match directive.split_once('=') {
            None => filter.with_default(level(directive)?),
            Some((target, l)) => {
                let target = target.trim();
                if !is_target(target) {
                    return Err(format!("{target:?} is not a module path"));
                }
                filter.with_target(target.to_owned(), level(l.trim())?)
            }
        };
    }
    if !any {
        return Err("empty".into());
    }
    Ok(filter)
}

/// Installs the global subscriber for `run` / the service. `RUST_LOG`, when
/// set, overrides `log.level`.
pub fn init(cfg: &LogConfig) -> Result<(), LogError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.is_empty() => parse_filter(&s),
        _ => parse_filter(&cfg.level),
    }
    .map_err(LogError::Filter)?;
    match &cfg.target {
        LogTarget::Stderr => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .finish()
            .with(filter)
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
                .with_ansi(false)
                .with_writer(appender)
                .finish()
                .with(filter)
                .try_init()
                .map_err(|_| LogError::AlreadySet)
        }
    }
}

/// For `once` and `check-config`: warnings and errors to stderr only, so
/// stdout stays clean JSON.
pub fn init_quiet() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| parse_filter(&s).ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::WARN));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .finish()
        .with(filter)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::parse_filter;
    use tracing::Level;

    #[test]
    fn filters() {
        // (filter, target, level, enabled?)
        let cases: &[(&str, &str, Level, bool)] = &[
            ("info", "muster_agent", Level::INFO, true),
            ("info", "muster_agent", Level::DEBUG, false),
            ("warn", "rumqttc::state", Level::WARN, true),
            ("off", "muster_agent", Level::ERROR, false),
            (
                "warn,muster_agent::uplink=debug",
                "muster_agent::uplink",
                Level::DEBUG,
                true,
            ),
            (
                "warn,muster_agent::uplink=debug",
                "muster_agent::probe",
                Level::DEBUG,
                false,
            ),
            (
                "warn, muster_agent = trace",
                "muster_agent::run",
                Level::TRACE,
                true,
            ),
            ("sled=error", "muster_agent", Level::ERROR, false),
        ];
        for (f, target, level, want) in cases {
            let t = parse_filter(f).unwrap_or_else(|e| panic!("{f:?}: {e}"));
            assert_eq!(
                t.would_enable(target, level),
                *want,
                "{f:?} {target} {level}"
            );
        }
    }

    #[test]
    fn bad_filters_say_why() {
        let cases: &[(&str, &str)] = &[
            ("[[[", "not a level"),
            ("wran", "\"wran\" is not a level"),
            ("muster_agent=loud", "\"loud\" is not a level"),
            ("a b=info", "not a module path"),
            ("=info", "not a module path"),
            ("", "empty"),
            (" , ", "empty"),
        ];
        for (f, want) in cases {
            let e = parse_filter(f).expect_err(f);
            assert!(e.contains(want), "{f:?}: {e}");
        }
    }
}
