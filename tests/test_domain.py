"""The domain model: lifecycle rules, validated value objects, columnar results."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pynomaly
from pynomaly.domain import (
    AnomalyScore,
    ContaminationRate,
    DetectionResult,
    Detector,
    DetectorNotReadyError,
    DetectorStatus,
    InvalidTransitionError,
    fingerprint,
)


def trained(det: Detector) -> Detector:
    det.mark_trained(n_features=3, feature_names=["a", "b", "c"], data_fingerprint="f" * 32)
    return det


def test_errors_belong_to_the_hierarchy():
    assert issubclass(DetectorNotReadyError, pynomaly.PynomalyError)
    assert issubclass(InvalidTransitionError, pynomaly.PynomalyError)
    assert issubclass(InvalidTransitionError, ValueError)
    assert pynomaly.Detector is Detector


def test_happy_path_created_trained_active_archived():
    d = Detector(name="d", algorithm="IsolationForest", parameters={"n_estimators": 10})
    assert d.status is DetectorStatus.CREATED and d.version == 0 and d.trained_at is None
    assert not d.can_detect()
    with pytest.raises(DetectorNotReadyError, match="not been trained"):
        d.ensure_can_detect()
    trained(d)
    assert d.status is DetectorStatus.TRAINED and d.version == 1 and d.trained_at is not None
    assert not d.can_detect()  # trained is not enough: it must be activated
    with pytest.raises(DetectorNotReadyError, match="not active"):
        d.ensure_can_detect()
    d.activate()
    assert d.can_detect()
    d.ensure_can_detect()
    trained(d)  # retraining an active detector: next version, TRAINED until activated
    assert d.version == 2 and d.status is DetectorStatus.TRAINED
    d.activate()
    d.archive()
    assert d.status is DetectorStatus.ARCHIVED and not d.can_detect()
    with pytest.raises(DetectorNotReadyError, match="archived"):
        d.ensure_can_detect()
    with pytest.raises(InvalidTransitionError, match="archived"):
        trained(d)
    d.activate()  # restore
    assert d.can_detect() and d.version == 2


def test_failed_first_training():
    d = Detector(name="d", algorithm="IsolationForest")
    d.mark_failed("ValueError: boom")
    assert d.status is DetectorStatus.FAILED and not d.can_detect()
    with pytest.raises(DetectorNotReadyError, match="boom"):
        d.ensure_can_detect()
    with pytest.raises(InvalidTransitionError):
        d.activate()  # never trained: cannot become active
    with pytest.raises(InvalidTransitionError):
        d.archive()
    trained(d)  # a retry may succeed
    assert d.status is DetectorStatus.TRAINED and d.error is None and d.version == 1


@pytest.mark.parametrize("action", ["activate", "archive"])
def test_created_detector_cannot_be_activated_or_archived(action):
    d = Detector(name="d", algorithm="IsolationForest")
    with pytest.raises(InvalidTransitionError, match="created"):
        getattr(d, action)()


def test_mark_failed_only_before_a_trained_version():
    d = trained(Detector(name="d", algorithm="IsolationForest"))
    d.activate()
    with pytest.raises(InvalidTransitionError):
        d.mark_failed("retrain broke")
    assert d.can_detect()


def test_bad_entities_and_transitions_are_rejected():
    with pytest.raises(InvalidTransitionError, match="name"):
        Detector(name=" ", algorithm="IsolationForest")
    with pytest.raises(InvalidTransitionError, match="algorithm"):
        Detector(name="d", algorithm="")
    with pytest.raises(ValueError):
        Detector(name="d", algorithm="x", status="bogus")
    d = Detector(name="d", algorithm="x")
    with pytest.raises(InvalidTransitionError, match="n_features"):
        d.mark_trained(n_features=0)
    with pytest.raises(InvalidTransitionError, match="feature names"):
        d.mark_trained(n_features=2, feature_names=["a"])
    assert d.status is DetectorStatus.CREATED and d.version == 0  # unchanged after a refused call


_ACTIONS = ["train", "fail", "activate", "archive"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_ACTIONS), max_size=12))
def test_active_always_means_trained(actions):
    """Whatever sequence of (allowed or refused) actions: ACTIVE implies a trained version,
    can_detect() is exactly ACTIVE, and versions only grow."""
    d = Detector(name="d", algorithm="IsolationForest")
    last_version = 0
    for a in actions:
        try:
            {"train": lambda: trained(d), "fail": lambda: d.mark_failed("x"), "activate": d.activate, "archive": d.archive}[a]()
        except InvalidTransitionError:
            pass
        assert d.can_detect() == (d.status is DetectorStatus.ACTIVE)
        if d.status in (DetectorStatus.ACTIVE, DetectorStatus.TRAINED, DetectorStatus.ARCHIVED):
            assert d.version >= 1 and d.trained_at is not None
        assert d.version >= last_version
        last_version = d.version


def test_to_dict_round_trip():
    d = trained(Detector(name="d", algorithm="pyod.ECOD", parameters={"n_jobs": 1}))
    d.activate()
    again = Detector.from_dict(d.to_dict())
    assert again == d
    assert d.to_dict()["status"] == "active"


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0, 1])
def test_anomaly_score_accepts_unit_interval(value):
    s = AnomalyScore(value, confidence=value)
    assert s.value == float(value) and isinstance(s.value, float)


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, math.inf, True, "0.5", None])
def test_anomaly_score_rejects_outside_unit_interval(bad):
    with pytest.raises(InvalidTransitionError):
        AnomalyScore(bad)
    with pytest.raises(InvalidTransitionError):
        AnomalyScore(0.5, confidence=bad)


def test_value_objects_are_frozen():
    s = AnomalyScore(0.5, 0.9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.value = 0.1
    c = ContaminationRate(0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.value = 0.2
    assert AnomalyScore(0.5, 0.9) == s and hash(AnomalyScore(0.5, 0.9)) == hash(s)


@pytest.mark.parametrize("value", [1e-9, 0.1, 0.5])
def test_contamination_accepts(value):
    assert float(ContaminationRate(value)) == value


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 0.5000001, 1.0, math.nan, True, "0.1"])
def test_contamination_rejects(bad):
    with pytest.raises(InvalidTransitionError, match=r"\(0, 0.5\]"):
        ContaminationRate(bad)


def _result(scores, threshold):
    scores = np.asarray(scores, dtype=float)
    return DetectionResult(
        detector_id="id", detector_version=1, threshold=threshold, scores=scores,
        labels=(scores > threshold).astype(int), processing_time_ms=1.5,
    )


def test_detection_result_is_columnar_with_lazy_anomalies():
    rng = np.random.default_rng(0)
    scores = rng.random(1000)
    r = _result(scores, 0.9)
    assert r.scores.dtype == np.float64 and r.labels.dtype == np.int64
    m = r.metrics
    assert m["total_samples"] == 1000 and m["anomalies_detected"] == int((scores > 0.9).sum())
    assert m["processing_time_ms"] == 1.5
    assert r._get("anomalies") is None  # nothing per-row until asked
    anomalies = r.anomalies
    assert r.anomalies is anomalies
    idx = [i for i, _ in anomalies]
    assert sorted(idx) == list(np.flatnonzero(scores > 0.9))
    assert [scores[i] for i in idx] == sorted(scores[idx], reverse=True)
    top_i, top = anomalies[0]
    assert top_i == int(np.argmax(scores)) and top.value == 1.0 and top.confidence == 1.0
    assert all(0.0 <= s.value <= 1.0 and 0.0 <= s.confidence <= 1.0 for _, s in anomalies)
    assert r.summary()["anomalies_detected"] == m["anomalies_detected"]


def test_detection_result_edge_cases():
    assert _result([0.1, 0.2], 0.5).anomalies == []
    same = _result([0.7, 0.7, 0.7], 0.5)  # constant scores: no span to scale by
    assert [s.value for _, s in same.anomalies] == [1.0, 1.0, 1.0]
    with pytest.raises(InvalidTransitionError, match="one value per row"):
        DetectionResult(detector_id="i", detector_version=1, threshold=0.0, scores=np.zeros(3),
                        labels=np.zeros(2), processing_time_ms=0.0)
    with pytest.raises(InvalidTransitionError):
        DetectionResult(detector_id="i", detector_version=1, threshold=0.0, scores=np.zeros((3, 1)),
                        labels=np.zeros((3, 1)), processing_time_ms=0.0)


def test_fingerprint_follows_content_shape_and_dtype():
    X = np.arange(12, dtype=np.float64).reshape(4, 3)
    assert fingerprint(X) == fingerprint(X.copy()) == fingerprint(np.asfortranarray(X))
    Y = X.copy()
    Y[2, 1] += 1e-12
    assert fingerprint(Y) != fingerprint(X)
    assert fingerprint(X.reshape(3, 4)) != fingerprint(X)
    assert fingerprint(X.astype(np.float32)) != fingerprint(X)
    assert len(fingerprint(X)) == 32


def test_detection_result_takes_flags_or_labels_and_is_immutable():
    scores = np.array([0.1, 0.9, 0.5])
    flags = scores > 0.4
    a = DetectionResult("d", 1, 0.4, scores, flags)  # what the data plane gives: bool flags
    b = DetectionResult("d", 1, 0.4, scores, flags.astype(np.int64))  # what a library caller may give
    for r in (a, b):
        assert r.scores is scores  # no copy of the batch's arrays on the serving path
        assert r.labels.dtype == np.int64 and r.labels.tolist() == [0, 1, 1]
        assert r.flags.dtype == bool and r.flags.tolist() == [False, True, True]
    assert a.flags is flags
    for field in ("threshold", "scores", "labels", "flags", "id", "timestamp", "probabilities"):
        with pytest.raises(AttributeError):
            setattr(a, field, None)
        with pytest.raises(AttributeError):
            delattr(a, field)
    with pytest.raises(AttributeError):
        a.extra = 1  # no room for anything else either
    with pytest.raises(InvalidTransitionError, match="probabilities must have one value per row"):
        DetectionResult("d", 1, 0.4, scores, flags, probabilities=np.zeros(2))


def test_detection_result_id_and_time_are_made_once_and_kept():
    import datetime as dt

    before = dt.datetime.now(dt.timezone.utc)
    r = _result([0.2, 0.8], 0.5)
    after = dt.datetime.now(dt.timezone.utc)
    assert before <= r.timestamp <= after and r.timestamp is r.timestamp  # the making time, read later
    assert len(r.id) == 32 and r.id == r.id and r.id != _result([0.2], 0.5).id
    given = DetectionResult("d", 1, 0.5, [0.2], [0], id="abc", timestamp=before)
    assert given.id == "abc" and given.timestamp == before
    assert r.summary()["timestamp"] == r.timestamp.isoformat() and r.summary()["id"] == r.id
