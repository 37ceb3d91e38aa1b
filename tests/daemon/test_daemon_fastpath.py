"""The daemon's native fast path (python/src/fastpath.cpp, ``pynomaly._core.fast_detect``).

It must answer exactly as the Python path would, byte for byte, and leave every frame it does
not fully understand to that path: compared here against msgspec's decoding and encoding of
the same frames, on hand-picked edge cases and on hypothesis-generated frames, and end to end
against a daemon started with ``--no-fast-path``.
"""

from __future__ import annotations

import shutil
import struct
import subprocess

import msgpack
import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pynomaly
from pynomaly import _core, wire

from conftest import REPO
from _daemon_helpers import (DaemonProcess, cardio, cardio_model_folder, expected_reply, frame, raw_connect, raw_rows,
                             read_frame)

from pynomaly.service import Scorer

pynomaly_daemon = pytest.importorskip("pynomaly_daemon")

MAX_FRAME = 1 << 20
MAX_ROWS = 64


def served(model, name, version):
    """The typed native object the daemon's native path scores with, built by the Scorer."""
    return Scorer.of(model, name, version).native


@pytest.fixture(scope="module")
def model():
    return pynomaly.IsolationForest(n_estimators=50, contamination=0.1, random_state=0).fit(cardio())


@pytest.fixture(scope="module")
def hot(model):
    e = served(model, "cardio", 3)
    other = served(model, "other-" + "x" * 40, 7)
    return {("cardio", None): e, ("cardio", 3): e, (other.name, None): other}


def body(op="detect", id=1, detector="cardio", rows=None, **fields) -> dict:
    b = {"op": op, "id": id, "detector": detector}
    b.update(fields)
    if rows is not None:
        b["rows"] = rows
    return b


def serve(frames: bytes, hot, max_rows=MAX_ROWS, start=0):
    buf = bytearray(b"\0" * start + frames)
    return _core.fast_detect(memoryview(buf), start, len(buf), MAX_FRAME, max_rows, hot)


IDS = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1]
# Ids are unsigned (PROTOCOL.md, wire.RequestId): these are refused by the typed decoder, so the
# native path must leave them to it (issue 16.6).
NEGATIVE_IDS = [-1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63)]


@pytest.mark.parametrize("req_id", NEGATIVE_IDS)
def test_negative_ids_and_out_of_range_versions_are_left_to_the_typed_decoder(hot, req_id):
    for fields in ({"id": req_id}, {"version": -5}, {"version": 2**63}, {"version": 2**64 - 1}):
        f = frame(body(rows=raw_rows(cardio()[:2]), **fields))
        pos, replies, entry, n_req, *_ = serve(f, hot)
        assert (pos, replies, n_req) == (0, None, 0)
        with pytest.raises(msgspec.ValidationError):
            msgspec.msgpack.decode(f[4:], type=wire.Request)


@pytest.mark.parametrize("req_id", IDS)
def test_reply_bytes_equal_msgspec_for_every_integer_width(model, hot, req_id):
    X = cardio()[:3]
    f = frame(body(id=req_id, rows=raw_rows(X)))
    pos, replies, entry, n_req, n_rows, calls, coalesced = serve(f, hot)
    assert (pos, n_req, n_rows, calls, coalesced) == (len(f), 1, 3, 1, 0)
    assert entry is hot[("cardio", None)]
    req = msgspec.msgpack.decode(f[4:], type=wire.Request)
    assert replies == expected_reply(model, entry, req)


@pytest.mark.parametrize("want", [None, [], ["scores"], ["labels"], ["labels", "scores"], ["scores", "scores"]])
@pytest.mark.parametrize("dtype", ["f4", "f8"])
@pytest.mark.parametrize("version", [None, 3])
def test_many_frames_one_call_replies_equal_msgspec(model, hot, want, dtype, version):
    X = cardio()
    rng = np.random.default_rng(len(str(want)))
    sizes = [1, 2, 7, 1, 30, 5, 64, 1, 1]
    frames, reqs, at = [], [], 0
    for i, n in enumerate(sizes):
        fields = {"want": want} if want is not None or i % 2 else {}
        if version is not None:
            fields["version"] = version
        f = frame(body(id=1000 + i, rows=raw_rows(X[rng.integers(0, len(X), n)], dtype), **fields))
        frames.append(f)
        reqs.append(msgspec.msgpack.decode(f[4:], type=wire.Request))
    stream = b"".join(frames)
    pos, replies, entry, n_req, n_rows, calls, coalesced = serve(stream, hot, start=5)
    assert pos == 5 + len(stream) and n_req == len(sizes) and n_rows == sum(sizes)
    # Batches of at most 64 rows, in order: [1,2,7,1,30,5] [64] [1,1]
    assert calls == 3 and coalesced == 6 + 2
    assert replies == b"".join(expected_reply(model, entry, r) for r in reqs)


@pytest.mark.parametrize("dtype", ["f4", "f8"])
def test_the_first_flagged_rows_are_kept_for_alerts_as_they_came(model, hot, dtype):
    """With why_rows, the tenth item: the first why_rows rows above the threshold (issue 22's
    alerts), bit-equal to the rows sent (float32 ones as float32), with their scores."""
    X = cardio()
    scores = model.decision_function(X.astype(np.float32) if dtype == "f4" else X)
    flagged = np.flatnonzero(scores > model.threshold_)
    order = np.concatenate([flagged[:3], np.flatnonzero(scores <= model.threshold_)[:20], flagged[3:9]])
    sizes = [4, 1, 9, 2, 7, 6]  # requests of several rows, flagged ones among them
    frames, at = [], 0
    for i, n in enumerate(sizes):
        frames.append(frame(body(id=i, rows=raw_rows(X[order[at:at + n]], dtype))))
        at += n
    stream = b"".join(frames)
    buf = bytearray(stream)
    out = _core.fast_detect(memoryview(buf), 0, len(buf), MAX_FRAME, MAX_ROWS, hot, True, 0, 5)
    assert len(out) == 10 and out[8] is None and out[7][0] == 9
    rows, kept_scores, kept, rows32, scores32 = out[9]
    want = X[order[np.isin(order, flagged)]][:5]
    got, got_scores = (rows32, scores32) if dtype == "f4" else (rows, kept_scores)
    assert kept == 5 and got.dtype == (np.float32 if dtype == "f4" else np.float64)
    np.testing.assert_array_equal(got, want.astype(got.dtype))
    np.testing.assert_array_equal(got_scores, scores[order[np.isin(order, flagged)]][:5])
    assert (rows if dtype == "f4" else rows32).shape[0] == 0
    normal = frame(body(id=99, rows=raw_rows(X[order[3:8]], dtype)))
    assert _core.fast_detect(memoryview(bytearray(normal)), 0, len(normal), MAX_FRAME, MAX_ROWS, hot, True, 0,
                             5)[9] is None  # no anomaly: nothing kept, nothing copied


def test_detector_names_of_every_string_width(model):
    """Names are at most 128 characters (wire.DetectorName): fixstr and str8 on the wire."""
    hot = {}
    frames = b""
    for i, length in enumerate([1, 31, 32, 128]):
        name = ("a.b_c-" * 30)[:length]
        e = served(model, name, i + 1)
        hot[(name, None)] = e
        f = frame(body(id=i, detector=name, rows=raw_rows(cardio()[:2])))
        pos, replies, entry, *_ = serve(f, hot)
        assert pos == len(f) and entry is e
        assert replies == expected_reply(model, e, msgspec.msgpack.decode(f[4:], type=wire.Request))
        frames += f
    # One call serves one detector: it stops where the next name begins.
    pos, _, entry, n_req, *_ = serve(frames, hot)
    assert n_req == 1 and entry is hot[("a", None)]


@pytest.mark.parametrize("name", ["é" * 3, "n" * 129, "-x", "a b", "x\x00"])
def test_names_outside_the_rule_are_left_to_the_typed_decoder(model, name):
    """Issue 16.5: even when a served dict holds such a name, the native path does not answer
    a frame the decoder refuses."""
    hot = {(name, None): served(model, name, 1)}
    f = frame(body(detector=name, rows=raw_rows(cardio()[:2])))
    assert serve(f, hot)[3] == 0
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(f[4:], type=wire.Request)


def _left_alone(hot, good: bytes, bad: bytes, max_rows=MAX_ROWS):
    """The good frame is served, the bad one (and what follows) is left to the Python path."""
    pos, replies, entry, n_req, *_ = serve(good + bad + good, hot, max_rows)
    assert (pos, n_req) == (len(good), 1), bad[:60]


X3 = cardio()[:3]


@pytest.mark.parametrize(
    "bad",
    [
        frame({"op": "health", "id": 5}),
        frame({"op": "list", "id": 5}),
        frame(body(rows=X3.tolist())),  # nested lists: msgspec's validation
        frame(body(rows=raw_rows(X3), extra=1)),  # unknown field: an error reply
        frame(body(rows={**raw_rows(X3), "extra": 1})),
        frame(body(rows=raw_rows(X3), want=["probabilities"])),
        frame(body(rows=raw_rows(X3), want=["scores", "anomalies"])),
        frame(body(rows=raw_rows(X3), want=["nonsense"])),
        frame(body(rows=raw_rows(X3), want="scores")),
        frame(body(rows=raw_rows(cardio()[:65]))),  # more rows than the fast path takes
        frame(body(rows=raw_rows(X3[:, :20]))),  # wrong number of features
        frame(body(rows={"dtype": "f8", "shape": [3, 21], "data": X3.tobytes()[:-8]})),
        frame(body(rows={"dtype": "f8", "shape": [0, 21], "data": b""})),
        frame(body(rows={"dtype": "f8", "shape": [3, 21, 1], "data": X3.tobytes()})),
        frame(body(rows={"dtype": "f8", "shape": [-3, 21], "data": X3.tobytes()})),
        frame(body(rows={"dtype": "i8", "shape": [3, 21], "data": X3.astype("<i8").tobytes()})),
        frame(body(rows={"dtype": "f8", "shape": [3, 21], "data": X3.tobytes().decode("latin1")})),
        frame(body(rows={"dtype": "f8", "shape": [3, 21]})),
        frame(body()),  # no rows
        frame(body(rows=raw_rows(np.where(np.eye(3, 21) > 0, np.nan, X3)))),
        frame(body(rows=raw_rows(np.where(np.eye(3, 21) > 0, np.inf, X3)))),
        frame(body(rows=raw_rows(np.where(np.eye(3, 21) > 0, 1e300, X3)))),  # beyond float32
        frame(body(rows=raw_rows(np.where(np.eye(3, 21) > 0, np.nan, X3), "f4"))),
        frame(body(detector="unknown", rows=raw_rows(X3))),
        frame(body(rows=raw_rows(X3), version=4)),  # a version not loaded
        frame(body(rows=raw_rows(X3), version="3")),
        frame(body(id=1.0, rows=raw_rows(X3))),
        frame(body(id="1", rows=raw_rows(X3))),
        frame(body(detector=b"cardio", rows=raw_rows(X3))),
        frame({"id": 1, "detector": "cardio", "rows": raw_rows(X3)}),  # no op
        frame({"op": "detect", "detector": "cardio", "rows": raw_rows(X3)}),  # no id
        frame(msgpack.packb(body(rows=raw_rows(X3)), use_bin_type=True) + b"\xc0"),  # trailing bytes
        frame(msgpack.packb([1, 2, 3])),
        frame(msgpack.packb(body(rows=raw_rows(X3)), use_bin_type=True).replace(b"cardio", b"cardi\xff")),  # not UTF-8
        frame(b"\xc1"),
        frame(b""),
        struct.pack(">I", MAX_FRAME + 1) + msgpack.packb(body(rows=raw_rows(X3)), use_bin_type=True),
    ],
)
def test_frames_left_to_the_python_path(hot, bad):
    _left_alone(hot, frame(body(rows=raw_rows(X3))), bad)


def test_an_incomplete_frame_waits_for_more_bytes(hot):
    good = frame(body(rows=raw_rows(X3)))
    for cut in (1, 2, 3, 4, 5, len(good) // 2, len(good) - 1):
        pos, _, _, n_req, *_ = serve(good + good[:cut], hot)
        assert (pos, n_req) == (len(good), 1)


def test_duplicate_keys_are_left_to_the_python_path(hot):
    good = msgpack.packb(body(rows=raw_rows(X3)), use_bin_type=True)
    assert good[0] == 0x84
    dup_id = b"\x85" + good[1:] + msgpack.packb("id") + msgpack.packb(2)
    dup_dtype = msgpack.packb(body(rows={"dtype": "f8", "shape": [3, 21], "data": X3.tobytes()}), use_bin_type=True)
    dup_dtype = dup_dtype.replace(b"\x83\xa5dtype", b"\x84\xa5dtype\xa2f8\xa5dtype", 1)
    for bad in (dup_id, dup_dtype):
        _left_alone(hot, frame(good), frame(bad))


def test_a_smaller_row_limit_is_honoured(hot):
    good = frame(body(rows=raw_rows(X3[:1])))
    _left_alone(hot, good, frame(body(rows=raw_rows(cardio()[:9]))), max_rows=8)


def test_an_entry_without_a_native_forest_is_left_alone(model):
    lof = pynomaly.LOF(n_neighbors=5).fit(cardio()[:200])
    assert Scorer.of(lof, "lof", 1).native is None  # so the daemon puts nothing in its native dict
    pos, replies, entry, n_req, *_ = serve(frame(body(detector="lof", rows=raw_rows(X3))), {})
    assert (pos, replies, entry, n_req) == (0, None, None, 0)
    with pytest.raises(TypeError, match="ServedForest"):
        serve(frame(body(detector="lof", rows=raw_rows(X3))), {("lof", None): Scorer.of(lof, "lof", 1)})


def test_bad_arguments_are_refused(hot):
    buf = bytearray(frame(body(rows=raw_rows(X3))))
    for pos, end in [(-1, len(buf)), (5, 4), (0, len(buf) + 1)]:
        with pytest.raises(pynomaly.InvalidInputError):
            _core.fast_detect(memoryview(buf), pos, end, MAX_FRAME, MAX_ROWS, hot)
    for max_frame, max_rows in [(-1, MAX_ROWS), (MAX_FRAME, 0), (MAX_FRAME, -1)]:
        with pytest.raises(pynomaly.InvalidInputError, match="max_rows"):
            _core.fast_detect(memoryview(buf), 0, len(buf), max_frame, max_rows, hot)


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True), st.text(max_size=12),
    st.binary(max_size=40), st.lists(st.integers(-5, 70), max_size=3),
)
_keys = st.sampled_from(["op", "id", "detector", "version", "want", "rows", "dtype", "shape", "data", "x"])


@st.composite
def _frames(draw):
    """Detect bodies: most valid (ids, wants, versions, dtypes, sizes vary), the rest with one
    or more things broken: a value, an unknown or replaced field, a flipped byte."""
    broken = draw(st.integers(0, 3)) == 0
    n = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(["f8", "f4"]))
    X = cardio()[:n]
    if broken and draw(st.booleans()):
        X = X[:, : draw(st.sampled_from([20, 21]))] * draw(st.sampled_from([1.0, np.nan, np.inf, 1e39]))
    with np.errstate(over="ignore"):  # 1e39 becomes inf in float32: a value to refuse
        rows = raw_rows(X, dtype)
    b = body(id=draw(st.integers(-(2**63), 2**64 - 1)), rows=rows)
    if draw(st.booleans()):
        b["want"] = draw(st.one_of(st.none(), st.lists(st.sampled_from(["scores", "labels"]), max_size=3)))
    if draw(st.booleans()):
        b["version"] = draw(st.sampled_from([None, 3]))
    if broken:
        if draw(st.booleans()):
            b["detector"] = draw(st.sampled_from(["nope", "cardio"]))
            b["want"] = draw(st.sampled_from([["anomalies"], ["scores", "probabilities"], None]))
            b["version"] = draw(st.sampled_from([None, 3, 4, -1]))
            rows["dtype"] = draw(st.sampled_from(["f8", "f4", "f2"]))
        for _ in range(draw(st.integers(0, 2))):
            target = b if draw(st.booleans()) else rows
            target[draw(_keys)] = draw(_values)
    data = msgpack.packb(b, use_bin_type=True)
    if broken and draw(st.booleans()):  # flip a byte
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_frames(), min_size=1, max_size=4))
def test_fuzz_serves_only_what_msgspec_accepts_and_answers_alike(model, hot, bodies):
    stream = b"".join(frame(b) for b in bodies)
    pos, replies, entry, n_req, n_rows, calls, _ = serve(stream, hot)
    # Replay the frames the native path consumed: each must be a Detect that msgspec accepts
    # and the Python path would serve, and the replies must be the Python path's bytes.
    at, served, expected = 0, 0, b""
    for b in bodies:
        if at >= pos:
            break
        req = msgspec.msgpack.decode(b, type=wire.Request)
        assert type(req) is wire.Detect and type(req.rows) is wire.Rows
        assert req.detector == "cardio" and req.version in (None, 3)  # what `hot` serves
        assert req.want is None or set(req.want) <= {"scores", "labels"}  # what expected_reply builds
        expected += expected_reply(model, entry, req)
        at += 4 + len(b)
        served += 1
    assert at == pos and n_req == served
    assert (replies or b"") == expected


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_parser_fuzzed_under_address_sanitizer(tmp_path):
    """The C++ parser alone (cpp/tests/fuzz_fastpath_wire.cpp): 100k valid and mutated bodies,
    each in a heap buffer of its exact size, under AddressSanitizer and UBSan."""
    exe = tmp_path / "fuzz"
    build = subprocess.run(
        ["g++", "-std=c++17", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         "-Wall", "-Wextra", "-Werror", "-Ipython/src", "cpp/tests/fuzz_fastpath_wire.cpp", "-o", str(exe)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    if build.returncode != 0 and ("asan" in build.stderr or "ubsan" in build.stderr):
        pytest.skip(f"no sanitizer runtime for g++ here: {build.stderr.strip()[-200:]}")
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe), "100000"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    parsed, tried = (int(v) for v in run.stdout.split()[1::2])
    assert tried == 100000 and parsed > 20000  # the valid quarter, and mutants that stay valid


# -- end to end: the same stream through a daemon with and without the native path ------------

@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    root, model = cardio_model_folder(tmp_path_factory)
    fast = DaemonProcess(tmp_path_factory.mktemp("fast"), root)
    slow = DaemonProcess(tmp_path_factory.mktemp("slow"), root, "--no-fast-path")
    yield fast, slow, model
    assert fast.stop() == 0 and slow.stop() == 0


def _exchange(sock_path: str, stream: bytes, n_replies: int) -> dict:
    s = raw_connect(sock_path)
    s.sendall(stream)
    out = {}
    for _ in range(n_replies):
        r = msgpack.unpackb(read_frame(s), raw=False)
        out[r["id"]] = r
    s.close()
    return out


def test_daemon_answers_alike_with_and_without_the_native_path(daemons):
    fast, slow, model = daemons
    X = cardio()
    rng = np.random.default_rng(0)
    frames = []
    for i in range(1, 401):
        kind = rng.integers(0, 10)
        n = int(rng.integers(1, 80))
        B = X[rng.integers(0, len(X), n)]
        if kind == 0:
            b = body(id=i, rows=B.tolist())
        elif kind == 1:
            b = body(id=i, rows=raw_rows(np.where(rng.random(B.shape) < 0.01, np.nan, B)))
        elif kind == 2:
            b = body(id=i, rows=raw_rows(B), want=["anomalies", "probabilities", "scores"])
        elif kind == 3:
            b = {"op": "info", "id": i, "detector": "cardio"}
        elif kind == 4:
            b = body(id=i, rows=raw_rows(B, "f4"), want=["labels"])
        else:
            b = body(id=i, rows=raw_rows(B), **({"version": 1} if kind == 5 else {}))
        frames.append(frame(b))
    stream = b"".join(frames)
    for d in (fast, slow):  # load the detector, so that the native path can serve
        _exchange(d.sock, frame(body(id=0, rows=raw_rows(X[:1]))), 1)
    got_fast = _exchange(fast.sock, stream, len(frames))
    got_slow = _exchange(slow.sock, stream, len(frames))
    assert got_fast.keys() == got_slow.keys() == set(range(1, 401))
    for i in got_fast:
        a, b = got_fast[i], got_slow[i]
        if a.get("op") == "info":
            a["detector"].pop("loaded", None), b["detector"].pop("loaded", None)
        assert a == b, i
    # The native path served the small raw requests of one daemon, none of the other's.
    with pynomaly.Client(fast.sock) as c:
        assert c.stats().fast_path_requests >= 100
    with pynomaly.Client(slow.sock) as c:
        assert c.stats().fast_path_requests == 0


class _Transport:
    def __init__(self):
        self.written = bytearray()

    def write(self, data):
        self.written += data


class _Conn:
    closed = read_paused = eof = False

    def __init__(self):
        self.transport = _Transport()


def python_path_replies(scorer, stream: bytes, dtype: str) -> bytes:
    """What the daemon's Python path writes for these frames, scored as one batch: the same
    modules the daemon runs (request validation, the Scorer, the data plane, pynomaly_daemon.replies)."""
    from pynomaly_daemon.batching import matrix, request_rows
    from pynomaly_daemon.replies import Pending, detect_replies

    from pynomaly.serving import DataPlane

    conn, items, pos = _Conn(), [], 0
    while pos < len(stream):
        (n,) = struct.unpack_from(">I", stream, pos)
        req = msgspec.msgpack.decode(stream[pos + 4 : pos + 4 + n], type=wire.Request)
        data, rows, _ = request_rows(scorer.version, req.rows)
        items.append(Pending(conn, req, data, rows))
        pos += 4 + n
    X = matrix(b"".join(bytes(it.data) for it in items), sum(it.n for it in items), scorer.version.n_features, dtype)
    scores = scorer.score(X)
    result = DataPlane(None).decide(scorer, items, scores)
    detect_replies(scorer, items, result, msgspec.msgpack.Encoder(), lambda c, n: None,
                   lambda *a: pytest.fail(f"unexpected error reply {a}"))
    return bytes(conn.transport.written)


@pytest.mark.parametrize("want", [None, ["scores"], ["labels"], ["labels", "scores"]])
@pytest.mark.parametrize("dtype", ["f4", "f8"])
def test_fast_path_replies_equal_the_python_paths(model, want, dtype):
    """Byte for byte, for every field the native path writes, against the daemon's own
    Python path (not a re-implementation of it)."""
    scorer = Scorer.of(model, "cardio", 3)
    X = cardio()
    frames = b"".join(
        frame(body(id=7 + i, rows=raw_rows(X[i * 5 : i * 5 + n], dtype), **({"want": want} if want else {})))
        for i, n in enumerate([1, 3, 8, 1, 20])
    )
    pos, replies, served_forest, n_req, *_ = serve(frames, {("cardio", None): scorer.native})
    assert pos == len(frames) and n_req == 5 and served_forest is scorer.native
    assert replies == python_path_replies(scorer, frames, dtype)
