"""The HTTP face against MLServer (the server a user would otherwise pick) and a bare Starlette
ceiling, one load generator for all, in one run.

    python bench/bench_http.py [--seconds 8] [--rounds 3] [--mlserver-python PATH]

Servers, all on 127.0.0.1, one process each:
- ``pynomaly api`` (1 worker) serving the detector through the Open Inference Protocol v2;
- MLServer + mlserver-sklearn 1.7.1 (``parallel_workers: 0``) serving the same scikit-learn
  IsolationForest saved with joblib, in its own virtualenv (``--mlserver-python``; set up with
  ``python -m venv V && V/bin/pip install mlserver==1.7.1 mlserver-sklearn==1.7.1``); skipped
  with the reason when absent;
- the ceiling: a bare Starlette app on the same uvicorn (uvloop, httptools, no access log)
  that reads the request body and answers a fixed JSON body as long as ours.
pynomaly serves the same forest: ``IsolationForest.from_sklearn`` imports it exactly (scores
equal to 1e-12, checked below), so both servers do the same work.

Load: Debian's ``wrk`` (one thread) with a Lua script that POSTs a fixed body and prints the
latency percentiles; rounds alternate between the servers so that noise from other processes
hits each. The daemon's socket path (bench/loadgen.c, 8 connections) is printed for reference.

1. Single-row JSON ``infer`` at 8 connections: req/s, p50, p99, server CPU per request.
2. A 100k-row ``infer`` at 1 connection: ours with binary tensor data (what tritonclient
   sends), MLServer with JSON (its REST side has no binary tensor extension); rows/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_daemon import cpu_model, load_dataset  # noqa: E402

import pynomaly  # noqa: E402
from pynomaly import service  # noqa: E402

CEILING_APP = '''
import os
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
BODY = open(os.environ["CEILING_BODY"], "rb").read()
async def infer(request):
    await request.body()
    return Response(BODY, media_type="application/json")
app = Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"])])
'''

WRK_SCRIPT = '''
wrk.method = "POST"
local f = io.open(os.getenv("WRK_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("WRK_TOKEN")
if token and token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
local hlen = os.getenv("WRK_HLEN")
if hlen and hlen ~= "" then wrk.headers["Inference-Header-Content-Length"] = hlen end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status + e.connect + e.read + e.write + e.timeout))
end
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, what: str, log: Path, timeout: float = 120, post: bool = False) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=b"{}" if post else None), timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} did not become ready; see {log}")


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by a process and all its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0.0))[1]
        todo += [c for c, (ppid, _) in stats.items() if ppid == p]
    return total


def wrk(url: str, body: Path, conns: int, seconds: float, token: str = "", hlen=None) -> dict:
    env = dict(os.environ, WRK_BODY=str(body), WRK_TOKEN=token, WRK_HLEN=str(hlen or ""))
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "60s", "-s",
                          str(body.parent / "post.lua"), url], capture_output=True, text=True, env=env,
                         timeout=seconds + 120)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")]
    if not line:
        raise SystemExit(f"wrk failed: {out.stdout}\n{out.stderr}")
    n, dur_us, p50, p99, errors = map(int, line[-1].split()[1:])
    if errors:
        raise SystemExit(f"wrk saw {errors} errors or non-2xx answers from {url}")
    return {"rps": n / (dur_us / 1e6), "p50_ms": p50 / 1e3, "p99_ms": p99 / 1e3, "n": n}


class Server:
    """A server process; ``ready`` is a URL answering GET 200 once it serves (None: POST to ``url``)."""

    def __init__(self, name: str, cmd, env, url: str, ready, tmp: Path):
        self.name, self.url = name, url
        self.log = tmp / f"{name}.log"
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     cwd=str(tmp))
        wait_http(ready or url, self.proc, name, self.log, post=ready is None)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def measure(server: Server, body: Path, conns: int, seconds: float, token: str = "", hlen=None) -> dict:
    c0 = tree_cpu(server.proc.pid)
    r = wrk(server.url, body, conns, seconds, token, hlen)
    r["cpu_ms"] = (tree_cpu(server.proc.pid) - c0) / r["n"] * 1e3
    return r


def med(rs, key):
    return float(np.median([r[key] for r in rs]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds per single-row measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per table")
    ap.add_argument("--dataset", default="cardio")
    ap.add_argument("--big-rows", type=int, default=100_000)
    ap.add_argument("--big-seconds", type=float, default=20.0)
    ap.add_argument("--mlserver-python", default=os.environ.get("MLSERVER_PYTHON", "/work/venv-mlserver/bin/python"))
    ap.add_argument("--sections", default="single,big,daemon")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    from sklearn.ensemble import IsolationForest as SkForest

    X, dsname = load_dataset(args.dataset)
    d = X.shape[1]
    sk = SkForest(n_estimators=100, random_state=0).fit(X)
    ours = pynomaly.IsolationForest.from_sklearn(sk)
    assert np.allclose(ours.decision_function(X[:1000]), -sk.score_samples(X[:1000]), rtol=0, atol=1e-12)
    print(f"# bench_http  cpu: {cpu_model()}  kernel: {pynomaly.build_info().get('iforest_kernel')}  "
          f"simd: {pynomaly.build_info().get('simd')}  cores: {os.cpu_count()}  dataset: {dsname} ({X.shape[0]}x{d})")
    print("# IsolationForest(n_estimators=100) fitted by scikit-learn; pynomaly serves the same forest "
          "(IsolationForest.from_sklearn, scores equal to 1e-12)")
    sections = set(args.sections.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    servers = []
    try:
        (tmp / "post.lua").write_text(WRK_SCRIPT)
        home = tmp / "home"
        service.export_model(ours, tmp / "iforest.pnx", "iforest", "IsolationForest")
        service.import_detector(home, tmp / "iforest.pnx")
        token = subprocess.run([sys.executable, "-m", "pynomaly", "--home", str(home), "token", "create", "--user",
                                "bench", "--role", "operator"], capture_output=True, text=True,
                               check=True).stdout.strip().splitlines()[-1]
        port = free_port()
        ours_srv = Server("pynomaly", [sys.executable, "-m", "pynomaly", "--home", str(home), "api", "--port",
                                       str(port), "--log-level", "warning"], dict(os.environ),
                          f"http://127.0.0.1:{port}/v2/models/iforest/infer", f"http://127.0.0.1:{port}/v2/health/ready",
                          tmp)
        servers.append(ours_srv)
        one = {"inputs": [{"name": "input", "shape": [1, d], "datatype": "FP64", "data": X[0].tolist()}]}
        body1 = tmp / "one.json"
        body1.write_text(json.dumps(one))
        req = urllib.request.Request(ours_srv.url, data=body1.read_bytes(), headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        our_reply = urllib.request.urlopen(req).read()
        ceiling_body = tmp / "ceiling.json"
        ceiling_body.write_bytes(our_reply)

        cport = free_port()
        (tmp / "ceiling_app.py").write_text(CEILING_APP)
        ceiling = Server("ceiling", [sys.executable, "-m", "uvicorn", "ceiling_app:app", "--port", str(cport),
                                     "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level",
                                     "warning"], dict(os.environ, CEILING_BODY=str(ceiling_body), PYTHONPATH=str(tmp)),
                         f"http://127.0.0.1:{cport}/v2/models/iforest/infer", None, tmp)
        servers.append(ceiling)

        mls = None
        mlpython = Path(args.mlserver_python)
        if mlpython.exists():
            import joblib

            mdir = tmp / "mlserver" / "iforest"
            mdir.mkdir(parents=True)
            joblib.dump(sk, mdir / "model.joblib")
            (mdir / "model-settings.json").write_text(json.dumps({
                "name": "iforest", "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib"}}))
            mport, gport, metport = free_port(), free_port(), free_port()
            (tmp / "mlserver" / "settings.json").write_text(json.dumps({
                "host": "127.0.0.1", "http_port": mport, "grpc_port": gport, "metrics_port": metport,
                "parallel_workers": 0, "debug": False}))
            mls = Server("mlserver", [str(mlpython.parent / "mlserver"), "start", str(tmp / "mlserver")],
                         dict(os.environ, PATH=f"{mlpython.parent}:{os.environ['PATH']}"),
                         f"http://127.0.0.1:{mport}/v2/models/iforest/infer",
                         f"http://127.0.0.1:{mport}/v2/models/iforest/ready", tmp)
            servers.append(mls)
            reply = json.loads(urllib.request.urlopen(urllib.request.Request(
                mls.url, data=body1.read_bytes(), headers={"Content-Type": "application/json"})).read())
            assert reply["outputs"][0]["data"] == [int(sk.predict(X[:1])[0])], reply
            ver = subprocess.run([str(mlpython.parent / "mlserver"), "--version"], capture_output=True,
                                 text=True).stdout.strip()
            print(f"# MLServer: {ver}, parallel_workers 0, answering predict (its default output)")
        else:
            print(f"# MLServer: not found at {mlpython} (set --mlserver-python); its columns are skipped")

        if "single" in sections:
            print(f"\n## single-row JSON infer, wrk -t1 -c8, {args.seconds:g} s x {args.rounds} alternating rounds "
                  "(medians; cpu = server CPU ms per request, all its processes)")
            res = {"pynomaly": [], "ceiling": [], "mlserver": []}
            for _ in range(args.rounds):
                res["pynomaly"].append(measure(ours_srv, body1, 8, args.seconds, token))
                res["ceiling"].append(measure(ceiling, body1, 8, args.seconds))
                if mls is not None:
                    res["mlserver"].append(measure(mls, body1, 8, args.seconds))
            print(f"{'server':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms':>7}")
            for name, rs in res.items():
                if rs:
                    print(f"{name:<10} {med(rs, 'rps'):>9,.0f} {med(rs, 'p50_ms'):>8.2f} {med(rs, 'p99_ms'):>8.2f} "
                          f"{med(rs, 'cpu_ms'):>7.3f}")
            ours_r = res["pynomaly"]
            ceil_ratio = [a["rps"] / b["rps"] for a, b in zip(ours_r, res["ceiling"])]
            print(f"pynomaly / ceiling req/s: {np.median(ceil_ratio):.2f} (rounds {min(ceil_ratio):.2f}-"
                  f"{max(ceil_ratio):.2f}; target >= 0.60)")
            if res["mlserver"]:
                r = [a["rps"] / b["rps"] for a, b in zip(ours_r, res["mlserver"])]
                p = [b["p99_ms"] / a["p99_ms"] for a, b in zip(ours_r, res["mlserver"])]
                print(f"pynomaly / MLServer req/s: {np.median(r):.1f}x (rounds {min(r):.1f}-{max(r):.1f}; target >= 50x)"
                      f"; MLServer p99 / pynomaly p99: {np.median(p):.1f}x (target >= 20x)")

        if "big" in sections:
            n = args.big_rows
            rows = X[np.arange(n) % X.shape[0]]
            head = json.dumps({"inputs": [{"name": "input", "shape": [n, d], "datatype": "FP64",
                                           "parameters": {"binary_data_size": rows.nbytes}}],
                               "outputs": [{"name": "scores", "parameters": {"binary_data": True}},
                                           {"name": "labels", "parameters": {"binary_data": True}}]}).encode()
            bin_body = tmp / "big.bin"
            bin_body.write_bytes(head + rows.astype("<f8").tobytes())
            json_body = tmp / "big.json"
            json_body.write_text(json.dumps({"inputs": [{"name": "input", "shape": [n, d], "datatype": "FP64",
                                                         "data": rows.reshape(-1).tolist()}]}))
            print(f"\n## {n:,}-row infer, wrk -t1 -c1, {args.big_seconds:g} s x {args.rounds} alternating rounds; "
                  f"bodies: binary {bin_body.stat().st_size / 1e6:.1f} MB, JSON {json_body.stat().st_size / 1e6:.1f} MB")
            res = {"pynomaly binary": [], "pynomaly JSON": [], "MLServer JSON": []}
            for _ in range(args.rounds):
                res["pynomaly binary"].append(measure(ours_srv, bin_body, 1, args.big_seconds, token, len(head)))
                res["pynomaly JSON"].append(measure(ours_srv, json_body, 1, args.big_seconds, token))
                if mls is not None:
                    res["MLServer JSON"].append(measure(mls, json_body, 1, args.big_seconds))
            t0 = time.perf_counter()
            for _ in range(5):
                ours.decision_function(rows)
            inproc = 5 * n / (time.perf_counter() - t0)
            print(f"{'server':<16} {'rows/s':>12} {'p50 ms':>9} {'cpu ms':>8}")
            for name, rs in res.items():
                if rs:
                    print(f"{name:<16} {med(rs, 'rps') * n:>12,.0f} {med(rs, 'p50_ms'):>9.1f} {med(rs, 'cpu_ms'):>8.1f}")
            print(f"{'in-process':<16} {inproc:>12,.0f}   (decision_function, same rows, this process)")
            if res["MLServer JSON"]:
                r = [a["rps"] / b["rps"] for a, b in zip(res["pynomaly binary"], res["MLServer JSON"])]
                print(f"pynomaly binary / MLServer JSON rows/s: {np.median(r):.1f}x (rounds {min(r):.1f}-{max(r):.1f}; "
                      "target >= 10x)")

        if "daemon" in sections:
            from bench_daemon import prepare, run_loadgen, start_daemon

            loadgen, frame = prepare(tmp, ours, X)
            daemon = start_daemon(tmp, tmp / "models")
            try:
                rs = [run_loadgen(loadgen, tmp / "daemon.sock", frame, 8, min(args.seconds, 4)) for _ in range(args.rounds)]
            finally:
                daemon.terminate()
                daemon.wait(30)
            print(f"\n## reference: the daemon's Unix socket, single-row detect, bench/loadgen.c 8 connections: "
                  f"{med(rs, 'rps'):,.0f} req/s, p50 {med(rs, 'p50_us') / 1e3:.3f} ms, p99 {med(rs, 'p99_us') / 1e3:.3f} ms")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
