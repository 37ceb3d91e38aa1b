"""A/B of two builds of the daemon on the same machine, in the same run: a change's before and
after, driven by the same client (bench/loadgen.c) in alternating rounds.

    python bench/ab_daemon.py --baseline-python /path/to/other/venv/bin/python [--rounds 9]

Both daemons serve the same model folder (an IsolationForest trained on cardio) on their own
sockets; each load point runs `rounds` times per side, A and B alternating, so noise from other
processes on a shared machine hits both alike. Prints medians, the B/A ratio per point and the
spread of that ratio over rounds (the run-to-run noise), for single-row requests at 1, 8 and 64
connections and for 1k- and 100k-row batches through pynomaly.Client. This interpreter runs
side A ("this build"); `--baseline-python` runs side B.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import pynomaly

from bench_daemon import cpu_model, load_dataset, prepare, run_loadgen


def start(python: str, tmp: Path, models: Path, name: str, extra=()) -> "tuple[subprocess.Popen, Path]":
    sock = tmp / f"{name}.sock"
    source = ["--models", str(models)] if models is not None else []
    p = subprocess.Popen([python, "-m", "pynomaly_daemon", "--socket", str(sock), *source,
                          "--log-level", "WARNING", *extra],
                         stdout=subprocess.PIPE, stderr=open(tmp / f"{name}.log", "w"), text=True)
    line = p.stdout.readline()
    if not line.startswith("READY"):
        raise SystemExit(f"daemon {name} did not start: {line!r}; see {tmp / (name + '.log')}")
    return p, sock


def which(python: str) -> str:
    return subprocess.run([python, "-c", "import pynomaly_daemon; print(pynomaly_daemon.__file__)"],
                          capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-python", required=True, help="interpreter whose pynomaly_daemon is side B")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds per single-row round and side")
    ap.add_argument("--daemon-args", default="", help="extra options for both daemons, e.g. --daemon-args=--no-fast-path")
    ap.add_argument("--a-args", default="", help="extra options for side A only, e.g. --a-args='--metrics-port 9400'")
    ap.add_argument("--b-args", default="", help="extra options for side B only")
    ap.add_argument("--anomalous", action="store_true",
                    help="send the dataset's most anomalous row (every request an anomaly: the alerts' worst case)")
    ap.add_argument("--repository", action="store_true",
                    help="serve a repository home (with an alert rule on the detector) instead of a model folder")
    args = ap.parse_args()
    X, name = load_dataset("cardio")
    info = pynomaly.build_info()
    print(f"# cpu: {cpu_model()}; simd={info['simd']}; dataset={name} {X.shape}; rounds={args.rounds}; "
          f"daemon args {args.daemon_args!r}; A {args.a_args!r}; B {args.b_args!r}; anomalous={args.anomalous}; "
          f"repository={args.repository}")
    print(f"# A: {which(sys.executable)}\n# B: {which(args.baseline_python)}")
    model = pynomaly.IsolationForest(random_state=0).fit(X)
    tmp = Path(tempfile.mkdtemp(prefix="pynomaly-ab-"))
    procs = []
    try:
        loadgen, frame = prepare(tmp, model, X)
        if args.anomalous:
            from bench_daemon import _frame, _rows, wire

            top = int(np.argmax(model.decision_function(X)))
            frame.write_bytes(_frame(wire.Detect(1, "bench", None, ["scores", "labels"], rows=_rows(X[top : top + 1]))))
        extra = args.daemon_args.split()
        models = tmp / "models"
        if args.repository:  # issue 12: a home whose detector has an alert rule (to a log file)
            from pynomaly.service import alerts
            from pynomaly import service

            service.train(tmp / "home", "bench", X, params={"random_state": 0})
            alerts.add_rule(tmp / "home", "bench", "log", str(tmp / "alerts.log"))
            models = None
            extra = ["--home", str(tmp / "home"), *extra]
        a, sock_a = start(sys.executable, tmp, models, "a", extra + args.a_args.split())
        b, sock_b = start(args.baseline_python, tmp, models, "b", extra + args.b_args.split())
        procs = [a, b]
        print(f"\n{'point':>14} {'A req/s':>10} {'B req/s':>10} {'A/B':>6} {'A/B spread':>14} "
              f"{'A p99 us':>9} {'B p99 us':>9} {'A/B p99':>8}")
        def cpu(p) -> float:  # the daemon's CPU seconds so far (user + system)
            f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

        def measured(p, sock, conns):
            c0 = cpu(p)
            r = run_loadgen(loadgen, sock, frame, conns, args.seconds)
            # CPU per request: what a change costs, less sensitive than req/s to a shared machine.
            r["cpu_us"] = 1e6 * (cpu(p) - c0) / max(r["rps"] * args.seconds, 1)
            return r

        cpu_rows = []
        for conns in (1, 8, 64):
            ra, rb = [], []
            for _ in range(args.rounds):
                ra.append(measured(a, sock_a, conns))
                rb.append(measured(b, sock_b, conns))
            ca_, cb_ = float(np.median([r["cpu_us"] for r in ra])), float(np.median([r["cpu_us"] for r in rb]))
            cpu_rows.append(f"{f'{conns} x 1':>14} {ca_:>10.2f} {cb_:>10.2f} {ca_ / cb_:>6.2f}")
            ratios = [x["rps"] / y["rps"] for x, y in zip(ra, rb)]
            ma = {k: float(np.median([r[k] for r in ra])) for k in ra[0]}
            mb = {k: float(np.median([r[k] for r in rb])) for k in rb[0]}
            q1, q3 = np.percentile(ratios, [25, 75])
            print(f"{f'{conns} x 1':>14} {ma['rps']:>10,.0f} {mb['rps']:>10,.0f} {ma['rps'] / mb['rps']:>6.2f} "
                  f"{f'{q1:.2f}-{q3:.2f}':>14} {ma['p99_us']:>9.0f} {mb['p99_us']:>9.0f} "
                  f"{ma['p99_us'] / mb['p99_us']:>8.2f}")
        print(f"\n{'point':>14} {'A cpu us':>10} {'B cpu us':>10} {'A/B':>6}   (daemon CPU per request, medians)")
        print("\n".join(cpu_rows))
        ca, cb = pynomaly.Client(str(sock_a)), pynomaly.Client(str(sock_b))
        rng = np.random.default_rng(0)
        for n in (1_000, 100_000):
            B = X[rng.integers(0, len(X), n)]
            assert np.array_equal(ca.detect("bench", B).scores, cb.detect("bench", B).scores)
            reps = max(5, int(0.5 / (n * 0.5e-6))) * args.rounds // 3
            ta, tb = [], []
            for _ in range(reps):
                for c, t in ((ca, ta), (cb, tb)):
                    t0 = time.perf_counter()
                    c.detect("bench", B, want=["scores"])
                    t.append(time.perf_counter() - t0)
            ra_, rb_ = n / np.median(ta), n / np.median(tb)
            pairs = [y / x for x, y in zip(ta, tb)]
            q1, q3 = np.percentile(pairs, [25, 75])
            print(f"{f'{n} rows':>14} {ra_:>10,.0f} {rb_:>10,.0f} {ra_ / rb_:>6.2f} {f'{q1:.2f}-{q3:.2f}':>14}"
                  f"   (rows/s, {reps} calls per side)")
        ca.close()
        cb.close()
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
