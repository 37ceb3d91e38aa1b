"""The socket against other local users (issue 25): a squatted socket folder, a daemon of
another uid, and a peer that holds every connection.

Peers and daemons of other uids are processes started as root that drop to their uid before
they connect or listen (as in test_daemon_roles.py), so SO_PEERCRED reports real credentials.
Skipped when not root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import pynomaly
from pynomaly.client import DaemonUntrustedError

from _daemon_helpers import DaemonProcess, cardio, train

pytest.importorskip("pynomaly_daemon")

pytestmark = pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0,
                                reason="other users' folders, daemons and peers need root (chown, setuid)")

NOBODY = 65534
FLOOD_A, FLOOD_B = 54331, 54332  # uids without a role
ADMIN_UID = 54334


def _shared_folder(prefix: str) -> Path:
    """A temp folder other uids can reach (pytest's are 0700)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(folder, 0o755)
    return folder


@pytest.fixture(scope="module")
def models():
    from pynomaly_daemon import save_to_folder

    root = _shared_folder("pynomaly-models-")
    model = train(0)
    save_to_folder(root, "cardio", model)
    X = cardio()[:300]
    save_to_folder(root, "cardio-lof", pynomaly.LOF(n_neighbors=10, novelty=True).fit(X))
    save_to_folder(root, "cardio-knn", pynomaly.KNN(n_neighbors=10).fit(X))
    for p in root.rglob("*"):  # readable by a daemon of another uid
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    yield root, model
    shutil.rmtree(root)


# -- item 5: the socket's folder, and who listens on the socket -----------------------------------

def _squat(folder: Path, how: str) -> None:
    """Make ``folder`` what another user could have left in /tmp."""
    if how == "symlink":
        target = folder.with_name("elsewhere")
        target.mkdir(mode=0o700)
        folder.symlink_to(target)
        return
    folder.mkdir(mode=0o700)
    if how == "open-to-all":
        os.chmod(folder, 0o777)
    else:  # another user's
        os.chown(folder, NOBODY, NOBODY)


@pytest.mark.parametrize("how", ["open-to-all", "another-users", "symlink"])
def test_daemon_refuses_a_default_socket_folder_it_cannot_trust(tmp_path, models, monkeypatch, how):
    runtime = tmp_path / "run"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    folder = runtime / "pynomaly"
    _squat(folder, how)
    assert pynomaly.wire.default_socket_path() == str(folder / "daemon.sock")
    with pytest.raises(RuntimeError) as e:  # DaemonProcess's socket is the default one here
        DaemonProcess(folder, models[0], name="daemon.sock")
    assert f"the socket folder {folder}" in str(e.value)
    assert not (folder / "daemon.sock").exists()


def test_daemon_creates_and_uses_its_own_default_folder(tmp_path, models, monkeypatch):
    runtime = tmp_path / "run"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    folder = runtime / "pynomaly"
    os.mkdir(folder, 0o700)
    d = DaemonProcess(folder, models[0], name="daemon.sock")
    try:
        with pynomaly.Client(timeout=10) as c:  # the default path, checked and trusted
            assert c.health().status == "ok"
        # Someone opens the folder to all (or swaps it) while the daemon runs: the client
        # refuses it before sending anything.
        os.chmod(folder, 0o777)
        with pytest.raises(DaemonUntrustedError, match="writable by others"):
            with pynomaly.Client(timeout=10) as c:
                c.detect("cardio", cardio()[:5])
        os.chmod(folder, 0o700)
    finally:
        assert d.stop() == 0


def test_client_refuses_another_users_default_folder(tmp_path, monkeypatch):
    runtime = tmp_path / "run"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    _squat(runtime / "pynomaly", "another-users")
    with pytest.raises(DaemonUntrustedError, match=f"owned by uid {NOBODY}"):
        pynomaly.Client(timeout=5).health()


# A daemon as another user: started as root (the interpreter and the worktree are only readable
# so), it imports what it serves with (the daemon's modules, and pynomaly.serving.preload's),
# then drops to NOBODY and runs as `python -m pynomaly_daemon`.
_AS_USER = """
import os, sys
uid = int(sys.argv[1])
import uvloop, pynomaly_daemon.cli, pynomaly_daemon.server
from pynomaly.serving import preload
preload()
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
# Here nothing more can be read of the install (in CI the interpreter lies under /root), and a
# test run as root reads everything: refuse every later import of ours, as that install would.
class _Unreadable:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pynomaly", "pynomaly_daemon", "pynomaly_api"):
            raise ImportError(f"{name} imported after the daemon dropped to uid {uid}")
        return None
sys.meta_path.insert(0, _Unreadable())
sys.exit(pynomaly_daemon.cli.main(sys.argv[2:]))
"""


class _DaemonAs(DaemonProcess):
    def __init__(self, tmp: Path, models: Path, uid: int, *args: str):
        self.sock = str(tmp / "d.sock")
        self.log = tmp / "d.log"
        self._log_file = open(self.log, "a")
        self.proc = subprocess.Popen([sys.executable, "-c", _AS_USER, str(uid), "--socket", self.sock,
                                      "--models", str(models), *args],
                                     stdout=subprocess.PIPE, stderr=self._log_file, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"daemon did not start ({line!r}): {self.log.read_text()}")


@pytest.fixture
def nobodys_daemon(models):
    folder = _shared_folder("pynomaly-other-")
    os.chown(folder, NOBODY, NOBODY)
    d = _DaemonAs(folder, models[0], NOBODY)
    os.chmod(d.sock, 0o666)  # what is tested is who listens, not the file's mode
    yield d
    assert d.stop() == 0
    shutil.rmtree(folder)


def test_client_refuses_a_daemon_of_another_uid_unless_told(nobodys_daemon, models, monkeypatch):
    X = cardio()[:20]
    with pytest.raises(DaemonUntrustedError, match=f"runs as uid {NOBODY}, not as uid 0"):
        pynomaly.Client(nobodys_daemon.sock, timeout=10).detect("cardio", X)
    with pynomaly.Client(nobodys_daemon.sock, timeout=10, daemon_uid=NOBODY) as c:
        assert (c.detect("cardio", X).scores == models[1].decision_function(X)).all()
    with pynomaly.Client(nobodys_daemon.sock, timeout=10, daemon_uid="nobody") as c:
        assert c.health().status == "ok"
    monkeypatch.setenv("PYNOMALY_DAEMON_UID", str(NOBODY))
    with pynomaly.Client(nobodys_daemon.sock, timeout=10) as c:
        assert c.health().status == "ok"


def test_a_daemon_that_dropped_privileges_serves_every_native_kind(nobodys_daemon):
    # It can import nothing more after it started (_AS_USER): pynomaly.serving.preload must
    # have imported every loader and normaliser a request reaches.
    X = cardio()[:20]
    with pynomaly.Client(nobodys_daemon.sock, timeout=10, daemon_uid=NOBODY) as c:
        for name in ("cardio", "cardio-lof", "cardio-knn"):
            r = c.detect(name, X, want=("scores", "labels", "probabilities"))
            assert r.scores.shape == (20,) and np.isfinite(r.probabilities).all(), name
        assert {d.name for d in c.list()} == {"cardio", "cardio-lof", "cardio-knn"}


def test_async_client_refuses_a_daemon_of_another_uid_unless_told(nobodys_daemon):
    import asyncio

    async def health(**kw):
        async with pynomaly.AsyncClient(nobodys_daemon.sock, timeout=10, **kw) as c:
            return (await c.health()).status

    with pytest.raises(DaemonUntrustedError, match=f"runs as uid {NOBODY}"):
        asyncio.run(health())
    assert asyncio.run(health(daemon_uid=NOBODY)) == "ok"


def test_bad_daemon_uid_is_refused_with_what_is_accepted(monkeypatch):
    with pytest.raises(ValueError, match="a uid >= 0 or a user name"):
        pynomaly.Client("/nonexistent.sock", daemon_uid=-1)
    monkeypatch.setenv("PYNOMALY_DAEMON_UID", "no-such-user-here")
    with pytest.raises(ValueError, match="PYNOMALY_DAEMON_UID"):
        pynomaly.Client("/nonexistent.sock")


# -- item 6: connections per uid, and room kept for admins ----------------------------------------

# A peer that opens connections as `uid` until the daemon refuses one, holds the ones it got,
# prints {"held": n, "refused": message, "last": op of the last reply held}, and exits when its
# stdin closes.
_FLOOD = """
import json, os, socket, struct, sys
import msgpack
path, uid, most = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
held, refused, last = [], None, None
def reply(s):
    def exact(n):
        b = b""
        while len(b) < n:
            c = s.recv(n - len(b))
            if not c:
                raise EOFError
            b += c
        return b
    return msgpack.unpackb(exact(struct.unpack(">I", exact(4))[0]))
while len(held) < most:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(path)
    body = msgpack.packb({"op": "health", "id": 1})
    try:
        s.sendall(struct.pack(">I", len(body)) + body)
    except OSError:  # refused and closed already: its error frame is still there to read
        pass
    r = reply(s)
    if r.get("code") == "too_many_connections":
        refused = r["message"]
        break
    held.append(s)
    last = r["op"]
print(json.dumps({"held": len(held), "refused": refused, "last": last}), flush=True)
sys.stdin.read()
"""


class _Flood:
    def __init__(self, path: str, uid: int, most: int = 100):
        self.proc = subprocess.Popen([sys.executable, "-c", _FLOOD, path, str(uid), str(most)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
        assert line, "the flooding peer failed"
        self.result = json.loads(line)

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(20)
        self.proc.stdout.close()


@pytest.fixture(params=["native-loop", "uvloop"])
def limited(request, models):
    folder = _shared_folder("pynomaly-flood-")
    extra = ("--no-native-loop",) if request.param == "uvloop" else ()
    d = DaemonProcess(folder, models[0], *extra, "--max-connections", "10", "--max-connections-per-uid", "4",
                      "--admin-connections", "3", "--role", f"admin={ADMIN_UID}")
    os.chmod(d.sock, 0o666)
    yield d
    assert d.stop() == 0
    shutil.rmtree(folder)


def test_role_less_floods_leave_room_for_admins(limited, models):
    a = _Flood(limited.sock, FLOOD_A)
    b = _Flood(limited.sock, FLOOD_B)
    try:
        # One uid without a role holds at most --max-connections-per-uid ...
        assert a.result["held"] == 4
        assert "uid 54331 holds 4 connections" in a.result["refused"]
        assert "--max-connections-per-uid" in a.result["refused"]
        # ... and all of them together leave the last --admin-connections free.
        assert b.result["held"] == 3
        assert "at most 7 connections to peers without the admin role" in b.result["refused"]
        # The daemon's own uid and a peer with the admin role still connect and act.
        with pynomaly.Client(limited.sock, timeout=10) as c:
            assert c.health().status == "ok"
            assert c.reload() is not None
        admin = _Flood(limited.sock, ADMIN_UID, most=1)
        admin.stop()
        assert admin.result == {"held": 1, "refused": None, "last": "health"}
    finally:
        a.stop()
        b.stop()
    assert "too_many_connections" in limited.log_text()


def test_connection_limits_are_checked_at_start():
    from pynomaly_daemon.config import Config

    with pytest.raises(ValueError, match="--max-connections-per-uid must be a finite number > 0"):
        Config(max_connections_per_uid=0)
    with pytest.raises(ValueError, match="--admin-connections must be a finite number >= 0"):
        Config(admin_connections=-1)


@pytest.mark.parametrize("loop", ["native-loop", "uvloop"])
def test_a_refused_client_hears_why_even_mid_send(tmp_path, models, loop):
    """The daemon refuses a connection and closes it at once: a client still sending a large
    request meets a broken pipe, and reads the daemon's reason instead of reporting the pipe."""
    from pynomaly.client import DaemonError

    extra = ("--no-native-loop",) if loop == "uvloop" else ()
    d = DaemonProcess(tmp_path, models[0], *extra, "--max-connections", "1")
    try:
        held = pynomaly.Client(d.sock, timeout=10)
        assert held.health().status == "ok"
        X = np.tile(cardio(), (30, 1))  # ~10 MB: more than the socket takes before the daemon closes it
        for _ in range(3):
            with pytest.raises(DaemonError, match="too_many_connections: the daemon serves at most 1 connections"):
                pynomaly.Client(d.sock, timeout=10).detect("cardio", X)
        held.close()
    finally:
        assert d.stop() == 0
