"""Every kind of detector is served by the daemon through the Scorer, from a repository home and
from a ``--models`` folder alike, and answers bit-equal to in-process scoring."""

from __future__ import annotations

import numpy as np
import pytest

import pynomaly
from pynomaly.estimators import registry
from pynomaly import service

from _daemon_helpers import DaemonProcess, cardio

pynomaly_daemon = pytest.importorskip("pynomaly_daemon")
from pynomaly_daemon import save_to_folder  # noqa: E402

KINDS = [
    ("IsolationForest", {"n_estimators": 50, "random_state": 0}, None),
    ("LOF", {"n_neighbors": 10, "novelty": True}, None),
    ("KNN", {"n_neighbors": 5}, None),
    ("pyod.ECOD", {}, "pyod"),
    ("pyod.IForest", {"use_native": True, "random_state": 0}, "pyod"),
    ("TorchAutoEncoder", {"epochs": 2, "random_state": 0}, "torch"),
    ("JaxDeepSVDD", {"epochs": 2, "random_state": 0}, "jax"),
]


def _available():
    out = []
    for algorithm, params, module in KINDS:
        if module is not None:
            try:
                __import__(module)
            except ImportError:
                continue
        out.append((algorithm, params))
    return out


def _name(algorithm: str) -> str:
    return algorithm.replace(".", "-").lower()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One home and one folder holding every available kind, trained on the same rows."""
    X = cardio()
    train, new = X[:1500], X[1500:1700]
    home = tmp_path_factory.mktemp("home")
    folder = tmp_path_factory.mktemp("models")
    expected = {}
    for algorithm, params in _available():
        name = _name(algorithm)
        service.train(home, name, train, algorithm, params)
        scorer = service.load_for_scoring(home, name)
        save_to_folder(folder, name, scorer.model, algorithm=None if registry.kind(algorithm) == "native" else algorithm)
        expected[name] = scorer
    tmp = tmp_path_factory.mktemp("sock")
    daemons = {
        "home": DaemonProcess(tmp, None, "--home", str(home), name="home.sock"),
        "folder": DaemonProcess(tmp, folder, "--trust-pickle", name="folder.sock"),
    }
    yield daemons, expected, new
    for d in daemons.values():
        d.stop()


@pytest.mark.parametrize("source", ["home", "folder"])
@pytest.mark.parametrize("algorithm", [a for a, _, _ in KINDS])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_kind_is_served_bit_equal_to_in_process(served, source, algorithm, dtype):
    daemons, expected, new = served
    name = _name(algorithm)
    if name not in expected:
        pytest.skip(f"{algorithm} needs an extra that is not installed")
    rows = new.astype(dtype)
    want = ["scores", "labels", "probabilities", "anomalies"]
    with pynomaly.Client(daemons[source].sock, timeout=60) as c:
        one = c.detect(name, rows[:1], want=want)  # a single row (the native path for forests)
        many = c.detect(name, rows, want=want)
        info = c.info(name)
    e = expected[name].detect(rows, ("scores", "labels", "probabilities", "anomalies"))  # in process
    np.testing.assert_array_equal(many.scores, e.scores)
    np.testing.assert_array_equal(many.labels, e.labels)
    np.testing.assert_array_equal(many.probabilities, e.probabilities)
    np.testing.assert_array_equal(many.anomalies, e.anomaly_indices)
    np.testing.assert_array_equal(one.scores, expected[name].detect(rows[:1]).scores)
    assert many.threshold == e.threshold and many.version == 1
    assert info.algorithm == algorithm and info.n_features == new.shape[1]
    assert info.status == ("active" if source == "home" else None)  # issue 16.12: as list() says


def test_a_pickled_model_in_a_folder_needs_trust(served, tmp_path):
    if "pyod-ecod" not in served[1]:
        pytest.skip("PyOD is not installed")
    folder = tmp_path / "models"
    save_to_folder(folder, "ecod", served[1]["pyod-ecod"].model, algorithm="pyod.ECOD")
    d = DaemonProcess(tmp_path, folder)
    try:
        with pynomaly.Client(d.sock, timeout=30) as c:
            with pytest.raises(pynomaly.client.DaemonError, match="unavailable.*pickled"):
                c.detect("ecod", cardio()[:2])
            assert c.health().status == "ok"
    finally:
        d.stop()
