"""The one place that opens a home's database, for either backend: SQLite or PostgreSQL.

A folder home keeps ``pynomaly.db`` (SQLite, WAL); a URL home (``postgresql://...``, see
:mod:`pynomaly._home`) is a PostgreSQL database reached with psycopg 3. The repository, jobs,
alerts and audit write their SQL once, in the dialect both accept (``?`` placeholders,
``ON CONFLICT ... DO NOTHING/UPDATE``, ``IS NOT DISTINCT FROM``); :class:`Database` hides the
few differences that remain:

- placeholders: ``?`` becomes ``%s`` for psycopg (and a literal ``%`` is doubled);
- column types in ``CREATE TABLE``: REAL is float4 in PostgreSQL, so it becomes DOUBLE
  PRECISION; BLOB becomes BYTEA; INTEGER becomes BIGINT (epoch seconds, sizes);
- rows: both give rows readable by column name and by position (``r["id"]``, ``r[0]``);
- the write lock. SQLite's ``BEGIN IMMEDIATE`` serialises writers, and the repository relies
  on it (version numbers, the version marks, the audit chain). A PostgreSQL transaction takes
  the same guarantee from one transaction-scoped advisory lock (:data:`WRITE_LOCK` and the
  schema's name: homes in different schemas of one database do not wait for each other), so
  the code above reasons the same way on both. A job claim does not need it: it asks for
  ``transaction(db, exclusive=False)`` and locks the rows it takes (``SELECT ... FOR UPDATE
  SKIP LOCKED``, :meth:`Database.skip_locked`), so workers never queue behind each other;
- lost connections: a PostgreSQL server that went away (restarted, unreachable) gives a
  :class:`RepositoryError` naming the URL without its password, never psycopg's own
  exception; a statement run outside a transaction is retried once on a fresh connection,
  so the first call after the server is back just works. Inside a transaction nothing is
  retried (the caller's transaction failed as a whole).

Change notifications (:class:`Listener`): a PostgreSQL home's writers ``NOTIFY`` in their
transactions (delivered at commit); a listener is one thread with its own connection that
hands each payload to a callback and reconnects, with backoff, when the server goes away.

Migrations (:func:`migrate`) are versioned: a ``schema_migrations`` table holds the numbers
applied, the ordered list of every table's migrations is ``pynomaly.store._schema.MIGRATIONS``,
and every starter applies what is missing under the write lock, so concurrent starters run
each migration once.

This module takes a home already resolved (a folder's Path, or a URL): what a ``home``
argument means, and opening it migrated, is :func:`pynomaly.store._schema.open_database`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

from pynomaly._errors import RepositoryError, RepositoryUnavailableError
from pynomaly.store._home import is_database_url, redacted

SQLITE, POSTGRES = "sqlite", "postgresql"
WRITE_LOCK = 0x70796E6F  # "pyno": the advisory lock that stands for SQLite's write lock
# Its two-key form, (WRITE_LOCK, the home's schema): literals, so the int4 overload is chosen.
_LOCK_KEYS = f"{WRITE_LOCK}, hashtext(current_schema())"

DB_FILE = "pynomaly.db"  # a folder home's database


def exists(home) -> bool:
    """Whether ``home`` (resolved: a folder or a URL) has its database already: a URL is taken
    to (its server answers when connected); a folder, when its database file is there."""
    return bool(is_database_url(home)) or (Path(home) / DB_FILE).exists()


# -- PostgreSQL specifics ----------------------------------------------------------------------
@functools.lru_cache(maxsize=1024)
def _pg_sql(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


@functools.lru_cache(maxsize=64)
def ddl(schema: str, dialect: str) -> tuple:
    """``schema`` (``;``-separated statements written for SQLite) as statements for ``dialect``."""
    if dialect == POSTGRES:
        schema = re.sub(r"\bREAL\b", "DOUBLE PRECISION", schema)
        schema = re.sub(r"\bBLOB\b", "BYTEA", schema)
        schema = re.sub(r"\bINTEGER\b", "BIGINT", schema)
    return tuple(s for s in schema.split(";") if s.strip())


class Row(dict):
    """A row readable by column name and by position, as ``sqlite3.Row``."""

    __slots__ = ("_values",)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self._values[key]
        return dict.__getitem__(self, key)


def _row_factory(cursor):
    names = [c.name for c in cursor.description or ()]

    def make(values):
        r = Row(zip(names, values))
        r._values = values
        return r

    return make


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise RepositoryError(
            "a PostgreSQL home needs psycopg 3: pip install 'pynomaly[postgres]'"
        ) from None
    return psycopg


class _IdleConnections:
    """PostgreSQL connections put back by closed :class:`Database` objects, for the next one.

    The service layer opens a Repository per call; a fresh connection (and its backend process)
    costs a few milliseconds on a local socket and far more over TCP with TLS, so closed ones
    wait here, a few per URL, and are handed out again. Only a connection that is idle (no
    transaction open, no session lock: the migrations' lock is released before close) comes
    back. Per process: after a fork, the child starts with none and never touches the parent's
    (closing them would end the parent's sessions too).
    """

    PER_URL = 4  # with the listener, about 5 connections per idle process: see deploy/README.md

    def __init__(self):
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._by_url: dict = {}
        self._orphans: list = []  # a parent's connections after a fork: kept, never used or closed

    def _mine(self) -> None:
        if self._pid != os.getpid():
            self._orphans.append(self._by_url)
            self._by_url, self._pid = {}, os.getpid()

    def take(self, url: str):
        with self._lock:
            self._mine()
            idle = self._by_url.get(url)
            while idle:
                conn = idle.pop()
                if not conn.closed and not getattr(conn, "broken", False):
                    return conn
        return None

    def forget(self, url: str) -> None:
        """Drop the idle connections to ``url`` (the server dropped one: it has dropped all)."""
        with self._lock:
            self._mine()
            stale = self._by_url.pop(url, [])
        for conn in stale:
            with contextlib.suppress(Exception):
                conn.close()

    def give(self, url: str, conn) -> bool:
        """Keep ``conn`` for a later :meth:`take`; False if it should be closed instead."""
        psycopg = _psycopg()
        try:
            idle_now = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        except Exception:  # noqa: BLE001 - a connection that cannot say is not reused
            return False
        if not idle_now or conn.closed or getattr(conn, "broken", False):
            return False
        with self._lock:
            self._mine()
            idle = self._by_url.setdefault(url, [])
            if len(idle) >= self.PER_URL:
                return False
            idle.append(conn)
            return True


    def close_all(self) -> None:
        """At exit: close this process's idle connections (not a forked parent's)."""
        with self._lock:
            self._mine()
            urls = list(self._by_url)
        for url in urls:
            self.forget(url)


_idle = _IdleConnections()
atexit.register(_idle.close_all)


class Database:
    """One connection to a home's database (either backend); see the module's docstring.

    ``execute(sql, params)`` returns a cursor (``fetchone``, ``fetchall``, iteration,
    ``rowcount``). Not for concurrent use by several threads at once.
    """

    def __init__(self, home):
        self.home = home  # what the repository calls its home: the folder, or the URL
        self.url = home if is_database_url(home) else None
        self.dialect = POSTGRES if self.url else SQLITE
        self._in_tx = False
        self._session_locked = False
        self._conn = None
        if self.url is None:
            self.path = Path(home) / DB_FILE
            self.where = repr(str(self.path))
            # sqlite3.DatabaseError propagates: the caller says what to do about its file.
            self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
            try:
                self._conn.row_factory = sqlite3.Row
                self._conn.execute("PRAGMA busy_timeout = 60000")
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = FULL")
                self._conn.execute("PRAGMA foreign_keys = ON")
            except BaseException:
                self._conn.close()
                raise
        else:
            self.path = None
            self.where = redacted(self.url)
            self._pg_connect()

    @property
    def postgres(self) -> bool:
        return self.dialect == POSTGRES

    def _pg_connect(self) -> None:
        psycopg = _psycopg()
        self._conn = _idle.take(self.url)
        if self._conn is not None:
            return
        try:
            self._conn = psycopg.connect(self.url, autocommit=True, row_factory=_row_factory, connect_timeout=10)
        except psycopg.Error as e:
            self._conn = None
            raise RepositoryUnavailableError(
                f"cannot connect to the PostgreSQL home {self.where}: {_first_line(e)}"
            ) from None

    def _unusable(self) -> bool:
        return self._conn is None or self._conn.closed or getattr(self._conn, "broken", False)

    def execute(self, sql: str, params=()):
        if not self.postgres:
            return self._conn.execute(sql, params)
        psycopg = _psycopg()
        sql = _pg_sql(sql)
        for attempt in (0, 1):
            if self._unusable():
                if self._in_tx:
                    raise RepositoryUnavailableError(f"the connection to {self.where} was lost during a transaction")
                self._pg_connect()
            try:
                return self._conn.execute(sql, params)
            except psycopg.OperationalError as e:
                if attempt == 0 and not self._in_tx and self._unusable():
                    # A connection the server dropped: the idle ones are from the same server
                    # life (a restart drops them all), so the one fresh try makes a new one.
                    _idle.forget(self.url)
                    continue
                raise RepositoryUnavailableError(f"the PostgreSQL home {self.where} failed: {_first_line(e)}") from None

    def skip_locked(self, of: str = "") -> str:
        """The row-locking clause of a claim: ``FOR UPDATE [OF t] SKIP LOCKED`` in PostgreSQL,
        nothing in SQLite (whose transaction already holds the whole database)."""
        return f" FOR UPDATE{' OF ' + of if of else ''} SKIP LOCKED" if self.postgres else ""

    @property
    def in_transaction(self) -> bool:
        return self._in_tx

    @contextlib.contextmanager
    def transaction(self, exclusive: bool = True):
        """A transaction; ``exclusive`` (the default) also takes the write lock at once, as
        SQLite's ``BEGIN IMMEDIATE`` (no upgrade deadlocks, writers in turn)."""
        if self.postgres:
            self.execute("BEGIN")
            self._in_tx = True
            try:
                if exclusive:
                    self.execute(f"SELECT pg_advisory_xact_lock({_LOCK_KEYS})")
                yield self
            except BaseException:
                self._in_tx = False
                if not self._unusable():
                    with contextlib.suppress(Exception):
                        self._conn.execute("ROLLBACK")
                raise
            self._in_tx = False
            self.execute("COMMIT")
        else:
            self._conn.execute("BEGIN IMMEDIATE")
            self._in_tx = True
            try:
                yield self
            except BaseException:
                self._in_tx = False
                self._conn.execute("ROLLBACK")
                raise
            self._in_tx = False
            self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def schema_transaction(self):
        """A transaction that changes tables (migrations, ``CREATE TABLE IF NOT EXISTS``).

        In PostgreSQL the write lock is taken before the transaction begins (a session lock):
        a transaction that began earlier and then waited for the lock would look tables up in
        the catalog as it was when it began, and not see those a concurrent starter just
        created (found the hard way: each of several starters ran migration 1)."""
        if not self.postgres:
            with self.transaction():
                yield self
            return
        self.execute(f"SELECT pg_advisory_lock({_LOCK_KEYS})")
        self._session_locked = True
        try:
            with self.transaction(exclusive=False):
                yield self
        finally:
            with contextlib.suppress(RepositoryError):
                self.execute(f"SELECT pg_advisory_unlock({_LOCK_KEYS})")
                self._session_locked = False

    def ping(self) -> None:
        """One round trip to the server (raises when it does not answer): readiness probes."""
        self.execute("SELECT 1").fetchone()

    def notify(self, channel: str, payload: str) -> None:
        """Tell listeners of ``channel`` (PostgreSQL: delivered at commit; SQLite: nothing,
        its readers poll)."""
        if self.postgres:
            self.execute("SELECT pg_notify(?, ?)", (channel, payload))

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            # A connection still holding the session lock (its unlock failed) is not reused.
            if self.postgres and not self._in_tx and not self._session_locked and _idle.give(self.url, conn):
                return
            with contextlib.suppress(Exception):
                conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _first_line(e) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def transaction(db: Database, exclusive: bool = True):
    """``db.transaction(exclusive)``: see :meth:`Database.transaction`."""
    return db.transaction(exclusive)


# -- change notifications ----------------------------------------------------------------------
class Listener:
    """``LISTEN channel`` on a PostgreSQL home in a thread of its own; ``callback(payload)`` for
    each notification, from that thread.

    When the connection is lost it reconnects (backoff from 0.1 s doubling to ``max_backoff``)
    and then calls ``callback(None)``: notifications sent meanwhile were lost, so anything may
    have changed. Call :meth:`stop` to end it (it ends with the process anyway: a daemon thread).
    """

    def __init__(self, url: str, channel: str, callback, *, max_backoff: float = 5.0):
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", channel):
            raise ValueError(f"not a channel name: {channel!r}")
        self.url, self.channel, self.callback, self.max_backoff = url, channel, callback, max_backoff
        self.connected = threading.Event()  # set while listening (tests wait for it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"pynomaly-listen-{channel}")
        self._thread.start()

    def _run(self) -> None:
        import logging

        psycopg = _psycopg()
        log = logging.getLogger("pynomaly.serving")
        delay, lost = 0.1, False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {self.channel}")
                    self.connected.set()
                    if lost:
                        log.info("listening again for changes in %s", redacted(self.url))
                        self._tell(None, log)
                    delay, lost = 0.1, False
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=0.5):
                            self._tell(n.payload, log)
            except psycopg.Error as e:
                self.connected.clear()
                if not lost:
                    log.warning("lost the change notifications of %s (%s); reconnecting",
                                redacted(self.url), _first_line(e))
                lost = True
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_backoff)

    def _tell(self, payload, log) -> None:
        try:
            self.callback(payload)
        except Exception:  # noqa: BLE001 - a failing callback must not end the listening
            log.exception("change listener: the callback failed for %r", payload)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


# -- migrations --------------------------------------------------------------------------------
def schema_version(db: Database) -> int:
    """The highest migration applied to ``db`` (0 for a new database)."""
    if db.postgres:
        exists = db.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
    else:
        exists = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_migrations'").fetchone() is not None
    if not exists:
        # A SQLite home made before the table existed marks its schema in user_version
        # (3: the tables of migrations 1 to 3).
        return db.execute("PRAGMA user_version").fetchone()[0] if not db.postgres else 0
    return db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]


def migrate(db: Database, migrations) -> int:
    """Bring ``db`` up to the last of ``migrations`` (a list of ``(description, apply)``,
    ``apply(db)`` run in the migration's transaction; migration n is ``migrations[n-1]``).

    Reads first, so opening an up-to-date database takes no write lock; the rest runs under
    the write lock, which makes concurrent starters apply each migration once. A database
    migrated by newer code is refused rather than used with a schema this code does not know.
    Returns the version reached.
    """
    target = len(migrations)
    current = schema_version(db)
    if current == target:
        return current
    with db.schema_transaction():
        current = schema_version(db)
        if current > target:
            raise RepositoryError(
                f"the repository database {db.where} has schema version {current}, newer than this pynomaly "
                f"knows ({target}); upgrade pynomaly"
            )
        db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                   " description TEXT NOT NULL, applied_at TEXT NOT NULL)")
        now = datetime.now(timezone.utc).isoformat()
        if not db.postgres and current > 0:  # an older SQLite home: record what user_version said
            for n in range(1, current + 1):
                db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?) ON CONFLICT (version) DO NOTHING",
                           (n, migrations[n - 1][0] + " (before schema_migrations)", now))
        for n in range(current + 1, target + 1):
            description, apply = migrations[n - 1]
            apply(db)
            db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (n, description, now))
        if not db.postgres:
            db.execute(f"PRAGMA user_version = {target}")  # what older pynomaly checks
    return target
