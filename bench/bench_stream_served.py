"""Issue 23, served: ``learn: true`` through the daemon vs ``learn: false`` on the same daemon,
same detector, 1k-record batches (target: learning at >= 0.8 of scoring's records/s).

Both go through the detector's lane (one request at a time, in order), so the ratio is what
learning itself costs a served stream. A real daemon on a fresh home, one client, batches sent
one after another (a stream's records come in order); best of ``--repeats`` rounds, the two
kinds alternating so that drift of a shared machine falls on both.

    python bench/bench_stream_served.py [--records 100000] [--batch 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import pynomaly
from pynomaly import service

sys.path.insert(0, os.path.dirname(__file__))
from bench_daemon import cpu_model  # noqa: E402


def rate(client, name: str, X, batch: int, learn: bool) -> float:
    t0 = time.perf_counter()
    for a in range(0, len(X), batch):
        client.detect(name, X[a:a + batch], want=("scores",), learn=learn)
    return len(X) / (time.perf_counter() - t0)


def in_process(model, X, batch: int, learn: bool) -> float:
    """The same batches on the model in this process: what learning itself costs."""
    fn = model.score_learn_many if learn else model.score_many
    t0 = time.perf_counter()
    for a in range(0, len(X), batch):
        fn(X[a:a + batch])
    return len(X) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    print(f"CPU: {cpu_model()}; SIMD: {pynomaly.build_info()['simd']}; pynomaly {pynomaly.__version__}")
    rng = np.random.default_rng(0)
    X = rng.random((a.records, 21))
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        results = {}
        for algorithm, params in (("HalfSpaceTrees", {"seed": 0}), ("OnlineIsolationForest", {"seed": 0})):
            name = algorithm.lower()
            service.train(home, name, X[:2000], algorithm, params)
        sock = str(Path(tmp) / "d.sock")
        proc = subprocess.Popen([sys.executable, "-m", "pynomaly_daemon", "--socket", sock, "--home", str(home),
                                 "--checkpoint-seconds", "3600", "--checkpoint-records", str(10 * a.records)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout.readline().startswith("READY")
            with pynomaly.Client(sock) as c:
                for algorithm in ("HalfSpaceTrees", "OnlineIsolationForest"):
                    name = algorithm.lower()
                    rate(c, name, X[:5 * a.batch], a.batch, False)  # loaded, warm
                    best = {False: 0.0, True: 0.0}
                    for _ in range(a.repeats):
                        for learn in (False, True):
                            best[learn] = max(best[learn], rate(c, name, X, a.batch, learn))
                    model = service.load_model(home, name)[1]
                    local = {False: 0.0, True: 0.0}
                    for _ in range(a.repeats):
                        for learn in (False, True):
                            local[learn] = max(local[learn], in_process(model, X, a.batch, learn))
                    results[algorithm] = best, local
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"{a.records} records of 21 features in batches of {a.batch}, one client, best of {a.repeats}")
    print(f"{'detector':<24}{'learn: false rec/s':>20}{'learn: true rec/s':>20}{'ratio':>8}"
          f"{'in process: ratio':>20}")
    for algorithm, (best, local) in results.items():
        print(f"{algorithm:<24}{best[False]:>20,.0f}{best[True]:>20,.0f}{best[True] / best[False]:>8.2f}"
              f"{local[True] / local[False]:>20.2f}")


if __name__ == "__main__":
    main()
