"""Server time of the web pages (issue 11): the detectors page of a home with many detectors
and a result page of a 100k-row result, on a real `pynomaly api` server over loopback; since
issue 26 also the datasets, dataset (a preview of the 100k-row dataset), jobs, alerts and audit
pages, the detectors page sorted and filtered, and two versions compared.

    python bench/bench_web.py [--detectors 30] [--rows 100000] [--repeat 30]

Each page is fetched `repeat` times on one keep-alive connection after two warm-up requests
(the first request's time is shown apart: the result page then reads the dataset's rows,
which later views find in the server's cache; the detectors page is the server's first page);
the time from sending the request to the last byte of the answer is the server's time plus a
loopback round trip (tens of microseconds), so it bounds the server time from above. The
server's own timing of the handler is not added: the page handler, the template and the
database reads are what this measures.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from _http_helpers import ApiServer  # noqa: E402
from _web_helpers import WebClient, add_user  # noqa: E402

from pynomaly import service  # noqa: E402


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:  # noqa: BLE001
        return platform.processor() or "unknown"


def timed(client: WebClient, path: str, repeat: int) -> list:
    conn = http.client.HTTPConnection("127.0.0.1", client.server.port, timeout=60)
    headers = client._headers()
    out = []
    try:
        for i in range(repeat + 2):
            t0 = time.perf_counter()
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            body = r.read()
            dt = time.perf_counter() - t0
            assert r.status == 200, (r.status, body[:300])
            if i == 0:
                timed.first = dt * 1e3
            if i >= 2:
                out.append(dt * 1e3)
    finally:
        conn.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--detectors", type=int, default=30)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=30)
    args = p.parse_args()
    data = REPO.parent / "shared" / "datasets" / "cardio.npz"
    with np.load(data) as d:
        X = np.asarray(d["X"], dtype=np.float64)
    rng = np.random.default_rng(0)
    big = X[rng.integers(0, len(X), args.rows)] + rng.normal(0, 0.01, (args.rows, X.shape[1]))
    with tempfile.TemporaryDirectory(prefix="pynomaly-bench-web-") as tmp:
        home = Path(tmp) / "home"
        for i in range(args.detectors):
            service.train(home, f"det{i:03d}", X, "IsolationForest", {"n_estimators": 20, "random_state": i})
            for _ in range(3):
                service.detect(home, f"det{i:03d}", X[:200])
        did = service.store_dataset(home, big, name="cardio-100k")["id"]
        result = service.detect(home, "det000", None, dataset_id=did, contamination=0.05)
        service.train(home, "det000", X, "IsolationForest", {"n_estimators": 40, "random_state": 99})
        from pynomaly.service import alerts, jobs

        for i in range(20):  # a queue of 20 jobs (no worker runs them) and 5 rules with their messages
            jobs.submit(str(home), "detect", {"detector": f"det{i:03d}", "dataset_id": did})
        for i in range(5):
            alerts.add_rule(str(home), f"det{i:03d}", "log", str(Path(tmp) / "alerts.jsonl"))
            service.detect(home, f"det{i:03d}", X[:200])
        for i in range(200):  # an audit trail of some length
            service.audit_record(home, actor="bench", action="detect", target=f"det{i % 30:03d}@1")
        add_user(home, "bench", "viewer", "bench-password")
        add_user(home, "bench-admin", "admin", "bench-password")
        server = ApiServer(home, "--job-workers", "0")
        try:
            c = WebClient(server)
            assert c.sign_in("bench", "bench-password")[0] == 303
            admin = WebClient(server)
            assert admin.sign_in("bench-admin", "bench-password")[0] == 303
            print(f"# CPU: {cpu_model()}, {os.cpu_count()} cpus; python {platform.python_version()}")
            print(f"# {args.detectors} detectors with 3 results each; result of {args.rows} x {X.shape[1]} rows")
            for who, label, path in ((c, "detectors page", "/ui/detectors"),
                                     (c, f"result page ({args.rows} rows)", f"/ui/results/{result.id}"),
                                     (c, "detector page", "/ui/detectors/det000"),
                                     (c, "history page", "/ui/detectors/det000/history"),
                                     (c, "detectors sorted and filtered", "/ui/detectors?q=det00&sort=rate&dir=desc"),
                                     (c, "versions compared", "/ui/detectors/det000/compare?a=1&b=2"),
                                     (c, "datasets page", "/ui/datasets"),
                                     (c, f"dataset page ({args.rows} rows)", f"/ui/datasets/{did}"),
                                     (c, "jobs page (20 queued)", "/ui/jobs"),
                                     (c, "alerts page (5 rules)", "/ui/alerts"),
                                     (admin, "audit page (all, verified)", "/ui/audit?since=all")):
                ms = timed(who, path, args.repeat)
                status, _, page = who.get(path)
                assert status == 200 and "<h1>" in page and 'id="error"' not in page, page[:500]
                size = len(page.encode())
                print(f"{label:32s} first {timed.first:7.1f} ms  then median {statistics.median(ms):7.1f} ms  "
                      f"p90 {np.percentile(ms, 90):7.1f} ms  min {min(ms):7.1f} ms  ({size / 1024:.0f} KB)")
            page = c.get(f"/ui/results/{result.id}")[2]
            assert re.search(r'id="flagged-count">', page)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
