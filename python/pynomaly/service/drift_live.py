"""Drift monitoring's live side (see :mod:`pynomaly.service.drift`, which faces call): each
version's reference, and the counts of served rows that every scoring path adds with
:func:`observe`. Its own module because detection (:mod:`.usecases`) counts here, while the
reports (:mod:`.drift`) load models through the use cases.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional

from pynomaly._errors import ArtifactIntegrityError, ModelFormatError
from pynomaly.domain import DetectorNotReadyError
from pynomaly.estimators import drift as stats
from pynomaly.service._common import opened
from pynomaly.store import _db
from pynomaly.store import drift as rows
from pynomaly.store._schema import open_database

__all__ = ["DriftUnavailableError", "Settings", "settings", "save_reference", "reference", "observe", "flush",
           "home_key", "forget", "latest_version", "no_reference", "window_counts"]

log = logging.getLogger("pynomaly.drift")


class DriftUnavailableError(DetectorNotReadyError):
    """No drift to report: the version has no reference profile, or its window holds no rows
    (the HTTP face answers 409)."""


@dataclass
class Settings:
    """How live counts are kept (a process may change them before it serves)."""

    bucket_s: int = 60            # the window's granularity
    flush_s: float = 5.0          # how often pending counts reach the home
    sample_above: int = 1024      # larger batches are profiled on about this many rows
    keep_s: float = 7 * 86400.0   # buckets older than this are forgotten when counts are added
    profile_ttl_s: float = 30.0   # how long a loaded reference is used before it is read again
    window_s: float = 3600.0      # the default window of a report
    min_rows: int = stats.MIN_ROWS  # rows counted before a report (or an alert rule) decides drift
    counting: bool = True         # False: observe() counts nothing in this process (a server's --no-drift)


settings = Settings()


# -- references ------------------------------------------------------------------------------
def no_reference(name: str, version: int) -> DriftUnavailableError:
    return DriftUnavailableError(
        f"detector {name!r} version {version} has no drift reference (it was stored before drift monitoring, or "
        f"imported); set one from the data it was trained on: pynomaly drift --set-reference --detector {name} "
        "--data FILE")


def latest_version(repo, name: str, version) -> int:
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


def reference(home, name: str, version=None) -> "tuple[int, stats.Profile]":
    """``(version, profile)`` of ``name``'s version (default: the latest); DetectorNotFoundError
    or DriftUnavailableError (no reference)."""
    with opened(home) as repo:
        v = latest_version(repo, name, version)
        blob = rows.get_profile(repo, name, v)
    if blob is None:
        raise no_reference(name, v)
    try:
        return v, stats.Profile.from_bytes(blob)
    except ModelFormatError as e:
        raise ArtifactIntegrityError(f"the drift reference of {name!r} version {v} cannot be read: {e}") from None


# -- live counts -----------------------------------------------------------------------------
def home_key(home):
    """What a process's pending counts are kept under: the resolved folder or URL (resolved
    once per home as given: serving processes observe every batch)."""
    from pynomaly.store.repository import Repository

    if isinstance(home, Repository):
        return str(home.home)
    from pynomaly.store._home import prepare

    if home is None:  # PYNOMALY_HOME may change
        return str(prepare(home))
    key = _resolved.get(home)
    if key is None:
        key = _resolved[home] = str(prepare(home))
    return key


_resolved: dict = {}  # home as given (None, a str or Path) -> home_key


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


def observe(home, name: str, version: int, X, scores=None, *, now: Optional[float] = None,
            served: Optional[int] = None) -> bool:
    """Count served rows ``X`` of ``name``'s ``version`` (and their ``scores``) in this
    process's live window; returns whether they were counted (False: the version has no
    reference, or counting is off). Added to the home within ``settings.flush_s`` seconds (see the module's
    docstring). ``served``: how many rows ``X`` stands for, when a caller sampled them
    (:class:`pynomaly.serving.observe.Observer`; the document's ``rows_seen``); ``X`` None:
    ``served`` rows that were not kept."""
    if not settings.counting:
        return False
    hk = home_key(home)
    profile = _profile_for(home, (hk, name, int(version)), name, int(version))
    if profile is None:
        return False
    if X is None:  # rows served and not kept (a serving process's sample): seen only
        counts = stats.Counts.empty(profile)
        counts.seen = int(served or 0)
    else:
        counts = stats.count(profile, X, scores, sample_above=settings.sample_above)
    if served is not None:
        counts.seen = max(int(served), counts.seen)
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
    hk = None if home is None else home_key(home)
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
        if not _db.exists(h):  # removed while its counts waited (a throwaway home): not made anew
            log.debug("drift counts of %d bucket(s) dropped: home %s is gone", len(items), h)
            continue
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
        _check_rules(h, sorted({(n, v) for (_, n, v, _), _ in items}))
    _last_flush[0] = now
    return written


def window_counts(home, name: str, version: int, profile, window: float, now: Optional[float] = None):
    """The home's merged counts of ``name``'s ``version`` in the last ``window`` seconds (to
    the bucket), as stored (this process's pending counts are not flushed here)."""
    at = time.time() if now is None else now
    since = int((at - window) // settings.bucket_s) * settings.bucket_s
    counts = stats.Counts.empty(profile)
    with open_database(home_key(home)) as db:
        for blob in rows.window_counts(db, name, version, since):
            try:
                counts.add(stats.Counts.from_bytes(blob, profile))
            except ModelFormatError as e:  # a bucket counted on a reference since replaced
                log.warning("a drift bucket of %r version %s is skipped: %s", name, version, e)
    return counts


def _check_rules(home: str, written) -> None:
    """The alert rules on drift of the detectors whose counts were just written (see
    :mod:`pynomaly.service.drift_alerts`), on the home's merged window of the last
    ``settings.window_s`` seconds; a failure is logged, the counts stay written."""
    from pynomaly.service import drift_alerts

    def document(name: str, version: int):
        profile = _profile_for(home, (home, name, version), name, version)
        if profile is None:
            return None
        counts = window_counts(home, name, version, profile, settings.window_s)
        if not counts.rows:
            return None
        return {**stats.compare(profile, counts, min_rows=settings.min_rows), "window_s": settings.window_s}

    for name, version in written:
        try:
            drift_alerts.check(home, name, lambda: document(name, version))
        except Exception as e:  # noqa: BLE001 - the next flush checks again
            log.warning("drift alert rules of %r not checked: %s", name, e)


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




def forget(home, name: str, version: int) -> None:
    """Drop this process's loaded reference and pending counts of ``name``'s ``version`` (its
    reference was just replaced)."""
    hk = home_key(home)
    with _lock:
        _cache.pop((hk, name, version), None)
        for k in [k for k in _pending if k[:3] == (hk, name, version)]:
            del _pending[k]
