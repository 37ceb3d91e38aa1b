"""Drift monitoring: has what a detector serves moved away from what it was trained on?
(issue 24). Every face calls these; the numbers are :mod:`pynomaly.estimators.drift`, the rows
:mod:`pynomaly.store.drift`.

- :func:`save_reference` (called by training) and :func:`set_reference` (for versions stored
  before, imported ones, or a chosen reference file) store a version's reference profile.
- :func:`observe` counts served rows and their scores on the reference's bins. It adds to this
  process's counts in memory; they are added to the home's ``drift_counts`` (one row per
  detector, version and :data:`settings`.bucket_s time bucket) every ``flush_s`` seconds by a
  background thread, when a report is asked for, and when the process exits, so every process
  on a home (CLI, API replicas on one PostgreSQL home) reads the same merged window. Batches
  over ``sample_above`` rows are profiled on an evenly spread sample of about that many rows
  (every k-th row; the document's ``sample_rate`` says which share, and the p-values are
  those of the rows counted); the flagged rate always counts every row.
- :func:`report` compares the live window with the reference; :func:`compare_data` compares a
  table offline. Both return the one drift document every face prints or sends
  (:func:`pynomaly.estimators.drift.compare`, plus ``detector``, ``version``, ``source`` and
  ``window_s``).

Observing never fails a detection: a version without a reference is not counted, and a home
that cannot take the counts gets a warning in the log.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional

from pynomaly._errors import ArtifactIntegrityError, InvalidInputError, ModelFormatError
from pynomaly.domain import DetectorNotReadyError
from pynomaly.estimators import drift as stats
from pynomaly.service._common import opened
from pynomaly.store import drift as rows
from pynomaly.store._schema import open_database

__all__ = ["DriftUnavailableError", "settings", "save_reference", "set_reference", "reference", "observe", "flush",
           "report", "compare_data", "parse_window"]

log = logging.getLogger("pynomaly.drift")


class DriftUnavailableError(DetectorNotReadyError):
    """No drift to report: the version has no reference profile, or its window holds no rows
    (the HTTP face answers 409)."""


@dataclass
class Settings:
    """How live counts are kept (a process may change them before it serves)."""

    bucket_s: int = 60            # the window's granularity
    flush_s: float = 5.0          # how often pending counts reach the home
    sample_above: int = 20_000    # larger batches are profiled on about this many rows
    keep_s: float = 7 * 86400.0   # buckets older than this are forgotten when counts are added
    profile_ttl_s: float = 30.0   # how long a loaded reference is used before it is read again
    window_s: float = 3600.0      # the default window of a report


settings = Settings()


# -- references ------------------------------------------------------------------------------
def _no_reference(name: str, version: int) -> DriftUnavailableError:
    return DriftUnavailableError(
        f"detector {name!r} version {version} has no drift reference (it was stored before drift monitoring, or "
        f"imported); set one from the data it was trained on: pynomaly drift --set-reference --detector {name} "
        "--data FILE")


def _latest(repo, name: str, version) -> int:
    if version is not None:
        return int(version)
    versions = repo.versions(name)
    if not versions:
        raise DriftUnavailableError(f"detector {name!r} has no trained version")
    return int(versions[-1]["version"])


def save_reference(repo, name: str, version: int, X, model, feature_names=None, *, bins: int = 100) -> stats.Profile:
    """Store the reference of ``name``'s ``version`` from its training rows ``X`` and fitted
    ``model`` (its training scores and threshold, where it has them)."""
    profile = stats.reference_profile(X, feature_names, getattr(model, "decision_scores_", None),
                                      getattr(model, "threshold_", None), bins=bins)
    rows.put_profile(repo, name, version, profile.to_bytes())
    return profile


def set_reference(home, name: str, data, *, version=None, columns=None, bins: int = 100) -> dict:
    """Make the rows of ``data`` (a file or an array) the reference of ``name``'s ``version``
    (default: the latest), scored by that version for the score histogram. Returns a summary."""
    from pynomaly.service.data import load_data
    from pynomaly.service.usecases import load_model

    with opened(home) as repo:
        v = _latest(repo, name, version)
        detector, model = load_model(repo, name, v)
        X, names, _ = load_data(data, columns)
        if detector.n_features is not None and X.shape[1] != detector.n_features:
            raise InvalidInputError(f"{name!r} version {v} takes {detector.n_features} features; the reference data "
                                    f"has {X.shape[1]} columns (choose them with --columns)")
        scores = model.decision_function(X)
        profile = stats.reference_profile(X, detector.feature_names or names, scores,
                                          getattr(model, "threshold_", None), bins=bins)
        blob = profile.to_bytes()
        rows.put_profile(repo, name, v, blob)
        rows.clear_counts(repo._db, name, v)  # counted on the old edges: they mean nothing now
    hk = _home_key(home)
    with _lock:
        _cache.pop((hk, name, v), None)
        for k in [k for k in _pending if k[:3] == (hk, name, v)]:
            del _pending[k]
    return {"detector": name, "version": v, "rows": int(X.shape[0]), "features": profile.n_features,
            "bytes": len(blob), "score": profile.score is not None}


def reference(home, name: str, version=None) -> "tuple[int, stats.Profile]":
    """``(version, profile)`` of ``name``'s version (default: the latest); DetectorNotFoundError
    or DriftUnavailableError (no reference)."""
    with opened(home) as repo:
        v = _latest(repo, name, version)
        blob = rows.get_profile(repo, name, v)
    if blob is None:
        raise _no_reference(name, v)
    try:
        return v, stats.Profile.from_bytes(blob)
    except ModelFormatError as e:
        raise ArtifactIntegrityError(f"the drift reference of {name!r} version {v} cannot be read: {e}") from None


# -- live counts -----------------------------------------------------------------------------
def _home_key(home):
    """What a process's pending counts are kept under: the resolved folder or URL."""
    from pynomaly.store._home import prepare

    from pynomaly.store.repository import Repository

    return str(home.home if isinstance(home, Repository) else prepare(home))


_lock = threading.Lock()
_pending: dict = {}   # (home, name, version, bucket) -> (Profile, Counts)
_cache: dict = {}     # (home, name, version) -> (loaded at, Profile or None)
_last_flush = [0.0]
_flusher: list = []


def _profile_for(home, key, name: str, version: int):
    now = time.monotonic()
    hit = _cache.get(key)
    if hit is not None and now - hit[0] < settings.profile_ttl_s:
        return hit[1]
    try:
        profile = reference(home, name, version)[1]
    except DriftUnavailableError:
        profile = None
    _cache[key] = (now, profile)
    return profile


def observe(home, name: str, version: int, X, scores=None, *, now: Optional[float] = None) -> bool:
    """Count served rows ``X`` of ``name``'s ``version`` (and their ``scores``) in this
    process's live window; returns whether they were counted (False: the version has no
    reference). Added to the home within ``settings.flush_s`` seconds (see the module's
    docstring)."""
    hk = _home_key(home)
    profile = _profile_for(home, (hk, name, int(version)), name, int(version))
    if profile is None:
        return False
    counts = stats.count(profile, X, scores, sample_above=settings.sample_above)
    at = time.time() if now is None else now
    bucket = int(at // settings.bucket_s) * settings.bucket_s
    key = (hk, name, int(version), bucket)
    with _lock:
        held = _pending.get(key)
        if held is not None and held[1].features.shape == counts.features.shape \
                and held[1].score.shape == counts.score.shape:
            held[1].add(counts)
        else:  # the first, or the reference was replaced meanwhile: counts on its old edges go
            _pending[key] = (profile, counts)
        _start_flusher()
    return True


def _start_flusher() -> None:
    if _flusher:
        return

    def loop():
        while True:
            time.sleep(settings.flush_s)
            try:
                flush()
            except Exception as e:  # noqa: BLE001 - the next round retries
                log.warning("drift counts not flushed: %s", e)

    t = threading.Thread(target=loop, name="pynomaly-drift-flush", daemon=True)
    _flusher.append(t)
    t.start()


def flush(home=None, name: Optional[str] = None) -> int:
    """Add this process's pending counts to their homes (only ``home``'s, or only ``name``'s,
    when given); returns how many buckets were written. Counts a home refused are kept for the
    next flush."""
    hk = None if home is None else _home_key(home)
    with _lock:
        taken = {k: v for k, v in _pending.items() if (hk is None or k[0] == hk) and (name is None or k[1] == name)}
        for k in taken:
            del _pending[k]
    now = time.time()
    written = 0
    by_home: dict = {}
    for k, held in taken.items():
        by_home.setdefault(k[0], []).append((k, held))
    for h, items in by_home.items():
        try:
            with open_database(h) as db:
                for (_, n, v, bucket), (profile, c) in items:
                    rows.add_counts(db, n, v, bucket, lambda old, c=c, p=profile: _merged(old, c, p), now)
                    written += 1
                rows.prune_counts(db, int(now - settings.keep_s))
        except Exception:
            with _lock:  # kept for the next flush
                for k, held in items:
                    if k in _pending:
                        _pending[k][1].add(held[1])
                    else:
                        _pending[k] = held
            raise
    _last_flush[0] = now
    return written


def _merged(old: Optional[bytes], counts, profile) -> bytes:
    if old is not None:
        try:
            counts = stats.Counts.from_bytes(old, profile).add(counts)
        except ModelFormatError:  # stored on another reference's edges (replaced): start again
            pass
    return counts.to_bytes()


def _flush_at_exit() -> None:
    try:
        flush()
    except Exception as e:  # noqa: BLE001 - the process is ending; the log says what was lost
        log.warning("drift counts lost at exit: %s", e)


atexit.register(_flush_at_exit)


# -- reports ---------------------------------------------------------------------------------
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_window(text) -> float:
    """Seconds of a window given as 90s, 15m, 1h, 7d or a bare number of seconds."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?\s*", str(text))
    if m is None or float(m.group(1)) <= 0:
        raise InvalidInputError(f"{str(text)[:40]!r} is not a window: give a duration such as 90s, 15m, 1h or 7d")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _document(name: str, version: int, profile, counts, source: str, window, method, psi_threshold, alpha) -> dict:
    doc = stats.compare(profile, counts, method=method, psi_threshold=psi_threshold, alpha=alpha)
    return {"detector": name, "version": version, "source": source, "window_s": window, **doc}


def report(home, name: str, *, version=None, window: Optional[float] = None, method: str = "psi",
           psi_threshold: float = 0.2, alpha: float = 0.05, now: Optional[float] = None) -> dict:
    """The drift document of ``name``'s live window (the last ``window`` seconds, default
    ``settings.window_s``, to the bucket) against its reference. DetectorNotFoundError for an
    unknown detector, DriftUnavailableError without a reference or rows in the window."""
    window = settings.window_s if window is None else float(window)
    if not window > 0:
        raise InvalidInputError(f"the window must be a positive number of seconds, got {window!r}")
    v, profile = reference(home, name, version)
    flush(home, name)  # this process's own counts first
    at = time.time() if now is None else now
    since = int((at - window) // settings.bucket_s) * settings.bucket_s
    counts = stats.Counts.empty(profile)
    with open_database(_home_key(home)) as db:
        for blob in rows.window_counts(db, name, v, since):
            try:
                counts.add(stats.Counts.from_bytes(blob, profile))
            except ModelFormatError as e:  # a bucket counted on a reference since replaced
                log.warning("a drift bucket of %r version %s is skipped: %s", name, v, e)
    if counts.rows == 0:
        raise DriftUnavailableError(f"no rows of detector {name!r} version {v} were served in the last "
                                    f"{_shown(window)}: nothing to compare with its reference yet")
    return _document(name, v, profile, counts, "live", window, method, psi_threshold, alpha)


def compare_data(home, name: str, data, *, version=None, columns=None, method: str = "psi",
                 psi_threshold: float = 0.2, alpha: float = 0.05) -> dict:
    """The drift document of the rows of ``data`` (a file or an array) against ``name``'s
    reference, offline: every row counted, scored by that version."""
    from pynomaly.service.data import load_data
    from pynomaly.service.usecases import load_model

    v, profile = reference(home, name, version)
    X, _, _ = load_data(data, columns)
    if X.shape[0] == 0:
        raise DriftUnavailableError("the data holds no rows: nothing to compare with the reference")
    _, model = load_model(home, name, v)
    counts = stats.count(profile, X, model.decision_function(X))
    return _document(name, v, profile, counts, "data", None, method, psi_threshold, alpha)


def _shown(seconds: float) -> str:
    for unit, s in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= s and seconds % s == 0:
            return f"{int(seconds // s)} {unit}"
    return f"{seconds:g} s"
