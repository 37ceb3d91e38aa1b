"""What a detection says of why its rows are anomalous, where it outlives the request (issue
22): each anomaly's top features kept with a stored result, and the few rows an alert names.

:func:`top_features` turns a detector's explanation into per-row ``(feature, value,
attribution)`` lists; :func:`with_top_features` keeps them with a result (the repository stores
them beside its scores); :func:`why_flagged` is what an alert carries of the rows that fired it
(:mod:`pynomaly.service.alerts`). The attributions themselves are the detectors' (``model.explain``).
"""

from __future__ import annotations

import numpy as np

from pynomaly.domain import DetectionResult

__all__ = ["top_features", "with_top_features", "why_flagged", "why_of_result", "ALERT_ROWS", "ALERT_FEATURES"]

ALERT_ROWS = 5  # rows of a firing detection an alert says why of, at most
ALERT_FEATURES = 3  # top features named per such row


def top_features(explanation, k: int, rows=None) -> list:
    """Per row of ``explanation`` (or per row index in ``rows``), its ``k`` features pushing
    most toward anomalous as dicts ``{"feature", "value", "attribution"}`` (k from 1 to the
    number of features)."""
    return [[{"feature": f, "value": v, "attribution": a} for f, v, a in row] for row in explanation.top(k, rows)]


def why_flagged(scorer, X, scores, rows=None, explanation=None) -> list:
    """What an alert says of the rows that fired it: each of ``rows`` (indices into X, the first
    :data:`ALERT_ROWS`; None: every row of X, which are then not numbered) as ``{"row", "score",
    "top_features"}`` with its :data:`ALERT_FEATURES` top features, by ``explanation`` (of all
    of X, a result's own) when given, else by the detector's default explanation."""
    numbered = rows is not None
    rows = list(range(min(len(scores), ALERT_ROWS)) if rows is None else rows)[:ALERT_ROWS]
    if not rows:
        return []
    k = min(ALERT_FEATURES, X.shape[1])
    if explanation is not None:
        tops = top_features(explanation, k, rows=rows)
    else:
        tops = top_features(scorer.explain(np.asarray(X)[rows]), k)
    return [{**({"row": int(i)} if numbered else {}), "score": float(scores[i]), "top_features": top}
            for i, top in zip(rows, tops)]


def with_top_features(result: DetectionResult, k: int) -> DetectionResult:
    """The result (which has an explanation) with each anomaly's top ``k`` features (what a
    face returns and the repository stores: one computation, so the two are equal)."""
    rows = result.anomaly_indices
    tops = top_features(result.explanation, k, rows=rows)
    return result.explained(result.explanation, {int(i): top for i, top in zip(rows, tops)})


def why_of_result(scorer, X, result: DetectionResult) -> list:
    """An alert's why of a detection: its highest-scoring anomalies with their top features (by
    the result's own explanation when it has one, so an alert says what the detection returned)."""
    idx = result.anomaly_indices
    rows = idx[np.argsort(-result.scores[idx], kind="stable")[:ALERT_ROWS]]
    return why_flagged(scorer, X, result.scores, rows, result.explanation)
