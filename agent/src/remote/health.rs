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

/// Fewest probe results in the window before "every probe failing" counts.
pub const MIN_PROBE_RESULTS: u64 = 3;

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
