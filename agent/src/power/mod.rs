//! Why the agent goes away, said before it goes (issue 12).
//!
//! Contract:
//! * Every departure is announced with the reason the OS or the operator
//!   gave: `shutdown` (the OS is shutting down or rebooting), `stop` (the
//!   service was stopped; an announced restart carries `back_within`), or
//!   `sleep` (the OS suspends; on resume the birth says `resumed` and how
//!   long the agent slept, by the agent's clock). The MQTT will stays the
//!   unannounced case, `lost`.
//! * The announcement is a record like every other (buffered, numbered,
//!   acked) **and** the retained state; the uplink waits for its ack at most
//!   `power.announce_timeout` (default 3 s: logind's `InhibitDelayMaxSec` is
//!   5 s), then disconnects cleanly so the broker never publishes the will
//!   ([`crate::uplink::Control`]).
//! * [`Lifecycle`] is the pure core: events in (with `now`), the action to
//!   take out. It never reads a clock or a file. A second event while the
//!   agent has already departed never announces twice; a terminate while a
//!   shutdown or sleep is announced exits without a new announcement (the
//!   standing one is true).
//! * [`Power`] applies the core's actions to the uplink; the event sources
//!   are at the edges: SIGTERM (`crate::run`), logind over D-Bus on Linux
//!   ([`logind`]), the service control handler on Windows
//!   (`crate::service::windows`), and the restart marker ([`marker`]).

#[cfg(target_os = "linux")]
pub mod logind;
pub mod marker;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_proto::PresenceReason;
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::uplink::Control;

/// `[power]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerSettings {
    /// `power.announce_timeout`: how long a departure waits for the ack of
    /// its announcement before disconnecting anyway, default 3 s.
    pub announce_timeout: Duration,
}

impl Default for PowerSettings {
    fn default() -> Self {
        PowerSettings {
            announce_timeout: crate::uplink::DEPART_TIMEOUT,
        }
    }
}

/// The longest `power.announce_timeout`: a departure (with its disconnect)
/// must fit systemd's stop timeout and Windows' preshutdown time.
pub const MAX_ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(20);

/// What happened to the agent or the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGTERM, a service stop, Windows' PRESHUTDOWN/SHUTDOWN. `going_down`:
    /// the OS is shutting down; `back_within_ms`: a fresh restart marker
    /// (`muster-agent announce-restart`).
    Terminate {
        going_down: bool,
        back_within_ms: Option<u64>,
    },
    /// logind `PrepareForShutdown(true)`.
    ShutdownPrepare,
    /// logind `PrepareForShutdown(false)`: the shutdown was cancelled.
    ShutdownCancelled,
    /// logind `PrepareForSleep(true)`, Windows `PBT_APMSUSPEND`.
    SleepPrepare,
    /// logind `PrepareForSleep(false)`, Windows `PBT_APMRESUME*`.
    Woke,
}

/// What to do about an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Announce `reason`, wait (bounded) for its ack, disconnect and stay
    /// disconnected; `exit`: then stop the agent.
    Depart { reason: PresenceReason, exit: bool },
    /// Connect again; the birth says `reason`.
    Return { reason: PresenceReason },
    /// Stop the agent without a new announcement: the standing one is true.
    Exit,
    /// Nothing to do (a repeated or spurious event).
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Sleep announced at `since_ms` (agent clock).
    Asleep {
        since_ms: u64,
    },
    /// Shutdown announced; waiting for SIGTERM (or a cancellation).
    ShuttingDown,
    /// A terminate was handled; nothing more happens.
    Exiting,
}

/// The pure lifecycle core.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    state: State,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle::new()
    }
}

impl Lifecycle {
    pub fn new() -> Lifecycle {
        Lifecycle {
            state: State::Running,
        }
    }

    /// Whether a terminate now would announce (so the caller reads the
    /// restart marker and asks whether the OS is going down only then).
    pub fn running(&self) -> bool {
        self.state == State::Running
    }

    /// The action for `ev` at `now_ms` (agent clock), and the new state.
    pub fn on(&mut self, ev: Event, now_ms: u64) -> Action {
        use Event::*;
        use State::*;
        let (next, action) = match (self.state, ev) {
            (Exiting, _) => (Exiting, Action::Ignore),
            (
                Running,
                Terminate {
                    going_down,
                    back_within_ms,
                },
            ) => {
                let reason = if going_down {
                    PresenceReason::Shutdown
                } else {
                    PresenceReason::Stop { back_within_ms }
                };
                (Exiting, Action::Depart { reason, exit: true })
            }
            (Asleep { .. } | ShuttingDown, Terminate { .. }) => (Exiting, Action::Exit),
            (Running | Asleep { .. }, ShutdownPrepare) => (
                ShuttingDown,
                Action::Depart {
                    reason: PresenceReason::Shutdown,
                    exit: false,
                },
            ),
            (ShuttingDown, ShutdownPrepare) => (ShuttingDown, Action::Ignore),
            (ShuttingDown, ShutdownCancelled) => (
                Running,
                Action::Return {
                    reason: PresenceReason::Connected,
                },
            ),
            (s, ShutdownCancelled) => (s, Action::Ignore),
            (Running, SleepPrepare) => (
                Asleep { since_ms: now_ms },
                Action::Depart {
                    reason: PresenceReason::Sleep,
                    exit: false,
                },
            ),
            (s @ (Asleep { .. } | ShuttingDown), SleepPrepare) => (s, Action::Ignore),
            (Asleep { since_ms }, Woke) => (
                Running,
                Action::Return {
                    reason: PresenceReason::Resumed {
                        slept_ms: now_ms.saturating_sub(since_ms),
                    },
                },
            ),
            (s @ (Running | ShuttingDown), Woke) => (s, Action::Ignore),
        };
        self.state = next;
        action
    }
}

/// How long [`Power`] waits for the uplink beyond the announce timeout
/// (disconnect, a busy uplink thread) before giving up on it.
const UPLINK_SLACK: Duration = Duration::from_secs(2);

/// Applies the core's actions to the uplink. Shared by every event source.
pub struct Power {
    core: Mutex<Lifecycle>,
    control: mpsc::Sender<Control>,
    clock: Arc<dyn Clock>,
    /// `power.announce_timeout`.
    timeout: Duration,
}

impl Power {
    pub fn new(control: mpsc::Sender<Control>, clock: Arc<dyn Clock>, timeout: Duration) -> Power {
        Power {
            core: Mutex::new(Lifecycle::new()),
            control,
            clock,
            timeout,
        }
    }

    /// Whether a terminate now would announce.
    pub fn running(&self) -> bool {
        self.core.lock().map(|c| c.running()).unwrap_or(false)
    }

    /// Handles one event: announces and waits for the uplink's "done"
    /// (bounded), or tells it to connect again. Returns the action taken.
    pub async fn handle(&self, ev: Event) -> Action {
        let action = match self.core.lock() {
            Ok(mut c) => c.on(ev, self.clock.now_ms()),
            Err(_) => return Action::Ignore,
        };
        match &action {
            Action::Depart { reason, .. } => {
                tracing::info!(reason = reason.as_str(), ?ev, "Announcing the departure.");
                let (done, acked) = oneshot::channel();
                let sent = self
                    .control
                    .send(Control::Depart {
                        reason: *reason,
                        done,
                    })
                    .await;
                if sent.is_ok()
                    && tokio::time::timeout(self.timeout + UPLINK_SLACK, acked)
                        .await
                        .is_err()
                {
                    tracing::warn!("The uplink did not finish the announcement in time.");
                }
            }
            Action::Return { reason } => {
                tracing::info!(reason = reason.as_str(), "Back: connecting again.");
                let _ = self.control.send(Control::Resume { reason: *reason }).await;
            }
            Action::Exit | Action::Ignore => {
                tracing::debug!(?ev, ?action, "Lifecycle event.");
            }
        }
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event::*;
    use PresenceReason as R;

    fn depart(reason: R, exit: bool) -> Action {
        Action::Depart { reason, exit }
    }

    const TERM: Event = Terminate {
        going_down: false,
        back_within_ms: None,
    };
    const TERM_DOWN: Event = Terminate {
        going_down: true,
        back_within_ms: None,
    };
    const TERM_MARKED: Event = Terminate {
        going_down: false,
        back_within_ms: Some(120_000),
    };

    /// An event at a time, and the action expected.
    type Step = (Event, u64, Action);

    /// (events at times, the action expected for each).
    #[test]
    fn events_map_to_the_reason_and_what_to_do() {
        let table: Vec<(&str, Vec<Step>)> = vec![
            (
                "plain SIGTERM / systemctl stop",
                vec![(
                    TERM,
                    10,
                    depart(
                        R::Stop {
                            back_within_ms: None,
                        },
                        true,
                    ),
                )],
            ),
            (
                "SIGTERM while the system goes down (no logind)",
                vec![(TERM_DOWN, 10, depart(R::Shutdown, true))],
            ),
            (
                "SIGTERM with a fresh restart marker",
                vec![(
                    TERM_MARKED,
                    10,
                    depart(
                        R::Stop {
                            back_within_ms: Some(120_000),
                        },
                        true,
                    ),
                )],
            ),
            (
                "going down beats a marker",
                vec![(
                    Terminate {
                        going_down: true,
                        back_within_ms: Some(5),
                    },
                    10,
                    depart(R::Shutdown, true),
                )],
            ),
            (
                "logind shutdown, then systemd's SIGTERM: announced once",
                vec![
                    (ShutdownPrepare, 10, depart(R::Shutdown, false)),
                    (TERM, 20, Action::Exit),
                ],
            ),
            (
                "shutdown announced twice",
                vec![
                    (ShutdownPrepare, 10, depart(R::Shutdown, false)),
                    (ShutdownPrepare, 11, Action::Ignore),
                ],
            ),
            (
                "shutdown cancelled: connect again",
                vec![
                    (ShutdownPrepare, 10, depart(R::Shutdown, false)),
                    (
                        ShutdownCancelled,
                        20,
                        Action::Return {
                            reason: R::Connected,
                        },
                    ),
                    (
                        TERM,
                        30,
                        depart(
                            R::Stop {
                                back_within_ms: None,
                            },
                            true,
                        ),
                    ),
                ],
            ),
            (
                "sleep and resume: slept by the agent clock",
                vec![
                    (SleepPrepare, 1_000, depart(R::Sleep, false)),
                    (
                        Woke,
                        61_000,
                        Action::Return {
                            reason: R::Resumed { slept_ms: 60_000 },
                        },
                    ),
                    (SleepPrepare, 70_000, depart(R::Sleep, false)),
                ],
            ),
            (
                "a second sleep while asleep keeps the first time",
                vec![
                    (SleepPrepare, 1_000, depart(R::Sleep, false)),
                    (SleepPrepare, 2_000, Action::Ignore),
                    (
                        Woke,
                        5_000,
                        Action::Return {
                            reason: R::Resumed { slept_ms: 4_000 },
                        },
                    ),
                ],
            ),
            (
                "a clock that went back never gives a negative sleep",
                vec![
                    (SleepPrepare, 9_000, depart(R::Sleep, false)),
                    (
                        Woke,
                        1_000,
                        Action::Return {
                            reason: R::Resumed { slept_ms: 0 },
                        },
                    ),
                ],
            ),
            (
                "a wake without a sleep is spurious",
                vec![
                    (Woke, 10, Action::Ignore),
                    (ShutdownCancelled, 11, Action::Ignore),
                ],
            ),
            (
                "SIGTERM while asleep: the sleep stands",
                vec![
                    (SleepPrepare, 10, depart(R::Sleep, false)),
                    (TERM, 20, Action::Exit),
                ],
            ),
            (
                "shutdown while asleep is the truer reason",
                vec![
                    (SleepPrepare, 10, depart(R::Sleep, false)),
                    (ShutdownPrepare, 20, depart(R::Shutdown, false)),
                    (SleepPrepare, 30, Action::Ignore),
                    (Woke, 40, Action::Ignore),
                ],
            ),
            (
                "nothing after a terminate",
                vec![
                    (
                        TERM,
                        10,
                        depart(
                            R::Stop {
                                back_within_ms: None,
                            },
                            true,
                        ),
                    ),
                    (TERM, 11, Action::Ignore),
                    (SleepPrepare, 12, Action::Ignore),
                    (Woke, 13, Action::Ignore),
                    (ShutdownPrepare, 14, Action::Ignore),
                ],
            ),
        ];
        for (name, steps) in table {
            let mut core = Lifecycle::new();
            for (i, (ev, now, want)) in steps.into_iter().enumerate() {
                let running = core.running();
                let got = core.on(ev, now);
                assert_eq!(got, want, "{name}: step {i} ({ev:?})");
                if let Action::Depart { exit: true, .. } = got {
                    assert!(running, "{name}: only a running agent announces a stop");
                }
            }
        }
    }
}
