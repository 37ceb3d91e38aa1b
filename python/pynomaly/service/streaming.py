"""Running a stored streaming detector over a file, record by record (``pynomaly stream``).

The detector scores each record in order and, with ``learn``, learns it right after
(prequential); each score gets a conformal p-value against the ``calibration`` scores before
it, and a flag by the one rule (score > the conformal threshold at ``alpha``, which holds
exactly where ``p_value <= alpha``). The learned state is not stored here: checkpoints of a
learning detector are the serving process's (issue 23), through :func:`checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from pynomaly._errors import InvalidInputError
from pynomaly.domain import flagged
from pynomaly.service._common import Progress, opened, report
from pynomaly.service.data import load_data
from pynomaly.service.usecases import load_model

__all__ = ["StreamRun", "stream", "checkpoint"]


@dataclass(frozen=True)
class StreamRun:
    """What a run gives, one value per record: ``scores``, ``p_values``, ``flags`` (bool)."""

    scores: np.ndarray
    p_values: np.ndarray
    flags: np.ndarray
    learned: bool

    def summary(self) -> dict:
        return {"n_rows": int(len(self.scores)), "n_flagged": int(self.flags.sum()), "learned": self.learned}


def stream(home, name: str, data, *, version: Optional[int] = None, learn: bool = False, alpha: float = 0.01,
           calibration: int = 1000, columns=None, chunk: int = 10_000, progress: Progress = None) -> StreamRun:
    """Run ``data`` (a file or array-like) through stored streaming detector ``name``.

    Raises DetectorNotFoundError, DetectorNotReadyError (not active), InvalidInputError (not
    a streaming detector, wrong width, bad rows) or ArtifactIntegrityError.
    """
    from pynomaly.estimators.thresholds import Conformal

    if not isinstance(chunk, int) or chunk < 1:
        raise InvalidInputError(f"chunk must be a positive integer, got {chunk!r}")
    conformal = Conformal(alpha=alpha, window=calibration)  # checks alpha and calibration first
    report(progress, "loading detector")
    with opened(home) as repo:
        repo.get(name).ensure_can_detect()
        detector, model = load_model(repo, name, version)
    if not hasattr(model, "score_learn_many"):
        raise InvalidInputError(f"detector {name!r} is a {detector.algorithm}, not a streaming detector "
                                "(HalfSpaceTrees, OnlineIsolationForest)")
    report(progress, "loading data")
    X, _, _ = load_data(data, columns)
    if X.shape[1] != detector.n_features:
        raise InvalidInputError(f"data has {X.shape[1]} features; detector {name!r} was trained on {detector.n_features}")
    scores, p_values, thresholds = np.empty(len(X)), np.empty(len(X)), np.empty(len(X))
    for start in range(0, len(X), chunk):
        part = X[start:start + chunk]
        s = model.score_learn_many(part) if learn else model.score_many(part)
        scores[start:start + len(s)] = s
        p_values[start:start + len(s)], thresholds[start:start + len(s)] = conformal.p_value_update(s)
        report(progress, "streaming", min(1.0, (start + len(part)) / len(X)))
    return StreamRun(scores, p_values, flagged(scores, thresholds), learn)


def checkpoint(home, name: str, blob: bytes, *, of_version: int, records: int, threshold, keep: int) -> int:
    """Store a learning detector's state (``blob``, its ``to_bytes()``) as the next version of
    ``name``, marked in its parameters as a checkpoint (``{"of": of_version, "records": n}``:
    the version it started from and the records learned since), then delete all but the newest
    ``keep`` checkpoints. Serving processes are not notified (a learner saves often): they see
    it at their periodic refresh. Returns the new version's number."""
    from datetime import datetime, timezone

    from pynomaly.store.repository import Repository

    if not isinstance(keep, int) or keep < 1:
        raise InvalidInputError(f"keep must be a positive integer, got {keep!r}")
    with opened(home) as repo:
        d = repo.get(name)
        params = {k: v for k, v in d.parameters.items() if k != Repository.CHECKPOINT_KEY}
        d.parameters = {**params, Repository.CHECKPOINT_KEY: {"of": int(of_version), "records": int(records)}}
        d.trained_at = datetime.now(timezone.utc)
        repo.add_version(d, blob, threshold=threshold, notify=False)
        repo.prune_checkpoints(name, keep)
        return int(d.version)
