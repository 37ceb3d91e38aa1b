"""How soon a version saved by one process is served by API replicas on the same home.

Two `pynomaly api` servers on one PostgreSQL home (a real server started here with initdb and
pg_ctl, as the tests start it), told of new versions by LISTEN/NOTIFY; beside them, for
reference, two servers on one folder (SQLite) home, which find new versions by polling every
second. Each round this process saves a new version and then asks every server, every 5 ms,
which version it serves; printed: the delay from the save's commit to each server serving it.

    python bench/bench_replicas.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import _pg  # noqa: E402
from _http_helpers import ApiServer, make_token  # noqa: E402

import pynomaly  # noqa: E402
from pynomaly import service  # noqa: E402


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def served_version(server, token, rows) -> str:
    body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP64",
                        "data": rows.reshape(-1).tolist()}]}
    status, doc = server.json("POST", "/v2/models/det/infer", body, token=token)
    return doc["model_version"] if status == 200 else ""


def measure(home, label: str, rounds: int, logs: Path) -> None:
    X = np.random.default_rng(0).normal(size=(2000, 8))
    rows = X[:4]
    service.train(home, "det", X, "IsolationForest", {"n_estimators": 20, "random_state": 0})
    token = make_token(home, "admin")
    servers = [ApiServer(home, "--job-workers", "0", log=logs / f"{label.split()[0].lower()}-{i}.log") for i in range(2)]
    delays = []
    try:
        for s in servers:
            served_version(s, token, rows)  # loaded and cached: the latest is looked up from now on
        for r in range(rounds):
            d = service.train(home, "det", X, "IsolationForest", {"n_estimators": 20, "random_state": r + 1})
            saved = time.perf_counter()
            want = str(d.version)
            for s in servers:
                while served_version(s, token, rows) != want:
                    if time.perf_counter() - saved > 60:
                        raise RuntimeError(f"{label}: version {want} not served after 60 s")
                    time.sleep(0.005)
                delays.append(time.perf_counter() - saved)
            time.sleep(0.3 + 0.7 * ((r * 0.37) % 1))  # saves at varied phases of any polling
    finally:
        for s in servers:
            s.stop()
    delays_ms = sorted(1000 * d for d in delays)
    print(f"  {label:34s} median {statistics.median(delays_ms):7.1f} ms   max {max(delays_ms):7.1f} ms"
          f"   ({len(delays_ms)} version x server pairs)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    info = pynomaly.build_info()
    print(f"# cpu: {cpu_model()}, cpus={os.cpu_count()}; pynomaly {info['version']} simd={info['simd']}")
    print("# from a save's commit to a replica serving the new version (two API replicas per home)")
    server, why = _pg.server()
    if server is None:
        sys.exit(f"no PostgreSQL server: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["PYNOMALY_CONFIG_DIR"] = str(tmp / "config")
        try:
            measure(server.new_database(), "PostgreSQL home (LISTEN/NOTIFY)", args.rounds, tmp)
        finally:
            server.close()
        measure(tmp / "folder-home", "folder home (polling every 1 s)", args.rounds, tmp)


if __name__ == "__main__":
    main()
