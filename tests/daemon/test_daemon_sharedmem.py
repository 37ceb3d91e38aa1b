"""Rows passed in a sealed memfd (PROTOCOL.md, "Shared memory"): the clients' option, results
equal to in-process scoring, and every malformed or hostile way of passing descriptors, after
each of which the daemon still serves and holds no descriptor more than before."""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import socket

import msgpack
import numpy as np
import pytest

import pynomaly
from pynomaly.client import DaemonInputError

from _daemon_helpers import (
    DaemonProcess,
    cardio,
    cardio_model_folder,
    close_raw_sockets,
    frame,
    is_closed,
    raw_connect,
    read_frame,
    wait_until,
)

SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return cardio_model_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, models):
    d = DaemonProcess(tmp_path_factory.mktemp("shm"), models[0])
    yield d
    d.stop()


@pytest.fixture(autouse=True)
def _close_sockets():
    yield
    close_raw_sockets()


def n_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fds(d: DaemonProcess, baseline: int) -> bool:
    """The daemon's descriptors are back to baseline (closing a connection is asynchronous)."""
    return wait_until(lambda: n_fds(d.proc.pid) <= baseline, timeout=10)


def memfd_with(data: bytes, seals: int = SEALS, size: int | None = None) -> int:
    fd = os.memfd_create("test-rows", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, len(data) if size is None else size)
    os.pwrite(fd, data, 0)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def shm_request(req_id: int, X: np.ndarray, **rows) -> bytes:
    X = np.ascontiguousarray(X, "<f8")
    body = {"op": "detect", "id": req_id, "detector": "cardio", "want": ["scores"],
            "rows": {"dtype": "f8", "shape": list(X.shape), "memfd": 0, **rows}}
    return frame(body)


def send_with_fds(s: socket.socket, data: bytes, fds) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sent = s.sendmsg([data], anc)
    if sent < len(data):
        s.sendall(data[sent:])


def reply(s: socket.socket) -> dict:
    return msgpack.unpackb(read_frame(s), raw=False)


def scores_of(r: dict) -> np.ndarray:
    return np.frombuffer(r["scores"], "<f8")


def still_serves(d: DaemonProcess, models) -> None:
    X = cardio()[:50]
    with pynomaly.Client(d.sock, timeout=10, shared_memory=1) as c:
        np.testing.assert_array_equal(c.detect("cardio", X).scores, models[1].decision_function(X))


# -- the clients' option -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_client_shared_memory_equals_in_process(daemon, models, dtype):
    X = np.ascontiguousarray(np.tile(cardio(), (3, 1))[:5000], dtype)
    before = n_fds(daemon.proc.pid)
    with pynomaly.Client(daemon.sock, timeout=30, shared_memory=1000) as c:
        r = c.detect("cardio", X, want=["scores", "labels", "anomalies"])
        small = c.detect("cardio", X[:10])  # under the threshold: in the frame
    model = models[1]
    np.testing.assert_array_equal(r.scores, model.decision_function(X))
    np.testing.assert_array_equal(r.labels, model.predict(X))
    np.testing.assert_array_equal(small.scores, model.decision_function(X[:10]))
    assert settled_fds(daemon, before)


def test_async_client_shared_memory(daemon, models):
    X = np.tile(cardio(), (2, 1))
    before = n_fds(daemon.proc.pid)

    async def go():
        async with pynomaly.AsyncClient(daemon.sock, timeout=30, shared_memory=100) as c:
            # shared and in-frame requests in flight together on one connection
            return await asyncio.gather(*(c.detect("cardio", X[: 50 + 300 * i]) for i in range(8)))

    results = asyncio.run(go())
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r.scores, models[1].decision_function(X[: 50 + 300 * i]))
    assert settled_fds(daemon, before)


def test_shared_memory_option_is_checked():
    for bad in (0, -5, 2.5, "yes"):
        with pytest.raises(ValueError, match="shared_memory"):
            pynomaly.Client("/nonexistent.sock", shared_memory=bad)


def test_refused_shared_rows_raise_input_error(daemon):
    with pynomaly.Client(daemon.sock, timeout=10, shared_memory=1) as c:
        with pytest.raises(DaemonInputError, match="features"):
            c.detect("cardio", np.zeros((20, 3)))


# -- hostile and careless clients --------------------------------------------------------
def test_rows_read_from_the_memfd_in_order(daemon, models):
    """Pipelined frames pair with their descriptors in order; a frame with rows in it between
    them takes none."""
    X = cardio()
    parts = [X[:7], X[7:400], X[400:401]]
    s = raw_connect(daemon.sock)
    fds = [memfd_with(np.ascontiguousarray(p, "<f8").tobytes()) for p in parts]
    plain = frame({"op": "detect", "id": 9, "detector": "cardio", "want": ["scores"],
                   "rows": {"dtype": "f8", "shape": [2, X.shape[1]], "data": X[500:502].astype("<f8").tobytes()}})
    send_with_fds(s, shm_request(1, parts[0]) + plain, [fds[0]])
    send_with_fds(s, shm_request(2, parts[1]) + shm_request(3, parts[2]), fds[1:])
    for fd in fds:
        os.close(fd)
    got = {r["id"]: scores_of(r) for r in (reply(s) for _ in range(4))}
    model = models[1]
    for i, p in enumerate(parts, start=1):
        np.testing.assert_array_equal(got[i], model.decision_function(p))
    np.testing.assert_array_equal(got[9], model.decision_function(X[500:502]))


def _bad_fd_cases(tmp_path):
    X = cardio()[:10]
    data = np.ascontiguousarray(X, "<f8").tobytes()
    f = open(tmp_path / "rows.bin", "wb+")
    f.write(data)
    f.flush()
    r, w = os.pipe()
    os.write(w, data)
    a, b = socket.socketpair()
    return X, data, {
        # on tmpfs a regular file has seals (F_SEAL_SEAL only): refused for want of the two
        "regular file": (f.fileno(), ("not a memfd", "sealed")),
        "pipe": (r, "not a memfd"),
        "socket": (a.fileno(), "not a memfd"),
        "unsealed memfd": (memfd_with(data, seals=0), "sealed"),
        "memfd sealed against shrinking only": (memfd_with(data, seals=fcntl.F_SEAL_SHRINK), "sealed"),
        "memfd sealed against writes only": (memfd_with(data, seals=fcntl.F_SEAL_WRITE), "sealed"),
        "memfd smaller than the shape says": (memfd_with(data[:-8]), "holds"),
        "empty memfd": (memfd_with(b"", size=0), "holds"),
    }, [f, a, b, w]


def test_bad_descriptors_are_refused_and_closed(daemon, models, tmp_path):
    before = n_fds(daemon.proc.pid)
    X, _, cases, keep = _bad_fd_cases(tmp_path)
    s = raw_connect(daemon.sock)
    for i, (what, (fd, message)) in enumerate(cases.items(), start=1):
        send_with_fds(s, shm_request(i, X), [fd])
        r = reply(s)
        assert r["op"] == "error" and r["id"] == i, what
        assert r["code"] in ("bad_request", "bad_shape"), what
        expected = (message,) if isinstance(message, str) else message
        assert any(m in r["message"] for m in expected), (what, r["message"])
    # the connection is still served, in frame
    send_with_fds(s, frame({"op": "health", "id": 99}), [])
    assert reply(s)["id"] == 99
    owned = {keep[0].fileno(), keep[1].fileno()}
    for fd, _ in cases.values():
        if fd not in owned:
            os.close(fd)
    for k in keep:
        k.close() if hasattr(k, "close") else os.close(k)
    s.close()
    assert settled_fds(daemon, before)
    still_serves(daemon, models)


def test_frame_without_its_descriptor(daemon, models):
    before = n_fds(daemon.proc.pid)
    X = cardio()[:5]
    s = raw_connect(daemon.sock)
    s.sendall(shm_request(1, X))
    r = reply(s)
    assert r["code"] == "bad_request" and "no descriptor" in r["message"]
    # a size lie the other way: the shape asks for more rows than the memfd holds
    fd = memfd_with(np.ascontiguousarray(X, "<f8").tobytes())
    send_with_fds(s, shm_request(2, cardio()[:6]), [fd])
    os.close(fd)
    r = reply(s)
    assert r["code"] == "bad_shape" and "holds" in r["message"]
    s.close()
    assert settled_fds(daemon, before)
    still_serves(daemon, models)


@pytest.mark.parametrize("rows", [
    {"data": b"\0" * 8},           # both data and memfd
    {"memfd": 1},                  # only descriptor 0 exists
    {"memfd": -1},
    {"dtype": "f2"},
    {"shape": [0, 21]},
    {"extra": 1},
])
def test_malformed_shared_requests_take_their_descriptor(daemon, models, rows):
    """A refused frame that names a memfd still uses up its descriptor: the next frame pairs
    with its own."""
    before = n_fds(daemon.proc.pid)
    X = cardio()[:4]
    data = np.ascontiguousarray(X, "<f8").tobytes()
    s = raw_connect(daemon.sock)
    bad_fd, good_fd = memfd_with(data), memfd_with(data)
    send_with_fds(s, shm_request(1, X, **rows), [bad_fd])
    send_with_fds(s, shm_request(2, X), [good_fd])
    os.close(bad_fd)
    os.close(good_fd)
    first, second = reply(s), reply(s)
    assert first["op"] == "error" and first["code"] in ("bad_request", "bad_shape", "bad_dtype")
    assert second["op"] == "detect", second
    np.testing.assert_array_equal(scores_of(second), models[1].decision_function(X))
    s.close()
    assert settled_fds(daemon, before)


def test_too_many_descriptors_in_one_message(daemon, models):
    before = n_fds(daemon.proc.pid)
    s = raw_connect(daemon.sock)
    fds = [memfd_with(b"x" * 8) for _ in range(40)]
    send_with_fds(s, frame({"op": "health", "id": 1}), fds)
    for fd in fds:
        os.close(fd)
    r = reply(s)
    assert r["op"] == "error" and "too many file descriptors" in r["message"]
    assert is_closed(s)
    s.close()
    assert settled_fds(daemon, before)
    still_serves(daemon, models)


def test_descriptors_that_no_frame_takes(daemon, models):
    """Descriptors sent with frames that do not name one pile up to the limit, then the client
    is refused; below it they are closed with the connection."""
    before = n_fds(daemon.proc.pid)
    s = raw_connect(daemon.sock)
    fd = memfd_with(b"x" * 8)
    for i in range(3):
        send_with_fds(s, frame({"op": "health", "id": i}), [fd, fd])
        assert reply(s)["id"] == i
    s.close()
    assert settled_fds(daemon, before)
    s = raw_connect(daemon.sock)
    for i in range(10):
        try:
            send_with_fds(s, frame({"op": "health", "id": i}), [fd, fd, fd])
        except (BrokenPipeError, ConnectionResetError):
            break
    os.close(fd)
    replies = []
    try:
        while True:
            replies.append(reply(s))
    except (EOFError, ConnectionResetError):
        pass
    assert any(r["op"] == "error" and "too many file descriptors" in r["message"] for r in replies)
    s.close()
    assert settled_fds(daemon, before)
    still_serves(daemon, models)


def test_descriptor_closed_by_the_client_right_after_sending(daemon, models):
    """The client's close does not affect the daemon's copy: the rows are still read."""
    X = cardio()[:30]
    s = raw_connect(daemon.sock)
    fd = memfd_with(np.ascontiguousarray(X, "<f8").tobytes())
    send_with_fds(s, shm_request(1, X), [fd])
    os.close(fd)
    np.testing.assert_array_equal(scores_of(reply(s)), models[1].decision_function(X))


def test_client_gone_with_descriptors_in_flight(daemon, models):
    before = n_fds(daemon.proc.pid)
    X = cardio()[:30]
    for _ in range(20):
        s = raw_connect(daemon.sock)
        fd = memfd_with(np.ascontiguousarray(X, "<f8").tobytes())
        half = shm_request(1, X)
        send_with_fds(s, half[: len(half) // 2], [fd])  # the frame never completes
        os.close(fd)
        s.close()
    assert settled_fds(daemon, before)
    still_serves(daemon, models)


def test_descriptors_with_a_partial_garbage_frame(daemon, models):
    before = n_fds(daemon.proc.pid)
    s = raw_connect(daemon.sock)
    fd = memfd_with(b"\0" * 64)
    send_with_fds(s, b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1", [fd])  # not MessagePack
    os.close(fd)
    r = reply(s)
    assert r["op"] == "error" and r["code"] == "bad_request"
    s.close()
    assert settled_fds(daemon, before)
    still_serves(daemon, models)


def test_uvloop_path_refuses_shared_memory(tmp_path, models):
    d = DaemonProcess(tmp_path, models[0], "--no-native-loop")
    try:
        X = cardio()[:10]
        with pynomaly.Client(d.sock, timeout=10, shared_memory=1) as c:
            with pytest.raises(DaemonInputError, match="native connection loop"):
                c.detect("cardio", X)
        with pynomaly.Client(d.sock, timeout=10) as c:  # the connection and the daemon go on
            np.testing.assert_array_equal(c.detect("cardio", X).scores, models[1].decision_function(X))
    finally:
        assert d.stop() == 0


def test_client_falls_back_to_the_frame_when_the_kernel_will_not_seal(daemon, models, monkeypatch):
    """F_SEAL_WRITE can fail with EBUSY while fresh pages hold transient references: the
    client then sends the rows in the frame, and the result is the same."""
    import errno

    real = fcntl.fcntl
    calls = []

    def busy(fd, cmd, *args):
        if cmd == fcntl.F_ADD_SEALS:
            calls.append(fd)
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real(fd, cmd, *args)

    monkeypatch.setattr(fcntl, "fcntl", busy)  # the module the client seals with
    X = cardio()[:300]
    expected = models[1].decision_function(X)
    mine = len(os.listdir("/proc/self/fd"))
    with pynomaly.Client(daemon.sock, timeout=10, shared_memory=1) as c:
        np.testing.assert_array_equal(c.detect("cardio", X).scores, expected)
    assert len(calls) == 3
    assert len(os.listdir("/proc/self/fd")) == mine  # the unsealed memfd was closed
