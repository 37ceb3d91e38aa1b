"""What counting rows for drift costs the HTTP face (issue 24's target: single-row infer req/s with
drift on >= 0.97 of off), two servers side by side in one run.

    python bench/ab_http_drift.py [--rounds 15] [--seconds 2] [--conns 8]

Two ``pynomaly api`` processes (1 worker each) serve the same repository home, where an
IsolationForest trained on cardio has its drift reference: "on" as shipped, "off" with
``--no-drift``. wrk (bench/bench_http.py's helpers: one thread, a Lua script POSTing a fixed
body) drives single-row OIP JSON infer at ``--conns`` connections in short alternating rounds
(the order flips every round), so that noise from other processes on a shared machine hits
both sides alike. Prints each round's req/s and on/off ratio, the ratios' median and spread,
server CPU per request, the CPU model and the SIMD target, and checks at the end that "on"
counted its rows in the drift window (and "off" none).

First, in this process and without the noise of a server: what drift adds per single-row
request, the Observer's work on the event loop (``scored``, on against off) and in its counting
thread (``_count_drift`` of a quarter second's rows), best of 20 passes over 2,000 rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_daemon import cpu_model, load_dataset  # noqa: E402
from bench_http import WRK_SCRIPT, Server, free_port, measure  # noqa: E402

import pynomaly  # noqa: E402
from pynomaly import service  # noqa: E402


def observer_cost(home: Path, X: np.ndarray) -> None:
    import time

    from pynomaly.serving.observe import Observer

    version = service.load_for_scoring(home, "bench").version
    rows = [X[i % len(X):i % len(X) + 1].copy() for i in range(2000)]
    scores = [np.array([0.5]) for _ in rows]
    flags = np.zeros(1, bool)
    best = {"on": float("inf"), "off": float("inf"), "count": float("inf")}
    for side, drift_home in (("on", str(home)), ("off", None)):
        obs = Observer(None, drift_home=drift_home)
        for _ in range(20):
            t0 = time.perf_counter()
            for x, s in zip(rows, scores):
                obs.scored(version, None, s, flags, x)
            best[side] = min(best[side], (time.perf_counter() - t0) / len(rows))
            if drift_home is not None:
                held, obs.drift = obs.drift, {}
                t0 = time.perf_counter()
                obs._count_drift(held, time.time())
                best["count"] = min(best["count"], (time.perf_counter() - t0) / len(rows))
    print(f"in-process, per single-row request: Observer.scored on {best['on'] * 1e6:.2f} us, off "
          f"{best['off'] * 1e6:.2f} us; counting thread {best['count'] * 1e6:.2f} us a row; drift adds "
          f"{(best['on'] - best['off'] + best['count']) * 1e6:.2f} us a request")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per round and side")
    ap.add_argument("--conns", type=int, default=8)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    X, dsname = load_dataset("cardio")
    info = pynomaly.build_info()
    print(f"# ab_http_drift  cpu: {cpu_model()}  simd: {info.get('simd')}  cores: {os.cpu_count()}  "
          f"dataset: {dsname} {X.shape}  rounds: {args.rounds} x {args.seconds:g} s a side, wrk -t1 -c{args.conns}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-drift-"))
    servers = {}
    try:
        (tmp / "post.lua").write_text(WRK_SCRIPT)
        home = tmp / "home"
        service.train(home, "bench", X, "IsolationForest", {"n_estimators": 100, "random_state": 0})
        observer_cost(home, X)
        token = subprocess.run([sys.executable, "-m", "pynomaly", "--home", str(home), "token", "create", "--user",
                                "bench", "--role", "operator"], capture_output=True, text=True,
                               check=True).stdout.strip().splitlines()[-1]
        for side, extra in (("on", []), ("off", ["--no-drift"])):
            port = free_port()
            servers[side] = Server(f"api-{side}", [sys.executable, "-m", "pynomaly", "--home", str(home), "api",
                                                   "--port", str(port), "--log-level", "warning", *extra],
                                   dict(os.environ), f"http://127.0.0.1:{port}/v2/models/bench/infer",
                                   f"http://127.0.0.1:{port}/v2/health/ready", tmp)
        body = tmp / "one.json"
        body.write_text(json.dumps({"inputs": [{"name": "input", "shape": [1, X.shape[1]], "datatype": "FP64",
                                                "data": X[0].tolist()}]}))
        for s in servers.values():  # warm: the detector loaded, the reference read
            measure(s, body, args.conns, 1.0, token)
        res = {"on": [], "off": []}
        print(f"\n{'round':>5} {'on req/s':>10} {'off req/s':>10} {'on/off':>7} {'on cpu ms':>10} {'off cpu ms':>10}")
        for i in range(args.rounds):
            for side in (("on", "off") if i % 2 == 0 else ("off", "on")):
                res[side].append(measure(servers[side], body, args.conns, args.seconds, token))
            on, off = res["on"][-1], res["off"][-1]
            print(f"{i + 1:>5} {on['rps']:>10,.0f} {off['rps']:>10,.0f} {on['rps'] / off['rps']:>7.3f} "
                  f"{on['cpu_ms']:>10.4f} {off['cpu_ms']:>10.4f}")
        ratios = np.array([a["rps"] / b["rps"] for a, b in zip(res["on"], res["off"])])
        q1, q3 = np.quantile(ratios, [0.25, 0.75])
        cpu = {k: float(np.median([r["cpu_ms"] for r in v])) for k, v in res.items()}
        rps = {k: float(np.median([r["rps"] for r in v])) for k, v in res.items()}
        print(f"\nmedian req/s: on {rps['on']:,.0f}, off {rps['off']:,.0f}; on/off per round: median "
              f"{np.median(ratios):.3f}, quartiles {q1:.3f}..{q3:.3f}, range {ratios.min():.3f}..{ratios.max():.3f} "
              f"(target >= 0.97)")
        print(f"server CPU per request (median): on {cpu['on'] * 1e3:.1f} us, off {cpu['off'] * 1e3:.1f} us "
              f"(on/off {cpu['on'] / cpu['off']:.3f})")
        served = {k: sum(r["n"] for r in v) for k, v in res.items()}
        drift_url = servers["on"].url.replace("/v2/models/bench/infer", "/api/v1/detectors/bench/drift")
        req = urllib.request.Request(drift_url, headers={"Authorization": f"Bearer {token}"})
        doc = json.loads(urllib.request.urlopen(req, timeout=60).read())
        print(f"drift window: {doc['rows_seen']:,} rows seen ({doc['rows']:,} profiled); the 'on' server answered "
              f"{served['on']:,} timed requests (plus its warm-up), the 'off' one {served['off']:,}")
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
