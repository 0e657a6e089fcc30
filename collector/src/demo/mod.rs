//! `muster-collector demo`: the embedded broker, the collector and the feed
//! in one process, on a printed URL, with generated tokens and a temporary
//! data directory, plus
//! * the simulated fleet (`fleet.rs`, unless `--no-sim`): two agencies of
//!   MCTs and CAD workstations, each a real MQTT client with its own
//!   generated credential, playing the scenes of `scenes.rs` on a loop;
//! * the in-process agent sampling this machine (`demo/local`, cargo
//!   feature `demo-agent`, on by default; the packaged collector is built
//!   without it, so it links none of the agent's samplers and probes).
//!
//! [`DemoTask`] is the seam for what runs alongside: it gets the broker
//! address and the demo agency, and is stopped with everything else.
//! The demo config differs from the shipped defaults only in what the
//! scenes need: `[rules.off.agency."county-fire"] max` is short (90 scene
//! seconds) so an off unit turns overdue, and at `--sim-speed N` > 1 the
//! shipped rules the scenes trip keep their thresholds but have their
//! `for` divided by N ([`rules_toml`]).

pub mod fleet;
pub mod scenes;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError};
use std::collections::BTreeMap;

use crate::broker::auth::{
    Authenticator, FleetCredentials, StaticUnitCredentials, generate_secret,
};
use crate::broker::{BrokerError, EmbeddedBroker};
use crate::clock::TokioClock;
use crate::config::{BrokerConfig, Config, ConfigError};

/// The demo agency.
pub const DEMO_AGENCY: &str = "demo";

/// The demo's in-process agent's unit id.
pub const DEMO_UNIT: &str = "local";

/// What a task running alongside the demo collector gets.
#[derive(Clone)]
pub struct DemoEnv {
    /// Where agents connect (MQTT 3.1.1, authenticated).
    pub broker: SocketAddr,
    pub agency: String,
    /// The unit [`DEMO_UNIT`]'s MQTT user name and generated password.
    pub unit_login: (String, String),
    pub feed_url: String,
    /// The collector's public signing key (`ed25519:…`): agents trust it.
    pub collector_key: String,
    /// Cancelled when the demo stops.
    pub shutdown: CancellationToken,
}

pub type DemoTask = Box<dyn FnOnce(DemoEnv) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Signing(#[from] crate::signing::SigningError),
}

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub broker: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    /// Run the simulated fleet.
    pub sim: bool,
    /// Scene seconds per second (1 = real time).
    pub speed: u32,
}

/// The shipped rules the scenes trip, whose `for` is scaled by the speed.
pub const SCALED_RULES: [&str; 4] = [
    "probe-slow",
    "disk-full",
    "disk-critical",
    "cad-client-down",
];

/// Largest `--sim-speed`.
pub const MAX_SPEED: u32 = 20;

/// The demo config's `[rules]`: county-fire's short `[rules.off] max`, and
/// at `speed` > 1 the [`SCALED_RULES`] as shipped with `for` / `speed`.
pub fn rules_toml(speed: u32) -> String {
    use toml::Value;
    let speed = speed.clamp(1, MAX_SPEED);
    let ms = |d: std::time::Duration| Value::String(format!("{}ms", d.as_millis()));
    let off_max = std::time::Duration::from_secs(scenes::OFF_MAX_S) / speed;
    let mut agency = toml::map::Map::new();
    agency.insert("max".into(), ms(off_max));
    let mut agencies = toml::map::Map::new();
    agencies.insert(scenes::OVERDUE_AGENCY.into(), Value::Table(agency));
    let mut off = toml::map::Map::new();
    off.insert("agency".into(), Value::Table(agencies));
    let mut rules = toml::map::Map::new();
    rules.insert("off".into(), Value::Table(off));
    if speed > 1 {
        let shipped: Value = crate::rules::DEFAULT_RULES_TOML
            .parse()
            .expect("the shipped rules parse");
        let scaled: Vec<Value> = shipped["rules"]["threshold"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| SCALED_RULES.contains(&r["name"].as_str().unwrap_or("")))
            .map(|r| {
                let mut r = r.clone();
                if let Some(d) = r
                    .get("for")
                    .and_then(Value::as_str)
                    .and_then(|f| humantime::parse_duration(f).ok())
                {
                    r["for"] = ms(d / speed);
                }
                r
            })
            .collect();
        rules.insert("threshold".into(), Value::Array(scaled));
    }
    let mut doc = toml::map::Map::new();
    doc.insert("rules".into(), Value::Table(rules));
    toml::to_string(&Value::Table(doc)).expect("a TOML table serialises")
}

fn token(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    let a = h.finish();
    let b = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{prefix}-{a:016x}{b:016x}")
}

#[cfg(feature = "demo-agent")]
/// The demo's in-process agent: real sampling of this machine, an HTTP
/// and a TCP probe of the demo's own feed, shipped
/// through the embedded broker like any terminal's.
pub fn local_agent(data_dir: PathBuf) -> DemoTask {
    Box::new(move |env: DemoEnv| {
        Box::pin(async move {
            let text = format!(
                r#"
agency = "{agency}"
unit_id = "{unit}"
data_dir = "{dir}"
[mqtt]
url = "mqtt://{broker}"
username = "{user}"
password = "{password}"
[sampling]
interval = "5s"
processes = ["muster-collector"]
[uplink]
heartbeat_interval = "15s"
[trust]
collector_keys = ["{key}"]
[[probe]]
name = "feed"
kind = "http"
target = "{feed}/healthz"
interval = "10s"
timeout = "3s"
[[probe]]
name = "feed-tcp"
kind = "tcp"
target = "{feed_addr}"
interval = "10s"
timeout = "3s"
"#,
                agency = env.agency,
                unit = DEMO_UNIT,
                user = env.unit_login.0,
                password = env.unit_login.1,
                dir = data_dir.display(),
                broker = env.broker,
                feed = env.feed_url,
                feed_addr = env.feed_url.trim_start_matches("http://"),
                key = env.collector_key,
            );
            let cfg = match muster_agent::config::Config::parse(&text) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "Demo agent config refused.");
                    return;
                }
            };
            println!("  local agent:   {} (sampling this machine)", cfg.unit);
            let clock = Arc::new(muster_agent::clock::SystemClock);
            let stop = env.shutdown.clone();
            if let Err(e) = muster_agent::run::run(cfg, clock, stop.cancelled_owned()).await {
                tracing::error!(error = %e, "Demo agent stopped.");
            }
        })
    })
}

/// The demo collector's config.
pub fn collector_toml(
    admin: &str,
    http: SocketAddr,
    data_dir: &std::path::Path,
    agencies: &BTreeMap<String, String>,
    speed: u32,
) -> String {
    let agency_toml: String = agencies
        .iter()
        .map(|(name, token)| format!("[[agency]]\nname = \"{name}\"\ntoken = \"{token}\"\n"))
        .collect();
    format!(
        r#"
admin_token = "{admin}"
[mqtt]
client_id = "muster-collector-demo"
[http]
listen = "{http}"
metrics_require_token = false
[store]
path = "{path}"
{agency_toml}
{rules}
"#,
        path = data_dir.display(),
        rules = rules_toml(speed),
    )
}

/// Runs the demo until `shutdown` completes.
pub async fn run(
    opts: DemoOptions,
    alongside: Option<DemoTask>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DemoError> {
    let admin = token("admin");
    let agency_token = token(DEMO_AGENCY);
    let unit = muster_proto::UnitId::new(DEMO_AGENCY, DEMO_UNIT)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let unit_password = generate_secret();
    let mut units = StaticUnitCredentials::new();
    units.insert(unit.clone(), unit_password.as_bytes());
    let mut agencies = BTreeMap::from([(DEMO_AGENCY.to_owned(), agency_token.clone())]);
    let sim_units: Vec<(scenes::SimUnit, String)> = if opts.sim {
        scenes::fleet()
            .into_iter()
            .map(|u| (u, generate_secret()))
            .collect()
    } else {
        Vec::new()
    };
    for (u, password) in &sim_units {
        let id = muster_proto::UnitId::new(u.agency, u.unit.clone())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        units.insert(id, password.as_bytes());
        agencies
            .entry(u.agency.to_owned())
            .or_insert_with(|| token(u.agency));
    }
    let units = Arc::new(FleetCredentials::new(units));
    let auth = Authenticator::new(
        Arc::clone(&units) as Arc<dyn crate::broker::auth::UnitCredentials>,
        agencies.clone(),
    );
    let broker_cfg = BrokerConfig {
        // Far more than the demo needs, and within any open-files limit.
        max_connections: 1_000,
        ..BrokerConfig::default()
    };
    let broker = EmbeddedBroker::start(
        opts.broker,
        &broker_cfg,
        auth,
        std::time::Duration::from_secs(10),
    )
    .await?;
    let text = collector_toml(&admin, opts.http, &opts.data_dir, &agencies, opts.speed);
    let mut cfg = Config::parse(&text)?;
    let collector_key = crate::signing::Signer::load(&cfg.signing)?
        .public_key()
        .to_string();
    broker.configure_collector(&mut cfg.mqtt);
    let listener = TcpListener::bind(opts.http).await?;
    let addr = listener.local_addr()?;
    let feed_url = format!("http://{addr}");
    println!("Muster demo");
    println!("  dashboard:     {feed_url}/  (sign in with a token below)");
    println!("  feed:          {feed_url}/api/v1/units");
    println!("  stream:        {feed_url}/api/v1/stream");
    println!("  metrics:       {feed_url}/metrics");
    println!("  admin token:   {admin}");
    for (name, token) in &agencies {
        println!("  agency token:  {token}  (agency \"{name}\")");
    }
    if opts.sim {
        println!(
            "  fleet:         {} simulated units in {} agencies, scenes every {} s (README: \"What the demo shows\")",
            sim_units.len(),
            agencies.len() - 1,
            scenes::PERIOD_S / u64::from(opts.speed.clamp(1, MAX_SPEED)),
        );
    }
    println!(
        "  MQTT broker:   mqtt://{}  (MQTT 3.1.1; user \"{DEMO_AGENCY}\" with the agency token reads statuses)",
        broker.addr
    );
    println!("  data:          {}", opts.data_dir.display());
    println!(
        "  try:           curl -H 'Authorization: Bearer {agency_token}' {feed_url}/api/v1/units"
    );
    let stop = CancellationToken::new();
    let collector_public = collector_key
        .parse::<muster_proto::PublicKey>()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let sim = (!sim_units.is_empty()).then(|| {
        tokio::spawn(fleet::run(
            sim_units,
            fleet::FleetSettings {
                broker: broker.addr,
                speed: opts.speed.clamp(1, MAX_SPEED),
                collector_key: collector_public,
                shutdown: stop.clone(),
            },
        ))
    });
    let side = alongside.map(|task| {
        tokio::spawn(task(DemoEnv {
            broker: broker.addr,
            agency: DEMO_AGENCY.to_owned(),
            unit_login: (unit.to_string(), unit_password.clone()),
            feed_url: feed_url.clone(),
            collector_key,
            shutdown: stop.clone(),
        }))
    });
    // Stopping: the fleet and the agent go first, while the collector
    // still acks their departures; then the collector, then the broker.
    let tasks_done = CancellationToken::new();
    tokio::spawn({
        let (stop, done) = (stop.clone(), tasks_done.clone());
        async move {
            stop.cancelled().await;
            for t in side.into_iter().chain(sim) {
                let _ = t.await;
            }
            done.cancel();
        }
    });
    let (stop2, done2) = (stop.clone(), tasks_done.clone());
    let wiring = app::Wiring {
        registry: None,
        store_layer: None,
        broker: Some((units, Arc::clone(&broker.metrics))),
    };
    let collector = app::run_with(
        cfg,
        listener,
        Arc::new(TokioClock::new()),
        async move {
            shutdown.await;
            stop2.cancel();
            done2.cancelled().await;
        },
        wiring,
    );
    let r = collector.await;
    stop.cancel();
    tasks_done.cancelled().await;
    broker.stop().await;
    Ok(r?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_is_valid_at_every_speed() {
        let agencies = BTreeMap::from([
            (DEMO_AGENCY.to_owned(), token(DEMO_AGENCY)),
            (scenes::OVERDUE_AGENCY.to_owned(), token("county-fire")),
        ]);
        for speed in [1, 6, MAX_SPEED] {
            let text = collector_toml(
                &token("admin"),
                "127.0.0.1:0".parse().unwrap(),
                std::path::Path::new("/nonexistent/demo"),
                &agencies,
                speed,
            );
            if let Err(e) = Config::parse(&text) {
                panic!("speed {speed}: {e}\n{text}");
            }
        }
    }

    #[test]
    fn rules_scale_with_the_speed() {
        let one = rules_toml(1);
        assert!(one.contains("max = \"90000ms\""), "{one}");
        assert!(!one.contains("threshold"), "{one}");
        let six = rules_toml(6);
        assert!(six.contains("max = \"15000ms\""), "{six}");
        let doc: toml::Value = six.parse().unwrap();
        let rules = doc["rules"]["threshold"].as_array().unwrap();
        let got: Vec<(&str, &str, f64)> = rules
            .iter()
            .map(|r| {
                let threshold = r["threshold"]
                    .as_float()
                    .or(r["threshold"].as_integer().map(|i| i as f64))
                    .unwrap_or(-1.0);
                (
                    r["name"].as_str().unwrap(),
                    r["for"].as_str().unwrap(),
                    threshold,
                )
            })
            .collect();
        // Thresholds as shipped; only `for` shorter.
        assert_eq!(
            got,
            vec![
                ("disk-full", "10000ms", 95.0),
                ("disk-critical", "5000ms", 99.0),
                ("cad-client-down", "5000ms", -1.0),
                ("probe-slow", "10000ms", 2000.0),
            ]
        );
    }
}
