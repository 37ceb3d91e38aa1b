"""Every daemon path feeds the drift window (issue 24): the native loop and the uvloop fast path
keep the rows they score in C++ and hand them over with the anomalies' tally, the Python path
through the data plane's observe step; the ``drift`` op reads them (after the observer's
hand-over), a shifted feature ranks first and is flagged, unshifted traffic flags nothing, the
home holds the same window for other processes, and ``--no-drift`` counts nothing."""

from __future__ import annotations

import time

import numpy as np
import pytest

import pynomaly
from pynomaly import service
from pynomaly.service import drift as service_drift
from pynomaly.serving.observe import DRIFT_ROWS, FAST_ROWS

from _daemon_helpers import DaemonProcess
from conftest import drift_halves

PARAMS = {"n_estimators": 50, "random_state": 0}
MODES = {"native-loop": (), "uvloop-fast-path": ("--no-native-loop",),
         "python-path": ("--no-native-loop", "--no-fast-path")}


@pytest.fixture(scope="module")
def data():
    return drift_halves(seed=1, feature=5)


def _serve(client, name, rows, dtype=np.float64):
    rows = rows.astype(dtype)
    for i in range(50):  # single rows (coalesced or not), then small batches
        client.detect(name, rows[i:i + 1])
    for part in np.array_split(rows[50:], 16):
        client.detect(name, part)


@pytest.mark.parametrize("mode", list(MODES))
def test_every_path_counts_what_it_serves(data, tmp_path, mode):
    train, serve, moved = data
    home = tmp_path / "home"
    for name in ("moved", "same"):
        service.train(home, name, train, "IsolationForest", PARAMS)
    d = DaemonProcess(tmp_path, None, "--home", str(home), *MODES[mode])
    try:
        with pynomaly.Client(d.sock) as c:
            _serve(c, "moved", moved)
            time.sleep(0.3)  # a hand-over: the uvloop fast path keeps rows again (FAST_ROWS per hand-over, all detectors)
            _serve(c, "same", serve, np.float32)  # float32 rows are widened where they are kept
            # The uvloop fast path profiles FAST_ROWS rows a hand-over, and this burst spans about
            # one: decide on that many (the default min_rows is more).
            doc = c.drift("moved", min_rows=FAST_ROWS)
            calm = c.drift("same", min_rows=FAST_ROWS)
            st = c.stats()
    finally:
        assert d.stop() == 0
    if mode != "python-path":
        assert st.fast_path_requests >= 2 * 65  # the native path served them (all but the first of each)
    assert doc["rows_seen"] == len(moved) and doc["score"]["scored"] == doc["rows"]
    if mode == "uvloop-fast-path":  # it keeps the first FAST_ROWS rows of each hand-over (and the one the Python path scored)
        assert FAST_ROWS <= doc["rows"] < len(moved)
    else:
        assert doc["rows"] == len(moved)
    assert doc["drift"] and doc["features"][0]["feature"] == "x5"
    assert [f["feature"] for f in doc["features"] if f["drift"]] == ["x5"]
    assert calm["rows_seen"] == len(serve) and calm["rows"] >= min(FAST_ROWS, len(serve)) and not calm["drift"]
    # another process on the home reads the same window: the daemon wrote its counts at stop
    assert service_drift.report(home, "moved", min_rows=FAST_ROWS)["features"] == doc["features"]


@pytest.mark.parametrize("mode", ["native-loop", "python-path"])
def test_no_drift_counts_nothing(data, tmp_path, mode):
    train, serve, _ = data
    home = tmp_path / "home"
    service.train(home, "quiet", train, "IsolationForest", PARAMS)
    d = DaemonProcess(tmp_path, None, "--home", str(home), *MODES[mode], "--no-drift")
    try:
        with pynomaly.Client(d.sock) as c:
            _serve(c, "quiet", serve[:100])
            with pytest.raises(pynomaly.PynomalyError, match="no rows of detector 'quiet'"):
                c.drift("quiet")
    finally:
        assert d.stop() == 0


def test_the_native_loop_counts_every_row_served_past_its_sample(data, tmp_path):
    """Past DRIFT_ROWS rows a hand-over, the native loop keeps no more rows (and no longer takes
    the detector's lock for them), yet the window's ``rows_seen`` still counts every row served."""
    train, serve, _ = data
    home = tmp_path / "home"
    service.train(home, "busy", train, "IsolationForest", PARAMS)
    rows = np.concatenate([serve] * (3 * DRIFT_ROWS // len(serve) + 1))[:3 * DRIFT_ROWS]
    d = DaemonProcess(tmp_path, None, "--home", str(home))
    try:
        with pynomaly.Client(d.sock) as c:
            for part in np.array_split(rows, len(rows) // 60):  # native-sized requests
                c.detect("busy", part)
            doc = c.drift("busy")
            st = c.stats()
    finally:
        assert d.stop() == 0
    assert st.fast_path_requests >= len(rows) // 60 - 1
    assert doc["rows_seen"] == len(rows)
    assert 0 < doc["rows"] < len(rows)  # the kept rows, themselves profiled on a sample (drift_live.settings.sample_above)
