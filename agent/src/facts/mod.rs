//! The unit's labels and the facts it reports about itself (issue 16):
//! `Payload::Facts(UnitFacts)`.
//!
//! # Contract
//!
//! * **What.** The labels of the local config (`labels`, validated by the
//!   wire's own rules in [`crate::config`]); the agent's version
//!   ([`crate::run::AGENT_VERSION`]); the OS as sysinfo names it (its long
//!   OS version, e.g. "Linux (Debian GNU/Linux 12)" or "Windows 10 Pro",
//!   with the build number on Windows); the watched CAD client's version
//!   from `[cad]` ([`cad`]), `None` when none is configured or it cannot be
//!   read.
//! * **When.** Once at start, then whenever something changed: the OS and
//!   the CAD version are read again every `cad.version_refresh` (default
//!   10 min). Identical facts are never sent twice in a row.
//! * **How.** Through the observation channel like every measurement, so
//!   each is stamped (boot, seq), written to the disk buffer and freed only
//!   by a signed ack; its buffer kind is `Status`, which `on_full = "thin"`
//!   never thins. The task waits for room in the channel instead of
//!   dropping (it is its own task: a full channel delays nothing else), so
//!   a change is never lost to a full channel.
//! * **Always valid.** Every text is stripped of control characters and
//!   cut to [`muster_proto::MAX_FACT_LEN`] characters before it is sent, so
//!   [`UnitFacts::validate`] (the collector's `decode`) never refuses it.
//! * **Quiet.** A CAD version that cannot be read is one WARN per distinct
//!   error, not one per refresh; facts sent are one INFO line.

pub mod cad;
pub mod pe;

use std::sync::Arc;

use muster_proto::{Label, MAX_FACT_LEN, Payload, UnitFacts};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::CadConfig;
use crate::observation::{Observation, ObservationTx};
use crate::probe::schedule::stopped;

/// `s` without control characters, trimmed, cut to
/// [`MAX_FACT_LEN`] characters. Pure.
pub fn bounded(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).collect();
    clean.trim().chars().take(MAX_FACT_LEN).collect()
}

/// The OS in words, from what sysinfo says. `long`: its long OS version;
/// `name` and `version`: the fallback; `build`: the Windows build number,
/// added when `long` does not say it. Pure.
pub fn os_description(
    long: Option<&str>,
    name: Option<&str>,
    version: Option<&str>,
    build: Option<&str>,
) -> String {
    fn nonempty(s: Option<&str>) -> Option<&str> {
        s.map(str::trim).filter(|s| !s.is_empty())
    }
    let base = match (nonempty(long), nonempty(name), nonempty(version)) {
        (Some(l), _, _) => l.to_owned(),
        (None, Some(n), Some(v)) => format!("{n} {v}"),
        (None, Some(n), None) => n.to_owned(),
        (None, None, _) => std::env::consts::OS.to_owned(),
    };
    let text = match nonempty(build) {
        Some(b) if !base.contains(b) => format!("{base} (build {b})"),
        _ => base,
    };
    bounded(&text)
}

/// This machine's OS ([`os_description`]). Blocking: sysinfo reads
/// `/etc/os-release` or the registry.
pub fn os() -> String {
    use sysinfo::System;
    let build = if cfg!(windows) {
        System::kernel_version().ok()
    } else {
        None
    };
    os_description(
        System::long_os_version().ok().as_deref(),
        System::name().ok().as_deref(),
        System::os_version().ok().as_deref(),
        build.as_deref(),
    )
}

/// Reads the facts now. A CAD version that cannot be read is `None`, and
/// its error is returned beside it.
pub async fn gather(labels: &[Label], cad: &CadConfig) -> (UnitFacts, Option<cad::VersionError>) {
    let os = tokio::task::spawn_blocking(os)
        .await
        .unwrap_or_else(|_| std::env::consts::OS.to_owned());
    let (cad_version, error) = match &cad.version {
        None => (None, None),
        Some(source) => match cad::read(source, cad.version_timeout).await {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        },
    };
    let facts = UnitFacts {
        labels: labels.to_vec(),
        agent_version: bounded(crate::run::AGENT_VERSION),
        os,
        cad_version,
    };
    (facts, error)
}

/// Sends the facts at start and whenever they change, reading them every
/// `cad.version_refresh`, until `stop` (or until the uplink is gone).
pub async fn run(
    labels: Vec<Label>,
    cad: CadConfig,
    tx: ObservationTx,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sent: Option<UnitFacts> = None;
    let mut last_error: Option<String> = None;
    loop {
        let (facts, error) = tokio::select! {
            r = gather(&labels, &cad) => r,
            _ = stopped(&mut stop) => return,
        };
        match (&error, &cad.version) {
            (Some(e), Some(source)) => {
                let text = e.to_string();
                if last_error.as_ref() != Some(&text) {
                    tracing::warn!(%source, error = %text, "Cannot read the CAD client's version; reporting none.");
                    last_error = Some(text);
                }
            }
            _ => last_error = None,
        }
        if sent.as_ref() != Some(&facts) {
            if let Err(e) = facts.validate() {
                // Unreachable by construction (config and `bounded`); never
                // send what the collector would refuse as malformed.
                tracing::error!(error = %e, "Facts not sent: they would be refused.");
            } else {
                let obs = Observation {
                    at_ms: clock.now_ms(),
                    payload: Payload::Facts(facts.clone()),
                };
                tokio::select! {
                    r = tx.send(obs) => if r.is_err() {
                        return;
                    },
                    _ = stopped(&mut stop) => return,
                }
                tracing::info!(
                    labels = facts.labels.len(),
                    agent_version = %facts.agent_version,
                    os = %facts.os,
                    cad_version = facts.cad_version.as_deref().unwrap_or("none"),
                    "Facts sent."
                );
                sent = Some(facts);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cad.version_refresh) => {}
            _ = stopped(&mut stop) => return,
            // The uplink is gone: nothing would take the next change.
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_os_in_words() {
        let long = "a".repeat(MAX_FACT_LEN + 10);
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            &'a str,
        );
        // (long, name, version, build, want)
        let cases: &[Case] = &[
            (
                Some("Linux (Debian GNU/Linux 12)"),
                Some("Debian GNU/Linux"),
                Some("12"),
                None,
                "Linux (Debian GNU/Linux 12)",
            ),
            (
                Some("Windows 10 Pro"),
                Some("Windows"),
                Some("10 (19045)"),
                Some("19045"),
                "Windows 10 Pro (build 19045)",
            ),
            (
                Some("Windows 10 Pro 19045"),
                None,
                None,
                Some("19045"),
                "Windows 10 Pro 19045",
            ),
            (None, Some("Ubuntu"), Some("24.04"), None, "Ubuntu 24.04"),
            (Some("  "), Some("Ubuntu"), None, None, "Ubuntu"),
            (None, None, Some("12"), None, std::env::consts::OS),
            (
                Some("Linux\n(Evil\u{1b}[31m)"),
                None,
                None,
                None,
                "Linux(Evil[31m)",
            ),
            (Some(&long), None, None, None, &long[..MAX_FACT_LEN]),
        ];
        for (l, n, v, b, want) in cases {
            let got = os_description(*l, *n, *v, *b);
            assert_eq!(got, *want, "{l:?} {n:?} {v:?} {b:?}");
            muster_proto::validate_text("os", &got, MAX_FACT_LEN).unwrap();
        }
    }
}
