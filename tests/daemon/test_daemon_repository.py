"""The daemon serving the SQLite repository (``--home``) through pynomaly.service.

Skipped where the repository layer (issue 5) is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

import pynomaly

from _daemon_helpers import DaemonProcess, cardio, wait_until

service = pytest.importorskip("pynomaly.service")
pytest.importorskip("pynomaly_daemon")


def test_daemon_serves_the_repository(tmp_path):
    home = tmp_path / "home"
    X = cardio()
    service.train(home, "cardio", X, "IsolationForest", {"random_state": 0, "n_estimators": 50})
    model1 = service.load_for_scoring(home, "cardio").model
    d = DaemonProcess(tmp_path, None, "--home", str(home), "--refresh-interval", "0.1")
    try:
        with pynomaly.Client(d.sock) as c:
            r = c.detect("cardio", X[:300])
            np.testing.assert_array_equal(r.scores, model1.decision_function(X[:300]))
            assert r.version == 1
            [info] = c.list()
            assert (info.name, info.version, info.n_features, info.status) == ("cardio", 1, 21, "active")
            # Retrained: version 2 is served without a restart.
            service.train(home, "cardio", X, "IsolationForest", {"random_state": 1, "n_estimators": 50})
            model2 = service.load_for_scoring(home, "cardio").model
            assert wait_until(lambda: c.detect("cardio", X[:1]).version == 2)
            np.testing.assert_array_equal(c.detect("cardio", X[:300]).scores, model2.decision_function(X[:300]))
            np.testing.assert_array_equal(c.detect("cardio", X[:5], version=1).scores, model1.decision_function(X[:5]))
            # Archived: no longer served.
            service.archive(home, "cardio")
            with pytest.raises(pynomaly.DaemonError) as e:
                assert wait_until(lambda: c.detect("cardio", X[:1]) is None, timeout=5)
            assert e.value.code == "unavailable"
            with pytest.raises(pynomaly.DaemonError) as e:
                c.detect("nope", X[:1])
            assert e.value.code == "unknown_detector"
    finally:
        assert d.stop() == 0


def test_a_source_that_goes_back_is_not_followed_silently(tmp_path):
    """Issue 16.2: the database loses the latest version under a running daemon; the daemon
    keeps serving the version it had, says so once in its log, and info reports the status."""
    import sqlite3

    home = tmp_path / "home"
    X = cardio()
    service.train(home, "m", X, params={"random_state": 0, "n_estimators": 20})
    service.train(home, "m", X, params={"random_state": 1, "n_estimators": 20})
    v2 = service.load_for_scoring(home, "m").model
    d = DaemonProcess(tmp_path, None, "--home", str(home), "--refresh-interval", "0.05")
    try:
        with pynomaly.Client(d.sock) as c:
            assert c.detect("m", X[:5]).version == 2
            assert c.info("m").status == "active"
            db = sqlite3.connect(home / "pynomaly.db")
            db.execute("DELETE FROM detector_versions WHERE version = 2")
            db.execute("UPDATE detectors SET version = 1")
            db.commit()
            db.close()

            def served_v2_and_logged():  # a refresh is due only when a request is served
                r = c.detect("m", X[:5])
                assert r.version == 2
                np.testing.assert_array_equal(r.scores, v2.decision_function(X[:5]))
                return "went back from 2 to 1" in d.log_text()

            assert wait_until(served_v2_and_logged, timeout=10, step=0.05)
            for _ in range(10):
                served_v2_and_logged()
        assert d.log_text().count("went back from 2 to 1") == 1
    finally:
        d.stop()


def test_an_explicit_socket_folder_is_never_created(tmp_path):
    """Issue 16.8: a missing parent given with --socket is refused, not created."""
    import subprocess
    import sys

    target = tmp_path / "missing" / "dir" / "d.sock"
    p = subprocess.run([sys.executable, "-m", "pynomaly_daemon", "--socket", str(target), "--home", str(tmp_path / "h")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "does not exist" in p.stderr
    assert not (tmp_path / "missing").exists()


def test_daemon_serves_an_encrypted_home_and_refuses_to_start_without_its_key(tmp_path):
    pytest.importorskip("cryptography")
    from pynomaly import KeyRequiredError  # noqa: F401 - the error the start-up check names

    home, key = tmp_path / "home", tmp_path / "kek"
    service.create_key_file(key)
    service.init_home(home, encrypt=True, key=service.key_source(key_file=key))
    X = cardio()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYNOMALY_KEY_FILE", str(key))
        service.train(home, "cardio", X, "IsolationForest", {"random_state": 0, "n_estimators": 50})
        model = service.load_for_scoring(home, "cardio").model
    with pytest.raises(RuntimeError, match="is encrypted and no key was given"):
        DaemonProcess(tmp_path, None, "--home", str(home), name="nokey.sock")
    d = DaemonProcess(tmp_path, None, "--home", str(home), "--key-file", str(key))
    try:
        with pynomaly.Client(d.sock) as c:
            np.testing.assert_array_equal(c.detect("cardio", X[:5]).scores, model.decision_function(X[:5]))
            np.testing.assert_array_equal(c.detect("cardio", X).scores, model.decision_function(X))
    finally:
        assert d.stop() == 0
