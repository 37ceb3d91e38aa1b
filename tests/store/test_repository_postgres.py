"""What only a database home has, or what it must do differently: versioned migrations (with
concurrent starters, and an old folder home migrating too), clear errors for a server that is
unreachable or goes away and comes back, change notifications reaching other processes, and
several processes saving one detector at once. The suites that run on both backends are in
test_repository.py, test_service.py, test_jobs.py, test_alerts.py and test_audit.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from pynomaly.store import _db
from pynomaly import service
from pynomaly._errors import RepositoryError
from pynomaly.store._schema import MIGRATIONS
from pynomaly.store.repository import Repository

from _homes import raw_sql

X = np.random.default_rng(0).standard_normal((300, 4))
FAST = {"n_estimators": 10, "random_state": 0}


def _python(code: str, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _python_ok(code: str, *args) -> None:
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


# -- migrations -----------------------------------------------------------------------------
def test_migrations_run_once_with_concurrent_starters(pg_home):
    code = """
        import sys, time
        from pynomaly.repository import Repository
        time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start together
        Repository(sys.argv[1]).close()
    """
    start = time.time() + 1.5
    procs = [_python(code, pg_home, start) for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    applied = raw_sql(pg_home, "SELECT version FROM schema_migrations ORDER BY version")
    assert [r[0] for r in applied] == list(range(1, len(MIGRATIONS) + 1))


def test_an_existing_folder_home_of_the_previous_schema_opens_and_migrates(tmp_path):
    """A home made before schema_migrations existed marks its schema as PRAGMA user_version
    3: it opens, gains the table (1 to 3 recorded as already there), and keeps its detectors."""
    service.train(tmp_path, "d", X, params=FAST)
    raw_sql(tmp_path, "DROP TABLE schema_migrations")
    raw_sql(tmp_path, "PRAGMA user_version = 3")  # exactly what the previous code left
    with Repository(tmp_path) as repo:
        assert [d.name for d in repo.list()] == ["d"]
    rows = raw_sql(tmp_path, "SELECT version, description FROM schema_migrations ORDER BY version")
    assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1)) and "before schema_migrations" in rows[0][1]
    assert service.train(tmp_path, "d", X, params=FAST).version == 2


def test_a_database_newer_than_the_code_is_refused(home):
    Repository(home).close()
    raw_sql(home, "INSERT INTO schema_migrations VALUES (99, 'from the future', 'x')")
    with pytest.raises(RepositoryError, match="schema version 99, newer than this pynomaly knows"):
        Repository(home)


# -- errors and reconnection ----------------------------------------------------------------
def test_an_unreachable_server_or_missing_database_is_one_clear_error(pg_server):
    base = pg_server.url.replace("postgres@", "postgres:hunter2@")
    for url, said in [
        (base.replace(f"port={pg_server.port}", "port=1"), "cannot connect to the PostgreSQL home"),
        (base.replace("/postgres?", "/no_such_db?"), "no_such_db"),
    ]:
        with pytest.raises(RepositoryError, match=said) as e:
            service.list_detectors(url)
        assert "hunter2" not in str(e.value) and "postgres:***@" in str(e.value)


def test_encrypted_homes_are_folder_homes_only(pg_home):
    from pynomaly.store.crypto import KeySource

    with Repository(pg_home) as repo, pytest.raises(RepositoryError, match="folder homes only"):
        repo.encrypt_home(KeySource("env", "x"))


_CLIENT = """
    import sys, time
    from pynomaly import service
    from pynomaly._errors import RepositoryError
    home, until = sys.argv[1], float(sys.argv[2])
    seen = []
    while time.time() < until:
        try:
            n = len(service.list_detectors(home))
            if not seen or seen[-1] != "ok":
                seen.append("ok")
        except RepositoryError as e:
            if not seen or seen[-1] != "error":
                seen.append("error")
                print("error:", e, flush=True)
        time.sleep(0.05)
    print(" ".join(seen), flush=True)
"""


def test_the_server_stopped_and_restarted_mid_run(pg_server, pg_home):
    """Clients get a RepositoryError while the server is down (never psycopg's own exception),
    then recover without restarting: one Repository object held across the restart, and
    another process polling all along."""
    service.train(pg_home, "d", X, params=FAST)
    repo = Repository(pg_home)
    other = _python(_CLIENT, pg_home, time.time() + 25)
    try:
        time.sleep(2.0)
        pg_server.stop()
        try:
            with pytest.raises(RepositoryError, match="PostgreSQL home"):
                repo.list()
            with pytest.raises(RepositoryError, match="cannot connect"):
                service.train(pg_home, "d", X, params=FAST)
            time.sleep(1.0)
        finally:
            pg_server.start()
        assert [d.name for d in repo.list()] == ["d"]  # the same object: reconnected
        assert service.train(pg_home, "d", X, params=FAST).version == 2
        _, m = service.load_model(repo, "d")
        assert m.decision_function(X[:3]).shape == (3,)
    finally:
        repo.close()
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    assert out.strip().splitlines()[-1] == "ok error ok" and "Traceback" not in err


def test_connections_are_reused_and_a_restart_costs_no_failed_call(pg_server, pg_home):
    """Closed Databases leave their connection for the next (one backend process, not one per
    call); after a restart every idle one is stale, and the first call still just works."""
    from pynomaly.store import _db

    def backend_pid():
        with _db.Database(pg_home) as db:
            return db.execute("SELECT pg_backend_pid()").fetchone()[0]

    assert backend_pid() == backend_pid()
    held = [_db.Database(pg_home) for _ in range(3)]  # three at once: three idle afterwards
    assert len({db.execute("SELECT pg_backend_pid()").fetchone()[0] for db in held}) == 3
    for db in held:
        db.close()
    with _db.Database(pg_home) as db:  # a transaction left open is not handed on
        db.execute("BEGIN")
        in_tx = db.execute("SELECT pg_backend_pid()").fetchone()[0]
    assert backend_pid() != in_tx
    pg_server.stop()
    pg_server.start()
    assert service.list_detectors(pg_home) == []


_FORK = """
    import os, sys
    from pynomaly.store import _db

    def backend_pid():
        with _db.Database(sys.argv[1]) as db:
            return db.execute("SELECT pg_backend_pid()").fetchone()[0]

    parents = backend_pid()  # now idle, kept for reuse
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(w, str(backend_pid()).encode())
        os._exit(0)
    os.close(w)
    childs = int(os.read(r, 64))
    os.waitpid(child, 0)
    assert childs != parents, "the child used its parent's connection"
    assert backend_pid() == parents, "the parent's connection was lost"
"""


def test_a_forked_child_never_uses_its_parents_connections(pg_home):
    """An idle connection belongs to the process that opened it: a child made by fork opens its
    own, and the parent's (whose session the child must not touch) keeps working. In a process
    of its own: forking the test process, with JAX's threads in it, is refused by JAX."""
    _python_ok(_FORK, pg_home)


# -- change notifications -------------------------------------------------------------------
_SAVER = """
    import sys
    import numpy as np
    from pynomaly import service
    X = np.random.default_rng(0).standard_normal((300, 4))
    service.train(sys.argv[1], sys.argv[2], X, params={"n_estimators": 10, "random_state": int(sys.argv[3])})
"""


def test_a_watcher_hears_of_a_version_saved_by_another_process(pg_home):
    from pynomaly.serving import RepositorySource

    heard, got = [], threading.Event()
    src = RepositorySource(pg_home)
    assert src.watch(lambda name: (heard.append(name), got.set()))
    try:
        assert src._listener.connected.wait(10)
        _python_ok(_SAVER, pg_home, "d", 1)
        assert got.wait(10.0) and heard == ["d"]  # generous: it takes milliseconds
        service.archive(pg_home, "d")
        assert wait_for(lambda: heard == ["d", "d"])
    finally:
        src.close()
    assert RepositorySource("/some/folder").watch(print) is False  # a folder home polls


def wait_for(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_the_serving_cache_switches_to_a_version_saved_elsewhere_without_polling(pg_home):
    """refresh_interval is an hour: only the notification can make the switch."""
    from pynomaly.serving import RepositorySource
    from pynomaly.serving.cache import ModelCache

    service.train(pg_home, "d", X, params=FAST)
    src = RepositorySource(pg_home)

    async def main():
        loop = asyncio.get_running_loop()
        run = lambda fn, *a: loop.run_in_executor(None, fn, *a)  # noqa: E731
        cache = ModelCache(src, run, max_bytes=1 << 30, refresh_interval=3600.0, counters={"cache_misses": 0})
        assert cache.follow_source(loop)
        assert (await cache.resolve("d", None)).version.version == 1
        await loop.run_in_executor(None, src._listener.connected.wait, 10)
        await loop.run_in_executor(None, _python_ok, _SAVER, pg_home, "d", 2)
        end = time.monotonic() + 10.0  # generous; about a second is the promise
        while time.monotonic() < end and cache.latest["d"].version != 2:
            await asyncio.sleep(0.02)
        assert cache.latest["d"].version == 2 and cache.cached("d", None).version.version == 2

    try:
        asyncio.run(main())
    finally:
        src.close()


# -- several processes at once --------------------------------------------------------------
def test_concurrent_savers_get_unique_gap_free_versions_while_others_serve(pg_home):
    service.train(pg_home, "shared", X, params=FAST)
    saver = """
        import sys
        import numpy as np
        from pynomaly import service
        X = np.random.default_rng(0).standard_normal((300, 4))
        for i in range(4):
            service.train(sys.argv[1], "shared", X, params={"n_estimators": 10, "random_state": int(sys.argv[2]) * 10 + i})
    """
    reader = """
        import sys
        import numpy as np
        from pynomaly import service
        X = np.random.default_rng(0).standard_normal((300, 4))
        for _ in range(30):
            s = service.load_for_scoring(sys.argv[1], "shared")
            assert s.score(X[:5]).shape == (5,)
    """
    procs = [_python(saver, pg_home, s) for s in (1, 2, 3)] + [_python(reader, pg_home) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    versions = service.versions(pg_home, "shared")
    assert [v["version"] for v in versions] == list(range(1, 14))  # none lost, none twice, no gap
    seeds = sorted(v["parameters"]["random_state"] for v in versions[1:])
    assert seeds == sorted(s * 10 + i for s in (1, 2, 3) for i in range(4))


def test_the_database_seam_speaks_both_dialects(tmp_path, pg_home):
    """One statement text, both backends: placeholders, rows by name and position, ON CONFLICT."""
    for home in (tmp_path, pg_home):
        with _db.Database(home) as db:
            db.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v REAL, pct TEXT)")
            with db.transaction():
                db.execute("INSERT INTO t VALUES (?, ?, '50%') ON CONFLICT (k) DO NOTHING", ("a", 0.1))
                db.execute("INSERT INTO t VALUES (?, ?, '50%') ON CONFLICT (k) DO NOTHING", ("a", 0.2))
            r = db.execute("SELECT k, v, pct FROM t WHERE k = ?", ("a",)).fetchone()
            assert (r["k"], r[1], r["pct"]) == ("a", 0.1, "50%")


def test_a_change_told_during_a_refresh_is_not_lost():
    """The cache's hook alone, with a source that answers slowly: a second notification while
    the first refresh runs (which may have read the source before the second commit) makes
    another refresh follow it."""
    from pynomaly.serving.cache import ModelCache

    class Source:
        version = 1
        reads = 0

        def latest_version(self, name):
            Source.reads += 1
            v = Source.version
            time.sleep(0.2)
            return v

        def get(self, name, version):
            return type("S", (), {"size_bytes": 1, "native": None,
                                  "version": type("V", (), {"name": name, "version": version})()})()

    async def main():
        loop = asyncio.get_running_loop()
        run = lambda fn, *a: loop.run_in_executor(None, fn, *a)  # noqa: E731
        cache = ModelCache(Source(), run, max_bytes=1 << 20, refresh_interval=3600.0, counters={"cache_misses": 0})
        await cache.resolve("d", None)
        Source.version, Source.reads = 2, 0
        cache.changed("d")
        await asyncio.sleep(0.05)
        Source.version = 3  # committed while the first refresh is reading
        cache.changed("d")
        for _ in range(200):
            if cache.latest["d"].version == 3:
                break
            await asyncio.sleep(0.02)
        assert cache.latest["d"].version == 3 and Source.reads == 2

    asyncio.run(main())


def test_a_daemon_on_a_database_home_serves_a_version_saved_elsewhere_without_polling(pg_home, tmp_path):
    """End to end: the daemon's cache follows the notifications (refresh interval: an hour)."""
    import pynomaly
    from _daemon_helpers import DaemonProcess

    service.train(pg_home, "d", X, params=FAST)
    d = DaemonProcess(tmp_path, None, "--home", pg_home, "--refresh-interval", "3600")
    try:
        with pynomaly.Client(d.sock) as c:
            assert c.detect("d", X[:3]).version == 1
            service.train(pg_home, "d", X, params={"n_estimators": 10, "random_state": 1})
            assert wait_for(lambda: c.detect("d", X[:3]).version == 2, timeout=10.0)
    finally:
        assert d.stop() == 0
