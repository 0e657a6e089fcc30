//! The health window after a document is applied: the agent's own signals
//! now against before. Pure: counters and `now` in, a verdict out.
//!
//! Signals (each counts only where it was good before, so a terminal that
//! was already in a dead zone or had no passing probe does not blame the
//! new document):
//! * **acks**: an ack arrived within one window before applying, and none
//!   for the whole window since;
//! * **probes**: a probe passed within one window before applying, and
//!   every one of at least [`MIN_PROBE_RESULTS`] results since failed;
//! * **sampler**: the last host sample before applying had no sampler
//!   failure, and more than half of at least two samples since have one.
//!
//! And one signal across restarts, decided at start ([`at_start`]) from the
//! window persisted in `<data_dir>/remote/window.json` ([`Window`]):
//! * **restarts**: the agent itself started [`CRASH_STARTS`] times within
//!   one window (the start that applied the document is the first; a start
//!   after a clean stop is not counted): it starts on the last known good
//!   and reports the document `rolled_back`. A crash, a kill -9, a watchdog
//!   or service manager kill and a power cut all look alike: the process
//!   did not get to say it stopped.
//! * A window is open while `now < opened + length`; a clock that went
//!   backwards (`now < opened`) counts as open, and the window is
//!   re-anchored at `now` so that it still ends one length later.
//! * A window that ended while the agent was down (fewer starts than the
//!   threshold) has not been watched whole by a running agent: a fresh one
//!   opens for the same document at this start, its first.
//! * A window carried over a restart is judged on restarts alone (the
//!   signals from before applying died with the process that applied it,
//!   [`carried`]): still up at its end, the documents become the last known
//!   good.

use super::store::Window;
use muster_proto::DocScopeKind;

/// Fewest probe results in the window before "every probe failing" counts.
pub const MIN_PROBE_RESULTS: u64 = 3;

/// Starts within one health window that roll its document back: the one
/// that applied it and two more after an unclean end. Not two: one kill -9
/// or power cut during a window (ignition off, a battery disconnect, the
/// terminal pulled from its dock) is normal for a vehicle terminal and must
/// not roll a good document back; a second one within the same window is
/// a pattern, and a crash loop would otherwise run the document forever.
pub const CRASH_STARTS: u32 = 3;

/// What a start does with a persisted open window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtStart {
    /// Start on the running documents and watch this window (persisted
    /// again, this start counted).
    Watch(Window),
    /// Start on the last known good: why, for the `rolled_back` report.
    RollBack(String),
}

fn scope_name(k: DocScopeKind) -> &'static str {
    match k {
        DocScopeKind::Agency => "agency",
        DocScopeKind::Unit => "unit",
    }
}

/// The decision at a start that finds `w` persisted, at `now_ms`;
/// `window_ms` is the configured length, for a fresh window. Pure.
pub fn at_start(w: &Window, now_ms: u64, window_ms: u64) -> AtStart {
    if now_ms >= w.opened_ms.saturating_add(w.window_ms) {
        return AtStart::Watch(Window {
            opened_ms: now_ms,
            window_ms,
            starts: 1,
            clean_stop: false,
            ..*w
        });
    }
    let starts = if w.clean_stop {
        w.starts
    } else {
        w.starts.saturating_add(1)
    };
    if starts >= CRASH_STARTS {
        return AtStart::RollBack(format!(
            "the agent restarted {} times within the health window of {} v{}",
            starts.saturating_sub(1),
            scope_name(w.scope),
            w.doc.version
        ));
    }
    AtStart::Watch(Window {
        opened_ms: w.opened_ms.min(now_ms),
        starts,
        clean_stop: false,
        ..*w
    })
}

/// What the measuring side and the uplink have seen so far (monotonic
/// counts; times are unix ms on the agent's clock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub probe_ok: u64,
    pub probe_failed: u64,
    pub last_probe_ok_ms: Option<u64>,
    pub samples: u64,
    pub samples_failing: u64,
    pub last_sample_failing: bool,
    pub last_ack_ms: Option<u64>,
}

/// What held when the document was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Baseline {
    pub applied_ms: u64,
    pub window_ms: u64,
    pub at: Counters,
    acked_before: bool,
    probe_passed_before: bool,
    sampler_clean_before: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The window is still open.
    Watching,
    /// The window passed without a regression.
    Healthy,
    /// A signal regressed: why, for the report.
    Regressed(String),
}

pub fn baseline(c: &Counters, now_ms: u64, window_ms: u64) -> Baseline {
    let recent = |t: Option<u64>| t.is_some_and(|t| now_ms.saturating_sub(t) <= window_ms);
    Baseline {
        applied_ms: now_ms,
        window_ms,
        at: *c,
        acked_before: recent(c.last_ack_ms),
        probe_passed_before: recent(c.last_probe_ok_ms),
        sampler_clean_before: c.samples > 0 && !c.last_sample_failing,
    }
}

/// The baseline of a window carried over a restart: it ends when it would
/// have, and no signal counts (nothing is known of before applying), so
/// only the restarts ([`at_start`]) can blame the document.
pub fn carried(opened_ms: u64, window_ms: u64) -> Baseline {
    Baseline {
        applied_ms: opened_ms,
        window_ms,
        at: Counters::default(),
        acked_before: false,
        probe_passed_before: false,
        sampler_clean_before: false,
    }
}

/// The verdict at `now_ms`. Decided when the window ends, never before: a
/// document is not blamed for its first few seconds.
pub fn judge(b: &Baseline, c: &Counters, now_ms: u64) -> Verdict {
    if now_ms < b.applied_ms.saturating_add(b.window_ms) {
        return Verdict::Watching;
    }
    let secs = b.window_ms / 1000;
    if b.acked_before && c.last_ack_ms.is_none_or(|t| t <= b.applied_ms) {
        return Verdict::Regressed(format!(
            "no ack for the whole {secs} s health window (acks arrived before)"
        ));
    }
    let ok = c.probe_ok - b.at.probe_ok;
    let failed = c.probe_failed - b.at.probe_failed;
    if b.probe_passed_before && ok == 0 && failed >= MIN_PROBE_RESULTS {
        return Verdict::Regressed(format!(
            "every probe failed in the {secs} s health window ({failed} results; one passed before)"
        ));
    }
    let samples = c.samples - b.at.samples;
    let failing = c.samples_failing - b.at.samples_failing;
    if b.sampler_clean_before && samples >= 2 && failing * 2 > samples {
        return Verdict::Regressed(format!(
            "sampler failures in {failing} of {samples} samples in the {secs} s health window (none before)"
        ));
    }
    Verdict::Healthy
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 60_000;
    const T0: u64 = 1_000_000;

    fn before() -> Counters {
        Counters {
            probe_ok: 10,
            probe_failed: 1,
            last_probe_ok_ms: Some(T0 - 5_000),
            samples: 20,
            samples_failing: 0,
            last_sample_failing: false,
            last_ack_ms: Some(T0 - 2_000),
        }
    }

    #[test]
    fn verdicts_table() {
        let b = baseline(&before(), T0, W);
        let end = T0 + W;
        let after = |f: &dyn Fn(&mut Counters)| {
            let mut c = before();
            c.last_ack_ms = Some(T0 + 1_000);
            c.probe_ok += 5;
            c.samples += 12;
            f(&mut c);
            c
        };
        let regressed = |v: Verdict, word: &str| match v {
            Verdict::Regressed(r) => assert!(r.contains(word), "{r}"),
            other => panic!("{word}: {other:?}"),
        };
        assert_eq!(judge(&b, &after(&|_| {}), end - 1), Verdict::Watching);
        assert_eq!(judge(&b, &after(&|_| {}), end), Verdict::Healthy);
        regressed(
            judge(&b, &after(&|c| c.last_ack_ms = Some(T0 - 2_000)), end),
            "no ack",
        );
        regressed(
            judge(
                &b,
                &after(&|c| {
                    c.probe_ok = 10;
                    c.probe_failed += 6
                }),
                end,
            ),
            "every probe failed",
        );
        // Too few results to blame the document.
        assert_eq!(
            judge(
                &b,
                &after(&|c| {
                    c.probe_ok = 10;
                    c.probe_failed += 2
                }),
                end
            ),
            Verdict::Healthy
        );
        // One pass among failures: not every probe failing.
        assert_eq!(
            judge(&b, &after(&|c| c.probe_failed += 6), end),
            Verdict::Healthy
        );
        regressed(
            judge(&b, &after(&|c| c.samples_failing += 7), end),
            "sampler failures in 7 of 12",
        );
        assert_eq!(
            judge(&b, &after(&|c| c.samples_failing += 6), end),
            Verdict::Healthy
        );
    }

    /// [`at_start`]: each row a persisted window (starts, clean stop,
    /// opened relative to `T0`) and what a start at `T0` does.
    #[test]
    fn restarts_within_the_window_table() {
        use muster_proto::DocRef;
        const LEN: u64 = 60_000;
        const CONFIGURED: u64 = 300_000;
        let w = |scope, starts, clean_stop, opened_ms| Window {
            scope,
            doc: DocRef {
                version: 4,
                hash: [7; 32],
            },
            opened_ms,
            window_ms: LEN,
            starts,
            clean_stop,
        };
        let unit = DocScopeKind::Unit;
        let watch = |starts, opened_ms, window_ms| {
            AtStart::Watch(Window {
                window_ms,
                ..w(unit, starts, false, opened_ms)
            })
        };
        let back = |scope: &str, n: u32| {
            AtStart::RollBack(format!(
                "the agent restarted {n} times within the health window of {scope} v4"
            ))
        };
        #[rustfmt::skip]
        let rows: Vec<(&str, Window, AtStart)> = vec![
            ("one kill -9 in the window: counted, still running",
                w(unit, 1, false, T0 - 10_000), watch(2, T0 - 10_000, LEN)),
            ("a second one: rolled back",
                w(unit, 2, false, T0 - 10_000), back("unit", 2)),
            ("the last millisecond of the window still counts",
                w(unit, 2, false, T0 - LEN + 1), back("unit", 2)),
            ("the agency's document too",
                w(DocScopeKind::Agency, 2, false, T0 - 1), back("agency", 2)),
            ("more starts than the threshold (a rollback that never ran)",
                w(unit, 5, false, T0 - 1), back("unit", 5)),
            ("after a clean stop: not counted",
                w(unit, 2, true, T0 - 10_000), watch(2, T0 - 10_000, LEN)),
            ("after a clean stop, the first start",
                w(unit, 1, true, T0 - 10_000), watch(1, T0 - 10_000, LEN)),
            ("ended while down: a fresh window, this start its first",
                w(unit, 2, false, T0 - LEN), watch(1, T0, CONFIGURED)),
            ("ended long ago, cleanly stopped: the same",
                w(unit, 1, true, T0 - 10 * LEN), watch(1, T0, CONFIGURED)),
            ("the clock went back: open, counted, re-anchored at now",
                w(unit, 1, false, T0 + 3_600_000), watch(2, T0, LEN)),
            ("the clock went back, a second unclean start: rolled back",
                w(unit, 2, false, T0 + 3_600_000), back("unit", 2)),
            ("opened at the end of time: no overflow",
                w(unit, 1, false, u64::MAX), watch(2, T0, LEN)),
        ];
        for (what, persisted, want) in rows {
            assert_eq!(at_start(&persisted, T0, CONFIGURED), want, "{what}");
        }
        // In sequence: applied at T0 (start 1), a clean restart, two kill
        // -9s: rolled back at the third counted start.
        let mut at = w(unit, 1, false, T0);
        let mut outcomes = Vec::new();
        for (now, clean_before) in [
            (T0 + 5_000, true),
            (T0 + 10_000, false),
            (T0 + 15_000, false),
        ] {
            at.clean_stop = clean_before;
            match at_start(&at, now, LEN) {
                AtStart::Watch(next) => {
                    outcomes.push(format!("watch {}", next.starts));
                    at = next;
                }
                AtStart::RollBack(r) => outcomes.push(r),
            }
        }
        assert_eq!(
            outcomes,
            [
                "watch 1",
                "watch 2",
                "the agent restarted 2 times within the health window of unit v4"
            ]
        );
    }

    #[test]
    fn a_carried_window_passes_at_its_end_whatever_the_signals() {
        let b = carried(T0, W);
        let mut c = Counters {
            probe_failed: 10,
            samples: 10,
            samples_failing: 10,
            last_sample_failing: true,
            ..Counters::default()
        };
        assert_eq!(judge(&b, &c, T0 + W - 1), Verdict::Watching);
        assert_eq!(judge(&b, &c, T0 + W), Verdict::Healthy);
        c.last_ack_ms = Some(T0 + 1);
        assert_eq!(judge(&b, &c, T0 + W), Verdict::Healthy);
    }

    #[test]
    fn signals_that_were_bad_before_do_not_blame_the_document() {
        let mut c = before();
        c.last_ack_ms = Some(T0 - W - 1); // in a dead zone already
        c.last_probe_ok_ms = None; // no probe ever passed
        c.last_sample_failing = true;
        let b = baseline(&c, T0, W);
        let mut after = c;
        after.probe_failed += 10;
        after.samples += 10;
        after.samples_failing += 10;
        assert_eq!(judge(&b, &after, T0 + W), Verdict::Healthy);
    }
}
