"""What every request handler of the HTTP face shares: :class:`ServerState` (settings, token
checks, the data plane with its Scorer cache and observer, the threads) and :func:`state_of`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from typing import Optional

from starlette.requests import Request

from pynomaly import service
from pynomaly._errors import RepositoryError
from pynomaly.serving import DataPlane, ModelCache, RepositorySource

from .settings import Settings
from .tokens import ANONYMOUS, ForbiddenError, Principal, TokenError, Verifier, bearer

log = logging.getLogger("pynomaly_api")


class ServerState:
    """What every request handler shares: settings, token checks, the Scorer cache, threads."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = service.home_path(settings.home)
        self.revocations = None
        self.verifier = None
        if settings.auth:
            from pynomaly.store.revocations import RevocationList

            self.revocations = RevocationList(self.home)
            self.verifier = Verifier(self.home, settings.public_keys, issuer=settings.issuer,
                                     audience=settings.audience, role_claim=settings.role_claim,
                                     revocations=self.revocations)
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.threads or os.cpu_count() or 1, thread_name_prefix="pynomaly-api")
        # What the server has done since it started (GET /api/v1/stats; per process).
        self.counters = {"cache_hits": 0, "cache_misses": 0, "infer_requests": 0, "infer_errors": 0,
                         "rows_scored": 0, "streamed_requests": 0, "started": time.time()}
        self.errors_by_code: dict = {}  # infer error replies by HTTP status (pynomaly_errors_total{code})
        # Per detector version, for OIP v2 statistics: [successes, their ns, failures, their ns,
        # rows, last inference (Unix ms)].
        self.model_stats: dict = {}
        self.cache = ModelCache(RepositorySource(str(self.home)), self.run, max_bytes=settings.cache_bytes,
                                refresh_interval=settings.refresh_interval_s, counters=self.counters)
        from pynomaly.serving.observe import Observer

        from .audit import Auditor

        self.audit = Auditor(self.home, self.run)
        # Metrics and alert rules (issue 12): every detection counted per detector, the rules
        # fed from a thread of their own (never SQLite on the event loop), alerts delivered.
        # Drift (issue 24): every path's rows counted, unless --no-drift (batch detections count
        # through the service, in this process: off there too).
        if not settings.drift:
            from pynomaly.service import drift_live

            drift_live.settings.counting = False
        self.observer = Observer(str(self.home), drift_home=str(self.home) if settings.drift else None)
        # lookup -> score -> decide -> observe, as the daemon's Python path and every route here take it.
        self.plane = DataPlane(self.cache, self.observer)
        from pynomaly.serving.learning import Learning

        # Streaming detectors: one request at a time per model, learning when asked, checkpoints.
        self.learning = Learning(self.cache, self.run, seconds=settings.checkpoint_seconds,
                                 records=settings.checkpoint_records, keep=settings.checkpoint_keep,
                                 counters=self.counters, lease_seconds=settings.learner_lease_seconds)
        self.job_workers: list = []
        self.ready = True  # False once draining
        from pynomaly.store._home import is_database_url

        # A database home's readiness also asks the database, at most once a second.
        self._database_home = is_database_url(self.home)
        self._database_ok, self._database_checked = True, float("-inf")

    def start(self) -> None:
        """At start-up, on the event loop: alert hand-overs, in-process job workers, and the
        cache told of other processes' new versions (a database home: NOTIFY)."""
        self.observer.start(asyncio.get_running_loop())
        if self.revocations is not None:
            self.revocations.start()
        self.cache.follow_source(asyncio.get_running_loop())
        self.learning.start(asyncio.get_running_loop())
        if self.settings.job_workers:
            from pynomaly.service import jobs

            self.job_workers = jobs.start_workers(str(self.home), self.settings.job_workers)

    async def learned(self, scorer, rows, learn: bool):
        """Score rows with a streaming detector in its lane, learning them when ``learn`` (the
        caller has checked the ``learn`` action: operator or above): ``(Scorer that scored,
        scores)``."""
        from pynomaly.serving.learning import learn_refusal

        from .errors import HTTPError

        if learn:
            why = learn_refusal(scorer, self.cache)
            if why is not None:
                raise HTTPError(400, why)
            if self.settings.workers > 1:
                raise HTTPError(409, f"learning needs one server process (--workers 1, not {self.settings.workers}): "
                                     "each process would learn its own copy of the detector")
        return await self.learning.score(scorer, rows, learn)

    async def is_ready(self) -> bool:
        """Started, not draining, and for a database home: its server answered within the
        last second. A replica that lost the database leaves its Service until it is back,
        while liveness (the process answers) keeps it from being restarted."""
        if not self.ready:
            return False
        if self._database_home and time.monotonic() - self._database_checked >= 1.0:
            self._database_checked = time.monotonic()
            self._database_ok = await self.run(self._database_answers)
        return self._database_ok

    def _database_answers(self) -> bool:
        try:
            service.check_reachable(self.home)
            return True
        except RepositoryError as e:
            log.warning("not ready: %s", e)
            return False

    def run(self, fn, *args):
        """``fn(*args)`` in the scoring threads, as an awaitable."""
        return asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def authorize(self, request: Request, action: str) -> Principal:
        """The caller, allowed to do ``action``; TokenError (401) or ForbiddenError (403)."""
        return self.allow(request.headers.get("authorization"), action, request.scope)

    def allow(self, authorization: Optional[str], action: str, scope) -> Principal:
        """The caller an ``Authorization`` header value names, allowed to do ``action``;
        refusals go to the audit trail (``scope``: the request's, for where it came from)."""
        if self.verifier is None:
            return ANONYMOUS
        p = None
        try:
            p = self.verifier.verify(bearer(authorization))
            p.require(action)
        except (TokenError, ForbiddenError) as e:
            self.audit.refused(scope.get("client"), p.subject if p is not None else None,
                               403 if isinstance(e, ForbiddenError) else 401, str(e), scope.get("path", ""))
            raise
        return p

    def close(self) -> None:
        self.ready = False
        for w in self.job_workers:
            w.shutdown()  # the running job is re-queued for the next worker
        self.observer.stop()
        if self.revocations is not None:
            self.revocations.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)


def state_of(request: Request) -> ServerState:
    return request.app.state.pynomaly


__all__ = ["ServerState", "state_of"]
