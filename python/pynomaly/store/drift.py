"""Drift monitoring's rows (tables ``version_profiles`` and ``drift_counts``, migrations 9 and
10 of :mod:`pynomaly.store._schema`): the only SQL for them. What the bytes mean is
:mod:`pynomaly.estimators.drift`; when they are written and read is :mod:`pynomaly.service.drift`.

A version's profile is a field of its version: base64 text, sealed like the version's
threshold in an encrypted home (bound to the detector and version, re-sealed by
``pynomaly keys reencrypt``). The live counts are not sealed: they are histograms of served
traffic on the reference's edges, whose values stay sealed with the profile.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timezone
from typing import Callable, Optional

from pynomaly._errors import ArtifactIntegrityError, DetectorNotFoundError

__all__ = ["put_profile", "get_profile", "add_counts", "window_counts", "prune_counts", "clear_counts"]


def _version_key(repo, name: str, version: int):
    d = repo.get(name)
    r = repo._db.execute("SELECT 1 FROM detector_versions WHERE detector_id = ? AND version = ?",
                         (d.id, int(version))).fetchone()
    if r is None:
        raise DetectorNotFoundError(f"detector {name!r} has no version {version}")
    return d.id, int(version)


def put_profile(repo, name: str, version: int, blob: bytes) -> None:
    """Store (or replace) the profile of ``name``'s ``version``."""
    repo.require_key()
    key = _version_key(repo, name, version)
    text = repo._seal(base64.b64encode(bytes(blob)).decode(), repo._where("version_profiles", "profile", key))
    with repo._transaction() as db:
        db.execute("INSERT INTO version_profiles (detector_id, version, profile, created_at) VALUES (?,?,?,?)"
                   " ON CONFLICT (detector_id, version) DO UPDATE SET profile = excluded.profile,"
                   " created_at = excluded.created_at",
                   (*key, text, datetime.now(timezone.utc).isoformat()))


def get_profile(repo, name: str, version: int) -> Optional[bytes]:
    """The stored profile bytes of ``name``'s ``version``, or None when it has none."""
    key = _version_key(repo, name, version)
    r = repo._db.execute("SELECT profile FROM version_profiles WHERE detector_id = ? AND version = ?", key).fetchone()
    if r is None:
        return None
    text = repo._open(r["profile"], repo._where("version_profiles", "profile", key))
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ArtifactIntegrityError(f"the stored drift profile of {name!r} version {version} is damaged") from None


def add_counts(db, detector: str, version: int, bucket: int, merge: Callable, now: float) -> None:
    """Add to a bucket's counts: ``merge(stored bytes or None)`` returns the new bytes. Under
    the write lock, so processes adding to one bucket at once all count."""
    with db.transaction():
        r = db.execute("SELECT counts FROM drift_counts WHERE detector = ? AND version = ? AND bucket = ?",
                       (detector, int(version), int(bucket))).fetchone()
        blob = merge(None if r is None else bytes(r["counts"]))
        if r is None:
            db.execute("INSERT INTO drift_counts (detector, version, bucket, counts, updated_at) VALUES (?,?,?,?,?)",
                       (detector, int(version), int(bucket), blob, now))
        else:
            db.execute("UPDATE drift_counts SET counts = ?, updated_at = ? WHERE detector = ? AND version = ?"
                       " AND bucket = ?", (blob, now, detector, int(version), int(bucket)))


def window_counts(db, detector: str, version: int, since: Optional[int]) -> list:
    """The stored counts (bytes) of ``detector``'s ``version`` in buckets starting at or after
    ``since`` (all of them for None), oldest first."""
    q = "SELECT counts FROM drift_counts WHERE detector = ? AND version = ?"
    args = [detector, int(version)]
    if since is not None:
        q += " AND bucket >= ?"
        args.append(int(since))
    return [bytes(r["counts"]) for r in db.execute(q + " ORDER BY bucket", tuple(args))]


def prune_counts(db, before: int) -> None:
    """Forget the buckets that started before ``before``."""
    with db.transaction():
        db.execute("DELETE FROM drift_counts WHERE bucket < ?", (int(before),))


def clear_counts(db, detector: str, version: int) -> None:
    """Forget every bucket of ``detector``'s ``version`` (its reference was replaced)."""
    with db.transaction():
        db.execute("DELETE FROM drift_counts WHERE detector = ? AND version = ?", (detector, int(version)))
