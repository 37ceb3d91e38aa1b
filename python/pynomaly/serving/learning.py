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
- One learner per detector per home: before a model of a repository home learns, this process
  takes the detector's learner lease (:func:`pynomaly.service.streaming.take_lease`, in the
  lane: arrival order holds), and renews it at each checkpoint and every ``lease_seconds / 3``
  on a timer, never per request; :meth:`stop` releases it. While another live process holds
  it, learning requests are refused (LearnerConflictError, naming the holder; remembered for
  a second, so a flood of them does not reach the database) and scoring goes on from the
  latest version this process serves. Taking a lease over, this process first serves the
  latest stored version (the last checkpoint of the previous learner). A lease this process
  lost (it could not renew for ``lease_seconds`` and another took it) drops what it learned
  since its last checkpoint, which the new learner never saw.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Optional

log = logging.getLogger("pynomaly.serving")

REFUSAL_MEMORY_S = 1.0  # how long a refused lease is answered from memory


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
    ``checkpoints``). ``lease_seconds``: how long this process's learner leases outlive their
    last renewal."""

    def __init__(self, cache, run, *, seconds: float, records: int, keep: int, counters,
                 lease_seconds: Optional[float] = None):
        from pynomaly.serving.sources import RepositorySource
        from pynomaly.service import streaming

        self.cache = cache
        self.run = run
        self.seconds, self.records, self.keep = seconds, records, keep
        self.counters = counters
        self.lanes: dict = {}  # id(model) -> _Lane
        self._timer = None
        self._renewer = None
        # Leases where there is a home to hold them in (a folder source has none, nor checkpoints).
        self.home = cache.source.home if isinstance(cache.source, RepositorySource) else None
        self.lease_seconds = streaming.DEFAULT_LEASE_SECONDS if lease_seconds is None else float(lease_seconds)
        self.holder = streaming.learner_id()
        self.held: dict = {}  # detector name -> time.monotonic() until which its lease surely runs
        self.refused: dict = {}  # detector name -> (time.monotonic() until, the refusal's message)
        self._took_any = False

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
                if learn:
                    await self._hold(lane)
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

    async def _hold(self, lane: _Lane) -> None:
        """Make sure this process holds the lease of the lane's detector (in its lock): a dict
        lookup while it does; else take it (LearnerConflictError while another holds it) and
        serve the latest stored version if this process's copy is older."""
        from pynomaly._errors import LearnerConflictError
        from pynomaly.service.streaming import take_lease

        name = lane.scorer.version.name
        now = time.monotonic()
        if self.home is None or self.held.get(name, 0.0) > now:
            return
        refused = self.refused.get(name)
        if refused is not None and refused[0] > now:
            raise LearnerConflictError(refused[1])
        try:
            latest = await self.run(take_lease, self.home, name, self.holder, self.lease_seconds)
        except LearnerConflictError as err:
            self.refused[name] = (time.monotonic() + REFUSAL_MEMORY_S, str(err))
            raise
        self.refused.pop(name, None)
        self.held[name] = now + self.lease_seconds  # from before asking: on the safe side
        self._took_any = True
        log.info("detector %r: this process learns it (learner lease taken, %s)", name, self.holder)
        if latest != lane.scorer.version.version:
            await self._catch_up(lane, latest)

    async def _catch_up(self, lane: _Lane, version: int) -> None:
        """Serve stored ``version`` in the lane instead of this process's older copy: the last
        checkpoint of the process that learned the detector before."""
        old = lane.scorer
        fresh = await self.run(self.cache.source.get, old.version.name, version)
        self.lanes.pop(id(old.model), None)
        lane.scorer, lane.unsaved = fresh, 0
        self.lanes[id(fresh.model)] = lane
        self.cache.adopt(fresh, old)
        log.info("detector %r: learning from v%d, saved by its previous learner (this process had v%d)",
                 old.version.name, version, old.version.version)

    def _lost(self, name: str) -> None:
        """Another process took ``name``'s lease: forget what this one learned since its last
        checkpoint, and serve the stored versions again."""
        self.held.pop(name, None)
        dropped = 0
        for lane in self.lanes.values():
            if lane.scorer.version.name == name:
                dropped += lane.unsaved
                lane.unsaved = 0
        self.cache.invalidate(name)
        log.warning("detector %r: lost its learner lease to another process; %d record(s) learned since the last "
                    "checkpoint are dropped", name, dropped)

    async def _renew(self) -> None:
        from pynomaly.service.streaming import renew_leases

        names, started = list(self.held), time.monotonic()
        try:
            kept = await self.run(renew_leases, self.home, self.holder, names, self.lease_seconds)
        except Exception as err:  # noqa: BLE001 - the next tick tries again; the lease lapses meanwhile
            log.warning("cannot renew the learner leases of %s: %s", ", ".join(map(repr, names)), err)
            return
        for name in names:
            if name in kept:
                if name in self.held:
                    self.held[name] = started + self.lease_seconds
            else:
                self._lost(name)

    def _leave(self, lane: _Lane) -> None:
        lane.users -= 1
        if lane.users == 0 and lane.unsaved == 0:
            self.lanes.pop(id(lane.scorer.model), None)

    async def _checkpoint(self, lane: _Lane) -> None:
        """Save the lane's state as a new version (holding its lock)."""
        from pynomaly.serving.sources import RepositorySource
        from pynomaly.service import Scorer
        from pynomaly.service.streaming import checkpoint

        from pynomaly._errors import LearnerConflictError

        source = self.cache.source
        if lane.unsaved == 0 or not isinstance(source, RepositorySource):
            return
        scorer = lane.scorer
        v, model, records = scorer.version, scorer.model, lane.unsaved
        lease = (self.holder, self.lease_seconds)
        started = time.monotonic()
        try:
            blob = await self.run(model.to_bytes)
            number = await self.run(lambda: checkpoint(source.home, v.name, blob, of_version=v.version,
                                                       records=records, threshold=model.threshold_, keep=self.keep,
                                                       lease=lease))
        except LearnerConflictError:
            self._lost(v.name)
            return
        except Exception as err:  # noqa: BLE001 - learning goes on; the next checkpoint tries again
            log.warning("detector %r: checkpoint failed, %d learned record(s) unsaved: %s", v.name, records, err)
            lane.first_unsaved = time.monotonic()
            return
        lane.unsaved = 0
        if v.name in self.held:
            self.held[v.name] = started + self.lease_seconds  # the checkpoint renewed it
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
        """Check the lanes' unsaved records a few times per ``seconds``, and renew the leases
        held every ``lease_seconds / 3``."""
        period = min(max(self.seconds / 4, 0.05), 5.0)

        def renew():
            if self.held:
                loop.create_task(self._renew())
            self._renewer = loop.call_later(self.lease_seconds / 3, renew)

        if self.home is not None:
            self._renewer = loop.call_later(self.lease_seconds / 3, renew)

        def tick():
            now = time.monotonic()
            for lane in list(self.lanes.values()):
                if lane.unsaved and now - lane.first_unsaved >= self.seconds:
                    lane.first_unsaved = now  # one save per period, even while it is running
                    loop.create_task(self._save(lane))
            self._timer = loop.call_later(period, tick)

        self._timer = loop.call_later(period, tick)

    async def stop(self) -> None:
        """Save every lane's unsaved records (after the requests already waiting), then release
        the leases held: another process may learn those detectors at once."""
        from pynomaly.service.streaming import release_leases

        for timer in (self._timer, self._renewer):
            if timer is not None:
                timer.cancel()
        await asyncio.gather(*[self._save(lane) for lane in list(self.lanes.values()) if lane.unsaved])
        if self._took_any:
            self.held.clear()
            try:
                await self.run(release_leases, self.home, self.holder)
            except Exception as err:  # noqa: BLE001 - they lapse after lease_seconds anyway
                log.warning("cannot release the learner leases (they lapse in %.0f s): %s", self.lease_seconds, err)
