"""Tables of our own in the repository's SQLite file (jobs, alerts): one connection helper.

Jobs and alerts keep their rows next to the detectors (one file, one backup), in tables each
module creates itself with ``CREATE TABLE IF NOT EXISTS`` on first use, so the repository's
schema and its version mark stay the repository's alone.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from ._errors import RepositoryError

_created: set = set()  # (database path, schema key) already checked in this process


def home_of(home) -> Path:
    """The folder a ``home`` argument means; the repository is created there if absent."""
    from .repository import Repository

    if isinstance(home, Repository):
        return home.home
    with Repository(home) as repo:  # creates the folder and the repository's own tables
        return repo.home


def connect(home, key: str, schema: str) -> sqlite3.Connection:
    """A connection to the repository database of ``home`` with ``schema`` (``CREATE TABLE IF
    NOT EXISTS`` statements, ``;``-separated) created once per process and file."""
    path = home_of(home) / "pynomaly.db"
    try:
        db = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout = 60000")
        db.execute("PRAGMA synchronous = FULL")
        if (str(path), key) not in _created:
            with transaction(db):
                for stmt in filter(str.strip, schema.split(";")):
                    db.execute(stmt)
            _created.add((str(path), key))
    except sqlite3.DatabaseError as e:
        raise RepositoryError(f"the repository database {str(path)!r} cannot be used ({e})") from None
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection):
    """``BEGIN IMMEDIATE`` (the write lock now: a claim is atomic among processes) ... COMMIT."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@contextlib.contextmanager
def opened(home, key: str, schema: str):
    db = connect(home, key, schema)
    try:
        yield db
    finally:
        db.close()
