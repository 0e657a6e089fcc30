//! Synthetic transactions: one file per probe kind (`http`, `tcp`, `dns`,
//! `icmp`, `transaction`), the failure classification (`classify`), the
//! scheduler (`schedule`: per-target interval and timeout, never overlapping
//! itself) and the `{{var}}` templates of transaction steps (`template`).
//!
//! Each probe enforces its own deadline step by step, so a timeout says which
//! step ran out of time; the scheduler's outer timeout, a little later
//! ([`SAFETY_MARGIN`]), is the safety net.
//!
//! A run yields one result per probe, except a transaction (issue 18): its
//! own result `<probe>` first (kind `Transaction`, target the first step's
//! URL template, the outcome and detail of the first failing step —
//! `step "assignments": status 401, expected 200` —, `phases.total_us` the
//! whole run), then `<probe>.<step>` for each step that ran, with that
//! step's phases, status and URL template; steps after a failure do not run.
//! Targets are templates and details fixed phrases: credentials and
//! extracted values never reach a result or a log line.
//!
//! [`ProbeStats`] counts what every probe shares: bodies cut at their
//! `body_max_bytes` (in `muster-agent status`).

pub mod cert;
pub mod classify;
pub mod dns;
pub mod http;
pub mod icmp;
pub mod schedule;
pub mod tcp;
pub mod template;
pub mod transaction;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use muster_proto::{ErrorClass, IcmpStats, Outcome, Phases, ProbeKind, ProbeResult};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::config::{ProbeSpec, ProbeTarget};
use classify::{Failure, Step, io_failure, timeout_failure};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("CA file {0}: {1}")]
    CaFile(PathBuf, String),
}

/// How much later than a probe's own timeout the scheduler cuts a run off:
/// the probe's own deadline fires first and says which step ran out of time.
pub const SAFETY_MARGIN: Duration = Duration::from_millis(250);

/// Self-metrics every probe feeds, shared by all generations of the
/// measuring side.
#[derive(Debug, Default)]
pub struct ProbeStats {
    /// Response bodies longer than their `body_max_bytes`: read up to it,
    /// then the connection closed (http probes and transaction steps).
    pub body_cuts: AtomicU64,
}

impl ProbeStats {
    /// Counts a cut; warns on the first and every 100th.
    pub(crate) fn body_cut(&self, probe: &str, body_max_bytes: usize) {
        let n = self.body_cuts.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 || n.is_multiple_of(100) {
            tracing::warn!(
                probe,
                body_max_bytes,
                body_cuts = n,
                "A response body was longer than body_max_bytes: read up to it and cut (counted; logged on the first and every 100th)."
            );
        }
    }
}

/// What one run of a probe measured, before it becomes a `ProbeResult`.
#[derive(Debug, Clone)]
pub struct Run {
    pub outcome: Result<(), Failure>,
    pub phases: Phases,
    pub status: Option<u16>,
    pub cert_days_left: Option<i32>,
    pub addrs: Vec<IpAddr>,
    pub icmp: Option<IcmpStats>,
}

impl Default for Run {
    fn default() -> Self {
        Run {
            outcome: Ok(()),
            phases: Phases::default(),
            status: None,
            cert_days_left: None,
            addrs: Vec::new(),
            icmp: None,
        }
    }
}

/// The most addresses a DNS result carries.
pub const MAX_ADDRS: usize = 8;

/// Resolves `host` (a name or an address literal) with the OS resolver.
pub(crate) async fn resolve(
    host: &str,
    port: u16,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, Failure> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    match timeout_at(deadline, tokio::net::lookup_host((host, port))).await {
        Err(_) => Err(timeout_failure(Step::Dns, timeout)),
        Ok(Err(e)) => Err(io_failure(Step::Dns, &e)),
        Ok(Ok(it)) => {
            let mut v: Vec<SocketAddr> = Vec::new();
            for a in it {
                if !v.contains(&a) {
                    v.push(a);
                }
            }
            if v.is_empty() {
                Err(Failure::new(
                    ErrorClass::Dns,
                    format!("{host} resolved to no address"),
                ))
            } else {
                Ok(v)
            }
        }
    }
}

/// Connects to the first address that accepts; the failure of the last one
/// otherwise (a refusal on every address is `Refused`).
pub(crate) async fn connect_any(
    addrs: &[SocketAddr],
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream, Failure> {
    let mut last = None;
    for a in addrs {
        match timeout_at(deadline, TcpStream::connect(a)).await {
            Err(_) => return Err(timeout_failure(Step::Connect, timeout)),
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = Some(io_failure(Step::Connect, &e)),
        }
    }
    Err(last.unwrap_or_else(|| Failure::new(ErrorClass::Dns, "no address to connect to")))
}

enum Kind {
    Http(Box<http::HttpProbe>),
    Tcp,
    Dns,
    Icmp,
    Transaction(Box<transaction::Transaction>),
}

/// A configured probe, ready to run.
pub struct Probe {
    spec: ProbeSpec,
    target_text: String,
    kind: Kind,
}

impl Probe {
    pub fn new(spec: ProbeSpec) -> Result<Self, ProbeError> {
        Probe::with_stats(spec, Arc::default())
    }

    /// A probe that counts into `stats` (the running agent's, shown by
    /// `muster-agent status`).
    pub fn with_stats(spec: ProbeSpec, stats: Arc<ProbeStats>) -> Result<Self, ProbeError> {
        let kind = match &spec.target {
            ProbeTarget::Http(h) => Kind::Http(Box::new(http::HttpProbe::with_stats(
                h.clone(),
                &spec.name,
                stats,
            )?)),
            ProbeTarget::Tcp { .. } => Kind::Tcp,
            ProbeTarget::Dns { .. } => Kind::Dns,
            ProbeTarget::Icmp { .. } => Kind::Icmp,
            ProbeTarget::Transaction(t) => Kind::Transaction(Box::new(
                transaction::Transaction::new(&spec.name, t, stats)?,
            )),
        };
        Ok(Probe {
            target_text: spec.target_text(),
            spec,
            kind,
        })
    }

    pub fn spec(&self) -> &ProbeSpec {
        &self.spec
    }

    /// Runs the probe once, within its timeout: its results, its own first
    /// (a transaction's steps follow it).
    pub async fn run_all(&self) -> Vec<ProbeResult> {
        let timeout = self.spec.timeout;
        let run = match (&self.kind, &self.spec.target) {
            (Kind::Transaction(t), _) => return t.run(timeout).await,
            (Kind::Http(h), _) => h.run(timeout).await,
            (Kind::Tcp, ProbeTarget::Tcp { host, port }) => tcp::run(host, *port, timeout).await,
            (Kind::Dns, ProbeTarget::Dns { name }) => dns::run(name, timeout).await,
            (Kind::Icmp, ProbeTarget::Icmp { host, count }) => {
                icmp::run(host, *count, timeout).await
            }
            _ => unreachable!("a probe's kind is built from its target"),
        };
        vec![self.result(run)]
    }

    /// Runs the probe once: its own result (for a transaction the overall
    /// one; [`Probe::run_all`] has the steps too).
    pub async fn run(&self) -> ProbeResult {
        self.run_all()
            .await
            .into_iter()
            .next()
            .expect("every run yields the probe's own result")
    }

    /// The result of a run.
    pub fn result(&self, run: Run) -> ProbeResult {
        let (outcome, detail) = match run.outcome {
            Ok(()) => (Outcome::Ok, String::new()),
            Err(f) => (Outcome::Fail(f.class), f.detail),
        };
        ProbeResult {
            name: self.spec.name.clone(),
            kind: self.spec.kind(),
            target: self.target_text.clone(),
            outcome,
            phases: run.phases,
            status: run.status,
            cert_days_left: run.cert_days_left,
            addrs: run.addrs,
            icmp: run.icmp,
            detail,
        }
    }
}

/// What the scheduler runs: a real [`Probe`], or a test's stand-in.
pub trait Runnable: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn interval(&self) -> Duration;
    fn timeout(&self) -> Duration;
    /// One run's results: the probe's own first, then any of its parts (a
    /// transaction's steps). Never empty.
    fn run(&self) -> Pin<Box<dyn Future<Output = Vec<ProbeResult>> + Send + '_>>;
    /// The result when the scheduler's own timeout fires.
    fn timed_out(&self) -> ProbeResult;
}

impl Runnable for Probe {
    fn name(&self) -> &str {
        &self.spec.name
    }
    fn interval(&self) -> Duration {
        self.spec.interval
    }
    fn timeout(&self) -> Duration {
        self.spec.timeout
    }
    fn run(&self) -> Pin<Box<dyn Future<Output = Vec<ProbeResult>> + Send + '_>> {
        Box::pin(Probe::run_all(self))
    }
    fn timed_out(&self) -> ProbeResult {
        let mut r = self.result(Run {
            outcome: Err(timeout_failure(Step::Response, self.spec.timeout)),
            ..Run::default()
        });
        r.phases.total_us = self.spec.timeout.as_micros().min(u32::MAX as u128) as u32;
        r.detail = format!(
            "no result within {}",
            humantime::format_duration(self.spec.timeout)
        );
        r
    }
}

/// A `ProbeResult` for a kind that has no target of its own (reported timings).
pub fn reported(name: &str, ok: bool, total_us: u32, status: Option<u16>) -> ProbeResult {
    ProbeResult {
        name: name.to_owned(),
        kind: ProbeKind::Reported,
        target: "client".into(),
        outcome: if ok {
            Outcome::Ok
        } else {
            Outcome::Fail(ErrorClass::Reported)
        },
        phases: Phases {
            total_us,
            ..Phases::default()
        },
        status,
        cert_days_left: None,
        addrs: Vec::new(),
        icmp: None,
        detail: String::new(),
    }
}
