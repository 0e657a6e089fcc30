//! `muster-agent status`, for the support desk at the terminal: the
//! running agent rewrites `<data_dir>/status.json` every 5 s (and once as
//! it stops, `running: false`); the command reads it and says whether the
//! agent runs, is connected, when the collector last acked, the backlog,
//! and which configuration runs (local, or which remote documents, its
//! hash, the last step and refusals), what actions did (refusals by
//! reason, runs, the last step), and the probes' counters (runs, runs cut
//! off by the scheduler, response bodies cut at `body_max_bytes`). A file
//! older than 15 s means the agent is not running (or hung).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use muster_proto::UnitId;
use serde::Serialize;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::probe::schedule::stopped;
use crate::remote;
use crate::run::AGENT_VERSION;
use crate::uplink;

/// What `muster-agent status` reads: `<data_dir>/status.json`, rewritten
/// every 5 s while the agent runs and once as it stops.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct StatusFile {
    pub unit: String,
    pub pid: u32,
    pub agent_version: String,
    pub updated_ms: u64,
    pub running: bool,
    pub connected: bool,
    pub reconnects: u64,
    pub last_ack_ms: Option<u64>,
    pub backlog_records: u64,
    pub backlog_bytes: u64,
    pub config: remote::ConfigView,
    /// Actions (issue 17); absent in files of earlier agents.
    #[serde(default)]
    pub actions: crate::action::ActionView,
    /// Probe counters (issue 18); absent in files of earlier agents.
    #[serde(default)]
    pub probes: ProbeView,
}

/// The probes' counters since the agent started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ProbeView {
    /// Probe runs started (a transaction's run is one).
    pub runs: u64,
    /// Runs the scheduler cut off (the probe's own deadline did not end it).
    pub timeouts: u64,
    /// Response bodies cut at their `body_max_bytes`.
    pub body_cuts: u64,
}

/// Where the running agent's status comes from.
pub struct Sources {
    pub uplink: Arc<uplink::UplinkView>,
    pub config: Arc<std::sync::Mutex<remote::ConfigView>>,
    pub actions: Arc<std::sync::Mutex<crate::action::ActionView>>,
    pub schedule: Arc<crate::probe::schedule::ScheduleStats>,
    pub probes: Arc<crate::probe::ProbeStats>,
}

/// The status file's name in the data directory.
pub const STATUS_FILE: &str = "status.json";

pub async fn write_loop(
    data_dir: std::path::PathBuf,
    unit: UnitId,
    sources: Sources,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
) {
    let Sources {
        uplink: view,
        config,
        actions,
        schedule,
        probes,
    } = sources;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed = false;
    loop {
        let running = tokio::select! {
            _ = tick.tick() => true,
            _ = stopped(&mut stop) => false,
        };
        let ack = view.last_ack_ms.load(Ordering::Relaxed);
        let s = StatusFile {
            unit: unit.to_string(),
            pid: std::process::id(),
            agent_version: AGENT_VERSION.to_owned(),
            updated_ms: clock.now_ms(),
            running,
            connected: running && view.connected.load(Ordering::Relaxed),
            reconnects: view.reconnects.load(Ordering::Relaxed),
            last_ack_ms: (ack > 0).then_some(ack),
            backlog_records: view.backlog_records.load(Ordering::Relaxed),
            backlog_bytes: view.backlog_bytes.load(Ordering::Relaxed),
            config: config.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            actions: actions.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            probes: ProbeView {
                runs: schedule.runs.load(Ordering::Relaxed),
                timeouts: schedule.timeouts.load(Ordering::Relaxed),
                body_cuts: probes.body_cuts.load(Ordering::Relaxed),
            },
        };
        let body = serde_json::to_vec_pretty(&s).expect("status serialises");
        let path = data_dir.join(STATUS_FILE);
        // Unsynced: rewritten every 5 s and only about the present, so a
        // write lost to a power cut costs nothing; an fsync each time would.
        match muster_base::fsutil::write_atomic_unsynced(
            &path,
            &body,
            muster_base::fsutil::Mode::Default,
        ) {
            Ok(()) => failed = false,
            Err(e) if !failed => {
                failed = true;
                tracing::warn!(path = %path.display(), error = %e, "Cannot write the status file.");
            }
            Err(_) => {}
        }
        if !running {
            return;
        }
    }
}

/// The status file's age past which the agent counts as not running.
pub const STALE_AFTER_MS: u64 = 15_000;

/// Reads `<data_dir>/status.json`.
pub fn read(data_dir: &std::path::Path) -> std::io::Result<StatusFile> {
    let b = std::fs::read(data_dir.join(STATUS_FILE))?;
    serde_json::from_slice(&b).map_err(std::io::Error::other)
}

fn ago(now_ms: u64, t: u64) -> String {
    let s = now_ms.saturating_sub(t) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

/// The human form `muster-agent status` prints.
pub fn render(s: &StatusFile, now_ms: u64) -> String {
    let age = now_ms.saturating_sub(s.updated_ms);
    let state = if !s.running {
        format!("stopped ({})", ago(now_ms, s.updated_ms))
    } else if age > STALE_AFTER_MS {
        format!(
            "NOT RESPONDING (status last written {}, pid {})",
            ago(now_ms, s.updated_ms),
            s.pid
        )
    } else {
        format!("running (pid {}, version {})", s.pid, s.agent_version)
    };
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<12} {v}\n"));
    line("unit", s.unit.clone());
    line("agent", state);
    line(
        "connection",
        format!(
            "{} ({} reconnects)",
            if s.connected {
                "connected"
            } else {
                "NOT connected"
            },
            s.reconnects
        ),
    );
    line(
        "last ack",
        s.last_ack_ms
            .map_or("never (since start)".into(), |t| ago(now_ms, t)),
    );
    line(
        "backlog",
        format!("{} records, {} bytes", s.backlog_records, s.backlog_bytes),
    );
    let c = &s.config;
    let origin = if c.origin.is_empty() {
        "local"
    } else {
        &c.origin
    };
    line(
        "config",
        format!(
            "{origin}, hash {}",
            if c.hash.is_empty() {
                "-"
            } else {
                &c.hash[..16.min(c.hash.len())]
            }
        ),
    );
    if !c.last_state.is_empty() {
        let why = c
            .last_reason
            .as_deref()
            .map_or(String::new(), |r| format!(": {r}"));
        line("last step", format!("{}{why}", c.last_state));
    }
    if let Some(t) = c.watching_until_ms {
        line(
            "watching",
            format!(
                "health window open for {} s more",
                t.saturating_sub(now_ms) / 1000
            ),
        );
    }
    if !c.refused.is_empty() {
        let r: Vec<String> = c.refused.iter().map(|(k, n)| format!("{k} {n}")).collect();
        line("refused", r.join(", "));
    }
    let p = &s.probes;
    if p.runs > 0 || p.body_cuts > 0 {
        line(
            "probes",
            format!(
                "{} runs, {} cut off at their timeout, {} response bodies cut at body_max_bytes",
                p.runs, p.timeouts, p.body_cuts
            ),
        );
    }
    let a = &s.actions;
    if !a.configured.is_empty() {
        line(
            "actions",
            format!(
                "{} configured; {} started, {} finished ({} timed out), {} failed{}",
                a.configured.len(),
                a.started,
                a.finished,
                a.timed_out,
                a.failed,
                if a.running.is_empty() {
                    String::new()
                } else {
                    format!("; running: {}", a.running.join(", "))
                }
            ),
        );
        if let Some(last) = &a.last {
            line("last action", last.clone());
        }
        if !a.refused.is_empty() || a.dropped > 0 {
            let mut r: Vec<String> = a.refused.iter().map(|(k, n)| format!("{k} {n}")).collect();
            if a.dropped > 0 {
                r.push(format!("queue full {}", a.dropped));
            }
            line("refused", r.join(", "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> StatusFile {
        StatusFile {
            unit: "metro-pd/car-12".into(),
            pid: 42,
            agent_version: "0.1.0".into(),
            updated_ms: 100_000,
            running: true,
            connected: true,
            reconnects: 2,
            last_ack_ms: Some(97_000),
            backlog_records: 5,
            backlog_bytes: 1200,
            config: remote::ConfigView {
                origin: "agency v3 + unit v7".into(),
                hash: "ab".repeat(32),
                last_state: "rolled_back".into(),
                last_reason: Some("every probe failed".into()),
                watching_until_ms: None,
                refused: [("bad_signature".to_owned(), 2)].into_iter().collect(),
            },
            actions: crate::action::ActionView {
                configured: vec!["restart-cad-client".into()],
                started: 3,
                finished: 2,
                timed_out: 1,
                last: Some("restart-cad-client finished (exit 0)".into()),
                refused: [("replayed".to_owned(), 4)].into_iter().collect(),
                ..Default::default()
            },
            probes: ProbeView {
                runs: 120,
                timeouts: 1,
                body_cuts: 3,
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn write_loop_rewrites_the_file_and_says_stopped_as_it_stops() {
        let dir = muster_testkit::TempDir::new().unwrap();
        let view = Arc::new(uplink::UplinkView::default());
        view.connected.store(true, Ordering::Relaxed);
        view.last_ack_ms.store(49_000, Ordering::Relaxed);
        view.backlog_records.store(7, Ordering::Relaxed);
        let clock = muster_base::clock::ManualClock::new(50_000);
        let (stop_tx, stop_rx) = watch::channel(false);
        let probes = Arc::new(crate::probe::ProbeStats::default());
        probes.body_cuts.store(2, Ordering::Relaxed);
        let task = tokio::spawn(write_loop(
            dir.path().to_owned(),
            UnitId::new("metro-pd", "car-12").unwrap(),
            Sources {
                uplink: view.clone(),
                config: Arc::default(),
                actions: Arc::default(),
                schedule: Arc::default(),
                probes: probes.clone(),
            },
            clock.clone(),
            stop_rx,
        ));
        // The first write is at once.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let s = read(dir.path()).unwrap();
        assert!(s.running && s.connected, "{s:?}");
        assert_eq!(
            (
                s.unit.as_str(),
                s.updated_ms,
                s.last_ack_ms,
                s.backlog_records
            ),
            ("metro-pd/car-12", 50_000, Some(49_000), 7)
        );
        assert_eq!(s.probes.body_cuts, 2);
        // Rewritten every 5 s with what the view says then.
        clock.set(55_000);
        view.backlog_records.store(9, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let s = read(dir.path()).unwrap();
        assert_eq!((s.updated_ms, s.backlog_records), (55_000, 9));
        // Once more as it stops: not running, not connected.
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        let s = read(dir.path()).unwrap();
        assert!(!s.running && !s.connected, "{s:?}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [STATUS_FILE], "no temporary left");
    }

    #[test]
    fn render_says_what_the_desk_needs() {
        let text = render(&status(), 101_000);
        for want in [
            "running (pid 42",
            "connected (2 reconnects)",
            "last ack     4 s ago",
            "5 records, 1200 bytes",
            "agency v3 + unit v7, hash abababababababab",
            "rolled_back: every probe failed",
            "bad_signature 2",
            "1 configured; 3 started, 2 finished (1 timed out), 0 failed",
            "restart-cad-client finished (exit 0)",
            "replayed 4",
            "120 runs, 1 cut off at their timeout, 3 response bodies cut at body_max_bytes",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
        let stale = render(&status(), 100_000 + STALE_AFTER_MS + 1);
        assert!(stale.contains("NOT RESPONDING"), "{stale}");
        let mut s = status();
        s.running = false;
        s.connected = false;
        s.last_ack_ms = None;
        let stopped = render(&s, 101_000);
        assert!(
            stopped.contains("stopped")
                && stopped.contains("NOT connected")
                && stopped.contains("never"),
            "{stopped}"
        );
    }
}
