"""Shared by the daemon tests: real fitted detectors in a model folder and a real daemon process."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import pynomaly
from pynomaly.store.datasets import load_cardio


def cardio() -> np.ndarray:
    return load_cardio()[0]


def train(seed: int, n_estimators: int = 100) -> "pynomaly.IsolationForest":
    return pynomaly.IsolationForest(n_estimators=n_estimators, contamination=0.1, random_state=seed).fit(cardio())


def cardio_model_folder(tmp_path_factory) -> "tuple[Path, pynomaly.IsolationForest]":
    """A model folder holding version 1 of detector "cardio" (seed 0), and that model."""
    from pynomaly_daemon import save_to_folder

    root = tmp_path_factory.mktemp("models")
    model = train(0)
    save_to_folder(root, "cardio", model)
    return root, model


class DaemonProcess:
    """``python -m pynomaly_daemon`` on a socket in a temp folder, serving a model folder
    (or, with ``models=None``, what ``args`` say, e.g. ``--home DIR``)."""

    def __init__(self, tmp: Path, models: Path, *args: str, name: str = "d.sock"):
        self.sock = str(tmp / name)
        self.log = tmp / f"{name}.log"
        self._log_file = open(self.log, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pynomaly_daemon", "--socket", self.sock,
             *(["--models", str(models)] if models is not None else []), *args],
            stdout=subprocess.PIPE, stderr=self._log_file, text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self._log_file.close()
            raise RuntimeError(f"daemon did not start ({line!r}): {self.log.read_text()}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self._log_file.close()

    def log_text(self) -> str:
        return self.log.read_text()


_OPEN: list = []


def raw_connect(path: str, timeout: float = 5.0) -> socket.socket:
    """A plain socket to the daemon; closed by close_raw_sockets() after each test."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    _OPEN.append(s)
    s.settimeout(timeout)
    s.connect(path)
    return s


def close_raw_sockets() -> None:
    while _OPEN:
        _OPEN.pop().close()


def frame(obj) -> bytes:
    """One frame as PROTOCOL.md describes it, built with plain msgpack (no pynomaly code): the
    4-byte big-endian length, then the body (obj, or obj encoded when it is not bytes yet)."""
    import msgpack

    body = obj if isinstance(obj, (bytes, bytearray)) else msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def raw_rows(X, dtype: str = "f8") -> dict:
    """A detect request's ``rows`` as raw little-endian values ("f4" or "f8")."""
    X = np.ascontiguousarray(X, "<f4" if dtype == "f4" else "<f8")
    return {"dtype": dtype, "shape": list(X.shape), "data": X.tobytes()}


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def read_frame(s: socket.socket) -> bytes:
    (n,) = struct.unpack(">I", recv_exact(s, 4))
    return recv_exact(s, n)


def is_closed(s: socket.socket, timeout: float = 5.0) -> bool:
    """True when the peer closed the connection (EOF or reset) within timeout."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def wait_until(cond, timeout: float = 10.0, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def healthy(path: str) -> bool:
    """A fresh client is served: health answers and a detect equals in-process scoring."""
    with pynomaly.Client(path, timeout=10) as c:
        return c.health().status in ("ok", "draining")


def expected_reply(model, e, req) -> bytes:
    """The frame the Python path sends for detect request ``req`` (a ``wire.Detect``, or a frame
    to decode) served by ``e`` (a Scorer's native entry): the library's scores, labels and
    explanation in a DetectReply encoded by msgspec (what the native paths must send, byte for byte)."""
    import msgspec

    from pynomaly import wire

    if isinstance(req, (bytes, bytearray)):
        req = msgspec.msgpack.decode(bytes(req)[4:], type=wire.Request)
    X = np.frombuffer(req.rows.data, "<f4" if req.rows.dtype == "f4" else "<f8").reshape(req.rows.shape)
    s = model.decision_function(X)
    want = ["scores", "labels"] if req.want is None else req.want
    r = wire.DetectReply(req.id, e.name, e.version, len(X), e.threshold)
    if "scores" in want:
        r.scores = s.tobytes()
    if "labels" in want:
        r.labels = (s > e.threshold).astype(np.uint8).tobytes()
    if "attributions" in want:
        x = model.explain(X, method=req.explain_method)
        r.attributions, r.explain_method, r.explain_output = x.values.tobytes(), x.method, x.output
    return frame(msgspec.msgpack.encode(r))
