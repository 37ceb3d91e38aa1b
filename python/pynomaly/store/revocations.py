"""Revoked API tokens and sessions of a home: the only SQL for them.

An entry revokes either one token, by its id (``jti``), or every token of a subject issued at
or before a time (``not_before``): signing out, ``pynomaly token revoke`` and ``pynomaly user
remove`` write them. They live in the home's repository database (table ``revoked_tokens``,
a numbered migration of :mod:`pynomaly.store._schema`), so every server on the home sees them: the
processes of one folder home and the replicas of a PostgreSQL home alike.

A server keeps the list in memory (:class:`RevocationList`) and a thread of its own looks for
new entries every half second (one indexed ``MAX(id)`` query when nothing changed), so a
revoked token is refused everywhere within a second without a database read per request.
While the database cannot be read the list is kept as it was, and the server says so in its log.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from pynomaly._errors import RepositoryUnavailableError
from pynomaly.store._schema import open_database

__all__ = ["revoke_token", "revoke_subject", "RevocationList"]

_MAX_TEXT = 1000
log = logging.getLogger("pynomaly.revocations")


def _append(home, jti: Optional[str], subject: Optional[str], not_before: Optional[float],
            expires: Optional[float]) -> int:
    now = time.time()
    with open_database(home) as db, db.transaction():
        # Ids in order of revocation (under the write lock: no two writers take the same one),
        # so that readers ask only for what came after the last id they saw.
        n = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM revoked_tokens").fetchone()[0]
        db.execute("INSERT INTO revoked_tokens (id, jti, subject, not_before, expires, revoked_at) "
                   "VALUES (?, ?, ?, ?, ?, ?)", (n, jti, subject, not_before, expires, now))
        # Entries of tokens that have expired anyway no longer matter (a day of grace for clocks).
        db.execute("DELETE FROM revoked_tokens WHERE expires IS NOT NULL AND expires < ?", (now - 86400,))
    return n


def _text(value, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_TEXT:
        raise ValueError(f"{what} must be a non-empty string of at most {_MAX_TEXT} characters, got {value!r:.60}")
    return value


def revoke_token(home, jti: str, expires: Optional[float] = None) -> int:
    """Revoke the token whose id is ``jti`` (``expires``: its ``exp`` when known, after which
    the entry may be forgotten). Returns the entry's number."""
    return _append(home, _text(jti, "a token id (jti)"), None, None, expires)


def revoke_subject(home, subject: str, not_before: Optional[float] = None) -> int:
    """Revoke every token of ``subject`` issued at or before ``not_before`` (default: now):
    a removed user, or "sign out everywhere". Tokens issued later are accepted."""
    return _append(home, None, _text(subject, "a user name (subject)"), time.time() if not_before is None
                   else float(not_before), None)


class RevocationList:
    """The home's revocations, in memory, followed by a thread (see the module's docstring).

    :meth:`refuses` is what a request pays: two dictionary lookups.
    """

    def __init__(self, home, interval_s: float = 0.5):
        self.home = home
        self.interval_s = interval_s
        self._jtis: dict = {}  # jti -> True
        self._subjects: dict = {}  # subject -> the latest not_before
        self._last = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._failing = False
        self._lock = threading.Lock()
        try:
            self.refresh()  # a server starts with the list as it is
        except RepositoryUnavailableError as e:
            # A database home that is away: the server starts (not ready, see its readiness)
            # and the thread reads the list once the database answers; until then it has
            # nothing to check, and nothing it could serve without the database either.
            log.warning("cannot read the revoked tokens yet (%s)", e)
            self._failing = True

    def refuses(self, subject: str, issued_at: Optional[float], *ids: Optional[str]) -> bool:
        """Whether a token of ``subject`` issued at ``issued_at`` (its ``iat``; None counts as
        before any revocation of its subject) and carrying the token ids ``ids`` is revoked."""
        jtis = self._jtis
        if any(i is not None and i in jtis for i in ids):
            return True
        not_before = self._subjects.get(subject)
        return not_before is not None and (issued_at is None or issued_at <= not_before)

    def refresh(self) -> None:
        """Read the entries added since the last look (at once: after this process revoked
        something, so that it refuses the token from its next request on)."""
        with open_database(self.home) as db:
            self._read(db)

    def _read(self, db) -> None:
        with self._lock:  # the thread's look and a request's refresh, one at a time
            self._read_locked(db)

    def _read_locked(self, db) -> None:
        if db.execute("SELECT COALESCE(MAX(id), 0) FROM revoked_tokens").fetchone()[0] == self._last:
            return
        rows = db.execute("SELECT id, jti, subject, not_before FROM revoked_tokens WHERE id > ? ORDER BY id",
                          (self._last,)).fetchall()
        jtis, subjects = dict(self._jtis), dict(self._subjects)
        for r in rows:
            if r["jti"] is not None:
                jtis[r["jti"]] = True
            else:
                subjects[r["subject"]] = max(subjects.get(r["subject"], float("-inf")), r["not_before"])
        # Whole dictionaries replaced, never changed in place: readers on other threads see the
        # old list or the new one.
        self._jtis, self._subjects = jtis, subjects
        if rows:
            self._last = rows[-1]["id"]

    def start(self) -> None:
        """Follow the home in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, daemon=True, name="pynomaly-revocations")
        self._thread.start()

    def _run(self) -> None:
        db = None
        while not self._stop.wait(self.interval_s):
            try:
                if db is None:
                    db = open_database(self.home)
                self._read(db)
                if self._failing:
                    log.info("reading revoked tokens again")
                self._failing = False
            except Exception as e:  # noqa: BLE001 - keep serving with the list as it was
                if not self._failing:
                    log.warning("cannot read the revoked tokens (%s); using the list as it was", e)
                self._failing = True
                if db is not None:
                    db.close()
                db = None
        if db is not None:
            db.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
