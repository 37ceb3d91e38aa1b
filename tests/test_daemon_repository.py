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
