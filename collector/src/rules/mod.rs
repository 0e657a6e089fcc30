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
//! | `net` | – | `rx_bps`, `tx_bps`, `bps` (received, sent, both: bytes/s summed over the unit's interfaces but loopback — `lo`, `lo0`, `Loopback…` —, so roaming between interfaces keeps it; no value when the family failed or only loopback is reported) | host sample |
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
//! [rules.peers]              # compared with its peers (off in cluster mode)
//! enabled = true
//! min_peers = 3              # other fresh units with a latency, at least
//! factor = 3                 # slower-than-peers: >= factor x the peers' median ...
//! min_delta_ms = 100         # ... and >= their median + this
//! for = "1m"                 # sustained (collector time)
//! window = "2m"              # a unit's latency: median of its results received within it
//! max_samples = 10           # newest successes kept a unit and probe
//! severity = "degraded"
//! # runbook = "https://wiki.example.org/slower-than-peers"
//! shift_factor = 3           # latency shift: the cohort's median >= 3 x its usual ...
//! shift_min_delta_ms = 100   # ... and >= usual + this
//! shift_for = "1m"
//! baseline = "30m"           # the usual median: over this span before the window
//! shift_min_units = 3        # units slowed, at least
//! shift_severity = "degraded"
//! # shift_runbook = "https://wiki.example.org/latency-shift"
//! max_cohorts = 10000        # (agency, probe, server) cohorts kept; more are counted
//!
//! [rules.traffic]            # the agency's message rate (off in cluster mode)
//! enabled = true
//! bucket = "5s"              # rates counted in buckets of this (collector time)
//! baseline = "10m"           # the usual rate: the median bucket over this (10..4096 buckets)
//! drop_ratio = 0.5           # raise when the rate < 0.5 x usual ...
//! min_units = 5              # ... and at least 5 units fell silent at once ...
//! min_ratio = 0.3            # ... and at least 30 % of the agency's active units
//! clear_ratio = 0.8          # back: >= 0.8 x usual (and few still silent)
//! # silent = "10s"           # silent after max(silent, 1.5 x interval); default 10s,
//!                            # at most 2/3 of [rules.offline] min_stale; < min_stale
//! within = "1m"              # "at once": their silence began within this of now
//! max_affected = 1000        # unit ids listed in `affected` (the count is in the summary)
//! max_agencies = 1000        # agencies watched; more are counted, not watched
//! severity = "degraded"      # of the units' `agency-traffic-drop` reason
//! # runbook = "https://wiki.example.org/traffic-drop"
//!
//! [rules.baseline]           # each stream's own past, for the baseline ops below
//! window = "24h"             # sliding, whole hours, 1h..7d
//! min_samples = 30           # no baseline (no verdict) until its hours hold this many
//! hour_of_day = true         # judge an hour against the same hour of previous days ...
//! hour_of_day_days = 3       # ... once each of the last 3 days has data for it (1..7)
//! max_streams_per_unit = 64  # streams kept a unit; more are counted, not kept (1..1024)
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
//!
//! [[rules.threshold]]
//! name = "latency-spike"
//! field = "probe[*].total_ms"
//! op = "above_baseline"      # or "below_baseline": against the unit's own past
//! factor = 5                 # required, > 1: at least 5 x the usual (below: 1/5)
//! min_delta_ms = 100         # required: and at least this far from it (ms fields;
//!                            # other fields: min_delta, in the field's unit)
//! clear = 2.24               # optional factor, 1..factor: stays up while that far
//!                            # beyond the usual (default sqrt(factor))
//! for = "2m"                 # as above; no `threshold` (refused)
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
//! `[rules.peers] runbook` is `slower-than-peers`'s and `shift_runbook`
//! `latency-shift`'s; `off` has no URL key: it links to its runbook page.
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
//!   clock skew: the unit's current state comes from its newest data. History
//!   does build the baselines (below), by its own event time.
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
//! * **Compared with its peers** ([`peers`], whose top has the whole
//!   contract). Per (agency, probe name, target's server — a URL cut to
//!   `scheme://host[:port]`), a unit's current latency is the median of its
//!   successful results *received* within `window` (collector time; replayed
//!   history and failures never count). `slower-than-peers` (a unit flag,
//!   field `probe["<name>"].total_ms`, `since_ms` on collector time): the
//!   unit's latency >= `factor` x the median of the *other* fresh units'
//!   and >= it + `min_delta_ms`, for `for`, while those peers are fine (at
//!   least `min_peers` with a latency, at most half failing, the cohort not
//!   shifting); clears half-way (hysteresis). Message: `cad-api
//!   (http://cad:8080) 950 ms, 8 peers' median 92 ms`. *Latency shift*: the
//!   median of every fresh unit's latency >= `shift_factor` x its usual
//!   (the median of per-slot medians over `baseline` before the current
//!   window, not learned while a shift is pending or open) and +
//!   `shift_min_delta_ms`, for `shift_for`, with >= `shift_min_units`
//!   slowed: one incident, `kind` `latency_shift`, id
//!   `{agency}:{probe}:shift:{since_ms}`, summary `cad-api (http://cad:8080)
//!   slower for 12 of 12 units: median 85 ms before, 870 ms since
//!   14:02:10Z`; its units carry a `latency-shift` reason with its id (and
//!   their flags on that probe carry it), none is `slower-than-peers`; it
//!   ends half-way back. Evaluated in `tick` (a cohort when it changed, at
//!   most once a second; O(n log n) for n units). Off in cluster mode
//!   ([`Engine::clustered`]).
//! * **Traffic drops** ([`traffic`], whose top has the whole contract). The
//!   collector counts every record it takes and every believed birth per
//!   agency, in `bucket`s of collector time (O(1) a receipt); the *usual
//!   rate* is the median completed bucket over `baseline` (none until half
//!   of it has been seen; not learned while a drop is open), the *current
//!   rate* the last max(1, silent / (2 x bucket)) buckets. *Active* units:
//!   heard within `baseline`, not departed (an `off` presence: neither
//!   silent nor counted until heard again), not merely restored at start.
//!   *Silent*: an active unit unheard for max(`silent`, 1.5 x its
//!   interval), shorter than its `lost.stale` allowance by validation
//!   (`silent` < `[rules.offline] min_stale`, `stale_factor` >= 2). One
//!   incident, `kind` `traffic_drop`, id `{agency}:traffic:{since_ms}`,
//!   probe `traffic`, target `messages`, when the current rate < `drop_ratio`
//!   x usual and the units whose silence began within `within` are >=
//!   `min_units` and >= `min_ratio` of the active ones: `affected` = them
//!   (sorted, at most `max_affected`), `of_units` = the active units,
//!   summary `37 of 40 units fell silent at 14:02:10Z (messages 3.1/s,
//!   usual 40.2/s)`. While open, units active when it opened stay counted
//!   and its units are those still silent; it is updated when they change
//!   and ends when fewer than `min_units` are still silent, or the rate is
//!   back (>= `clear_ratio` x usual) with the silent ones below
//!   `min_ratio`. Each of its units carries an `agency-traffic-drop` reason
//!   (field `traffic`, the incident's id), so it comes before they go
//!   `lost.stale` one by one. A slow decline (one unit after another)
//!   never raises. Evaluated in `tick`, walking the units once. Off in
//!   cluster mode ([`Engine::clustered`]).
//! * **Baselines** ([`baseline`], whose top has the whole contract). Each
//!   field instance a baseline rule looks at (each probe, each transaction
//!   step `<probe>.<step>`, a unit's `net.bps`) keeps a stream per unit:
//!   hourly summaries (median, MAD, count) by event-time hour, 16-bit log
//!   coded, in a ring of `max(window, 24h x hour_of_day_days)`, and the
//!   hour being accumulated (at most 32 of its samples; no other raw
//!   samples). Replayed history builds it like live data (an earlier hour
//!   is filled in) but is never judged. A current value is judged against
//!   completed hours before its own: the hour-of-day profile once each of
//!   the last `hour_of_day_days` days has that hour, else the last
//!   `window`; none until they hold `min_samples` (no baseline: the
//!   condition does not hold, a raised flag clears). `above_baseline`:
//!   `value >= median x factor`, `value - median >= min_delta` and `>
//!   3 x MAD`; stays while `value >= median x clear` and `value - median >=
//!   min_delta / 2`. `below_baseline` mirrors it (`value <= median /
//!   factor`, `median - value >= min_delta`, no MAD gate; stays while
//!   `<= median / clear`). `for` and the flag's lifecycle are a threshold
//!   rule's. The reason's `observed` is the value, `threshold` the level
//!   that raised it (`max(median x factor, median + min_delta, median + 3
//!   MAD)`, below: `min(median / factor, median - min_delta)`), the message
//!   says what is usual: `probe["cad-api"].total_ms 912 ms, usual 84 ms
//!   (median, MAD 6 ms, 14:00-15:00 UTC profile of 3 days) for 2m` (or
//!   `last 24h`). The failure ratio has a baseline when a rule asks for it
//!   (`probe[*].failure_ratio`, `above_baseline`, with its `window`): it is
//!   judged like any other field. Streams are bounded per unit
//!   (`max_streams_per_unit`; more counted in
//!   `muster_baseline_streams_refused_total`) and go with a unit the
//!   engine forgets; `muster_baseline_streams` and `muster_baseline_bytes`
//!   say what is held (about 600 B a stream). A single-node collector
//!   saves them at a clean stop to `<store.path>/baselines.bin` (versioned,
//!   checksummed, at most `ingest.max_units` units) and loads them at
//!   start; a snapshot it cannot use (damaged, another version, another
//!   ring length because `window` or `hour_of_day_days` changed) is logged
//!   and the baselines are learned again. After a crash, the last clean
//!   stop's snapshot is loaded (the hours since are missing). Cluster mode
//!   keeps them in memory only.
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

pub mod baseline;
mod config;
mod engine;
mod field;
pub mod incident;
pub mod peers;
pub mod traffic;

mod skew;
pub mod words;

pub use config::IncidentConfig;
pub use config::{AutoRule, DEFAULT_AUTO_MAX, DEFAULT_AUTO_WINDOW_MS};
pub use config::{
    DEFAULT_RULES_TOML, RawClockSkew, RawIncidents, RawOff, RawOffAgency, RawOffline, RawRules,
    RawThreshold, RawValue, RulesConfig, RulesError,
};
pub use engine::Engine;
pub use peers::{PeerConfig, RawPeers};

#[cfg(test)]
mod tests;
