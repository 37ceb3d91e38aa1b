"""Would a DIFFI-style weighting make the forests' ``path`` attributions more faithful? (issue 22)

The ``path`` method is the path decomposition (Saabas): each split on a row's path in a tree is
credited with the change of the expected path length V between the node and the child the row
takes. Here it is written again in NumPy (and checked against the native one), next to a
DIFFI-style variant: each tree's total change, V(leaf) - V(root), shared among the splits on the
row's path in proportion to how much of the node's training sample each split separates from
the row (1 - n(child) / n(node): DIFFI's induced imbalance, seen from the row). Both add up to
the same E[h(x)] per row, so the variant stays additive.

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
from bench_iforest import cpu_model  # noqa: E402

DATASETS = ("cardio", "satellite", "pendigits", "thyroid", "annthyroid", "mammography", "wbc", "landsat",
            "optdigits", "letter", "vowels", "breastw", "ionosphere")


def _c(n: np.ndarray) -> np.ndarray:
    """Average path length of an unsuccessful search among n points (c(0) = c(1) = 0)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    big = n > 2
    out[big] = 2 * (np.log(n[big] - 1) + np.euler_gamma) - 2 * (n[big] - 1) / n[big]
    out[n == 2] = 1.0
    return out


def trees(model) -> list:
    """Per tree: feature, threshold, left (right = left + 1), each node's training count
    (recovered from the leaf values: depth + c(n)) and expected leaf value V below it."""
    a = model._forest.arrays()
    c = _c(np.arange(model._forest.psi + 1))
    out = []
    for b, e in zip(a["tree_offset"][:-1], a["tree_offset"][1:]):
        f, th, left, v = a["feature"][b:e], a["threshold"][b:e], a["left"][b:e], a["leaf_value"][b:e]
        depth = np.full(f.size, -1)
        depth[0] = 0
        for i in range(f.size):
            if f[i] >= 0 and depth[i] >= 0:
                depth[left[i]] = depth[left[i] + 1] = depth[i] + 1
        count, V = np.zeros(f.size), np.zeros(f.size)
        for i in range(f.size - 1, -1, -1):  # children follow their parent
            if depth[i] < 0:
                continue
            if f[i] < 0:
                count[i] = max(int(np.argmin(np.abs(c - (v[i] - depth[i])))), 1)
                V[i] = v[i]
            else:
                l, r = left[i], left[i] + 1
                count[i] = count[l] + count[r]
                V[i] = (count[l] * V[l] + count[r] * V[r]) / count[i]
        out.append((f, th, left, count, V))
    return out


def explain(forest: list, X: np.ndarray, weighting: str) -> np.ndarray:
    """(n, d) contributions to E[h(x)] (negative: toward anomalous), by ``weighting``:
    "saabas" (the native path method) or "diffi" (each tree's change shared by imbalance)."""
    phi = np.zeros(X.shape)
    for r, x in enumerate(X.astype(np.float32)):  # scored as float32(x), as the forest does
        for f, th, left, count, V in forest:
            i, path = 0, []
            while f[i] >= 0:
                child = left[i] if x[f[i]] < th[i] else left[i] + 1
                path.append((i, child))
                i = child
            if weighting == "saabas":
                for p, child in path:
                    phi[r, f[p]] += V[child] - V[p]
            else:
                w = np.array([1 - count[child] / count[p] for p, child in path])
                if w.sum() > 0:
                    for (p, _), wk in zip(path, w):
                        phi[r, f[p]] += (V[i] - V[0]) * wk / w.sum()
    return phi / len(forest)


def ablation_share(model, X: np.ndarray, flagged: np.ndarray, phi: np.ndarray) -> float:
    median = np.median(X, axis=0)
    base = model.decision_function(flagged)
    drops = np.empty(flagged.shape)
    for j in range(X.shape[1]):
        Z = flagged.copy()
        Z[:, j] = median[j]
        drops[:, j] = base - model.decision_function(Z)
    top = np.argmin(phi, axis=1)
    rows = np.arange(len(flagged))
    others = (drops.sum(1) - drops[rows, top]) / (X.shape[1] - 1)
    return float(np.mean(drops[rows, top] > others))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import load_dataset

    print(f"CPU: {cpu_model()}; SIMD: {pynomaly.build_info()['simd']}")
    print(f"{'dataset':<14}{'path (native)':>14}{'saabas (numpy)':>16}{'diffi-weighted':>16}{'max |numpy - native|':>22}")
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
              f"{np.abs(saabas - native).max():>22.1e}", flush=True)
    rng = np.random.default_rng(7)  # the ground truth of tests/estimators/test_explain.py
    X = rng.standard_normal((20_000, 10))
    rows = np.arange(200)
    X[rows, rows % 10] = np.where((rows // 10) % 2, 6.0, -6.0)
    model = IsolationForest(n_estimators=100, random_state=0).fit(X)
    forest = trees(model)
    for weighting in ("saabas", "diffi"):
        hit = np.mean(np.argmin(explain(forest, X[:200], weighting), axis=1) == rows % 10)
        print(f"ground truth, {weighting}: top-1 names the pushed feature for {hit:.3f} of the 200 rows")


if __name__ == "__main__":
    main()
