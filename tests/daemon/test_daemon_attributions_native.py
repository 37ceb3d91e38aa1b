"""want: ["attributions"] on the daemon's native paths for isolation forests (issue 22):
python/src/fastpath_explain.hpp answers with the reply the Python path sends, byte for byte
(compared against msgspec's encoding of the library's ``explain(X, method).values``, and end to
end against a daemon started with ``--no-fast-path``); methods it does not know, and
explain_method without attributions, stay the Python path's."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

import pynomaly
from pynomaly import _core
from pynomaly.service import Scorer

from _daemon_helpers import DaemonProcess, cardio, expected_reply, frame, raw_connect, raw_rows, read_frame, train

pynomaly_daemon = pytest.importorskip("pynomaly_daemon")
from pynomaly_daemon import save_to_folder  # noqa: E402

MAX_FRAME = 1 << 20
MAX_ROWS = 64


@pytest.fixture(scope="module")
def model():
    return train(0, n_estimators=50)


@pytest.fixture(scope="module")
def hot(model):
    e = Scorer.of(model, "cardio", 3).native
    return {("cardio", None): e, ("cardio", 3): e}


def body(id=1, rows=None, **fields) -> dict:
    return {"op": "detect", "id": id, "detector": "cardio", **fields, "rows": rows}


def serve(frames: bytes, hot):
    return _core.fast_detect(memoryview(bytearray(frames)), 0, len(frames), MAX_FRAME, MAX_ROWS, hot)


@pytest.mark.parametrize("method", [None, "tree_shap", "path"])
@pytest.mark.parametrize("dtype", ["f4", "f8"])
def test_replies_equal_the_python_paths_bytes(model, hot, method, dtype):
    X = cardio()
    rng = np.random.default_rng(7)
    sizes = [1, 3, 8, 1, 6, 2] if method != "path" else [1, 3, 9, 1, 30, 2]  # TreeSHAP: <= 8 rows a request
    frames = []
    for i, n in enumerate(sizes):
        fields = {} if method is None else {"explain_method": method}
        # plain frames between attribution frames: one batch, attributions for those asking
        want = [["attributions"], None, ["scores", "attributions"], ["labels", "attributions", "scores"],
                ["attributions"], ["scores"]][i]
        if want is None or "attributions" not in want:
            fields = {}
        frames.append(frame(body(id=50 + i, rows=raw_rows(X[rng.integers(0, len(X), n)], dtype), want=want, **fields)))
    stream = b"".join(frames)
    pos, replies, entry, n_req, n_rows, *_ = serve(stream, hot)
    assert (pos, n_req, n_rows) == (len(stream), len(sizes), sum(sizes))
    assert replies == b"".join(expected_reply(model, entry, f) for f in frames)


@pytest.mark.parametrize("fields", [
    {"want": ["attributions"], "explain_method": "nope"},  # the Python path names the methods
    {"want": ["attributions"], "explain_method": "permutation"},  # needs a background: its error
    {"want": ["attributions"], "explain_method": 3},
    {"explain_method": "path"},  # without attributions: the Python path's error
    {"want": ["scores"], "explain_method": "tree_shap"},
    {"want": ["attributions", "probabilities"]},
])
def test_what_the_native_path_does_not_answer_is_left_to_python(hot, fields):
    f = frame(body(rows=raw_rows(cardio()[:2]), **fields))
    pos, replies, entry, n_req, *_ = serve(f, hot)
    assert (pos, replies, n_req) == (0, None, 0)


@pytest.mark.parametrize("method", [None, "tree_shap"])
def test_treeshap_of_more_rows_than_the_loop_may_stall_for_is_left_to_python(model, hot, method):
    fields = {} if method is None else {"explain_method": method}
    few = frame(body(rows=raw_rows(cardio()[:8]), want=["attributions"], **fields))
    many = frame(body(id=2, rows=raw_rows(cardio()[:9]), want=["attributions"], **fields))
    pos, replies, entry, n_req, *_ = serve(few + many, hot)
    assert (pos, n_req) == (len(few), 1) and replies == expected_reply(model, entry, few)


def test_a_nil_explain_method_is_the_default(model, hot):
    f = frame(body(rows=raw_rows(cardio()[:4]), want=["attributions"], explain_method=None))
    pos, replies, entry, *_ = serve(f, hot)
    assert pos == len(f) and replies == expected_reply(model, entry, f)


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_to_folder(root, "cardio", train(0, n_estimators=50))
    native = DaemonProcess(tmp_path_factory.mktemp("native"), root)  # the native loop, the default
    python = DaemonProcess(tmp_path_factory.mktemp("python"), root, "--no-fast-path")
    yield native, python
    assert native.stop() == 0 and python.stop() == 0


def test_native_loop_replies_equal_the_python_paths(daemons):
    native, python = daemons
    X = cardio()
    frames = [frame(body(id=i, rows=raw_rows(X[10 * i:10 * i + n], dtype), want=want, **extra))
              for i, (n, dtype, want, extra) in enumerate([
                  (1, "f8", ["attributions"], {}),
                  (1, "f4", ["scores", "labels", "attributions"], {"explain_method": "path"}),
                  (5, "f8", ["scores", "attributions"], {"explain_method": "tree_shap"}),
                  (40, "f4", ["attributions"], {"explain_method": "path"}),
                  (3, "f8", None, {}),
                  (2, "f8", ["attributions"], {"explain_method": "nope"}),  # an error, from Python on both
              ])]
    replies = {}
    for d in (native, python):
        with pynomaly.Client(d.sock) as c:
            c.detect("cardio", X[:1])  # the first request loads the model (for the native loop too)
            before = c.stats().fast_path_requests
        s = raw_connect(d.sock)
        s.sendall(b"".join(frames))
        replies[d] = [read_frame(s) for _ in frames]
        with pynomaly.Client(d.sock) as c:
            replies[d, "fast"] = c.stats().fast_path_requests - before
    # by id: the Python path answers a request asking for attributions after the plain ones
    # pipelined behind it (it explains it in a worker thread)
    by_id = {d: {msgspec.msgpack.decode(r)["id"]: r for r in replies[d]} for d in daemons}
    assert len(by_id[native]) == len(frames) and by_id[native] == by_id[python]
    assert replies[native, "fast"] == 5 and replies[python, "fast"] == 0
    err = msgspec.msgpack.decode(by_id[native][len(frames) - 1])
    assert err["op"] == "error" and "cannot explain with method 'nope'" in err["message"]


