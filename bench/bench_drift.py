"""The cost of drift monitoring (issue 24): live profiling on batch scoring, and the counting
kernel per row next to its NumPy reference (np.searchsorted + np.bincount per feature).

    python bench/bench_drift.py [--rows 100000] [--rounds 7]

1. Batch scoring of --rows rows (cardio's 21 features resampled with a little jitter; Gaussian
   rows if the datasets are absent) by an isolation forest (100 trees), one thread: the
   Scorer's detect alone ("off") against detect plus service.drift.observe of the rows and
   scores ("on"), as batch `pynomaly detect` does, with the default sampling (batches over
   settings.sample_above rows are profiled on an even sample of about that many) and with
   every row counted. Rounds alternate off / on and the best of each is kept; the ratio is
   off time / on time (throughput on / off; issue target >= 0.95). Times are the process's CPU
   time (one thread, so CPU time is the work done): on a shared machine the wall clock also
   counts the time other processes held the core.
2. The counting kernel alone: ns per row (all features) and per value, one thread, next to the
   NumPy reference on the same edges (ratio = NumPy time / ours).

The counts go to a temporary folder home; the flush to the home is outside the timings (it is
one transaction every few seconds per process, whatever the batch sizes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import pynomaly
from pynomaly import _core, service
from pynomaly.estimators import drift as stats
from pynomaly.service import drift


def _rows(n: int):
    base = Path(os.environ.get("PYNOMALY_DATASETS", Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))
    rng = np.random.default_rng(0)
    path = base / "cardio.npz"
    if path.exists():
        X = np.load(path)["X"]
        return X, X[rng.integers(0, len(X), n)] + rng.normal(scale=1e-3, size=(n, X.shape[1])), "cardio resampled"
    X = rng.standard_normal((2000, 21))
    return X, rng.standard_normal((n, 21)), "Gaussian (datasets not found)"


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    info = pynomaly.build_info()
    print(f"CPU: {_cpu()}; SIMD {info['simd']} (best {info['simd_best']}); OpenMP {info['openmp']}")
    train, X, what = _rows(args.rows)
    print(f"rows: {args.rows} x {X.shape[1]} ({what}); reference: {len(train)} training rows, B = 100")
    with tempfile.TemporaryDirectory() as home, threadpool_limits(1):
        service.train(home, "bench", train, "IsolationForest", {"n_estimators": 100, "random_state": 0, "n_jobs": 1})
        scorer = service.load_for_scoring(home, "bench")

        def off():
            return scorer.detect(X)

        def on():
            r = scorer.detect(X)
            drift.observe(home, "bench", 1, X, r.scores)
            return r

        on()  # load the reference once (it is cached, as a serving process keeps it)
        print("\nbatch scoring, one thread (CPU time, best of rounds, off / on interleaved):")
        print(f"{'profiling':>30} {'off ms':>9} {'on ms':>9} {'on/off thr':>11}")
        default = drift.settings.sample_above
        cases = [(f"sample_above={a}" + (" (default)" if a == default else ""), a)
                 for a in sorted({default, 2048, 4096, 16384})] + [("every row", 1 << 62)]
        for label, above in cases:
            drift.settings.sample_above = above
            best = {"off": float("inf"), "on": float("inf")}
            for _ in range(args.rounds):
                for name, fn in (("off", off), ("on", on)):
                    t = time.process_time()
                    fn()
                    best[name] = min(best[name], time.process_time() - t)
            rate = 1.0 / stats.sample_step(args.rows, above)
            print(f"{label:>30} {1e3 * best['off']:9.1f} {1e3 * best['on']:9.1f} {best['off'] / best['on']:11.3f}"
                  f"   (rows profiled: {100 * rate:.1f}%)")
        drift.settings.sample_above = default
        drift.flush()

        profile = drift.reference(home, "bench")[1]
        edges, offsets = profile.layout()

        def numpy_counts():
            return [np.bincount(np.searchsorted(h.edges, X[:, j], side="left"), minlength=h.edges.size + 1)
                    for j, h in enumerate(profile.features)]

        best = {"ours": float("inf"), "numpy": float("inf")}
        for _ in range(args.rounds):
            for name, fn in (("ours", lambda: _core.drift_count(X, edges, offsets, 1)), ("numpy", numpy_counts)):
                t = time.process_time()
                fn()
                best[name] = min(best[name], time.process_time() - t)
        n, d = X.shape
        print(f"\ncounting kernel, one thread (CPU time), {n} rows x {d} features, {edges.size} edges:")
        print(f"  ours  {1e9 * best['ours'] / n:8.1f} ns/row  {1e9 * best['ours'] / (n * d):6.2f} ns/value")
        print(f"  numpy {1e9 * best['numpy'] / n:8.1f} ns/row  {1e9 * best['numpy'] / (n * d):6.2f} ns/value"
              f"   (numpy / ours: {best['numpy'] / best['ours']:.2f})")


if __name__ == "__main__":
    main()
