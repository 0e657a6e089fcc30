//! `muster-collector`: argument parsing only; everything else is the library.

// No unsafe here either; the library forbids it.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use muster_collector::app;
use muster_collector::broker::EmbeddedBroker;
use muster_collector::broker::auth::{
    Authenticator, FleetCredentials, StaticUnitCredentials, UnitCredentials,
};
use muster_collector::clock::TokioClock;
use muster_collector::config::Config;
#[cfg(feature = "demo")]
use muster_collector::demo;
use muster_collector::signing::Signer;

#[derive(Parser)]
#[command(
    name = "muster-collector",
    version,
    about = "Muster collector: flags degraded and offline terminals and serves the agencies' feed."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the collector.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Also run the embedded MQTT broker on this address (MQTT 3.1.1,
        /// authenticated: units and agency readers, each kept to its topics).
        #[arg(long)]
        embedded_broker: Option<SocketAddr>,
    },
    /// Validate a config file; names the bad key.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the collector's public signing key(s) (`ed25519:…`), creating
    /// the key file on first use: put the key in agents' `[trust]
    /// collector_keys`.
    Keys {
        #[arg(long)]
        config: PathBuf,
    },
    /// Embedded broker + collector + feed on a printed URL, with a
    /// simulated fleet playing scenes and (feature `demo-agent`) an agent
    /// sampling this machine.
    #[cfg(feature = "demo")]
    Demo {
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// Data directory (default: a temporary one).
        #[arg(long)]
        data: Option<PathBuf>,
        /// No simulated fleet: only the local agent.
        #[arg(long)]
        no_sim: bool,
        /// Play the scenes N times faster (the rules they trip are
        /// shortened by as much); for tests and impatient viewers.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
        sim_speed: u32,
    },
}

/// mimalloc instead of glibc's allocator (Linux; the collector only, never
/// the static musl agent).
///
/// Measured with the fleet bench at 100,000 units on a 2-core machine:
/// with glibc malloc, `_int_malloc`, `unlink_chunk`, `malloc_consolidate`
/// and `free` were about 20 % of the collector's CPU samples, the
/// collector took 135 % of a core and flag latency p99 was 3.0–4.7 s; with
/// mimalloc, 4–7 % of samples, 113 % of a core and 0.69–0.71 s (same
/// commit, same run). glibc also kept freed memory in its per-thread arenas
/// (RSS climbed past 550 MiB at 10,000 units until the collector called
/// `malloc_trim` every 10 s); mimalloc gives freed pages back by itself
/// (its purge delay), so that timer is gone.
#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    {
        use tracing_subscriber::prelude::*;
        let env = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,rumqttd=warn,rumqttc::v5::state=error".into());
        // rumqttd logs every client departure at ERROR: see broker/log.rs.
        // rumqttc warns once per refused PUBACK (an ACL that drops acks: one
        // line per ack); ingest::mqtt counts those and logs one line per
        // 10 s, and warns about refused subscriptions itself.
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(muster_collector::broker::log::RumqttdRoutine)
            .with_filter(env);
        tracing_subscriber::registry().with(fmt).init();
    }
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::CheckConfig { .. }) {
        muster_collector::fdlimit::raise_and_log();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Ends when `rt` drops.
    match cli.cmd {
        Cmd::CheckConfig { config } => match Config::load(&config) {
            Ok(cfg) => {
                // Warnings do not fail the check: the config runs as it is.
                for w in cfg.warnings() {
                    eprintln!("{}: warning: {w}", config.display());
                }
                println!("{}: ok", config.display());
                Ok(())
            }
            Err(e) => {
                // One line naming the file and the bad key, for people and scripts.
                match e {
                    // Already names the file.
                    muster_collector::config::ConfigError::Read { .. } => eprintln!("{e}"),
                    _ => eprintln!("{}: {e}", config.display()),
                }
                std::process::exit(1);
            }
        },
        Cmd::Keys { config } => {
            let cfg = Config::load(&config).with_context(|| format!("{}", config.display()))?;
            let signer = Signer::load(&cfg.signing)?;
            println!(
                "{}  key_file {}",
                signer.public_key(),
                cfg.signing.key_file.display()
            );
            if let (Some(next), Some(path)) = (signer.next_public_key(), &cfg.signing.next_key_file)
            {
                println!("{next}  next_key_file {} (announced)", path.display());
            }
            Ok(())
        }
        Cmd::Run {
            config,
            embedded_broker,
        } => {
            let mut cfg = Config::load(&config).with_context(|| format!("{}", config.display()))?;
            for w in cfg.warnings() {
                tracing::warn!(config = %config.display(), "{w}");
            }
            if cfg.cluster.is_some() {
                anyhow::ensure!(
                    embedded_broker.is_none(),
                    "--embedded-broker and [cluster] do not mix: a cluster's agents connect to the NATS nodes' MQTT listeners"
                );
                return rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
                        .await
                        .with_context(|| format!("http.listen {}", cfg.http.listen))?;
                    println!(
                        "muster-collector listening on http://{}",
                        listener.local_addr()?
                    );
                    muster_collector::cluster::node::run(
                        cfg,
                        listener,
                        Arc::new(TokioClock::new()),
                        muster_base::shutdown::shutdown_signal(),
                    )
                    .await?;
                    anyhow::Ok(())
                });
            }
            rt.block_on(async move {
                let broker = match embedded_broker {
                    Some(addr) => {
                        let units = Arc::new(FleetCredentials::new(
                            StaticUnitCredentials::from_config(&cfg.broker.units),
                        ));
                        let auth = Authenticator::new(
                            Arc::clone(&units) as Arc<dyn UnitCredentials>,
                            cfg.agencies.clone(),
                        );
                        let b = EmbeddedBroker::start(
                            addr,
                            &cfg.broker,
                            auth,
                            cfg.ingest.refusal_log_interval,
                        )
                        .await?;
                        b.configure_collector(&mut cfg.mqtt);
                        Some((b, units))
                    }
                    None => None,
                };
                let listener = tokio::net::TcpListener::bind(cfg.http.listen)
                    .await
                    .with_context(|| format!("http.listen {}", cfg.http.listen))?;
                let addr = listener.local_addr()?;
                println!("muster-collector listening on http://{addr}");
                let wiring = app::Wiring {
                    registry: None,
                    store_layer: None,
                    broker: broker
                        .as_ref()
                        .map(|(b, units)| (Arc::clone(units), Arc::clone(&b.metrics))),
                };
                let r = app::run_with(
                    cfg,
                    listener,
                    Arc::new(TokioClock::new()),
                    muster_base::shutdown::shutdown_signal(),
                    wiring,
                )
                .await;
                if let Some((b, _)) = broker {
                    b.stop().await;
                }
                r?;
                anyhow::Ok(())
            })
        }
        #[cfg(feature = "demo")]
        Cmd::Demo {
            broker,
            http,
            data,
            no_sim,
            sim_speed,
        } => {
            let tmp;
            let data_dir = match data {
                Some(d) => d,
                None => {
                    tmp = std::env::temp_dir().join(format!("muster-demo-{}", std::process::id()));
                    tmp
                }
            };
            #[cfg(feature = "demo-agent")]
            let agent = Some(demo::local_agent(data_dir.join("agent")));
            #[cfg(not(feature = "demo-agent"))]
            let agent = None;
            let opts = demo::DemoOptions {
                broker,
                http,
                data_dir,
                sim: !no_sim,
                speed: sim_speed,
            };
            // The signal handlers are installed inside the runtime, now.
            let stop = {
                let _in_rt = rt.enter();
                muster_base::shutdown::shutdown_signal()
            };
            rt.block_on(demo::run(opts, agent, stop))?;
            Ok(())
        }
    }
}
