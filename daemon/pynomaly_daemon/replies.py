"""Reply encoding: a batch's scores become one DetectReply per request, and replies to the same
connection go out in one write. What the arrays hold is decided once per batch (labels by the
data plane, probabilities by the Scorer); this module only slices and frames them.
"""

from __future__ import annotations


import numpy as np

from pynomaly import DetectorNotReadyError, wire
from pynomaly.wire import DetectReply



class Pending:
    """One admitted detect request: its connection, the request, its rows' bytes and count."""

    __slots__ = ("conn", "req", "data", "n", "t0")

    def __init__(self, conn, req, data, n: int, t0: float = 0.0):
        self.conn = conn
        self.req = req
        self.data = data
        self.n = n
        self.t0 = t0  # its latency's start (time.monotonic()): the read that carried it


def detect_replies(scorer, items: list, result, encoder, release, reply_error) -> None:
    """Answer each request of a batch scored together from the batch's
    :class:`~pynomaly.DetectionResult` (its rows are the requests' rows in order, decided at
    the version's threshold by the data plane).

    Arrays are converted to bytes once per batch, then sliced per request. ``release(conn, n)``
    ends each request's admission; ``reply_error(conn, id, code, message)`` answers one that
    asked for what this detector cannot give (probabilities without training scores).
    """
    v = scorer.version
    scores, labels = result.scores, result.flags
    single = len(items) == 1
    probabilities = None
    for it in items:
        w = it.req.want
        if w is not None and "probabilities" in w:
            try:
                probabilities = scorer.probabilities(scores)
            except DetectorNotReadyError as e:
                probabilities = e
            break
    thr = result.threshold
    s_bytes = l_bytes = p_bytes = None
    append_frame = wire.append_frame
    outs = {}
    off = 0
    for it in items:
        conn, req, n = it.conn, it.req, it.n
        a, off = off, off + n
        release(conn, n)
        if conn.closed:
            continue
        want = req.want
        if want is None:  # the default, scores and labels: the common case, written out
            if s_bytes is None:
                s_bytes = scores.data if single else scores.tobytes()
            if l_bytes is None:
                l_bytes = labels.data if single else labels.tobytes()  # bool bytes are 0/1: msgpack bin as is
            if single:
                reply = DetectReply(req.id, v.name, v.version, n, thr, s_bytes, l_bytes)
            else:
                reply = DetectReply(req.id, v.name, v.version, n, thr, s_bytes[8 * a : 8 * off], l_bytes[a:off])
            want = ()
        else:
            reply = DetectReply(req.id, v.name, v.version, n, thr)
        failed = False
        for w in want:
            if w == "scores":
                if s_bytes is None:
                    s_bytes = scores.data if single else scores.tobytes()
                reply.scores = s_bytes if single else s_bytes[8 * a : 8 * off]
            elif w == "labels":
                if l_bytes is None:
                    l_bytes = labels.data if single else labels.tobytes()  # bool bytes are 0/1: msgpack bin as is
                reply.labels = l_bytes if single else l_bytes[a:off]
            elif w == "anomalies":
                reply.anomalies = np.flatnonzero(labels[a:off]).astype("<i8").data
            elif w == "probabilities":
                if isinstance(probabilities, Exception):
                    reply_error(conn, req.id, "unavailable", str(probabilities))
                    failed = True
                    break
                if p_bytes is None:
                    p_bytes = probabilities.data if single else probabilities.tobytes()
                reply.probabilities = p_bytes if single else p_bytes[8 * a : 8 * off]
            elif w == "attributions":  # such a request is scored alone, with its explanation
                values = result.attributions
                reply.attributions = values[a:off].astype("<f8", copy=False).tobytes()
                reply.explain_method = result.explain_method
                reply.explain_output = result.explain_output
        if failed:
            continue
        # Replies to one connection (pipelined requests) go out in one write.
        out = outs.get(conn)
        if out is None:
            out = outs[conn] = bytearray()
        append_frame(out, reply, encoder)
    for conn, out in outs.items():
        if not conn.closed:
            conn.transport.write(out)
