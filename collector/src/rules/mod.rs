//! The rules engine: pure code that turns records and presence into unit
//! health, transitions and agency-wide incidents. It never reads the clock:
//! every entry point takes the collector's clock as `now_ms`, and rules are
//! evaluated on the records' own event time (`Record::at_ms`). No I/O, no
//! async: the ingest task calls it and forwards the [`Change`](crate::model::Change)s.
//!
//! ```ignore
//! let rules: RulesConfig = raw_rules.validate()?;          // the [rules] TOML table
//! let mut engine = Engine::new(rules);
//! engine.restore(&unit, health);                          // at start, from the store
//! let changes: Vec<Change> = engine.on_record(&unit, &record, now_ms);
//! let changes = engine.on_presence(&unit, &presence, now_ms);
//! let changes = engine.tick(now_ms);                      // about every second
//! engine.health(&unit);                                   // Option<&UnitHealth>
//! engine.incidents();                                     // open incidents
//! ```
//!
//! # Field grammar
//!
//! A threshold rule looks at one field of the unit's samples:
//!
//! ```text
//! field    = scope [ "[" selector "]" ] "." metric
//! selector = "*"                       any instance, each judged on its own
//!          | '"' name '"'              one instance; inside, \\ is \ and \" is "
//! ```
//!
//! | scope | selector | metrics (unit) | from |
//! |---|---|---|---|
//! | `cpu` | – | `total` (%), `max_core` (% of the busiest core) | host sample |
//! | `load` | – | `1m`, `5m`, `15m` (load average) | host sample |
//! | `memory`, `swap` | – | `used_pct` (%), `used_mib`, `free_mib` | host sample |
//! | `disk` | mount: `"/"`, `"C:\\"` (`C:`, `C:\`, `c:/` are one drive) | `used_pct` (%), `free_gib`, `read_bps`, `write_bps` (bytes/s) | host sample |
//! | `net` | interface: `"wwan0"` | `up` (bool), `rx_errors`, `tx_errors` (since the previous sample), `rx_bps`, `tx_bps` | host sample |
//! | `net` | – | `kind` (the default route's link: `ethernet`, `wifi`, `cellular`, `vpn`, `other`; compared with `==` / `!=` against a name: `threshold = "cellular"`; no value without a default route), `signal_dbm` (the route link's signal: Wi-Fi dBm, cellular RSRP or else RSSI; no value on other links), `vpn_up` (bool: any configured VPN up; no value when the unit's config names no VPN, so a rule on it never fires for such units), `route_changes` (default-route changes since the previous sample) | host sample's network context (schema v2; a v1 sample has none: no value) |
//! | `process` | watched process: `"cadclient"` (case-insensitive, `.exe` optional) | `running` (bool), `restarts` (since agent start), `cpu_pct` (% of one core), `rss_mib` | host sample |
//! | `host` | – | `uptime_s`, `failures` (agent collectors that failed) | host sample |
//! | `probe` | probe name: `"cad-api"` | `ok` (bool), `total_ms`, `dns_ms`, `connect_ms`, `tls_ms`, `ttfb_ms`, `http_status`, `cert_days_left`, `loss_pct` (ICMP %), `rtt_ms` (ICMP average), `failure_ratio` (0..1 over `window`) | probe result |
//! | `agent` | – | `backlog_records`, `backlog_mib`, `oldest_unsent_s`, `dropped` (cumulative), `dropped_new` (since the previous status), `reconnects`, `clock_offset_ms` | agent status |
//!
//! Values come from the wire's integer units (`total_bp / 100` is a percent,
//! `total_us / 1000` milliseconds). A value the record lacks (the agent's
//! collector failed, an instance is absent) leaves the rule's state as it
//! was. Probe timings are read from successful results only: a failure's
//! timing is its timeout, which `ok` and `failure_ratio` judge. Unknown
//! scopes, metrics and malformed selectors are config errors naming the key.
//! With `[*]`, each instance has its own flag, shown with the instance
//! resolved (`disk["/var"].used_pct`); an instance gone from a sample (a disk
//! unmounted) drops its flag.
//!
//! # Configuration: the `[rules]` table
//!
//! ```toml
//! [rules]
//! defaults = true            # include the shipped threshold rules (default)
//! disabled = ["swap-high"]   # drop rules by name
//!
//! [rules.offline]
//! stale_factor = 3           # lost.stale after 3 x the unit's interval ...
//! min_stale = "15s"          # ... and at least this
//! default_interval = "30s"   # until the unit has told its interval
//! # runbook = "https://wiki.example.org/lost"   # optional, lost.will and lost.stale
//!
//! [rules.off]
//! max = "16h"                # an announced departure is `overdue` after this
//! # runbook = "https://wiki.example.org/overdue"
//! [rules.off.agency."metro-fire"]
//! max = "10h"                # per agency
//!
//! [rules.clock_skew]
//! enabled = true
//! threshold = "2m"
//! severity = "degraded"
//! # runbook = "https://wiki.example.org/clock"
//!
//! [rules.incidents]
//! enabled = true
//! min_units = 3
//! min_ratio = 0.5
//! clear_ratio = 0.25
//! window = "2m"
//! severity = "degraded"
//! # runbook = "https://wiki.example.org/incident"
//!
//! [[rules.threshold]]
//! name = "cpu-high"          # a shipped rule's name replaces it
//! field = "cpu.total"
//! op = ">"                   # > >= < <= == !=
//! threshold = 90             # true / false for bool fields (with == / !=)
//! clear = 80                 # hysteresis: stays up while `value op clear`
//! for = "2m"                 # sustained, on event time; default 0
//! window = "5m"              # failure_ratio only (required there)
//! severity = "degraded"      # or "critical"; default degraded
//! runbook = "https://wiki.example.org/cpu-high"   # optional: see Runbooks below
//! agencies = ["metro-fire"]  # optional: only these agencies' units
//! ```
//!
//! The shipped rules are in `default_rules.toml` ([`DEFAULT_RULES_TOML`]).
//!
//! **Runbooks.** A reason's `runbook` is the rule's own `runbook` URL when
//! it sets one, else `/runbooks/<rule>` on this collector when the
//! collector has a runbook of that name (every built-in and shipped rule
//! does; a site adds or overrides them in `[runbooks] dir`:
//! [`crate::runbooks`]), else `null`. `[rules.offline] runbook` is
//! `lost.will`'s and `lost.stale`'s, `[rules.off] runbook` is `overdue`'s;
//! `off` has no URL key: it links to its runbook page.
//!
//! # Semantics
//!
//! * **Threshold rules.** A flag is *pending* from the first record whose
//!   value satisfies `value op threshold`, and goes up when a record at least
//!   `for` later (event time) still satisfies it; a record that does not
//!   resets it. Once up, it stays up while `value op clear` holds (`clear`
//!   defaults to the threshold): a value wobbling between the two does not
//!   flap. Flags are evaluated on records only, never in `tick`.
//! * **Event time and history.** Each stream of a unit (host samples, agent
//!   status, each probe by name) has a newest event time. A record older than
//!   it is replayed history: it proves the link is alive (clears
//!   `lost.stale`), but never raises or clears a flag and is not used for
//!   clock skew: the unit's current state comes from its newest data. (History
//!   is stored by the collector and could feed statistics; the engine ignores it.)
//! * **Presence: lost, off, overdue.** Which presence is believed is
//!   decided by [`muster_proto::presence`] (its contract: receive order, births of
//!   another boot win, departures only for the live boot, birth < will <
//!   announcement within one connection, newer records overrule a
//!   departure, an announcement record never does). One presence reason at
//!   a time, listed first:
//!   - `lost.will` (critical): the agent's MQTT will, or an offline presence
//!     with a reason code this build does not know. Only a birth or newer
//!     records clear it.
//!   - `lost.stale` (critical): nothing received (collector clock, any record
//!     or birth) for `stale_factor` x the unit's interval (the smaller of
//!     `HostSample.interval_ms` and `AgentStatus.interval_ms`), at least
//!     `min_stale`; judged in `tick`; catches half-open cellular links. Not
//!     judged while a unit is off, except an announced restart
//!     (`stop` with `back_within`): silent past `back_within` + that
//!     allowance, it is lost.
//!   - `off` (severity `info`; status `off`, not a fault): an announced
//!     departure (`shutdown`, `stop`, `sleep`), in words with the
//!     collector-clock UTC time it was believed: `shut down 18:02 (OS
//!     shutdown)`, `stopped 18:02 by an operator`, `restarting since 18:02
//!     (back within 2m)`, `asleep since 14:10`. `threshold` = the ms it may
//!     last. An off unit leaves its incident groups.
//!   - `overdue` (degraded): off for longer than `[rules.off] max` (per
//!     agency: `[rules.off.agency."<id>"] max`), or a restart not back
//!     within its `back_within`; judged in `tick`. `since_ms` = when it became
//!     overdue, `observed` = when the unit went off (ms).
//!
//!   Status: `lost` if a `lost.*` reason, else `overdue`, else `off`, else
//!   the worst flag. Raised threshold flags stay, listed under the presence
//!   reason; going lost or off restarts pending `for` timers (continuity is
//!   lost). Lost reasons carry the last network context the unit reported:
//!   `lost contact 14:32 (MQTT will) on cellular (wwan0), signal -118 dBm
//!   (very weak), VPN up` (bands in [`words`]), and `observed` = that signal
//!   in dBm. `lost.will` has field `presence`; `lost.stale` has field
//!   `last_seen`, `since_ms` = when the unit was last heard from, `threshold`
//!   = the allowed silence in ms. Before wire schema v2 these rules were
//!   `offline.will` / `offline.stale`: stored health with those names is
//!   restored as `lost.*`. `[rules.offline]` configures both.
//! * **Clock skew** (`clock_skew`): collector clock minus agent clock, from
//!   the agent's own estimate (`AgentStatus.clock_offset_ms`) while fresh, else
//!   the minimum of `now_ms - at_ms` over the unit's current records of the
//!   last minute (delay only adds, so the minimum is the best estimate), judged
//!   once records span 3 ten-second buckets. Flagged beyond `threshold`,
//!   cleared below 3/4 of it. Reason field `clock_offset_ms`, `observed` =
//!   the estimate in ms (positive: agent clock behind), `threshold` in ms.
//!   Within one boot, records are ordered by `seq`, not by event time, so an
//!   agent whose clock NTP steps back keeps being current. Across boots event
//!   time decides: a unit that reboots with its clock far behind is treated
//!   as replaying history until its clock is set (a known limit).
//! * **Incidents.** Per (agency, probe name, target), units whose latest
//!   result was received within `window` count; those whose latest result
//!   failed are failing. When failing >= `min_units` and failing / counted >=
//!   `min_ratio`, one incident opens (`Change::Incident`, id
//!   `{agency}:{probe}:{since_ms}`); it is updated (another
//!   `Change::Incident`) when its affected set changes and ends (`ended_ms`
//!   set) when the ratio drops below `clear_ratio`. Affected units get an
//!   `incident` reason and their flags on that probe carry the incident id.
//!   Evaluated in `tick` (incremental bookkeeping per record, O(1)).
//! * **Status and transitions.** `Ok < Off < Degraded < Overdue < Critical
//!   < Lost`; presence decides first (above). A `Change::Transition` is emitted when the status, the set of
//!   flags (rule and field) or their incident ids change, not on every sample;
//!   then `from == to` is possible. Its `at_ms` is the event time of the
//!   record that caused it, or the collector's clock for presence, staleness
//!   and incidents.
//!
//! Cost: a record costs a hash lookup and the rules of its kind, each a few
//! comparisons over the unit's (few) flags; no allocation unless a flag's
//! state changes. `tick` walks the units once (staleness) and the incident
//! groups' members.

mod config;
mod engine;
mod field;
pub mod incident;

mod skew;
pub mod words;

pub use config::IncidentConfig;
pub use config::{AutoRule, DEFAULT_AUTO_MAX, DEFAULT_AUTO_WINDOW_MS};
pub use config::{
    DEFAULT_RULES_TOML, RawClockSkew, RawIncidents, RawOff, RawOffAgency, RawOffline, RawRules,
    RawThreshold, RawValue, RulesConfig, RulesError,
};
pub use engine::Engine;

#[cfg(test)]
mod tests;
