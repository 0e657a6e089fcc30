//! `muster-agent`: parses arguments and calls the library.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use muster_agent::clock::SystemClock;
use muster_agent::config::Config;
use muster_agent::{run, service};

#[derive(Parser)]
#[command(
    name = "muster-agent",
    version,
    about = "Muster agent: terminal health and CAD latency, shipped over MQTT."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run in the foreground until SIGTERM/SIGINT (the systemd entry).
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Take one sample and run every probe once; print JSON and exit.
    Once {
        #[arg(long, short)]
        config: PathBuf,
        /// One line of JSON instead of pretty-printed.
        #[arg(long)]
        compact: bool,
    },
    /// For the support desk: is the agent running and connected, when did
    /// the collector last ack, the backlog, and which configuration runs
    /// (exit 0: running and connected; 1: not; 2: bad config).
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// The status file as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate a config file and exit (0: valid, 2: invalid).
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Announce that the next stop is a restart (an upgrade): the running
    /// agent's stop within `--within` says it will be back within that time.
    /// Run by the deb's postinst and the MSI before they restart the service.
    AnnounceRestart {
        #[arg(long, short)]
        config: PathBuf,
        /// How long until the agent is back, e.g. `2m` (at most 1h).
        #[arg(long, default_value = "2m")]
        within: String,
    },
    /// Windows service management.
    #[cfg(windows)]
    Service {
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
}

#[cfg(windows)]
#[derive(Subcommand)]
enum ServiceCmd {
    /// Register the service (auto start, restart on failure).
    Install {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Stop and remove the service.
    Uninstall,
    /// The entry the service control manager starts.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        match e {
            // Already names the file.
            muster_agent::config::ConfigError::Read { .. } => eprintln!("muster-agent: {e}"),
            _ => eprintln!("muster-agent: config {}: {e}", path.display()),
        }
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { config } => match load(&config) {
            Ok(c) => {
                let trusted = match muster_agent::trust::load(&c.trust, &c.data_dir) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!(
                            "muster-agent: config {}: trust.collector_keys: {e}",
                            config.display()
                        );
                        return ExitCode::from(2);
                    }
                };
                println!(
                    "{}: valid. unit {}, mqtt {}{}, buffer {} ({} bytes), sampling every {:?}, {} probe(s), report endpoint {}, {} trusted collector key(s), {} label(s), CAD version {}, {} action(s)",
                    config.display(),
                    c.unit,
                    c.mqtt.broker_list(),
                    if c.mqtt.tls { " (TLS)" } else { "" },
                    c.buffer.path.display(),
                    c.buffer.max_bytes,
                    c.sampling.interval,
                    c.probes.len(),
                    c.report
                        .as_ref()
                        .map(|r| r.listen.to_string())
                        .unwrap_or_else(|| "off".into()),
                    trusted.len(),
                    c.labels.len(),
                    c.cad
                        .version
                        .as_ref()
                        .map(|s| format!("from {s}, every {:?}", c.cad.version_refresh))
                        .unwrap_or_else(|| "not reported".into()),
                    c.actions.len(),
                );
                for a in &c.actions {
                    println!("  action {}", describe_action(a));
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::AnnounceRestart { config, within } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let Some(within) = muster_base::value::parse_duration(&within) else {
                eprintln!("muster-agent: --within: {within:?} is not a duration");
                return ExitCode::from(2);
            };
            use muster_agent::clock::Clock;
            match muster_agent::power::marker::write(&cfg.data_dir, within, SystemClock.now_ms()) {
                Ok(path) => {
                    println!(
                        "Restart announced: a stop within {} says back within {}. ({})",
                        humantime_secs(within),
                        humantime_secs(within),
                        path.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("muster-agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Once { config, compact } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            service::log::init_quiet();
            let r = (|| -> anyhow::Result<()> {
                let rt = run::runtime().context("starting the runtime")?;
                let report = rt.block_on(run::once(&cfg, Arc::new(SystemClock)))?;
                let json = if compact {
                    serde_json::to_string(&report)?
                } else {
                    serde_json::to_string_pretty(&report)?
                };
                println!("{json}");
                Ok(())
            })();
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("muster-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status { config, json } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let s = match muster_agent::status::read(&cfg.data_dir) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!(
                        "muster-agent: no status in {} ({e}): the agent has not run with this config",
                        cfg.data_dir.display()
                    );
                    return ExitCode::FAILURE;
                }
            };
            let now = muster_agent::clock::Clock::now_ms(&SystemClock);
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                print!("{}", muster_agent::status::render(&s, now));
            }
            let fresh = now.saturating_sub(s.updated_ms) <= muster_agent::status::STALE_AFTER_MS;
            if s.running && fresh && s.connected {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Run { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Err(e) = service::log::init(&cfg.log) {
                eprintln!("muster-agent: {e}");
                return ExitCode::from(2);
            }
            let r = (|| -> anyhow::Result<()> {
                let rt = run::runtime().context("starting the runtime")?;
                let stop = {
                    let _in_rt = rt.enter();
                    muster_base::shutdown::shutdown_signal()
                };
                rt.block_on(run::run(cfg, Arc::new(SystemClock), stop))?;
                rt.shutdown_timeout(std::time::Duration::from_secs(5));
                Ok(())
            })();
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "Agent failed.");
                    eprintln!("muster-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(windows)]
        Cmd::Service { cmd } => {
            use muster_agent::service::windows;
            let r = match cmd {
                ServiceCmd::Install { config } => windows::install(&config).map(|()| {
                    println!(
                        "Service {} installed (auto start, restarts on failure).",
                        windows::SERVICE_NAME
                    )
                }),
                ServiceCmd::Uninstall => windows::uninstall()
                    .map(|()| println!("Service {} removed.", windows::SERVICE_NAME)),
                ServiceCmd::Run { config } => windows::dispatch(&config),
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("muster-agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// One `[[action]]` as `check-config` prints it.
fn describe_action(a: &muster_agent::config::ActionSpec) -> String {
    use muster_agent::config::{ActionKind, ArgPart, ParamType};
    let what = match &a.kind {
        ActionKind::RestartService { service } => format!("restart_service {service}"),
        ActionKind::RestartProcess { process, start } => {
            format!("restart_process {process}, start {start:?}")
        }
        ActionKind::FlushDns => "flush_dns".into(),
        ActionKind::RenewDhcp { interface } => format!(
            "renew_dhcp {}",
            interface.as_deref().unwrap_or("(every interface)")
        ),
        ActionKind::CollectDiagnostics => "collect_diagnostics".into(),
        ActionKind::Command { argv, params } => {
            let argv: Vec<String> = argv
                .iter()
                .map(|p| match p {
                    ArgPart::Literal(s) => format!("{s:?}"),
                    ArgPart::Param(n) => format!("{{{n}}}"),
                })
                .collect();
            let params: Vec<String> = params
                .iter()
                .map(|(n, t)| match t {
                    ParamType::String { pattern, .. } => format!("{n}: string {pattern:?}"),
                    ParamType::Integer { min, max } => format!(
                        "{n}: integer {}..={}",
                        min.map_or(String::new(), |m| m.to_string()),
                        max.map_or(String::new(), |m| m.to_string())
                    ),
                    other => format!("{n}: {}", other.as_str()),
                })
                .collect();
            format!("command [{}] ({})", argv.join(", "), params.join("; "))
        }
    };
    format!(
        "{}: {what}; timeout {}, at most {}, output {} bytes",
        a.name,
        humantime_secs(a.timeout),
        a.rate,
        a.output_max
    )
}

fn humantime_secs(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs())
}
