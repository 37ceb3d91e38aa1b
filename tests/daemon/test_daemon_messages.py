"""Messages that tell a stuck user what to do (issue 26), around the daemon: an unknown
detector, a Client() with no daemon to talk to."""

from __future__ import annotations

import pytest

import pynomaly
from pynomaly import service
from pynomaly._client_io import DaemonError, DaemonUnavailableError

from _daemon_helpers import DaemonProcess, cardio


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = tmp_path_factory.mktemp("home")
    service.train(h, "cardio", cardio()[:500], "IsolationForest", {"n_estimators": 10, "random_state": 0})
    return h


def test_an_unknown_detector_over_the_daemon_suggests_the_close_name(home, tmp_path):
    d = DaemonProcess(tmp_path, None, "--home", str(home))
    try:
        with pynomaly.Client(d.sock) as c:
            assert c.detect("cardio", cardio()[:3]).scores.shape == (3,)
            with pytest.raises(DaemonError) as e:
                c.detect("cardoi", cardio()[:3])
    finally:
        d.stop()
    assert e.value.code == "unknown_detector" and "did you mean 'cardio'" in str(e.value)
    assert "pynomaly list" in str(e.value)


def test_a_client_with_no_daemon_suggests_pynomaly_serve(tmp_path):
    path = str(tmp_path / "none.sock")
    with pytest.raises(DaemonUnavailableError) as e:
        pynomaly.Client(path).health()
    assert f"pynomaly serve --socket {path}" in str(e.value)
