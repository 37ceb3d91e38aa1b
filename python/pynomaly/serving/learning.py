"""Streaming detectors in a serving process (issue 23): one lane per model, and checkpoints of
what it learned. Shared by the daemon (``detect`` with ``learn: true``) and the HTTP face (OIP
infer's ``learn`` parameter, the detection API's learn route).

- Every request for a streaming detector, learning or not, takes its model's lane: one request
  at a time, in the order the requests reached :meth:`Learning.score` (an asyncio lock, which
  wakes its waiters first come, first served), because a learning model's scores depend on
  every row learned before, and the model must never be read while it learns. A learning
  request is ``score_learn_many`` of its rows (score each row, then learn it).
- Checkpoints: after ``records`` learned records, or ``seconds`` after the first unsaved one,
  the lane saves the model's state (``to_bytes``, in lane order: exactly the state after the
  requests answered before it) as the detector's next version through
  :func:`pynomaly.service.streaming.checkpoint` (marked as a checkpoint, all but the newest
  ``keep`` checkpoints deleted, other processes not notified). The new version is then served
  from the model in hand (:meth:`ModelCache.adopt`), never loaded back, since the model may
  learn more meanwhile. A restart loads the latest version: the last checkpoint. :meth:`stop`
  saves what is unsaved. A folder source (``--models``) keeps no checkpoints.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Optional

log = logging.getLogger("pynomaly.serving")


def learns(scorer) -> bool:
    """Whether the Scorer's model is a streaming detector (served in lanes, may learn)."""
    return scorer.learns


def learn_refusal(scorer, cache) -> Optional[str]:
    """Why this Scorer may not learn (a message for the face's "bad request"), or None."""
    v = scorer.version
    if not learns(scorer):
        return (f"detector {v.name!r} is a {v.algorithm}, which does not learn; learning needs a streaming "
                "detector (HalfSpaceTrees, OnlineIsolationForest)")
    latest = cache.latest.get(v.name)
    if latest is None or latest.version != v.version:
        return f"detector {v.name!r} learns on its latest version only, not v{v.version}"
    return None


class _Lane:
    __slots__ = ("scorer", "lock", "users", "unsaved", "first_unsaved")

    def __init__(self, scorer):
        self.scorer = scorer  # the model's current Scorer (its version changes at each checkpoint)
        self.lock = asyncio.Lock()
        self.users = 0  # requests holding or awaiting the lock
        self.unsaved = 0  # records learned since the last checkpoint
        self.first_unsaved = 0.0  # time.monotonic() of the first of them


class Learning:
    """The lanes of one serving process (see the module docstring). ``run(fn, *args)``: the
    face's thread pool; ``counters``: a dict-like the face reports (``rows_learned``,
    ``checkpoints``)."""

    def __init__(self, cache, run, *, seconds: float, records: int, keep: int, counters):
        self.cache = cache
        self.run = run
        self.seconds, self.records, self.keep = seconds, records, keep
        self.counters = counters
        self.lanes: dict = {}  # id(model) -> _Lane
        self._timer = None

    async def score(self, scorer, X, learn: bool):
        """Score X with a streaming detector in its lane, learning each row after scoring it
        when ``learn`` (check :func:`learn_refusal` first): ``(Scorer that scored, scores)``.
        The model's errors (a NaN, a wrong width) propagate; it then learned nothing."""
        lane = self.lanes.get(id(scorer.model))
        if lane is None:
            lane = self.lanes[id(scorer.model)] = _Lane(scorer)
        lane.users += 1
        try:
            async with lane.lock:
                s = lane.scorer
                scores = await self.run(s.model.score_learn_many if learn else s.score, X)
                if learn:
                    self.counters["rows_learned"] = self.counters.get("rows_learned", 0) + len(scores)
                    if lane.unsaved == 0:
                        lane.first_unsaved = time.monotonic()
                    lane.unsaved += len(scores)
                    if lane.unsaved >= self.records:
                        await self._checkpoint(lane)
                return s, scores
        finally:
            self._leave(lane)

    def _leave(self, lane: _Lane) -> None:
        lane.users -= 1
        if lane.users == 0 and lane.unsaved == 0:
            self.lanes.pop(id(lane.scorer.model), None)

    async def _checkpoint(self, lane: _Lane) -> None:
        """Save the lane's state as a new version (holding its lock)."""
        from pynomaly.serving.sources import RepositorySource
        from pynomaly.service import Scorer
        from pynomaly.service.streaming import checkpoint

        source = self.cache.source
        if lane.unsaved == 0 or not isinstance(source, RepositorySource):
            return
        scorer = lane.scorer
        v, model, records = scorer.version, scorer.model, lane.unsaved
        try:
            blob = await self.run(model.to_bytes)
            number = await self.run(lambda: checkpoint(source.home, v.name, blob, of_version=v.version,
                                                       records=records, threshold=model.threshold_, keep=self.keep))
        except Exception as err:  # noqa: BLE001 - learning goes on; the next checkpoint tries again
            log.warning("detector %r: checkpoint failed, %d learned record(s) unsaved: %s", v.name, records, err)
            lane.first_unsaved = time.monotonic()
            return
        lane.unsaved = 0
        lane.scorer = Scorer(dataclasses.replace(v, version=number), model)
        self.cache.adopt(lane.scorer, scorer)
        self.counters["checkpoints"] = self.counters.get("checkpoints", 0) + 1
        log.info("detector %r: checkpoint v%d (%d record(s) learned since v%d)", v.name, number, records, v.version)

    async def _save(self, lane: _Lane) -> None:
        lane.users += 1
        try:
            async with lane.lock:  # after the requests already waiting
                await self._checkpoint(lane)
        finally:
            self._leave(lane)

    def start(self, loop) -> None:
        """Check the lanes' unsaved records a few times per ``seconds``."""
        period = min(max(self.seconds / 4, 0.05), 5.0)

        def tick():
            now = time.monotonic()
            for lane in list(self.lanes.values()):
                if lane.unsaved and now - lane.first_unsaved >= self.seconds:
                    lane.first_unsaved = now  # one save per period, even while it is running
                    loop.create_task(self._save(lane))
            self._timer = loop.call_later(period, tick)

        self._timer = loop.call_later(period, tick)

    async def stop(self) -> None:
        """Save every lane's unsaved records (after the requests already waiting)."""
        if self._timer is not None:
            self._timer.cancel()
        await asyncio.gather(*[self._save(lane) for lane in list(self.lanes.values()) if lane.unsaved])
