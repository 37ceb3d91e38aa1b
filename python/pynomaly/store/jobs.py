"""The job queue's rows (table ``jobs``, migration 8 of :mod:`pynomaly.store._schema`): the
only SQL for them. What the states mean, who claims, retries and gives up is
:mod:`pynomaly.service.jobs`; these are plain functions over a :class:`~pynomaly.store._db.Database`
returning its rows (readable by column name).

Functions that change a row the caller reads first (cancelling, taking back a stale job) run
in the caller's transaction; :func:`claim` opens its own, since locking the rows it takes is
how several workers share one queue.
"""

from __future__ import annotations

import time


def insert(db, job_id: str, kind: str, params: str, max_attempts: int) -> None:
    """Queue a job (``params`` as JSON text)."""
    db.execute("INSERT INTO jobs (id, kind, params, state, created_at, max_attempts) VALUES (?,?,?,?,?,?)",
               (job_id, kind, params, "queued", time.time(), max_attempts))


def by_id(db, job_id: str):
    """The job ``job_id``, or None."""
    return db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()


def by_prefix(db, prefix: str) -> list:
    """At most two jobs whose id starts with ``prefix`` (LIKE's wildcards in it are dropped):
    enough to tell a unique prefix from an ambiguous one."""
    prefix = prefix.replace("\\", "").replace("%", "").replace("_", "")
    return db.execute("SELECT * FROM jobs WHERE id LIKE ? LIMIT 2", (prefix + "%",)).fetchall()


def latest(db, state, limit: int) -> list:
    """The newest ``limit`` jobs, those in ``state`` only unless it is None."""
    if state is None:
        return db.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (int(limit),)).fetchall()
    return db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY created_at DESC LIMIT ?",
                      (state, int(limit))).fetchall()


def count_by_state(db) -> dict:
    """State -> number of jobs in it (states without jobs absent)."""
    return {r[0]: r[1] for r in db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")}


def cancel_queued(db, job_id: str) -> None:
    db.execute("UPDATE jobs SET state='cancelled', cancel_requested=1, finished_at=? WHERE id=?",
               (time.time(), job_id))


def request_cancel(db, job_id: str) -> None:
    db.execute("UPDATE jobs SET cancel_requested=1 WHERE id=?", (job_id,))


def cancel_requested(db, job_id: str) -> bool:
    r = db.execute("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,)).fetchone()
    return bool(r and r[0])


# -- running jobs and their workers ---------------------------------------------------------
def running(db) -> list:
    """The running jobs' ``id``, ``worker`` and ``heartbeat``."""
    return db.execute("SELECT id, worker, heartbeat FROM jobs WHERE state='running'").fetchall()


def running_by_id(db, job_id: str):
    """The job ``job_id`` if it is still running, else None."""
    return db.execute("SELECT * FROM jobs WHERE id=? AND state='running'", (job_id,)).fetchone()


def end_stale(db, job_id: str, state: str, now: float, error: str) -> None:
    """A running job whose worker is gone: ``cancelled`` or ``failed``, with why."""
    db.execute("UPDATE jobs SET state=?, finished_at=?, error=? WHERE id=?", (state, now, error, job_id))


def requeue_stale(db, job_id: str, note: str) -> None:
    """A running job whose worker is gone, back in the queue; ``note`` added to its notes."""
    db.execute("UPDATE jobs SET state='queued', worker=NULL, stage=NULL, fraction=NULL,"
               " notes=COALESCE(notes || ?, '') || ? WHERE id=?", ("\n", note, job_id))


def any_queued(db) -> bool:
    """Whether a job waits: a read, so an idle worker takes no write lock every poll."""
    return db.execute("SELECT 1 FROM jobs WHERE state='queued' LIMIT 1").fetchone() is not None


def claim(db, worker: str):
    """Take the oldest queued job for ``worker`` and return its row (None when none is left).

    One transaction without the write lock: PostgreSQL locks the row taken (``SKIP LOCKED``,
    so workers take different jobs at once), SQLite's transaction holds the whole database.
    """
    with db.transaction(exclusive=False):
        r = db.execute("SELECT id FROM jobs WHERE state='queued' ORDER BY created_at LIMIT 1"
                       + db.skip_locked()).fetchone()
        if r is None:
            return None
        now = time.time()
        db.execute("UPDATE jobs SET state='running', worker=?, heartbeat=?, started_at=?, attempts=attempts+1,"
                   " stage=NULL, fraction=NULL WHERE id=?", (worker, now, now, r["id"]))
        return db.execute("SELECT * FROM jobs WHERE id=?", (r["id"],)).fetchone()


def heartbeat(db, job_id: str, worker: str, stage, fraction):
    """Record that ``worker`` still runs the job, at ``stage`` and ``fraction``; returns
    ``(cancel_requested,)``, or None when the job is no longer this worker's."""
    return db.execute(
        "UPDATE jobs SET heartbeat=?, stage=?, fraction=? WHERE id=? AND worker=? AND state='running'"
        " RETURNING cancel_requested", (time.time(), stage, fraction, job_id, worker)
    ).fetchone()


def requeue_own(db, job_id: str, worker: str, note: str) -> None:
    """``worker`` gives its running job back (shutting down): queued again, this attempt not
    counted, ``note`` added."""
    db.execute("UPDATE jobs SET state='queued', worker=NULL, stage=NULL, fraction=NULL,"
               " attempts=attempts-1, notes=COALESCE(notes || ?, '') || ?"
               " WHERE id=? AND worker=? AND state='running'", ("\n", note, job_id, worker))


def finish(db, job_id: str, worker: str, state: str, now: float, error, result, stage, fraction) -> None:
    """``worker``'s running job ends in ``state`` (``result`` as JSON text or None)."""
    db.execute("UPDATE jobs SET state=?, finished_at=?, error=?, result=?, stage=?, fraction=?"
               " WHERE id=? AND worker=? AND state='running'",
               (state, now, error, result, stage, fraction, job_id, worker))
