"""Adaptive thresholds for any detector's scores, streaming or batch.

``StreamingQuantile`` keeps the ``q``-quantile of the last ``window`` scores; ``Conformal``
keeps a calibration window of scores and gives each new score a conformal p-value,
``p = (1 + #{calibration >= s}) / (n + 1)``, and the threshold at level ``alpha``: the
smallest calibration score t such that ``s > t`` exactly when ``p <= alpha``. Either way the
decision stays the one rule, :func:`pynomaly.domain.flagged` (score > threshold).

Both are fed with ``update(scores)`` (a stream's recent scores, or a fitted batch detector's
scores on held-out normal data) and are bounded by their window.
"""

from __future__ import annotations

import math

import numpy as np

from pynomaly._errors import InvalidInputError
from pynomaly.domain import flagged

__all__ = ["StreamingQuantile", "Conformal"]


def _scores(scores) -> np.ndarray:
    try:
        s = np.asarray(scores, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise InvalidInputError("scores must be numbers") from None
    if not np.isfinite(s).all():
        raise InvalidInputError("scores must be finite numbers")
    return s


class _Window:
    """The last ``window`` scores, kept in arrival order (a ring) and sorted (for ranks)."""

    def __init__(self, window: int):
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise InvalidInputError(f"window must be a positive integer, got {window!r}")
        self.window = int(window)
        self._ring = np.empty(self.window)
        self._n = 0      # scores held
        self._head = 0   # slot of the oldest once full
        self._sorted = np.empty(0)

    def update(self, scores) -> "_Window":
        """Add scores in order; the oldest leave once the window is full."""
        s = _scores(scores)[-self.window:]
        for v in s:  # arrival order matters for which scores leave
            self._push(v)
        self._sorted = np.sort(self._ring[: self._n])
        return self

    def _push(self, v: float) -> "float | None":
        """Put v in the ring; the score it pushed out, if any."""
        if self._n < self.window:
            self._ring[self._n] = v
            self._n += 1
            return None
        old = self._ring[self._head]
        self._ring[self._head] = v
        self._head = (self._head + 1) % self.window
        return old

    def _add(self, v: float) -> None:
        """One score in, keeping the sorted copy sorted (O(window), no full sort)."""
        old = self._push(v)
        srt = self._sorted
        if old is not None:
            srt = np.delete(srt, np.searchsorted(srt, old, side="left"))
        self._sorted = np.insert(srt, np.searchsorted(srt, v, side="left"), v)

    @property
    def n(self) -> int:
        return self._n

    def predict(self, scores) -> np.ndarray:
        """1 for scores above the threshold, else 0 (int64)."""
        return flagged(_scores(scores), self.threshold).astype(np.int64)


class StreamingQuantile(_Window):
    """The ``q``-quantile of the last ``window`` scores: the smallest of them with at least
    ``q * n`` scores at or below it (NumPy's ``method="inverted_cdf"``); +inf before any score."""

    def __init__(self, q: float = 0.99, window: int = 1000):
        if not isinstance(q, (int, float)) or not 0.0 < q < 1.0:
            raise InvalidInputError(f"q must be in (0, 1), got {q!r}")
        self.q = float(q)
        super().__init__(window)

    @property
    def threshold(self) -> float:
        if self._n == 0:
            return math.inf
        k = max(1, math.ceil(self.q * self._n))  # rank (1-based) of the quantile
        return float(self._sorted[k - 1])


class Conformal(_Window):
    """Conformal p-values against a calibration window of (mostly normal) scores, and the
    threshold at level ``alpha``: ``score > threshold`` exactly when ``p_value <= alpha``."""

    def __init__(self, alpha: float = 0.01, window: int = 1000):
        if not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
            raise InvalidInputError(f"alpha must be in (0, 1), got {alpha!r}")
        self.alpha = float(alpha)
        super().__init__(window)

    def p_value(self, scores) -> np.ndarray:
        """(1 + calibration scores >= s) / (n + 1) per score: small for unusual scores."""
        s = _scores(scores)
        at_least = self._n - np.searchsorted(self._sorted, s, side="left")
        return (1.0 + at_least) / (self._n + 1.0)

    def p_value_update(self, scores) -> tuple[np.ndarray, np.ndarray]:
        """Prequential: each score's p-value and threshold against the window as it stands
        before that score, which then joins the window. Returns ``(p_values, thresholds)``;
        ``flagged(scores, thresholds)`` holds exactly where ``p_values <= alpha``."""
        s = _scores(scores)
        p, t = np.empty(len(s)), np.empty(len(s))
        for i, v in enumerate(s):  # each row's calibration is the window before it
            p[i] = (1.0 + self._n - np.searchsorted(self._sorted, v, side="left")) / (self._n + 1.0)
            t[i] = self.threshold
            self._add(v)
        return p, t

    @property
    def threshold(self) -> float:
        # p <= alpha  <=>  #{cal >= s} <= k, k = floor(alpha (n + 1)) - 1  <=>  s > the (k+1)-th largest.
        k = math.floor(self.alpha * (self._n + 1)) - 1
        if k < 0:
            return math.inf  # too few calibration scores to reach alpha: nothing is flagged
        return float(self._sorted[self._n - 1 - k])
