"""Learning detectors (issue 23): ``detect`` with ``learn: true`` on a streaming detector, and
the checkpoints of what it learned.

- Every request for a streaming detector (learning or not) goes into that model's lane: one
  request at a time, in arrival order, never coalesced with another and never on the native
  path, because a learning model's scores depend on every row learned before, and the model
  must never be read while it learns. A learning request is ``score_learn_many`` of its rows
  (score each row, then learn it).
- Checkpoints: after ``--checkpoint-records`` learned records, or ``--checkpoint-seconds``
  after the first unsaved one, the lane saves the model's state (``to_bytes``, taken in lane
  order, so it is exactly the state after the requests answered before it) as the detector's
  next version through :func:`pynomaly.service.streaming.checkpoint`: marked as a checkpoint,
  older checkpoints beyond ``--checkpoint-keep`` deleted, other processes not notified. The
  new version is then served from the model in hand (:meth:`ModelCache.adopt`), never loaded
  back, since the model may have learned more meanwhile. A restart loads the latest version:
  the last checkpoint. SIGTERM saves what is unsaved before the daemon exits.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time

from .batching import matrix
from .errors import RequestError, classify
from .replies import detect_replies

log = logging.getLogger("pynomaly_daemon")

_CHECKPOINT = object()  # a lane item: save the state here, between two requests


def learns(scorer) -> bool:
    """Whether the Scorer's model is a streaming detector (served in lanes, may learn)."""
    return hasattr(scorer.model, "score_learn_many")


def learn_refusal(scorer, cache):
    """Why ``learn: true`` cannot go to this Scorer (a RequestError), or None."""
    v = scorer.version
    if not learns(scorer):
        return RequestError("bad_request", f"detector {v.name!r} is a {v.algorithm}, which does not learn; "
                                           "learn: true needs a streaming detector (HalfSpaceTrees, "
                                           "OnlineIsolationForest)")
    latest = cache.latest.get(v.name)
    if latest is None or latest.version != v.version:
        return RequestError("bad_request", f"detector {v.name!r} learns on its latest version only, not v{v.version}")
    return None


class _Lane:
    __slots__ = ("scorer", "queue", "running", "unsaved", "first_unsaved")

    def __init__(self, scorer):
        self.scorer = scorer  # the model's current Scorer (its version changes at each checkpoint)
        self.queue = collections.deque()  # (Pending, dtype, learn) or _CHECKPOINT
        self.running = False
        self.unsaved = 0  # records learned since the last checkpoint
        self.first_unsaved = 0.0  # time.monotonic() of the first of them


class Learner:
    """The lanes of one daemon (see the module docstring)."""

    def __init__(self, d):
        self.d = d
        self.lanes: dict = {}  # id(model) -> _Lane
        self.timer = None

    def submit(self, scorer, item, dtype: str, learn: bool) -> None:
        """Queue an admitted request for a streaming detector in its model's lane."""
        lane = self.lanes.get(id(scorer.model))
        if lane is None:
            lane = self.lanes[id(scorer.model)] = _Lane(scorer)
        lane.queue.append((item, dtype, learn))
        self._run(lane)

    def _run(self, lane: _Lane) -> None:
        if not lane.running:
            lane.running = True
            self.d.loop.create_task(self._drain(lane))

    async def _drain(self, lane: _Lane) -> None:
        try:
            while lane.queue:
                entry = lane.queue.popleft()
                if entry is _CHECKPOINT:
                    await self._checkpoint(lane)
                else:
                    await self._answer(lane, *entry)
        finally:
            lane.running = False
            if lane.unsaved == 0 and not lane.queue:
                self.lanes.pop(id(lane.scorer.model), None)

    async def _answer(self, lane: _Lane, item, dtype: str, learn: bool) -> None:
        d, scorer = self.d, lane.scorer
        X = matrix(item.data, item.n, scorer.version.n_features, dtype)
        try:
            scores = await d.run(scorer.model.score_learn_many if learn else scorer.score, X)
        except Exception as err:  # noqa: BLE001 - the client's Error reply; the model is unchanged
            d.admission.release(item.conn, item.n)
            code, msg = classify(err)
            item.conn.reply_error(item.req.id, code, msg)
            return
        v = scorer.version
        d.cache.used(v.name, v.version, 1, time.monotonic())  # LRU order, and the refresh of its latest version
        c = d.counters
        c["native_calls"] += 1
        c["rows_scored"] += item.n
        if learn:
            c["rows_learned"] += item.n
            if lane.unsaved == 0:
                lane.first_unsaved = time.monotonic()
            lane.unsaved += item.n
        result = d.plane.decide(scorer, [item], scores)
        detect_replies(scorer, [item], result, d.encoder, d.admission.release,
                       lambda conn, req_id, code, msg: conn.reply_error(req_id, code, msg))
        if learn and lane.unsaved >= d.config.checkpoint_records:
            await self._checkpoint(lane)

    async def _checkpoint(self, lane: _Lane) -> None:
        from pynomaly.serving import RepositorySource
        from pynomaly.service import Scorer
        from pynomaly.service.streaming import checkpoint

        d, scorer = self.d, lane.scorer
        if lane.unsaved == 0 or not isinstance(d.source, RepositorySource):
            return  # a --models folder keeps no checkpoints: what is learned lives in this process
        v, model, records = scorer.version, scorer.model, lane.unsaved
        try:
            blob = await d.run(model.to_bytes)  # in lane order: the state after the requests answered
            number = await d.run(lambda: checkpoint(d.source.home, v.name, blob, of_version=v.version, records=records,
                                                    threshold=model.threshold_, keep=d.config.checkpoint_keep))
        except Exception as err:  # noqa: BLE001 - learning goes on; the next checkpoint tries again
            log.warning("detector %r: checkpoint failed, %d learned record(s) unsaved: %s", v.name, records, err)
            lane.first_unsaved = time.monotonic()
            return
        lane.unsaved = 0
        lane.scorer = Scorer(dataclasses.replace(v, version=number), model)
        d.cache.adopt(lane.scorer, scorer)
        d.counters["checkpoints"] += 1
        log.info("detector %r: checkpoint v%d (%d record(s) learned since v%d)", v.name, number, records, v.version)

    # -- the time rule and the last save ---------------------------------------------------
    def start(self, loop) -> None:
        """Check the lanes' unsaved records a few times per ``--checkpoint-seconds``."""
        period = min(max(self.d.config.checkpoint_seconds / 4, 0.05), 5.0)

        def tick():
            now = time.monotonic()
            for lane in list(self.lanes.values()):
                if lane.unsaved and now - lane.first_unsaved >= self.d.config.checkpoint_seconds \
                        and _CHECKPOINT not in lane.queue:
                    lane.queue.append(_CHECKPOINT)
                    self._run(lane)
            self.timer = loop.call_later(period, tick)

        self.timer = loop.call_later(period, tick)

    async def stop(self) -> None:
        """Save every lane's unsaved records (after the requests already queued)."""
        if self.timer is not None:
            self.timer.cancel()
        for lane in list(self.lanes.values()):
            if lane.unsaved:
                lane.queue.append(_CHECKPOINT)
                self._run(lane)
        while any(lane.running for lane in self.lanes.values()):
            await asyncio.sleep(0.01)
