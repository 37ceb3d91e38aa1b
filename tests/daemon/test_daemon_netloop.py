"""The daemon's native connection loop (python/src/netloop.cpp, daemon/pynomaly_daemon/netloop.py).

It owns the sockets by default: it must answer byte for byte as the Python path does (for the
frames it scores itself and for those it hands over), on one connection or many, pipelined or
not, and keep every hardening promise of PROTOCOL.md. test_daemon_hardening.py runs each
misbehaving client against both loops; the cases here are the loop's own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading

import msgpack
import msgspec
import numpy as np
import pytest

import pynomaly
from pynomaly import wire

from conftest import REPO
from _daemon_helpers import (DaemonProcess, cardio, cardio_model_folder, frame, is_closed, raw_connect, raw_rows,
                             read_frame, wait_until)

pynomaly_daemon = pytest.importorskip("pynomaly_daemon")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return cardio_model_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, models):
    """The same folder served by the native loop and by the Python path alone (uvloop, no fast path)."""
    native = DaemonProcess(tmp_path_factory.mktemp("native"), models[0])
    python = DaemonProcess(tmp_path_factory.mktemp("python"), models[0], "--no-native-loop", "--no-fast-path")
    for d in (native, python):  # loaded, so that the native loop scores what it can
        with pynomaly.Client(d.sock) as c:
            c.detect("cardio", cardio()[:1])
    yield native, python, models[1]
    assert native.stop() == 0 and python.stop() == 0


@pytest.fixture
def start(tmp_path, models):
    started = []

    def _start(*args: str) -> DaemonProcess:
        d = DaemonProcess(tmp_path, models[0], *args, name=f"n{len(started)}.sock")
        started.append(d)
        return d

    yield _start
    for d in started:
        assert d.stop() == 0


def detect(i, X, dtype="f8", **fields) -> dict:
    return {"op": "detect", "id": i, "detector": "cardio", **fields, "rows": raw_rows(X, dtype)}


def mixed_frames(n: int, seed: int, first_id: int = 1) -> list:
    """Frames of every kind, fast and not: small raw rows (the loop scores them), nested lists,
    large raw rows, probabilities and anomalies, other ops, and requests that fail."""
    X = cardio()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(first_id, first_id + n):
        kind = int(rng.integers(0, 14))
        B = X[rng.integers(0, len(X), int(rng.integers(1, 40)))]
        if kind == 0:
            b = {"op": "detect", "id": i, "detector": "cardio", "rows": B[:3].tolist()}
        elif kind == 1:
            b = detect(i, np.where(rng.random(B.shape) < 0.05, np.nan, B))
        elif kind == 2:
            b = detect(i, B, want=["anomalies", "probabilities", "scores"])
        elif kind == 3:
            b = {"op": "info", "id": i, "detector": "cardio"}
        elif kind == 4:
            b = detect(i, X[rng.integers(0, len(X), 700)])  # a large frame: the Python path's pool
        elif kind == 5:
            b = {"op": "detect", "id": i, "detector": "nope", "rows": raw_rows(B)}
        elif kind == 6:
            b = detect(i, B[:, :20])
        elif kind == 7:
            b = detect(i, B, "f4", want=["labels"])
        elif kind == 8:
            b = detect(i, B, version=1)
        elif kind == 9:
            b = detect(i, B, version=7)
        else:
            b = detect(i, B, want=["scores"] if kind % 2 else None)
        out.append(frame(b))
    return out


def exchange(path: str, stream: bytes, n: int) -> dict:
    """Send a pipelined stream at once and read n replies: id -> raw reply body."""
    s = raw_connect(path, timeout=30)
    # Sent from a thread while replies are read: a daemon stops reading a client that leaves
    # its replies unread, so one large stream sent before reading would stall.
    t = threading.Thread(target=s.sendall, args=(stream,))
    t.start()
    got = {}
    for _ in range(n):
        body = read_frame(s)
        got[msgpack.unpackb(body)["id"]] = body
    t.join()
    s.close()
    return got


def same_reply(a: bytes, b: bytes) -> bool:
    """Byte-equal, but for what legitimately differs between two daemons: info's "loaded"."""
    if a == b:
        return True
    da, db = msgpack.unpackb(a), msgpack.unpackb(b)
    if da.get("op") == "info" == db.get("op"):
        da["detector"].pop("loaded", None), db["detector"].pop("loaded", None)
    return da == db


def test_the_native_loop_serves_by_default(pair):
    native, python, _ = pair
    assert "native loop of" in native.log_text()
    assert "uvloop connections" in python.log_text()
    with pynomaly.Client(native.sock) as c:
        before = c.stats()
        for _ in range(5):
            c.detect("cardio", cardio()[:2])
        after = c.stats()
    assert after.fast_path_requests == before.fast_path_requests + 5
    assert after.requests["detect"] == before.requests["detect"] + 5
    assert after.rows_scored == before.rows_scored + 10
    assert after.connections >= 1 and after.connections_total > before.connections_total - 1


def test_requests_up_to_idle_inline_rows_are_scored_by_the_loop(pair):
    """A 1000-row raw request is answered by the loop thread itself (rows read in place), byte
    for byte as the Python path answers it; one with a NaN is handed over and named."""
    native, python, model = pair
    X = cardio()[:1000]
    f = frame(detect(77, X, want=["labels", "scores"]))
    with pynomaly.Client(native.sock) as c:
        before = c.stats()
        assert exchange(native.sock, f, 1) == exchange(python.sock, f, 1)
        after = c.stats()
        assert after.fast_path_requests == before.fast_path_requests + 1
        assert after.rows_scored == before.rows_scored + 1000
        bad = X.copy()
        bad[999, 3] = np.nan
        with pytest.raises(pynomaly.client.DaemonInputError) as e:
            c.detect("cardio", bad)
        assert e.value.code == "bad_value" and "row 999" in e.value.message


def test_mixed_pipelined_frames_answer_byte_for_byte_as_the_python_path(pair):
    native, python, _ = pair
    frames = mixed_frames(600, seed=1)
    stream = b"".join(frames)
    got_native = exchange(native.sock, stream, len(frames))
    got_python = exchange(python.sock, stream, len(frames))
    assert got_native.keys() == got_python.keys() == set(range(1, 601))
    differ = [i for i in got_native if not same_reply(got_native[i], got_python[i])]
    assert differ == []
    with pynomaly.Client(native.sock) as c:
        assert c.stats().fast_path_requests > 100  # the loop itself answered the small raw ones


def test_frames_split_at_every_byte_are_answered_alike(pair):
    """A stream trickled in small writes (frames cut anywhere) is answered as one sent at once."""
    native, python, _ = pair
    frames = mixed_frames(40, seed=2, first_id=1000)
    stream = b"".join(frames)
    expected = exchange(python.sock, stream, len(frames))
    s = raw_connect(native.sock, timeout=30)
    rng = np.random.default_rng(0)
    at = 0
    while at < len(stream):
        step = int(rng.choice([1, 3, 7, 100, 5000]))
        s.sendall(stream[at : at + step])
        at += step
    got = {}
    for _ in frames:
        body = read_frame(s)
        got[msgpack.unpackb(body)["id"]] = body
    assert got.keys() == expected.keys()
    assert all(same_reply(got[i], expected[i]) for i in got)


def test_many_connections_at_once(pair):
    """300 connections, each pipelining fast and handed-over frames, served side by side."""
    native, _, model = pair
    X = cardio()
    expected_all = model.decision_function(X)
    want = {}
    socks = []
    for k in range(300):
        s = raw_connect(native.sock, timeout=30)
        rng = np.random.default_rng(k)
        stream, ids = [], {}
        for j in range(12):
            n = int(rng.choice([1, 1, 2, 5, 64, 65, 300]))
            idx = rng.integers(0, len(X), n)
            i = k * 100 + j
            ids[i] = idx
            stream.append(frame(detect(i, X[idx], want=["scores"])))
        s.sendall(b"".join(stream))
        want[s] = ids
        socks.append(s)
    failures = []
    for s in socks:
        for _ in range(len(want[s])):
            r = msgpack.unpackb(read_frame(s))
            idx = want[s].pop(r["id"], None)
            if idx is None or r["op"] != "detect" or not np.array_equal(np.frombuffer(r["scores"], "<f8"),
                                                                         expected_all[idx]):
                failures.append(r.get("id"))
    assert failures == []
    with pynomaly.Client(native.sock) as c:
        assert c.stats().connections_total >= 300


def test_replies_after_shutdown_of_the_writing_side(pair):
    """A client that sends, then shuts down its writing side, gets every reply and then EOF."""
    native, python, _ = pair
    frames = mixed_frames(60, seed=3, first_id=5000)
    expected = exchange(python.sock, b"".join(frames), len(frames))
    s = raw_connect(native.sock, timeout=30)
    s.sendall(b"".join(frames))
    s.shutdown(socket.SHUT_WR)
    got = {}
    for _ in frames:
        body = read_frame(s)
        got[msgpack.unpackb(body)["id"]] = body
    assert all(same_reply(got[i], expected[i]) for i in expected)
    assert is_closed(s)


def test_connection_level_error_bytes_equal_msgspec(start):
    d = start("--max-frame-mb", "0.01")
    s = raw_connect(d.sock)
    s.sendall(struct.pack(">I", 1_000_000) + b"\0" * 10)
    body = read_frame(s)
    r = msgpack.unpackb(body)
    assert body == msgspec.msgpack.encode(wire.Error(0, "frame_too_large", r["message"]))
    assert r["message"] == f"frame of 1000000 bytes exceeds the maximum of {int(0.01 * 2**20)}"
    assert is_closed(s)


def test_a_client_killed_mid_frame_releases_what_it_held(start, models):
    """A client killed in the middle of a large frame: logged, its receive memory released (a
    frame of the same size fits again under a bound that holds one), the others served."""
    d = start("--max-rx-mb", "2", "--max-frame-mb", "8")
    X = np.tile(cardio(), (5, 1))  # 9155 rows: a 1.5 MB frame
    big = frame(detect(1, X, want=["scores"]))
    code = (
        "import socket, os, signal, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "data = open(sys.argv[2], 'rb').read()\n"
        "s.sendall(data[: len(data) // 2])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    path = d.log.parent / "big.frame"
    path.write_bytes(big)
    for cut_small in (False, True):
        payload = path if not cut_small else d.log.parent / "small.frame"
        if cut_small:
            payload.write_bytes(frame(detect(2, cardio()[:2]))[:30])
        p = subprocess.run([sys.executable, "-c", code, d.sock, str(payload)], timeout=60)
        assert p.returncode == -signal.SIGKILL
    assert wait_until(lambda: d.log_text().count("in the middle of a frame") >= 2)
    s = raw_connect(d.sock, timeout=30)
    s.sendall(big)
    r = msgpack.unpackb(read_frame(s))
    assert r["op"] == "detect"
    np.testing.assert_array_equal(np.frombuffer(r["scores"], "<f8"), models[1].decision_function(X))


def test_fast_replies_left_unread_stop_reading_then_drop_the_client(start, models):
    """Replies the loop writes itself pile up unread: it stops reading that client, then drops it."""
    d = start("--write-timeout", "0.5")
    req = frame(detect(1, cardio()[:64], want=["scores", "labels"]))
    hog = raw_connect(d.sock, timeout=10)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    def flood():
        try:
            for _ in range(20000):
                hog.sendall(req)
        except OSError:
            pass  # dropped (or our own timeout): expected

    t = threading.Thread(target=flood)
    t.start()
    assert wait_until(lambda: "not read" in d.log_text(), timeout=30)
    X = cardio()[:50]
    with pynomaly.Client(d.sock, timeout=10) as c:
        np.testing.assert_array_equal(c.detect("cardio", X).scores, models[1].decision_function(X))
        assert c.stats().errors.get("timeout", 0) >= 1
    t.join(30)


def test_bounded_in_flight_work_answers_busy_through_the_loop(start, models):
    """Handed-over requests are admitted by the Python path as before: beyond --max-in-flight
    they get 'busy' at once, and every request gets exactly one reply."""
    d = start("--max-in-flight", "1", "--idle-inline-rows", "0")
    X = cardio()
    s = raw_connect(d.sock, timeout=30)
    s.sendall(frame(detect(999, X[:1])))
    assert msgpack.unpackb(read_frame(s))["op"] == "detect"
    s.sendall(b"".join(frame(detect(i, X[i : i + 200])) for i in range(1, 31)))  # > 64 rows: handed over
    replies = {}
    for _ in range(30):
        r = msgpack.unpackb(read_frame(s))
        replies[r["id"]] = r
    assert sorted(replies) == list(range(1, 31))
    busy = [r for r in replies.values() if r["op"] == "error"]
    assert busy and all(r["code"] == "busy" for r in busy)
    for i, r in replies.items():
        if r["op"] == "detect":
            np.testing.assert_array_equal(np.frombuffer(r["scores"], "<f8"), models[1].decision_function(X[i : i + 200]))
    assert "native loop of" in d.log_text()


def test_per_connection_bound_pauses_reading_and_resumes(start, models):
    """With at most 2 requests per connection with the Python path, a pipeline of 40 handed-over
    requests is read in steps and fully answered."""
    d = start("--conn-max-in-flight", "2", "--idle-inline-rows", "0")
    X = cardio()
    s = raw_connect(d.sock, timeout=30)
    s.sendall(b"".join(frame(detect(i, X[i : i + 100], want=["scores"])) for i in range(40)))
    got = {}
    for _ in range(40):
        r = msgpack.unpackb(read_frame(s))
        got[r["id"]] = r
    assert sorted(got) == list(range(40))
    for i, r in got.items():
        np.testing.assert_array_equal(np.frombuffer(r["scores"], "<f8"), models[1].decision_function(X[i : i + 100]))


def test_sigterm_drains_the_native_loop(start, models):
    """Requests already sent, fast and handed over, are answered; new connections are refused."""
    d = start()
    frames = mixed_frames(80, seed=4)
    s = raw_connect(d.sock, timeout=30)
    s.sendall(frame(detect(0, cardio()[:1])))
    read_frame(s)
    s.sendall(b"".join(frames))
    d.signal(signal.SIGTERM)
    ids = set()
    for _ in frames:
        ids.add(msgpack.unpackb(read_frame(s))["id"])
    assert ids == set(range(1, 81))
    assert is_closed(s, timeout=15)
    assert d.proc.wait(20) == 0
    assert not os.path.exists(d.sock)


def test_one_thread_or_several_answer_alike(start, pair):
    _, python, _ = pair
    frames = mixed_frames(120, seed=5)
    stream = b"".join(frames)
    expected = exchange(python.sock, stream, len(frames))
    for threads in ("1", "3"):
        d = start("--net-threads", threads)
        with pynomaly.Client(d.sock) as c:
            c.detect("cardio", cardio()[:1])
        results = []

        def one():
            results.append(exchange(d.sock, stream, len(frames)))

        ts = [threading.Thread(target=one) for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(results) == 6
        for got in results:
            assert got.keys() == expected.keys()
            assert all(same_reply(got[i], expected[i]) for i in got)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize("sanitizers", ["address,undefined", "thread"])
def test_loop_alone_under_sanitizers(tmp_path, sanitizers):
    """The loop without Python (cpp/tests/stress_netloop.cpp): a host thread, clients that
    pipeline, cut frames anywhere, vanish mid-frame, a model swapped under them, and stop()
    under load, built with AddressSanitizer + UBSan and with ThreadSanitizer."""
    exe = tmp_path / "stress"
    build = subprocess.run(
        ["g++", "-std=c++17", "-O1", "-g", f"-fsanitize={sanitizers}", "-fno-sanitize-recover=all", "-Wall", "-Wextra",
         "-Werror", "-Wno-maybe-uninitialized", "-ffp-contract=off", "-pthread", "-Icpp", "-Ipython/src",
         "cpp/tests/stress_netloop.cpp", "python/src/netloop.cpp", "cpp/common.cpp", "cpp/iforest.cpp",
         "cpp/iforest_kernels.cpp", "cpp/explain.cpp", "-o", str(exe)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    if build.returncode != 0 and ("asan" in build.stderr or "tsan" in build.stderr or "ubsan" in build.stderr):
        pytest.skip(f"no sanitizer runtime for g++ here: {build.stderr.strip()[-200:]}")
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe), "16", "120"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    word, checked, handed = run.stdout.split()
    assert word == "ok" and int(checked) == 16 * 120 and int(handed) > 0
