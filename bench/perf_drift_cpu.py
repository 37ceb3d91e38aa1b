"""What drift monitoring costs the daemon's native path in CPU, from `perf` samples per thread
(issue 24): the wall-clock A/B (bench/ab_daemon.py --b-args=--no-drift) moves by more than the
few percent it has to resolve on a shared 2-core machine, while CPU samples counted per thread
and per request see the cost directly: the loop thread's (where C++ keeps the sample rows) and
the other threads' (the hand-over, the counting thread, the flush to the home).

    python bench/perf_drift_cpu.py [--seconds 10] [--rounds 2] [--conns 1,8,64]

Starts one daemon on a repository home (a cardio forest with its drift reference and an alert
rule, as ab_daemon --repository does), with drift on and again with --no-drift, alternating,
drives it with bench/loadgen.c single-row detects, and records `perf record -e cpu-clock` of the
daemon (software clock: it works in VMs without hardware counters). Prints samples per 1,000
requests: the loop thread, the other threads, the total, and on/off.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pynomaly
from ab_daemon import start
from bench_daemon import cpu_model, load_dataset, prepare, run_loadgen


def samples_per_thread(data: Path) -> list:
    out = subprocess.run(["perf", "report", "-i", str(data), "--sort", "pid", "--stdio", "--no-children", "-g", "none",
                          "-n"], capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip() and not line.startswith("#")]
    return sorted((int(r[1]) for r in rows if len(r) >= 3 and r[1].isdigit()), reverse=True)


def one(python, tmp, home, loadgen, frame, conns, seconds, extra) -> tuple[float, float, float]:
    p, sock = start(python, tmp, None, "d", ["--home", str(home), *extra])
    try:
        run_loadgen(loadgen, sock, frame, conns, 1.0)  # warm: the model loaded, the loop threads started
        data = tmp / "perf.data"
        perf = subprocess.Popen(["perf", "record", "-F", "4999", "-e", "cpu-clock", "-p", str(p.pid), "-o", str(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        r = run_loadgen(loadgen, sock, frame, conns, seconds)
        perf.send_signal(2)
        perf.wait()
    finally:
        p.terminate()
        p.wait()
    per_thread = samples_per_thread(data)
    k = r["rps"] * seconds / 1000.0
    return per_thread[0] / k, sum(per_thread[1:]) / k, r["rps"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--conns", default="1,8,64")
    args = ap.parse_args()
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed (apt-get install linux-perf)")
    from pynomaly import service
    from pynomaly.service import alerts

    X, name = load_dataset("cardio")
    print(f"# cpu: {cpu_model()}; simd={pynomaly.build_info()['simd']}; {name} {X.shape}; {args.rounds} rounds x "
          f"{args.seconds:g} s a side; perf cpu-clock samples (4999 Hz) per 1,000 requests")
    tmp = Path(tempfile.mkdtemp(prefix="pynomaly-perf-drift-"))
    try:
        loadgen, frame = prepare(tmp, pynomaly.IsolationForest(random_state=0).fit(X), X)
        service.train(tmp / "home", "bench", X, params={"random_state": 0})
        alerts.add_rule(tmp / "home", "bench", "log", str(tmp / "alerts.log"))
        print(f"{'conns':>5} {'side':>4} {'req/s':>9} {'loop':>7} {'others':>7} {'total':>7}")
        for conns in (int(c) for c in args.conns.split(",")):
            got = {"on": [], "off": []}
            for _ in range(args.rounds):
                for side, extra in (("on", []), ("off", ["--no-drift"])):
                    got[side].append(one(sys.executable, tmp, tmp / "home", loadgen, frame, conns, args.seconds, extra))
            med = {s: np.median(np.array(v), axis=0) for s, v in got.items()}
            for s in ("on", "off"):
                loop, others, rps = med[s]
                print(f"{conns:>5} {s:>4} {rps:>9,.0f} {loop:>7.2f} {others:>7.2f} {loop + others:>7.2f}")
            on, off = med["on"], med["off"]
            print(f"{conns:>5} on/off CPU per request: loop {on[0] / off[0]:.3f}, others {on[1] / off[1]:.2f}, "
                  f"total {(on[0] + on[1]) / (off[0] + off[1]):.3f}; req/s {on[2] / off[2]:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
