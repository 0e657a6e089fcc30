//! `muster-collector demo`: the embedded broker, the collector and the feed
//! in one process, on a printed URL, with generated tokens and a temporary
//! data directory. [`DemoTask`] is the seam for what runs alongside (the
//! in-process agent, once it exists): it gets the broker address and the
//! demo agency, and is stopped with everything else.

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
    let units = Arc::new(FleetCredentials::new(units));
    let auth = Authenticator::new(
        Arc::clone(&units) as Arc<dyn crate::broker::auth::UnitCredentials>,
        BTreeMap::from([(DEMO_AGENCY.to_owned(), agency_token.clone())]),
    );
    let broker = EmbeddedBroker::start(
        opts.broker,
        &BrokerConfig::default(),
        auth,
        std::time::Duration::from_secs(10),
    )
    .await?;
    let text = format!(
        r#"
admin_token = "{admin}"
[mqtt]
client_id = "muster-collector-demo"
[http]
listen = "{http}"
metrics_require_token = false
[store]
path = "{path}"
[[agency]]
name = "{DEMO_AGENCY}"
token = "{agency_token}"
"#,
        http = opts.http,
        path = opts.data_dir.display(),
    );
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
    println!("  agency token:  {agency_token}  (agency \"{DEMO_AGENCY}\")");
    println!(
        "  MQTT broker:   mqtt://{}  (MQTT 3.1.1; user \"{DEMO_AGENCY}\" with the agency token reads statuses)",
        broker.addr
    );
    println!("  data:          {}", opts.data_dir.display());
    println!(
        "  try:           curl -H 'Authorization: Bearer {agency_token}' {feed_url}/api/v1/units"
    );
    let stop = CancellationToken::new();
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
    let stop2 = stop.clone();
    let wiring = app::Wiring {
        registry: None,
        broker: Some((units, Arc::clone(&broker.metrics))),
    };
    let collector = app::run_with(
        cfg,
        listener,
        Arc::new(TokioClock::new()),
        async move {
            shutdown.await;
            stop2.cancel();
        },
        wiring,
    );
    let r = collector.await;
    stop.cancel();
    if let Some(t) = side {
        let _ = t.await;
    }
    broker.stop().await;
    Ok(r?)
}
