"""Alerts say why (issue 22): an alert's annotations carry the top features of a few rows that
fired it, on every path that feeds alerts (batch detect, HTTP: OIP and the detection API, the
daemon's native loop, uvloop fast path and Python path). The rows have one feature pushed far
out, so their top feature is known; each alert reaches a real webhook receiver."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import pynomaly
from pynomaly import service
from pynomaly.service import alerts
from pynomaly.service.alert_channels import why_text
from pynomaly.service.why import ALERT_FEATURES, ALERT_ROWS

from _daemon_helpers import DaemonProcess, wait_until
from test_alerts import Receiver, receiver_verifies

PUSHED = 3  # the feature pushed out: "x3"
D = 6


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _pushed_rows(scorer, n: int) -> np.ndarray:
    """n rows the detector flags: typical values (within 1.5 standard deviations) but x3 at
    +-9 (a forest scores a point beyond one feature's range like that feature's most extreme
    training rows, so only some such rows are flagged: the first n of those)."""
    rows = np.clip(np.random.default_rng(1).standard_normal((200, D)), -1.5, 1.5)
    rows[:, PUSHED] = np.where(np.arange(200) % 2, 9.0, -9.0)
    rows = rows[scorer.score(rows) > scorer.version.threshold][:n]
    assert rows.shape[0] == n
    return rows


def _train(home):
    """Trains "pushed" on standard normal rows; returns its 40 lowest-scoring rows (not flagged)
    and 8 flagged pushed rows."""
    X = np.random.default_rng(0).standard_normal((2000, D))
    service.train(home, "pushed", X, params={"random_state": 0, "n_estimators": 50, "contamination": 0.1})
    scorer = service.load_for_scoring(home, "pushed")
    return X[np.argsort(scorer.score(X))[:40]], _pushed_rows(scorer, 8)


def _why(message: dict) -> list:
    """The rows an alert says why of, from its annotations (checked against their text form)."""
    a = message["alerts"][0]["annotations"]
    why = json.loads(a["top_features_json"])
    assert message["commonAnnotations"]["top_features"] == a["top_features"]
    assert a["top_features"] == why_text(why) and "x3 = " in a["description"]
    return why


def _firing(receiver) -> list:
    return [m for m in (json.loads(g["body"]) for g in receiver.ok()) if m["status"] == "firing"]


def _says_x3(why: list, rows: int) -> None:
    assert 1 <= len(why) <= min(rows, ALERT_ROWS)
    for r in why:
        assert len(r["top_features"]) == ALERT_FEATURES
        assert r["top_features"][0]["feature"] == f"x{PUSHED}" and abs(r["top_features"][0]["value"]) == 9.0


def test_a_batch_detections_alert_names_the_pushed_feature(home, receiver):
    X, pushed = _train(home)
    rule = alerts.add_rule(home, "pushed", "webhook", receiver.url, dedup=0)
    data = np.vstack([X, pushed])
    r = service.detect(home, "pushed", data, explain=True, top_k=ALERT_FEATURES)
    assert alerts.deliver(home)["sent"] == 1
    why = _why(json.loads(receiver.got[0]["body"]))
    assert receiver_verifies(rule["secret"], receiver.got[0]["headers"], receiver.got[0]["body"])
    _says_x3(why, 8)
    # the highest-scoring anomalies, with what the detection returned for them (bit-equal)
    flagged = r.anomaly_indices
    assert [w["row"] for w in why] == flagged[np.argsort(-r.scores[flagged], kind="stable")][:ALERT_ROWS].tolist()
    assert all(w["top_features"] == r.top_features[w["row"]] for w in why)
    # without explain, the detector's default explanation of the same rows says the same
    service.detect(home, "pushed", data)
    assert alerts.deliver(home)["sent"] == 1
    assert _why(json.loads(receiver.got[1]["body"])) == why


def test_alerts_of_http_detections_name_the_pushed_feature(tmp_path, receiver):
    pytest.importorskip("fastapi", reason="the http extra is not installed (pip install '.[http]')")
    from _http_helpers import ApiServer, infer_body, make_token

    home = tmp_path / "home"
    _, pushed = _train(home)
    alerts.add_rule(home, "pushed", "webhook", receiver.url, dedup=0)
    token = make_token(home, "operator")
    server = ApiServer(home)
    try:
        rows = pushed[:7]
        assert server.json("POST", "/v2/models/pushed/infer", infer_body(rows), token=token)[0] == 200
        assert wait_until(lambda: len(_firing(receiver)) == 1, timeout=20)
        oip = _why(_firing(receiver)[0])
        _says_x3(oip, 7)
        assert all("row" not in w for w in oip)  # rows kept by the observer: no batch to number them in
        body = {"detector": "pushed", "data": rows[:2].tolist(), "save": False}
        assert server.json("POST", "/api/v1/detect", body, token=token)[0] == 200
        assert wait_until(lambda: len(_firing(receiver)) == 2, timeout=20)
        api = _why(_firing(receiver)[1])
        _says_x3(api, 2)
        assert sorted(w["row"] for w in api) == [0, 1]
    finally:
        server.stop()


@pytest.mark.parametrize("mode", [[], ["--no-native-loop"], ["--no-fast-path"]],
                         ids=["native-loop", "uvloop-fast-path", "python-path"])
def test_alerts_of_daemon_detections_name_the_pushed_feature(tmp_path, receiver, mode):
    home = tmp_path / "home"
    X, pushed = _train(home)
    alerts.add_rule(home, "pushed", "webhook", receiver.url, dedup=0)
    d = DaemonProcess(tmp_path, None, "--home", str(home), *mode)
    try:
        with pynomaly.Client(d.sock) as c:
            for i in range(20):
                c.detect("pushed", X[i : i + 1])  # normal single rows
            rows = pushed
            for i in range(4):  # float64 rows, one request each (the native paths serve them)
                c.detect("pushed", rows[i : i + 1])
            c.detect("pushed", rows[4:].astype(np.float32))  # float32 rows are kept as float32
            st = c.stats()
        # each hand-over's first anomalous rows, up to ALERT_ROWS of them per alert
        assert wait_until(lambda: sum(len(_why(m)) for m in _firing(receiver)) >= ALERT_ROWS, timeout=20)
        if not mode:
            assert st.fast_path_requests >= 20
    finally:
        assert d.stop() == 0
    for message in _firing(receiver):
        _says_x3(_why(message), len(rows))
