"""The HTTP face's /metrics counts every detection, the detection API's included, and times
each in pynomaly_request_duration_seconds{op,detector,face} (issue 26)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the HTTP face needs pynomaly[http]")
parser = pytest.importorskip("prometheus_client.parser", reason="parses /metrics with prometheus_client's parser")

from pynomaly import service  # noqa: E402

from _daemon_helpers import cardio  # noqa: E402
from _http_helpers import ApiServer, infer_body, make_token  # noqa: E402


def _sample(text: str, name: str, **labels) -> float:
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError((name, labels))


def test_detections_through_the_api_and_oip_are_counted_and_timed(tmp_path):
    X = cardio()
    home = tmp_path / "home"
    service.train(home, "cardio", X[:500], "IsolationForest", {"n_estimators": 10, "random_state": 0})
    operator, viewer = make_token(home, "operator"), make_token(home, "viewer")
    server = ApiServer(home)
    try:
        for rows in (X[:100], X[100:137]):  # two calls of known sizes
            status, doc = server.json("POST", "/api/v1/detect", {"detector": "cardio", "data": rows.tolist(),
                                                                 "save": False}, token=operator)
            assert status == 200, doc
        assert server.request("POST", "/v2/models/cardio/infer", infer_body(X[:5]), token=operator)[0] == 200
        assert server.request("GET", "/metrics")[0] == 401  # a scraper needs a (viewer) token
        status, _, body = server.request("GET", "/metrics", token=viewer)
    finally:
        server.stop()
    assert status == 200
    text = body.decode()
    assert _sample(text, "pynomaly_detections_total", detector="cardio") == 3
    assert _sample(text, "pynomaly_rows_scored_total", detector="cardio") == 142
    timed = dict(op="detect", detector="cardio", face="http")
    assert _sample(text, "pynomaly_request_duration_seconds_count", **timed) == 3
    assert _sample(text, "pynomaly_request_duration_seconds_bucket", le="+Inf", **timed) == 3
    assert 0 < _sample(text, "pynomaly_request_duration_seconds_sum", **timed) < 60
