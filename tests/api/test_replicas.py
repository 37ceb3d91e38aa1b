"""Several servers on one PostgreSQL home, as deploy/ runs them: API replicas and a daemon
share the catalogue; a version saved through any of them is served by all within a second
(LISTEN/NOTIFY); jobs run once among workers; readiness follows the database."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the http extra is not installed (pip install '.[http]')")

from pynomaly import service  # noqa: E402

from _daemon_helpers import cardio  # noqa: E402
from _http_helpers import ApiServer, make_token  # noqa: E402


def _infer(server, token, X, name="det", version=None):
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "input", "shape": list(X.shape), "datatype": "FP64", "data": X.reshape(-1).tolist()}]}
    status, doc = server.json("POST", path, body, token=token)
    assert status == 200, doc
    return doc["model_version"], np.asarray(doc["outputs"][0]["data"])


def _wait_for(predicate, timeout: float):
    """Seconds until ``predicate()`` held (polled every 20 ms); fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "did not happen in time"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
def replicas(pg_home, tmp_path):
    """Two API servers on one database home, sharing PYNOMALY_CONFIG_DIR (the token secrets
    and the signing key), with a detector trained on cardio; and an admin token."""
    X = cardio()
    service.train(pg_home, "det", X[:1000], "IsolationForest", {"n_estimators": 50, "random_state": 0})
    token = make_token(pg_home, "admin")
    servers = [ApiServer(pg_home, "--job-workers", "0", log=tmp_path / f"api-{i}.log") for i in range(2)]
    try:
        yield servers, token, X
    finally:
        for s in servers:
            s.stop()


def test_a_version_saved_anywhere_is_served_by_every_replica_within_a_second(replicas, pg_home):
    (a, b), token, X = replicas
    rows = X[1000:1100]
    for server in (a, b):  # both have version 1 cached as the latest
        assert _infer(server, token, rows)[0] == "1"
    # A new version saved by a third process (here: this one). On a database home the servers
    # check by themselves only every WATCHED_REFRESH_S (30 s): serving it within a second is
    # the notification's doing.
    service.train(pg_home, "det", X[:1500], "IsolationForest", {"n_estimators": 60, "random_state": 1})
    want = service.load_for_scoring(pg_home, "det", 2).model.decision_function(rows)
    for server in (a, b):
        took = _wait_for(lambda: _infer(server, token, rows)[0] == "2", timeout=5)
        assert took < 1.5, f"version 2 reached a replica after {took:.2f} s"
        assert np.array_equal(_infer(server, token, rows)[1], want)
    # Trained through one replica's API on a dataset stored through it: the other serves it.
    import io

    buf = io.BytesIO()
    np.save(buf, X[:800])
    status, ds = a.json("POST", "/api/v1/datasets?name=part.npy", body=buf.getvalue(), token=token,
                        headers={"Content-Type": "application/octet-stream"})
    assert status == 201 or status == 200, ds
    status, d = a.json("POST", "/api/v1/detectors/det/train", token=token,
                       body={"algorithm": "IsolationForest", "params": {"n_estimators": 30, "random_state": 3},
                             "dataset_id": ds["id"]})
    assert status == 200 and d["version"] == 3, d
    took = _wait_for(lambda: _infer(b, token, rows)[0] == "3", timeout=5)
    assert took < 1.5, f"version 3 reached the other replica after {took:.2f} s"


def test_the_daemon_and_the_api_share_the_home(replicas, pg_home, tmp_path):
    from pynomaly.client import Client

    (a, _b), token, X = replicas
    sock = tmp_path / "d.sock"
    log = open(tmp_path / "daemon.log", "ab")
    daemon = subprocess.Popen([sys.executable, "-m", "pynomaly", "--home", pg_home, "serve", "--socket", str(sock)],
                              stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        _wait_for(lambda: sock.exists() or daemon.poll() is not None, timeout=60)
        assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
        rows = X[1000:1064]
        with Client(str(sock)) as c:
            first = c.detect("det", rows)
            assert int(first.version) == 1
            service.train(pg_home, "det", X[:1200], "IsolationForest", {"n_estimators": 40, "random_state": 2})
            took = _wait_for(lambda: int(c.detect("det", rows).version) == 2, timeout=5)
            assert took < 1.5, f"version 2 reached the daemon after {took:.2f} s"
        assert _infer(a, token, rows)[0] == "2"
    finally:
        daemon.terminate()
        daemon.wait(30)
        log.close()


def test_readiness_follows_the_database(replicas, pg_server):
    (a, b), token, X = replicas
    assert a.json("GET", "/v2/health/ready") == (200, {"ready": True})
    pg_server.stop()
    try:
        for server in (a, b):
            _wait_for(lambda: server.request("GET", "/v2/health/ready")[0] == 503, timeout=10)
            assert server.request("GET", "/v2/health/live")[0] == 200  # alive: not to be restarted
            status, doc = server.json("GET", "/api/v1/detectors", token=token)
            assert status == 503 and "PostgreSQL home" in doc["error"], doc
    finally:
        pg_server.start()
    for server in (a, b):
        _wait_for(lambda: server.request("GET", "/v2/health/ready")[0] == 200, timeout=10)
        assert _infer(server, token, X[:10])[0] == "1"


def test_a_token_revoked_anywhere_is_refused_by_every_replica_within_a_second(replicas, pg_home):
    """Issue 25.4: the revocation list is a table of the database home, read by every replica."""
    (a, b), _token, _X = replicas
    victim = make_token(pg_home, "viewer", user="leaked")
    for server in (a, b):
        assert server.request("GET", "/api/v1/detectors", token=victim)[0] == 200
    out = subprocess.run([sys.executable, "-m", "pynomaly", "--home", pg_home, "token", "revoke", victim],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for server in (a, b):
        took = _wait_for(lambda: server.request("GET", "/api/v1/detectors", token=victim)[0] == 401, timeout=5)
        assert took < 1.0, f"a revoked token was still accepted after {took:.2f} s"
