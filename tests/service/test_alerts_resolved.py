"""Alerts send `resolved` when a firing condition clears (issue 26), as Alertmanager receivers
expect: through the outbox and the real webhook channel to the real receiver the alert tests
start, from the service's detections and from the daemon's."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import pynomaly
from pynomaly import service
from pynomaly.service import alerts

from _daemon_helpers import DaemonProcess, cardio, wait_until
from test_alerts import Receiver, deliver_until, receiver_verifies

ZERO_TIME = "0001-01-01T00:00:00Z"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def trained(home):
    X = cardio()
    service.train(home, "cardio", X, params={"random_state": 0, "contamination": 0.1})
    return home, X, service.load_for_scoring(home, "cardio").score(X)


def _messages(receiver):
    return [json.loads(g["body"]) for g in receiver.ok()]


def test_a_cleared_alert_is_resolved_once_and_the_next_firing_is_sent(trained, receiver):
    home, X, scores = trained
    rule = alerts.add_rule(home, "cardio", "webhook", receiver.url, dedup=600)
    calm = float(scores.max()) + 1  # a threshold no row is above: a detection without anomalies
    service.detect(home, "cardio", X[:5], save=False, threshold=calm)  # nothing firing: nothing to resolve
    service.detect(home, "cardio", X, save=False)
    assert deliver_until(home, lambda: len(receiver.ok()) == 1)
    service.detect(home, "cardio", X, save=False)  # still firing: deduplicated
    service.detect(home, "cardio", X[:5], save=False, threshold=calm)
    assert deliver_until(home, lambda: len(receiver.ok()) == 2)
    service.detect(home, "cardio", X[:5], save=False, threshold=calm)  # resolved already: nothing more
    alerts.deliver(home)
    firing, resolved = _messages(receiver)
    assert firing["status"] == "firing" and firing["alerts"][0]["endsAt"] == ZERO_TIME
    assert resolved["status"] == "resolved" and resolved["alerts"][0]["status"] == "resolved"
    f, r = firing["alerts"][0], resolved["alerts"][0]
    assert r["fingerprint"] == f["fingerprint"] and r["labels"] == f["labels"]
    assert r["startsAt"] == f["startsAt"] and r["endsAt"] != ZERO_TIME and r["endsAt"] >= r["startsAt"]
    assert resolved["groupKey"] == firing["groupKey"]
    got = receiver.ok()[1]
    assert receiver_verifies(rule["secret"], got["headers"], got["body"])
    assert got["headers"]["webhook-id"] != receiver.ok()[0]["headers"]["webhook-id"]
    # firing again, within the dedup window of the first firing: sent, since it was resolved
    service.detect(home, "cardio", X, save=False)
    assert deliver_until(home, lambda: len(receiver.ok()) == 3)
    assert _messages(receiver)[2]["status"] == "firing"


def test_a_count_rule_clears_when_its_window_falls_below_the_count(trained, tmp_path):
    home, X, scores = trained
    log = tmp_path / "alerts.log"
    k = int((scores > service.load_for_scoring(home, "cardio").version.threshold).sum())
    alerts.add_rule(home, "cardio", "log", str(log), count=k, within=1.0, dedup=0)
    calm = float(scores.max()) + 1
    service.detect(home, "cardio", X, save=False)  # k anomalies: fires
    service.detect(home, "cardio", X[:5], save=False, threshold=calm)  # the window still holds k
    statuses = lambda: [m["payload"]["status"] for m in alerts.outbox(home)][::-1]  # noqa: E731
    assert statuses() == ["firing"]
    time.sleep(1.1)
    service.detect(home, "cardio", X[:5], save=False, threshold=calm)  # the window is empty
    assert statuses() == ["firing", "resolved"]


@pytest.mark.parametrize("mode", [[], ["--no-native-loop"], ["--no-fast-path"]],
                         ids=["native-loop", "uvloop-fast-path", "python-path"])
def test_the_daemon_resolves_what_its_detections_fired(tmp_path, receiver, mode):
    home = tmp_path / "home"
    X = cardio()
    service.train(home, "cardio", X, params={"random_state": 0, "contamination": 0.1})
    scores = service.load_for_scoring(home, "cardio").score(X)
    top, calm = int(np.argmax(scores)), int(np.argmin(scores))
    alerts.add_rule(home, "cardio", "webhook", receiver.url, score_above=float(scores[top]) - 1e-9)
    d = DaemonProcess(tmp_path, None, "--home", str(home), *mode)
    try:
        with pynomaly.Client(d.sock) as c:
            c.detect("cardio", X[calm : calm + 1])
            time.sleep(0.6)
            assert receiver.got == []  # a clean detection with nothing firing sends nothing
            c.detect("cardio", X[top : top + 1])
            assert wait_until(lambda: len(receiver.ok()) == 1, timeout=20)
            c.detect("cardio", X[calm : calm + 1])
            assert wait_until(lambda: len(receiver.ok()) == 2, timeout=20)
    finally:
        assert d.stop() == 0
    assert [m["status"] for m in _messages(receiver)] == ["firing", "resolved"]
