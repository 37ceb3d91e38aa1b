"""want: ["attributions"] through a real daemon (issue 22): the detector's own explanation, bit
for bit, on the native path (forests, test_daemon_attributions_native.py) and the Python path
(every other detector, and what the native path does not know), and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

import pynomaly
from pynomaly.client import DaemonInputError

from _daemon_helpers import DaemonProcess, cardio, train

pynomaly_daemon = pytest.importorskip("pynomaly_daemon")
from pynomaly_daemon import save_to_folder  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    forest = train(0, n_estimators=50)
    knn = pynomaly.KNN(n_neighbors=5).fit(cardio()[:800])
    save_to_folder(root, "forest", forest)
    save_to_folder(root, "knn", knn)
    return root, {"forest": forest, "knn": knn}


@pytest.fixture(scope="module")
def daemon(models, tmp_path_factory):
    # Native loop and fast path on (the defaults): a forest's attributions are the native path's.
    d = DaemonProcess(tmp_path_factory.mktemp("sock"), models[0])
    yield d
    assert d.stop() == 0


@pytest.mark.parametrize("name", ["forest", "knn"])
@pytest.mark.parametrize("rows", [1, 37])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_attributions_equal_the_library(daemon, models, name, rows, dtype):
    model = models[1][name]
    X = cardio()[900:900 + rows].astype(dtype)
    with pynomaly.Client(daemon.sock) as c:
        r = c.detect(name, X, want=["scores", "labels", "attributions"])
    e = model.explain(X)
    assert r.attributions.shape == (rows, X.shape[1]) and r.attributions.dtype == np.float64
    np.testing.assert_array_equal(r.attributions, e.values)
    assert (r.explain_method, r.explain_output) == (e.method, e.output)
    np.testing.assert_array_equal(r.scores, model.decision_function(X))
    np.testing.assert_array_equal(r.labels, model.predict(X))


def test_explain_method_is_the_requests(daemon, models):
    model = models[1]["forest"]
    X = cardio()[:5]
    with pynomaly.Client(daemon.sock) as c:
        fast = c.stats().fast_path_requests
        r = c.detect("forest", X, want=["attributions"], explain_method="path")
        assert c.stats().fast_path_requests == fast + 1  # a forest's: the native path answers it
        knn = c.detect("knn", X, want=["attributions"])
        assert c.stats().fast_path_requests == fast + 1  # any other detector's: the Python path
        plain = c.detect("forest", X)  # the native path's, without attributions
        assert c.stats().fast_path_requests == fast + 2
    np.testing.assert_array_equal(knn.attributions, models[1]["knn"].explain(X).values)
    np.testing.assert_array_equal(r.attributions, model.explain(X, method="path").values)
    assert r.explain_method == "path" and r.scores is None
    assert plain.attributions is None and plain.explain_method is None
    np.testing.assert_array_equal(plain.scores, model.decision_function(X))


def test_bad_requests_get_clear_errors(daemon):
    X = cardio()[:2]
    with pynomaly.Client(daemon.sock) as c:
        with pytest.raises(DaemonInputError, match="cannot explain with method 'nope'.*'tree_shap'"):
            c.detect("forest", X, want=["attributions"], explain_method="nope")
        with pytest.raises(DaemonInputError, match="cannot explain with method 'path'.*'neighbors'"):
            c.detect("knn", X, want=["attributions"], explain_method="path")
        with pytest.raises(DaemonInputError, match="background"):  # a forest keeps none to permute against
            c.detect("forest", X, want=["attributions"], explain_method="permutation")
        with pytest.raises(DaemonInputError, match="add 'attributions' to want"):
            c.detect("forest", X, explain_method="path")
        with pytest.raises(DaemonInputError, match="bad_request|not a valid request"):
            c.detect("forest", X, want=["attributions"], explain_method="x" * 65)
        # the connection still serves after the refusals
        assert c.detect("forest", X, want=["attributions"]).attributions.shape == (2, X.shape[1])


def test_client_refuses_unknown_wants():
    with pytest.raises(ValueError, match="attributions"):
        pynomaly.client._want(["why"])
