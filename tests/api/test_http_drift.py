"""``GET /api/v1/detectors/{name}/drift`` on a real server: detections through the HTTP API fill
the window, the endpoint ranks and flags as ``pynomaly drift --json`` does (the same document),
viewers may read it, and what cannot be answered is a clear 404 or 409."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pynomaly import service

from _http_helpers import ApiServer, infer_body, make_token
from conftest import drift_halves

PARAMS = {"n_estimators": 50, "random_state": 0}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    train, serve, moved = drift_halves()
    home = tmp_path_factory.mktemp("home")
    for name in ("moved", "same", "fresh", "inferred", "few", "streamed"):
        service.train(home, name, train, "IsolationForest", PARAMS)
    service.export(home, "fresh", home.parent / "fresh.pnx")
    service.import_detector(home, home.parent / "fresh.pnx", "imported")
    tokens = {role: make_token(home, role, user=f"{role}-user") for role in ("viewer", "operator")}
    server = ApiServer(home)
    try:
        yield server, home, tokens, serve, moved
    finally:
        server.stop()


def _detect(server, token, name, rows):
    status, doc = server.json("POST", "/api/v1/detect", {"detector": name, "data": rows.tolist(), "save": False},
                              token=token)
    assert status == 200, doc


def test_detections_over_http_fill_the_window_the_endpoint_reads(api):
    server, home, tokens, serve, moved = api
    for part in np.array_split(np.arange(len(serve)), 2):
        _detect(server, tokens["operator"], "moved", moved[part])
        _detect(server, tokens["operator"], "same", serve[part])
    status, doc = server.json("GET", "/api/v1/detectors/moved/drift", token=tokens["viewer"])
    assert status == 200, doc
    assert doc["drift"] and doc["rows"] == len(serve) and doc["features"][0]["feature"] == "x3"
    assert [f["feature"] for f in doc["features"] if f["drift"]] == ["x3"]
    status, calm = server.json("GET", "/api/v1/detectors/same/drift?window=15m", token=tokens["viewer"])
    assert status == 200 and not calm["drift"] and calm["window_s"] == 900 and calm["rows"] == len(serve)
    # the CLI, another process on the home, reads the same window once the server has flushed it
    cli = subprocess.run([sys.executable, "-m", "pynomaly", "--home", str(home), "drift", "--detector", "moved",
                          "--json"], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(cli.stdout)["features"] == doc["features"]
    status, ks = server.json("GET", "/api/v1/detectors/moved/drift?method=ks&alpha=0.01", token=tokens["viewer"])
    assert status == 200 and ks["method"] == "ks" and ks["features"][0]["feature"] == "x3"

    # the same numbers as Prometheus gauges
    status, _, raw = server.request("GET", "/metrics", token=tokens["viewer"])
    assert status == 200
    values = dict(line.rsplit(" ", 1) for line in raw.decode().splitlines() if not line.startswith("#"))
    psi = float(values['pynomaly_feature_drift{detector="moved",feature="x3",stat="psi"}'])
    assert psi == pytest.approx(doc["features"][0]["psi"])
    assert values['pynomaly_feature_drift{detector="moved",feature="x3",stat="drift"}'] == "1.0"
    assert values['pynomaly_feature_drift{detector="same",feature="x3",stat="drift"}'] == "0.0"
    assert 'pynomaly_score_drift{detector="moved",stat="flagged_rate"}' in values
    assert not any('detector="fresh"' in k for k in values)  # no rows in its window: no series


def test_a_window_too_small_decides_nothing_and_keeps_the_statistics(api):
    server, home, tokens, _, moved = api
    _detect(server, tokens["operator"], "few", moved[:150])
    status, doc = server.json("GET", "/api/v1/detectors/few/drift", token=tokens["viewer"])
    assert status == 200, doc
    assert doc["drift"] is None and doc["min_rows"] == 300 and doc["rows"] == 150
    assert doc["reason"] == "150 rows counted, at least 300 needed to decide drift"
    assert {f["drift"] for f in doc["features"]} == {None} and doc["score"]["drift"] is None
    assert doc["features"][0]["feature"] == "x3" and doc["features"][0]["psi"] >= 0.2
    status, decided = server.json("GET", "/api/v1/detectors/few/drift?min_rows=150", token=tokens["viewer"])
    assert status == 200 and decided["drift"] is True and decided["reason"] is None
    assert decided["features"][0]["feature"] == "x3" and decided["features"][0]["drift"] is True
    assert server.json("GET", "/api/v1/detectors/few/drift?min_rows=0", token=tokens["viewer"])[0] == 400


def test_what_cannot_be_answered_is_a_clear_error(api):
    server, _, tokens, serve, _ = api
    viewer = tokens["viewer"]
    status, doc = server.json("GET", "/api/v1/detectors/nope/drift", token=viewer)
    assert status == 404 and doc["error"].startswith("no detector named 'nope'")
    status, doc = server.json("GET", "/api/v1/detectors/fresh/drift", token=viewer)
    assert status == 409 and "no rows of detector 'fresh' version 1 were served in the last 1 h" in doc["error"]
    _detect(server, tokens["operator"], "imported", serve[:20])
    status, doc = server.json("GET", "/api/v1/detectors/imported/drift", token=viewer)
    assert status == 409 and "has no drift reference" in doc["error"] and "--set-reference" in doc["error"]
    status, doc = server.json("GET", "/api/v1/detectors/fresh/drift?window=soon", token=viewer)
    assert status == 400 and "'soon' is not a window" in doc["error"]
    status, doc = server.json("GET", "/api/v1/detectors/fresh/drift?method=chi2", token=viewer)
    assert status == 400
    assert server.json("GET", "/api/v1/detectors/moved/drift")[0] == 401


def test_inference_protocol_requests_count_in_the_window(api):
    """OIP v2 infer goes through the data plane's observe step: single rows and small batches
    are counted (on the observer's hand-over, which the endpoint waits for)."""
    server, _, tokens, serve, moved = api
    rows = moved[:300]
    for i in range(0, 40):  # single-row requests
        status, doc = server.json("POST", "/v2/models/inferred/infer", infer_body(rows[i:i + 1]),
                                  token=tokens["operator"])
        assert status == 200, doc
    for part in np.array_split(rows[40:], 4):
        status, doc = server.json("POST", "/v2/models/inferred/infer", infer_body(part), token=tokens["operator"])
        assert status == 200, doc
    status, doc = server.json("GET", "/api/v1/detectors/inferred/drift", token=tokens["viewer"])
    assert status == 200, doc
    assert doc["rows"] == doc["rows_seen"] == len(rows)
    assert doc["features"][0]["feature"] == "x3" and doc["features"][0]["drift"]
    assert doc["score"]["scored"] == len(rows)


def test_binary_requests_scored_while_arriving_count_their_sample(api):
    """OIP bodies over 1 MB are scored block by block as they arrive (the rows are gone after):
    every k-th row of the whole request is kept as the blocks pass, as for any large batch."""
    from pynomaly.estimators.drift import sample_step
    from pynomaly.service import drift

    server, home, tokens, _, moved = api
    rows = np.ascontiguousarray(moved[np.arange(10_000) % len(moved)])  # 1.68 MB: two blocks of ~6,241 rows
    raw = rows.astype("<f8").tobytes()
    head = json.dumps({"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP64",
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    before = server.json("GET", "/api/v1/stats", token=tokens["viewer"])[1]["counters"]["streamed_requests"]
    status, _, body = server.request("POST", "/v2/models/streamed/infer", head + raw, token=tokens["operator"],
                                     headers={"Inference-Header-Content-Length": str(len(head))})
    assert status == 200, body[:300]
    assert server.json("GET", "/api/v1/stats", token=tokens["viewer"])[1]["counters"]["streamed_requests"] == before + 1
    status, doc = server.json("GET", "/api/v1/detectors/streamed/drift", token=tokens["viewer"])
    assert status == 200, doc
    step = sample_step(len(rows), drift.settings.sample_above)
    assert step == 10 and doc["rows_seen"] == len(rows) and doc["rows"] == len(rows[::step])
    assert doc["sample_rate"] == pytest.approx(0.1) and doc["score"]["scored"] == len(rows[::step])
    assert doc["features"][0]["feature"] == "x3" and doc["drift"] is True
    offline = drift.compare_data(home, "streamed", rows[::step])  # exactly every 10th row, across the blocks
    assert doc["features"] == offline["features"]


def test_a_server_with_no_drift_counts_nothing(api, tmp_path):
    """``pynomaly api --no-drift``: neither inference nor batch detections count in the window
    (the report reads what other processes counted, so it still answers)."""
    _, home, tokens, _, moved = api
    server = ApiServer(home, "--no-drift")
    try:
        for i in range(3):
            status, doc = server.json("POST", "/v2/models/fresh/infer", infer_body(moved[i:i + 1]),
                                      token=tokens["operator"])
            assert status == 200, doc
        _detect(server, tokens["operator"], "fresh", moved[:50])
        status, doc = server.json("GET", "/api/v1/detectors/fresh/drift", token=tokens["viewer"])
        assert status == 409 and "no rows of detector 'fresh' version 1" in doc["error"]
    finally:
        server.stop()
