"""Explaining detections: which features made rows anomalous, for every face.

:func:`explain` loads a stored detector (as detection does) and the rows of a data file, and
returns the detector's :class:`~pynomaly.estimators.explain.Explanation` of the rows asked for;
:func:`top_features` turns one into the per-row ``(feature, value, attribution)`` lists that
faces print or write. The attributions themselves are the detectors' (``model.explain``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from pynomaly._errors import InvalidInputError
from pynomaly.estimators.explain import check_top_k  # noqa: F401 - faces check a request's K with it
from pynomaly.service._common import opened as _repo
from pynomaly.service.data import load_data
from pynomaly.service.scorer import Scorer
from pynomaly.service.why import top_features  # noqa: F401 - faces know it as service.top_features

__all__ = ["Explained", "explain", "explain_rows", "top_features", "parse_rows", "check_top_k"]


class Explained(NamedTuple):
    """What :func:`explain` returns: the rows explained (indices into the data), their scores
    and labels, and the detector's explanation of them (row i of it is ``rows[i]``)."""

    rows: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    explanation: object  # pynomaly.estimators.explain.Explanation


def parse_rows(text: str) -> list:
    """Row indices from "3,7,10-20" (ranges inclusive); InvalidInputError on anything else."""
    rows = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise ValueError
                rows.extend(range(a, b + 1))
            else:
                rows.append(int(part))
        except ValueError:
            raise InvalidInputError(f"rows must be indices and inclusive ranges such as 3,7,10-20; got {part!r}") from None
    return rows


def explain_rows(scorer: Scorer, X: np.ndarray, rows=None, *, method=None, output=None, top: int = 10) -> Explained:
    """Explain rows of X with a loaded detector: the given ``rows`` (indices), else its
    ``top`` highest-scoring rows, most anomalous first."""
    X = np.asarray(X)
    n = X.shape[0]
    model = scorer.model
    if rows is None:
        scores_all = scorer.score(X)
        rows = np.argsort(-scores_all, kind="stable")[: max(int(top), 1)]
    else:
        rows = np.asarray(list(rows), dtype=np.int64)
        bad = rows[(rows < 0) | (rows >= n)]
        if bad.size:
            raise InvalidInputError(f"row {int(bad[0])} does not exist: the data has {n} rows (0 to {n - 1})")
    if rows.size == 0:
        raise InvalidInputError("no rows to explain")
    part = X[rows]
    scores = scorer.score(part)
    labels = scorer.labels(scores)
    explanation = model.explain(part, method=method, output=output)
    names = scorer.version.feature_names
    if names and len(names) == part.shape[1]:  # the stored names (a CSV header) over generated ones
        explanation = dataclasses.replace(explanation, feature_names=[str(c) for c in names])
    return Explained(rows, scores, labels, explanation)


def explain(home, name: str, data, *, version=None, rows=None, method=None, output=None, columns=None,
            top: int = 10, scorer: Optional[Scorer] = None) -> Explained:
    """Explain rows of ``data`` (a file or an array) with stored detector ``name``.

    ``rows``: indices (or a "3,7,10-20" string), default the ``top`` highest-scoring rows.
    ``method`` / ``output``: as ``model.explain`` takes them (None: the detector's default).
    Columns are matched by name as :func:`pynomaly.service.detect` matches them.
    """
    from pynomaly.service.usecases import _columns_by_name, load_for_scoring

    if isinstance(rows, str):
        rows = parse_rows(rows)
    with _repo(home) as repo:
        if scorer is None:
            scorer = load_for_scoring(repo, name, version)
    feature_names = scorer.version.feature_names
    if columns is None and isinstance(data, (str, Path)) and feature_names:
        from pynomaly.store.dataio import read_header

        header = read_header(data)
        columns = None if header is None else _columns_by_name(header, feature_names, Path(data).name)
    X, _, _ = load_data(data, columns)
    return explain_rows(scorer, X, rows, method=method, output=output, top=top)
