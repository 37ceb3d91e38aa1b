"""Running a stored streaming detector over a file, record by record (``pynomaly stream``).

The detector scores each record in order and, with ``learn``, learns it right after
(prequential); each score gets a conformal p-value against the ``calibration`` scores before
it, and a flag by the one rule (score > the conformal threshold at ``alpha``, which holds
exactly where ``p_value <= alpha``). The learned state is not stored here: checkpoints of a
learning detector are the serving process's (issue 23), through :func:`checkpoint`, and one
process learns a detector per home: the holder of its learner lease (:func:`take_lease`,
:func:`renew_leases`, :func:`release_leases`; the rows are :mod:`pynomaly.store.learners`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from pynomaly._errors import InvalidInputError, LearnerConflictError
from pynomaly.domain import flagged
from pynomaly.service._common import Progress, opened, report
from pynomaly.service.data import load_data
from pynomaly.service.usecases import load_model

__all__ = ["StreamRun", "stream", "checkpoint", "take_lease", "renew_leases", "release_leases",
           "learner_id", "DEFAULT_LEASE_SECONDS"]

DEFAULT_LEASE_SECONDS = 30.0  # how long a learner's lease outlives its last renewal (a SIGKILLed learner's)


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


def checkpoint(home, name: str, blob: bytes, *, of_version: int, records: int, threshold, keep: int,
               lease: Optional[tuple] = None) -> int:
    """Store a learning detector's state (``blob``, its ``to_bytes()``) as the next version of
    ``name``, marked in its parameters as a checkpoint (``{"of": of_version, "records": n}``:
    the version it started from and the records learned since), then delete all but the newest
    ``keep`` checkpoints. Serving processes are not notified (a learner saves often): they see
    it at their periodic refresh. Returns the new version's number.

    ``lease``: ``(holder, ttl)`` of the learner saving it: its lease on ``name`` is renewed
    first, and a learner that lost it (it lapsed and another process took it) saves nothing:
    LearnerConflictError. The renewal and the save are two transactions; the lease just renewed
    runs ``ttl`` seconds, far longer than a save takes, so no one takes it over in between."""
    from datetime import datetime, timezone

    from pynomaly.store.repository import Repository

    if not isinstance(keep, int) or keep < 1:
        raise InvalidInputError(f"keep must be a positive integer, got {keep!r}")
    with opened(home) as repo:
        if lease is not None:
            from pynomaly.store import learners

            holder, ttl = lease
            if name not in learners.renew(repo._db, holder, ttl, [name]):
                raise LearnerConflictError(_held_elsewhere(repo._db, name))
        d = repo.get(name)
        params = {k: v for k, v in d.parameters.items() if k != Repository.CHECKPOINT_KEY}
        d.parameters = {**params, Repository.CHECKPOINT_KEY: {"of": int(of_version), "records": int(records)}}
        d.trained_at = datetime.now(timezone.utc)
        repo.add_version(d, blob, threshold=threshold, notify=False)
        repo.prune_checkpoints(name, keep)
        return int(d.version)


def _held_elsewhere(db, name: str) -> str:
    from pynomaly.store import learners

    lease = learners.holder_of(db, name)
    if lease is None:  # released meanwhile: the next request may take it
        return f"detector {name!r} lost its learner lease; retry"
    return (f"detector {name!r} is learned by another process ({lease['holder']}), whose lease runs "
            f"{lease['left']:.0f} s more unless renewed: one process learns a detector per home. Send learn "
            "requests there; this process scores it without learning, from its latest checkpoint")


def take_lease(home, name: str, holder: str, ttl: float = DEFAULT_LEASE_SECONDS) -> Optional[int]:
    """Become the one process that learns ``name`` in ``home`` (or stay it) for ``ttl``
    seconds: ``holder`` is the caller's id (:func:`learner_id`). Returns the detector's latest
    stored version (what the learner must learn from: a checkpoint another process saved
    before its lease ended may be newer than the caller's copy); raises LearnerConflictError,
    naming the holder, while another process's lease is live, DetectorNotFoundError for no
    such detector."""
    from pynomaly.store import learners

    _check_ttl(ttl)
    with opened(home) as repo:
        granted, latest = learners.take(repo._db, name, holder, ttl)
        if not granted:
            raise LearnerConflictError(_held_elsewhere(repo._db, name))
        if latest is None:
            learners.release(repo._db, holder, [name])
            repo.get(name)  # raises DetectorNotFoundError, suggesting the nearest name
        return latest


def renew_leases(home, holder: str, names, ttl: float = DEFAULT_LEASE_SECONDS) -> set:
    """Extend ``holder``'s leases on ``names`` by ``ttl`` seconds from now; returns the names
    it still holds (those missing lapsed and were taken by another process)."""
    from pynomaly.store import learners

    _check_ttl(ttl)
    with opened(home) as repo:
        return learners.renew(repo._db, holder, ttl, names)


def release_leases(home, holder: str, names=None) -> None:
    """Give up ``holder``'s leases (on ``names`` only, when given): another process may learn
    those detectors at once."""
    from pynomaly.store import learners

    with opened(home) as repo:
        learners.release(repo._db, holder, names)


def learner_id() -> str:
    """An id for this process as a learner: where it runs, its pid, and a random part (a pid
    is reused; a restarted process must not be taken for the one that held the lease)."""
    import os
    import secrets
    import socket

    return f"host {socket.gethostname()} pid {os.getpid()} id {secrets.token_hex(4)}"


def _check_ttl(ttl) -> None:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < 86400:
        raise InvalidInputError(f"a learner lease lasts more than 0 and less than 86400 seconds, got {ttl!r}")
