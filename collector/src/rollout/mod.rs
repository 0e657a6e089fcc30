//! Staged rollouts (issue 16): a config change taken to a target's units
//! wave by wave, each wave judged against the units not yet changed, and
//! rolled back by itself when it does worse.
//!
//! # Contract
//!
//! * **The change** is TOML of remotable sections. Each unit of a wave is
//!   issued its own document: the unit's current document with the
//!   change's sections over it (whole sections, as the agent merges),
//!   signed, at the next version of the unit's scope, retained. What the
//!   unit's document was before is kept in the rollout, to roll back to.
//! * **The target** is an agency's units as this collector knows them when
//!   the rollout is created, narrowed by a unit list and a label selector;
//!   fixed from then on, in a spread order (a hash of the rollout id and
//!   the unit). Two running rollouts never share a unit (409).
//! * **Waves** take the rollout to a count or a percentage of the target
//!   in all, each at least one unit more; the last takes every unit left.
//! * **A wave is applied** when each of its units reports `applied` for
//!   its document (`ConfigStatus`, or running that version). A unit that
//!   refuses, fails or rolls the change back by itself rolls the whole
//!   rollout back. Past `apply_timeout_ms` the wave soaks with the units
//!   that applied (the rest get the retained document when they connect);
//!   if none did, the rollout **pauses**.
//! * **The soak** compares the updated units (every wave so far) with the
//!   units not yet updated, over the soak so far, with the deploy gate's
//!   statistics (`crate::gate::stats`): the probe's failure ratio and
//!   latencies, and the share of units with process restarts, agent drops
//!   and lost flags. The last wave, with nothing left to compare with, is
//!   compared with its own units over as long a span before it was
//!   issued. It is judged every fifth of the soak (at least every 5 s): a
//!   `fail` at any time rolls back at once; at the end, `pass` starts the
//!   next wave (or completes), `inconclusive` or `no_data` **pauses**:
//!   too few units or no data never passes.
//! * **Rolling back** issues every changed unit's previous document again
//!   (as the next version; a unit that had none gets an empty document),
//!   and waits for them to report it, at most `apply_timeout_ms`.
//! * **Operators** pause, resume (a wave paused while soaking soaks again)
//!   and abort (rolls back) through the API.
//! * **Every step** is an event (`Change::Rollout`): stored, streamed,
//!   sent to the agency's webhooks, counted
//!   (`muster_rollout_steps_total{step}`).
//! * **State** is persisted (`rollouts.json`) at every change, so a
//!   restarted collector carries on; single node only (the config book
//!   is), 501 in cluster mode.
//!
//! [`machine`] is the pure core; [`driver`] is the I/O edge.

pub mod book;
pub mod driver;
pub mod machine;
pub mod spec;

pub use driver::{Action, RolloutError, Rollouts};
pub use machine::Rollout;
