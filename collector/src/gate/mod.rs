//! The deploy gate (issue 16): does a *canary* cohort (the units on a new
//! CAD server, config or VPN concentrator) do worse than a *baseline*
//! cohort on the figures the terminals measure?
//!
//! # Contract
//!
//! [`stats`] is pure and synchronous: no I/O, no clock, no randomness, no
//! global state. The same inputs give the same [`stats::GateVerdict`], bit
//! for bit, on every collector. Everything it returns is `serde::Serialize`
//! (snake_case) because it is the body of `GET /api/v1/gates/{id}/verdict`:
//! the overall `verdict` is one of `pass`, `fail`, `inconclusive`,
//! `no_data`, and every metric carries its own verdict, p-value, medians or
//! failure ratios, sample counts, effect sizes and a human reason.
//!
//! * **Latencies** (milliseconds): Mann-Whitney U, one-sided (canary
//!   stochastically greater = slower), as `scipy.stats.mannwhitneyu` with
//!   `use_continuity=True`: the tie-corrected normal approximation, or the
//!   exact null distribution when both sides have at most 8 samples and no
//!   ties. A latency metric **fails** only if `p < alpha` **and** the
//!   canary's median is at least `median_ratio_floor` times the baseline's
//!   **and** at least `min_delta_ms` above it: a 2 % shift over a million
//!   samples is significant but does not fail.
//! * **Failure ratios**: Fisher's exact test, one-sided (the canary's
//!   failure proportion is greater), as `scipy.stats.fisher_exact(...,
//!   alternative="greater")`; zero counts (0/500 against 3/40) are fine. A
//!   failure metric fails only if `p < alpha` **and** the canary's ratio
//!   exceeds the baseline's by at least `min_ratio_delta`.
//! * **Sample sizes**: a metric with an empty side is `no_data`; one with
//!   fewer than the configured minimum on either side is `inconclusive`,
//!   never `pass`, whatever its p-value.
//! * **Overall** ([`stats::verdict`]): `no_data` if no metric has data on
//!   both sides; else `fail` if any metric fails (key or not); else
//!   `inconclusive` if a key metric is inconclusive or has no data, or if no
//!   metric passed; else `pass`. A non-key metric that cannot be judged is
//!   reported but does not hold the verdict back.
//! * **Bad input** (a NaN or infinite latency, more failures than attempts,
//!   a config out of range, a metric name twice) is a
//!   [`stats::StatsError`], never a verdict.
//!
//! Costs: a latency metric sorts a copy of each side, O(n log n) time and
//! O(n) memory (a million samples per side is fine); a failure metric is
//! O(failures) with early stopping in the tails.
//!
//! The agreement with SciPy is tested by `collector/tests/gate_scipy.rs`
//! against `tests/stats/scipy_reference.py` (SciPy pinned in
//! `tests/stats/requirements.txt`, installed by `tests/run.sh`).

pub mod book;
pub mod collect;
pub mod spec;
pub mod stats;
