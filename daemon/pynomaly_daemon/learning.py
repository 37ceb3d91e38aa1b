"""Streaming detectors on the socket (issue 23): their requests, ``learn: true`` or not, go
one at a time in arrival order through their model's lane (:mod:`pynomaly.serving.learning`,
which also checkpoints what they learn), never coalesced and never on the native path (whose
parser leaves any frame with ``learn`` to the Python path, and which serves native isolation
forests only)."""

from __future__ import annotations

import time

from pynomaly.serving.learning import Learning, learn_refusal, learns

from .batching import matrix
from .errors import RequestError, classify
from .replies import detect_replies

__all__ = ["Learner", "learns", "check_learn"]


def check_learn(scorer, req, cache) -> None:
    """Raise the ``bad_request`` a ``learn: true`` request for this Scorer gets, if any."""
    if req.learn:
        why = learn_refusal(scorer, cache)
        if why is not None:
            raise RequestError("bad_request", why)


class Learner:
    """The daemon's side of the lanes: admitted requests in, replies out."""

    def __init__(self, d):
        self.d = d
        cfg = d.config
        self.lanes = Learning(d.cache, d.run, seconds=cfg.checkpoint_seconds, records=cfg.checkpoint_records,
                              keep=cfg.checkpoint_keep, counters=d.counters,
                              lease_seconds=cfg.learner_lease_seconds)

    def submit(self, scorer, item, dtype: str) -> None:
        """Answer an admitted request for a streaming detector. Tasks start in the order they
        are created and each takes its place in the lane at once: arrival order."""
        self.d.loop.create_task(self._answer(scorer, item, dtype))

    async def _answer(self, scorer, item, dtype: str) -> None:
        d = self.d
        X = matrix(item.data, item.n, scorer.version.n_features, dtype)
        try:
            scorer, scores = await self.lanes.score(scorer, X, item.req.learn)
        except Exception as err:  # noqa: BLE001 - the client's Error reply; the model learned nothing
            d.admission.release(item.conn, item.n)
            code, msg = classify(err)
            item.conn.reply_error(item.req.id, code, msg)
            return
        v = scorer.version
        d.cache.used(v.name, v.version, 1, time.monotonic())  # LRU order, and the refresh of its latest version
        c = d.counters
        c["native_calls"] += 1
        c["rows_scored"] += item.n
        result = d.plane.decide(scorer, [item], scores)
        detect_replies(scorer, [item], result, d.encoder, d.admission.release,
                       lambda conn, req_id, code, msg: conn.reply_error(req_id, code, msg))
