//! Waiting on an observable condition, the one way the suite does it.
//!
//! [`eventually`] (async) and [`eventually_blocking`] (threads) call a probe
//! every [`POLL`] until it yields a value or the timeout passes, and then
//! panic with what was awaited and the probe's last observation. A probe
//! returns an [`Observation`]: `bool`, `Option<T>` or `Result<T, E>`; the
//! `Err` is the observation to report (a count so far, the last JSON seen),
//! so a timeout says how far the system got.
//!
//! Contract: the probe runs at least once, even with a zero timeout; it is
//! never called again after it succeeds; the wait never sleeps past the
//! deadline by more than one poll. These are for conditions the system under
//! test will make true: a sleep is never a stand-in for them.

use std::fmt::Debug;
use std::time::Duration;

/// How often a probe is called.
pub const POLL: Duration = Duration::from_millis(20);

/// What a probe saw: done (with a value) or not yet (with a description
/// of what it saw, for the timeout message).
pub trait Observation {
    type Value;
    fn observe(self) -> Result<Self::Value, String>;
}

impl Observation for bool {
    type Value = ();
    fn observe(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("false".into()) }
    }
}

impl<T> Observation for Option<T> {
    type Value = T;
    fn observe(self) -> Result<T, String> {
        self.ok_or_else(|| "nothing yet".into())
    }
}

impl<T, E: Debug> Observation for Result<T, E> {
    type Value = T;
    fn observe(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:#?}"))
    }
}

fn timed_out(what: &str, timeout: Duration, last: &str) -> ! {
    panic!("timed out after {timeout:?} waiting for {what}; last observation: {last}")
}

/// Polls `probe` every [`POLL`] until it yields its value; panics after
/// `timeout` with `what` and the last observation. The probe is an async
/// closure (`async || …`, which may borrow mutably) or `|| async { … }`.
pub async fn eventually<O: Observation>(
    what: &str,
    timeout: Duration,
    probe: impl AsyncFnMut() -> O,
) -> O::Value {
    eventually_every(what, timeout, POLL, probe).await
}

/// [`eventually`] polling every `every`: faster where the test must act
/// right after the condition (kill while acks still flow), slower where a
/// probe is costly.
pub async fn eventually_every<O: Observation>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> O,
) -> O::Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match probe().await.observe() {
            Ok(v) => return v,
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            timed_out(what, timeout, &last);
        }
        tokio::time::sleep(every).await;
    }
}

/// The blocking twin of [`eventually`], for tests without a runtime.
pub fn eventually_blocking<O: Observation>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> O,
) -> O::Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let last = match probe().observe() {
            Ok(v) => return v,
            Err(last) => last,
        };
        if std::time::Instant::now() >= deadline {
            timed_out(what, timeout, &last);
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn returns_the_value_once_the_probe_yields_it() {
        let n = Cell::new(0);
        let v = eventually_blocking("three calls", Duration::from_secs(5), || {
            n.set(n.get() + 1);
            (n.get() == 3).then_some(n.get() * 10)
        });
        assert_eq!((v, n.get()), (30, 3));
    }

    #[test]
    fn the_probe_runs_once_even_with_no_time() {
        eventually_blocking("true", Duration::ZERO, || true);
    }

    #[test]
    fn a_timeout_names_what_was_awaited_and_the_last_observation() {
        let err = std::panic::catch_unwind(|| {
            eventually_blocking("the count", Duration::from_millis(50), || {
                Err::<(), _>("count is 2")
            })
        })
        .expect_err("must time out");
        let msg = err.downcast_ref::<String>().expect("a formatted panic");
        assert!(msg.contains("waiting for the count"), "{msg}");
        assert!(msg.contains("count is 2"), "{msg}");
    }

    #[tokio::test]
    async fn the_async_one_waits_too() {
        let n = Cell::new(0);
        let v = eventually("a result", Duration::from_secs(5), || {
            n.set(n.get() + 1);
            let k = n.get();
            async move { if k < 3 { Err(k) } else { Ok(k) } }
        })
        .await;
        assert_eq!(v, 3);
    }
}
