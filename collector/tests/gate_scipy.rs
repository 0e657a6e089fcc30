//! The deploy gate's statistics (`muster_collector::gate::stats`) against
//! SciPy on the same data: Mann-Whitney U (statistic, two-sided and
//! one-sided p-values, asymptotic and exact), Fisher's exact test
//! (one-sided), numpy's median and the normal tail.
//!
//! The datasets are generated here, deterministically (SplitMix64), written
//! to a temp JSON file and handed to `tests/stats/scipy_reference.py`, run by
//! the Python of the venv `tests/run.sh` builds (`target/scipy-venv`, SciPy
//! pinned in `tests/stats/requirements.txt`); `SCIPY_PYTHON` names another
//! interpreter. A missing venv or SciPy fails the test, it never skips.

use std::path::PathBuf;
use std::process::Command;

use muster_collector::gate::stats::{
    Counts, MwuDistribution, MwuMethod, Side, fisher_greater, mann_whitney_u, median, normal_sf,
};
use serde_json::{Value, json};

/// Relative tolerances: U is exact arithmetic on both sides; p-values go
/// through different special-function code.
const U_TOLERANCE: f64 = 1e-9;
const P_TOLERANCE: f64 = 1e-6;
const MEDIAN_TOLERANCE: f64 = 1e-12;
const NORMAL_SF_TOLERANCE: f64 = 1e-12;

fn python() -> PathBuf {
    let bin = std::env::var_os("SCIPY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/scipy-venv/bin/python"
            ))
        });
    assert!(
        bin.is_file(),
        "{} is missing: SciPy is a required test dependency. Run tests/run.sh \
         (it installs tests/stats/requirements.txt into target/scipy-venv), \
         or set SCIPY_PYTHON to a Python with those packages",
        bin.display()
    );
    bin
}

use muster_testkit::rng::Rng;

/// Rounded to multiples of `step`: ties, as real probe timings have.
fn rounded(v: Vec<f64>, step: f64) -> Vec<f64> {
    v.into_iter().map(|x| (x / step).round() * step).collect()
}

struct MwuCase {
    name: String,
    canary: Vec<f64>,
    baseline: Vec<f64>,
    methods: &'static [&'static str],
}

fn mwu_cases() -> Vec<MwuCase> {
    const BOTH: &[&str] = &["asymptotic", "exact"];
    const ASYM: &[&str] = &["asymptotic"];
    let mut rng = Rng(0x6a7e);
    let mut cases = Vec::new();
    let mut case = |name: &str, canary: Vec<f64>, baseline: Vec<f64>, methods| {
        cases.push(MwuCase {
            name: name.into(),
            canary,
            baseline,
            methods,
        })
    };
    case(
        "textbook_conover",
        vec![19.0, 22.0, 16.0, 29.0, 24.0],
        vec![20.0, 11.0, 17.0, 12.0],
        BOTH,
    );
    case(
        "exact_3_4",
        rng.latencies(3, 100.0, 0.3),
        rng.latencies(4, 100.0, 0.3),
        BOTH,
    );
    case(
        "exact_8_8",
        rng.latencies(8, 120.0, 0.3),
        rng.latencies(8, 100.0, 0.3),
        BOTH,
    );
    case(
        "exact_1_8",
        rng.latencies(1, 150.0, 0.3),
        rng.latencies(8, 100.0, 0.3),
        BOTH,
    );
    case(
        "exact_7_2",
        rng.latencies(7, 100.0, 0.3),
        rng.latencies(2, 100.0, 0.3),
        BOTH,
    );
    case(
        "exact_8_5_slower",
        rng.latencies(8, 200.0, 0.2),
        rng.latencies(5, 100.0, 0.2),
        BOTH,
    );
    case(
        "exact_30_40",
        rng.latencies(30, 110.0, 0.3),
        rng.latencies(40, 100.0, 0.3),
        BOTH,
    );
    case(
        "small_ties",
        rounded(rng.latencies(6, 10.0, 0.3), 1.0),
        rounded(rng.latencies(8, 10.0, 0.3), 1.0),
        ASYM,
    );
    case("all_equal", vec![7.0; 40], vec![7.0; 60], ASYM);
    let same = rng.latencies(50, 100.0, 0.4);
    case("identical_samples", same.clone(), same, ASYM);
    case(
        "null_200",
        rng.latencies(200, 100.0, 0.4),
        rng.latencies(200, 100.0, 0.4),
        ASYM,
    );
    case(
        "shift_1_5x_100",
        rng.latencies(100, 150.0, 0.4),
        rng.latencies(100, 100.0, 0.4),
        ASYM,
    );
    case(
        "integer_ms_ties",
        rounded(rng.latencies(300, 40.0, 0.3), 1.0),
        rounded(rng.latencies(250, 38.0, 0.3), 1.0),
        ASYM,
    );
    case(
        "coarse_10ms_ties",
        rounded(rng.latencies(500, 100.0, 0.5), 10.0),
        rounded(rng.latencies(500, 105.0, 0.5), 10.0),
        ASYM,
    );
    case(
        "three_x_slower",
        rng.latencies(300, 300.0, 0.4),
        rng.latencies(300, 100.0, 0.4),
        ASYM,
    );
    case(
        "canary_faster",
        rng.latencies(200, 80.0, 0.4),
        rng.latencies(200, 100.0, 0.4),
        ASYM,
    );
    case(
        "fully_separated_500",
        (0..500).map(|i| 1000.0 + f64::from(i)).collect(),
        (0..500).map(|i| 10.0 + f64::from(i) / 1000.0).collect(),
        ASYM,
    );
    case(
        "unequal_30_5000",
        rng.latencies(30, 130.0, 0.4),
        rng.latencies(5000, 100.0, 0.4),
        ASYM,
    );
    case(
        "unequal_5000_30",
        rng.latencies(5000, 100.0, 0.4),
        rng.latencies(30, 100.0, 0.4),
        ASYM,
    );
    case(
        "one_against_20",
        vec![250.0],
        rng.latencies(20, 100.0, 0.4),
        ASYM,
    );
    case(
        "two_percent_100k",
        rounded(rng.latencies(100_000, 102.0, 0.3), 0.1),
        rounded(rng.latencies(100_000, 100.0, 0.3), 0.1),
        ASYM,
    );
    let mut bimodal = rng.latencies(400, 100.0, 0.2);
    for v in bimodal.iter_mut().step_by(5) {
        *v *= 10.0;
    }
    case(
        "bimodal_canary",
        bimodal,
        rng.latencies(400, 100.0, 0.2),
        ASYM,
    );
    case(
        "signed_zeros",
        vec![0.0, -0.0, 0.0, 1.0, 2.0, -0.0, 3.0, 0.0, 5.0, 1.0],
        vec![-0.0, 0.0, 0.0, 0.5, 1.0, 0.0, -0.0, 0.0, 0.0],
        ASYM,
    );
    case(
        "heavy_tail",
        rng.latencies(150, 100.0, 1.5),
        rng.latencies(150, 100.0, 1.5),
        ASYM,
    );
    case(
        "large_values_small_gaps",
        (0..60).map(|_| 1e6 + rng.below(50) as f64).collect(),
        (0..70).map(|_| 1e6 + rng.below(45) as f64).collect(),
        ASYM,
    );
    case(
        "fractional_u",
        vec![1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0],
        vec![2.0, 3.0, 3.0, 4.0, 5.0],
        ASYM,
    );
    cases
}

fn fisher_cases() -> Vec<(String, Counts, Counts)> {
    let c = |fail, total| Counts { fail, total };
    let mut cases: Vec<(String, Counts, Counts)> = [
        ("lady_tasting_tea", c(3, 4), c(1, 4)),
        ("zero_baseline", c(3, 40), c(0, 500)),
        ("zero_canary", c(0, 500), c(3, 40)),
        ("all_empty", c(0, 0), c(0, 0)),
        ("empty_canary", c(0, 0), c(3, 40)),
        ("no_failures", c(0, 40), c(0, 500)),
        ("all_failures", c(40, 40), c(500, 500)),
        ("five_times", c(50, 1000), c(10, 1000)),
        ("close_large", c(1200, 100_000), c(1000, 100_000)),
        ("equal_million", c(10_000, 1_000_000), c(10_000, 1_000_000)),
        (
            "half_more_million",
            c(15_000, 1_000_000),
            c(10_000, 1_000_000),
        ),
        ("far_tail", c(200, 1000), c(0, 1000)),
        ("one_of_thirty", c(1, 30), c(0, 30)),
        ("small_counts", c(5, 30), c(2, 30)),
        ("separated", c(30, 30), c(0, 30)),
        ("canary_mostly_failing", c(900, 1000), c(100, 1000)),
    ]
    .into_iter()
    .map(|(n, a, b)| (n.to_owned(), a, b))
    .collect();
    let mut rng = Rng(0xf15);
    for i in 0..12 {
        let ct = 1 + rng.below(400);
        let bt = 1 + rng.below(4000);
        let cf = rng.below(ct.min(60) + 1);
        let bf = rng.below(bt.min(200) + 1);
        cases.push((format!("random_{i}"), c(cf, ct), c(bf, bt)));
    }
    cases
}

fn normal_sf_points() -> Vec<f64> {
    // Up to z = 37 (P ≈ 6e-300): beyond, SciPy's ndtr flushes subnormals to 0.
    let mut z: Vec<f64> = (-40..=137).map(|i| f64::from(i) * 0.27).collect();
    // Around erfc's switch from the series to the continued fraction (1.5·√2).
    let edge = 1.5 * std::f64::consts::SQRT_2;
    z.extend([edge - 1e-9, edge, edge + 1e-9, 1e-12, -1e-12, 37.0]);
    z
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    a == b || (a - b).abs() <= rel * a.abs().max(b.abs())
}

#[test]
fn gate_statistics_agree_with_scipy() {
    let python = python();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/stats/scipy_reference.py"
    );
    let mwu = mwu_cases();
    let fisher = fisher_cases();
    let zs = normal_sf_points();
    let input = json!({
        "mwu": mwu.iter().map(|c| json!({
            "name": c.name, "x": c.canary, "y": c.baseline, "methods": c.methods,
        })).collect::<Vec<_>>(),
        "fisher": fisher.iter().map(|(name, canary, baseline)| json!({
            "name": name,
            "table": [[canary.fail, canary.total - canary.fail],
                      [baseline.fail, baseline.total - baseline.fail]],
        })).collect::<Vec<_>>(),
        "normal_sf": zs,
    });
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("gate_scipy-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec(&input).unwrap()).unwrap();
    let out = Command::new(&python)
        .arg(script)
        .arg(&path)
        .output()
        .expect("run the SciPy reference script");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{} {script} failed ({}); run tests/run.sh to (re)build target/scipy-venv:\n{}",
        python.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Value = serde_json::from_slice(&out.stdout).expect("the script's JSON");
    eprintln!("SciPy reference: {}", reference["versions"]);

    let mut mismatches = Vec::new();
    let mut checked = 0;
    // The largest relative difference seen, as a fraction of its tolerance.
    let mut worst = (0.0, String::new());
    let mut check = |what: String, ours: f64, scipy: f64, rel: f64| {
        checked += 1;
        if ours != scipy {
            let used = (ours - scipy).abs() / ours.abs().max(scipy.abs()) / rel;
            if used > worst.0 {
                worst = (used, what.clone());
            }
        }
        if !close(ours, scipy, rel) {
            mismatches.push(format!(
                "{what}: ours {ours:e}, SciPy {scipy:e} (relative tolerance {rel:e})"
            ));
        }
    };
    let num = |v: &Value| {
        v.as_f64()
            .unwrap_or_else(|| panic!("not a number in SciPy's output: {v}"))
    };

    let ref_mwu = reference["mwu"].as_array().unwrap();
    assert_eq!(ref_mwu.len(), mwu.len());
    for (case, r) in mwu.iter().zip(ref_mwu) {
        assert_eq!(r["name"], case.name.as_str());
        let name = &case.name;
        check(
            format!("{name}: canary median"),
            median(&case.canary, Side::Canary).unwrap(),
            num(&r["median_x"]),
            MEDIAN_TOLERANCE,
        );
        check(
            format!("{name}: baseline median"),
            median(&case.baseline, Side::Baseline).unwrap(),
            num(&r["median_y"]),
            MEDIAN_TOLERANCE,
        );
        for &method in case.methods {
            let ours = mann_whitney_u(
                &case.canary,
                &case.baseline,
                match method {
                    "exact" => MwuMethod::Exact,
                    _ => MwuMethod::Asymptotic,
                },
            )
            .unwrap_or_else(|e| panic!("{name} {method}: {e}"));
            let s = &r["results"][method];
            check(
                format!("{name} {method}: U"),
                ours.u,
                num(&s["u"]),
                U_TOLERANCE,
            );
            check(
                format!("{name} {method}: U (greater)"),
                ours.u,
                num(&s["u_greater"]),
                U_TOLERANCE,
            );
            check(
                format!("{name} {method}: p two-sided"),
                ours.p_two_sided,
                num(&s["p_two_sided"]),
                P_TOLERANCE,
            );
            check(
                format!("{name} {method}: p greater"),
                ours.p_greater,
                num(&s["p_greater"]),
                P_TOLERANCE,
            );
        }
        // Auto is exact exactly when both sides are small and untied.
        let auto = mann_whitney_u(&case.canary, &case.baseline, MwuMethod::Auto).unwrap();
        let small = case.canary.len() <= 8 && case.baseline.len() <= 8;
        assert_eq!(
            auto.method == MwuDistribution::Exact,
            small && !auto.ties,
            "{name}: auto chose {:?}",
            auto.method
        );
    }

    let ref_fisher = reference["fisher"].as_array().unwrap();
    assert_eq!(ref_fisher.len(), fisher.len());
    for ((name, canary, baseline), r) in fisher.iter().zip(ref_fisher) {
        assert_eq!(r["name"], name.as_str());
        check(
            format!("fisher {name} ({canary:?} against {baseline:?})"),
            fisher_greater(*canary, *baseline).unwrap(),
            num(&r["p_greater"]),
            P_TOLERANCE,
        );
    }

    let ref_sf = reference["normal_sf"].as_array().unwrap();
    assert_eq!(ref_sf.len(), zs.len());
    for (&z, r) in zs.iter().zip(ref_sf) {
        check(
            format!("normal_sf({z})"),
            normal_sf(z),
            num(r),
            NORMAL_SF_TOLERANCE,
        );
    }

    eprintln!(
        "{checked} values compared with SciPy; closest to its tolerance: {} ({:.1e} of it)",
        worst.1, worst.0
    );
    assert!(
        mismatches.is_empty(),
        "{} of {checked} values disagree with SciPy:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
