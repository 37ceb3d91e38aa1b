"""The audit trail of a home: who did what, when, from where, with what outcome.

Entries live in the repository's database (table ``audit``, made by migration 2 of
:mod:`pynomaly.store._schema`), one row each, appended inside a
write transaction. Each entry carries the hash of the previous one (``prev``) and its own
(``hash`` = SHA-256 of its fields and ``prev``), so an entry edited or deleted in the middle
breaks the chain. The newest entry's number and hash are also kept in ``audit-head.json``
beside the database (written while the write lock is held), so deleting the newest entries is
seen too. A database home (PostgreSQL) has no folder beside it: its head mark is the row of
table ``audit_head``, written in the same transaction. That is weaker, said plainly: whoever
can delete the newest entries can also rewrite that row, so for a database home the chain
shows edits and deletions in the middle, not the removal of the newest entries by someone
with write access to the database (keep the database's own logs for that).

The application only appends; nothing here edits or deletes an entry.

In an encrypted home the fields that name people and places (``actor``, ``target``,
``origin``, ``outcome``, ``detail``) are sealed like the repository's other sensitive fields;
the number, time and action stay readable. The chain is computed over the opened values, so
re-encrypting the home under a new data key leaves it intact, and reading or verifying the
trail of an encrypted home needs its key. An entry written without the key at hand (the
refusal of a command that lacked it) is stored in clear.

Faces call :func:`pynomaly.service.audit_record`; this module is the storage under it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

from pynomaly._errors import ArtifactIntegrityError, InvalidInputError
from pynomaly.store._files import atomic_write

__all__ = ["append", "entries", "verify", "parse_since", "default_actor", "GENESIS",
           "RefusalLimiter"]

GENESIS = "0" * 64
_FIELDS = ("seq", "at", "actor", "action", "target", "origin", "outcome", "detail", "prev")
SEALED = ("actor", "target", "origin", "outcome", "detail")  # in an encrypted home


def where(column: str, seq) -> str:
    """What a sealed audit field is bound to (as the repository's other sealed fields)."""
    return f"audit.{column}\0{seq}"


def _hash(row: dict) -> str:
    # A canonical JSON array of the fields, in a fixed order: the same bytes on every platform.
    payload = json.dumps([row[k] for k in _FIELDS], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _head_path(home: Path) -> Path:
    return Path(home) / "audit-head.json"


def _head_name(db, home) -> str:
    return "the audit_head table" if db.postgres else str(_head_path(home))


def _write_head(db, home, seq: int, hash_: str) -> None:
    if db.postgres:
        db.execute("INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?)"
                   " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash", (seq, hash_))
    else:
        atomic_write(_head_path(home), json.dumps({"seq": seq, "hash": hash_}).encode())


def _read_head(db, home):
    """The head mark as a dict; None when absent. Raises OSError/ValueError when damaged."""
    if db.postgres:
        r = db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return None if r is None else {"seq": r["seq"], "hash": r["hash"]}
    try:
        return json.loads(_head_path(home).read_text())
    except FileNotFoundError:
        return None


class RefusalLimiter:
    """Which refusals a face records: at most one per caller (a uid, a token subject, an
    address) per ``interval`` seconds. ``admit(caller)`` is None for one left out, else the
    number left out since the caller's last recorded one (to go in that entry's detail), so
    that a client hammering a face cannot flood the home with writes."""

    def __init__(self, interval: float = 1.0, callers: int = 4096):
        self.interval = interval
        self.callers = callers
        self._last: dict = {}  # caller -> (time of the last recorded refusal, left out since)

    def admit(self, caller, now: float):
        last, left_out = self._last.get(caller, (-1e18, 0))
        if now - last < self.interval:
            self._last[caller] = (last, left_out + 1)
            return None
        self._last[caller] = (now, 0)
        if len(self._last) > self.callers:  # many callers: forget the old ones
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
        return left_out


def default_actor() -> str:
    """This process's user as an actor: ``uid=1000(alice)`` (the name when it can be found)."""
    uid = os.getuid() if hasattr(os, "getuid") else -1
    try:
        import pwd

        return f"uid={uid}({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid={uid}"


def _text(value, what: str, limit: int = 4096) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInputError(f"audit {what} must be a string, got {type(value).__name__}")
    return value[:limit]


def append(db, home, *, actor: str, action: str, target: str = "", origin: str = "", outcome: str = "ok",
           detail: Optional[dict] = None, seal=None) -> dict:
    """Append one entry inside the caller's write transaction (``db`` holds the write lock);
    returns it as a dict. The head mark is rewritten before the caller commits. ``seal``
    (value, where) -> stored text seals the :data:`SEALED` fields (an encrypted home)."""
    if not isinstance(action, str) or not action:
        raise InvalidInputError("audit action must be a non-empty string")
    if detail is not None and not isinstance(detail, dict):
        raise InvalidInputError(f"audit detail must be a dict, got {type(detail).__name__}")
    try:
        detail_text = json.dumps(detail, sort_keys=True, default=str) if detail else None
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"audit detail must be JSON-serialisable: {e}") from None
    last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    row = {
        "seq": (last[0] + 1) if last else 1,
        "at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "actor": _text(actor, "actor") or "unknown",
        "action": _text(action, "action", 64),
        "target": _text(target, "target"),
        "origin": _text(origin, "origin"),
        "outcome": _text(outcome, "outcome", 256) or "ok",
        "detail": detail_text,
        "prev": last[1] if last else GENESIS,
    }
    row["hash"] = _hash(row)
    stored = dict(row)
    if seal is not None:
        for k in SEALED:
            stored[k] = seal(row[k], where(k, row["seq"]))
    db.execute(
        "INSERT INTO audit (seq, at, actor, action, target, origin, outcome, detail, prev, hash)"
        " VALUES (?,?,?,?,?,?,?,?,?,?)",
        tuple(stored[k] for k in (*_FIELDS, "hash")),
    )
    _write_head(db, home, row["seq"], row["hash"])
    return row


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str) -> datetime:
    """``--since``: an ISO date or time (``2026-11-30``, ``2026-11-30T12:00``, UTC unless it
    says otherwise) or an age (``30m``, ``12h``, ``7d``, ``2w``)."""
    text = (text or "").strip()
    m = _RELATIVE.match(text)
    if m:
        return datetime.now(timezone.utc) - timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"--since {text!r} is neither an ISO date/time (2026-11-30, 2026-11-30T12:00) nor an age (30m, 12h, 7d)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _row(r, open_=None) -> dict:
    out = {k: r[k] for k in (*_FIELDS, "hash")}
    if open_ is not None:
        for k in SEALED:
            out[k] = open_(out[k], where(k, out["seq"]))
    return out


def entries(db, since: Optional[datetime] = None, open_=None) -> list:
    """Entries (dicts, oldest first), those at or after ``since`` when given. ``open_``
    (stored, where) -> value opens sealed fields."""
    rows = [_row(r, open_) for r in db.execute("SELECT * FROM audit ORDER BY seq")]
    if since is not None:
        rows = [r for r in rows if _at(r) is None or _at(r) >= since]
    for r in rows:
        r["detail"] = json.loads(r["detail"]) if r["detail"] else None
    return rows


def _at(r) -> Optional[datetime]:
    try:
        return datetime.fromisoformat(r["at"])
    except (TypeError, ValueError):
        return None


def verify(db, home, open_=None) -> dict:
    """Check the chain: ``{"ok": bool, "entries": n, "problems": [str, ...]}``.

    Found: an entry whose hash does not match its fields (edited), whose ``prev`` is not the
    previous entry's hash or whose number skips (an entry deleted or inserted), and a chain
    that ends before the head mark (newest entries deleted).
    """
    problems = []
    prev_hash, prev_seq, n = GENESIS, 0, 0
    by_seq = {}
    for r in db.execute("SELECT * FROM audit ORDER BY seq"):
        try:
            row = _row(r, open_)
        except ArtifactIntegrityError as e:  # a sealed field edited: authentication fails
            problems.append(f"entry {r['seq']} was modified: {e}")
            prev_hash, prev_seq = r["hash"], r["seq"]
            n += 1
            by_seq[r["seq"]] = r["hash"]
            continue
        n += 1
        if row["seq"] != prev_seq + 1:
            problems.append(f"entries {prev_seq + 1}..{row['seq'] - 1} are missing (deleted)")
        if row["prev"] != prev_hash:
            problems.append(f"entry {row['seq']} does not follow entry {prev_seq} (its prev hash differs)")
        if _hash(row) != row["hash"]:
            problems.append(f"entry {row['seq']} was modified: its hash does not match its content")
        prev_hash, prev_seq = row["hash"], row["seq"]
        by_seq[row["seq"]] = row["hash"]
    try:
        head = _read_head(db, home)
        if head is None and n:
            problems.append(f"{_head_name(db, home)} is missing: the newest entries cannot be checked")
    except (OSError, ValueError) as e:
        head = None
        problems.append(f"{_head_name(db, home)} is damaged ({e})")
    if isinstance(head, dict):
        seq, h = head.get("seq"), head.get("hash")
        if not isinstance(seq, int) or seq > prev_seq:
            problems.append(
                f"the log ends at entry {prev_seq} but entry {seq} was written: the newest entries were deleted"
            )
        elif by_seq.get(seq) != h:
            problems.append(f"entry {seq} differs from the one recorded in the head mark")
    return {"ok": not problems, "entries": n, "problems": problems}
