"""Isolation forest: pynomaly side by side with scikit-learn, PyOD and isotree.

Same work for everyone: 100 trees, psi=256, train on 100k x 16 and score 1M x 16 float64
(synthetic Gaussian data with 1% shifted outliers), at 1 and 2 threads; single-row latency of
a Python call (median and p99); the largest real datasets in ../shared/datasets. Prints times
and ratios (peer time / pynomaly time: > 1 means pynomaly is faster).

    python bench/bench_iforest.py                 # everything (a few minutes)
    python bench/bench_iforest.py --quick         # smaller sizes, for a smoke run
    python bench/bench_iforest.py --scoring-only --kernels auto,portable
        # only 1-thread scoring, our kernels (forced in turn) interleaved with scikit-learn
    PYNOMALY_SIMD=baseline python bench/bench_iforest.py   # the portable kernel

The first line names the CPU and the isolation-forest kernel chosen at run time (and why).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import pynomaly

DATASETS = Path(os.environ.get("PYNOMALY_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def cpu_model() -> str:
    """The CPU's model name, as lscpu and /proc/cpuinfo give it (plus vendor family/model)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                info.setdefault(k.strip(), v.strip())
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    name = info.get("model name") or info.get("CPU part", "unknown CPU")
    if "cpu family" in info:
        name += f" (family {info['cpu family']} model {info.get('model', '?')})"
    return name


def best_of(fn, repeat=3):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def latency(fns: dict, rows, calls, block=250):
    """Median and p99 microseconds of single-row calls. The functions take turns in blocks of
    `block` calls, so a slow spell of this shared VM (its speed drifts by up to 2x over minutes)
    hits all alike, while within a block each runs as a loop of its own calls would (turns call
    by call would also make each evict the other's model from the caches)."""
    times = {name: [] for name in fns}
    for b0 in range(0, calls, block):
        for name, fn in fns.items():
            for i in range(b0, min(b0 + block, calls)):
                x = rows[i % len(rows)][None, :]
                t = time.perf_counter_ns()
                fn(x)
                times[name].append(time.perf_counter_ns() - t)
    out = {}
    for name, ts in times.items():
        ts.sort()
        out[name] = statistics.median(ts) / 1e3, ts[int(0.99 * (len(ts) - 1))] / 1e3
    return out


def make_peers(threads):
    """name -> (fit(X) -> model, score(model, X) -> higher-is-more-anomalous scores)."""
    peers = {
        "pynomaly": (
            lambda X: pynomaly.IsolationForest(n_estimators=100, max_samples=256, random_state=0, n_jobs=threads).fit(X),
            lambda m, X: m.decision_function(X),
        )
    }
    try:
        from sklearn.ensemble import IsolationForest as SkIF

        peers["sklearn"] = (
            lambda X: SkIF(n_estimators=100, max_samples=256, random_state=0, n_jobs=threads).fit(X),
            lambda m, X: -m.score_samples(X),
        )
    except ImportError:
        print("# scikit-learn not installed: skipped")
    try:
        from pyod.models.iforest import IForest

        peers["pyod"] = (
            lambda X: IForest(n_estimators=100, max_samples=256, random_state=0, n_jobs=threads).fit(X),
            lambda m, X: m.decision_function(X),
        )
    except ImportError:
        print("# pyod not installed: skipped")
    try:
        import isotree

        peers["isotree"] = (
            lambda X: isotree.IsolationForest(
                ntrees=100, sample_size=256, ndim=1, missing_action="fail", nthreads=threads, random_seed=0
            ).fit(X),
            lambda m, X: m.predict(X),
        )
    except ImportError:
        print("# isotree not installed: skipped")
    return peers


def report(title, results, unit, higher_is_better=False):
    print(f"\n{title}")
    ours = results["pynomaly"]
    for name, v in results.items():
        ratio = (v / ours) if not higher_is_better else (ours / v)
        if name == "pynomaly":
            extra = ""
        elif ratio >= 1:
            extra = f"   pynomaly is {ratio:6.1f}x faster"
        else:
            extra = f"   pynomaly is {1 / ratio:6.1f}x slower"
        print(f"  {name:10s} {v:12.3f} {unit}{extra}")


def synthetic(n, d, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X[: n // 100] += 4.0
    return X


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--latency-calls", type=int, default=10_000)
    ap.add_argument("--scoring-only", action="store_true", help="only 1-thread scoring against scikit-learn")
    ap.add_argument("--kernels", default="auto", help="comma-separated iforest kernels to force in turn "
                    "(see build_info()['iforest_kernels']); 'auto' is the run-time choice")
    ap.add_argument("--rounds", type=int, default=3, help="--scoring-only: rounds, each timing everyone once")
    args = ap.parse_args()
    n_train, n_score = (20_000, 200_000) if args.quick else (100_000, 1_000_000)
    info = pynomaly.build_info()
    print(f"# CPU: {cpu_model()}; iforest kernel: {info['iforest_kernel']} ({info['iforest_kernel_reason']})")
    print(f"# pynomaly {info['version']}: simd={info['simd']} (best {info['simd_best']}), openmp={info['openmp']}, "
          f"{info['compiler']}; python {sys.version.split()[0]}, numpy {np.__version__}, cpus={os.cpu_count()}")
    print(f"# train {n_train} x 16, score {n_score} x 16 float64, 100 trees, psi=256")
    Xtr, Xte = synthetic(n_train, 16, 0), synthetic(n_score, 16, 1)
    if args.scoring_only:
        return scoring_only(args, Xtr, Xte)

    for threads in (1, 2):
        peers = make_peers(threads)
        fit_t, rate = {}, {}
        for name, (fit, score) in peers.items():
            fit_t[name], model = best_of(lambda: fit(Xtr))
            repeat = 3 if name == "pynomaly" else 1
            t, _ = best_of(lambda: score(model, Xte), repeat)
            rate[name] = n_score / t / 1e6
        report(f"[{threads} thread(s)] fit {n_train} x 16 (PyOD-style fit includes scoring the training rows for "
               f"pynomaly and PyOD; isotree and scikit-learn only grow trees)", {k: v * 1e3 for k, v in fit_t.items()}, "ms")
        report(f"[{threads} thread(s)] scoring throughput", rate, "M rows/s", higher_is_better=True)

    # Fit without scoring the training rows: the trees alone, as isotree's and scikit-learn's fit.
    X32 = Xtr
    t, _ = best_of(lambda: pynomaly._core.Forest.train(X32, 100, 256, 16, 0, 1), 5)
    print(f"\n[1 thread] pynomaly growing 100 trees only (no training scores): {t * 1e3:.2f} ms")

    peers = make_peers(1)
    fast, slow = {}, {}  # pynomaly and isotree take turns for all calls; the slow peers for fewer
    for name, (fit, score) in peers.items():
        model = fit(Xtr)
        score(model, Xte[:1])  # warm up
        (fast if name in ("pynomaly", "isotree") else slow)[name] = (lambda m, f: lambda x: f(m, x))(model, score)
    lat = latency(fast, Xte[:1000], args.latency_calls)
    if slow:
        lat.update(latency(slow, Xte[:1000], max(args.latency_calls // 50, 100)))
    print("\n[1 thread] single-row latency of a Python call (median / p99, microseconds)")
    for name, (med, p99) in lat.items():
        extra = "" if name == "pynomaly" else f"   pynomaly is {med / lat['pynomaly'][0]:6.1f}x lower (median)"
        print(f"  {name:10s} {med:10.1f} / {p99:10.1f} us{extra}")

    print("\nlargest real datasets (1 thread): fit + score all rows, seconds")
    for name in ("http", "smtp", "aloi", "shuttle"):
        path = DATASETS / f"{name}.npz"
        if not path.exists():
            print(f"  {name}: not found under {DATASETS}")
            continue
        X = np.load(path)["X"]
        times = {}
        for pname, (fit, score) in peers.items():
            times[pname], _ = best_of(lambda: score(fit(X), X), 1)
        ours = times["pynomaly"]
        row = ", ".join(f"{k} {v:.3f}s" + ("" if k == "pynomaly" else f" ({v / ours:.1f}x)") for k, v in times.items())
        print(f"  {name:8s} {X.shape[0]:7d} x {X.shape[1]:3d}: {row}")


def scoring_only(args, Xtr, Xte):
    """1-thread scoring throughput of each forced kernel and scikit-learn, interleaved: every
    round times scikit-learn once and each kernel (best of 3) right after, so a slow spell of
    this shared VM hits both sides of a ratio alike. Prints each round's ratios."""
    from sklearn.ensemble import IsolationForest as SkIF

    n = len(Xte)
    ours = pynomaly.IsolationForest(n_estimators=100, max_samples=256, random_state=0, n_jobs=1).fit(Xtr)
    sk = SkIF(n_estimators=100, max_samples=256, random_state=0, n_jobs=1).fit(Xtr)
    kernels = args.kernels.split(",")
    ratios = {k: [] for k in kernels}
    print("\n[1 thread] scoring throughput, M rows/s (ratio = pynomaly / scikit-learn, same round)")
    for r in range(args.rounds):
        t_sk, _ = best_of(lambda: sk.score_samples(Xte), 1)
        line = f"  round {r + 1}: sklearn {n / t_sk / 1e6:.3f}"
        for k in kernels:
            pynomaly._core.set_iforest_kernel(k)
            t, _ = best_of(lambda: ours.decision_function(Xte), 3)
            ratios[k].append(t_sk / t)
            line += f"  {k} {n / t / 1e6:.3f} ({t_sk / t:.1f}x)"
        pynomaly._core.set_iforest_kernel("auto")
        print(line, flush=True)
    for k, rs in ratios.items():
        print(f"  {k:12s} ratio to scikit-learn: median {statistics.median(rs):.1f}x, min {min(rs):.1f}x, max {max(rs):.1f}x")


if __name__ == "__main__":
    main()
