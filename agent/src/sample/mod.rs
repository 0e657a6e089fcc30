//! Host health sampling: one sysinfo `System` (plus one `Disks` and one
//! `Networks`) for the whole run, one file per metric family. Rates (disk I/O,
//! network rx/tx) come from the deltas between two refreshes divided by the
//! time between them. A collector that fails or panics is recorded in
//! `HostSample.failures`; the rest of the sample still goes out.
//!
//! Sampling runs on its own OS thread ([`spawn`]): sysinfo's refreshes are
//! blocking file reads, and a slow probe or a busy uplink never delays them.
//!
//! The network context (issue 12) is one family per file: [`route`]
//! (default route, its kind, roaming), [`wifi`], [`cellular`] (ModemManager,
//! or on Windows the Mobile Broadband API, on its own thread, waited for at
//! most `network.cellular_timeout`; MBN's pure mapping in [`mbn`]),
//! [`vpn`]; Windows' halves share `win.rs`. `HostSample.network` is present
//! whenever one of those collectors is enabled, even if all of them failed
//! (their reasons are in `failures`). A default route on the modem's data
//! interface is `cellular` whatever sysfs says (a ppp modem link).

// Real time: the sampling thread is a std thread on its own fixed-rate
// schedule; tokio's paused time does not reach it.
#![allow(clippy::disallowed_methods)]

pub mod cellular;
pub mod cpu;
pub mod disk;
pub mod load;
pub mod mbn;
pub mod memory;
pub mod net;
pub mod process;
pub mod route;
pub mod uptime;
pub mod vpn;
pub mod wifi;
#[cfg(windows)]
mod win;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use muster_proto::{HostSample, LinkKind, NetContext, Payload, SamplerFailure, SamplerFamily};
use sysinfo::{Disks, System};
use tokio::sync::mpsc::error::TrySendError;

use crate::clock::Clock;
use crate::config::SamplingConfig;
use crate::observation::{Observation, ObservationTx};

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("cannot open the OS's system information: {0}")]
    System(String),
    #[error("cannot start the sampling thread: {0}")]
    Thread(std::io::Error),
}

/// Bytes over `elapsed_ms` to bytes per second; 0 when there is no interval yet.
pub fn per_sec(bytes: u64, elapsed_ms: u64) -> u64 {
    if elapsed_ms == 0 {
        return 0;
    }
    ((bytes as u128 * 1000) / elapsed_ms as u128).min(u64::MAX as u128) as u64
}

/// Is this a Windows build running under Wine? Wine's sysinfo backend has no
/// CPU usage and crashes on a second CPU refresh, so CPU is refreshed once only.
#[cfg(windows)]
pub fn running_under_wine() -> bool {
    unsafe extern "system" {
        fn GetModuleHandleA(name: *const u8) -> *mut core::ffi::c_void;
        fn GetProcAddress(
            module: *mut core::ffi::c_void,
            name: *const u8,
        ) -> *mut core::ffi::c_void;
    }
    // SAFETY: both calls take NUL-terminated strings and return null on failure.
    unsafe {
        let ntdll = GetModuleHandleA(c"ntdll.dll".as_ptr().cast());
        !ntdll.is_null() && !GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()).is_null()
    }
}

#[cfg(not(windows))]
pub fn running_under_wine() -> bool {
    false
}

/// Owns the sysinfo handles for the whole run.
pub struct Sampler {
    cfg: SamplingConfig,
    sys: System,
    disks: Option<Disks>,
    nets: Option<net::Interfaces>,
    watched: process::Watched,
    discovery: process::Discovery,
    last_refresh: Option<Instant>,
    /// CPU refreshes still allowed (`None`: unlimited). Under Wine: 1.
    cpu_refreshes_left: Option<u32>,
    cpu_note: Option<&'static str>,
    /// The previous sample's default route, for `route_changes`.
    roaming: route::Roaming,
    /// The modem thread (`None`: cellular not sampled); a start error is
    /// each sample's failure reason.
    cellular: Option<Result<cellular::CellularReader, String>>,
}

impl Sampler {
    pub fn new(cfg: SamplingConfig) -> Result<Self, SampleError> {
        let sys = System::new().map_err(|e| SampleError::System(e.to_string()))?;
        // A missing disk or network list is a collector failure, not a fatal one.
        let disks = Disks::new().ok();
        let nets = net::open();
        let wine = running_under_wine();
        let cellular = (cfg.enabled(SamplerFamily::Cellular)
            && cfg.network.cellular != crate::config::CellularMode::Off)
            .then(|| {
                cellular::CellularReader::start(
                    cfg.network.cellular,
                    cfg.network.cellular_timeout,
                    cfg.network.cellular_refresh,
                )
            });
        Ok(Sampler {
            roaming: route::Roaming::default(),
            cellular,
            watched: process::Watched::new(&cfg.processes),
            discovery: process::Discovery::default(),
            cfg,
            sys,
            disks,
            nets,
            last_refresh: None,
            cpu_refreshes_left: wine.then_some(1),
            cpu_note: wine.then_some("CPU usage is not available under Wine"),
        })
    }

    fn refresh(&mut self) -> u64 {
        let now = Instant::now();
        let elapsed_ms = self
            .last_refresh
            .map(|t| now.duration_since(t).as_millis() as u64)
            .unwrap_or(0);
        self.last_refresh = Some(now);
        let on = |c| self.cfg.enabled(c);
        if on(SamplerFamily::Cpu) {
            match &mut self.cpu_refreshes_left {
                Some(0) => {}
                Some(n) => {
                    *n -= 1;
                    let sys = &mut self.sys;
                    let _ = catch_unwind(AssertUnwindSafe(|| sys.refresh_cpu_usage()));
                }
                None => {
                    let sys = &mut self.sys;
                    let _ = catch_unwind(AssertUnwindSafe(|| sys.refresh_cpu_usage()));
                }
            }
        }
        if on(SamplerFamily::Memory) {
            let sys = &mut self.sys;
            let _ = catch_unwind(AssertUnwindSafe(|| memory::refresh(sys)));
        }
        if on(SamplerFamily::Processes) && !self.cfg.processes.is_empty() {
            let (sys, disc, names) = (&mut self.sys, &mut self.discovery, &self.cfg.processes);
            let _ = catch_unwind(AssertUnwindSafe(|| disc.refresh(sys, names)));
        }
        if on(SamplerFamily::Disks)
            && let Some(d) = &mut self.disks
        {
            let _ = catch_unwind(AssertUnwindSafe(|| disk::refresh(d)));
        }
        if on(SamplerFamily::Networks)
            && let Some(n) = &mut self.nets
        {
            let _ = catch_unwind(AssertUnwindSafe(|| net::refresh(n)));
        }
        elapsed_ms
    }

    /// The first refresh: a baseline for CPU usage and rates. `once` calls it,
    /// waits, then calls [`Sampler::sample`]; the sampling thread calls it at start.
    pub fn prime(&mut self) {
        self.refresh();
    }

    /// Refreshes and reads every enabled collector into one sample.
    pub fn sample(&mut self, interval_ms: u32) -> HostSample {
        let elapsed_ms = self.refresh();
        let mut s = HostSample {
            interval_ms,
            ..HostSample::default()
        };
        let mut fail = |c: SamplerFamily, reason: String| {
            s.failures.push(SamplerFailure {
                collector: c,
                reason,
            })
        };
        let mut cpu = None;
        let mut load = None;
        let mut mem = None;
        let mut disks = Vec::new();
        let mut nets = Vec::new();
        let mut procs = Vec::new();
        let mut up = 0;
        let mut netctx = NetContext::default();
        let mut any_net = false;
        let collectors = std::mem::take(&mut self.cfg.collectors);
        for &c in &collectors {
            let r: Result<(), String> = guard(AssertUnwindSafe(|| match c {
                SamplerFamily::Cpu => {
                    if let (Some(0), Some(note)) = (self.cpu_refreshes_left, self.cpu_note) {
                        return Err(note.to_owned());
                    }
                    cpu = Some(cpu::read(&self.sys)?);
                    Ok(())
                }
                SamplerFamily::Load => {
                    load = load::read()?;
                    Ok(())
                }
                SamplerFamily::Memory => {
                    mem = Some(memory::read(&self.sys)?);
                    Ok(())
                }
                SamplerFamily::Disks => {
                    let d = self
                        .disks
                        .as_ref()
                        .ok_or("the OS's disk list is unavailable")?;
                    disks = disk::read(d, elapsed_ms)?;
                    Ok(())
                }
                SamplerFamily::Networks => {
                    let n = self
                        .nets
                        .as_ref()
                        .ok_or("the OS's network list is unavailable")?;
                    nets = net::read(n, elapsed_ms)?;
                    Ok(())
                }
                SamplerFamily::Processes => {
                    if !self.cfg.processes.is_empty() {
                        procs = self.watched.read(&self.sys, &self.discovery)?;
                    }
                    Ok(())
                }
                SamplerFamily::Uptime => {
                    up = uptime::read()?;
                    Ok(())
                }
                SamplerFamily::Route => {
                    any_net = true;
                    let r = route::read()?;
                    netctx.route_changes = self
                        .roaming
                        .observe(r.as_ref().map(|r| r.interface.as_str()));
                    netctx.route = r;
                    Ok(())
                }
                SamplerFamily::Wifi => {
                    any_net = true;
                    netctx.wifi = wifi::read(netctx.route.as_ref().map(|r| r.interface.as_str()))?;
                    Ok(())
                }
                SamplerFamily::Cellular => {
                    any_net = true;
                    netctx.cellular = match &self.cellular {
                        Some(Ok(r)) => r.read()?,
                        Some(Err(e)) => return Err(e.clone()),
                        None => None,
                    };
                    Ok(())
                }
                SamplerFamily::Vpn => {
                    any_net = true;
                    netctx.vpns = vpn::read(&self.cfg.network.vpn)?;
                    Ok(())
                }
            }));
            if let Err(reason) = r {
                fail(c, reason);
            }
        }
        self.cfg.collectors = collectors;
        if let Some(r) = &mut netctx.route {
            refine_kind(r, netctx.cellular.as_ref(), &netctx.vpns);
        }
        if any_net {
            s.network = Some(Box::new(netctx));
        }
        s.cpu = cpu;
        s.load_x100 = load;
        s.memory = mem;
        s.disks = disks;
        s.nets = nets;
        s.processes = procs;
        s.uptime_s = up;
        s
    }
}

/// What the other families know about the default route's interface: the
/// modem's data interface is cellular (a ppp link sysfs cannot name), an
/// interface the config names as a VPN is a VPN (a tap or a Windows VPN
/// adapter that says it is ethernet).
pub fn refine_kind(
    r: &mut muster_proto::DefaultRoute,
    cell: Option<&muster_proto::Cellular>,
    vpns: &[muster_proto::Vpn],
) {
    if vpns.iter().any(|v| v.name == r.interface) {
        r.kind = LinkKind::Vpn;
    } else if cell.is_some_and(|c| !c.interface.is_empty() && c.interface == r.interface) {
        r.kind = LinkKind::Cellular;
    }
}

/// Runs one collector; a panic becomes a failure reason.
fn guard(f: AssertUnwindSafe<impl FnOnce() -> Result<(), String>>) -> Result<(), String> {
    match catch_unwind(f) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("collector panicked: {msg}"))
        }
    }
}

/// Counts observations the channel refused because it was full.
#[derive(Debug, Default)]
pub struct DropCounter(AtomicU64);

impl DropCounter {
    /// Sends without ever blocking; a full channel is a counted, logged drop.
    /// Returns false once the receiver is gone.
    pub fn try_send(&self, tx: &ObservationTx, obs: Observation, what: &str) -> bool {
        match tx.try_send(obs) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
                // The first drop, then every 100th: a stuck uplink must not flood the log.
                if n == 1 || n.is_multiple_of(100) {
                    tracing::warn!(
                        what,
                        observations_dropped = n,
                        "Observation channel full: dropping observations."
                    );
                }
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// When the sampling thread last completed a pass: the watchdog's evidence
/// that the agent is not hung.
#[derive(Debug)]
pub struct Liveness {
    epoch: Instant,
    last_pass_ms: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::new()
    }
}

impl Liveness {
    pub fn new() -> Self {
        Liveness {
            epoch: Instant::now(),
            last_pass_ms: AtomicU64::new(0),
        }
    }

    fn mark(&self) {
        self.last_pass_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the last completed pass (or since the thread started).
    pub fn since_last_pass(&self) -> Duration {
        let last = Duration::from_millis(self.last_pass_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// The sampling thread's handle: dropping it (or calling [`SamplerHandle::stop`]) ends the thread.
pub struct SamplerHandle {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    liveness: Arc<Liveness>,
}

impl SamplerHandle {
    pub fn liveness(&self) -> Arc<Liveness> {
        self.liveness.clone()
    }

    /// Stops the thread and waits for it (at most one collector pass).
    pub fn stop(mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SamplerHandle {
    fn drop(&mut self) {
        self.stop.take();
    }
}

/// Starts the sampling thread: a sample every `interval` (fixed rate; a pass
/// that overruns skips the missed ticks), sent with `try_send`. It marks
/// `liveness` after every pass (shared, so a sampler rebuilt by remote
/// config keeps feeding the same watchdog).
pub fn spawn(
    mut sampler: Sampler,
    interval: Duration,
    tx: ObservationTx,
    clock: Arc<dyn Clock>,
    drops: Arc<DropCounter>,
    liveness: Arc<Liveness>,
) -> Result<SamplerHandle, SampleError> {
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let interval_ms = interval.as_millis().min(u32::MAX as u128) as u32;
    let live = liveness.clone();
    let thread = std::thread::Builder::new()
        .name("sampler".into())
        .stack_size(512 * 1024)
        .spawn(move || {
            sampler.prime();
            let start = Instant::now();
            let mut ticks: u32 = 1;
            loop {
                let next = start + interval * ticks;
                let wait = next.saturating_duration_since(Instant::now());
                match stop_rx.recv_timeout(wait) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
                let at_ms = clock.now_ms();
                let sample = sampler.sample(interval_ms);
                live.mark();
                for f in &sample.failures {
                    tracing::debug!(collector = ?f.collector, reason = %f.reason, "Collector failed.");
                }
                let obs = Observation {
                    at_ms,
                    payload: Payload::Host(sample),
                };
                if !drops.try_send(&tx, obs, "host") {
                    break;
                }
                // Skip ticks missed by a slow pass instead of bursting.
                let elapsed = start.elapsed();
                ticks = ticks.max((elapsed.as_nanos() / interval.as_nanos().max(1)) as u32 + 1);
            }
            tracing::debug!("Sampling thread stopped.");
        })
        .map_err(SampleError::Thread)?;
    Ok(SamplerHandle {
        stop: Some(stop_tx),
        thread: Some(thread),
        liveness,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(per_sec(1000, 0), 0);
        assert_eq!(per_sec(1000, 1000), 1000);
        assert_eq!(per_sec(1000, 500), 2000);
        assert_eq!(per_sec(1, 3000), 0);
        assert_eq!(per_sec(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn a_real_sample_has_every_family() {
        let cfg = SamplingConfig {
            interval: Duration::from_secs(1),
            processes: vec!["no-such-process-xyz".into()],
            collectors: vec![
                SamplerFamily::Cpu,
                SamplerFamily::Load,
                SamplerFamily::Memory,
                SamplerFamily::Disks,
                SamplerFamily::Networks,
                SamplerFamily::Processes,
                SamplerFamily::Uptime,
            ],
            network: Default::default(),
        };
        let mut s = Sampler::new(cfg).unwrap();
        s.prime();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let h = s.sample(1000);
        assert!(h.failures.is_empty(), "{:?}", h.failures);
        let cpu = h.cpu.unwrap();
        assert!(!cpu.per_core_pct.is_empty());
        assert!(cpu.total_bp <= 10_000);
        assert!(h.load_x100.is_some());
        let m = h.memory.unwrap();
        assert!(m.total_kib > 0 && m.used_kib <= m.total_kib);
        assert!(
            h.nets.iter().any(|n| n.name == "lo" && n.up),
            "{:?}",
            h.nets
        );
        assert!(h.uptime_s > 0);
        assert_eq!(h.processes.len(), 1);
        assert!(!h.processes[0].running);
    }

    #[test]
    fn a_failing_collector_is_recorded_and_the_rest_goes_out() {
        let cfg = SamplingConfig {
            interval: Duration::from_secs(1),
            processes: vec![],
            collectors: vec![
                SamplerFamily::Cpu,
                SamplerFamily::Memory,
                SamplerFamily::Disks,
                SamplerFamily::Networks,
            ],
            network: Default::default(),
        };
        let mut s = Sampler::new(cfg).unwrap();
        // What happens when the OS refuses the disk and network lists.
        s.disks = None;
        s.nets = None;
        let h = s.sample(1000);
        let failed: Vec<SamplerFamily> = h.failures.iter().map(|f| f.collector).collect();
        assert_eq!(failed, vec![SamplerFamily::Disks, SamplerFamily::Networks]);
        assert!(h.failures.iter().all(|f| f.reason.contains("unavailable")));
        assert!(h.memory.is_some() && h.cpu.is_some());
    }

    #[test]
    fn other_families_refine_the_route_kind() {
        use muster_proto::{Cellular, DefaultRoute, Vpn};
        let route = |i: &str| DefaultRoute {
            interface: i.into(),
            kind: LinkKind::Other,
        };
        let cell = Cellular {
            interface: "ppp0".into(),
            ..Default::default()
        };
        let vpns = [Vpn {
            name: "tap0".into(),
            up: true,
        }];
        let mut r = route("ppp0");
        refine_kind(&mut r, Some(&cell), &vpns);
        assert_eq!(r.kind, LinkKind::Cellular);
        let mut r = route("tap0");
        refine_kind(&mut r, Some(&cell), &vpns);
        assert_eq!(r.kind, LinkKind::Vpn);
        let mut r = route("eth0");
        refine_kind(&mut r, Some(&Cellular::default()), &vpns);
        assert_eq!(r.kind, LinkKind::Other);
    }

    #[test]
    fn a_panicking_collector_becomes_a_failure() {
        let r = guard(AssertUnwindSafe(|| -> Result<(), String> {
            panic!("boom")
        }));
        assert_eq!(r, Err("collector panicked: boom".to_owned()));
    }

    #[test]
    fn cpu_is_refreshed_once_only_where_a_second_refresh_would_crash() {
        let cfg = SamplingConfig {
            interval: Duration::from_secs(1),
            processes: vec![],
            collectors: vec![SamplerFamily::Cpu, SamplerFamily::Memory],
            network: Default::default(),
        };
        let mut s = Sampler::new(cfg).unwrap();
        // What `Sampler::new` sets up under Wine.
        s.cpu_refreshes_left = Some(1);
        s.cpu_note = Some("CPU usage is not available under Wine");
        s.prime();
        let h = s.sample(1000);
        assert_eq!(s.cpu_refreshes_left, Some(0));
        assert!(h.cpu.is_none());
        assert_eq!(h.failures.len(), 1);
        assert_eq!(h.failures[0].collector, SamplerFamily::Cpu);
        assert!(h.memory.is_some());
    }

    #[test]
    fn disabled_collectors_are_left_empty_without_failures() {
        let cfg = SamplingConfig {
            interval: Duration::from_secs(1),
            processes: vec![],
            collectors: vec![SamplerFamily::Memory],
            network: Default::default(),
        };
        let mut s = Sampler::new(cfg).unwrap();
        let h = s.sample(1000);
        assert!(h.cpu.is_none() && h.disks.is_empty() && h.nets.is_empty());
        assert!(h.memory.is_some());
        assert!(h.failures.is_empty());
    }
}
