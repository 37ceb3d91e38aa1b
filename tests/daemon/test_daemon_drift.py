"""The daemon's Python path feeds the drift window (issue 24): rows it scores are counted on the
reference's bins through the data plane's observe step, the ``drift`` op reads them (after the
observer's hand-over), a shifted feature ranks first and is flagged, unshifted traffic flags
nothing, and ``--no-drift`` counts nothing."""

from __future__ import annotations

import numpy as np
import pytest

import pynomaly
from pynomaly import service
from pynomaly.service import drift as service_drift

from _daemon_helpers import DaemonProcess
from conftest import load_dataset

PARAMS = {"n_estimators": 50, "random_state": 0}
PYTHON_PATH = ("--no-native-loop", "--no-fast-path")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    X, _ = load_dataset("cardio")
    X = X[np.random.default_rng(1).permutation(len(X))]
    n = len(X) // 2
    train, serve = X[:n], X[n:]
    moved = serve.copy()
    moved[:, 5] += 1.0
    home = tmp_path_factory.mktemp("home")
    for name in ("moved", "same", "quiet"):
        service.train(home, name, train, "IsolationForest", PARAMS)
    return home, serve, moved


def _serve(client, name, rows):
    for i in range(50):  # single rows (coalesced or not), then small batches
        client.detect(name, rows[i:i + 1])
    for part in np.array_split(rows[50:], 8):
        client.detect(name, part)


def test_the_python_path_counts_what_it_serves(served, tmp_path):
    home, serve, moved = served
    d = DaemonProcess(tmp_path, None, "--home", str(home), *PYTHON_PATH)
    try:
        with pynomaly.Client(d.sock) as c:
            _serve(c, "moved", moved)
            _serve(c, "same", serve)
            doc = c.drift("moved")
            calm = c.drift("same")
    finally:
        assert d.stop() == 0
    assert doc["rows"] == doc["rows_seen"] == len(moved) and doc["score"]["scored"] == len(moved)
    assert doc["drift"] and doc["features"][0]["feature"] == "x5"
    assert [f["feature"] for f in doc["features"] if f["drift"]] == ["x5"]
    assert calm["rows"] == len(serve) and not calm["drift"]
    # another process on the home reads the same window: the daemon wrote its counts at stop
    assert service_drift.report(home, "moved")["features"] == doc["features"]


def test_no_drift_counts_nothing(served, tmp_path):
    home, serve, _ = served
    d = DaemonProcess(tmp_path, None, "--home", str(home), *PYTHON_PATH, "--no-drift")
    try:
        with pynomaly.Client(d.sock) as c:
            _serve(c, "quiet", serve[:100])
            with pytest.raises(pynomaly.PynomalyError, match="no rows of detector 'quiet'"):
                c.drift("quiet")
    finally:
        assert d.stop() == 0
