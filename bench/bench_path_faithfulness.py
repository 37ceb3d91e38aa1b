"""How faithful are the forests' ``path`` attributions, DIFFI-style against Saabas? (issue 22)

The ``path`` method is DIFFI-style: each tree's total change, V(leaf) - V(root), shared among the
splits on the row's path in proportion to how much of the node's training sample each split
separates from the row (1 - n(child) / n(node): DIFFI's induced imbalance, seen from the row).
It replaced the path decomposition (Saabas: each split credited with the change of the expected
path length V between the node and the child the row takes), which misses the 80% below on
satellite and landsat. Both are written in NumPy in tests/estimators/_path_reference.py (one
copy, which the tests agree with the native kernel to 1e-12); both add up to the same E[h(x)].

Faithfulness is ExIFFI's ablation check (tests/estimators/test_explain_forest.py's
``ablation_share``): for each of the first 150 flagged rows, does setting its top-attributed
feature to the training median lower its score more than the mean drop over the other features?
Also the ground truth of tests/estimators/test_explain.py (20k rows of 10 N(0, 1) features, 200
with one feature pushed to +-6: top-1 names it). 100 trees, seed 0, default max_samples.

    python bench/bench_path_faithfulness.py                    # every dataset below, a few minutes
    python bench/bench_path_faithfulness.py --datasets satellite,cardio
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import pynomaly
from pynomaly import IsolationForest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "estimators"))
from _path_reference import ablation_share as _ablation_share  # noqa: E402
from _path_reference import explain, trees  # noqa: E402
from bench_iforest import cpu_model  # noqa: E402

DATASETS = ("cardio", "satellite", "pendigits", "thyroid", "annthyroid", "mammography", "wbc", "landsat",
            "optdigits", "letter", "vowels", "breastw", "ionosphere")


def ablation_share(model, X: np.ndarray, flagged: np.ndarray, phi: np.ndarray) -> float:
    """The check on the features ``phi`` (path-length contributions: negative toward anomalous) ranks first."""
    return _ablation_share(model, X, flagged, np.argmin(phi, axis=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import load_dataset

    print(f"CPU: {cpu_model()}; SIMD: {pynomaly.build_info()['simd']}")
    print(f"{'dataset':<14}{'path (native)':>14}{'saabas (numpy)':>16}{'diffi (numpy)':>16}{'max |diffi - native|':>22}")
    for name in args.datasets.split(","):
        X, _ = load_dataset(name)
        model = IsolationForest(n_estimators=100, random_state=0).fit(X)
        flagged = X[model.labels_ == 1][:150]
        native = model.explain(flagged, method="path", output="path_length").values
        forest = trees(model)
        saabas, diffi = explain(forest, flagged, "saabas"), explain(forest, flagged, "diffi")
        assert np.allclose(diffi.sum(1), saabas.sum(1))  # both add up to E[h(x)] - E[h]
        print(f"{name:<14}{ablation_share(model, X, flagged, native):>14.3f}"
              f"{ablation_share(model, X, flagged, saabas):>16.3f}{ablation_share(model, X, flagged, diffi):>16.3f}"
              f"{np.abs(diffi - native).max():>22.1e}", flush=True)
    rng = np.random.default_rng(7)  # the ground truth of tests/estimators/test_explain.py
    X = rng.standard_normal((20_000, 10))
    rows = np.arange(200)
    X[rows, rows % 10] = np.where((rows // 10) % 2, 6.0, -6.0)
    model = IsolationForest(n_estimators=100, random_state=0).fit(X)
    forest = trees(model)
    native = model.explain(X[:200], method="path", output="path_length").values
    for weighting, phi in (("saabas", explain(forest, X[:200], "saabas")), ("diffi", explain(forest, X[:200], "diffi")),
                           ("path (native)", native)):
        hit = np.mean(np.argmin(phi, axis=1) == rows % 10)
        print(f"ground truth, {weighting}: top-1 names the pushed feature for {hit:.3f} of the 200 rows")


if __name__ == "__main__":
    main()
