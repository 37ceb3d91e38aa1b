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

import time
from typing import Optional

from pynomaly._errors import InvalidInputError
from pynomaly.estimators import drift as stats
from pynomaly.service import drift_live as live
from pynomaly.service._common import opened
from pynomaly.service.drift_live import (  # noqa: F401 - the faces know them as service.drift.*
    DriftUnavailableError,
    flush,
    observe,
    reference,
    save_reference,
    settings,
)
from pynomaly.store import drift as rows

__all__ = ["DriftUnavailableError", "settings", "save_reference", "set_reference", "reference", "observe", "flush",
           "report", "compare_data", "parse_window", "gauges", "collector"]


def set_reference(home, name: str, data, *, version=None, columns=None, bins: int = 100) -> dict:
    """Make the rows of ``data`` (a file or an array) the reference of ``name``'s ``version``
    (default: the latest), scored by that version for the score histogram. Returns a summary."""
    from pynomaly.service.data import load_data
    from pynomaly.service.usecases import load_model

    with opened(home) as repo:
        v = live.latest_version(repo, name, version)
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
    live.forget(home, name, v)
    return {"detector": name, "version": v, "rows": int(X.shape[0]), "features": profile.n_features,
            "bytes": len(blob), "score": profile.score is not None}


# -- reports ---------------------------------------------------------------------------------
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_window(text) -> float:
    """Seconds of a window given as 90s, 15m, 1h, 7d or a bare number of seconds."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?\s*", str(text))
    if m is None or float(m.group(1)) <= 0:
        raise InvalidInputError(f"{str(text)[:40]!r} is not a window: give a duration such as 90s, 15m, 1h or 7d")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _document(name: str, version: int, profile, counts, source: str, window, method, psi_threshold, alpha,
              min_rows) -> dict:
    min_rows = settings.min_rows if min_rows is None else min_rows
    doc = stats.compare(profile, counts, method=method, psi_threshold=psi_threshold, alpha=alpha, min_rows=min_rows)
    return {"detector": name, "version": version, "source": source, "window_s": window, **doc}


def report(home, name: str, *, version=None, window: Optional[float] = None, method: str = "psi",
           psi_threshold: float = 0.2, alpha: float = 0.05, min_rows: Optional[int] = None,
           now: Optional[float] = None) -> dict:
    """The drift document of ``name``'s live window (the last ``window`` seconds, default
    ``settings.window_s``, to the bucket) against its reference; with fewer than ``min_rows``
    rows counted (default ``settings.min_rows``) it decides nothing (its ``reason`` says so).
    DetectorNotFoundError for an unknown detector, DriftUnavailableError without a reference or
    rows in the window."""
    window = settings.window_s if window is None else float(window)
    if not window > 0:
        raise InvalidInputError(f"the window must be a positive number of seconds, got {window!r}")
    v, profile = reference(home, name, version)
    flush(home, name)  # this process's own counts first
    counts = live.window_counts(home, name, v, profile, window, now)
    if counts.rows == 0:
        raise DriftUnavailableError(f"no rows of detector {name!r} version {v} were served in the last "
                                    f"{_shown(window)}: nothing to compare with its reference yet")
    return _document(name, v, profile, counts, "live", window, method, psi_threshold, alpha, min_rows)


def compare_data(home, name: str, data, *, version=None, columns=None, method: str = "psi",
                 psi_threshold: float = 0.2, alpha: float = 0.05, min_rows: Optional[int] = None) -> dict:
    """The drift document of the rows of ``data`` (a file or an array) against ``name``'s
    reference, offline: every row counted, scored by that version (``min_rows`` as
    :func:`report`'s)."""
    from pynomaly.service.data import load_data
    from pynomaly.service.usecases import load_model

    v, profile = reference(home, name, version)
    X, _, _ = load_data(data, columns)
    if X.shape[0] == 0:
        raise DriftUnavailableError("the data holds no rows: nothing to compare with the reference")
    _, model = load_model(home, name, v)
    counts = stats.count(profile, X, model.decision_function(X))
    return _document(name, v, profile, counts, "data", None, method, psi_threshold, alpha, min_rows)


def _shown(seconds: float) -> str:
    for unit, s in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= s and seconds % s == 0:
            return f"{int(seconds // s)} {unit}"
    return f"{seconds:g} s"


# -- Prometheus ------------------------------------------------------------------------------
FEATURE_STATS = ("psi", "ks", "p_value", "wasserstein", "drift")
SCORE_STATS = ("psi", "ks", "p_value", "wasserstein", "flagged_rate", "rate_p_value", "drift")


def gauges(home, *, window: Optional[float] = None) -> list:
    """The drift of every detector of ``home`` whose latest version has a reference and rows in
    the window, as metrics for a face's ``/metrics``: ``pynomaly_feature_drift{detector,
    feature,stat}`` (stat: psi, ks, p_value, wasserstein, drift as 0 or 1, absent while the
    window has too few rows to decide) and
    ``pynomaly_score_drift{detector,stat}`` (the same, flagged_rate and rate_p_value). Series
    beyond the metrics' cap (:data:`pynomaly.service.metrics.MAX_SERIES`) go under "_other"."""
    from pynomaly.service import metrics

    feature = metrics.Gauge("pynomaly_feature_drift", "Drift of a served feature from its training reference, "
                            "by statistic (pynomaly drift)", ("detector", "feature", "stat"))
    score = metrics.Gauge("pynomaly_score_drift", "Drift of the served scores from the training scores, by "
                          "statistic", ("detector", "stat"))
    with opened(home) as repo:
        names = [d.name for d in repo.list()]
    for name in names:
        try:
            doc = report(home, name, window=window)
        except (DriftUnavailableError, LookupError):
            continue
        for f in doc["features"]:
            for stat in FEATURE_STATS:
                if f[stat] is not None:
                    feature.set(float(f[stat]), detector=name, feature=f["feature"], stat=stat)
        s = doc["score"]
        for stat in SCORE_STATS if s is not None else ():
            if s[stat] is not None:
                score.set(float(s[stat]), detector=name, stat=stat)
    return [feature, score]


def collector(home, *, every: float = 10.0):
    """The metrics collector (``fn() -> [metrics]``) of :func:`gauges` for ``home``, one per
    home and process, recomputed at most every ``every`` seconds (scrapes in between get the
    last ones); a home that cannot be read gives none, not a failed scrape."""
    key = live.home_key(home)
    if key not in _collectors:
        _collectors[key] = _collector(home, every)
    return _collectors[key]


_collectors: dict = {}


def _collector(home, every: float):
    last: list = [-every, []]

    def collect() -> list:
        if time.monotonic() - last[0] >= every:
            try:
                last[1] = gauges(home)
            except Exception as e:  # noqa: BLE001 - a scrape must not fail for a busy database
                live.log.warning("drift gauges not read: %s", e)
                last[1] = []
            last[0] = time.monotonic()
        return last[1]

    return collect
