"""What encryption at rest costs: model load time and daemon detect latency, plain home
against encrypted home, in the same run.

    python bench/bench_encryption.py [--loads 30] [--requests 3000] [--dataset cardio]

1. Load: ``pynomaly.service.load_for_scoring`` (a new Repository each time, as the daemon
   opens one per load) of an IsolationForest (100 and 1000 trees) and a KNN (which keeps its
   training rows), median and min of ``--loads`` loads. In the encrypted home the data key
   is unwrapped once per process (and ``cryptography`` imported): the first load in a new
   process is reported apart, for both homes; later loads pay only the AES-GCM decryption.
2. Detect through the daemon: single-row ``detect`` requests sent one at a time with
   ``pynomaly.Client`` to a daemon serving each home (native connection loop, the default),
   p50 and p99 latency. Decryption happens once, at load: the served latency should not move.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import pynomaly
from pynomaly import service

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_daemon import cpu_model, load_dataset  # noqa: E402


def homes(tmp: Path, X: np.ndarray):
    key = tmp / "kek"
    service.create_key_file(key)
    plain, sealed = tmp / "plain", tmp / "sealed"
    service.init_home(plain)
    service.init_home(sealed, encrypt=True, key=service.key_source(key_file=key))
    os.environ["PYNOMALY_KEY_FILE"] = str(key)
    for home in (plain, sealed):
        service.train(home, "if100", X, "IsolationForest", {"random_state": 0})
        service.train(home, "if1000", X, "IsolationForest", {"random_state": 0, "n_estimators": 1000})
        service.train(home, "knn", X, "KNN", {"n_neighbors": 10})
    return plain, sealed, key


def bench_loads(home: Path, name: str, n: int) -> list:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        service.load_for_scoring(home, name)
        out.append(time.perf_counter() - t0)
    return out


def first_load(home: Path, name: str, key: Path) -> float:
    """One load in a fresh process (the key file read and the data key unwrapped)."""
    code = ("import sys, time; from pynomaly import service; t0 = time.perf_counter(); "
            "service.load_for_scoring(sys.argv[1], sys.argv[2]); print(time.perf_counter() - t0)")
    env = {**os.environ, "PYNOMALY_KEY_FILE": str(key)}
    return float(subprocess.run([sys.executable, "-c", code, str(home), name], capture_output=True, text=True,
                                env=env, check=True).stdout)


def bench_daemon(home: Path, X: np.ndarray, n: int, tmp: Path, tag: str) -> list:
    sock = tmp / f"{tag}.sock"
    proc = subprocess.Popen([sys.executable, "-m", "pynomaly_daemon", "--home", str(home), "--socket", str(sock)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().startswith("READY")
        out = []
        with pynomaly.Client(str(sock)) as c:
            for i in range(200):  # warm: loaded, cached, served by the native loop
                c.detect("if100", X[i % len(X) : i % len(X) + 1])
            for i in range(n):
                row = X[i % len(X) : i % len(X) + 1]
                t0 = time.perf_counter()
                c.detect("if100", row)
                out.append(time.perf_counter() - t0)
        return out
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()


def pct(xs, q):
    return float(np.percentile(np.asarray(xs), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loads", type=int, default=30)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--dataset", default="cardio")
    ap.add_argument("--rounds", type=int, default=2, help="daemon rounds, alternating plain and encrypted")
    a = ap.parse_args()
    X, ds = load_dataset(a.dataset)
    info = pynomaly.build_info()
    print(f"CPU: {cpu_model()}; {os.cpu_count()} CPUs; SIMD {info.get('simd')}; dataset {ds} {X.shape}")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        plain, sealed, key = homes(tmp, X)
        print("\n| model | artifact bytes | plain load ms (median / min) | encrypted load ms (median / min) | "
              "ratio | first load in a new process ms (plain / encrypted) |")
        print("|---|---|---|---|---|---|")
        for name in ("if100", "if1000", "knn"):
            size = service.show(plain, name)["versions"][0]["size"]
            bench_loads(plain, name, 3), bench_loads(sealed, name, 3)
            p = bench_loads(plain, name, a.loads)
            s = bench_loads(sealed, name, a.loads)
            f0 = statistics.median(first_load(plain, name, key) for _ in range(3))
            f = statistics.median(first_load(sealed, name, key) for _ in range(3))
            print(f"| {name} | {size} | {1e3 * statistics.median(p):.2f} / {1e3 * min(p):.2f} | "
                  f"{1e3 * statistics.median(s):.2f} / {1e3 * min(s):.2f} | "
                  f"{statistics.median(s) / statistics.median(p):.2f} | {1e3 * f0:.1f} / {1e3 * f:.1f} |")
        print("\n| daemon, single-row detect, 1 client | p50 us | p99 us |")
        print("|---|---|---|")
        for r in range(a.rounds):
            for tag, home in (("plain", plain), ("encrypted", sealed)):
                lat = bench_daemon(home, X, a.requests, tmp, f"{tag}{r}")
                print(f"| {tag} (round {r + 1}) | {1e6 * pct(lat, 50):.1f} | {1e6 * pct(lat, 99):.1f} |")


if __name__ == "__main__":
    main()
