"""Clients that misbehave: each gets an error reply or a clean close, and everyone else is served.

Every case starts a real daemon with the limit under test made small, once with the native
connection loop (the default) and once with ``--no-native-loop`` (uvloop's connections).
"""

from __future__ import annotations

import os
import struct
import threading
import time

import msgpack
import numpy as np
import pytest

import pynomaly
from pynomaly.client import DaemonError

from _daemon_helpers import (DaemonProcess, cardio, cardio_model_folder, frame, is_closed, raw_connect, raw_rows,
                             read_frame, wait_until)

pynomaly_daemon = pytest.importorskip("pynomaly_daemon")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return cardio_model_folder(tmp_path_factory)


@pytest.fixture(params=["native-loop", "uvloop"])
def start(request, tmp_path, models):
    started = []
    loop_args = ("--no-native-loop",) if request.param == "uvloop" else ()

    def _start(*args: str) -> DaemonProcess:
        d = DaemonProcess(tmp_path, models[0], *loop_args, *args, name=f"d{len(started)}.sock")
        started.append(d)
        return d

    yield _start
    for d in started:
        assert d.stop() == 0


def detect_frame(i: int, X: np.ndarray, **extra) -> bytes:
    return frame({"op": "detect", "id": i, "detector": "cardio", **extra, "rows": raw_rows(X)})


def reply(s) -> dict:
    return msgpack.unpackb(read_frame(s))


def served_correctly(d: DaemonProcess, model) -> bool:
    X = cardio()[:50]
    with pynomaly.Client(d.sock, timeout=10) as c:
        return np.array_equal(c.detect("cardio", X).scores, model.decision_function(X))


def test_frame_too_large(start, models):
    d = start("--max-frame-mb", "0.01")  # 10 KiB
    s = raw_connect(d.sock)
    s.sendall(struct.pack(">I", 1_000_000) + b"\0" * 100)
    r = reply(s)
    assert (r["op"], r["id"], r["code"]) == ("error", 0, "frame_too_large") and "1000000" in r["message"]
    assert is_closed(s)
    assert served_correctly(d, models[1])
    s2 = raw_connect(d.sock)  # a frame just under the limit is fine
    s2.sendall(detect_frame(1, cardio()[:50]))
    assert reply(s2)["op"] == "detect"
    assert "frame_too_large" in d.log_text()


def test_memory_for_large_frames_is_bounded(start, models):
    """Clients that announce big frames and send them slowly cannot make the daemon hold more
    than --max-rx-mb: the one over the bound gets 'overloaded' and is closed."""
    d = start("--max-rx-mb", "2", "--max-frame-mb", "8")
    first = raw_connect(d.sock)
    first.sendall(struct.pack(">I", 1_500_000) + b"\0" * 1000)  # 1.5 MB reserved, body pending
    # The native loop may read the two connections on different threads: let the first
    # reservation be made before the second asks (a loaded machine reordered them once).
    time.sleep(0.2)
    second = raw_connect(d.sock)
    second.sendall(struct.pack(">I", 1_500_000) + b"\0" * 1000)
    r = reply(second)
    assert (r["op"], r["code"]) == ("error", "overloaded")
    assert is_closed(second)
    assert served_correctly(d, models[1])
    first.close()  # its reservation is released: a large frame fits again
    time.sleep(0.2)
    X = np.tile(cardio(), (4, 1))  # 7324 rows, ~1.2 MB frame
    with pynomaly.Client(d.sock) as c:
        np.testing.assert_array_equal(c.detect("cardio", X).scores, models[1].decision_function(X))


def test_slow_and_stalled_frames_time_out(start, models):
    d = start("--frame-timeout", "0.4")
    full = detect_frame(1, cardio()[:3])
    stalled = raw_connect(d.sock)
    stalled.sendall(full[:20])  # header and part of the body, then nothing
    trickle = raw_connect(d.sock)
    t0 = time.monotonic()
    for b in full[:-1]:  # one byte every 50 ms: never completes in time (slowloris)
        try:
            trickle.sendall(bytes([b]))
        except (BrokenPipeError, ConnectionResetError):
            break
        if time.monotonic() - t0 > 1.5:
            break
        time.sleep(0.05)
    assert served_correctly(d, models[1])
    for s in (stalled, trickle):
        r = reply(s)
        assert (r["op"], r["code"]) == ("error", "timeout")
        assert is_closed(s)


def test_idle_connections_are_closed(start, models):
    d = start("--idle-timeout", "0.3")
    s = raw_connect(d.sock)
    s.sendall(frame({"op": "health", "id": 1}))
    assert reply(s)["op"] == "health"
    assert is_closed(s, timeout=5)  # closed without a reply once idle
    assert served_correctly(d, models[1])


def test_client_survives_idle_close(start, models):
    """pynomaly.Client reconnects when the daemon closed its idle connection."""
    d = start("--idle-timeout", "0.2")
    with pynomaly.Client(d.sock) as c:
        first = c.detect("cardio", cardio()[:2]).scores
        time.sleep(0.8)  # the daemon closes the idle connection meanwhile
        np.testing.assert_array_equal(c.detect("cardio", cardio()[:2]).scores, first)


def test_truncated_frame_then_close(start, models):
    d = start()
    for cut in (2, 4, 30):
        s = raw_connect(d.sock)
        s.sendall(detect_frame(1, cardio()[:3])[:cut])
        s.close()
    assert served_correctly(d, models[1])
    assert wait_until(lambda: "in the middle of a frame" in d.log_text())


def test_too_many_connections(start, models):
    d = start("--max-connections", "3")
    held = [raw_connect(d.sock) for _ in range(3)]
    for i, s in enumerate(held):
        s.sendall(frame({"op": "health", "id": i}))
        assert reply(s)["id"] == i
    extra = raw_connect(d.sock)
    r = reply(extra)
    assert (r["op"], r["code"]) == ("error", "too_many_connections")
    assert is_closed(extra)
    for s in held:  # the three are still served
        s.sendall(frame({"op": "health", "id": 9}))
        assert reply(s)["id"] == 9
    held.pop().close()

    def served_once_the_slot_is_free():
        # The close reaches the daemon asynchronously (the native loop counts connections on
        # its own threads): until it does, a new client is still one too many.
        try:
            return served_correctly(d, models[1])
        except DaemonError as e:
            if e.code != "too_many_connections":
                raise
            return False

    assert wait_until(served_once_the_slot_is_free)


def test_bounded_in_flight_work_answers_busy(start, models):
    """Beyond --max-in-flight, requests get 'busy' at once; every request gets exactly one reply."""
    # Every detect goes to the thread pool, so the first of a burst is still in flight when the
    # others are read.
    d = start("--max-in-flight", "1", "--coalesce-rows", "0", "--idle-inline-rows", "0")
    model = models[1]
    X = cardio()
    s = raw_connect(d.sock)
    s.sendall(detect_frame(999, X[:1]))  # load the detector first
    assert reply(s)["op"] == "detect"
    s.sendall(b"".join(detect_frame(i, X[i : i + 1]) for i in range(1, 31)))
    replies = {}
    for _ in range(30):
        r = reply(s)
        replies[r["id"]] = r
    assert sorted(replies) == list(range(1, 31))
    busy = [r for r in replies.values() if r["op"] == "error"]
    ok = {i: r for i, r in replies.items() if r["op"] == "detect"}
    assert busy and ok
    assert all(r["code"] == "busy" for r in busy)
    for i, r in ok.items():
        np.testing.assert_array_equal(np.frombuffer(r["scores"], "<f8"), model.decision_function(X[i : i + 1]))
    assert served_correctly(d, model)


def test_client_that_never_reads_is_dropped(start, models):
    """Replies pile up unread: the daemon stops reading that client, then drops it; others are served."""
    d = start("--write-timeout", "0.5")
    X = np.ascontiguousarray(cardio(), "<f4")
    req = frame({"op": "detect", "id": 1, "detector": "cardio", "want": ["scores", "probabilities"],
                 "rows": {"dtype": "f4", "shape": list(X.shape), "data": X.tobytes()}})
    hog = raw_connect(d.sock, timeout=10)

    def flood():
        try:
            for _ in range(60):
                hog.sendall(req)
        except OSError:
            pass  # the daemon dropped us: expected

    t = threading.Thread(target=flood)
    t.start()
    assert wait_until(lambda: "not read" in d.log_text(), timeout=20)
    assert served_correctly(d, models[1])
    t.join(20)
    hog.close()


def test_peer_uid_allow_list(start, models):
    other = start("--allow-uid", str(os.getuid() + 1))
    s = raw_connect(other.sock)
    r = reply(s)
    assert (r["op"], r["code"]) == ("error", "forbidden") and str(os.getuid()) in r["message"]
    assert is_closed(s)
    mine = start("--allow-uid", str(os.getuid()), "--allow-uid", "12345")
    assert served_correctly(mine, models[1])
