"""User-space instructions per request of the daemon and of the HTTP face, under callgrind.

    python bench/callgrind_requests.py [--python /path/to/venv/bin/python] [--repeat 2] [--drift on|off]

Instructions are what other processes on a shared machine do not disturb, so two builds can be
compared to a fraction of a percent where wall-clock rounds disagree by tens of percent. Each
point starts one server process under ``valgrind --tool=callgrind --instr-atstart=no``, sends
warm-up requests, switches instrumentation on (``callgrind_control -i on``), counts a short idle
time, sends N sequential requests from this process, switches it off, stops the server (SIGTERM:
callgrind writes its file) and reads the ``totals:`` lines: Ir / N, less the idle rate (below),
is the server's cost per request, every thread of it, kernel time not counted.

Points (``--points``, comma-separated):
- daemon-native: default daemon flags: the native connection loop and the native fast path;
- daemon-uvloop: ``--no-native-loop``: uvloop connections, the native fast path;
- daemon-python: ``--no-fast-path``: uvloop connections, every request through the Python path
  (what LOF, KNN, PyOD, torch and JAX detectors always take);
  each daemon point sends single-row and 1k-row ``detect`` (pynomaly.Client, scores + labels)
  to a model folder holding a default IsolationForest (random_state=0) of cardio;
- http: ``pynomaly api`` (1 worker, a token of role operator, ``--job-workers 0`` so that no job
  poller runs beside the requests) serving the same detector, single-row OIP v2 JSON
  ``POST /v2/models/bench/infer`` from a keep-alive http.client connection.

Work that follows the clock rather than the requests is kept out of the count: the servers'
check for a newer model version is turned off (daemon ``--refresh-interval 3600``; the HTTP
server's setting, which has no flag, through HTTP_SERVER below), and what still runs while idle
(timers, the revocation poller) is measured for a few seconds before the requests and its rate
times the requests' window taken off. Without that, two runs of the same build differed by up to
6% per HTTP request, since a loaded machine stretches the window.

``--drift on|off`` (issue 24) serves the daemon points from a repository home whose detector has
a drift reference instead of the model folder, with drift counting on or off (``--no-drift``),
and turns the HTTP server's counting on or off (off: ``pynomaly api --no-drift``);
without it, the daemon serves the folder (no references: nothing to count) and the HTTP server
counts, as before.

``--python`` picks the interpreter (venv) that prepares the model and runs the servers, so the
same script measures a baseline tree and a changed one; this interpreter only sends requests
(pynomaly.Client for the daemon). Under valgrind the CPU has no AVX-512 (valgrind does not
emulate it): the servers run the avx2 target, and the forest kernel for 1k rows is whichever
calibration picks under valgrind (printed from a probe run; the single-row calls take the
few-rows walk whatever it is).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DAEMON_FLAGS = {"daemon-native": [], "daemon-uvloop": ["--no-native-loop"], "daemon-python": ["--no-fast-path"]}
# The daemon's check for a newer version of the model (once a second while requests come) is
# one lump of work (a thread hop, a directory listing) that a short window catches or not: off.
DAEMON_COMMON = ["--log-level", "WARNING", "--refresh-interval", "3600"]
POINTS = (*DAEMON_FLAGS, "http")
VALGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]

PREPARE = r"""
import sys
from pathlib import Path
import numpy as np
import pynomaly
X = np.load(sys.argv[1])
model = pynomaly.IsolationForest(random_state=0).fit(X)
d = Path(sys.argv[2]) / "bench"
d.mkdir(parents=True)
(d / "1.pnm").write_bytes(model.to_bytes())
"""

# `python -m pynomaly api ...` with the cache's check for a newer model version (once a second
# while requests come) turned off: its lumps of work (a thread hop, a database query) follow the
# wall clock, not the requests. The server reads its settings from the environment the CLI fills.
HTTP_SERVER = r"""
import json, os, runpy, sys
try:
    from pynomaly_api.settings import Settings
    to_env = Settings.to_env
except (ImportError, AttributeError) as e:
    sys.exit(f"cannot turn the refresh off ({e}): adapt HTTP_SERVER in bench/callgrind_requests.py")
Settings.to_env = lambda self: json.dumps({**json.loads(to_env(self)), "refresh_interval_s": 3600.0})
sys.argv[0] = "pynomaly"
runpy.run_module("pynomaly", run_name="__main__", alter_sys=True)
"""

PROBE = "import json, pynomaly; print(json.dumps(pynomaly.build_info()))"


def dataset() -> np.ndarray:
    """cardio (1831 x 21) from the shared datasets, else the copy bundled with pynomaly."""
    root = Path(os.environ.get("PYNOMALY_DATASETS", HERE.parent.parent / "shared" / "datasets"))
    path = root / "cardio.npz"
    if not path.exists():
        import pynomaly

        path = Path(pynomaly.__file__).parent / "data" / "cardio.npz"
    return np.load(path)["X"].astype(np.float64)


def cpu_model() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def total_ir(path: Path) -> int:
    """The sum of the ``totals:`` lines of a callgrind output file (one per part)."""
    totals = [int(m.group(1)) for m in re.finditer(r"^totals:\s+(\d+)", path.read_text(errors="replace"), re.M)]
    if not totals:
        raise SystemExit(f"no totals: line in {path}")
    return sum(totals)


def control(pid: int, *command: str) -> None:
    """``callgrind_control COMMAND pid``; vgdb reaches a process blocked in a system call too."""
    p = subprocess.run(["callgrind_control", *command, str(pid)], capture_output=True, text=True, timeout=120)
    if p.returncode != 0 or "OK" not in p.stdout:
        raise SystemExit(f"callgrind_control {' '.join(command)} {pid} failed: {p.stdout}{p.stderr}")


class Traced:
    """A server process under callgrind, its output file and its log."""

    def __init__(self, cmd, tmp: Path, name: str):
        self.out = tmp / f"{name}.callgrind"
        self.log = tmp / f"{name}.log"
        self.proc = subprocess.Popen([*VALGRIND, f"--callgrind-out-file={self.out}", *cmd], stdout=subprocess.PIPE,
                                     stderr=open(self.log, "w"), text=True, cwd=str(tmp))

    def stop(self) -> None:
        """SIGTERM and wait for the exit: callgrind writes its last part then."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"server did not stop on SIGTERM; see {self.log}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def measure(server: Traced, send, n: int, idle_s: float) -> dict:
    """Warm up, count ``idle_s`` seconds of nothing (the server's timers and pollers), then n
    requests. The idle part's rate times the requests' window is taken off their count: work
    that runs per second, not per request, would otherwise depend on how fast this client and
    the machine were (under callgrind a window lasts from a fraction of a second to a minute)."""
    for _ in range(max(n // 10, 5)):
        send()
    pid = server.proc.pid
    control(pid, "-i", "on")
    t0 = time.monotonic()
    time.sleep(idle_s)
    control(pid, "-d")  # the idle part goes to <out>.1, and the counters restart from zero
    t1 = time.monotonic()
    for _ in range(n):
        send()
    t2 = time.monotonic()
    control(pid, "-i", "off")
    server.stop()
    idle_rate = total_ir(Path(f"{server.out}.1")) / (t1 - t0)
    raw = total_ir(server.out)
    return {"raw": raw / n, "net": (raw - idle_rate * (t2 - t1)) / n, "idle_rate": idle_rate, "window": t2 - t1}


def daemon_point(args, tmp: Path, flags, rows: int, n: int, tag: str) -> dict:
    import pynomaly

    sock = tmp / f"{tag}.sock"
    source = ["--models", str(tmp / "models")] if args.drift is None else ["--home", str(tmp / "home")]
    if args.drift == "off":
        source.append("--no-drift")
    server = Traced([args.python, "-m", "pynomaly_daemon", "--socket", str(sock), *source, *DAEMON_COMMON, *flags],
                    tmp, tag)
    try:
        line = server.proc.stdout.readline()
        if not line.startswith("READY"):
            raise SystemExit(f"daemon did not start: {line!r}; see {server.log}")
        X = args.X[:rows]
        with pynomaly.Client(str(sock)) as c:
            return measure(server, lambda: c.detect("bench", X), n, args.idle_seconds)
    finally:
        server.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_point(args, tmp: Path, n: int, tag: str) -> dict:
    home = str(tmp / "home")
    port = free_port()
    server = Traced([args.python, "-c", HTTP_SERVER, "--home", home, "api", "--port", str(port), "--log-level",
                     "warning", "--job-workers", "0", *(["--no-drift"] if args.drift == "off" else [])], tmp, tag)
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the API server did not start; see {server.log}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                c.request("GET", "/v2/health/ready")
                r = c.getresponse()
                r.read()
                if r.status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, args.X.shape[1]], "datatype": "FP64",
                                       "data": args.X[0].tolist()}]}).encode()
        headers = {"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"}

        def send():
            c.request("POST", "/v2/models/bench/infer", body=body, headers=headers)
            r = c.getresponse()
            data = r.read()
            if r.status != 200:
                raise SystemExit(f"infer answered {r.status}: {data[:300]!r}")

        return measure(server, send, n, args.idle_seconds)
    finally:
        server.kill()


def run(cmd, **kw) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable, help="interpreter that prepares the model and runs the servers")
    ap.add_argument("--points", default=",".join(POINTS), help=f"comma-separated, of {', '.join(POINTS)}")
    ap.add_argument("--requests", type=int, default=2000, help="counted single-row requests per point")
    ap.add_argument("--batch-requests", type=int, default=200, help="counted 1k-row requests per daemon point")
    ap.add_argument("--idle-seconds", type=float, default=2.0, help="idle time counted before the requests")
    ap.add_argument("--repeat", type=int, default=1, help="measure every point this many times (repeatability)")
    ap.add_argument("--drift", choices=["on", "off"], help="daemon from a home with drift counting on or off; "
                    "the HTTP server's counting on or off (issue 24)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (callgrind files, logs)")
    args = ap.parse_args()
    points = args.points.split(",")
    if unknown := set(points) - set(POINTS):
        raise SystemExit(f"unknown points {sorted(unknown)}; accepted: {', '.join(POINTS)}")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    args.X = dataset()
    tmp = Path(tempfile.mkdtemp(prefix="pynomaly-callgrind-"))
    try:
        np.save(tmp / "X.npy", args.X)
        run([args.python, "-c", PREPARE, str(tmp / "X.npy"), str(tmp / "models")])
        where = run([args.python, "-c", "import pynomaly, pynomaly_daemon; print(pynomaly.__file__)"]).strip()
        native = json.loads(run([args.python, "-c", PROBE]))
        probe = json.loads(run([*VALGRIND, f"--callgrind-out-file={tmp / 'probe.callgrind'}", "-q", args.python,
                                "-c", PROBE]).strip().splitlines()[-1])
        print(f"# cpu: {cpu_model()}; server python {args.python} (pynomaly at {where})")
        print(f"# natively: simd={native['simd']}, iforest kernel {native['iforest_kernel']}; under valgrind: "
              f"simd={probe['simd']}, iforest kernel {probe['iforest_kernel']} ({probe['iforest_kernel_reason']})")
        print(f"# drift: {args.drift or 'daemon from the model folder (nothing to count), HTTP counting'}")
        print(f"# model: pynomaly.IsolationForest(random_state=0) on cardio {args.X.shape}; counted requests: "
              f"{args.requests} single-row, {args.batch_requests} of 1k rows, after a tenth as many warm-up requests")
        if "http" in points or args.drift is not None:
            run([args.python, "-m", "pynomaly", "--home", str(tmp / "home"), "train", "--detector", "bench", "--data",
                 str(tmp / "X.npy"), "--param", "random_state=0"])
            args.token = run([args.python, "-m", "pynomaly", "--home", str(tmp / "home"), "token", "create", "--user",
                              "bench", "--role", "operator"]).strip().splitlines()[-1]
        todo = []
        for p in points:
            if p == "http":
                todo.append((p, "1 row OIP JSON", args.requests, lambda t, p=p: http_point(args, tmp, args.requests, t)))
            else:
                for rows, n in ((1, args.requests), (1000, args.batch_requests)):
                    todo.append((p, f"{rows} row{'s' if rows > 1 else ''} detect", n,
                                 lambda t, p=p, rows=rows, n=n: daemon_point(args, tmp, DAEMON_FLAGS[p], rows, n, t)))
        results = {}
        for r in range(args.repeat):  # all points once, then again: a repeat sees the machine change too
            for i, (p, what, n, fn) in enumerate(todo):
                results.setdefault(i, []).append(fn(f"{p}-{i}-{r}"))
        runs = "".join(f" {f'run {r + 1}':>10}" for r in range(args.repeat)) + "  spread" if args.repeat > 1 else ""
        print(f"\n{'point':<14} {'request':<16} {'counted':>7} {'Ir/request':>11}{runs}   {'raw Ir/req':>11} "
              f"{'idle Ir/s':>10} {'window s':>8}")
        for i, (p, what, n, _) in enumerate(todo):
            res = results[i]
            net = [x["net"] for x in res]
            line = f"{p:<14} {what:<16} {n:>7} {np.median(net):>11,.0f}"
            if args.repeat > 1:
                line += "".join(f" {x:>10,.0f}" for x in net) + f"  {100 * (max(net) - min(net)) / min(net):5.2f}%"
            med = {k: float(np.median([x[k] for x in res])) for k in ("raw", "idle_rate", "window")}
            print(f"{line}   {med['raw']:>11,.0f} {med['idle_rate']:>10,.0f} {med['window']:>8.1f}")
        print("# Ir/request: the server's user-space instructions per request, less its idle rate (measured "
              f"{args.idle_seconds:g} s\n# before the requests, same process) times the window; medians over runs; "
              "spread = (max - min) / min of the runs")
    finally:
        if args.keep:
            print(f"# files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
