"""The data plane of the serving faces: lookup -> score -> decide -> observe, written once and
used by the daemon's Python path, the HTTP face's inference protocol and detection API, and the
pages. The daemon's native paths keep their own loop in C++ (with the rule stated there once)
and report what they served to the same cache and observer.

- lookup: the loaded Scorer of (name, version or latest) from the cache's ``hot`` dict, else
  the cache's entries, else (:meth:`DataPlane.scorer`) loaded through the source; a version
  asked for by number is pinned (kept when a newer one is served).
- score: :meth:`pynomaly.service.Scorer.score` (the faces choose where: inline or in a pool).
- decide: :func:`pynomaly.domain.flagged` at the version's threshold, once per batch; other
  thresholds and outputs through :meth:`Scorer.decide`.
- observe: the batch's counts for the metrics and alert rules
  (:class:`pynomaly.serving.observe.Observer`), from the flags already decided, and its rows
  for the drift window.
"""

from __future__ import annotations

from typing import Optional

from pynomaly.domain import DetectionResult, flagged


class DataPlane:
    """One serving face's way from a request's detector to its decisions (see the module
    docstring). ``observer`` may be None (nothing counted) or set once the face starts."""

    __slots__ = ("cache", "observer")

    def __init__(self, cache, observer=None):
        self.cache = cache
        self.observer = observer

    def lookup(self, name: str, version: Optional[int]):
        """The loaded Scorer for (name, version or latest), without awaiting; None when it
        is not loaded (then await :meth:`scorer`)."""
        cache = self.cache
        s = cache.hot.get((name, version)) or cache.cached(name, version)
        if s is not None and version is not None:
            cache.pinned.add((name, version))  # asked for by number: kept when superseded
        return s

    async def scorer(self, name: str, version: Optional[int]):
        """The Scorer for (name, version or latest), loading it if needed (its errors: no such
        detector or version, not able to detect)."""
        s = self.lookup(name, version)
        if s is None:
            s = await self.cache.resolve(name, version)  # pins a version asked for by number
        return s

    def decide(self, scorer, items, scores, X=None) -> DetectionResult:
        """The :class:`~pynomaly.DetectionResult` of a batch scored for ``items`` (each with
        ``.n`` rows, in order; None for one request) at the version's own threshold, counted
        for the metrics and alert rules, and its rows ``X`` (when given; not changed after)
        for drift: what the faces encode their replies from, unless a request asked for
        another threshold or more outputs (then :meth:`Scorer.decide`)."""
        v = scorer.version
        result = DetectionResult.decided(v.detector_id or v.name, v.version, v.threshold, scores, flagged(scores, v.threshold))
        if self.observer is not None:
            self.observer.scored(v, items, scores, result.flags, X, scorer)
        return result
