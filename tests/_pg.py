"""A real PostgreSQL server for the tests, started in a temporary folder (initdb + pg_ctl).

Unix socket only (``listen_addresses=''``), trust authentication, a free port number for the
socket's name. initdb and postgres refuse to run as root, so as root they run as the
``postgres`` system user (Debian's package creates it) and the folder is theirs.
:func:`server` gives the reason to skip when something is missing, instead of failing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

_BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")


def _tool(name: str):
    found = shutil.which(name)
    if found:
        return found
    for d in _BIN_DIRS:
        if Path(d, name).exists():
            return str(Path(d, name))
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One PostgreSQL server in a temporary folder; :meth:`stop` and :meth:`start` may be
    called mid-test (the restart test)."""

    def __init__(self, initdb: str, pg_ctl: str):
        self.pg_ctl = pg_ctl
        self.as_postgres = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="pynomaly-pg-"))
        self.data = self.base / "data"
        self.port = _free_port()
        if self.as_postgres:
            shutil.chown(self.base, "postgres", "postgres")
        self._run([initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                   "--locale=C", "--no-sync"])
        self.url = f"postgresql://postgres@/postgres?host={self.base}&port={self.port}"

    def _run(self, cmd, timeout: float = 120):
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, timeout=timeout, cwd=self.base)

    def start(self) -> None:
        options = (f"-c listen_addresses='' -c unix_socket_directories='{self.base}' -p {self.port}"
                   " -c max_connections=200 -c shared_buffers=32MB")
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.base / "server.log"), "-o", options,
                   "-w", "-t", "60", "start"])

    def stop(self) -> None:
        self._run([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def new_database(self) -> str:
        """A fresh, empty home on this server; returns its URL. A schema of its own, chosen by
        the URL's ``options=-csearch_path=...``, rather than a database: as independent for
        the code under test, and a CREATE DATABASE costs about a second here."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute(f"CREATE SCHEMA {name}")
        return f"{self.url}&options=-csearch_path%3D{name}"

    def close(self) -> None:
        try:
            self.stop()
        except Exception:  # noqa: BLE001 - already stopped (or never started)
            pass
        shutil.rmtree(self.base, ignore_errors=True)


def server():
    """``(Server, None)`` running, or ``(None, reason to skip)``."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None, "psycopg 3 is not installed (pip install 'pynomaly[postgres]')"
    initdb, pg_ctl = _tool("initdb"), _tool("pg_ctl")
    if not initdb or not pg_ctl:
        return None, "PostgreSQL's initdb/pg_ctl not found (Debian: apt-get install postgresql)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return None, "running as root and runuser is missing: cannot start PostgreSQL as the postgres user"
    try:
        s = Server(initdb, pg_ctl)
        s.start()
    except (OSError, subprocess.SubprocessError, KeyError, LookupError) as e:
        detail = getattr(e, "stderr", b"") or b""
        return None, f"cannot start a PostgreSQL server: {e} {detail.decode(errors='replace')[-300:]}"
    return s, None
