"""pynomaly.service's Scorer: the one place where scores become labels, probabilities,
confidences and anomaly indices, checked against the estimators' own methods (PyOD's meanings)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import pynomaly
from pynomaly import service
from pynomaly.domain import DetectorNotReadyError, DetectorVersion
from pynomaly.service import Scorer

from conftest import load_dataset


@pytest.fixture(scope="module")
def data():
    X, _ = load_dataset("cardio")
    return X[:1200], X[1200:]


@pytest.fixture(scope="module")
def forest(data):
    return pynomaly.IsolationForest(n_estimators=50, contamination=0.05, random_state=0).fit(data[0])


def test_detect_equals_the_estimators_own_methods(forest, data):
    X = data[1]
    s = Scorer.of(forest, "f", 2)
    r = s.detect(X, ("scores", "labels", "probabilities", "confidence", "anomalies"))
    np.testing.assert_array_equal(r.scores, forest.decision_function(X))
    np.testing.assert_array_equal(r.labels, forest.predict(X))
    np.testing.assert_array_equal(r.probabilities, forest.predict_proba(X)[:, 1])
    np.testing.assert_array_equal(r.confidence, forest.predict_confidence(X))
    np.testing.assert_array_equal(r.anomaly_indices, np.flatnonzero(forest.predict(X)))
    assert r.threshold == forest.threshold_ and r.detector_version == 2
    assert r.labels.dtype == np.int64 and r.anomaly_indices.dtype == np.int64


def test_default_want_gives_scores_and_labels_only(forest, data):
    r = Scorer.of(forest, "f").detect(data[1])
    assert r.probabilities is None and r.confidence is None


def test_threshold_and_contamination_overrides(forest, data):
    X = data[1]
    s = Scorer.of(forest, "f")
    scores = forest.decision_function(X)
    r = s.detect(X, threshold=0.5)
    np.testing.assert_array_equal(r.labels, (scores > 0.5).astype(np.int64))
    r = s.detect(X, contamination=0.2)
    assert r.threshold == np.percentile(scores, 80.0)
    with pytest.raises(ValueError, match="either threshold or contamination"):
        s.detect(X, threshold=0.5, contamination=0.1)
    with pytest.raises(ValueError, match="finite"):
        s.detect(X, threshold=float("nan"))
    with pytest.raises(ValueError, match="contamination"):
        s.detect(X, contamination=0.9)


def test_wrong_features_and_unknown_wants_are_refused(forest, data):
    s = Scorer.of(forest, "f", feature_names=[f"c{i}" for i in range(data[0].shape[1])])
    with pytest.raises(ValueError, match=r"trained on 21 \(c0, c1"):
        s.detect(data[1][:, :5])
    with pytest.raises(ValueError, match="want must name"):
        s.detect(data[1], ("scores", "everything"))
    with pytest.raises(ValueError, match="NaN|finite"):
        s.detect(np.full((2, 21), np.nan))


def test_probabilities_need_training_scores(data):
    from sklearn.ensemble import IsolationForest as SkIF

    imported = pynomaly.IsolationForest.from_sklearn(SkIF(n_estimators=20, random_state=0).fit(data[0]))
    s = Scorer.of(imported, "sk")
    assert s.version.training_stats is None
    with pytest.raises(DetectorNotReadyError, match="no training scores to scale probabilities"):
        s.detect(data[1], ("probabilities",))
    assert s.detect(data[1]).scores.shape == (len(data[1]),)


def test_version_is_a_frozen_value(forest):
    v = Scorer.of(forest, "f", 3, feature_names=["a"] * 21).version
    assert isinstance(v, DetectorVersion) and v.feature_names == ("a",) * 21
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.threshold = 0.0
    assert v.training_stats.n == 1200 and v.contamination == 0.05


def test_native_handle_only_for_native_forests(forest, data):
    assert Scorer.of(forest, "f", 1).native.threshold == forest.threshold_
    lof = pynomaly.LOF(n_neighbors=10, novelty=True).fit(data[0][:300])
    assert Scorer.of(lof, "l", 1).native is None


def test_load_for_scoring_refuses_what_cannot_detect(home, data):
    service.train(home, "d", data[0], params={"n_estimators": 20, "random_state": 0})
    s = service.load_for_scoring(home, "d")
    assert (s.version.name, s.version.version, s.version.algorithm) == ("d", 1, "IsolationForest")
    assert s.version.feature_names == tuple(f"x{i}" for i in range(21))
    service.archive(home, "d")
    with pytest.raises(DetectorNotReadyError):
        service.load_for_scoring(home, "d")
    with pytest.raises(pynomaly.DetectorNotFoundError):
        service.load_for_scoring(home, "nope")


def test_detect_through_the_service_stores_the_scorers_result(home, data):
    service.train(home, "d", data[0], params={"n_estimators": 20, "random_state": 0})
    r = service.detect(home, "d", data[1])
    expected = service.load_for_scoring(home, "d").detect(data[1])
    np.testing.assert_array_equal(r.scores, expected.scores)
    np.testing.assert_array_equal(r.labels, expected.labels)
    stored = service.show(home, "d")
    assert r.detector_id == stored["id"] and stored["results"][0]["id"] == r.id


def test_model_files_outside_a_repository(tmp_path, forest, data):
    """Native model bytes and export files are served alike; pickles only when trusted."""
    (tmp_path / "1.pnm").write_bytes(forest.to_bytes())
    a = service.load_file_for_scoring(tmp_path / "1.pnm", "f", 1)
    service.export_model(forest, tmp_path / "2.pnm", "f", "IsolationForest", version=2)
    b = service.load_file_for_scoring(tmp_path / "2.pnm", "f", 2)
    np.testing.assert_array_equal(a.score(data[1]), b.score(data[1]))
    (tmp_path / "3.pnm").write_bytes(b"not a model")
    with pytest.raises(pynomaly.ArtifactIntegrityError, match="neither"):
        service.load_file_for_scoring(tmp_path / "3.pnm", "f", 3)
    with pytest.raises(pynomaly.DetectorNotFoundError):
        service.load_file_for_scoring(tmp_path / "4.pnm", "f", 4)
    pytest.importorskip("pyod")
    from pynomaly.estimators import registry

    ecod = registry.create("pyod.ECOD").fit(data[0])
    service.export_model(ecod, tmp_path / "5.pnm", "e", "pyod.ECOD")
    with pytest.raises(pynomaly.ArtifactIntegrityError, match="pickled"):
        service.load_file_for_scoring(tmp_path / "5.pnm", "e", 5)
    e = service.load_file_for_scoring(tmp_path / "5.pnm", "e", 5, trust_pickle=True)
    np.testing.assert_array_equal(e.score(data[1]), ecod.decision_function(data[1]))


@pytest.mark.parametrize("bad", ["../../etc/x", "", "a b", "x" * 129, "-lead", "na\x00me", "é"])
def test_names_follow_one_rule_everywhere(home, tmp_path, data, bad):
    """Issue 16.5: what a name is, refused alike by the service, the CLI and the model folders,
    with a short escaped prefix of the name in the message."""
    from pynomaly.domain import InvalidNameError

    with pytest.raises(InvalidNameError, match="is not a detector name") as e:
        service.train(home, bad, data[0][:100], params={"n_estimators": 5})
    assert len(str(e.value)) < 300
    assert service.list_detectors(home) == []
    import pynomaly_daemon

    with pytest.raises(pynomaly.DetectorNotFoundError):
        pynomaly_daemon.FolderSource(tmp_path).get(bad)


def test_a_long_name_is_shown_as_a_short_prefix():
    from pynomaly.domain import check_name

    with pytest.raises(ValueError) as e:
        check_name("x\x00" * 500_000)
    assert "1000000 characters" in str(e.value) and len(str(e.value)) < 300


def test_overview_gives_each_detector_its_versions_threshold_and_last_result(home):
    """The web's detectors list (issue 11) reads this in one repository session."""
    X = np.random.default_rng(0).standard_normal((300, 4))
    service.train(home, "b", X, "IsolationForest", {"n_estimators": 10, "random_state": 0})
    service.train(home, "a", X, "IsolationForest", {"n_estimators": 10, "random_state": 0})
    service.train(home, "a", X, "IsolationForest", {"n_estimators": 20, "random_state": 1})
    r = service.detect(home, "a", X[:50], contamination=0.1)
    rows = service.overview(home)
    assert [o["detector"].name for o in rows] == ["a", "b"]
    a, b = rows
    assert a["versions"] == 2 and a["threshold"] == service.versions(home, "a")[-1]["threshold"]
    assert a["last_result"]["id"] == r.id and a["last_result"]["anomalies_detected"] == int(r.labels.sum())
    assert b["versions"] == 1 and b["last_result"] is None


def test_stored_datasets_results_and_audit_on_every_backend(home):
    """What the faces keep through the service besides models: uploaded rows, results, the
    audit trail, and a clean bill from doctor."""
    X = np.random.default_rng(1).standard_normal((200, 3))
    meta = service.store_dataset(home, X, "rows")
    assert service.store_dataset(home, X, "rows")["id"] == meta["id"]  # deduplicated
    back, names = service.dataset_rows(home, meta["id"])
    np.testing.assert_array_equal(back, X)
    assert names == ["x0", "x1", "x2"] and [d["id"] for d in service.list_datasets(home)] == [meta["id"]]
    service.train(home, "d", X, params={"n_estimators": 10, "random_state": 0})
    r = service.detect(home, "d", X[:20])
    np.testing.assert_array_equal(service.result(home, r.id).scores, r.scores)
    assert [m["id"] for m in service.results(home, "d")] == [r.id]
    service.delete_dataset(home, meta["id"])
    with pytest.raises(pynomaly.NotFoundError):
        service.dataset(home, meta["id"])
    for i in range(3):
        service.audit_record(home, actor="tester", action="train", target=f"d{i}")
    assert [e["target"] for e in service.audit_entries(home)] == ["d0", "d1", "d2"]
    assert service.audit_verify(home) == {"ok": True, "entries": 3, "problems": []}
    found = service.doctor(home)
    assert not any(found[k] for k in found), found


def test_every_use_case_is_a_name_of_the_service_package():
    """The use cases live in a module each (issue 21); faces and users still call them all as
    ``pynomaly.service.<function>``, those never listed in ``__all__`` included."""
    public = {"check_reachable", "create_key_file", "is_encrypted", *service.__all__}
    assert [n for n in sorted(public) if not hasattr(service, n)] == []
    assert service.Scorer is Scorer


def test_what_the_pages_read_of_datasets_and_versions(home):
    """Issue 26's use cases: a dataset's preview agrees with its rows column by column, the
    datasets overview names the detectors trained on each, and a version's training scores
    are the scores its model gave its training rows (the same rows scored again, for the
    native forest)."""
    X = np.random.default_rng(2).standard_normal((400, 3))
    X[:, 2] = np.round(X[:, 2])  # few distinct values, some zeros
    meta = service.store_dataset(home, X, "rows")
    view = service.dataset_preview(home, meta["id"], head=4)
    assert view["meta"]["id"] == meta["id"] and view["names"] == ["x0", "x1", "x2"]
    np.testing.assert_array_equal(np.array(view["head"]), X[:4])
    for j, c in enumerate(view["columns"]):
        col = X[:, j]
        assert (c["min"], c["max"], c["distinct"]) == (col.min(), col.max(), np.unique(col).size)
        assert c["mean"] == pytest.approx(col.mean()) and c["std"] == pytest.approx(col.std())
        assert c["zeros"] == np.mean(col == 0)
    assert view["columns"][2]["distinct"] < 10 < view["columns"][0]["distinct"]
    service.train(home, "t", None, "IsolationForest", {"n_estimators": 20, "random_state": 0},
                  dataset_id=meta["id"])
    service.train(home, "u", X[:100], "IsolationForest", {"n_estimators": 10, "random_state": 0})
    by_id = {d["id"]: d for d in service.datasets_overview(home)}
    assert by_id[meta["id"]]["trained"] == ["t"] and len(by_id) == 2
    assert next(iter(by_id.values()))["id"] != meta["id"]  # newest first: u's recorded dataset
    recorded = service.dataset_preview(home, service.versions(home, "u")[0]["dataset_id"])
    assert recorded["head"] is None and recorded["columns"] is None  # only described: no rows kept
    scores = service.training_scores(home, "t", 1)
    np.testing.assert_allclose(scores, service.load_model(home, "t")[1].decision_function(X), rtol=1e-12)
