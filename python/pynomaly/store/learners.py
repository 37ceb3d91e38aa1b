"""Learner leases (table ``learners``, migration 11 of :mod:`pynomaly.store._schema`): the only
SQL for them. One row per detector name: which process learns it (``holder``, an opaque id
the process made up), since when, and until when its lease runs unless renewed.

A lease is taken, renewed and released in one statement each, under the home's write lock (the
store's rule for writes), so two processes asking at once never both get it. Times are the
database's own clock (``julianday('now')`` of the one SQLite file's machine, PostgreSQL's
``clock_timestamp()``), never the callers': replicas on machines with different clocks agree
on when a lease lapsed.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

__all__ = ["take", "renew", "release", "holder_of"]


def _now(db) -> str:
    """The SQL expression of the database's time, in Unix seconds."""
    return "EXTRACT(EPOCH FROM clock_timestamp())" if db.postgres else "((julianday('now') - 2440587.5) * 86400.0)"


def take(db, detector: str, holder: str, ttl: float) -> Tuple[bool, Optional[int]]:
    """Take (or renew) ``detector``'s lease for ``holder``, for ``ttl`` seconds: granted when no
    one holds it, when ``holder`` does, or when the holder's lease lapsed. Returns ``(granted,
    the detector's latest version then)`` (None when no detector has that name; ask
    :func:`holder_of` who holds a lease not granted)."""
    now = _now(db)
    with db.transaction():
        got = db.execute(
            f"INSERT INTO learners (detector, holder, acquired_at, renewed_at, expires_at) "
            f"VALUES (?, ?, {now}, {now}, {now} + ?) "
            "ON CONFLICT (detector) DO UPDATE SET holder = excluded.holder, renewed_at = excluded.renewed_at, "
            "expires_at = excluded.expires_at, acquired_at = CASE WHEN learners.holder = excluded.holder "
            "THEN learners.acquired_at ELSE excluded.acquired_at END "
            "WHERE learners.holder = excluded.holder OR learners.expires_at <= excluded.renewed_at "
            "RETURNING holder", (detector, holder, float(ttl))).fetchall()
        r = db.execute("SELECT version FROM detectors WHERE name = ?", (detector,)).fetchone()
        return bool(got), None if r is None else int(r["version"])


def renew(db, holder: str, ttl: float, detectors: Optional[Iterable[str]] = None) -> set:
    """Extend ``holder``'s leases (those of ``detectors`` only, when given) by ``ttl`` seconds
    from now; returns the names it still holds (a lapsed lease someone else took is not
    among them; a lapsed one no one took is renewed)."""
    now = _now(db)
    q = (f"UPDATE learners SET renewed_at = {now}, expires_at = {now} + ? WHERE holder = ?")
    args = [float(ttl), holder]
    if detectors is not None:
        names = list(detectors)
        if not names:
            return set()
        q += f" AND detector IN ({', '.join('?' * len(names))})"
        args += names
    with db.transaction():
        return {r["detector"] for r in db.execute(q + " RETURNING detector", tuple(args)).fetchall()}


def release(db, holder: str, detectors: Optional[Iterable[str]] = None) -> None:
    """Give up ``holder``'s leases (those of ``detectors`` only, when given)."""
    q, args = "DELETE FROM learners WHERE holder = ?", [holder]
    if detectors is not None:
        names = list(detectors)
        if not names:
            return
        q += f" AND detector IN ({', '.join('?' * len(names))})"
        args += names
    with db.transaction():
        db.execute(q, tuple(args))


def holder_of(db, detector: str) -> Optional[dict]:
    """``{"holder", "acquired_at", "expires_at", "left"}`` (Unix seconds; ``left``: seconds
    until it lapses) of ``detector``'s live lease, or None when no one holds it."""
    now = _now(db)
    r = db.execute(f"SELECT holder, acquired_at, expires_at, expires_at - {now} AS left_s FROM learners "
                   f"WHERE detector = ? AND expires_at > {now}", (detector,)).fetchone()
    if r is None:
        return None
    return {"holder": r["holder"], "acquired_at": float(r["acquired_at"]), "expires_at": float(r["expires_at"]),
            "left": max(0.0, float(r["left_s"]))}
