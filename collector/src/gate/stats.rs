//! The gate's statistics, pure: Mann-Whitney U for latencies, Fisher's
//! exact test for failure ratios, effect-size floors, and the verdict over a
//! gate's metrics. See the module contract in [`crate::gate`].
//!
//! Conventions: the *canary* is SciPy's `x` (first sample, first row of the
//! 2×2 table), the *baseline* its `y`, and "greater" means the canary is
//! worse (slower, or failing more often).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------- errors

/// Which cohort a value belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Baseline,
    Canary,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Baseline => "baseline",
            Side::Canary => "canary",
        })
    }
}

/// Input the statistics refuse: never turned into a verdict.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error("{side} sample {index} is {value}: latencies must be finite")]
    NotFinite {
        side: Side,
        index: usize,
        value: f64,
    },
    #[error("the {side} sample is empty")]
    EmptySample { side: Side },
    #[error("{side}: {fail} failures out of {total}: more failures than attempts")]
    FailuresExceedTotal { side: Side, fail: u64, total: u64 },
    #[error("the exact Mann-Whitney distribution is not available here: {reason}")]
    ExactUnavailable { reason: &'static str },
    #[error("gate config {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("metric {name:?} is named more than once")]
    DuplicateMetric { name: String },
    #[error("metric {name:?}: {source}")]
    Metric {
        name: String,
        #[source]
        source: Box<StatsError>,
    },
}

// ------------------------------------------------------- normal tail

/// Where [`erfc`] switches from the series to the continued fraction.
const ERFC_CF_FROM: f64 = 1.5;

/// The upper tail of the standard normal distribution, P(Z > z): SciPy's
/// `special.ndtr(-z)`. Relative error below 1e-13 wherever the result is a
/// normal f64 (checked against SciPy by `tests/gate_scipy.rs`).
pub fn normal_sf(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    let x = z * std::f64::consts::FRAC_1_SQRT_2;
    if x >= 0.0 {
        0.5 * erfc(x)
    } else {
        1.0 - 0.5 * erfc(-x)
    }
}

/// The complementary error function for `x ≥ 0`: 1 − erf(x) by Kummer's
/// series (all terms positive) below [`ERFC_CF_FROM`], where the result
/// is ≥ 0.03 so the subtraction costs little; beyond it the continued
/// fraction erfc(x) = e^(−x²)/√π · 1/(x + ½/(x + 1/(x + 3⁄2/(x + …)))),
/// by the modified Lentz method, which keeps its relative accuracy far into
/// the tail.
fn erfc(x: f64) -> f64 {
    debug_assert!(x >= 0.0);
    if x.is_infinite() {
        return 0.0;
    }
    let two_over_sqrt_pi = std::f64::consts::FRAC_2_SQRT_PI;
    let x2 = x * x;
    if x < ERFC_CF_FROM {
        // erf(x) = 2/√π · e^(−x²) · Σ 2ⁿ x^(2n+1) / (1·3·…·(2n+1))
        let (mut term, mut sum) = (x, x);
        let mut n = 0.0;
        while term > sum * 1e-17 {
            n += 1.0;
            term *= 2.0 * x2 / (2.0 * n + 1.0);
            sum += term;
        }
        return 1.0 - two_over_sqrt_pi * (-x2).exp() * sum;
    }
    const TINY: f64 = 1e-300;
    let mut f = x;
    let (mut c, mut d) = (f, 0.0);
    for k in 1..1000 {
        let a = f64::from(k) / 2.0;
        d = x + a * d;
        if d == 0.0 {
            d = TINY;
        }
        d = 1.0 / d;
        c = x + a / c;
        if c == 0.0 {
            c = TINY;
        }
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (-x2).exp() * two_over_sqrt_pi / (2.0 * f)
}

// --------------------------------------------------------- Mann-Whitney

/// How [`mann_whitney_u`] computes its p-values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MwuMethod {
    /// Exact when both sides have at most [`EXACT_AUTO_MAX`] samples and
    /// there are no ties, else asymptotic. (SciPy's `"auto"` goes exact
    /// when *either* side is that small; with one side large that costs
    /// memory in proportion to its size, and the gate never judges such
    /// small samples anyway.)
    #[default]
    Auto,
    /// The exact null distribution: refused with ties or more than
    /// [`EXACT_MAX_TOTAL`] samples in all.
    Exact,
    /// The tie-corrected normal approximation with continuity correction.
    Asymptotic,
}

/// What a [`MannWhitney`] result was computed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MwuDistribution {
    Exact,
    Asymptotic,
}

/// [`MwuMethod::Auto`] is exact up to this many samples per side.
pub const EXACT_AUTO_MAX: usize = 8;
/// [`MwuMethod::Exact`] is refused beyond this many samples in all (the
/// counts are exact 128-bit integers; C(100, 50) ≈ 1.0e29 fits).
pub const EXACT_MAX_TOTAL: usize = 100;

/// A Mann-Whitney U test of canary against baseline, with the medians of
/// both (computed from the same sort).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MannWhitney {
    pub canary_count: usize,
    pub baseline_count: usize,
    /// The canary's U: pairs (canary, baseline) with the canary greater,
    /// ties counting one half. SciPy's `statistic` with `x` = canary.
    pub u: f64,
    /// `u / (canary_count · baseline_count)`: the probability that a random
    /// canary value exceeds a random baseline value (ties half). 0.5 = no
    /// difference.
    pub common_language_effect: f64,
    /// One-sided p-value: the canary is stochastically greater (slower).
    pub p_greater: f64,
    pub p_two_sided: f64,
    pub method: MwuDistribution,
    /// Whether any value occurs more than once across both samples.
    pub ties: bool,
    pub canary_median: f64,
    pub baseline_median: f64,
}

/// Mann-Whitney U of `canary` against `baseline`, as
/// `scipy.stats.mannwhitneyu(canary, baseline, use_continuity=True,
/// alternative=…, method=…)`. O(n log n) time, O(n) memory (a sorted copy
/// of each side).
pub fn mann_whitney_u(
    canary: &[f64],
    baseline: &[f64],
    method: MwuMethod,
) -> Result<MannWhitney, StatsError> {
    let x = sorted(canary, Side::Canary)?;
    let y = sorted(baseline, Side::Baseline)?;
    for (v, side) in [(&x, Side::Canary), (&y, Side::Baseline)] {
        if v.is_empty() {
            return Err(StatsError::EmptySample { side });
        }
    }
    let (n1, n2) = (x.len(), y.len());
    let r = rank_sums(&x, &y);
    // U1 + U2 = n1·n2, both halves exact in f64 up to 2^52 pairs.
    let pairs = n1 as u128 * n2 as u128;
    let u1 = r.twice_u1 as f64 / 2.0;
    let u_max = (r.twice_u1.max(2 * pairs - r.twice_u1)) as f64 / 2.0;
    let exact = match method {
        MwuMethod::Auto => n1 <= EXACT_AUTO_MAX && n2 <= EXACT_AUTO_MAX && !r.ties,
        MwuMethod::Exact if r.ties => {
            return Err(StatsError::ExactUnavailable {
                reason: "the samples have ties",
            });
        }
        MwuMethod::Exact if n1 + n2 > EXACT_MAX_TOTAL => {
            return Err(StatsError::ExactUnavailable {
                reason: "more than 100 samples in all",
            });
        }
        MwuMethod::Exact => true,
        MwuMethod::Asymptotic => false,
    };
    let (p_greater, p_two_sided) = if exact {
        // No ties: U is an integer.
        let counts = exact_counts(n1, n2);
        let sf = |u: u128| -> f64 {
            let total: i128 = counts.iter().sum();
            let upper: i128 = counts[u as usize..].iter().sum();
            upper as f64 / total as f64
        };
        let u_max_int = r.twice_u1.max(2 * pairs - r.twice_u1) / 2;
        (sf(r.twice_u1 / 2), 2.0 * sf(u_max_int))
    } else {
        let (n1f, n2f) = (n1 as f64, n2 as f64);
        (
            asymptotic_sf(u1, n1f, n2f, r.tie_term),
            2.0 * asymptotic_sf(u_max, n1f, n2f, r.tie_term),
        )
    };
    Ok(MannWhitney {
        canary_count: n1,
        baseline_count: n2,
        u: u1,
        common_language_effect: u1 / pairs as f64,
        p_greater: p_greater.clamp(0.0, 1.0),
        p_two_sided: p_two_sided.clamp(0.0, 1.0),
        method: if exact {
            MwuDistribution::Exact
        } else {
            MwuDistribution::Asymptotic
        },
        ties: r.ties,
        canary_median: median_sorted(&x),
        baseline_median: median_sorted(&y),
    })
}

/// The median of a sample, as `numpy.median` (the mean of the two middle
/// values for an even count).
pub fn median(sample: &[f64], side: Side) -> Result<f64, StatsError> {
    let v = sorted(sample, side)?;
    if v.is_empty() {
        return Err(StatsError::EmptySample { side });
    }
    Ok(median_sorted(&v))
}

/// A sorted copy; non-finite values refused, −0 made +0 so that it ties
/// with 0 as it does in SciPy's ranks.
fn sorted(sample: &[f64], side: Side) -> Result<Vec<f64>, StatsError> {
    let mut v = Vec::with_capacity(sample.len());
    for (index, &value) in sample.iter().enumerate() {
        if !value.is_finite() {
            return Err(StatsError::NotFinite { side, index, value });
        }
        v.push(value + 0.0);
    }
    v.sort_unstable_by(f64::total_cmp);
    Ok(v)
}

/// The median of a sorted, non-empty slice (the one home: the peers'
/// cohorts use it too).
pub fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct RankSums {
    /// 2·U1, an integer (ties count a half).
    twice_u1: u128,
    /// Σ (t³ − t) over groups of t tied values (SciPy's `tie_term`).
    tie_term: f64,
    ties: bool,
}

/// One merge walk over the two sorted samples: U1 = Σ over canary values
/// of (baseline values below + ½ baseline values equal), which is SciPy's
/// R1 − n1(n1+1)/2 with midranks, and the tie groups.
fn rank_sums(x: &[f64], y: &[f64]) -> RankSums {
    let (mut i, mut j) = (0, 0);
    let mut r = RankSums {
        twice_u1: 0,
        tie_term: 0.0,
        ties: false,
    };
    loop {
        let v = match (x.get(i), y.get(j)) {
            (Some(&a), Some(&b)) => a.min(b),
            (Some(&a), None) => a,
            (None, Some(&b)) => b,
            (None, None) => break,
        };
        let a = x[i..].iter().take_while(|&&w| w == v).count();
        let b = y[j..].iter().take_while(|&&w| w == v).count();
        r.twice_u1 += a as u128 * (2 * j as u128 + b as u128);
        let t = a + b;
        if t > 1 {
            r.ties = true;
            let t = t as f64;
            r.tie_term += t * t * t - t;
        }
        i += a;
        j += b;
    }
    r
}

/// P(U ≥ u) under the null by the tie-corrected normal approximation with
/// continuity correction (SciPy's `_get_mwu_z` and `ndtr(-z)`).
fn asymptotic_sf(u: f64, n1: f64, n2: f64, tie_term: f64) -> f64 {
    let mu = n1 * n2 / 2.0;
    let n = n1 + n2;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if variance <= 0.0 {
        // Every value tied: U = μ, and SciPy's z is −0.5/0 = −∞.
        return 1.0;
    }
    let z = (u - mu - 0.5) / variance.sqrt();
    normal_sf(z)
}

/// How many of the C(m+n, m) arrangements of m canary and n baseline values
/// (no ties) give each U = 0 ..= m·n: the coefficients of the Gaussian
/// binomial [m+n choose m]_q, built as Π_{i=1..m} (1 − q^(n+i)) / (1 − q^i),
/// each step exact in integers. O(m²n) time, O(mn) memory.
fn exact_counts(m: usize, n: usize) -> Vec<i128> {
    let degree = m * n;
    let mut c = vec![0i128; degree + 1];
    c[0] = 1;
    for i in 1..=m {
        // × (1 − q^(n+i)); terms past `degree` cancel in the division.
        let k = n + i;
        for d in (k..=degree).rev() {
            c[d] -= c[d - k];
        }
        // ÷ (1 − q^i), as a power series.
        for d in i..=degree {
            c[d] += c[d - i];
        }
    }
    c
}

// ------------------------------------------------------------- Fisher

/// Failures out of attempts for one cohort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub fail: u64,
    pub total: u64,
}

/// Terms below e^-50 of the largest are left out of the hypergeometric sums
/// (the distribution is log-concave: past that, every term is smaller).
const LOG_NEGLIGIBLE: f64 = -50.0;

/// One-sided Fisher exact test that the canary's failure proportion is
/// greater than the baseline's: `scipy.stats.fisher_exact([[canary.fail,
/// canary.total - canary.fail], [baseline.fail, baseline.total -
/// baseline.fail]], alternative="greater")`, i.e. P(X ≥ canary.fail) for X
/// hypergeometric with the table's margins. An empty row or column (no
/// attempts on a side, no failures or no successes at all) gives 1, as in
/// SciPy. Computed in log space from the mode outward: O(failures), with
/// the negligible tails skipped.
pub fn fisher_greater(canary: Counts, baseline: Counts) -> Result<f64, StatsError> {
    for (c, side) in [(canary, Side::Canary), (baseline, Side::Baseline)] {
        if c.fail > c.total {
            return Err(StatsError::FailuresExceedTotal {
                side,
                fail: c.fail,
                total: c.total,
            });
        }
    }
    // X ~ Hypergeometric(population n_all, successes k_fail, draws n_draw).
    let n_all = i128::from(canary.total) + i128::from(baseline.total);
    let k_fail = i128::from(canary.fail) + i128::from(baseline.fail);
    let n_draw = i128::from(canary.total);
    let a = i128::from(canary.fail);
    let lo = (n_draw + k_fail - n_all).max(0);
    let hi = k_fail.min(n_draw);
    if a <= lo {
        // Includes every degenerate table (lo == hi).
        return Ok(1.0);
    }
    // ln pmf(k+1) − ln pmf(k).
    let step = |k: i128| -> f64 {
        let num = (k_fail - k) as f64 * (n_draw - k) as f64;
        let den = (k + 1) as f64 * ((n_all - k_fail) - (n_draw - k) + 1) as f64;
        (num / den).ln()
    };
    // The mode, ⌊(n+1)(K+1)/(N+2)⌋, in f64: the product overflows i128 for
    // absurd totals, and a mode a little off only costs a few steps.
    let mode = (((n_draw + 1) as f64 * (k_fail + 1) as f64 / (n_all + 2) as f64).floor() as i128)
        .clamp(lo, hi);
    // Weights relative to the mode's (ln w(mode) = 0): all ≤ about 1.
    let mut total = 1.0;
    let mut tail = if a <= mode { 1.0 } else { 0.0 };
    let (mut lw, mut k) = (0.0, mode);
    while k < hi {
        lw += step(k);
        k += 1;
        if lw < LOG_NEGLIGIBLE {
            break;
        }
        let w = lw.exp();
        total += w;
        if k >= a {
            tail += w;
        }
    }
    let (mut lw, mut k) = (0.0, mode);
    while k > lo {
        k -= 1;
        lw -= step(k);
        if lw < LOG_NEGLIGIBLE {
            break;
        }
        let w = lw.exp();
        total += w;
        if k >= a {
            tail += w;
        }
    }
    if a <= mode {
        return Ok((tail / total).min(1.0));
    }
    // a beyond the mode: its own weight may be far below e^-50 (even below
    // f64's range), so sum the tail relative to it.
    let mut lw_a = 0.0;
    for k in mode..a {
        lw_a += step(k);
    }
    let (mut rel, mut lw, mut k) = (1.0, 0.0, a);
    while k < hi {
        lw += step(k);
        k += 1;
        if lw < LOG_NEGLIGIBLE {
            break;
        }
        rel += lw.exp();
    }
    Ok((lw_a + rel.ln() - total.ln()).exp().min(1.0))
}

// ------------------------------------------------------------ verdict

/// A gate's verdict, overall or for one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
    NoData,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
            Verdict::NoData => "no_data",
        })
    }
}

/// The thresholds a gate judges with. Every field has a default, so a
/// gate definition names only what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateConfig {
    /// Significance level for the one-sided tests.
    pub alpha: f64,
    /// Fewer latency samples than this on either side: `inconclusive`.
    #[serde(deserialize_with = "super::spec::whole::usize")]
    pub min_latency_samples: usize,
    /// Fewer attempts than this on either side: `inconclusive`.
    #[serde(deserialize_with = "super::spec::whole::u64")]
    pub min_failure_total: u64,
    /// A latency fails only if the canary's median is at least this many
    /// times the baseline's.
    pub median_ratio_floor: f64,
    /// … and at least this many milliseconds above it.
    pub min_delta_ms: f64,
    /// A failure ratio fails only if the canary's exceeds the baseline's by
    /// at least this much (0.02 = two percentage points).
    pub min_ratio_delta: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            alpha: 0.01,
            min_latency_samples: 30,
            min_failure_total: 30,
            median_ratio_floor: 1.2,
            min_delta_ms: 5.0,
            min_ratio_delta: 0.02,
        }
    }
}

impl GateConfig {
    pub fn validate(&self) -> Result<(), StatsError> {
        let bad = |field: &'static str, reason: &str| {
            Err(StatsError::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return bad("alpha", "must be between 0 and 1 (exclusive)");
        }
        if self.min_latency_samples == 0 {
            return bad("min_latency_samples", "must be at least 1");
        }
        if self.min_failure_total == 0 {
            return bad("min_failure_total", "must be at least 1");
        }
        if !(self.median_ratio_floor.is_finite() && self.median_ratio_floor >= 1.0) {
            return bad("median_ratio_floor", "must be a finite number ≥ 1");
        }
        if !(self.min_delta_ms.is_finite() && self.min_delta_ms >= 0.0) {
            return bad("min_delta_ms", "must be a finite number ≥ 0");
        }
        if !(self.min_ratio_delta.is_finite() && (0.0..=1.0).contains(&self.min_ratio_delta)) {
            return bad("min_ratio_delta", "must be between 0 and 1");
        }
        Ok(())
    }
}

/// One metric of a gate, with both cohorts' data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricInput {
    pub name: String,
    /// A key metric must be judged: if it fails the gate fails, if it cannot
    /// be judged the gate is inconclusive.
    pub key: bool,
    #[serde(flatten)]
    pub kind: MetricKind,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricKind {
    /// Latency samples in milliseconds.
    Latency {
        baseline: Vec<f64>,
        canary: Vec<f64>,
    },
    /// Failures out of attempts.
    Failures {
        baseline_fail: u64,
        baseline_total: u64,
        canary_fail: u64,
        canary_total: u64,
    },
}

/// The gate's answer: `GET /api/v1/gates/{id}/verdict`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateVerdict {
    pub verdict: Verdict,
    pub reason: String,
    pub metrics: Vec<MetricVerdict>,
    /// The thresholds it was judged with.
    pub config: GateConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricVerdict {
    pub name: String,
    pub key: bool,
    pub verdict: Verdict,
    pub reason: String,
    #[serde(flatten)]
    pub stats: MetricStats,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricStats {
    Latency(LatencyStats),
    Failures(FailureStats),
}

/// A latency metric's statistics. The `Option`s are `null` when a side has
/// no samples (and `median_ratio` when the baseline median is 0).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyStats {
    pub baseline_count: usize,
    pub canary_count: usize,
    pub baseline_median_ms: Option<f64>,
    pub canary_median_ms: Option<f64>,
    /// Canary median / baseline median.
    pub median_ratio: Option<f64>,
    /// Canary median − baseline median.
    pub median_delta_ms: Option<f64>,
    /// The canary's Mann-Whitney U.
    pub u: Option<f64>,
    /// U / (n1·n2): P(canary > baseline), ties half.
    pub common_language_effect: Option<f64>,
    /// One-sided (canary slower): the p-value the verdict uses.
    pub p_value: Option<f64>,
    pub p_value_two_sided: Option<f64>,
    pub method: Option<MwuDistribution>,
}

/// A failure-ratio metric's statistics. Ratios are `null` for a side with
/// no attempts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureStats {
    pub baseline_fail: u64,
    pub baseline_total: u64,
    pub canary_fail: u64,
    pub canary_total: u64,
    pub baseline_ratio: Option<f64>,
    pub canary_ratio: Option<f64>,
    /// Canary ratio − baseline ratio.
    pub ratio_delta: Option<f64>,
    /// One-sided Fisher exact test (canary fails more often).
    pub p_value: Option<f64>,
}

/// Judges every metric and the gate as a whole (the rules are in the
/// module contract, [`crate::gate`]).
pub fn verdict(metrics: &[MetricInput], config: &GateConfig) -> Result<GateVerdict, StatsError> {
    config.validate()?;
    let mut names = BTreeSet::new();
    for m in metrics {
        if !names.insert(m.name.as_str()) {
            return Err(StatsError::DuplicateMetric {
                name: m.name.clone(),
            });
        }
    }
    let reports = metrics
        .iter()
        .map(|m| {
            judge(m, config).map_err(|e| StatsError::Metric {
                name: m.name.clone(),
                source: Box::new(e),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (verdict, reason) = overall(&reports);
    Ok(GateVerdict {
        verdict,
        reason,
        metrics: reports,
        config: config.clone(),
    })
}

fn overall(reports: &[MetricVerdict]) -> (Verdict, String) {
    let names = |pick: &dyn Fn(&MetricVerdict) -> bool| -> Vec<&str> {
        reports
            .iter()
            .filter(|r| pick(r))
            .map(|r| r.name.as_str())
            .collect()
    };
    if reports.iter().all(|r| r.verdict == Verdict::NoData) {
        return (
            Verdict::NoData,
            if reports.is_empty() {
                "the gate has no metrics".to_owned()
            } else {
                "no metric has data from both cohorts".to_owned()
            },
        );
    }
    let failed = names(&|r| r.verdict == Verdict::Fail);
    if !failed.is_empty() {
        let key = names(&|r| r.verdict == Verdict::Fail && r.key);
        let reason = if key.is_empty() {
            format!("failed (no key metric among them): {}", failed.join(", "))
        } else {
            format!(
                "key metric failed: {}{}",
                key.join(", "),
                if failed.len() > key.len() {
                    format!(" (all failed: {})", failed.join(", "))
                } else {
                    String::new()
                }
            )
        };
        return (Verdict::Fail, reason);
    }
    if let Some(r) = reports
        .iter()
        .find(|r| r.key && matches!(r.verdict, Verdict::Inconclusive | Verdict::NoData))
    {
        return (
            Verdict::Inconclusive,
            format!("key metric {} is {}: {}", r.name, r.verdict, r.reason),
        );
    }
    let passed = names(&|r| r.verdict == Verdict::Pass);
    if passed.is_empty() {
        return (
            Verdict::Inconclusive,
            "no metric could be judged: too few samples".to_owned(),
        );
    }
    let unjudged = names(&|r| r.verdict != Verdict::Pass);
    let mut reason = format!("passed: {}", passed.join(", "));
    if !unjudged.is_empty() {
        reason += &format!(
            "; not judged (not key, too few samples or no data): {}",
            unjudged.join(", ")
        );
    }
    (Verdict::Pass, reason)
}

fn judge(m: &MetricInput, config: &GateConfig) -> Result<MetricVerdict, StatsError> {
    let (verdict, reason, stats) = match &m.kind {
        MetricKind::Latency { baseline, canary } => judge_latency(baseline, canary, config)?,
        MetricKind::Failures {
            baseline_fail,
            baseline_total,
            canary_fail,
            canary_total,
        } => judge_failures(
            Counts {
                fail: *baseline_fail,
                total: *baseline_total,
            },
            Counts {
                fail: *canary_fail,
                total: *canary_total,
            },
            config,
        )?,
    };
    Ok(MetricVerdict {
        name: m.name.clone(),
        key: m.key,
        verdict,
        reason,
        stats,
    })
}

fn fmt_p(p: f64) -> String {
    if p >= 0.001 {
        format!("{p:.3}")
    } else {
        format!("{p:.1e}")
    }
}

fn too_few(what: &str, baseline: u64, canary: u64, min: u64) -> String {
    format!("too few {what}: baseline {baseline}, canary {canary}; at least {min} per side needed")
}

fn no_data(baseline: bool, canary: bool, what: &str) -> String {
    match (baseline, canary) {
        (true, true) => format!("no {what} from either cohort"),
        (true, false) => format!("no {what} from the baseline"),
        _ => format!("no {what} from the canary"),
    }
}

fn judge_latency(
    baseline: &[f64],
    canary: &[f64],
    config: &GateConfig,
) -> Result<(Verdict, String, MetricStats), StatsError> {
    let mut stats = LatencyStats {
        baseline_count: baseline.len(),
        canary_count: canary.len(),
        baseline_median_ms: None,
        canary_median_ms: None,
        median_ratio: None,
        median_delta_ms: None,
        u: None,
        common_language_effect: None,
        p_value: None,
        p_value_two_sided: None,
        method: None,
    };
    if baseline.is_empty() || canary.is_empty() {
        // Still refuse bad values, and show the side that has data.
        if !baseline.is_empty() {
            stats.baseline_median_ms = Some(median(baseline, Side::Baseline)?);
        }
        if !canary.is_empty() {
            stats.canary_median_ms = Some(median(canary, Side::Canary)?);
        }
        let reason = no_data(baseline.is_empty(), canary.is_empty(), "latency samples");
        return Ok((Verdict::NoData, reason, MetricStats::Latency(stats)));
    }
    let mw = mann_whitney_u(canary, baseline, MwuMethod::Auto)?;
    let (bm, cm) = (mw.baseline_median, mw.canary_median);
    let delta = cm - bm;
    stats.baseline_median_ms = Some(bm);
    stats.canary_median_ms = Some(cm);
    stats.median_ratio = (bm != 0.0).then(|| cm / bm);
    stats.median_delta_ms = Some(delta);
    stats.u = Some(mw.u);
    stats.common_language_effect = Some(mw.common_language_effect);
    stats.p_value = Some(mw.p_greater);
    stats.p_value_two_sided = Some(mw.p_two_sided);
    stats.method = Some(mw.method);
    let min = config.min_latency_samples;
    let (verdict, reason) = if baseline.len() < min || canary.len() < min {
        (
            Verdict::Inconclusive,
            too_few(
                "latency samples",
                baseline.len() as u64,
                canary.len() as u64,
                min as u64,
            ),
        )
    } else {
        let medians = format!(
            "median {cm:.1} ms against {bm:.1} ms ({}{delta:+.1} ms)",
            stats
                .median_ratio
                .map(|r| format!("{r:.2}×, "))
                .unwrap_or_default()
        );
        let p = mw.p_greater;
        // Compared without dividing: a zero baseline median is fine.
        let ratio_ok = cm >= config.median_ratio_floor * bm;
        let delta_ok = delta >= config.min_delta_ms;
        if p >= config.alpha {
            (
                Verdict::Pass,
                format!(
                    "no evidence the canary is slower: p = {} ≥ alpha {}; {medians}",
                    fmt_p(p),
                    config.alpha
                ),
            )
        } else if !ratio_ok {
            (
                Verdict::Pass,
                format!(
                    "slower (p = {}) but below the {}× median floor: {medians}",
                    fmt_p(p),
                    config.median_ratio_floor
                ),
            )
        } else if !delta_ok {
            (
                Verdict::Pass,
                format!(
                    "slower (p = {}) but below the {} ms median floor: {medians}",
                    fmt_p(p),
                    config.min_delta_ms
                ),
            )
        } else {
            (
                Verdict::Fail,
                format!(
                    "canary slower: {medians}, p = {} < alpha {}",
                    fmt_p(p),
                    config.alpha
                ),
            )
        }
    };
    Ok((verdict, reason, MetricStats::Latency(stats)))
}

fn judge_failures(
    baseline: Counts,
    canary: Counts,
    config: &GateConfig,
) -> Result<(Verdict, String, MetricStats), StatsError> {
    let ratio = |c: Counts| (c.total > 0).then(|| c.fail as f64 / c.total as f64);
    // Refuses failures > total on either side, even without data on the other.
    let p = fisher_greater(canary, baseline)?;
    let (br, cr) = (ratio(baseline), ratio(canary));
    let delta = br.zip(cr).map(|(b, c)| c - b);
    let mut stats = FailureStats {
        baseline_fail: baseline.fail,
        baseline_total: baseline.total,
        canary_fail: canary.fail,
        canary_total: canary.total,
        baseline_ratio: br,
        canary_ratio: cr,
        ratio_delta: delta,
        p_value: None,
    };
    let (Some(br), Some(cr), Some(delta)) = (br, cr, delta) else {
        let reason = no_data(baseline.total == 0, canary.total == 0, "attempts");
        return Ok((Verdict::NoData, reason, MetricStats::Failures(stats)));
    };
    stats.p_value = Some(p);
    let min = config.min_failure_total;
    let ratios = format!(
        "{}/{} ({:.2} %) against {}/{} ({:.2} %)",
        canary.fail,
        canary.total,
        cr * 100.0,
        baseline.fail,
        baseline.total,
        br * 100.0
    );
    let (verdict, reason) = if baseline.total < min || canary.total < min {
        (
            Verdict::Inconclusive,
            too_few("attempts", baseline.total, canary.total, min),
        )
    } else if p >= config.alpha {
        (
            Verdict::Pass,
            format!(
                "no evidence the canary fails more often: p = {} ≥ alpha {}; {ratios}",
                fmt_p(p),
                config.alpha
            ),
        )
    } else if delta < config.min_ratio_delta {
        (
            Verdict::Pass,
            format!(
                "fails more often (p = {}) but by less than {:.2} percentage points: {ratios}",
                fmt_p(p),
                config.min_ratio_delta * 100.0
            ),
        )
    } else {
        (
            Verdict::Fail,
            format!(
                "canary fails more often: {ratios}, p = {} < alpha {}",
                fmt_p(p),
                config.alpha
            ),
        )
    };
    Ok((verdict, reason, MetricStats::Failures(stats)))
}

#[cfg(test)]
mod tests {
    use super::*;

    use muster_testkit::rng::Rng;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        a == b || (a - b).abs() <= rel * a.abs().max(b.abs())
    }

    #[track_caller]
    fn assert_close(a: f64, b: f64, rel: f64) {
        assert!(close(a, b, rel), "{a} != {b} (relative tolerance {rel})");
    }

    fn latency(name: &str, key: bool, baseline: Vec<f64>, canary: Vec<f64>) -> MetricInput {
        MetricInput {
            name: name.into(),
            key,
            kind: MetricKind::Latency { baseline, canary },
        }
    }

    fn failures(name: &str, key: bool, b: (u64, u64), c: (u64, u64)) -> MetricInput {
        MetricInput {
            name: name.into(),
            key,
            kind: MetricKind::Failures {
                baseline_fail: b.0,
                baseline_total: b.1,
                canary_fail: c.0,
                canary_total: c.1,
            },
        }
    }

    fn latency_stats(v: &MetricVerdict) -> &LatencyStats {
        match &v.stats {
            MetricStats::Latency(s) => s,
            MetricStats::Failures(_) => panic!("not a latency metric"),
        }
    }

    // --- normal tail

    #[test]
    fn normal_tail_known_values() {
        // (z, P(Z > z)) from tables and SciPy's ndtr(-z).
        for (z, p) in [
            (0.0, 0.5),
            (1.0, 0.15865525393145707),
            (-1.0, 0.8413447460685429),
            (1.959963984540054, 0.025),
            (3.0, 0.0013498980316300933),
            (10.0, 7.61985302416047e-24),
            (30.0, 4.906713927147908e-198),
        ] {
            assert_close(normal_sf(z), p, 1e-12);
        }
        assert_eq!(normal_sf(f64::INFINITY), 0.0);
        assert_eq!(normal_sf(f64::NEG_INFINITY), 1.0);
        assert!(normal_sf(f64::NAN).is_nan());
    }

    // --- Mann-Whitney

    #[test]
    fn exact_counts_are_the_null_distribution() {
        // m = n = 3: U = 0..=9 over C(6, 3) = 20 arrangements.
        assert_eq!(exact_counts(3, 3), [1, 1, 2, 3, 3, 3, 3, 2, 1, 1]);
        assert_eq!(exact_counts(1, 4), [1, 1, 1, 1, 1]);
        assert_eq!(exact_counts(0, 4), [1]);
        let binom = |n: u32, k: u32| {
            (0..k).fold(1i128, |acc, i| acc * i128::from(n - i) / i128::from(i + 1))
        };
        for (m, n) in [(2, 7), (7, 2), (8, 8), (5, 11), (50, 50), (30, 70)] {
            let c = exact_counts(m, n);
            assert_eq!(c.len(), m * n + 1);
            assert_eq!(
                c.iter().sum::<i128>(),
                binom((m + n) as u32, m as u32),
                "{m} {n}"
            );
            assert!(c.iter().all(|&v| v > 0), "{m} {n}");
            assert!(c.iter().eq(c.iter().rev()), "symmetric: {m} {n}");
        }
    }

    #[test]
    fn textbook_example_matches_scipy_docs() {
        // SciPy's mannwhitneyu docs (Conover): ages of male and female
        // students; U = 17.
        let males = [19.0, 22.0, 16.0, 29.0, 24.0];
        let females = [20.0, 11.0, 17.0, 12.0];
        let exact = mann_whitney_u(&males, &females, MwuMethod::Auto).unwrap();
        assert_eq!(exact.method, MwuDistribution::Exact);
        assert_eq!(exact.u, 17.0);
        assert_close(exact.p_two_sided, 0.1111111111111111, 1e-14);
        assert_close(exact.p_greater, 0.05555555555555555, 1e-14);
        assert_close(exact.common_language_effect, 17.0 / 20.0, 1e-15);
        assert_eq!((exact.canary_median, exact.baseline_median), (22.0, 14.5));
        let asym = mann_whitney_u(&males, &females, MwuMethod::Asymptotic).unwrap();
        assert_eq!(asym.method, MwuDistribution::Asymptotic);
        assert_close(asym.p_two_sided, 0.11134688653314041, 1e-12);
        assert_close(asym.p_greater, 0.055673443266570206, 1e-12);
        // Fully separated, exact: 1/C(6,3) each way.
        let r = mann_whitney_u(&[4.0, 5.0, 6.0], &[1.0, 2.0, 3.0], MwuMethod::Auto).unwrap();
        assert_eq!((r.u, r.p_greater, r.p_two_sided), (9.0, 0.05, 0.1));
        let r = mann_whitney_u(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0], MwuMethod::Auto).unwrap();
        assert_eq!((r.u, r.p_greater, r.p_two_sided), (0.0, 1.0, 0.1));
    }

    #[test]
    fn ties_use_midranks_and_the_tie_correction() {
        // SciPy: mannwhitneyu([1,2,2,3], [2,3,3,4], method="asymptotic").
        let r = mann_whitney_u(
            &[1.0, 2.0, 2.0, 3.0],
            &[2.0, 3.0, 3.0, 4.0],
            MwuMethod::Auto,
        )
        .unwrap();
        assert!(r.ties);
        assert_eq!(
            r.method,
            MwuDistribution::Asymptotic,
            "auto never goes exact with ties"
        );
        assert_eq!(r.u, 3.0);
        assert_close(r.p_two_sided, 0.1720337089218229, 1e-12);
        assert_close(r.p_greater, 0.9524598065992065, 1e-12);
        assert!(matches!(
            mann_whitney_u(&[1.0, 2.0], &[2.0, 3.0], MwuMethod::Exact),
            Err(StatsError::ExactUnavailable { .. })
        ));
        // −0 ties with 0, as in SciPy.
        let r = mann_whitney_u(&[-0.0], &[0.0], MwuMethod::Asymptotic).unwrap();
        assert!(r.ties);
        assert_eq!(r.u, 0.5);
    }

    #[test]
    fn all_equal_samples_give_p_one() {
        let r = mann_whitney_u(&[7.0; 40], &[7.0; 60], MwuMethod::Auto).unwrap();
        assert_eq!(r.u, 1200.0);
        assert_eq!(r.common_language_effect, 0.5);
        assert_eq!((r.p_greater, r.p_two_sided), (1.0, 1.0));
        let r = mann_whitney_u(&[1.0; 3], &[1.0; 4], MwuMethod::Auto).unwrap();
        assert_eq!((r.u, r.p_greater, r.p_two_sided), (6.0, 1.0, 1.0));
    }

    #[test]
    fn bad_samples_are_errors() {
        assert_eq!(
            mann_whitney_u(&[], &[1.0], MwuMethod::Auto),
            Err(StatsError::EmptySample { side: Side::Canary })
        );
        assert_eq!(
            mann_whitney_u(&[1.0], &[], MwuMethod::Auto),
            Err(StatsError::EmptySample {
                side: Side::Baseline
            })
        );
        let err = mann_whitney_u(&[1.0], &[2.0, f64::NAN], MwuMethod::Auto).unwrap_err();
        assert!(matches!(
            err,
            StatsError::NotFinite {
                side: Side::Baseline,
                index: 1,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "baseline sample 1 is NaN: latencies must be finite"
        );
        assert!(matches!(
            mann_whitney_u(&[f64::INFINITY], &[2.0], MwuMethod::Auto),
            Err(StatsError::NotFinite { index: 0, .. })
        ));
        assert!(matches!(
            mann_whitney_u(&[1.0; 60], &[2.0; 41], MwuMethod::Exact),
            Err(StatsError::ExactUnavailable { .. })
        ));
    }

    #[test]
    fn exact_and_asymptotic_agree_on_moderate_samples() {
        let mut rng = Rng(7);
        let x = rng.latencies(40, 110.0, 0.3);
        let y = rng.latencies(45, 100.0, 0.3);
        let e = mann_whitney_u(&x, &y, MwuMethod::Exact).unwrap();
        let a = mann_whitney_u(&x, &y, MwuMethod::Asymptotic).unwrap();
        assert_eq!(e.u, a.u);
        assert!((e.p_greater - a.p_greater).abs() < 0.01, "{e:?} {a:?}");
        assert!((e.p_two_sided - a.p_two_sided).abs() < 0.01, "{e:?} {a:?}");
    }

    // --- Fisher

    #[test]
    fn fisher_textbook_and_zero_counts() {
        let c = |fail, total| Counts { fail, total };
        // Lady tasting tea: [[3, 1], [1, 3]], P = 17/70.
        assert_close(
            fisher_greater(c(3, 4), c(1, 4)).unwrap(),
            17.0 / 70.0,
            1e-14,
        );
        // SciPy: fisher_exact([[3, 37], [0, 500]], alternative="greater").
        assert_close(
            fisher_greater(c(3, 40), c(0, 500)).unwrap(),
            0.0003785675585994226,
            1e-12,
        );
        // = C(40,3)/C(540,3): all three failures landed in the canary.
        assert_close(
            fisher_greater(c(3, 40), c(0, 500)).unwrap(),
            (40.0 * 39.0 * 38.0) / (540.0 * 539.0 * 538.0),
            1e-13,
        );
        // Empty rows or columns: p = 1, as SciPy.
        for (canary, baseline) in [
            (c(0, 0), c(0, 0)),
            (c(0, 0), c(3, 40)),
            (c(0, 500), c(0, 40)),
            (c(40, 40), c(500, 500)),
        ] {
            assert_eq!(fisher_greater(canary, baseline).unwrap(), 1.0);
        }
        // The canary better: no evidence it is worse.
        assert!(fisher_greater(c(0, 500), c(3, 40)).unwrap() > 0.99);
        assert_eq!(
            fisher_greater(c(5, 4), c(0, 1)),
            Err(StatsError::FailuresExceedTotal {
                side: Side::Canary,
                fail: 5,
                total: 4
            })
        );
    }

    #[test]
    fn fisher_far_tail_and_large_counts() {
        let c = |fail, total| Counts { fail, total };
        // Every failure in the canary: P = C(n_c, k)/C(N, k), in closed form.
        let p = fisher_greater(c(200, 1000), c(0, 1000)).unwrap();
        let log_expected: f64 = (0..200)
            .map(|i| ((1000 - i) as f64 / (2000 - i) as f64).ln())
            .sum();
        assert!(p > 0.0);
        assert_close(p.ln(), log_expected, 1e-12);
        // Large, equal cohorts: no evidence either way.
        let p = fisher_greater(c(10_000, 1_000_000), c(10_000, 1_000_000)).unwrap();
        assert!((0.45..0.55).contains(&p), "{p}");
    }

    // --- verdict

    #[test]
    fn three_times_slower_canary_fails() {
        let mut rng = Rng(1);
        let baseline = rng.latencies(300, 100.0, 0.4);
        let canary = rng.latencies(300, 300.0, 0.4);
        let v = verdict(
            &[latency("cad_api", true, baseline, canary)],
            &GateConfig::default(),
        )
        .unwrap();
        assert_eq!(v.verdict, Verdict::Fail, "{v:#?}");
        let s = latency_stats(&v.metrics[0]);
        assert!(s.p_value.unwrap() < 1e-20);
        assert!((2.5..3.5).contains(&s.median_ratio.unwrap()));
        assert!(s.common_language_effect.unwrap() > 0.9);
        assert!(
            v.metrics[0].reason.starts_with("canary slower"),
            "{}",
            v.metrics[0].reason
        );
    }

    #[test]
    fn unchanged_cohort_passes() {
        let mut rng = Rng(2);
        let baseline = rng.latencies(500, 100.0, 0.4);
        let canary = rng.latencies(500, 100.0, 0.4);
        let v = verdict(
            &[
                latency("cad_api", true, baseline, canary),
                failures("probe_failures", true, (12, 2000), (7, 1000)),
            ],
            &GateConfig::default(),
        )
        .unwrap();
        assert_eq!(v.verdict, Verdict::Pass, "{v:#?}");
        assert!(v.metrics.iter().all(|m| m.verdict == Verdict::Pass));
    }

    #[test]
    fn two_percent_shift_over_a_million_samples_passes_on_the_effect_floor() {
        let mut rng = Rng(3);
        let baseline = rng.latencies(1_000_000, 100.0, 0.3);
        let canary = rng.latencies(1_000_000, 102.0, 0.3);
        let v = verdict(
            &[latency("cad_api", true, baseline, canary)],
            &GateConfig::default(),
        )
        .unwrap();
        assert_eq!(v.verdict, Verdict::Pass, "{v:#?}");
        let s = latency_stats(&v.metrics[0]);
        assert!(s.p_value.unwrap() < 1e-100, "significant, but small: {s:?}");
        assert!((1.01..1.03).contains(&s.median_ratio.unwrap()));
        assert_eq!((s.baseline_count, s.canary_count), (1_000_000, 1_000_000));
        assert!(
            v.metrics[0].reason.contains("median floor"),
            "{}",
            v.metrics[0].reason
        );
    }

    #[test]
    fn absolute_floor_holds_a_fast_metric() {
        // 3x slower, but 1 ms against 3 ms: below the 5 ms floor.
        let mut rng = Rng(4);
        let baseline = rng.latencies(400, 1.0, 0.2);
        let canary = rng.latencies(400, 3.0, 0.2);
        let v = verdict(
            &[latency("dns", true, baseline, canary)],
            &GateConfig::default(),
        )
        .unwrap();
        assert_eq!(v.verdict, Verdict::Pass, "{v:#?}");
        assert!(v.metrics[0].reason.contains("5 ms median floor"));
    }

    #[test]
    fn ten_noisy_samples_are_inconclusive() {
        let mut rng = Rng(5);
        let baseline = rng.latencies(1000, 100.0, 0.4);
        let canary = rng.latencies(10, 100.0, 1.5);
        let v = verdict(
            &[latency("cad_api", true, baseline.clone(), canary)],
            &GateConfig::default(),
        )
        .unwrap();
        assert_eq!(v.verdict, Verdict::Inconclusive, "{v:#?}");
        assert_eq!(v.metrics[0].verdict, Verdict::Inconclusive);
        let s = latency_stats(&v.metrics[0]);
        assert_eq!(s.canary_count, 10);
        assert!(s.p_value.is_some(), "the statistics are still shown");
        // Even ten clearly slower samples do not fail: too few to judge.
        let canary = rng.latencies(10, 1000.0, 0.1);
        let v = verdict(
            &[latency("cad_api", true, baseline, canary)],
            &GateConfig::default(),
        )
        .unwrap();
        assert_eq!(v.verdict, Verdict::Inconclusive, "{v:#?}");
    }

    #[test]
    fn empty_cohorts_are_no_data() {
        let v = verdict(
            &[
                latency("cad_api", true, vec![], vec![120.0; 50]),
                latency("vpn", false, vec![], vec![]),
                failures("probe_failures", true, (0, 0), (0, 0)),
            ],
            &GateConfig::default(),
        )
        .unwrap();
        assert_eq!(v.verdict, Verdict::NoData, "{v:#?}");
        assert!(v.metrics.iter().all(|m| m.verdict == Verdict::NoData));
        assert_eq!(latency_stats(&v.metrics[0]).canary_median_ms, Some(120.0));
        assert_eq!(v.metrics[0].reason, "no latency samples from the baseline");
        assert_eq!(v.metrics[2].reason, "no attempts from either cohort");
        let v = verdict(&[], &GateConfig::default()).unwrap();
        assert_eq!(v.verdict, Verdict::NoData);
    }

    #[test]
    fn zero_failure_counts() {
        let config = GateConfig::default();
        // 0/500 against 3/40: the canary fails.
        let v = verdict(
            &[failures("probe_failures", true, (0, 500), (3, 40))],
            &config,
        )
        .unwrap();
        assert_eq!(v.verdict, Verdict::Fail, "{v:#?}");
        // No failures anywhere: pass, p = 1.
        let v = verdict(
            &[failures("probe_failures", true, (0, 500), (0, 40))],
            &config,
        )
        .unwrap();
        assert_eq!(v.verdict, Verdict::Pass, "{v:#?}");
        // 0/0 on one side: no data; below the minimum: inconclusive.
        let v = verdict(
            &[failures("probe_failures", true, (0, 500), (0, 0))],
            &config,
        )
        .unwrap();
        assert_eq!(v.verdict, Verdict::NoData, "{v:#?}");
        let v = verdict(
            &[failures("probe_failures", true, (0, 500), (3, 10))],
            &config,
        )
        .unwrap();
        assert_eq!(v.verdict, Verdict::Inconclusive, "{v:#?}");
        // Significant but within the 2-point floor: 1.0 % against 1.5 %.
        let v = verdict(
            &[failures(
                "probe_failures",
                true,
                (10_000, 1_000_000),
                (15_000, 1_000_000),
            )],
            &config,
        )
        .unwrap();
        assert_eq!(v.verdict, Verdict::Pass, "{v:#?}");
        assert!(v.metrics[0].reason.contains("percentage points"));
    }

    #[test]
    fn combining_metrics() {
        let config = GateConfig::default();
        let mut rng = Rng(6);
        let slow = latency(
            "slow",
            false,
            rng.latencies(100, 100.0, 0.2),
            rng.latencies(100, 300.0, 0.2),
        );
        let few = latency("few", true, vec![100.0; 40], vec![100.0; 5]);
        let fine = latency("fine", true, vec![100.0; 40], vec![100.0; 40]);
        // A non-key metric failing fails the gate.
        let v = verdict(&[fine.clone(), slow.clone()], &config).unwrap();
        assert_eq!(v.verdict, Verdict::Fail);
        assert_eq!(v.reason, "failed (no key metric among them): slow");
        // A fail wins over a key metric that cannot be judged.
        let v = verdict(&[few.clone(), slow.clone()], &config).unwrap();
        assert_eq!(v.verdict, Verdict::Fail);
        // A key metric that cannot be judged holds the gate back …
        let v = verdict(&[fine.clone(), few.clone()], &config).unwrap();
        assert_eq!(v.verdict, Verdict::Inconclusive);
        assert!(
            v.reason.starts_with("key metric few is inconclusive"),
            "{}",
            v.reason
        );
        let no_data = latency("gone", true, vec![], vec![1.0]);
        let v = verdict(&[fine.clone(), no_data], &config).unwrap();
        assert_eq!(v.verdict, Verdict::Inconclusive);
        // … a non-key one does not.
        let mut few_non_key = few.clone();
        few_non_key.key = false;
        let v = verdict(&[fine.clone(), few_non_key.clone()], &config).unwrap();
        assert_eq!(v.verdict, Verdict::Pass, "{v:#?}");
        assert!(v.reason.contains("not judged"));
        // Nothing judged at all: inconclusive.
        let v = verdict(&[few_non_key], &config).unwrap();
        assert_eq!(v.verdict, Verdict::Inconclusive);
        // Same name twice.
        assert_eq!(
            verdict(&[fine.clone(), fine], &config),
            Err(StatsError::DuplicateMetric {
                name: "fine".into()
            })
        );
    }

    #[test]
    fn bad_input_is_an_error_naming_the_metric() {
        let config = GateConfig::default();
        let err = verdict(
            &[latency("cad_api", true, vec![1.0, f64::NAN], vec![1.0])],
            &config,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "metric \"cad_api\": baseline sample 1 is NaN: latencies must be finite"
        );
        // Refused even when the other side is empty.
        assert!(verdict(&[latency("cad_api", true, vec![], vec![f64::NAN])], &config).is_err());
        assert!(verdict(&[failures("f", true, (5, 4), (0, 0))], &config).is_err());
        for bad in [
            GateConfig {
                alpha: 0.0,
                ..config.clone()
            },
            GateConfig {
                alpha: f64::NAN,
                ..config.clone()
            },
            GateConfig {
                min_latency_samples: 0,
                ..config.clone()
            },
            GateConfig {
                median_ratio_floor: 0.5,
                ..config.clone()
            },
            GateConfig {
                min_delta_ms: -1.0,
                ..config.clone()
            },
            GateConfig {
                min_ratio_delta: f64::INFINITY,
                ..config.clone()
            },
        ] {
            assert!(
                matches!(verdict(&[], &bad), Err(StatsError::InvalidConfig { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn zero_baseline_median() {
        // Medians 0 and 10 ms: no ratio, but the floors compare without it.
        let v = verdict(
            &[latency("queue", true, vec![0.0; 50], vec![10.0; 50])],
            &GateConfig::default(),
        )
        .unwrap();
        assert_eq!(v.verdict, Verdict::Fail, "{v:#?}");
        let s = latency_stats(&v.metrics[0]);
        assert_eq!(s.median_ratio, None);
        assert_eq!(s.median_delta_ms, Some(10.0));
    }

    #[test]
    fn serializes_snake_case() {
        let v = verdict(
            &[
                latency("cad_api", true, vec![], vec![]),
                failures("probe_failures", false, (0, 500), (3, 40)),
            ],
            &GateConfig::default(),
        )
        .unwrap();
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["verdict"], "fail");
        assert_eq!(json["metrics"][0]["kind"], "latency");
        assert_eq!(json["metrics"][0]["verdict"], "no_data");
        assert_eq!(json["metrics"][0]["p_value"], serde_json::Value::Null);
        assert_eq!(json["metrics"][1]["kind"], "failures");
        assert_eq!(json["metrics"][1]["canary_fail"], 3);
        assert!(json["metrics"][1]["p_value"].as_f64().unwrap() < 0.001);
        assert_eq!(json["config"]["alpha"], 0.01);
        assert_eq!(json["config"]["min_latency_samples"], 30);
        let config: GateConfig = serde_json::from_str(r#"{"alpha": 0.05}"#).unwrap();
        assert_eq!(
            config,
            GateConfig {
                alpha: 0.05,
                ..GateConfig::default()
            }
        );
        assert!(serde_json::from_str::<GateConfig>(r#"{"alfa": 0.05}"#).is_err());
        let input = serde_json::to_value(failures("f", true, (1, 2), (3, 4))).unwrap();
        assert_eq!(input["kind"], "failures");
        assert_eq!(input["canary_total"], 4);
    }
}
