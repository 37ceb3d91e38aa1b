"""Streaming detectors learning over HTTP (issue 23): OIP v2 infer's ``learn`` parameter and
``POST /api/v1/detectors/{name}/learn``, operator or above, over a real server."""

from __future__ import annotations

import time

import numpy as np
import pytest

from _http_helpers import ApiServer, infer_body, make_token, outputs_of
from pynomaly.store.datasets import load_cardio

service = pytest.importorskip("pynomaly.service")
pytest.importorskip("pynomaly_api")


def scaled() -> np.ndarray:
    X = load_cardio()[0]
    lo, hi = X.min(axis=0), X.max(axis=0)
    return (X - lo) / np.where(hi > lo, hi - lo, 1.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    X = scaled()
    service.train(home, "hst", X[:400], "HalfSpaceTrees", {"seed": 2, "window_size": 60})
    service.train(home, "forest", X[:400], "IsolationForest", {"random_state": 0, "n_estimators": 20})
    tokens = {role: make_token(home, role, user=f"{role}-user") for role in ("viewer", "operator", "admin")}
    s = ApiServer(home, "--checkpoint-records", "1000000", "--checkpoint-seconds", "3600")
    try:
        yield s, home, tokens
    finally:
        s.stop()


def infer(s, token, X, **parameters):
    body = infer_body(X, **({"parameters": parameters} if parameters else {}))
    return s.json("POST", "/v2/models/hst/infer", body, token=token)


def test_infer_learn_and_learn_route_equal_score_learn_many_in_order(server):
    s, home, tokens = server
    X = scaled()[400:1000]
    reference = service.load_model(home, "hst")[1]
    got, want = [], []
    for i, (a, b) in enumerate([(0, 1), (1, 50), (50, 120), (120, 300), (300, 301), (301, 600)]):
        rows = X[a:b]
        if i % 3 == 0:
            status, doc = infer(s, tokens["operator"], rows, learn=True)
            want.append(reference.score_learn_many(rows))
        elif i % 3 == 1:  # scored without learning: the state stays
            status, doc = infer(s, tokens["admin"], rows)
            want.append(reference.score_many(rows))
        else:
            status, doc = s.json("POST", "/api/v1/detectors/hst/learn",
                                 {"data": rows.tolist(), "include_scores": True}, token=tokens["operator"])
            assert status == 200, doc
            got.append(np.asarray(doc["scores"]))
            want.append(reference.score_learn_many(rows))
            continue
        assert status == 200, doc
        got.append(outputs_of(doc)["scores"])
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), rtol=0, atol=1e-12)  # JSON floats


def test_learning_needs_operator_and_a_streaming_detector(server):
    s, home, tokens = server
    X = scaled()[:5]
    status, doc = s.json("POST", "/api/v1/detectors/hst/learn", {"data": X.tolist()}, token=tokens["viewer"])
    assert status == 403, doc
    status, doc = infer(s, tokens["viewer"], X, learn=True)
    assert status == 403, doc
    status, doc = s.json("POST", "/v2/models/forest/infer", infer_body(X, parameters={"learn": True}),
                         token=tokens["operator"])
    assert status == 400 and "IsolationForest, which does not learn" in doc["error"], doc
    status, doc = infer(s, tokens["operator"], X, learn="yes")
    assert status == 400 and "learn must be true or false" in doc["error"], doc


def test_a_graceful_stop_saves_a_checkpoint(tmp_path):
    X = scaled()
    service.train(tmp_path / "home", "hst", X[:400], "HalfSpaceTrees", {"seed": 4, "window_size": 60})
    s = ApiServer(tmp_path / "home", "--no-auth")
    try:
        status, doc = infer(s, None, X[400:700], learn=True)
        assert status == 200, doc
    finally:
        s.stop()  # SIGTERM: the server's shutdown saves what was learned
    last = service.versions(tmp_path / "home", "hst")[-1]
    assert (last["version"], last["parameters"]["checkpoint"]) == (2, {"of": 1, "records": 300})
    reference = service.load_model(tmp_path / "home", "hst", 1)[1]
    reference.score_learn_many(X[400:700])
    np.testing.assert_array_equal(service.load_model(tmp_path / "home", "hst", 2)[1].score_many(X[700:800]),
                                  reference.score_many(X[700:800]))


def test_a_replica_is_refused_with_409_while_a_daemon_learns_the_detector(server, tmp_path):
    """One learner per detector per home, whichever face: a daemon holds the lease, the API
    server on the same home answers 409 naming it (learning nothing) and scores on; once the
    daemon stopped cleanly (lease released, last checkpoint saved) the API learns from there."""
    pytest.importorskip("pynomaly_daemon")
    import pynomaly
    from _daemon_helpers import DaemonProcess

    s, home, tokens = server
    X = scaled()
    service.train(home, "shared", X[:400], "HalfSpaceTrees", {"seed": 6, "window_size": 60})
    reference = service.load_model(home, "shared")[1]
    d = DaemonProcess(tmp_path, None, "--home", str(home), "--checkpoint-seconds", "3600")
    try:
        with pynomaly.Client(d.sock) as c:
            got = c.detect("shared", X[400:500], learn=True).scores
        np.testing.assert_array_equal(got, reference.score_learn_many(X[400:500]))
        refused = [s.json("POST", "/api/v1/detectors/shared/learn", {"data": X[500:510].tolist()},
                          token=tokens["operator"]),
                   s.json("POST", "/v2/models/shared/infer", infer_body(X[500:510], parameters={"learn": True}),
                          token=tokens["operator"])]
        for status, doc in refused:
            assert status == 409 and "learned by another process (host" in doc["error"], doc
            assert f"pid {d.proc.pid} " in doc["error"], doc
        status, doc = s.json("POST", "/v2/models/shared/infer", infer_body(X[500:510]), token=tokens["operator"])
        assert status == 200, doc  # scoring goes on, without learning
    finally:
        assert d.stop() == 0  # saves its 100 records as v2, releases the lease
    deadline = time.monotonic() + 3  # the API remembers a refusal for a second
    while True:
        status, doc = s.json("POST", "/api/v1/detectors/shared/learn",
                             {"data": X[500:600].tolist(), "include_scores": True}, token=tokens["operator"])
        if status != 409 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 200, doc
    np.testing.assert_allclose(doc["scores"], reference.score_learn_many(X[500:600]), rtol=0, atol=1e-12)
