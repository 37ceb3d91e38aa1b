"""Drift monitoring's use cases (pynomaly.service.drift) on real homes of both backends: the
reference stored at training, the live window that detection fills, the report, references set
later, sealing in an encrypted home, and the errors a user meets."""

from __future__ import annotations

import numpy as np
import pytest

from pynomaly import service
from pynomaly._errors import DetectorNotFoundError, InvalidInputError
from pynomaly.service import drift
from pynomaly.store.crypto import FIELD_PREFIX

from _homes import raw_sql
from conftest import drift_halves

PARAMS = {"n_estimators": 50, "random_state": 0}


@pytest.fixture(scope="module")
def halves():
    """cardio shuffled (its file lists the anomalies last), halved: train on the first half."""
    return drift_halves()[:2]


def shifted(X, j=3, by=0.5):
    """``X`` with feature ``j`` moved by ``by`` (about one standard deviation of cardio's x3)."""
    Y = X.copy()
    Y[:, j] += by
    return Y


def test_training_stores_a_reference_and_detection_fills_the_window(home, halves):
    train, serve = halves
    service.train(home, "moved", train, "IsolationForest", PARAMS)
    service.train(home, "same", train, "IsolationForest", PARAMS)
    v, profile = drift.reference(home, "moved")
    assert v == 1 and profile.n_rows == len(train) and profile.n_features == train.shape[1]
    assert profile.score is not None and profile.expected_rate == pytest.approx(0.1, abs=0.01)
    for part in np.array_split(np.arange(len(serve)), 3):  # three detections add up
        service.detect(home, "moved", shifted(serve[part]), save=False)
        service.detect(home, "same", serve[part], save=False)

    doc = drift.report(home, "moved")
    assert doc["drift"] and doc["rows"] == len(serve) and doc["source"] == "live" and doc["window_s"] == 3600
    assert doc["features"][0]["feature"] == "x3" and doc["features"][0]["drift"]
    assert [f["feature"] for f in doc["features"] if f["drift"]] == ["x3"]
    assert doc == drift.compare_data(home, "moved", shifted(serve)) | {"source": "live", "window_s": 3600.0}

    calm = drift.report(home, "same")
    assert not calm["drift"] and not any(f["drift"] for f in calm["features"]) and not calm["score"]["drift"]
    assert calm["rows"] == len(serve) and max(f["psi"] for f in calm["features"]) < 0.1
    ks = drift.report(home, "moved", method="ks")
    assert ks["features"][0]["feature"] == "x3" and [f["feature"] for f in ks["features"] if f["drift"]] == ["x3"]


def test_the_window_is_by_time_and_old_buckets_leave_it(tmp_path, halves):
    train, serve = halves
    service.train(tmp_path, "d", train, "IsolationForest", PARAMS)
    now = 1_800_000_030.0  # half a minute into a bucket
    drift.observe(tmp_path, "d", 1, serve[:100], now=now - 7200)  # two hours ago
    drift.observe(tmp_path, "d", 1, serve[100:250], now=now - 60)
    drift.observe(tmp_path, "d", 1, serve[250:300], now=now)
    assert drift.report(tmp_path, "d", now=now)["rows"] == 200
    assert drift.report(tmp_path, "d", window=3 * 3600, now=now)["rows"] == 300
    assert drift.report(tmp_path, "d", window=20, now=now)["rows"] == 50  # whole buckets: this minute
    assert drift.report(tmp_path, "d", window=31, now=now)["rows"] == 200  # and the one before
    buckets = raw_sql(tmp_path, "SELECT COUNT(*) FROM drift_counts WHERE detector = 'd'")[0][0]
    assert buckets == 3


def test_versions_without_a_reference_say_how_to_get_one(tmp_path, halves):
    train, serve = halves
    service.train(tmp_path, "src", train, "IsolationForest", PARAMS)
    service.export(tmp_path, "src", tmp_path / "src.pnx")
    other = tmp_path / "other"
    service.import_detector(other, tmp_path / "src.pnx", "imported")
    service.detect(other, "imported", serve[:50], save=False)  # served, but not counted: no reference
    with pytest.raises(drift.DriftUnavailableError, match=r"'imported' version 1 has no drift reference.*"
                       r"pynomaly drift --set-reference --detector imported --data FILE"):
        drift.report(other, "imported")
    np.save(tmp_path / "train.npy", train)
    r = drift.set_reference(other, "imported", tmp_path / "train.npy")
    assert r == {"detector": "imported", "version": 1, "rows": len(train), "features": train.shape[1],
                 "bytes": r["bytes"], "score": True} and r["bytes"] < 64_000
    assert drift.reference(other, "imported")[1].to_bytes() == drift.reference(tmp_path, "src")[1].to_bytes()
    with pytest.raises(drift.DriftUnavailableError, match=r"no rows of detector 'imported' version 1 were served "
                       r"in the last 1 h"):
        drift.report(other, "imported")
    service.detect(other, "imported", shifted(serve), save=False)
    assert drift.report(other, "imported")["features"][0]["feature"] == "x3"
    with pytest.raises(DetectorNotFoundError, match="no detector named 'nope'"):
        drift.report(other, "nope")
    with pytest.raises(InvalidInputError, match="is not a window"):
        drift.parse_window("1 fortnight")
    with pytest.raises(InvalidInputError, match="takes 21 features; the reference data has 3 columns"):
        drift.set_reference(other, "imported", serve[:, :3])


def test_an_encrypted_home_seals_the_reference(tmp_path, monkeypatch, halves):
    pytest.importorskip("cryptography", reason="encrypted homes need the cryptography package")
    key = tmp_path / "kek"
    service.create_key_file(key)
    home = tmp_path / "home"
    service.init_home(home, encrypt=True, key=service.key_source(key_file=key))
    monkeypatch.setenv("PYNOMALY_KEY_FILE", str(key))
    train, serve = halves
    service.train(home, "s", train, "IsolationForest", PARAMS)
    stored = raw_sql(home, "SELECT profile FROM version_profiles")[0][0]
    plain = drift.reference(home, "s")[1].to_bytes()
    import base64

    assert base64.b64encode(plain).decode() not in stored and stored.startswith(FIELD_PREFIX)
    service.detect(home, "s", shifted(serve), save=False)
    assert drift.report(home, "s")["features"][0]["feature"] == "x3"
    monkeypatch.delenv("PYNOMALY_KEY_FILE")
    from pynomaly._errors import KeyRequiredError

    with pytest.raises(KeyRequiredError):
        drift.reference(home, "s")


def test_servers_export_the_window_as_prometheus_gauges(tmp_path, halves):
    """The daemon's /metrics (like the HTTP server's, tests/api/test_http_drift.py) shows the
    home's merged window: here counted by this process, read by the daemon's."""
    import socket
    import urllib.request

    from _daemon_helpers import DaemonProcess

    train, serve = halves
    home = tmp_path / "home"
    service.train(home, "moved", train, "IsolationForest", PARAMS)
    service.detect(home, "moved", shifted(serve), save=False)
    drift.flush()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = DaemonProcess(tmp_path, None, "--home", str(home), "--metrics-port", str(port))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            text = r.read().decode()
    finally:
        assert d.stop() == 0
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    doc = drift.report(home, "moved")
    assert float(values['pynomaly_feature_drift{detector="moved",feature="x3",stat="psi"}']) == \
        pytest.approx(doc["features"][0]["psi"])
    assert values['pynomaly_feature_drift{detector="moved",feature="x3",stat="drift"}'] == "1.0"
    assert float(values['pynomaly_score_drift{detector="moved",stat="psi"}']) == pytest.approx(doc["score"]["psi"])


@pytest.mark.parametrize("mode", [[], ["--no-native-loop"]], ids=["native-loop", "python-loop"])
def test_the_daemon_answers_the_drift_op(tmp_path, halves, mode):
    """The socket's ``drift`` op (detect role) sends the document ``pynomaly drift --json`` prints."""
    import pynomaly
    from pynomaly._errors import PynomalyError

    from _daemon_helpers import DaemonProcess

    train, serve = halves
    home = tmp_path / "home"
    service.train(home, "moved", train, "IsolationForest", PARAMS)
    service.train(home, "fresh", train, "IsolationForest", PARAMS)
    service.detect(home, "moved", shifted(serve), save=False)
    drift.flush()
    d = DaemonProcess(tmp_path, None, "--home", str(home), *mode)
    try:
        with pynomaly.Client(d.sock) as c:
            doc = c.drift("moved")
            ks = c.drift("moved", window=600, method="ks", alpha=0.01)
            undecided = c.drift("moved", min_rows=len(serve) + 1)
            with pytest.raises(PynomalyError, match="no rows of detector 'fresh' version 1") as e:
                c.drift("fresh")
            assert e.value.code == "unavailable"
            with pytest.raises(PynomalyError, match="no detector named 'nope'") as e:
                c.drift("nope")
            assert e.value.code == "unknown_detector"
    finally:
        assert d.stop() == 0
    assert doc == drift.report(home, "moved")
    assert ks["method"] == "ks" and ks["window_s"] == 600 and ks["features"][0]["feature"] == "x3"
    assert undecided["drift"] is None and undecided["reason"] == \
        f"{len(serve)} rows counted, at least {len(serve) + 1} needed to decide drift"
    assert undecided["features"] == [dict(f, drift=None) for f in doc["features"]]
