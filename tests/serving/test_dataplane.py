"""The serving faces' data plane (pynomaly.serving.dataplane): lookup (hot -> cached -> resolve
-> pin), the decision by the one rule, and the observation made from those same flags; and
the rule itself stated once in Python (pynomaly.domain.flagged)."""

from __future__ import annotations

import ast
import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pynomaly import IsolationForest
from pynomaly._errors import DetectorNotFoundError
from pynomaly.domain import DetectionResult, flagged
from pynomaly.serving import DataPlane, FolderSource, ModelCache, save_to_folder
from pynomaly.serving.observe import Observer

from conftest import REPO


def test_the_rule_flags_scores_above_the_threshold_only():
    scores = np.array([0.1, 0.5, 0.5000001, np.inf])
    assert flagged(scores, 0.5).tolist() == [False, False, True, True]  # equal to it is not an anomaly


def _comparisons_with_a_threshold(path):
    """``x > threshold``-like comparisons in a module: the rule written out again."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Gt, ast.GtE)) for op in node.ops):
            for side in node.comparators:
                text = ast.unparse(side)
                if "threshold" in text or text in ("t", "thr"):
                    out.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_the_rule_is_stated_once_in_python():
    roots = [REPO / "python" / "pynomaly", REPO / "daemon" / "pynomaly_daemon", REPO / "api" / "pynomaly_api"]
    found = [c for root in roots for p in sorted(root.rglob("*.py")) if p.name != "domain.py"
             for c in _comparisons_with_a_threshold(p)]
    not_the_rule = (
        "web/charts.py",  # a histogram bar coloured by its left edge: drawing, not deciding
        "estimators/iforest.py",  # a threshold rounded down to float32 (_round_down_to_float32)
        "estimators/drift.py",  # PSI against the drift decision's psi_threshold: not the anomaly rule
    )
    assert [c for c in found if not any(f in c for f in not_the_rule)] == []


@pytest.fixture
def plane(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    X[:6] += 6
    model = IsolationForest(n_estimators=20, random_state=0).fit(X)
    save_to_folder(tmp_path, "m", model)
    save_to_folder(tmp_path, "m", model)  # version 2: the latest
    pool = ThreadPoolExecutor(1)
    loop = asyncio.new_event_loop()
    counters = {"cache_hits": 0, "cache_misses": 0}
    cache = ModelCache(FolderSource(tmp_path), lambda fn, *a: loop.run_in_executor(pool, fn, *a),
                       max_bytes=1 << 30, refresh_interval=3600, counters=counters)
    yield DataPlane(cache, Observer(None, alerts_on=False)), loop, X
    loop.close()
    pool.shutdown()


def test_lookup_then_load_then_pin(plane):
    p, loop, _ = plane
    assert p.lookup("m", None) is None and p.lookup("m", 1) is None  # nothing loaded: the caller awaits
    latest = loop.run_until_complete(p.scorer("m", None))
    assert latest.version.version == 2 and p.cache.counters["cache_misses"] == 1
    assert p.lookup("m", None) is latest and p.cache.hot[("m", None)] is latest
    assert ("m", 2) not in p.cache.pinned  # the latest, not asked for by number
    one = loop.run_until_complete(p.scorer("m", 1))
    assert one.version.version == 1 and ("m", 1) in p.cache.pinned
    p.cache.pinned.clear()
    assert p.lookup("m", 1) is one and ("m", 1) in p.cache.pinned  # a hot hit pins too
    with pytest.raises(DetectorNotFoundError):
        loop.run_until_complete(p.scorer("nope", None))


class _Item:
    def __init__(self, n):
        self.n = n


def test_decide_gives_the_domains_result_by_the_rule_and_observes_its_flags(plane):
    p, loop, X = plane
    s = loop.run_until_complete(p.scorer("m", None))
    scores = s.score(X)
    r = p.decide(s, [_Item(200), _Item(100)], scores)
    want = flagged(scores, s.version.threshold)
    assert isinstance(r, DetectionResult) and r.scores is scores  # no copy of the batch's scores
    assert r.threshold == s.version.threshold and r.detector_version == s.version.version
    assert r.flags.dtype == bool and np.array_equal(r.flags, want)
    assert np.array_equal(r.labels, want.astype(np.int64))  # the same result a library call gives
    assert np.array_equal(r.labels, s.decide(scores).labels)
    assert p.observer.totals["m"] == [2, 300, int(want.sum())]
    one = p.decide(s, None, scores[:1])  # one request
    assert p.observer.totals["m"] == [3, 301, int(want.sum()) + int(one.flags[0])]


def test_the_scorer_decides_into_the_domains_result(plane):
    p, loop, X = plane
    s = loop.run_until_complete(p.scorer("m", None))
    scores = s.score(X)
    r = s.decide(scores, ("scores", "labels", "probabilities"), threshold=0.5)
    assert isinstance(r, DetectionResult) and r.threshold == 0.5
    assert np.array_equal(r.labels, flagged(scores, 0.5).astype(np.int64)) and r.probabilities is not None
    assert r.detector_version == 2 and r.confidence is None


def test_no_module_of_the_http_face_imports_its_app():
    """app.py only assembles: the routes import the shared state, errors and body reading from
    modules of their own, so there is no app <-> route cycle."""
    api = REPO / "api" / "pynomaly_api"
    importers = []
    for path in sorted(api.rglob("*.py")):
        if path.parent == api and path.name in ("app.py", "__init__.py", "cli.py"):  # the entry, the launcher
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "app":
                importers.append(str(path.relative_to(api)))
    assert importers == []
