"""LOF and exact kNN: pynomaly side by side with scikit-learn, PyOD, faiss and hnswlib.

Every measurement runs in its own Python process (OpenMP runtimes of the peers would otherwise
interfere, and peak memory is per process). Data: standard Gaussian, seed 0, k = 20; real
datasets from ../shared/datasets (or $PYNOMALY_DATASETS).

    python bench/bench_lof.py            # n = 20k (a few minutes on 2 cores)
    python bench/bench_lof.py --full     # adds n = 100k and the full http set (long)
    python bench/bench_lof.py --sizes 100000 --sections lof --lof-peers sklearn_auto,sklearn_brute

Peak memory is the worker's peak RSS above its RSS after imports, so it includes the input
array; "x of in+out" divides it by input + the n x k neighbour arrays (float64 + int64).

Prints one table per section with ratios peer/pynomaly (> 1: pynomaly faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

K = 20
HERE = Path(__file__).resolve().parent
DATASETS = Path(os.environ.get("PYNOMALY_DATASETS", HERE.parent.parent / "shared" / "datasets"))


# ---- worker side: one measurement per process ----------------------------------------------
def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_data(spec):
    import numpy as np

    if "dataset" in spec:
        with np.load(DATASETS / f"{spec['dataset']}.npz") as f:
            X, y = f["X"].astype(np.float64), f["y"]
        if spec.get("max_rows") and len(X) > spec["max_rows"]:
            rows = np.sort(np.random.default_rng(0).choice(len(X), spec["max_rows"], replace=False))
            X, y = X[rows], y[rows]
        return np.ascontiguousarray(X), y
    X = np.random.default_rng(0).standard_normal((spec["n"], spec["d"]))
    if spec.get("float32"):
        X = X.astype(np.float32)
    return X, None


def worker(spec):
    import numpy as np

    threads = spec["threads"]
    impl = spec["impl"]
    # Imports first, then the baseline RSS: what remains is the data and the run.
    if impl.startswith("sklearn") or impl == "pyod":
        from sklearn.neighbors import LocalOutlierFactor  # noqa: F401
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    if impl == "pyod":
        from pyod.models.lof import LOF as PyodLOF  # noqa: F401
    if impl == "faiss":
        import faiss

        faiss.omp_set_num_threads(threads)
    if impl == "hnswlib":
        import hnswlib  # noqa: F401
    import pynomaly

    base = rss_mib()
    X, y = make_data(spec)
    out = {"input_mib": X.nbytes / 2**20}
    t0 = time.perf_counter()
    if spec["task"] == "lof":
        if impl == "pynomaly":
            m = pynomaly.LOF(n_neighbors=K, n_jobs=threads).fit(X)
            scores = m.decision_scores_
            out["algorithm"] = m.algorithm_
        elif impl == "pyod":
            scores = PyodLOF(n_neighbors=K, n_jobs=threads).fit(X).decision_scores_
        else:
            alg = impl.split("_", 1)[1]
            lof = LocalOutlierFactor(n_neighbors=K, algorithm=alg, n_jobs=threads).fit(X)
            scores = -lof.negative_outlier_factor_
        out["seconds"] = time.perf_counter() - t0
        out["output_mib"] = (X.shape[0] * K * 16) / 2**20  # the k-NN graph every LOF holds
        if y is not None:
            from sklearn.metrics import roc_auc_score

            out["auc"] = float(roc_auc_score(y, scores))
    else:  # knn search alone, self-join, k neighbours besides the point itself
        if impl == "pynomaly":
            dist, idx = pynomaly.knn(X, K, n_jobs=threads, algorithm=spec.get("algorithm", "auto"))
        elif impl == "faiss":
            Xf = np.ascontiguousarray(X, dtype=np.float32)
            index = faiss.IndexFlatL2(X.shape[1])
            index.add(Xf)
            dist, idx = index.search(Xf, K + 1)
        else:
            Xf = np.ascontiguousarray(X, dtype=np.float32)
            index = hnswlib.Index(space="l2", dim=X.shape[1])
            index.init_index(max_elements=len(X), ef_construction=200, M=16, random_seed=0)
            index.set_num_threads(threads)
            index.add_items(Xf)
            index.set_ef(100)
            idx, dist = index.knn_query(Xf, k=K + 1)
        out["seconds"] = time.perf_counter() - t0
        out["output_mib"] = (X.shape[0] * K * 16) / 2**20
        if impl == "hnswlib":  # recall against the exact neighbours (not timed)
            _, exact = pynomaly.knn(X, K, n_jobs=threads)
            got = [set(r[r != i][:K]) for i, r in enumerate(idx)]
            out["recall"] = float(np.mean([len(g & set(e)) / K for g, e in zip(got, exact)]))
    out["peak_mib"] = peak_mib() - base
    out["build"] = pynomaly.build_info()["simd"]
    print("RESULT " + json.dumps(out))


# ---- driver side -----------------------------------------------------------------------------
def run(spec, timeout):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(spec["threads"])
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"seconds": float("inf"), "note": f"> {timeout}s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"seconds": float("nan"), "note": (p.stderr.strip().splitlines() or ["failed"])[-1][:80]}


def fmt(r):
    s = r.get("seconds", float("nan"))
    return f"{s:8.2f}s" if s == s and s != float("inf") else f"{r.get('note', '?'):>9}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker")
    ap.add_argument("--full", action="store_true", help="add n=100k and the full http set")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--sections", default="lof,knn,real")
    ap.add_argument("--sizes", help="comma-separated n for the Gaussian sections (default 20000; --full adds 100000)")
    ap.add_argument("--lof-peers", default="sklearn_auto,sklearn_kd_tree,sklearn_brute,pyod")
    ap.add_argument("--knn-peers", default="faiss,hnswlib")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    import pynomaly

    info = pynomaly.build_info()
    print(f"pynomaly {info['version']}  simd={info['simd']}  openmp={info['openmp']}  procs={info['openmp_procs']}  "
          f"compiler={info['compiler'].split()[0:2]}")
    sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else [20_000] + ([100_000] if args.full else [])
    thread_counts = [int(v) for v in args.threads.split(",")]
    sections = args.sections.split(",")

    if "lof" in sections:
        print(f"\n## LOF fit + score, k={K}, Gaussian data (seconds; ratio = peer / pynomaly)")
        peers = [p for p in args.lof_peers.split(",") if p]
        print(f"{'n':>7} {'d':>3} {'thr':>3} {'pynomaly':>9} " + " ".join(f"{p:>16}" for p in peers) +
              "  best/ours  peak MiB (ours, x of in+out)")
        ours_1 = {}
        for n in sizes:
            for d in (8, 32):
                for threads in thread_counts:
                    spec = {"task": "lof", "n": n, "d": d, "threads": threads}
                    ours = run({**spec, "impl": "pynomaly"}, args.timeout)
                    if threads == 1:
                        ours_1[(n, d)] = ours["seconds"]
                    res = [run({**spec, "impl": p}, args.timeout) for p in peers]
                    best = min([r["seconds"] for p, r in zip(peers, res) if p.startswith("sklearn")] or [float("nan")])
                    mem = ours.get("peak_mib", float("nan"))
                    inout = ours.get("input_mib", 0) + ours.get("output_mib", 0)
                    cols = " ".join(f"{fmt(r)} ({r.get('seconds', 0) / ours['seconds']:5.1f}x)" for r in res)
                    scale = "" if threads == 1 or (n, d) not in ours_1 else f"  scaling {ours_1[(n, d)] / ours['seconds']:.2f}x"
                    print(f"{n:>7} {d:>3} {threads:>3} {fmt(ours)} {cols}  {best / ours['seconds']:6.1f}x  "
                          f"{mem:7.1f} ({mem / inout:.2f}x) [{ours.get('algorithm')}]{scale}")

    if "knn" in sections:
        print(f"\n## exact kNN search alone (self-join, k={K}), float32 input")
        print(f"{'n':>7} {'d':>3} {'thr':>3} {'pynomaly':>9} {'faiss flat':>18} {'hnswlib':>18} recall  GFLOP/s(ours, 2nd^2d)"
              "  peak MiB (ours, x of in+out)")
        knn_peers = args.knn_peers.split(",")
        skipped = {"seconds": float("nan"), "note": "skipped"}
        for n in sizes:
            for d in (8, 32):
                for threads in thread_counts:
                    spec = {"task": "knn", "n": n, "d": d, "threads": threads, "float32": True}
                    ours = run({**spec, "impl": "pynomaly", "algorithm": "brute"}, args.timeout)
                    fa = run({**spec, "impl": "faiss"}, args.timeout) if "faiss" in knn_peers else skipped
                    hn = run({**spec, "impl": "hnswlib"}, args.timeout) if "hnswlib" in knn_peers else skipped
                    gf = 2.0 * n * n * d / ours["seconds"] / 1e9
                    print(f"{n:>7} {d:>3} {threads:>3} {fmt(ours)} {fmt(fa)} ({fa['seconds'] / ours['seconds']:5.2f}x) "
                          f"{fmt(hn)} ({hn['seconds'] / ours['seconds']:5.2f}x) {hn.get('recall', float('nan')):.4f}  {gf:6.1f}"
                          f"  {ours.get('peak_mib', float('nan')):7.1f} "
                          f"({ours.get('peak_mib', float('nan')) / (ours['input_mib'] + ours['output_mib']):.2f}x)")

    if "real" in sections:
        print(f"\n## LOF on real datasets, k={K}, 1 thread (ROC-AUC alongside)")
        sets = [("shuttle", None), ("aloi", None), ("http", None if args.full else 100_000)]
        for name, max_rows in sets:
            if not (DATASETS / f"{name}.npz").exists():
                print(f"{name}: not found under {DATASETS}")
                continue
            spec = {"task": "lof", "dataset": name, "max_rows": max_rows, "threads": 1}
            ours = run({**spec, "impl": "pynomaly"}, args.timeout)
            res = {p: run({**spec, "impl": p}, args.timeout) for p in ("sklearn_auto", "sklearn_kd_tree", "sklearn_brute")}
            best = min(r["seconds"] for r in res.values())
            label = name + ("" if max_rows is None else f"[{max_rows // 1000}k sample]")
            print(f"{label:>18} ours {fmt(ours)} auc={ours.get('auc', float('nan')):.4f} [{ours.get('algorithm')}]  " +
                  "  ".join(f"{p} {fmt(r)} auc={r.get('auc', float('nan')):.4f}" for p, r in res.items()) +
                  f"  best/ours {best / ours['seconds']:.1f}x")


if __name__ == "__main__":
    main()
