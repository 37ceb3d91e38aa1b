"""Reaching into a home behind the repository's back, for either backend: the tests that
tamper with stored rows or artifacts, or count them, say what they do once for both."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pynomaly.store._home import is_database_url


def is_pg(home) -> bool:
    return is_database_url(home)


def raw_sql(home, sql: str, params=()) -> list:
    """Run one statement on the home's database directly (committed); returns its rows."""
    if is_pg(home):
        import psycopg

        with psycopg.connect(home, autocommit=True) as c:
            cur = c.execute(sql.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []
    db = sqlite3.connect(Path(home) / "pynomaly.db")
    try:
        with db:
            return db.execute(sql, params).fetchall()
    finally:
        db.close()


def artifact_count(home) -> int:
    if is_pg(home):
        return raw_sql(home, "SELECT COUNT(*) FROM artifacts")[0][0]
    return len(list((Path(home) / "artifacts").rglob("*.zst")))


def damage_artifact(home, sha: str, truncate_to: int = 100) -> None:
    """Truncate an artifact's stored bytes (a file, or a row's data)."""
    if is_pg(home):
        raw_sql(home, "UPDATE artifacts SET data = substring(data from 1 for ?) WHERE sha = ?", (truncate_to, sha))
        return
    (path,) = (Path(home) / "artifacts").rglob(f"{sha}.zst")
    path.write_bytes(path.read_bytes()[:truncate_to])


def remove_artifact(home, sha: str) -> None:
    if is_pg(home):
        raw_sql(home, "DELETE FROM artifacts WHERE sha = ?", (sha,))
        return
    (path,) = (Path(home) / "artifacts").rglob(f"{sha}.zst")
    path.unlink()
