"""The forests' path attributions written again in NumPy, to be read and agreed with: the
DIFFI-style weighting that ``method="path"`` computes natively (tests/estimators/
test_explain_forest.py checks it to 1e-12), and the Saabas decomposition it replaced (kept here
for bench/bench_path_faithfulness.py's comparison). Slow: a Python loop per row, tree and split.

Both credit the splits on a row's path in each tree and add up to the same E[h(x)] - E[h]:
Saabas credits each split with the change of the expected path length V between the node and
the child the row takes; DIFFI-style shares the tree's total change V(leaf) - V(root) among the
splits in proportion to 1 - n(child) / n(node), how much of the node's training sample the split
separates from the row (DIFFI's induced imbalance, seen from the row).
"""

from __future__ import annotations

import numpy as np


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


def explain(forest: list, X: np.ndarray, weighting: str = "diffi") -> np.ndarray:
    """(n, d) contributions to E[h(x)] (negative: toward anomalous), by ``weighting``:
    "diffi" (each tree's change shared by imbalance: ``method="path"``) or "saabas"."""
    phi = np.zeros(X.shape)
    for r, x in enumerate(np.asarray(X).astype(np.float32)):  # scored as float32(x), as the forest does
        for f, th, left, count, V in forest:
            i, path = 0, []
            while f[i] >= 0:
                child = left[i] if x[f[i]] <= th[i] else left[i] + 1  # the forest goes left on <=
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


def ablation_share(model, X: np.ndarray, flagged: np.ndarray, top: np.ndarray) -> float:
    """ExIFFI's faithfulness check: the share of ``flagged`` rows for which setting the feature
    ``top`` names (per row) to the training median lowers the score more than the mean drop
    over the other features."""
    median = np.median(X, axis=0)
    base = model.decision_function(flagged)
    drops = np.empty(flagged.shape)
    for j in range(X.shape[1]):
        Z = flagged.copy()
        Z[:, j] = median[j]
        drops[:, j] = base - model.decision_function(Z)
    rows = np.arange(len(flagged))
    others = (drops.sum(1) - drops[rows, top]) / (X.shape[1] - 1)
    return float(np.mean(drops[rows, top] > others))
