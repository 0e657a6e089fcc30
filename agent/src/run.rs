//! Wiring: config → sampling thread + probe scheduler + report endpoint +
//! facts (`crate::facts`) → bounded observation channel → the uplink (`crate::uplink::run`).
//!
//! The channel (`uplink.channel_capacity`, default 1024) decouples measuring
//! from shipping: producers use `try_send`, so a stalled uplink never blocks
//! sampling; an observation refused by a full channel is a counted, logged
//! drop (`observations_dropped`). 1024 observations is minutes of data at a
//! 1 s interval with a handful of probes, while the uplink normally takes
//! each one to the disk buffer within milliseconds.
//!
//! Threads: the measuring side (probes, report endpoint, facts, watchdog, signals)
//! runs on one current-thread runtime; host sampling has its own thread
//! (`sample::spawn`); the uplink has its own thread and current-thread
//! runtime (`spawn_uplink`), so a slow fsync or a big replay batch never
//! delays a probe's clock. No work-stealing pool: the agent does little work
//! and sits beside a CAD client, so threads and their stacks are kept few.
//!
//! Actions (`crate::action`), when the config defines any: the uplink
//! hands requests from the unit's action topic to the actions task, which
//! audits through the same observation channel (awaited, never dropped);
//! at a stop it kills what runs and audits it before the departure.
//!
//! Departures (`crate::power`): the uplink gets a control channel and the
//! drop counter; logind's task (Linux) and the platform's requests
//! ([`PowerRequest`], the Windows service) go through one [`Power`]. On a
//! terminate the producers stop first, then the departure is announced with
//! its reason (a restart marker, or the OS going down), then the uplink
//! stops.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use muster_proto::{HostSample, ProbeResult, UnitId};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::clock::Clock;
use crate::config::Config;
use crate::enroll;
use crate::power::{self, Event, Power};
use crate::probe::schedule::{self, ScheduleStats, stopped};
use crate::probe::{Probe, ProbeError, ProbeStats, Runnable};
use crate::remote;
use crate::report::{self, ReportStats};
use crate::sample::{self, DropCounter, SampleError, Sampler};
use crate::uplink::{self, UplinkConfig, UplinkError};
use muster_base::backoff::Retry;
use muster_base::systemd::{self, SystemdNotifier};

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("sampling: {0}")]
    Sample(SampleError),
    #[error("probe {name}: {error}")]
    Probe { name: String, error: ProbeError },
    #[error("uplink: {0}")]
    Uplink(UplinkError),
    #[error("disk buffer: {0}")]
    Buffer(crate::buffer::BufferError),
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    #[error("enrolment: {0}")]
    Enroll(crate::enroll::EnrollError),
    #[error("trusted collector keys: {0}")]
    Trust(crate::trust::TrustError),
}

/// The measuring side's runtime (probes, report endpoint, watchdog): one
/// thread, plus blocking threads for getaddrinfo and the raw ICMP fallback.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(8)
        .thread_stack_size(1 << 20)
        .enable_all()
        .build()
}

/// The uplink on its own thread and runtime. Resolves with the uplink's
/// result, or `RecvError` if the thread panicked.
fn spawn_uplink(
    cfg: UplinkConfig,
    buffer: crate::buffer::Buffer,
    rx: crate::observation::ObservationRx,
    clock: Arc<dyn Clock>,
    hooks: uplink::Hooks,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<tokio::sync::oneshot::Receiver<Result<(), UplinkError>>, RunError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("uplink".into())
        .spawn(move || {
            let r = rt.block_on(uplink::run_hooked(
                cfg,
                buffer,
                rx,
                clock,
                hooks,
                async move {
                    let _ = stop.await;
                },
            ));
            // The MQTT poller ends with the client; give it a moment.
            rt.shutdown_timeout(Duration::from_secs(2));
            let _ = done_tx.send(r);
        })
        .map_err(RunError::Runtime)?;
    Ok(done_rx)
}

/// Builds every configured probe (TLS configs, CA files) once, counting
/// into `stats`.
pub fn build_probes(cfg: &Config, stats: &Arc<ProbeStats>) -> Result<Vec<Arc<Probe>>, RunError> {
    cfg.probes
        .iter()
        .map(|spec| {
            Probe::with_stats(spec.clone(), stats.clone())
                .map(Arc::new)
                .map_err(|source| RunError::Probe {
                    name: spec.name.clone(),
                    error: source,
                })
        })
        .collect()
}

/// Self-metrics of the measuring side, logged at shutdown and on demand.
#[derive(Debug, Default)]
pub struct RunStats {
    pub drops: Arc<DropCounter>,
    pub schedule: Arc<ScheduleStats>,
    pub report: Arc<ReportStats>,
    /// What every probe counts (bodies cut), for `muster-agent status`.
    pub probes: Arc<ProbeStats>,
}

/// What a platform's event source asks of a running agent (the Windows
/// service control handler; on Linux logind talks to [`Power`] itself).
#[derive(Debug)]
pub enum PowerRequest {
    /// Stop. `going_down`: the OS is shutting down (`None`: ask the OS).
    Terminate { going_down: Option<bool> },
    /// The OS suspends: announce; `done` is answered when announced.
    Sleep {
        done: Option<std::sync::mpsc::Sender<()>>,
    },
    /// The OS resumed.
    Woke,
}

/// `muster-agent run`: runs until `shutdown` resolves (SIGTERM), then stops
/// the producers, announces the departure (stop, an announced restart, or a
/// shutdown if the OS is going down), lets the uplink take what they
/// produced, and returns.
pub async fn run(
    cfg: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let (_keep, events) = mpsc::unbounded_channel();
    run_with(
        cfg,
        clock,
        async move {
            shutdown.await;
            PowerRequest::Terminate { going_down: None }
        },
        events,
    )
    .await
}

async fn next_request(
    events: &mut Option<mpsc::UnboundedReceiver<PowerRequest>>,
) -> Option<PowerRequest> {
    match events {
        Some(e) => e.recv().await,
        None => std::future::pending().await,
    }
}

/// Whether the OS is going down, asked at a terminate that did not say.
async fn os_going_down() -> bool {
    #[cfg(target_os = "linux")]
    {
        power::logind::system_going_down().await
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// [`run`] with the platform's power requests: runs until `shutdown`
/// resolves or a `Terminate` request arrives.
pub async fn run_with(
    cfg: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = PowerRequest> + Send,
    events: mpsc::UnboundedReceiver<PowerRequest>,
) -> Result<(), RunError> {
    let mut events = Some(events);
    let stats = RunStats::default();
    let (tx, rx) = mpsc::channel(cfg.channel_capacity);
    let (stop_tx, stop_rx) = watch::channel(false);
    let interval_ms = cfg.sampling.interval.as_millis().min(u32::MAX as u128) as u32;

    // Enrolment: the credential exists before the uplink starts, so the
    // uplink uses it from its first connection (refused until active).
    let mut mqtt = cfg.mqtt.clone();
    let enrolment = match &cfg.enroll {
        None => None,
        Some(settings) => {
            let (cred, made) = enroll::load_or_create(&cfg.data_dir)?;
            if mqtt.username.is_none() {
                mqtt.username = Some(cfg.unit.to_string());
                mqtt.password = Some(cred.password());
            } else {
                tracing::info!("mqtt.username is set: MQTT uses it, not the enrolled credential.");
            }
            if made {
                tracing::info!(fingerprint = %cred.fingerprint(), "Made this unit's credential.");
            }
            (!enroll::is_enrolled(&cfg.data_dir)).then(|| enroll::Enrolment {
                settings: settings.clone(),
                unit: cfg.unit.clone(),
                credential_sha256: cred.sha256_hex(),
                fingerprint: cred.fingerprint(),
                data_dir: cfg.data_dir.clone(),
                config_lists_keys: !cfg.trust.collector_keys.is_empty(),
                backoff: Retry::new(cfg.uplink.reconnect_min, cfg.uplink.reconnect_max),
            })
        }
    };

    // The uplink first, so nothing waits on a missing consumer.
    let (uplink_stop_tx, uplink_stop_rx) = tokio::sync::oneshot::channel::<()>();
    // No trusted collector key: nothing could ever be freed; refuse to start.
    let trust = crate::trust::load(&cfg.trust, &cfg.data_dir)?;
    // Remote config: the effective configuration to measure with (the
    // running documents persisted last time, checked again; or the last
    // known good, when the agent keeps restarting within a health window).
    let start = remote::startup(&cfg, &trust, clock.now_ms());
    let remote_trust = trust.clone();
    let action_trust = trust.clone();
    let ucfg = UplinkConfig {
        unit: cfg.unit.clone(),
        mqtt,
        uplink: cfg.uplink.clone(),
        buffer: cfg.buffer.clone(),
        interval_ms,
        agent_version: AGENT_VERSION.to_owned(),
        trust,
        trusted_keys_file: Some(crate::trust::trusted_keys_path(&cfg.data_dir)),
    };
    // Opened here, before READY: a buffer in use or unreadable fails the start.
    let buffer = crate::buffer::Buffer::open(ucfg.buffer.clone(), clock.now_ms())?;
    power::marker::clear(&cfg.data_dir);
    let (control_tx, control_rx) = mpsc::channel(4);
    let power = Arc::new(Power::new(
        control_tx,
        clock.clone(),
        cfg.power.announce_timeout,
    ));
    let view = Arc::new(uplink::UplinkView::default());
    let (docs_tx, docs_rx) = mpsc::channel(8);
    let remote_on = !cfg.remote.allow.is_empty();
    // Actions: subscribed and run only when the local config defines some.
    let actions_on = !cfg.actions.is_empty();
    let (action_links, action_rx) = crate::action::ActionLinks::new(16);
    let hooks = uplink::Hooks {
        control: Some(control_rx),
        observations_dropped: Some(stats.drops.clone()),
        depart_timeout: cfg.power.announce_timeout,
        remote: remote_on.then(|| remote::RemoteLinks {
            docs: docs_tx,
            docs_dropped: Arc::default(),
        }),
        actions: actions_on.then(|| action_links.clone()),
        view: Some(view.clone()),
    };
    let mut uplink_task = spawn_uplink(ucfg, buffer, rx, clock.clone(), hooks, uplink_stop_rx)?;
    #[cfg(target_os = "linux")]
    let logind_task = tokio::spawn(power::logind::run(power.clone(), stop_rx.clone()));

    let enroll_task = enrolment.map(|e| tokio::spawn(enroll::run(e, stop_rx.clone())));
    let liveness = Arc::new(sample::Liveness::new());
    let measure = Measure {
        tx: tx.clone(),
        clock: clock.clone(),
        stats: &stats,
        liveness: liveness.clone(),
    };
    let mut measuring = measure.start(&start.effective.config)?;
    let (reconf_tx, mut reconf_rx) = mpsc::channel::<remote::Reconfigure>(1);
    let config_view = Arc::new(std::sync::Mutex::new(remote::ConfigView::default()));
    let remote_task = remote_on.then(|| {
        let r = remote::Remote::new(
            cfg.clone(),
            remote_trust,
            start,
            clock.clone(),
            tx.clone(),
            reconf_tx,
            view.clone(),
            config_view.clone(),
        );
        tokio::spawn(r.run(docs_rx, stop_rx.clone()))
    });
    let action_view = Arc::new(std::sync::Mutex::new(crate::action::ActionView::default()));
    let action_task = actions_on.then(|| {
        let a = crate::action::Actions::new(
            &cfg,
            action_trust,
            clock.clone(),
            tx.clone(),
            view.clone(),
            action_view.clone(),
            &action_links,
        );
        tokio::spawn(a.run(action_rx, stop_rx.clone()))
    });
    drop(action_links);
    let status_task = tokio::spawn(crate::status::write_loop(
        cfg.data_dir.clone(),
        cfg.unit.clone(),
        crate::status::Sources {
            uplink: view.clone(),
            config: config_view.clone(),
            actions: action_view.clone(),
            schedule: stats.schedule.clone(),
            probes: stats.probes.clone(),
        },
        clock.clone(),
        stop_rx.clone(),
    ));
    drop(tx);

    let notifier = SystemdNotifier::from_env().map(Arc::new);
    let watchdog = systemd::watchdog_interval().and_then(|wd| {
        notifier.clone().map(|n| {
            tokio::spawn(watchdog_loop(
                n,
                wd,
                liveness,
                cfg.sampling.interval,
                stop_rx.clone(),
            ))
        })
    });
    if let Some(n) = &notifier {
        n.notify("READY=1");
    }
    tracing::info!(
        unit = %cfg.unit,
        interval = ?cfg.sampling.interval,
        probes = cfg.probes.len(),
        actions = cfg.actions.len(),
        report = ?cfg.report.as_ref().map(|r| r.listen),
        "Agent running."
    );

    tokio::pin!(shutdown);
    let (uplink_early, going_down) = loop {
        tokio::select! {
            req = &mut shutdown => match req {
                PowerRequest::Terminate { going_down } => break (None, going_down),
                other => tracing::warn!(?other, "Not a terminate; stopping anyway."),
            },
            req = next_request(&mut events) => match req {
                Some(PowerRequest::Terminate { going_down }) => break (None, going_down),
                Some(PowerRequest::Sleep { done }) => {
                    power.handle(Event::SleepPrepare).await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    continue;
                }
                Some(PowerRequest::Woke) => {
                    power.handle(Event::Woke).await;
                    continue;
                }
                None => {
                    events = None;
                    continue;
                }
            },
            Some(r) = reconf_rx.recv() => {
                // Remote config: rebuild the measuring side. The new one is
                // built first; if it cannot be, the old one keeps running.
                let answer = match measure.start(&r.config) {
                    Ok(next) => {
                        let old = std::mem::replace(&mut measuring, next);
                        old.stop().await;
                        tracing::info!(probes = r.config.probes.len(), interval = ?r.config.sampling.interval, "Measuring rebuilt from the new configuration.");
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = r.done.send(answer);
                continue;
            }
            r = &mut uplink_task => break (Some(r), None),
        }
        break (None, None);
    };
    if let Some(n) = &notifier {
        n.notify("STOPPING=1");
    }
    let _ = stop_tx.send(true);
    drop(reconf_rx);
    if let Some(t) = remote_task
        && let Ok(r) = t.await
        && uplink_early.is_none()
    {
        // Asked to stop (not the uplink failing): not a crash.
        r.stopped_cleanly();
    }
    // Running actions are killed and audited while the uplink still takes
    // records (the departure comes after).
    if let Some(t) = action_task {
        let _ = t.await;
    }
    measuring.stop().await;
    drop(measure);
    let _ = status_task.await;
    if let Some(t) = watchdog {
        let _ = t.await;
    }
    if let Some(t) = enroll_task {
        let _ = t.await;
    }
    tracing::info!(
        observations_dropped = stats.drops.get(),
        probe_runs = stats.schedule.runs.load(Ordering::Relaxed),
        probe_timeouts = stats.schedule.timeouts.load(Ordering::Relaxed),
        probe_body_cuts = stats.probes.body_cuts.load(Ordering::Relaxed),
        reports_accepted = stats.report.accepted.load(Ordering::Relaxed),
        reports_malformed = stats.report.malformed.load(Ordering::Relaxed),
        "Measuring stopped."
    );
    let r = match uplink_early {
        Some(r) => r,
        None => {
            // Why we go: a running agent announces (marker and OS state are
            // read only then); one that already announced just goes.
            let (going_down, back_within_ms) = if power.running() {
                let going_down = match going_down {
                    Some(g) => g,
                    None => os_going_down().await,
                };
                (
                    going_down,
                    power::marker::take(&cfg.data_dir, clock.now_ms()),
                )
            } else {
                (false, None)
            };
            power
                .handle(Event::Terminate {
                    going_down,
                    back_within_ms,
                })
                .await;
            #[cfg(target_os = "linux")]
            let _ = logind_task.await;
            let _ = uplink_stop_tx.send(());
            match tokio::time::timeout(Duration::from_secs(15), &mut uplink_task).await {
                Ok(r) => r,
                Err(_) => {
                    // Its thread is left to the process exit; the buffer's
                    // contract covers a stop at any point.
                    tracing::error!("The uplink did not stop within 15s; abandoning it.");
                    return Ok(());
                }
            }
        }
    };
    match r {
        Ok(Ok(())) => {
            tracing::info!("Agent stopped.");
            Ok(())
        }
        Ok(Err(e)) => Err(RunError::Uplink(e)),
        Err(_) => {
            tracing::error!("The uplink thread panicked.");
            Ok(())
        }
    }
}

/// What builds a measuring side: where observations go, and the shared
/// counters and watchdog evidence every generation feeds.
struct Measure<'a> {
    tx: crate::observation::ObservationTx,
    clock: Arc<dyn Clock>,
    stats: &'a RunStats,
    liveness: Arc<sample::Liveness>,
}

/// One generation of the measuring side: the sampling thread, the probes,
/// the report endpoint and the facts reporter, built from one
/// configuration (remote config replaces a generation whole).
struct Measuring {
    stop: watch::Sender<bool>,
    sampler: sample::SamplerHandle,
    tasks: tokio::task::JoinSet<()>,
}

impl Measure<'_> {
    /// Builds everything first (a probe that will not build fails the
    /// whole generation before anything starts), then starts it.
    fn start(&self, cfg: &Config) -> Result<Measuring, RunError> {
        let probes = build_probes(cfg, &self.stats.probes)?;
        let sampler = Sampler::new(cfg.sampling.clone())?;
        let (stop, stop_rx) = watch::channel(false);
        let sampler = sample::spawn(
            sampler,
            cfg.sampling.interval,
            self.tx.clone(),
            self.clock.clone(),
            self.stats.drops.clone(),
            self.liveness.clone(),
        )?;
        let mut tasks = schedule::spawn_all(
            probes.into_iter().map(|p| p as Arc<dyn Runnable>).collect(),
            self.tx.clone(),
            self.clock.clone(),
            self.stats.drops.clone(),
            self.stats.schedule.clone(),
            stop_rx.clone(),
        );
        tasks.spawn(crate::facts::run(
            cfg.labels.clone(),
            cfg.cad.clone(),
            self.tx.clone(),
            self.clock.clone(),
            stop_rx.clone(),
        ));
        if let Some(r) = cfg.report.clone() {
            tasks.spawn(report_endpoint(
                r.listen,
                r.max_per_sec,
                self.tx.clone(),
                self.clock.clone(),
                self.stats.drops.clone(),
                self.stats.report.clone(),
                stop_rx,
            ));
        }
        Ok(Measuring {
            stop,
            sampler,
            tasks,
        })
    }
}

impl Measuring {
    async fn stop(mut self) {
        let _ = self.stop.send(true);
        let sampler = self.sampler;
        let _ = tokio::task::spawn_blocking(move || sampler.stop()).await;
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Binds the report endpoint, retrying every 30 s while the port is taken
/// (the agent keeps measuring meanwhile), then serves it.
async fn report_endpoint(
    listen: std::net::SocketAddr,
    max_per_sec: u32,
    tx: crate::observation::ObservationTx,
    clock: Arc<dyn Clock>,
    drops: Arc<DropCounter>,
    stats: Arc<ReportStats>,
    mut stop: watch::Receiver<bool>,
) {
    let sock = loop {
        match report::bind(listen).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::error!(error = %e, "Report endpoint unavailable; retrying in 30s.");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = stopped(&mut stop) => return,
                }
            }
        }
    };
    tracing::info!(%listen, "Report endpoint listening.");
    report::serve(sock, max_per_sec, tx, clock, drops, stats, stop).await;
}

/// Pings systemd's watchdog at half its interval, but only while the sampling
/// thread keeps completing passes: a hung sampler gets the agent restarted.
async fn watchdog_loop(
    n: Arc<SystemdNotifier>,
    every: Duration,
    liveness: Arc<sample::Liveness>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let stale_after = (interval * 3).max(Duration::from_secs(10));
    let mut tick = tokio::time::interval(every / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        let age = liveness.since_last_pass();
        if age <= stale_after {
            n.notify("WATCHDOG=1");
        } else {
            tracing::error!(
                ?age,
                "Sampling thread is stuck; withholding the watchdog ping."
            );
        }
    }
}

/// What `muster-agent once` prints.
#[derive(Debug, Serialize)]
pub struct OnceReport {
    pub unit: UnitId,
    pub agent_version: &'static str,
    /// When the host sample was taken, unix ms.
    pub at_ms: u64,
    pub host: HostSample,
    pub probes: Vec<ProbeResult>,
    /// The labels and facts `run` would send (`crate::facts`).
    pub facts: muster_proto::UnitFacts,
}

/// `muster-agent once`: one host sample and every probe once, concurrently.
pub async fn once(cfg: &Config, clock: Arc<dyn Clock>) -> Result<OnceReport, RunError> {
    let probes = build_probes(cfg, &Arc::default())?;
    let interval_ms = cfg.sampling.interval.as_millis().min(u32::MAX as u128) as u32;
    let sampling = cfg.sampling.clone();
    let host = tokio::task::spawn_blocking(move || -> Result<HostSample, SampleError> {
        let mut s = Sampler::new(sampling)?;
        s.prime();
        // CPU usage and rates need two refreshes some time apart.
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL.max(Duration::from_millis(500)));
        Ok(s.sample(interval_ms))
    });
    let probe_runs: Vec<_> = probes
        .iter()
        .map(|p| {
            let p = p.clone();
            tokio::spawn(async move {
                let safety = p.spec().timeout + crate::probe::SAFETY_MARGIN;
                match tokio::time::timeout(safety, p.run_all()).await {
                    Ok(r) => r,
                    Err(_) => vec![p.timed_out()],
                }
            })
        })
        .collect();
    let at_ms = clock.now_ms();
    let (facts, cad_error) = crate::facts::gather(&cfg.labels, &cfg.cad).await;
    if let (Some(e), Some(source)) = (cad_error, &cfg.cad.version) {
        tracing::warn!(%source, error = %e, "Cannot read the CAD client's version.");
    }
    let host = host
        .await
        .map_err(|e| RunError::Runtime(std::io::Error::other(e.to_string())))??;
    let mut results = Vec::with_capacity(probe_runs.len());
    for r in probe_runs {
        results.extend(
            r.await
                .map_err(|e| RunError::Runtime(std::io::Error::other(e.to_string())))?,
        );
    }
    Ok(OnceReport {
        unit: cfg.unit.clone(),
        agent_version: AGENT_VERSION,
        at_ms,
        host,
        probes: results,
        facts,
    })
}

impl From<SampleError> for RunError {
    fn from(e: SampleError) -> Self {
        RunError::Sample(e)
    }
}

impl From<UplinkError> for RunError {
    fn from(e: UplinkError) -> Self {
        RunError::Uplink(e)
    }
}

impl From<crate::buffer::BufferError> for RunError {
    fn from(e: crate::buffer::BufferError) -> Self {
        RunError::Buffer(e)
    }
}

impl From<crate::enroll::EnrollError> for RunError {
    fn from(e: crate::enroll::EnrollError) -> Self {
        RunError::Enroll(e)
    }
}

impl From<crate::trust::TrustError> for RunError {
    fn from(e: crate::trust::TrustError) -> Self {
        RunError::Trust(e)
    }
}
