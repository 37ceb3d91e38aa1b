"""Roles on the socket (``--role``), against real peers with different uids and gids.

The daemon runs as root (the test's user); each peer is a process that drops to another uid
and gid (setgroups/setgid/setuid) before it connects, so SO_PEERCRED reports real
credentials. Every case runs on the native connection loop (whose fast path must not answer a
peer without the detect role) and on the uvloop path. Skipped when not root.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

import msgpack
import numpy as np
import pytest

from _daemon_helpers import DaemonProcess, cardio, frame, raw_rows, read_frame, wait_until

service = pytest.importorskip("pynomaly.service")
pytest.importorskip("pynomaly_daemon")

pytestmark = pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0,
                                reason="peers with other uids need root (setuid in the peer process)")

DETECT_UID = 54321          # detect role by uid
GROUP_GID = 54400           # detect role by gid
GROUP_UID = 54322
NOBODY_UID = 54323          # no role
ADMIN_UID = 54324           # admin role
LEARN_UID = 54325           # learn role


# The peer: a fresh interpreter started as root (so it can start at all: the interpreter lives
# under /root) that imports what it needs, then drops to the peer's uid and gid before it
# connects. Not a fork of the test process: threads of JAX or torch loaded by other tests make
# fork unsafe there.
_PEER = """
import json, os, socket, struct, sys
import msgpack
sock_path, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
requests = msgpack.unpackb(sys.stdin.buffer.read(), raw=False)
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
assert os.getuid() == uid and os.getgid() == gid
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
s.connect(sock_path)
def exact(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("closed")
        b += c
    return b
out = []
for req in requests:
    body = msgpack.packb(req, use_bin_type=True)
    s.sendall(struct.pack(">I", len(body)) + body)
    reply = msgpack.unpackb(exact(struct.unpack(">I", exact(4))[0]), raw=False)
    out.append({k: (v.hex() if isinstance(v, bytes) else v) for k, v in reply.items()})
s.close()
sys.stdout.write(json.dumps(out))
"""


def as_peer(sock_path: str, uid: int, gid: int, requests: list) -> list:
    """Send ``requests`` (dicts) on one connection as uid/gid, one at a time; the replies."""
    p = subprocess.run([sys.executable, "-c", _PEER, sock_path, str(uid), str(gid)],
                       input=msgpack.packb(requests, use_bin_type=True), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = tmp_path_factory.mktemp("home") / "home"
    service.train(h, "cardio", cardio(), "IsolationForest", {"random_state": 0, "n_estimators": 50})
    service.train(h, "stream", cardio()[:300], "HalfSpaceTrees", {"seed": 0, "window_size": 50})
    return h


@pytest.fixture(params=["native-loop", "uvloop"])
def daemon(request, home):
    # A folder other uids can reach (pytest's tmp folders are 0700), and the socket opened to
    # them: what is tested is the roles, not the file mode.
    d_dir = tempfile.mkdtemp(prefix="pynomaly-roles-")
    os.chmod(d_dir, 0o755)
    from pathlib import Path

    extra = ("--no-native-loop",) if request.param == "uvloop" else ()
    d = DaemonProcess(Path(d_dir), None, "--home", str(home), *extra,
                      "--role", f"detect={DETECT_UID},@{GROUP_GID}", "--role", f"admin={ADMIN_UID}",
                      "--role", f"learn={LEARN_UID}")
    os.chmod(d.sock, 0o666)
    yield d
    assert d.stop() == 0


def detect(i: int, n: int = 2) -> dict:
    return {"op": "detect", "id": i, "detector": "cardio", "want": ["scores"], "rows": raw_rows(cardio()[:n])}


def test_detect_role_may_read_not_administer(daemon):
    expected = service.load_for_scoring(daemon_home(daemon), "cardio").model.decision_function(cardio()[:2])
    for uid, gid in ((DETECT_UID, DETECT_UID), (GROUP_UID, GROUP_GID)):
        replies = as_peer(daemon.sock, uid, gid, [
            {"op": "health", "id": 1}, detect(2), {"op": "reload", "id": 3}, {"op": "list", "id": 4},
            {"op": "stats", "id": 5}, {"op": "info", "id": 6, "detector": "cardio"}, detect(7, 300),
        ])
        by_id = {r["id"]: r for r in replies}
        assert by_id[1]["op"] == "health"
        assert by_id[2]["op"] == "detect"
        np.testing.assert_array_equal(np.frombuffer(bytes.fromhex(by_id[2]["scores"]), "<f8"), expected)
        # Refused on that request, and the connection keeps serving the ones after it.
        assert (by_id[3]["op"], by_id[3]["code"]) == ("error", "forbidden")
        assert "admin" in by_id[3]["message"] and str(uid) in by_id[3]["message"]
        assert by_id[4]["op"] == "list" and by_id[5]["op"] == "stats" and by_id[6]["op"] == "info"
        assert by_id[7]["op"] == "detect" and by_id[7]["n_rows"] == 300


def test_no_role_is_refused_everything_and_the_connection_stays(daemon):
    # The detector loaded and answered natively first (the native loop serves it from then on),
    # so what follows shows that the native path does not answer a peer without the role.
    assert wait_until(lambda: as_peer(daemon.sock, DETECT_UID, DETECT_UID, [detect(1)])[0]["op"] == "detect"
                      and stats_as_root(daemon)["fast_path_requests"] > 0)
    before = stats_as_root(daemon)
    replies = as_peer(daemon.sock, NOBODY_UID, NOBODY_UID,
                      [detect(1), detect(2, 300), {"op": "health", "id": 3}, {"op": "reload", "id": 4}, detect(5)])
    assert [(r["op"], r.get("code"), r["id"]) for r in replies] == [("error", "forbidden", i) for i in range(1, 6)]
    assert "has no role" in replies[0]["message"]
    # None of its detects was answered by the native path.
    after = stats_as_root(daemon)
    assert after["fast_path_requests"] == before["fast_path_requests"]
    assert after["errors"]["forbidden"] - before["errors"].get("forbidden", 0) == 5


def test_admin_role_and_the_daemons_own_uid_may_reload(daemon):
    [r1, r2] = as_peer(daemon.sock, ADMIN_UID, ADMIN_UID, [{"op": "reload", "id": 1}, detect(2)])
    assert r1["op"] == "reload" and r2["op"] == "detect"
    import pynomaly

    with pynomaly.Client(daemon.sock) as c:  # root: the daemon's own uid
        assert c.reload() is not None


def test_refusals_and_reloads_are_in_the_audit_trail(daemon):
    as_peer(daemon.sock, NOBODY_UID, NOBODY_UID, [{"op": "list", "id": 1}])
    as_peer(daemon.sock, ADMIN_UID, ADMIN_UID, [{"op": "reload", "id": 1, "detector": "cardio"}])
    home = daemon_home(daemon)

    def found():
        es = service.audit_entries(home)
        refused = [e for e in es if e["action"] == "refused" and e["actor"].startswith(f"uid={NOBODY_UID} ")]
        reloads = [e for e in es if e["action"] == "reload" and e["actor"].startswith(f"uid={ADMIN_UID} ")]
        return refused and reloads and refused[-1]["outcome"] == "forbidden" and reloads[-1]["target"] == "cardio"

    assert wait_until(found, timeout=10)
    assert service.audit_verify(home)["ok"]


def test_bad_roles_are_refused_at_start(tmp_path):
    for bad, said in ((["--role", "root=0"], "detect, learn or admin"), (["--role", "detect=no-such-user-x"], "no user"),
                      (["--role", "admin="], "names nobody"), (["--roles-file", str(tmp_path / "none")], "roles-file")):
        with pytest.raises(RuntimeError) as e:
            DaemonProcess(tmp_path, tmp_path, *bad)
        assert said in str(e.value)


def test_roles_file(tmp_path):
    from pynomaly_daemon.roles import parse_roles

    f = tmp_path / "roles"
    f.write_text("# who may do what\ndetect = 1001, @2002  # analysts\nadmin = 1003\n\n")
    roles = parse_roles(None, str(f), owner=0)
    assert roles.role(1001, 5) == "detect" and roles.role(7, 2002) == "detect" and roles.role(1003, 5) == "admin"
    assert roles.role(1004, 5) is None and roles.role(0, 0) == "admin"
    assert roles.allows(1001, 5, "detect") and not roles.allows(1001, 5, "reload") and roles.allows(1003, 1, "reload")
    assert not roles.allows(1004, 5, "health")
    assert parse_roles(None, None) is None


def daemon_home(d) -> str:
    args = d.proc.args
    return args[args.index("--home") + 1]


def stats_as_root(d) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(d.sock)
    try:
        s.sendall(frame({"op": "stats", "id": 1}))
        return msgpack.unpackb(read_frame(s), raw=False)
    finally:
        s.close()


def learn(i: int, rows) -> dict:
    return {"op": "detect", "id": i, "detector": "stream", "want": ["scores"], "learn": True, "rows": raw_rows(rows)}


def test_learning_needs_the_learn_role(daemon):
    X = cardio()
    reference = service.load_model(daemon_home(daemon), "stream")[1]
    # A detect peer scores a streaming detector, and is refused learning on it.
    replies = as_peer(daemon.sock, DETECT_UID, DETECT_UID, [
        {"op": "detect", "id": 1, "detector": "stream", "want": ["scores"], "rows": raw_rows(X[:4])},
        learn(2, X[:4]), learn(3, X[:400])])
    np.testing.assert_array_equal(np.frombuffer(bytes.fromhex(replies[0]["scores"]), "<f8"), reference.score_many(X[:4]))
    for r in replies[1:]:
        assert (r["op"], r["code"]) == ("error", "forbidden")
        assert f"uid {DETECT_UID}" in r["message"] and "'learn' needs the learn or admin role" in r["message"]
    assert as_peer(daemon.sock, NOBODY_UID, NOBODY_UID, [learn(4, X[:4])])[0]["code"] == "forbidden"
    # The learn role learns (and nothing above was learned: the scores start from the trained state).
    replies = as_peer(daemon.sock, LEARN_UID, LEARN_UID, [learn(5, X[:40]), {"op": "reload", "id": 6}])
    np.testing.assert_array_equal(np.frombuffer(bytes.fromhex(replies[0]["scores"]), "<f8"),
                                  reference.score_learn_many(X[:40]))
    assert (replies[1]["op"], replies[1]["code"]) == ("error", "forbidden")  # learn is not admin
