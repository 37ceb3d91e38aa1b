"""pynomaly.dask on a distributed.LocalCluster against in-process pynomaly and against what a user
does today (scikit-learn's IsolationForest scored with map_blocks / dask-ml on the same cluster).

    python bench/bench_dask.py                 # 20M x 16 float32, 100 trees (a few minutes)
    python bench/bench_dask.py --rows 4000000  # quicker

The data are generated inside the workers (seeded dask.array.random) and persisted there, so
nothing is shipped; the driver collects one copy for the in-process side. Rounds alternate the
sides (the machine is shared); medians and ranges are printed. Scoring results stay on the
cluster (persist + wait), as a pipeline writing them out would have them.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import numpy as np


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return "unknown"


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def summary(times):
    return f"median {statistics.median(times):8.3f} s  (range {min(times):.3f}-{max(times):.3f}, {len(times)} runs)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--cols", type=int, default=16)
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--chunk-rows", type=int, default=500_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sklearn-rows", type=int, default=2_000_000,
                    help="rows scored by the scikit-learn peers (they are ~20x slower; throughput is compared)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import dask
    import dask.array as da
    import distributed
    from dask_ml.wrappers import ParallelPostFit
    from sklearn.ensemble import IsolationForest as SkIsolationForest

    import pynomaly
    import pynomaly.estimators.dask as pdask

    info = pynomaly.build_info()
    print(f"# cpu: {cpu_model()}, cpus={pynomaly.estimators._validation.usable_cpus()}")
    print(f"# pynomaly {pynomaly.__version__}: simd={info['simd']}, iforest_kernel={info['iforest_kernel']}, "
          f"openmp={info.get('openmp')}; dask {dask.__version__}, distributed {distributed.__version__}")
    print(f"# LocalCluster: {args.workers} process workers x 1 thread; {args.rows} x {args.cols} float32, "
          f"chunks of {args.chunk_rows} rows, {args.trees} trees, psi=256")

    cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    client = distributed.Client(cluster)
    X = da.random.default_rng(12345).standard_normal((args.rows, args.cols), chunks=(args.chunk_rows, args.cols),
                                                       dtype=np.float32).persist()
    distributed.wait(X)
    local = X.compute()
    print(f"# data ready: {local.nbytes / 1e9:.2f} GB on the cluster and in this process")

    model = pynomaly.IsolationForest(n_estimators=args.trees, random_state=0).fit(local[:200_000])
    n = args.rows

    def ours():
        s = pdask.score(model, X).persist()
        distributed.wait(s)
        del s

    def in_process():
        model.set_params(n_jobs=2)
        try:
            model.decision_function(local)
        finally:
            model.set_params(n_jobs=None)

    assert np.array_equal(pdask.score(model, X[:100_000]).compute(), model.decision_function(local[:100_000]))
    t_ours, t_local = [], []
    for r in range(args.rounds):
        for side in ((ours, t_ours), (in_process, t_local))[:: 1 if r % 2 == 0 else -1]:
            side[1].append(timed(side[0]))
    print("\nscoring throughput")
    print(f"  pynomaly.dask on the cluster  {n / statistics.median(t_ours) / 1e6:7.2f} M rows/s   {summary(t_ours)}")
    print(f"  pynomaly in-process, 2 threads{n / statistics.median(t_local) / 1e6:7.2f} M rows/s   {summary(t_local)}")
    print(f"  ratio cluster / in-process: {statistics.median(t_local) / statistics.median(t_ours):.2f} (target >= 0.80)")

    # What a user does today: scikit-learn's forest (same parameters, same training rows),
    # scored on the same cluster, on fewer rows (throughput is compared).
    m = min(args.sklearn_rows, n)
    Xs = X[:m]
    sk = SkIsolationForest(n_estimators=args.trees, random_state=0).fit(local[:200_000])
    sk_ref = dask.delayed(sk, pure=True)  # shipped once, like ours

    def sk_map_blocks():
        s = Xs.map_blocks(lambda b, est: -est.score_samples(b), sk_ref, drop_axis=1,
                          meta=np.empty(0, dtype=np.float64)).persist()
        distributed.wait(s)

    ppf = ParallelPostFit(estimator=sk)

    def sk_parallel_post_fit():  # predict: dask-ml wraps no score_samples; the trees' walk is the same work
        s = ppf.predict(Xs).persist()
        distributed.wait(s)

    t_ours_m, t_mb, t_ppf = [], [], []
    for r in range(2):
        t_ours_m.append(timed(lambda: distributed.wait(pdask.score(model, Xs).persist())))
        t_mb.append(timed(sk_map_blocks))
        t_ppf.append(timed(sk_parallel_post_fit))
    print(f"\nagainst scikit-learn on the same cluster ({m} rows)")
    print(f"  pynomaly.dask                  {m / statistics.median(t_ours_m) / 1e6:7.2f} M rows/s   {summary(t_ours_m)}")
    for name, t in (("sklearn map_blocks(score_samples)", t_mb), ("sklearn ParallelPostFit.predict", t_ppf)):
        print(f"  {name:33s}{m / statistics.median(t) / 1e6:7.3f} M rows/s   {summary(t)}   "
              f"pynomaly is {statistics.median(t) / statistics.median(t_ours_m):.1f}x faster (target >= 10x)")

    # Distributed fit (trees + training scores + exact threshold) against the in-process fit.
    t_dfit, t_lfit = [], []
    fitted = None
    for r in range(max(1, args.rounds - 1)):
        def dfit():
            nonlocal fitted
            fitted = pdask.fit(pynomaly.IsolationForest(n_estimators=args.trees, random_state=1), X)

        def lfit():
            pynomaly.IsolationForest(n_estimators=args.trees, random_state=1, n_jobs=2).fit(local)

        for fn, t in ((dfit, t_dfit), (lfit, t_lfit))[:: 1 if r % 2 == 0 else -1]:
            t.append(timed(fn))
    print(f"\nfit of {args.trees} trees on {n} rows (trees, training scores, contamination threshold)")
    print(f"  pynomaly.dask.fit on the cluster  {summary(t_dfit)}")
    print(f"  in-process fit, 2 threads         {summary(t_lfit)}")
    print(f"  ratio in-process / distributed: {statistics.median(t_lfit) / statistics.median(t_dfit):.2f}")
    reference = pynomaly.IsolationForest(n_estimators=args.trees, random_state=1, n_jobs=2).fit(local)
    print(f"  same forest and threshold as in-process: "
          f"{fitted._forest.arrays()['threshold'].tobytes() == reference._forest.arrays()['threshold'].tobytes()}"
          f" / {fitted.threshold_ == reference.threshold_}")
    client.close()
    cluster.close()


if __name__ == "__main__":
    main()
