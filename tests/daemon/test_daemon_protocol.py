"""The daemon spoken to as PROTOCOL.md describes it, with plain ``msgpack`` and ``struct`` only.

No pynomaly client code is used to build or read frames here: this is what a C, Go or Rust
client would do. Then fuzzing: random and malformed frames, after which a healthy client is
still served.
"""

from __future__ import annotations

import os
import socket
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _daemon_helpers import DaemonProcess, cardio, cardio_model_folder, frame, is_closed, raw_connect, raw_rows, read_frame

pynomaly_daemon = pytest.importorskip("pynomaly_daemon")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root, model = cardio_model_folder(tmp_path_factory)
    d = DaemonProcess(tmp_path_factory.mktemp("sock"), root, "--frame-timeout", "1")
    yield d, model
    assert d.stop() == 0


def read_reply(s: socket.socket) -> dict:
    return msgpack.unpackb(read_frame(s), raw=False)


def test_health_example_bytes_from_protocol_md(served):
    d, _ = served
    s = raw_connect(d.sock)
    s.sendall(bytes.fromhex("0000000f82a26f70a6686561 6c7468a2696407".replace(" ", "")))
    reply = read_reply(s)
    assert reply["op"] == "health" and reply["id"] == 7 and reply["status"] == "ok" and reply["protocol"] == 1
    s.close()


def test_foreign_client_from_protocol(served):
    d, model = served
    X = cardio()
    s = raw_connect(d.sock)
    # Several requests pipelined in one write; replies matched by id.
    reqs = [
        {"op": "detect", "id": 1, "detector": "cardio", "want": ["scores", "labels", "anomalies", "probabilities"],
         "rows": raw_rows(X[:100])},
        {"op": "detect", "id": 2, "detector": "cardio", "want": ["scores"],
         "rows": {"dtype": "f4", "shape": [3, 21], "data": np.ascontiguousarray(X[:3], "<f4").tobytes()}},
        {"id": 3, "op": "detect", "detector": "cardio", "version": None, "rows": X[5:7].tolist()},  # op not first
        {"op": "list", "id": 4},
        {"op": "info", "id": 5, "detector": "cardio"},
        {"op": "stats", "id": 6},
        {"op": "reload", "id": 7, "detector": None},
        {"op": "detect", "id": 8, "detector": "cardio", "rows": raw_rows(X[:2, :4])},
        {"op": "explode", "id": 9},
    ]
    s.sendall(b"".join(frame(r) for r in reqs))
    replies = {}
    for _ in reqs:
        r = read_reply(s)
        replies[r["id"]] = r
    assert list(next(iter(replies.values())).keys())[0] == "op"  # the daemon writes op first

    r1 = replies[1]
    assert r1["op"] == "detect" and r1["n_rows"] == 100 and r1["version"] == 1
    scores = np.frombuffer(r1["scores"], "<f8")
    np.testing.assert_array_equal(scores, model.decision_function(X[:100]))
    np.testing.assert_array_equal(np.frombuffer(r1["labels"], np.uint8), model.predict(X[:100]))
    np.testing.assert_array_equal(np.frombuffer(r1["anomalies"], "<i8"), np.flatnonzero(model.predict(X[:100])))
    assert np.all((np.frombuffer(r1["probabilities"], "<f8") >= 0) & (np.frombuffer(r1["probabilities"], "<f8") <= 1))
    assert r1["threshold"] == model.threshold_
    np.testing.assert_array_equal(
        np.frombuffer(replies[2]["scores"], "<f8"), model.decision_function(X[:3].astype(np.float32))
    )
    assert "labels" not in replies[2]
    np.testing.assert_array_equal(np.frombuffer(replies[3]["scores"], "<f8"), model.decision_function(X[5:7]))
    assert np.frombuffer(replies[3]["labels"], np.uint8).shape == (2,)
    assert replies[4]["op"] == "list" and replies[4]["detectors"][0]["name"] == "cardio"
    assert replies[5]["detector"]["n_features"] == 21
    assert replies[6]["op"] == "stats" and replies[6]["requests"]["detect"] >= 3
    assert replies[7]["op"] == "reload" and isinstance(replies[7]["invalidated"], list)
    assert replies[8]["op"] == "error" and replies[8]["code"] == "bad_shape"
    assert replies[9] == {"op": "error", "id": 9, "code": "bad_request", "message": replies[9]["message"]}

    # shutdown(SHUT_WR): replies to what was sent still arrive, then EOF.
    s.sendall(frame({"op": "detect", "id": 10, "detector": "cardio", "rows": raw_rows(X[:1000])}))
    s.shutdown(socket.SHUT_WR)
    assert read_reply(s)["id"] == 10
    assert is_closed(s)
    s.close()


@pytest.mark.parametrize(
    "obj, code",
    [
        ({"op": "detect", "id": 1, "detector": "cardio", "rows": {"dtype": "i4", "shape": [1, 21], "data": b"\0" * 84}},
         "bad_dtype"),
        ({"op": "detect", "id": 1, "detector": "cardio", "rows": {"dtype": "f8", "shape": [2, 21], "data": b"\0" * 8}},
         "bad_shape"),
        ({"op": "detect", "id": 1, "detector": "cardio", "rows": {"dtype": "f8", "shape": [0, 21], "data": b""}},
         "bad_shape"),
        ({"op": "detect", "id": 1, "detector": "cardio", "rows": {"dtype": "f8", "shape": [21], "data": b"\0" * 168}},
         "bad_shape"),
        ({"op": "detect", "id": 1, "detector": "cardio", "rows": [[1.0] * 21, [1.0] * 20]}, "bad_shape"),
        ({"op": "detect", "id": 1, "detector": "cardio", "rows": []}, "bad_shape"),
        ({"op": "detect", "id": 1, "detector": "cardio"}, "bad_request"),
        ({"op": "detect", "id": 1, "detector": "cardio", "rows": [["a"] * 21]}, "bad_request"),
        ({"op": "detect", "id": 1, "detector": "cardio", "rows": [[1e300] * 21]}, "bad_value"),
        ({"op": "detect", "id": 1, "detector": "cardio", "want": ["everything"], "rows": [[0.0] * 21]}, "bad_request"),
        ({"op": "detect", "id": 1, "detector": "nope", "rows": [[0.0] * 21]}, "unknown_detector"),
        ({"op": "detect", "id": 1, "detector": "cardio", "version": 5, "rows": [[0.0] * 21]}, "unknown_detector"),
        ({"op": "detect", "id": 1, "detector": "../../etc", "rows": [[0.0] * 21]}, "bad_request"),  # not a name
        ({"op": "health", "id": 1, "extra": True}, "bad_request"),
        ({"op": "health"}, "bad_request"),
        ({"id": 1}, "bad_request"),
        ([1, 2, 3], "bad_request"),
    ],
)
def test_each_bad_request_gets_its_error_and_the_connection_stays(served, obj, code):
    d, model = served
    s = raw_connect(d.sock)
    s.sendall(frame(obj))
    r = read_reply(s)
    assert r["op"] == "error" and r["code"] == code and r["message"]
    assert r["id"] == (1 if isinstance(obj, dict) and "id" in obj else 0)
    s.sendall(frame({"op": "detect", "id": 2, "detector": "cardio", "rows": raw_rows(cardio()[:1])}))
    assert read_reply(s)["id"] == 2
    s.close()


def test_malformed_msgpack_and_misaligned_raw_rows(served):
    d, model = served
    s = raw_connect(d.sock)
    for junk in (b"\xc1", b"\x92\x01", b"\xdb\xff\xff\xff\xff", b""):  # reserved byte, short array, huge str, empty
        s.sendall(struct.pack(">I", len(junk)) + junk)
        r = read_reply(s)
        assert r["op"] == "error" and r["code"] == "bad_request" and r["id"] == 0
    # data first in the rows map: the values land unaligned, still scored correctly (one copy).
    X = cardio()[:9]
    body = msgpack.packb({"op": "detect", "id": 3, "detector": "cardio",
                          "rows": {"data": X.astype("<f8").tobytes(), "shape": [9, 21], "dtype": "f8"}, "want": ["scores"]})
    for health_id in (1, 200, 1000):  # a health frame of 15, 16, 17 bytes shifts the next one
        s.sendall(frame({"op": "health", "id": health_id}) + struct.pack(">I", len(body)) + body)
        replies = {r["id"]: r for r in (read_reply(s), read_reply(s))}
        assert replies[health_id]["op"] == "health"
        np.testing.assert_array_equal(np.frombuffer(replies[3]["scores"], "<f8"), model.decision_function(X))
    s.close()


def _healthy(d) -> None:
    s = raw_connect(d.sock)
    s.sendall(frame({"op": "detect", "id": 77, "detector": "cardio", "rows": raw_rows(cardio()[:2])}))
    r = read_reply(s)
    assert r["id"] == 77 and r["op"] == "detect"
    s.close()


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=64),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5),
    max_leaves=20,
)
ops = st.sampled_from(["detect", "list", "info", "health", "stats", "reload", "nope", ""])
requestish = st.fixed_dictionaries(
    {"op": ops},
    optional={
        "id": json_like,
        "detector": st.sampled_from(["cardio", "x"]) | json_like,
        "version": json_like,
        "want": json_like,
        "rows": json_like
        | st.fixed_dictionaries({"dtype": st.sampled_from(["f4", "f8", "u1"]) | json_like,
                                 "shape": st.lists(st.integers(-3, 30), max_size=3) | json_like,
                                 "data": st.binary(max_size=200) | json_like}),
    },
)



@st.composite
def nearly_valid_detect(draw):
    """Well-formed detects of random raw values: NaN, inf, huge and ordinary floats."""
    dtype = draw(st.sampled_from(["f4", "f8"]))
    n = draw(st.integers(1, 4))
    size = 4 if dtype == "f4" else 8
    data = draw(st.binary(min_size=n * 21 * size, max_size=n * 21 * size))
    req = {"op": "detect", "id": draw(st.integers(0, 2**64 - 1)), "detector": "cardio",
           "want": draw(st.lists(st.sampled_from(["scores", "labels", "probabilities", "anomalies"]), max_size=4)),
           "rows": {"dtype": dtype, "shape": [n, 21], "data": data}}
    return msgpack.packb(req, use_bin_type=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        requestish.map(lambda o: msgpack.packb(o, use_bin_type=True)),
        nearly_valid_detect(),
        json_like.map(lambda o: msgpack.packb(o, use_bin_type=True)),
        st.binary(max_size=300),
    ),
    cut=st.one_of(st.none(), st.integers(0, 300)),
)
def test_fuzz_frames_never_hurt_the_daemon(served, body, cut):
    """Random bodies (valid frames) get a reply; truncated frames end with a clean close."""
    d, _ = served
    s = raw_connect(d.sock, timeout=10)
    data = struct.pack(">I", len(body)) + body
    if cut is not None and cut < len(data):
        s.sendall(data[:cut])
        s.close()  # truncated frame: the daemon must just drop the connection
    else:
        s.sendall(data)
        r = read_reply(s)
        assert r["op"] in ("error", "detect", "list", "info", "health", "stats", "reload")
        if r["op"] == "error":
            assert r["code"] in ("bad_request", "bad_shape", "bad_dtype", "bad_value", "unknown_detector")
        s.close()
    _healthy(d)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(stream=st.binary(min_size=1, max_size=2000))
def test_fuzz_random_byte_streams(served, stream):
    """Arbitrary bytes, lengths included: errors or a close, never a crash; others still served."""
    d, _ = served
    s = raw_connect(d.sock, timeout=10)
    try:
        s.sendall(stream)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):  # replies, then EOF (or a reset after frame_too_large)
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        s.close()
    _healthy(d)
    assert d.proc.poll() is None


def test_hostile_names_and_numbers_are_refused_briefly(served):
    """Issue 16.5/16.6: a 1 MB name (with NUL bytes), a path as a name, a version beyond SQLite's
    integers, negative ids and versions: each gets bad_request, the reply and the log line stay
    short, and the connection stays usable."""
    d, _ = served
    s = raw_connect(d.sock)
    before = len(d.log_text())
    cases = [
        {"op": "detect", "id": 1, "detector": "x\x00" * 500_000, "rows": [[0.0]]},
        {"op": "detect", "id": 2, "detector": "../../etc/x", "rows": [[0.0]]},
        {"op": "detect", "id": 3, "detector": "cardio", "version": 2**64 - 1, "rows": [[0.0]]},
        {"op": "detect", "id": 4, "detector": "cardio", "version": -5, "rows": [[0.0]]},
        {"op": "info", "id": 5, "detector": "cardio", "version": 2**63},
        {"op": "health", "id": -1},
        {"op": "detect", "id": 6, "detector": "cardio", "rows": {"dtype": "f" * 100_000, "shape": [1, 1], "data": b"x"}},
    ]
    for obj in cases:
        s.sendall(frame(obj))
        reply = msgpack.unpackb(read_frame(s), raw=False)
        assert reply["op"] == "error" and reply["code"] in ("bad_request", "bad_dtype"), reply
        assert reply["id"] == (obj["id"] if obj["id"] >= 0 else 0)
        assert len(reply["message"]) < 400, len(reply["message"])
    s.sendall(frame({"op": "health", "id": 9}))
    assert msgpack.unpackb(read_frame(s), raw=False)["status"] == "ok"
    new_log = d.log_text()[before:]
    assert max(len(line) for line in new_log.splitlines()) < 600
    assert "internal" not in new_log
