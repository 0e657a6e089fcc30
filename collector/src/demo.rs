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
use crate::broker::{BrokerError, EmbeddedBroker};
use crate::clock::TokioClock;
use crate::config::{Config, ConfigError};

/// The demo agency.
pub const DEMO_AGENCY: &str = "demo";

/// What a task running alongside the demo collector gets.
#[derive(Debug, Clone)]
pub struct DemoEnv {
    /// Where agents connect (MQTT 3.1.1; MQTT 5 on the next port).
    pub broker: SocketAddr,
    pub agency: String,
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
data_dir = "{dir}"
[mqtt]
url = "mqtt://{broker}"
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
    let broker = tokio::task::spawn_blocking(move || EmbeddedBroker::start(opts.broker))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
    let admin = token("admin");
    let agency_token = token(DEMO_AGENCY);
    let v5 = broker.v5_addr();
    let text = format!(
        r#"
admin_token = "{admin}"
[mqtt]
url = "mqtt://{v5}"
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
    let cfg = Config::parse(&text)?;
    let collector_key = crate::signing::Signer::load(&cfg.signing)?
        .public_key()
        .to_string();
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
        "  MQTT broker:   mqtt://{}  (MQTT 5: mqtt://{v5})",
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
            feed_url: feed_url.clone(),
            collector_key,
            shutdown: stop.clone(),
        }))
    });
    let stop2 = stop.clone();
    let collector = app::run(cfg, listener, Arc::new(TokioClock::new()), async move {
        shutdown.await;
        stop2.cancel();
    });
    let r = collector.await;
    stop.cancel();
    if let Some(t) = side {
        let _ = t.await;
    }
    Ok(r?)
}
