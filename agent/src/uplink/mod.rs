//! The uplink: stamps observations into records (boot id, seq), writes each
//! to the disk buffer first, and ships them over MQTT until the collector's
//! ack frees them.
//!
//! * QoS 1, stable client id, `clean_session = false`; a retained birth
//!   `Presence{online: true}` and a will `Presence{online: false}` on the
//!   state topic, numbered by connection; the birth is republished if the
//!   state topic says offline while connected (a late will of an old
//!   connection).
//! * Reconnects with exponential backoff and full jitter
//!   (`muster_base::backoff::Retry`, drawn from the OS RNG).
//! * Live first, then the backlog oldest-first in batches, under
//!   `max_inflight` and an optional byte rate ([`schedule`]).
//! * Acks free buffer keys only when signed by a trusted collector key
//!   ([`verify`]); a refused ack frees nothing and is counted in
//!   `acks_refused` (heartbeat) and logged at most once per
//!   [`REFUSAL_LOG_INTERVAL_MS`] with the count since the last line.
//! * Unacked publishes are resent after a reconnect or `ack_timeout`
//!   ([`inflight`]), and at once (at most once per
//!   [`REPLAY_MIN_INTERVAL_MS`]) when a newer verified collector hello on
//!   `muster/v1/collector` says the collector has just (re)subscribed. Keys
//!   a verified hello announces are trusted and persisted
//!   (`crate::trust`).
//! * An `AgentStatus` heartbeat record every `heartbeat_interval`, with
//!   the measuring side's `observations_dropped`.
//! * Actions configured ([`Hooks::actions`]): the unit's action topic is
//!   subscribed (QoS 1) and every payload on it handed to the actions task
//!   (`crate::action`) over a bounded channel; a full one drops the
//!   request, counted and logged rate-limited. The clock offset of the
//!   last verified ack is shared through [`UplinkView::clock_offset`].
//! * Every observation taken is counted for remote config's health window
//!   ([`Taken`], shown in [`UplinkView`]): no hop or lock on the way.
//! * Departures ([`Control`], from `crate::power`): `Depart{reason}` takes
//!   what is queued, records a `Payload::Presence{online: false, reason}`
//!   (buffered, numbered and acked like every record), publishes it live
//!   and retained on the state topic, flushes, waits for the collector's ack
//!   of it at most `depart_timeout`, then sends MQTT DISCONNECT (so the
//!   broker does not publish the will) and stays disconnected: the poll
//!   loop does not reconnect, and no observation is taken (they wait in the
//!   bounded channel; a full one is a counted drop) until `Resume{reason}`,
//!   whose birth says `reason` (`Resumed{slept_ms}`), or until the agent
//!   stops (then they are buffered after the announcement and go out with
//!   the backlog of a later run). The shutdown future
//!   without a departure first announces `Stop{back_within: None}` the same
//!   way. Every connection's will is `Lost`.
//!
//! The pure cores (the shared backoff, `inflight`, `schedule`, `buffer::evict`) take
//! `now`; this module is the I/O around them.

pub mod inflight;
pub mod mqtt;
pub mod schedule;
pub mod settings;
pub mod verify;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use muster_proto::{
    AgentStatus, Body, BootId, COLLECTOR_TOPIC, MAX_BATCH_RECORDS, MAX_MESSAGE_BYTES, Payload,
    PresenceReason, Record, TopicKind, TrustedKeys, UnitId, VerifyError, decode, decode_hello,
    encode_record, message_from_encoded, topic::unit_topic,
};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::buffer::{Appended, Buffer, BufferSettings, Kind, Meta, Stored};
use crate::clock::Clock;
use crate::observation::ObservationRx;
use crate::sample::DropCounter;
use inflight::{Inflight, Sent};
use mqtt::LinkEvent;
use schedule::{Next, Scheduler};
pub use settings::{MqttSettings, UplinkSettings};
use verify::{HelloVerdict, RefusalLog, ReplayLimiter};

/// At most one log line about refused acks and hellos per this interval.
pub const REFUSAL_LOG_INTERVAL_MS: u64 = 10_000;

/// At most one hello-triggered resend of everything in flight per this
/// interval (a flood of valid hellos cannot make the agent resend in a loop).
pub const REPLAY_MIN_INTERVAL_MS: u64 = 2_000;

/// At most one re-read of `trusted_keys` (for an ack or hello signed by a
/// key not yet trusted) per this interval.
pub const TRUST_RELOAD_MS: u64 = 5_000;

/// The lifecycle's orders to the uplink (`crate::power`).
#[derive(Debug)]
pub enum Control {
    /// Announce `reason`, wait for its ack (bounded), disconnect, stay
    /// disconnected; `done` is answered when that is over.
    Depart {
        reason: PresenceReason,
        done: oneshot::Sender<()>,
    },
    /// Connect again; the birth says `reason`.
    Resume { reason: PresenceReason },
}

/// What the uplink is wired to beyond its config: the lifecycle's control
/// channel and the measuring side's drop counter. `Default`: neither (a
/// departure only on shutdown, `observations_dropped` 0).
#[derive(Debug)]
pub struct Hooks {
    pub control: Option<mpsc::Receiver<Control>>,
    pub observations_dropped: Option<Arc<DropCounter>>,
    /// How long a departure waits for the ack of its announcement
    /// (`power.announce_timeout`).
    pub depart_timeout: Duration,
    /// Remote config on: subscribe to the agency's and the unit's config
    /// topics and hand what arrives to remote config.
    pub remote: Option<crate::remote::RemoteLinks>,
    /// Actions configured: subscribe to the unit's action topic and hand
    /// what arrives to the actions task (`crate::action`).
    pub actions: Option<crate::action::ActionLinks>,
    /// What the uplink shows `muster-agent status` and remote config's
    /// health window.
    pub view: Option<Arc<UplinkView>>,
}

/// The uplink's state as others read it: connected, the backlog, the last
/// verified ack (unix ms, 0: none yet), and what it took from the
/// measuring side.
#[derive(Debug, Default)]
pub struct UplinkView {
    pub connected: std::sync::atomic::AtomicBool,
    pub backlog_records: std::sync::atomic::AtomicU64,
    pub backlog_bytes: std::sync::atomic::AtomicU64,
    pub last_ack_ms: std::sync::atomic::AtomicU64,
    pub reconnects: std::sync::atomic::AtomicU64,
    pub taken: Taken,
    /// The clock offset to the collector from the last verified ack
    /// (collector − agent, ms), once known ([`UplinkView::clock_offset`]).
    pub clock_offset_ms: std::sync::atomic::AtomicI64,
    pub clock_offset_known: std::sync::atomic::AtomicBool,
}

/// What remote config's health window judges (`crate::remote::health`),
/// counted as the uplink takes each observation to the disk buffer
/// ([`Taken::count`]): probe results passed and failed, host samples and
/// those with sampler failures. Monotonic; one writer (the uplink), read
/// by remote config through [`UplinkView::health`]. Times are unix ms, 0:
/// none yet.
#[derive(Debug, Default)]
pub struct Taken {
    pub probe_ok: std::sync::atomic::AtomicU64,
    pub probe_failed: std::sync::atomic::AtomicU64,
    pub last_probe_ok_ms: std::sync::atomic::AtomicU64,
    pub samples: std::sync::atomic::AtomicU64,
    pub samples_failing: std::sync::atomic::AtomicU64,
    pub last_sample_failing: std::sync::atomic::AtomicBool,
}

impl Taken {
    /// Counts one observation (any payload; only probe results and host
    /// samples count).
    pub fn count(&self, at_ms: u64, payload: &Payload) {
        use std::sync::atomic::Ordering::{Relaxed, Release};
        match payload {
            Payload::Probe(p) if p.outcome == muster_proto::Outcome::Ok => {
                self.last_probe_ok_ms.store(at_ms, Relaxed);
                self.probe_ok.fetch_add(1, Relaxed);
            }
            Payload::Probe(_) => {
                self.probe_failed.fetch_add(1, Relaxed);
            }
            Payload::Host(h) => {
                let failing = !h.failures.is_empty();
                self.samples.fetch_add(1, Relaxed);
                self.last_sample_failing.store(failing, Relaxed);
                if failing {
                    // Release after `samples`: a reader that sees this
                    // failing sample sees it counted in `samples` too.
                    self.samples_failing.fetch_add(1, Release);
                }
            }
            _ => {}
        }
    }
}

impl UplinkView {
    /// The agent's offset to the collector's clock (collector − agent,
    /// ms), from the last verified ack; `None` before one.
    pub fn clock_offset(&self) -> Option<i64> {
        use std::sync::atomic::Ordering::Acquire;
        self.clock_offset_known
            .load(Acquire)
            .then(|| self.clock_offset_ms.load(Acquire))
    }

    /// The counters remote config's health window judges, now.
    pub fn health(&self) -> crate::remote::health::Counters {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        let t = &self.taken;
        let some = |ms: u64| (ms > 0).then_some(ms);
        // `samples_failing` first (see `Taken::count`): never more failing
        // samples than samples.
        let samples_failing = t.samples_failing.load(Acquire);
        crate::remote::health::Counters {
            probe_ok: t.probe_ok.load(Relaxed),
            probe_failed: t.probe_failed.load(Relaxed),
            last_probe_ok_ms: some(t.last_probe_ok_ms.load(Relaxed)),
            samples: t.samples.load(Relaxed),
            samples_failing,
            last_sample_failing: t.last_sample_failing.load(Relaxed),
            last_ack_ms: some(self.last_ack_ms.load(Relaxed)),
        }
    }
}

/// The default `power.announce_timeout`: fits logind's default
/// `InhibitDelayMaxSec` (5 s) with the disconnect after it.
pub const DEPART_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a departure waits for the broker to close after DISCONNECT.
const DISCONNECT_WAIT: Duration = Duration::from_secs(1);

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            control: None,
            observations_dropped: None,
            depart_timeout: DEPART_TIMEOUT,
            remote: None,
            actions: None,
            view: None,
        }
    }
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    pub unit: UnitId,
    pub mqtt: MqttSettings,
    pub uplink: UplinkSettings,
    pub buffer: BufferSettings,
    /// The sampling interval, reported in the heartbeat.
    pub interval_ms: u32,
    pub agent_version: String,
    /// The collector keys acks and hellos must be signed with.
    pub trust: TrustedKeys,
    /// Where keys announced by verified hellos are persisted
    /// (`<data_dir>/trusted_keys`); `None`: trusted for this run only.
    pub trusted_keys_file: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("disk buffer: {0}")]
    Buffer(crate::buffer::BufferError),
    #[error("mqtt TLS: {0}")]
    Tls(String),
}

/// Self-metrics, also logged with each heartbeat.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    reconnects: u32,
    connects: u32,
    published: u64,
    acked: u64,
    resent: u64,
    bad_inbound: u64,
    /// Acks and hellos refused (signature, key, or an old hello).
    acks_refused: u64,
    /// Resends of everything in flight on a collector hello.
    hello_replays: u32,
}

/// The uplink's state: everything but the sockets.
struct Uplink {
    unit: UnitId,
    boot: BootId,
    seq: u64,
    cfg: UplinkConfig,
    clock: Arc<dyn Clock>,
    buffer: Buffer,
    inflight: Inflight,
    sched: Scheduler,
    client: AsyncClient,
    telemetry_topic: String,
    state_topic: String,
    ack_topic: String,
    connection: Option<u32>,
    /// The newest connection number seen (for an announcement while down).
    last_connection: u32,
    /// Departed: the link is down on purpose until a `Resume`.
    departed: bool,
    /// The announcement record's buffer key and whether it was acked.
    depart_key: Option<u64>,
    depart_acked: bool,
    /// What the birth of the current connection says, and of the next.
    birth_reason: PresenceReason,
    next_birth: Option<PresenceReason>,
    /// Whether the poll loop may connect.
    link: watch::Sender<bool>,
    /// Remote config on: (agency's, unit's) config topics, and where
    /// documents go.
    config_topics: Option<(String, String)>,
    remote: Option<crate::remote::RemoteLinks>,
    /// Actions configured: the unit's action topic, and where requests go.
    action_topic: Option<String>,
    actions: Option<crate::action::ActionLinks>,
    view: Arc<UplinkView>,
    observations_dropped: Option<Arc<DropCounter>>,
    last_host_key: Option<u64>,
    clock_offset_ms: Option<i64>,
    counters: Counters,
    /// When the pump must run again (token bucket), unix ms.
    wake_ms: Option<u64>,
    trust: TrustedKeys,
    refusal_log: RefusalLog,
    /// `(started_ms, counter)` of the newest verified hello.
    newest_hello: Option<(u64, u64)>,
    /// When `trusted_keys` was last re-read for an unknown key.
    trust_reloaded_ms: Option<u64>,
    replay: ReplayLimiter,
}

/// Runs the store-and-forward uplink until `shutdown` resolves, then flushes
/// the buffer, marks the unit offline and disconnects cleanly.
pub async fn run(
    cfg: UplinkConfig,
    rx: ObservationRx,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), UplinkError> {
    let buffer = Buffer::open(cfg.buffer.clone(), clock.now_ms())?;
    run_with_buffer(cfg, buffer, rx, clock, shutdown).await
}

/// [`run`] on a buffer the caller opened: `muster-agent run` opens it before
/// telling systemd it is ready, so a buffer in use or unreadable fails the
/// start instead of a running service.
pub async fn run_with_buffer(
    cfg: UplinkConfig,
    buffer: Buffer,
    rx: ObservationRx,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), UplinkError> {
    run_hooked(cfg, buffer, rx, clock, Hooks::default(), shutdown).await
}

/// [`run_with_buffer`] wired to the lifecycle ([`Hooks`]).
pub async fn run_hooked(
    cfg: UplinkConfig,
    buffer: Buffer,
    mut rx: ObservationRx,
    clock: Arc<dyn Clock>,
    hooks: Hooks,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), UplinkError> {
    let Hooks {
        control,
        observations_dropped,
        depart_timeout,
        remote,
        actions,
        view,
    } = hooks;
    let view = view.unwrap_or_default();
    let mut control = control;
    let boot = BootId(rand::random());
    let now = clock.now_ms();
    let brokers = mqtt::options(&cfg.unit, boot, &cfg.mqtt, &cfg.uplink, now)?;
    let trust = cfg.trust.clone();
    let (client, mut eventloop) = AsyncClient::new(
        brokers[0].clone(),
        usize::from(cfg.uplink.max_inflight) + 64,
    );
    let mut net = rumqttc::NetworkOptions::new();
    net.set_connection_timeout(cfg.mqtt.connect_timeout.as_secs().max(1));
    eventloop.set_network_options(net);
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let (link, want) = watch::channel(true);
    let poller = tokio::spawn(mqtt::poll_loop(
        eventloop,
        brokers,
        ev_tx,
        want,
        cfg.unit.clone(),
        boot,
        cfg.uplink.clone(),
        clock.clone(),
    ));
    info!(unit = %cfg.unit, %boot, backlog = buffer.records(), brokers = %cfg.mqtt.broker_list(), "Uplink starting.");

    let mut up = Uplink {
        unit: cfg.unit.clone(),
        boot,
        seq: 0,
        telemetry_topic: unit_topic(&cfg.unit, TopicKind::Telemetry),
        state_topic: unit_topic(&cfg.unit, TopicKind::State),
        ack_topic: unit_topic(&cfg.unit, TopicKind::Ack),
        config_topics: remote.as_ref().map(|_| {
            (
                muster_proto::topic::agency_config_topic(&cfg.unit.agency)
                    .expect("a validated unit's agency"),
                unit_topic(&cfg.unit, TopicKind::Config),
            )
        }),
        remote,
        action_topic: actions
            .as_ref()
            .map(|_| unit_topic(&cfg.unit, TopicKind::Action)),
        actions,
        view,
        sched: Scheduler::new(
            cfg.uplink.max_inflight,
            cfg.uplink
                .batch_max_bytes
                .min((MAX_MESSAGE_BYTES - 4096) as u32),
            cfg.uplink.replay_bytes_per_sec,
            now,
        ),
        cfg,
        clock,
        buffer,
        inflight: Inflight::new(),
        client,
        connection: None,
        last_connection: 1,
        departed: false,
        depart_key: None,
        depart_acked: false,
        birth_reason: PresenceReason::Connected,
        next_birth: None,
        link,
        observations_dropped,
        last_host_key: None,
        clock_offset_ms: None,
        counters: Counters::default(),
        wake_ms: None,
        trust,
        refusal_log: RefusalLog::new(REFUSAL_LOG_INTERVAL_MS),
        newest_hello: None,
        trust_reloaded_ms: None,
        replay: ReplayLimiter::new(REPLAY_MIN_INTERVAL_MS),
    };

    let mut flush =
        tokio::time::interval(up.cfg.buffer.flush_interval.max(Duration::from_millis(10)));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(
        up.cfg
            .uplink
            .heartbeat_interval
            .max(Duration::from_millis(100)),
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rx_open = true;
    tokio::pin!(shutdown);

    loop {
        up.pump();
        let wake = up.next_wake();
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            ctl = recv_control(&mut control) => match ctl {
                Some(Control::Depart { reason, done }) => {
                    up.depart(reason, &mut rx, &mut ev_rx, depart_timeout).await;
                    let _ = done.send(());
                }
                Some(Control::Resume { reason }) => up.resume(reason),
                None => control = None,
            },
            ev = ev_rx.recv() => match ev {
                Some(ev) => up.on_link(ev),
                None => {
                    warn!("MQTT event loop ended.");
                    break;
                }
            },
            obs = rx.recv(), if rx_open && !up.departed => match obs {
                Some(o) => {
                    up.record(o.at_ms, o.payload);
                }
                None => rx_open = false,
            },
            // Departed: no heartbeat while away.
            _ = heartbeat.tick() => if !up.departed { up.heartbeat() },
            _ = flush.tick() => up.flush(),
            _ = sleep_for(wake) => up.on_timer(),
        }
    }

    // Clean shutdown: announce a stop unless a departure was announced
    // already; what is still queued is kept (recorded after it).
    if !up.departed {
        up.depart(
            PresenceReason::Stop {
                back_within_ms: None,
            },
            &mut rx,
            &mut ev_rx,
            depart_timeout,
        )
        .await;
    }
    while let Ok(o) = rx.try_recv() {
        up.record(o.at_ms, o.payload);
    }
    up.flush();
    poller.abort();
    let stats = up.buffer.stats();
    let (unit, last_seq) = (up.unit.clone(), up.seq);
    // Closes the buffer (flushed, segments closed, directory unlocked)
    // before saying so: once this future completes, the buffer can be
    // opened again at once.
    drop(up);
    info!(%unit, backlog_records = stats.records, backlog_bytes = stats.bytes, last_seq, "Uplink stopped.");
    Ok(())
}

async fn recv_control(control: &mut Option<mpsc::Receiver<Control>>) -> Option<Control> {
    match control {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_for(ms: Option<u64>) {
    match ms {
        Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        None => std::future::pending().await,
    }
}

impl Uplink {
    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Milliseconds until the next timer: the bucket or an ack deadline.
    fn next_wake(&self) -> Option<u64> {
        let now = self.now();
        let timeout = self.cfg.uplink.ack_timeout.as_millis() as u64;
        let deadline = self.inflight.next_deadline(timeout);
        [self.wake_ms, deadline, self.replay.due()]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_sub(now))
    }

    fn on_timer(&mut self) {
        let now = self.now();
        self.wake_ms = None;
        let timeout = self.cfg.uplink.ack_timeout.as_millis() as u64;
        let late = self.inflight.expire(now, timeout);
        if !late.is_empty() {
            self.counters.resent += late.len() as u64;
            warn!(
                records = late.len(),
                "No ack from the collector in time; resending."
            );
            self.sched.resend(&late);
        }
        if self.replay.take(now) {
            let keys = self.inflight.expire_all();
            self.counters.hello_replays += 1;
            self.counters.resent += keys.len() as u64;
            info!(
                records = keys.len(),
                "Collector (re)subscribed; resending what is in flight now."
            );
            self.sched.resend(&keys);
        }
        if self.cfg.buffer.max_age.is_some() {
            let inflight = &self.inflight;
            self.buffer.expire(now, &|k| inflight.contains_key(k));
        }
    }

    /// Stamps and buffers one observation; its buffer key when stored.
    /// Every observation is counted for remote config's health window
    /// first ([`Taken`]), whatever the buffer then does with it.
    fn record(&mut self, at_ms: u64, payload: Payload) -> Option<u64> {
        self.view.taken.count(at_ms, &payload);
        let rec = Record {
            boot: self.boot,
            seq: self.seq + 1,
            at_ms,
            payload,
        };
        let encoded = match encode_record(&rec) {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, kind = rec.payload.kind_name(), "Observation cannot be encoded; skipped (no seq used).");
                return None;
            }
        };
        self.seq = rec.seq;
        let meta = Meta::of(&rec);
        let now = self.now();
        let inflight = &self.inflight;
        match self
            .buffer
            .append(meta, &encoded, now, &|k| inflight.contains_key(k))
        {
            Appended::Stored { key } => {
                if meta.kind == Kind::Host {
                    self.last_host_key = Some(key);
                }
                self.sched.appended(key);
                Some(key)
            }
            Appended::Dropped { .. } => None,
        }
    }

    /// Takes an `AgentStatus` heartbeat record.
    fn heartbeat(&mut self) {
        let now = self.now();
        let stats = self.buffer.stats();
        self.view
            .backlog_records
            .store(stats.records, std::sync::atomic::Ordering::Relaxed);
        self.view
            .backlog_bytes
            .store(stats.bytes, std::sync::atomic::Ordering::Relaxed);
        let status = AgentStatus {
            version: self.cfg.agent_version.clone(),
            interval_ms: self.cfg.interval_ms,
            backlog_records: stats.records,
            backlog_bytes: stats.bytes,
            oldest_unsent_ms: stats.oldest_at_ms.map(|t| now.saturating_sub(t)),
            dropped: self.buffer.drops(),
            reconnects: self.counters.reconnects,
            clock_offset_ms: self.clock_offset_ms,
            acks_refused: self.counters.acks_refused,
            observations_dropped: self.observations_dropped.as_ref().map_or(0, |d| d.get()),
        };
        if let Some(n) = self.refusal_log.flush(now) {
            self.log_refusals(n, None);
        }
        let (segments, open) = self.buffer.segments();
        info!(
            unit = %self.unit,
            seq = self.seq,
            backlog_records = stats.records,
            backlog_bytes = stats.bytes,
            oldest_unsent_ms = ?status.oldest_unsent_ms,
            dropped_total = status.dropped.total(),
            dropped_full = status.dropped.full,
            dropped_expired = status.dropped.expired,
            dropped_thinned = status.dropped.thinned,
            dropped_corrupt = status.dropped.corrupt,
            buffer_resets = status.dropped.resets,
            reconnects = self.counters.reconnects,
            inflight = self.inflight.len(),
            published = self.counters.published,
            acked = self.counters.acked,
            resent = self.counters.resent,
            acks_refused = self.counters.acks_refused,
            hello_replays = self.counters.hello_replays,
            segments,
            open_segments = open,
            connected = self.connection.is_some(),
            "Uplink status."
        );
        self.record(now, Payload::Status(status));
    }

    fn flush(&mut self) {
        if let Err(e) = self.buffer.flush() {
            warn!(error = %e, "Disk buffer flush failed.");
        }
    }

    fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Connected {
                connection,
                session_present,
                broker,
            } => {
                self.counters.connects += 1;
                if self.counters.connects > 1 {
                    self.counters.reconnects += 1;
                }
                self.connection = Some(connection);
                self.last_connection = connection;
                self.inflight.clear();
                if self.departed {
                    // Connected while departing (the attempt was under way):
                    // leave at once, no birth.
                    let _ = self.link.send(false);
                    let _ = self.client.try_disconnect();
                    return;
                }
                self.birth_reason = self.next_birth.take().unwrap_or(PresenceReason::Connected);
                info!(unit = %self.unit, connection, session_present, %broker, backlog_records = self.buffer.records(), reconnects = self.counters.reconnects, "Connected to the broker.");
                let _ = self
                    .client
                    .try_subscribe(self.ack_topic.clone(), QoS::AtLeastOnce);
                let _ = self
                    .client
                    .try_subscribe(self.state_topic.clone(), QoS::AtLeastOnce);
                let _ = self.client.try_subscribe(COLLECTOR_TOPIC, QoS::AtLeastOnce);
                if let Some((agency, unit)) = &self.config_topics {
                    let _ = self.client.try_subscribe(agency.clone(), QoS::AtLeastOnce);
                    let _ = self.client.try_subscribe(unit.clone(), QoS::AtLeastOnce);
                }
                if let Some(t) = &self.action_topic {
                    let _ = self.client.try_subscribe(t.clone(), QoS::AtLeastOnce);
                }
                self.view
                    .connected
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.view.reconnects.store(
                    u64::from(self.counters.reconnects),
                    std::sync::atomic::Ordering::Relaxed,
                );
                self.publish_birth();
                // Live first: the newest host sample, then a fresh heartbeat.
                let newest: Vec<u64> = self.last_host_key.into_iter().collect();
                self.sched.connected(&newest);
                self.heartbeat();
            }
            LinkEvent::Disconnected { error } => {
                self.view
                    .connected
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                if self.connection.take().is_some() {
                    if self.departed {
                        // The clean DISCONNECT after an announced departure.
                        debug!(unit = %self.unit, %error, "Disconnected after the departure.");
                    } else {
                        warn!(unit = %self.unit, %error, inflight = self.inflight.len(), "Disconnected from the broker; buffering.");
                    }
                }
                self.inflight.clear();
                self.sched.disconnected();
            }
            LinkEvent::Message { topic, payload } => self.on_message(&topic, &payload),
        }
    }

    fn publish_birth(&mut self) {
        if let Some(connection) = self.connection {
            let payload = mqtt::presence(
                &self.unit,
                self.boot,
                connection,
                self.birth_reason,
                self.now(),
            );
            if let Err(e) =
                self.client
                    .try_publish(self.state_topic.clone(), QoS::AtLeastOnce, true, payload)
            {
                warn!(error = %e, "Cannot queue the birth message.");
            }
        }
    }

    /// Counts one refused ack or hello and logs under the rate limit.
    fn refuse(&mut self, why: &dyn std::fmt::Display) {
        self.counters.acks_refused += 1;
        let now = self.now();
        if let Some(n) = self.refusal_log.refused(now) {
            self.log_refusals(n, Some(why));
        }
    }

    fn log_refusals(&self, n: u64, last: Option<&dyn std::fmt::Display>) {
        warn!(
            unit = %self.unit,
            refused = n,
            acks_refused_total = self.counters.acks_refused,
            last = %last.map(|w| w.to_string()).unwrap_or_default(),
            "Refused acks or collector hellos not signed by a trusted key; nothing freed."
        );
    }

    fn on_hello(&mut self, payload: &[u8]) {
        let hello = match decode_hello(payload) {
            Ok(h) => h,
            Err(e) => {
                self.refuse(&format_args!("undecodable hello: {e}"));
                return;
            }
        };
        let mut verdict = verify::judge_hello(&self.trust, self.newest_hello, &hello);
        if matches!(verdict, HelloVerdict::Refused(VerifyError::UnknownKey(_)))
            && self.reload_trust()
        {
            verdict = verify::judge_hello(&self.trust, self.newest_hello, &hello);
        }
        match verdict {
            HelloVerdict::Refused(e) => self.refuse(&format_args!("hello: {e}")),
            HelloVerdict::Old => self.refuse(&format_args!(
                "hello older than the newest seen (a replay): {:?}",
                hello.order()
            )),
            HelloVerdict::Same => {}
            HelloVerdict::New { announced } => {
                self.newest_hello = Some(hello.order());
                for key in announced {
                    self.trust_announced(key);
                }
                if !self.inflight.is_empty() {
                    let due = self.replay.request(self.now());
                    debug!(
                        due,
                        "Collector hello: resend of what is in flight requested."
                    );
                }
            }
        }
    }

    /// An ack or hello named a key we do not trust: `trusted_keys` may
    /// have been written since start (enrolment writes it once the unit is
    /// active). Re-reads it, at most once per [`TRUST_RELOAD_MS`]; `true`
    /// when it added a key.
    fn reload_trust(&mut self) -> bool {
        let now = self.now();
        let Some(path) = &self.cfg.trusted_keys_file else {
            return false;
        };
        if self
            .trust_reloaded_ms
            .is_some_and(|t| now.saturating_sub(t) < TRUST_RELOAD_MS)
        {
            return false;
        }
        self.trust_reloaded_ms = Some(now);
        match crate::trust::load_file(path) {
            Ok(keys) => {
                let before = self.trust.len();
                for k in keys {
                    if let Err(e) = self.trust.insert(k) {
                        warn!(error = %e, key = %k, "Collector key in trusted_keys not trusted.");
                    }
                }
                let added = self.trust.len() - before;
                if added > 0 {
                    info!(unit = %self.unit, added, "Trusting collector keys written to trusted_keys since start.");
                }
                added > 0
            }
            Err(e) => {
                warn!(error = %e, "Cannot re-read trusted_keys.");
                false
            }
        }
    }

    fn trust_announced(&mut self, key: muster_proto::PublicKey) {
        match self.trust.insert(key) {
            Ok(true) => {
                info!(unit = %self.unit, %key, "Collector announced its next key; trusting it.");
                if let Some(path) = &self.cfg.trusted_keys_file
                    && let Err(e) = crate::trust::add(path, key)
                {
                    warn!(error = %e, %key, "Cannot persist an announced collector key; trusted until restart.");
                }
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, %key, "Announced collector key not trusted."),
        }
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        if topic == COLLECTOR_TOPIC {
            self.on_hello(payload);
            return;
        }
        if let (Some(t), Some(actions)) = (&self.action_topic, &self.actions)
            && topic == t
        {
            if actions.requests.try_send(payload.to_vec()).is_err() {
                let n = actions
                    .dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1;
                if n == 1 || n.is_multiple_of(100) {
                    warn!(%topic, dropped = n, "Action queue full: request dropped (not audited).");
                }
            }
            return;
        }
        if let (Some((agency, unit)), Some(remote)) = (&self.config_topics, &self.remote) {
            let kind = if topic == agency {
                Some(muster_proto::DocScopeKind::Agency)
            } else if topic == unit {
                Some(muster_proto::DocScopeKind::Unit)
            } else {
                None
            };
            if let Some(kind) = kind {
                // An empty retained payload clears the topic: no document.
                if !payload.is_empty() && remote.docs.try_send((kind, payload.to_vec())).is_err() {
                    let n = remote
                        .docs_dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        + 1;
                    if n == 1 || n.is_multiple_of(100) {
                        warn!(%topic, dropped = n, "Remote config queue full: document dropped (it is retained; it comes again at the next connection).");
                    }
                }
                return;
            }
        }
        let msg = match decode(payload) {
            Ok(d) => d.message,
            Err(e) => {
                self.counters.bad_inbound += 1;
                warn!(%topic, reason = e.reason(), error = %e, "Undecodable message on a subscribed topic.");
                return;
            }
        };
        if msg.unit != self.unit {
            if topic == self.ack_topic && matches!(msg.body, Body::Ack(_)) {
                self.refuse(&format_args!("an ack about {}", msg.unit));
                return;
            }
            self.counters.bad_inbound += 1;
            warn!(%topic, about = %msg.unit, "Message about another unit; ignored.");
            return;
        }
        match msg.body {
            Body::Ack(ack) if topic == self.ack_topic => {
                let now = self.now();
                let mut acked =
                    verify::apply_ack(&mut self.inflight, &self.trust, &self.unit, &ack, now);
                if matches!(acked, Err(VerifyError::UnknownKey(_))) && self.reload_trust() {
                    acked =
                        verify::apply_ack(&mut self.inflight, &self.trust, &self.unit, &ack, now);
                }
                let acked = match acked {
                    Ok(a) => a,
                    Err(e) => {
                        self.refuse(&format_args!("ack: {e}"));
                        return;
                    }
                };
                if let Some(off) = acked.clock_offset_ms {
                    self.clock_offset_ms = Some(off);
                    use std::sync::atomic::Ordering::Release;
                    self.view.clock_offset_ms.store(off, Release);
                    self.view.clock_offset_known.store(true, Release);
                }
                self.view
                    .last_ack_ms
                    .store(now, std::sync::atomic::Ordering::Relaxed);
                if self.depart_key.is_some_and(|k| acked.freed.contains(&k)) {
                    self.depart_acked = true;
                }
                if !acked.freed.is_empty() {
                    let n = self.buffer.remove(&acked.freed);
                    self.counters.acked += n as u64;
                    debug!(
                        freed = acked.freed.len(),
                        deleted = n,
                        upto = ack.upto,
                        "Collector ack."
                    );
                }
            }
            Body::Presence(p) if topic == self.state_topic => {
                if !p.online && self.connection.is_some() && !self.departed {
                    info!(unit = %self.unit, will_boot = %p.boot, will_connection = p.connection, "State topic says offline while connected (a late will); republishing the birth.");
                    self.publish_birth();
                }
            }
            _ => {
                self.counters.bad_inbound += 1;
                warn!(%topic, "Unexpected message kind on a subscribed topic.");
            }
        }
    }

    /// Announces a departure (see the module doc), waits for its ack at most
    /// `timeout`, disconnects cleanly and stays disconnected.
    async fn depart(
        &mut self,
        reason: PresenceReason,
        rx: &mut ObservationRx,
        ev_rx: &mut mpsc::Receiver<LinkEvent>,
        timeout: Duration,
    ) {
        if self.departed {
            // Already away (a shutdown while asleep): the record says the
            // truer reason; it goes out with the backlog.
            let now = self.now();
            self.record(now, self.presence_payload(reason, now));
            self.flush();
            return;
        }
        // What was measured before the announcement goes before it.
        while let Ok(o) = rx.try_recv() {
            self.record(o.at_ms, o.payload);
        }
        let now = self.now();
        self.departed = true;
        self.depart_acked = false;
        self.depart_key = self.record(now, self.presence_payload(reason, now));
        self.flush();
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        if let Some(connection) = self.connection {
            let state = mqtt::presence(&self.unit, self.boot, connection, reason, now);
            if let Err(e) =
                self.client
                    .try_publish(self.state_topic.clone(), QoS::AtLeastOnce, true, state)
            {
                warn!(error = %e, "Cannot queue the retained announcement.");
            }
            while !self.depart_acked && self.connection.is_some() {
                self.pump();
                let wake = self.next_wake();
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(deadline) => break,
                    ev = ev_rx.recv() => match ev {
                        Some(ev) => self.on_link(ev),
                        None => break,
                    },
                    _ = sleep_for(wake) => self.on_timer(),
                }
            }
        }
        let acked = self.depart_acked;
        self.depart_key = None;
        // No reconnect from here on, then a clean DISCONNECT: no will.
        let _ = self.link.send(false);
        if self.connection.is_some() {
            let _ = self.client.try_disconnect();
            let closed = async {
                while let Some(ev) = ev_rx.recv().await {
                    let down = matches!(ev, LinkEvent::Disconnected { .. });
                    self.on_link(ev);
                    if down {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DISCONNECT_WAIT, closed).await;
        }
        self.flush();
        info!(unit = %self.unit, reason = reason.as_str(), acked, waited_ms = started.elapsed().as_millis() as u64, seq = self.seq, "Departure announced; disconnected.");
    }

    fn presence_payload(&self, reason: PresenceReason, now: u64) -> Payload {
        Payload::Presence(muster_proto::Presence {
            online: false,
            boot: self.boot,
            connection: self.connection.unwrap_or(self.last_connection),
            at_ms: now,
            reason,
        })
    }

    /// Back from a departure: the poll loop connects again and the birth
    /// says `reason`.
    fn resume(&mut self, reason: PresenceReason) {
        if !self.departed {
            return;
        }
        self.departed = false;
        self.next_birth = Some(reason);
        let _ = self.link.send(true);
        info!(unit = %self.unit, reason = reason.as_str(), "Connecting again.");
    }

    /// Publishes what the scheduler allows.
    fn pump(&mut self) {
        loop {
            let now = self.now();
            match self.sched.next(now, self.inflight.len()) {
                Next::Idle => return,
                Next::WaitUntil(t) => {
                    self.wake_ms = Some(t);
                    return;
                }
                Next::Live(key) => {
                    if self.inflight.contains_key(key) {
                        continue;
                    }
                    let Some(rec) = self.buffer.get(key) else {
                        continue;
                    };
                    match self.publish(&[rec], true) {
                        Published::Sent | Published::Retry => {}
                        Published::Blocked => {
                            self.sched.resend(&[key]);
                            return;
                        }
                    }
                }
                Next::Backlog { from, max_bytes } => {
                    let inflight = &self.inflight;
                    let recs =
                        self.buffer
                            .read_filtered(from, max_bytes, MAX_BATCH_RECORDS, &|k| {
                                inflight.contains_key(k)
                            });
                    let Some(last) = recs.last() else {
                        self.sched.backlog_empty();
                        continue;
                    };
                    let last_key = last.key;
                    let bytes: u64 = recs.iter().map(Stored::stored_len).sum();
                    match self.publish(&recs, false) {
                        Published::Sent => self.sched.backlog_sent(last_key, bytes, now),
                        Published::Retry => {}
                        Published::Blocked => return,
                    }
                }
            }
        }
    }

    /// Hands one publish to MQTT and records it in flight.
    fn publish(&mut self, recs: &[Stored], single: bool) -> Published {
        let slices: Vec<&[u8]> = recs.iter().map(Stored::encoded).collect();
        let payload = match message_from_encoded(&self.unit, &slices, single) {
            Ok(p) => p,
            Err(e) => {
                // A stored record proto cannot splice (e.g. of an unknown
                // schema version): find it, count it corrupt, go on.
                warn!(error = %e, "Stored records cannot be sent; checking them one by one.");
                let mut bad = 0;
                for r in recs {
                    if message_from_encoded(&self.unit, &[r.encoded()], true).is_err() {
                        self.buffer.discard_corrupt(r.key);
                        bad += 1;
                    }
                }
                return if bad > 0 {
                    Published::Retry
                } else {
                    Published::Blocked
                };
            }
        };
        let len = payload.len();
        match self.client.try_publish(
            self.telemetry_topic.clone(),
            QoS::AtLeastOnce,
            false,
            payload,
        ) {
            Ok(()) => {
                let sent = recs
                    .iter()
                    .map(|r| Sent {
                        key: r.key,
                        boot: r.meta.boot,
                        seq: r.meta.seq,
                    })
                    .collect();
                self.inflight.insert(sent, len, self.now());
                self.counters.published += recs.len() as u64;
                Published::Sent
            }
            Err(e) => {
                debug!(error = %e, "MQTT client queue full; will retry.");
                Published::Blocked
            }
        }
    }
}

enum Published {
    Sent,
    /// Bad records were removed: read again.
    Retry,
    /// Cannot publish now (client queue full): wait for the next event.
    Blocked,
}

impl From<crate::buffer::BufferError> for UplinkError {
    fn from(e: crate::buffer::BufferError) -> Self {
        UplinkError::Buffer(e)
    }
}
