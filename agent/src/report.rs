//! The CAD client's self-report endpoint: StatsD-style timing lines over UDP,
//! on a loopback address only (`[report] listen = "127.0.0.1:8125"`).
//!
//! One line per transaction, several lines per datagram allowed (`\n`):
//!
//! ```text
//! <name>:<milliseconds>|ms[|#<tag>,<tag>...]
//! cad.login:734|ms|#ok
//! cad.search:5012.5|ms|#fail,status:504
//! ```
//!
//! * `name`: 1 to 64 of `A-Z a-z 0-9 . _ -`; it becomes the result's name.
//! * `milliseconds`: a non-negative number (fractions allowed), below one hour.
//! * tags: `ok` (the default) or `fail`; `status:<code>` for an HTTP-ish
//!   status; other tags (e.g. `env:prod` from a StatsD client library) are ignored.
//!
//! From the CAD client it is one line, e.g. C#
//! `new UdpClient().Send(b, b.Length, "127.0.0.1", 8125)`, or in a shell
//! `echo "cad.login:734|ms|#ok" > /dev/udp/127.0.0.1/8125`. UDP never blocks
//! or fails the caller when the agent is down. Each line becomes a
//! `ProbeKind::Reported` result (outcome `Ok` or `Fail(Reported)`, the timing
//! in `phases.total_us`) and travels like any probe result. Malformed lines,
//! datagrams from non-loopback sources and reports over `max_per_sec` are
//! counted and logged, never forwarded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use muster_proto::{Payload, ProbeResult};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::{Duration, Instant};

use crate::clock::Clock;
use crate::observation::{Observation, ObservationTx};
use crate::probe::{reported, schedule::stopped};
use crate::sample::DropCounter;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report.listen {addr} is not a loopback address")]
    NotLoopback { addr: SocketAddr },
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// Why a line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("no ':' between name and value")]
    NoColon,
    #[error("bad name (1 to 64 of A-Z a-z 0-9 . _ -)")]
    BadName,
    #[error("bad value (milliseconds, 0 to 3600000)")]
    BadValue,
    #[error("only timings (|ms) are accepted")]
    NotTiming,
    #[error("bad status tag")]
    BadStatus,
}

/// Parses one report line into a result.
pub fn parse_line(line: &str) -> Result<ProbeResult, LineError> {
    let line = line.trim();
    let (name, rest) = line.split_once(':').ok_or(LineError::NoColon)?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    {
        return Err(LineError::BadName);
    }
    let mut parts = rest.split('|');
    let value = parts.next().unwrap_or("");
    let ms: f64 = value.trim().parse().map_err(|_| LineError::BadValue)?;
    if !ms.is_finite() || !(0.0..=3_600_000.0).contains(&ms) {
        return Err(LineError::BadValue);
    }
    if parts.next().map(str::trim) != Some("ms") {
        return Err(LineError::NotTiming);
    }
    let mut ok = true;
    let mut status = None;
    for part in parts {
        // Sample rates (`@0.5`) are meaningless for single timings: ignored.
        let Some(tags) = part.trim().strip_prefix('#') else {
            continue;
        };
        for tag in tags.split(',') {
            match tag.trim() {
                "ok" => ok = true,
                "fail" => ok = false,
                t => {
                    if let Some(code) = t.strip_prefix("status:") {
                        let c: u16 = code.parse().map_err(|_| LineError::BadStatus)?;
                        if !(100..=599).contains(&c) {
                            return Err(LineError::BadStatus);
                        }
                        status = Some(c);
                    }
                }
            }
        }
    }
    Ok(reported(name, ok, (ms * 1000.0).round() as u32, status))
}

/// Endpoint self-metrics.
#[derive(Debug, Default)]
pub struct ReportStats {
    pub accepted: AtomicU64,
    pub malformed: AtomicU64,
    pub rate_limited: AtomicU64,
    pub foreign: AtomicU64,
}

/// A per-second token budget. Pure: takes `now`.
#[derive(Debug)]
pub struct RateLimit {
    per_sec: u32,
    window: Option<Instant>,
    used: u32,
}

impl RateLimit {
    pub fn new(per_sec: u32) -> Self {
        RateLimit {
            per_sec,
            window: None,
            used: 0,
        }
    }

    pub fn allow(&mut self, now: Instant) -> bool {
        match self.window {
            Some(w) if now.duration_since(w) < Duration::from_secs(1) => {}
            _ => {
                self.window = Some(now);
                self.used = 0;
            }
        }
        if self.used < self.per_sec {
            self.used += 1;
            true
        } else {
            false
        }
    }
}

/// Binds the endpoint (loopback only).
pub async fn bind(addr: SocketAddr) -> Result<UdpSocket, ReportError> {
    if !addr.ip().is_loopback() {
        return Err(ReportError::NotLoopback { addr });
    }
    UdpSocket::bind(addr)
        .await
        .map_err(|source| ReportError::Bind {
            addr,
            error: source,
        })
}

/// Serves the endpoint on `sock` until `stop`.
pub async fn serve(
    sock: UdpSocket,
    max_per_sec: u32,
    tx: ObservationTx,
    clock: Arc<dyn Clock>,
    drops: Arc<DropCounter>,
    stats: Arc<ReportStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 8192];
    let mut limit = RateLimit::new(max_per_sec);
    loop {
        let (n, from) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP port-unreachable echoes and the like: not fatal.
                    tracing::debug!(error = %e, "Report endpoint receive error.");
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        if !from.ip().is_loopback() {
            stats.foreign.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%from, "Report from a non-loopback address ignored.");
            continue;
        }
        let Ok(text) = std::str::from_utf8(&buf[..n]) else {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
            match parse_line(line) {
                Ok(result) => {
                    if !limit.allow(Instant::now()) {
                        let n = stats.rate_limited.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::warn!(
                            reports_rate_limited = n,
                            "Report over report.max_per_sec dropped."
                        );
                        continue;
                    }
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let obs = Observation {
                        at_ms: clock.now_ms(),
                        payload: Payload::Probe(result),
                    };
                    if !drops.try_send(&tx, obs, "report") {
                        return;
                    }
                }
                Err(e) => {
                    let n = stats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(error = %e, line = %line.chars().take(80).collect::<String>(), reports_malformed = n, "Malformed report line.");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::{ErrorClass, Outcome, ProbeKind};

    #[test]
    fn lines() {
        let r = parse_line("cad.login:734|ms|#ok").unwrap();
        assert_eq!(r.name, "cad.login");
        assert_eq!(r.kind, ProbeKind::Reported);
        assert_eq!(r.outcome, Outcome::Ok);
        assert_eq!(r.phases.total_us, 734_000);

        let r = parse_line("cad.search:5012.5|ms|#fail,status:504,env:prod").unwrap();
        assert_eq!(r.outcome, Outcome::Fail(ErrorClass::Reported));
        assert_eq!(r.status, Some(504));
        assert_eq!(r.phases.total_us, 5_012_500);

        assert_eq!(parse_line("x:1|ms").unwrap().outcome, Outcome::Ok);
        assert_eq!(parse_line("x:1|ms|@0.5").unwrap().outcome, Outcome::Ok);

        let bad: &[(&str, LineError)] = &[
            ("cad.login", LineError::NoColon),
            (":5|ms", LineError::BadName),
            ("a b:5|ms", LineError::BadName),
            ("x:abc|ms", LineError::BadValue),
            ("x:-1|ms", LineError::BadValue),
            ("x:NaN|ms", LineError::BadValue),
            ("x:99999999|ms", LineError::BadValue),
            ("x:5|c", LineError::NotTiming),
            ("x:5", LineError::NotTiming),
            ("x:5|ms|#status:99", LineError::BadStatus),
        ];
        for (l, want) in bad {
            assert_eq!(parse_line(l).unwrap_err(), *want, "{l:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_window() {
        let mut r = RateLimit::new(2);
        let t = Instant::now();
        assert!(r.allow(t));
        assert!(r.allow(t));
        assert!(!r.allow(t + Duration::from_millis(999)));
        assert!(r.allow(t + Duration::from_secs(1)));
    }
}
