"""Alert rules on drift (issue 24): ``--drift-above PSI`` and ``--score-drift-above PSI`` fire
when the detector's merged drift window is written to the home, through the outbox and a real
webhook receiver, signed like every alert; calm traffic fires nothing, detections never fire a
drift rule, and a drift rule takes no condition on anomalies."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import pynomaly
from pynomaly import InvalidInputError, service
from pynomaly.service import alerts
from pynomaly.service import drift as service_drift

from _daemon_helpers import DaemonProcess, wait_until
from conftest import drift_halves
from test_alerts import Receiver, receiver_verifies

PARAMS = {"n_estimators": 50, "random_state": 0}


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def data():
    return drift_halves(seed=2, feature=7)


def test_a_drift_alert_reaches_the_webhook_from_the_daemon(data, receiver, tmp_path):
    train, serve, moved = data
    home = tmp_path / "home"
    for name in ("moved", "same"):
        service.train(home, name, train, "IsolationForest", PARAMS)
    rule = alerts.add_rule(home, "moved", "webhook", receiver.url, drift_above=0.2)
    calm = alerts.add_rule(home, "same", "webhook", receiver.url, drift_above=0.2, score_drift_above=0.2)
    d = DaemonProcess(tmp_path, None, "--home", str(home), "--no-native-loop", "--no-fast-path")
    try:
        with pynomaly.Client(d.sock) as c:
            for part in np.array_split(np.arange(len(serve)), 20):
                c.detect("moved", moved[part])
                c.detect("same", serve[part])
            doc = c.drift("moved")  # the report writes the window first: the rules are checked
            assert not c.drift("same")["drift"]
        assert wait_until(lambda: len(receiver.ok()) >= 1, timeout=20)
    finally:
        assert d.stop() == 0
    assert len(receiver.ok()) == 1  # the calm detector's rule stayed quiet; deduplicated at every later flush
    h, body = receiver.got[0]["headers"], receiver.got[0]["body"]
    assert receiver_verifies(rule["secret"], h, body)
    alert = json.loads(body)["alerts"][0]
    assert alert["labels"]["detector"] == "moved" and alert["labels"]["rule"] == rule["id"]
    a = alert["annotations"]
    assert a["drifted"].split(",")[0] == "x7" == doc["features"][0]["feature"]
    assert float(a["max_psi"]) == pytest.approx(doc["features"][0]["psi"], rel=1e-5)
    assert "detector moved drifted: x7 (PSI" in a["summary"]
    assert not any(m["rule_id"] == calm["id"] for m in alerts.outbox(home))


def test_batch_detections_check_score_drift_rules_and_deduplicate(data, receiver, tmp_path):
    train, serve, moved = data
    home = tmp_path / "home"
    service.train(home, "d", train, "IsolationForest", PARAMS)
    far = serve.copy()
    far[:, :] += 3.0 * train.std(axis=0)  # every feature moved: the scores move too
    rule = alerts.add_rule(home, "d", "webhook", receiver.url, score_drift_above=0.2)
    anomalies = alerts.add_rule(home, "d", "log", str(tmp_path / "a.jsonl"), score_above=1e9)
    for _ in range(2):
        service.detect(home, "d", far)
        service_drift.flush(home)
    msgs = alerts.outbox(home)
    assert [m["rule_id"] for m in msgs] == [rule["id"]]  # once (deduplicated), and not the anomaly rule
    assert msgs[0]["payload"]["alerts"][0]["annotations"]["drifted"] == "score"
    assert alerts.deliver(home)["sent"] == 1 and len(receiver.ok()) == 1
    assert anomalies["id"] not in {m["rule_id"] for m in alerts.outbox(home)}


def test_a_window_too_small_to_decide_fires_no_rule_and_keeps_its_gauges(data, tmp_path):
    """Below ``settings.min_rows`` rows the report decides nothing, so no drift rule fires, and
    the gauges still carry the statistics (not the decision) until the window fills."""
    train, _, moved = data
    home = tmp_path / "home"
    service.train(home, "d", train, "IsolationForest", PARAMS)
    rule = alerts.add_rule(home, "d", "log", str(tmp_path / "a.jsonl"), drift_above=0.2)
    service.detect(home, "d", moved[:120], save=False)
    doc = service_drift.report(home, "d")  # flushes: the rules are checked
    assert doc["drift"] is None and doc["reason"] == "120 rows counted, at least 300 needed to decide drift"
    assert doc["features"][0]["feature"] == "x7" and doc["features"][0]["psi"] >= 0.2
    assert alerts.outbox(home) == []
    feature = service_drift.gauges(home)[0]
    series = {dict(zip(names, key))["stat"]: v for _, names, key, v in feature.samples()
              if dict(zip(names, key))["feature"] == "x7"}
    assert series["psi"] == pytest.approx(doc["features"][0]["psi"]) and "ks" in series
    assert "drift" not in series  # the decision is not made, so not exported
    service.detect(home, "d", moved[120:], save=False)
    assert service_drift.report(home, "d")["drift"] is True
    assert [m["rule_id"] for m in alerts.outbox(home)] == [rule["id"]]


def test_rules_on_drift_are_checked_when_added(tmp_path):
    with pytest.raises(InvalidInputError, match="takes no condition on anomalies"):
        alerts.add_rule(tmp_path, "d", "log", str(tmp_path / "x"), drift_above=0.2, score_above=1.0)
    with pytest.raises(InvalidInputError, match="drift_above is a PSI and must be > 0"):
        alerts.add_rule(tmp_path, "d", "log", str(tmp_path / "x"), drift_above=0)
    with pytest.raises(InvalidInputError, match="score_drift_above must be a finite number"):
        alerts.add_rule(tmp_path, "d", "log", str(tmp_path / "x"), score_drift_above=float("nan"))
    cli = [sys.executable, "-m", "pynomaly", "--home", str(tmp_path), "alerts"]
    subprocess.run([*cli, "add", "--detector", "d", "--log", str(tmp_path / "x"), "--drift-above", "0.25"],
                   check=True, capture_output=True, timeout=60)
    listed = subprocess.run([*cli, "list"], check=True, capture_output=True, text=True, timeout=60).stdout
    assert "feature PSI>=0.25" in listed
