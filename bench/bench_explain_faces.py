"""Attributions on the serving faces (issue 22): what asking for them costs one client sending
single-row requests, side by side in one run, alternating rounds.

    python bench/bench_explain_faces.py [--requests 3000] [--rounds 3]

- daemon: pynomaly.Client, one connection, one row per request: plain and
  want=["attributions"] with explain_method "path" and "tree_shap", each on the native path
  (the default daemon; forests' attributions are answered there since explain3) and on the
  Python path (a --no-fast-path daemon); ratios to plain on the same path.
- OIP: JSON infer of one row over a kept-alive connection, p50 latency: scores+labels against
  scores+labels+attributions ("path", "tree_shap").
A 100-tree IsolationForest on cardio serves throughout.
"""

from __future__ import annotations

import argparse
import http.client
import json
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _daemon_helpers import DaemonProcess, cardio  # noqa: E402
from _http_helpers import ApiServer, make_token  # noqa: E402
from bench_daemon import cpu_model  # noqa: E402


def daemon_rate(sock, X, n, **kw) -> float:
    with pynomaly.Client(sock) as c:
        c.detect("forest", X[:1], **kw)
        t0 = time.perf_counter()
        for i in range(n):
            c.detect("forest", X[i % len(X): i % len(X) + 1], **kw)
        return n / (time.perf_counter() - t0)


def oip_p50(port, token, X, n, outputs, params) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    heads = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    times = []
    for i in range(n + 20):
        body = {"inputs": [{"name": "input", "shape": [1, X.shape[1]], "datatype": "FP64",
                            "data": X[i % len(X)].tolist()}], "outputs": [{"name": o} for o in outputs]}
        if params:
            body["parameters"] = params
        t0 = time.perf_counter()
        conn.request("POST", "/v2/models/forest/infer", json.dumps(body), heads)
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        if i >= 20:
            times.append(time.perf_counter() - t0)
    conn.close()
    return 1e6 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    X = cardio()
    print(f"# bench_explain_faces  cpu: {cpu_model()}  simd: {pynomaly.build_info().get('simd')}  "
          f"cores: {os.cpu_count()}  cardio {X.shape}, IsolationForest(n_estimators=100), one client, one row")
    tmp = Path(tempfile.mkdtemp(prefix="bench-explain-faces-"))
    model = pynomaly.IsolationForest(n_estimators=100, contamination=0.1, random_state=0).fit(X)
    from pynomaly_daemon import save_to_folder

    save_to_folder(tmp / "models", "forest", model)
    home = tmp / "home"
    service.train(home, "forest", X, "IsolationForest", {"n_estimators": 100, "contamination": 0.1, "random_state": 0})
    token = make_token(home, "operator")
    fast = DaemonProcess(tmp, tmp / "models", name="fast.sock")
    slow = DaemonProcess(tmp, tmp / "models", "--no-fast-path", name="slow.sock")
    api = ApiServer(home)
    port = int(api.url.rsplit(":", 1)[1])
    want = ["scores", "labels", "attributions"]
    cases = {
        "daemon plain (native path)": lambda: daemon_rate(fast.sock, X, args.requests),
        "daemon plain (Python path)": lambda: daemon_rate(slow.sock, X, args.requests),
        "daemon attributions path": lambda: daemon_rate(fast.sock, X, args.requests, want=want, explain_method="path"),
        "daemon attributions tree_shap": lambda: daemon_rate(fast.sock, X, args.requests, want=want,
                                                             explain_method="tree_shap"),
        "daemon attributions path (Python path)": lambda: daemon_rate(slow.sock, X, args.requests, want=want,
                                                                      explain_method="path"),
        "daemon attributions tree_shap (Python path)": lambda: daemon_rate(slow.sock, X, args.requests, want=want,
                                                                           explain_method="tree_shap"),
        "oip p50 us plain": lambda: oip_p50(port, token, X, args.requests // 3, ["scores", "labels"], None),
        "oip p50 us attributions path": lambda: oip_p50(port, token, X, args.requests // 3, want,
                                                        {"explain_method": "path"}),
        "oip p50 us attributions tree_shap": lambda: oip_p50(port, token, X, args.requests // 3, want,
                                                             {"explain_method": "tree_shap"}),
    }
    got = {k: [] for k in cases}
    try:
        for _ in range(args.rounds):
            for k, f in cases.items():
                got[k].append(f())
    finally:
        fast.stop(), slow.stop(), api.stop()
    med = {k: statistics.median(v) for k, v in got.items()}
    for k, v in med.items():
        unit = "" if k.startswith("oip") else " req/s"
        python = "(Python path)" in k and k != "daemon plain (Python path)"
        base = (med["oip p50 us plain"] if k.startswith("oip")
                else med["daemon plain (Python path)" if python else "daemon plain (native path)"])
        extra = "" if k in ("daemon plain (native path)", "oip p50 us plain") else f"  ratio to plain {v / base:.2f}"
        if k == "daemon plain (Python path)":
            extra += " (of the native path's)"
        elif k.startswith("daemon attributions"):
            extra += " (the same path's plain)"
        print(f"{k:44s} {v:10.0f}{unit}{extra}")


if __name__ == "__main__":
    main()
