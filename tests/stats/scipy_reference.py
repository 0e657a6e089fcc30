"""SciPy's answers for the deploy gate's statistics (collector/src/gate/stats.rs).

Run by collector/tests/gate_scipy.rs with the venv that tests/run.sh builds
(target/scipy-venv, SciPy pinned in tests/stats/requirements.txt):

    python scipy_reference.py DATASETS.json

DATASETS.json:
    {"mwu": [{"name": str, "x": [float], "y": [float], "methods": [str]}],
     "fisher": [{"name": str, "table": [[int, int], [int, int]]}],
     "normal_sf": [float]}

x is the canary, y the baseline; methods are "asymptotic" and/or "exact".
Prints one JSON object on stdout:
    {"versions": {...},
     "mwu": [{"name", "median_x", "median_y",
              "results": {method: {"u", "p_two_sided", "p_greater"}}}],
     "fisher": [{"name", "p_greater"}],
     "normal_sf": [float]}
"""

import json
import sys

import numpy as np
import scipy
from scipy import special, stats


def mwu(case):
    x = np.asarray(case["x"], dtype=np.float64)
    y = np.asarray(case["y"], dtype=np.float64)
    results = {}
    for method in case["methods"]:
        two = stats.mannwhitneyu(x, y, use_continuity=True, alternative="two-sided", method=method)
        greater = stats.mannwhitneyu(x, y, use_continuity=True, alternative="greater", method=method)
        results[method] = {
            "u": float(two.statistic),
            "u_greater": float(greater.statistic),
            "p_two_sided": float(two.pvalue),
            "p_greater": float(greater.pvalue),
        }
    return {
        "name": case["name"],
        "median_x": float(np.median(x)),
        "median_y": float(np.median(y)),
        "results": results,
    }


def fisher(case):
    res = stats.fisher_exact(case["table"], alternative="greater")
    return {"name": case["name"], "p_greater": float(res.pvalue)}


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        data = json.load(f)
    out = {
        "versions": {"scipy": scipy.__version__, "numpy": np.__version__},
        "mwu": [mwu(c) for c in data["mwu"]],
        "fisher": [fisher(c) for c in data["fisher"]],
        "normal_sf": [float(special.ndtr(-z)) for z in data["normal_sf"]],
    }
    # NaN is not JSON: fail loudly rather than print it.
    json.dump(out, sys.stdout, allow_nan=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
