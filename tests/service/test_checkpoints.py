"""Checkpoints of a learning streaming detector (issue 23): versions marked as checkpoints, a
retention policy that never deletes a trained version, and no notification of other serving
processes. On both backends."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pynomaly import DetectorNotFoundError, service
from pynomaly.service.streaming import checkpoint


def _rows() -> np.ndarray:
    return np.random.default_rng(0).random((600, 4))


def test_checkpoints_are_versions_and_only_the_newest_k_are_kept(home):
    X = _rows()
    service.train(home, "s", X[:200], "HalfSpaceTrees", {"seed": 1, "window_size": 50})
    model = service.load_model(home, "s")[1]
    saved = []
    for i in range(4):
        model.score_learn_many(X[200 + 50 * i:250 + 50 * i])
        saved.append(checkpoint(home, "s", model.to_bytes(), of_version=saved[-1] if saved else 1, records=50,
                                threshold=model.threshold_, keep=2))
    assert saved == [2, 3, 4, 5]
    versions = service.versions(home, "s")
    assert [v["version"] for v in versions] == [1, 4, 5]  # the trained version stays
    assert versions[-1]["parameters"]["checkpoint"] == {"of": 4, "records": 50}
    assert versions[-1]["parameters"]["seed"] == 1  # the training parameters are kept beside it
    with pytest.raises(DetectorNotFoundError):
        service.load_model(home, "s", 3)
    restored = service.load_model(home, "s")[1]
    np.testing.assert_array_equal(restored.score_many(X[400:]), model.score_many(X[400:]))
    with pytest.raises(Exception, match="keep must be a positive integer"):
        checkpoint(home, "s", model.to_bytes(), of_version=5, records=1, threshold=0.0, keep=0)


def test_a_checkpoint_does_not_notify_serving_processes(pg_home):
    from pynomaly.store._db import Listener
    from pynomaly.store.repository import Repository

    X = _rows()
    service.train(pg_home, "s", X[:200], "HalfSpaceTrees", {"seed": 1, "window_size": 50})
    service.train(pg_home, "other", X[:200], "HalfSpaceTrees", {"seed": 2, "window_size": 50})
    heard, sentinel = [], threading.Event()

    def told(name):
        heard.append(name)
        if name == "other":
            sentinel.set()

    listener = Listener(pg_home, Repository.NOTIFY_CHANNEL, told)
    try:
        assert listener.connected.wait(10)
        model = service.load_model(pg_home, "s")[1]
        model.score_learn_many(X[200:300])
        assert checkpoint(pg_home, "s", model.to_bytes(), of_version=1, records=100, threshold=model.threshold_,
                          keep=3) == 2
        service.archive(pg_home, "other")  # notified: once it is heard, the checkpoint's would have been
        assert sentinel.wait(10)
    finally:
        listener.stop()
    assert "s" not in heard and None not in heard
