"""Streaming detectors (issue 23) side by side with River's HalfSpaceTrees, one thread, same
streams and parameters, in one run:

    python bench/bench_stream.py [--seeds 20] [--rss-records 10000000] [--peers]

1. Speed, records/s on a shuffled, min-max-scaled cardio stream repeated to --records:
   our ``score_learn_many`` and our dict loop (``score_one`` + ``learn_one`` from Python) vs
   River's ``score_one`` + ``learn_one`` loop; our online forest for reference. Targets:
   score_learn_many >= 100x River, the dict loop >= 10x.
2. Accuracy: mean +- sd ROC-AUC over --seeds seeds (each seed shuffles the stream and seeds
   the detector) of ours HST, River HST and our online forest, prequential (score, then learn).
   With --peers, PySAD's xStream and RRCF and CapyMOA's OnlineIsolationForest (MOA's Online
   Isolation Forest, Python) on the first --peer-records records of --peer-seeds streams, with
   ours on the same prefixes.
3. Memory: RSS before and after --rss-records records through each of our detectors.

Prints the CPU model and pynomaly's SIMD target first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

import pynomaly
from pynomaly.stream import HalfSpaceTrees, OnlineIsolationForest

sys.path.insert(0, str(Path(__file__).parent))
from bench_daemon import cpu_model  # noqa: E402

DATASETS = Path(os.environ.get("PYNOMALY_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def load(name: str, seed: int):
    with np.load(DATASETS / f"{name}.npz") as d:
        X, y = d["X"].astype(np.float64), d["y"].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(X))
    X, y = X[order], y[order]
    lo, hi = X.min(0), X.max(0)
    return np.ascontiguousarray((X - lo) / np.where(hi > lo, hi - lo, 1.0)), y


def records(X):
    return [dict(enumerate(map(float, row))) for row in X]


def rate(fn, n) -> float:
    """Records per second of CPU time of this process: on a shared machine, other processes'
    load slows the wall clock of both sides unevenly, the CPU time much less."""
    t = time.process_time()
    fn()
    return n / (time.process_time() - t)


def loop(model, recs):
    out = []
    for x in recs:
        out.append(model.score_one(x))
        model.learn_one(x)
    return out


def speed(n_records: int, n_river: int, rounds: int) -> None:
    from river import anomaly

    X, _ = load("cardio", 0)
    X = np.ascontiguousarray(np.tile(X, (n_records // len(X) + 1, 1))[:n_records])
    recs = records(X[:n_river])
    # Rounds alternate the sides, so a burst of load elsewhere hits both; medians are reported.
    runs = {k: [] for k in ("river", "dict", "many", "oif_dict", "oif_many", "oif_score")}
    learned = OnlineIsolationForest(seed=0)
    learned.learn_many(X[:10_000])  # window full, trees grown: what a served forest scores with
    for _ in range(rounds):
        runs["river"].append(rate(lambda: loop(anomaly.HalfSpaceTrees(seed=0), recs), n_river))
        runs["dict"].append(rate(lambda: loop(HalfSpaceTrees(seed=0), recs), n_river))
        runs["many"].append(rate(lambda: HalfSpaceTrees(seed=0).score_learn_many(X), n_records))
        runs["oif_dict"].append(rate(lambda: loop(OnlineIsolationForest(seed=0), recs), n_river))
        runs["oif_many"].append(rate(lambda: OnlineIsolationForest(seed=0).score_learn_many(X), n_records))
        runs["oif_score"].append(rate(lambda: learned.score_many(X), n_records))
    river, ours_dict, ours_many, oif_dict, oif_many, oif_score = (float(np.median(runs[k])) for k in runs)
    print(f"\n## Speed: records per CPU second, score then learn per record (cardio, d={X.shape[1]}, defaults; "
          f"median of {rounds} alternating rounds)\n")
    print(f"{'detector / path':44s} {'records/s':>12s} {'vs River':>9s}")
    for label, r in [("River HalfSpaceTrees score_one+learn_one", river),
                     ("ours HalfSpaceTrees score_one+learn_one", ours_dict),
                     ("ours HalfSpaceTrees score_learn_many", ours_many),
                     ("ours OnlineIsolationForest score_one+learn_one", oif_dict),
                     ("ours OnlineIsolationForest score_learn_many", oif_many),
                     ("ours OnlineIsolationForest score_many", oif_score)]:
        print(f"{label:44s} {r:12,.0f} {r / river:8.1f}x")
    print(f"(online forest: learning while scoring runs at {oif_many / oif_score:.2f} of scoring alone)")
    print(f"(targets: score_learn_many >= 100x River: {'met' if ours_many >= 100 * river else 'MISSED'}; "
          f"dict loop >= 10x: {'met' if ours_dict >= 10 * river else 'MISSED'})")


def auc_table(names, seeds: int) -> None:
    from river import anomaly

    print(f"\n## Accuracy: ROC-AUC, prequential, mean +- sd over {seeds} seeds (shuffle and detector seed)\n")
    print(f"{'dataset':12s} {'n':>6s} {'River HST':>14s} {'ours HST':>14s} {'ours OIF':>14s}  OIF-River  2 SE")
    wins, diffs = 0, []
    for name in names:
        r, h, o = [], [], []
        for s in range(seeds):
            X, y = load(name, s)
            r.append(roc_auc_score(y, loop(anomaly.HalfSpaceTrees(seed=s), records(X))))
            h.append(roc_auc_score(y, HalfSpaceTrees(seed=s).score_learn_many(X)))
            o.append(roc_auc_score(y, OnlineIsolationForest(seed=s).score_learn_many(X)))
        r, h, o = map(np.array, (r, h, o))
        d = o.mean() - r.mean()
        se2 = 2 * np.sqrt(r.var(ddof=1) / seeds + o.var(ddof=1) / seeds)
        wins += d >= 0
        diffs.append(d)
        print(f"{name:12s} {len(y):6d} {r.mean():.3f}+-{r.std(ddof=1):.3f} {h.mean():.3f}+-{h.std(ddof=1):.3f} "
              f"{o.mean():.3f}+-{o.std(ddof=1):.3f}  {d:+.3f}   {se2:.3f}")
    print(f"online forest >= River HST on {wins} of {len(names)} streams; mean difference {np.mean(diffs):+.3f}")


def peers_table(names, seeds: int, n: int) -> None:
    print(f"\n## Peers: ROC-AUC on the first {n} records, mean over {seeds} seeds\n")
    models = {"ours HST": None, "ours OIF": None}
    try:
        from pysad.models import RobustRandomCutForest, xStream

        models["PySAD xStream"] = lambda s: xStream(random_state=s)
        models["PySAD RRCF"] = lambda s: RobustRandomCutForest(random_state=s)
    except ImportError as e:
        print(f"(PySAD not installed: {e})")
    try:
        from capymoa.anomaly import OnlineIsolationForest as MoaOIF
        from capymoa.stream import NumpyStream

        models["CapyMOA OIF"] = "capymoa"
    except ImportError as e:
        print(f"(CapyMOA not installed: {e})")
    print(f"{'dataset':12s} " + " ".join(f"{k:>14s}" for k in models) + "   records/s of each")
    for name in names:
        aucs = {k: [] for k in models}
        rates = {k: [] for k in models}
        for s in range(seeds):
            X, y = load(name, s)
            X, y = X[:n], y[:n]
            if y.min() == y.max():
                continue
            for k, make in models.items():
                t = time.perf_counter()
                if k == "ours HST":
                    sc = HalfSpaceTrees(seed=s).score_learn_many(X)
                elif k == "ours OIF":
                    sc = OnlineIsolationForest(seed=s).score_learn_many(X)
                elif make == "capymoa":
                    stream = NumpyStream(X, y.astype(int), target_type="categorical")
                    m = MoaOIF(schema=stream.get_schema(), random_seed=s)
                    sc = []
                    while stream.has_more_instances():
                        inst = stream.next_instance()
                        sc.append(m.score_instance(inst))
                        m.train(inst)
                else:
                    m = make(s)
                    sc = [m.fit_score_partial(x) for x in X]  # pysad: fit, then score, per record
                rates[k].append(len(X) / (time.perf_counter() - t))
                aucs[k].append(roc_auc_score(y, np.nan_to_num(np.asarray(sc, dtype=float))))
        print(f"{name:12s} " + " ".join(f"{np.mean(aucs[k]):14.3f}" for k in models) + "   "
              + " ".join(f"{np.mean(rates[k]):,.0f}" for k in models))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def memory(total: int) -> None:
    print(f"\n## Memory: RSS over {total:,} records (chunks of 100k, random uniform, d=21)\n")
    rng = np.random.default_rng(0)
    chunk = rng.uniform(size=(100_000, 21))
    for label, m in [("HalfSpaceTrees", HalfSpaceTrees(seed=0)), ("OnlineIsolationForest", OnlineIsolationForest(seed=0))]:
        m.score_learn_many(chunk)  # warm: trees grown, window full, buffers allocated
        start, peak = rss_kib(), 0
        t = time.perf_counter()
        for _ in range(total // len(chunk) - 1):
            m.score_learn_many(chunk)
            peak = max(peak, rss_kib())
        print(f"{label:22s} RSS after warm-up {start / 1024:7.1f} MiB, max during {peak / 1024:7.1f} MiB, "
              f"growth {(peak - start) / 1024:+.2f} MiB; state {m.memory_bytes() / 1024:.0f} KiB; "
              f"{total / (time.perf_counter() - t):,.0f} records/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--datasets", default="cardio,thyroid,satellite,pendigits,mammography,annthyroid")
    ap.add_argument("--records", type=int, default=500_000, help="records for our score_learn_many speed")
    ap.add_argument("--river-records", type=int, default=20_000, help="records for the per-record loops")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rss-records", type=int, default=10_000_000)
    ap.add_argument("--peers", action="store_true", help="also PySAD xStream/RRCF and CapyMOA's online forest")
    ap.add_argument("--peer-seeds", type=int, default=3)
    ap.add_argument("--peer-records", type=int, default=1000)
    ap.add_argument("--peer-datasets", default="", help="datasets of the peers' table (default: --datasets)")
    a = ap.parse_args()
    info = pynomaly.build_info()
    print(f"CPU: {cpu_model()}; pynomaly {info['version']}, SIMD {info['simd']}; one thread")
    names = a.datasets.split(",")
    with threadpool_limits(1):
        speed(a.records, a.river_records, a.rounds)
        auc_table(names, a.seeds)
        if a.peers:
            peers_table(a.peer_datasets.split(",") if a.peer_datasets else names, a.peer_seeds, a.peer_records)
        memory(a.rss_records)


if __name__ == "__main__":
    main()
