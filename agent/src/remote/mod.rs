//! Remote configuration (issue 16): signed documents from the collector,
//! checked, merged onto the local TOML, applied without a restart, watched,
//! and rolled back by the agent itself when its own health regresses.
//!
//! Contract:
//!
//! * **The local TOML is the root of trust.** `[remote] allow` names the
//!   sections a document may set (a subset of [`crate::config::REMOTABLE`]);
//!   empty, the default, turns remote config off (nothing is subscribed).
//!   The keys documents must be signed with are the ones the agent trusts
//!   for acks (`[trust] collector_keys` and `<data_dir>/trusted_keys`).
//! * **Two documents at most run**: the agency's (`muster/v1/{agency}/config`)
//!   and the unit's (`muster/v1/{agency}/{unit}/config`), both retained.
//!   The effective config is the local TOML with the agency's sections, then
//!   the unit's, each replacing a whole top-level section.
//! * **Checked before anything is applied** ([`decide::check`],
//!   [`decide::merge`]), in this order, each refusal typed
//!   ([`muster_proto::RefusalReason`]), counted, logged (rate-limited) and
//!   reported as a `ConfigStatus` record: malformed; unsigned, untrusted
//!   key or bad signature; bound to another unit or agency; a version not
//!   newer than the one seen for that scope (the same document again, as
//!   a retained redelivery, is silently nothing); a section not allowed;
//!   invalid (the same validation as `check-config`). Never partly: a
//!   document is applied whole or not at all.
//! * **Versions only grow.** The highest version seen per scope is
//!   persisted ([`store`]) for documents that verified and were bound to
//!   this unit, so an authentic document once refused, failed or rolled
//!   back is never applied again, and a forger cannot burn versions.
//! * **Applied without a restart**: probes, sampling and the report
//!   endpoint are rebuilt from the effective config (`crate::run`); a
//!   document whose parts will not build (a CA file missing) is `failed`
//!   and the previous config keeps running.
//! * **Watched** ([`health`]): for `remote.health_window` after applying,
//!   the agent compares its own signals with before: no ack for the whole
//!   window (where there were acks before), every probe failing (where one
//!   passed before), most samples carrying sampler failures (where the
//!   last one before had none). A regression rolls back to the last known
//!   good (the documents whose window passed; none: the local config) and
//!   says why (`rolled_back`); a clean window makes the documents the last
//!   known good.
//! * **Restart**: the running documents are persisted and, re-verified,
//!   make the effective config at the next start, before anything is
//!   measured. So is the open health window ([`store::Window`]: the
//!   document it is about, when it opened, its length, the starts within
//!   it), and a restart does not end it: the window is carried over and
//!   judged on restarts alone ([`health::at_start`]).
//! * **A crash loop rolls back**: the agent starting
//!   [`health::CRASH_STARTS`] (3) times within one window (the start that
//!   applied the document is the first; two unclean restarts after it)
//!   starts on the last known good instead, persists that, and reports the
//!   document `rolled_back` ("the agent restarted 2 times within the
//!   health window of unit v7"); its version stays seen, so it is never
//!   applied again. One kill -9 or power cut in a window is normal for a
//!   vehicle terminal and does not roll back. A clean stop (SIGTERM, a
//!   service stop, the OS going down) is recorded in the window and the
//!   next start is not counted. A window that ended while the agent was
//!   down reopens, fresh, for the same document: no running agent has
//!   watched it whole.

pub mod decide;
pub mod health;
pub mod store;
mod task;

pub use task::{ConfigView, Reconfigure, Remote, RemoteLinks, Startup, startup};
