"""What TreeSHAP does per row, counted, and a steady loop to profile it (issue 22, shapprof).

The forest is bench_explain.py's cardio case (scikit-learn's IsolationForest, 100 trees,
max_samples 256, random_state 0, imported with from_sklearn). Prints the work per row: the
classic algorithm's (shap.TreeExplainer: an UNWIND of the path per path element at every leaf,
sum over leaves of depth^2, plus an EXTEND per node) against ours (one mask step per internal
node, one table read per leaf, one update per distinct feature on the leaf's path, of which
the agreeing ones read the table). Then explains the rows --repeat times on one thread; wrap
it in a profiler:

    python bench/profile_tree_shap.py --count
    PYNOMALY_SIMD=avx512 perf record -e cpu-clock python bench/profile_tree_shap.py --repeat 30
    PYNOMALY_SIMD=avx2 valgrind --tool=callgrind --collect-atstart=no \\
        '--toggle-collect=*shap_tree_rows*' python bench/profile_tree_shap.py --rows 256
    (valgrind hides AVX-512 from the CPU flags: under it pynomaly runs at avx2 at best)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import pynomaly

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_iforest import DATASETS  # noqa: E402


def work_per_row(arrays: dict, X: np.ndarray) -> dict:
    """The steps each algorithm takes for one row (summed over trees; |A| averaged over X)."""
    feature, left, threshold = arrays["feature"], arrays["left"], arrays["threshold"]
    out = {"internal": 0, "leaves": 0, "sum_m": 0, "sum_agree": 0.0, "unwind": 0, "extend": 0, "max_depth": 0}
    for t in range(len(arrays["tree_offset"]) - 1):
        begin = arrays["tree_offset"][t]
        stack = [(0, 0, ())]
        while stack:
            i, depth, path = stack.pop()
            g = begin + i
            out["extend"] += depth
            if feature[g] >= 0:
                out["internal"] += 1
                for side in (0, 1):
                    stack.append((left[g] + side, depth + 1, path + ((feature[g], threshold[g], side),)))
                continue
            out["leaves"] += 1
            out["unwind"] += depth * depth
            out["max_depth"] = max(out["max_depth"], depth)
            passes = {}  # feature -> rows passing every test on it along the path
            for f, thr, side in path:
                ok = (X[:, f] <= thr) if side == 0 else (X[:, f] > thr)
                passes[f] = passes.get(f, True) & ok
            out["sum_m"] += len(passes)
            out["sum_agree"] += float(sum(p.mean() for p in passes.values()))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--count", action="store_true", help="print the work per row, do not loop")
    args = ap.parse_args()
    from sklearn.ensemble import IsolationForest as SkForest

    with np.load(DATASETS / "cardio.npz") as z:
        X = z["X"]
    sk = SkForest(n_estimators=100, max_samples=256, random_state=0).fit(X)
    forest = pynomaly.IsolationForest.from_sklearn(sk)._forest
    batch = X[np.random.default_rng(0).choice(len(X), args.rows, replace=args.rows > len(X))].astype(np.float32)
    if args.count:
        w = work_per_row(forest.arrays(), batch)
        ours = w["internal"] + w["leaves"] + w["sum_m"]
        print(f"per row, 100 trees: {w['internal']} internal nodes, {w['leaves']} leaves (depth <= {w['max_depth']}), "
              f"{w['sum_m']} leaf-feature slots, {w['sum_agree']:.0f} of them agreeing (table reads)")
        print(f"classic TreeSHAP: {w['unwind']} unwind + {w['extend']} extend steps "
              f"(L * D^2 = {w['leaves'] * w['max_depth'] ** 2}); ours: {ours} steps "
              f"({(w['unwind'] + w['extend']) / ours:.1f}x fewer), {(w['leaves'] + w['sum_m']) / 8:.0f} 8-lane gathers")
        return
    explainer = pynomaly._core.ForestExplainer(forest)
    best = float("inf")
    for _ in range(args.repeat):
        t = time.process_time()
        explainer.tree_shap(batch, 1)
        best = min(best, time.process_time() - t)
    print(f"{pynomaly.build_info()['simd']}: {best / args.rows * 1e6:.2f} us/row (CPU time, best of {args.repeat})")


if __name__ == "__main__":
    main()
