//! Actions (issue 17): the collector asks this agent to run one of the
//! actions its own config defines; the agent checks the request with pure
//! code, runs it bounded, and audits every step as a record.
//!
//! Contract:
//!
//! * **The local TOML is the root of trust.** Only `[[action]]`s in the
//!   agent's own config can run (`crate::config::ActionSpec`); no remote
//!   document can add or change one (`action` is not a remotable section).
//!   A kind is one of a small typed set — `restart_service`,
//!   `restart_process`, `flush_dns`, `renew_dhcp`, `collect_diagnostics`,
//!   `command` — and nothing is ever run through a shell: every process is
//!   an argv. A `command`'s parameters are whole arguments (`"{host}"`),
//!   each value checked whole against its type (`\A(?:pattern)\z` for a
//!   string, never multi-line), and a value with any control character
//!   (newline, NUL, …) is refused whatever its type.
//! * **A request is checked before anything runs** ([`decide::decide`],
//!   pure, given `now_ms`), in this order, each refusal typed
//!   ([`muster_proto::ActionRefusal`]): malformed (the audit names no
//!   request); unsigned, untrusted key (the trusted keys are re-read once,
//!   as remote config does) or bad signature — the keys are the ones acks
//!   and config documents are verified with; for another unit (or another
//!   agency's); expired (`now > expires_ms`, a validity over
//!   `MAX_ACTION_TTL_MS`, or issued more than [`decide::MAX_FUTURE_MS`]
//!   ahead); replayed (its nonce seen before); unknown action; bad
//!   parameters (missing, unknown, repeated, failing their type, control
//!   characters); over the action's rate (`rate = "3 per 1h"`, counted by
//!   starts on this unit); busy (the same action running, or
//!   [`task::MAX_CONCURRENT`] actions running).
//! * **Never replayed.** A request that is authentic, for this unit and
//!   unexpired has its nonce remembered until its expiry (plus
//!   [`store::NONCE_GRACE_MS`]), even when it is refused further on. Nonces
//!   and each action's recent starts are persisted atomically
//!   (`<data_dir>/actions/state.json`, [`store`]) before anything runs, so a
//!   restart neither forgets a nonce nor resets a limit. At most
//!   [`store::MAX_NONCES`] nonces are remembered; when full, a new request
//!   is refused `rate_limited` (it cannot be remembered, so it cannot run).
//!   Refusals before the nonce step write nothing: a forger burns no state.
//! * **Time.** Expiry is judged on the agent's clock corrected by its
//!   offset to the collector when it knows one (the offset of the last
//!   verified ack, `crate::uplink::UplinkView::clock_offset`), else on the
//!   agent's own clock; the status view says which.
//! * **Bounded runs** ([`exec`]): each action has its timeout; a process
//!   runs in a process group of its own (Linux), its stdout and stderr
//!   are read concurrently and cut to `output_max`; at the timeout the
//!   whole group is killed and the audit says `timed_out`. When the
//!   program ends, whatever it left in its group is killed too. An action
//!   that cannot start is `failed`. `restart_process` starts the process
//!   detached (its own process group, null stdio), so it outlives the
//!   action and the agent.
//! * **Everything is audited** as `Payload::Action` records through the
//!   observation channel, awaited (an audit is never dropped), so through
//!   the disk buffer: durable and acked like every record. Every request
//!   gets `refused`, or `started` then `finished` (exit code, duration,
//!   stdout, stderr) or `failed`. Refusals and outcomes are counted by
//!   reason (the status view, [`ActionView`]); refusal log lines are
//!   rate-limited (the first, then every 100th per reason).
//! * **Stopping**: running actions are killed (their process groups) and
//!   audited `finished` with no exit code and "killed: the agent is
//!   stopping" in their stderr, before the uplink stops.

pub mod decide;
pub mod exec;
mod service;
pub mod store;
pub mod task;

pub use task::{ActionLinks, ActionView, Actions};
