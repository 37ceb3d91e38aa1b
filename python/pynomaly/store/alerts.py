"""The alerting rows (tables ``alert_rules``, ``alert_counts``, ``alert_outbox``, migrations 5
and 6 of :mod:`pynomaly.store._schema`, the drift conditions 10): the only SQL for them. When a
rule fires, how a message is delivered and what a signature vouches for is :mod:`pynomaly.service.alerts`;
these are plain functions over a :class:`~pynomaly.store._db.Database` returning its rows.
"""

from __future__ import annotations

# -- rules -----------------------------------------------------------------------------------
_RULE_COLUMNS = ("id", "detector", "channel", "target", "secret", "score_above", "rate_above", "count", "within",
                 "dedup", "timeout", "max_attempts", "created_at", "signature", "drift_above", "score_drift_above")


def insert_rule(db, **rule) -> None:
    """Store a rule; ``rule`` names every column of ``alert_rules``."""
    db.execute(f"INSERT INTO alert_rules ({', '.join(_RULE_COLUMNS)}) VALUES ({','.join('?' * len(_RULE_COLUMNS))})",
               tuple(rule[c] for c in _RULE_COLUMNS))


def rule(db, rule_id: str):
    """The rule ``rule_id``, or None."""
    return db.execute("SELECT * FROM alert_rules WHERE id=?", (rule_id,)).fetchone()


def rules(db, detector=None) -> list:
    """Every rule (of ``detector`` only, unless None), oldest first."""
    if detector is None:
        return db.execute("SELECT * FROM alert_rules ORDER BY created_at").fetchall()
    return db.execute("SELECT * FROM alert_rules WHERE detector=? ORDER BY created_at", (detector,)).fetchall()


def drift_rules(db, detector: str) -> list:
    """``detector``'s rules on drift (a drift_above or score_drift_above condition)."""
    return db.execute("SELECT * FROM alert_rules WHERE detector=? AND (drift_above IS NOT NULL OR score_drift_above"
                      " IS NOT NULL) ORDER BY created_at", (detector,)).fetchall()


def set_signature(db, rule_id: str, signature: str) -> None:
    db.execute("UPDATE alert_rules SET signature=? WHERE id=?", (signature, rule_id))


def delete_rule(db, rule_id: str) -> None:
    """Forget a rule and its window counts (its queued messages stay)."""
    db.execute("DELETE FROM alert_rules WHERE id=?", (rule_id,))
    db.execute("DELETE FROM alert_counts WHERE rule_id=?", (rule_id,))


# -- evaluation (inside the caller's transaction) --------------------------------------------
def count_in_window(db, rule_id: str, at: float, n: int, within: float) -> int:
    """Add ``n`` anomalies seen at ``at`` to the rule's window, drop what is older than
    ``within`` seconds, and return the window's total."""
    if n:
        db.execute("INSERT INTO alert_counts (rule_id, at, n) VALUES (?,?,?)", (rule_id, at, n))
    db.execute("DELETE FROM alert_counts WHERE rule_id=? AND at < ?", (rule_id, at - within))
    return db.execute("SELECT COALESCE(SUM(n), 0) FROM alert_counts WHERE rule_id=? AND at >= ?",
                      (rule_id, at - within)).fetchone()[0]


def latest(db, fingerprint: str):
    """The newest message queued with this fingerprint (``id``, ``payload``, ``created_at``), or None."""
    return db.execute("SELECT id, payload, created_at FROM alert_outbox WHERE fingerprint=?"
                      " ORDER BY created_at DESC LIMIT 1", (fingerprint,)).fetchone()


def waiting(db) -> int:
    """Messages not yet delivered (pending or being sent)."""
    return db.execute("SELECT COUNT(*) FROM alert_outbox WHERE state IN ('pending','sending')").fetchone()[0]


def queue(db, msg_id: str, rule_id: str, channel: str, fingerprint: str, payload: str, at: float) -> None:
    """A message (``payload`` as JSON text) to deliver from ``at`` on."""
    db.execute("INSERT INTO alert_outbox (id, rule_id, channel, fingerprint, payload, state, next_at, created_at)"
               " VALUES (?,?,?,?,?,?,?,?)", (msg_id, rule_id, channel, fingerprint, payload, "pending", at, at))


# -- delivery --------------------------------------------------------------------------------
def any_due(db, now: float) -> bool:
    """Whether a message is due (pending and its time come, or a claim expired): a read, so
    an idle dispatcher takes no lock."""
    return db.execute("SELECT 1 FROM alert_outbox WHERE (state='pending' AND next_at <= ?) OR"
                      " (state='sending' AND claimed_until < ?) LIMIT 1", (now, now)).fetchone() is not None


def claim_due(db, worker: str, now: float, lease: float, limit: int) -> list:
    """Claim at most ``limit`` due messages for ``worker`` until ``now + lease``; returns them
    with their rule's fields as it stands (``rid`` None when the rule was removed).

    One transaction without the write lock: PostgreSQL locks the rows taken (``SKIP LOCKED``,
    so dispatchers take different ones), SQLite's transaction holds the whole database.
    """
    with db.transaction(exclusive=False):
        rows = db.execute(
            "SELECT o.id, o.rule_id, o.payload, o.attempts, r.id AS rid, r.detector, r.channel, r.target,"
            " r.secret, r.timeout, r.max_attempts, r.signature FROM alert_outbox o"
            " LEFT JOIN alert_rules r ON r.id = o.rule_id"
            " WHERE (o.state='pending' AND o.next_at <= ?) OR (o.state='sending' AND o.claimed_until < ?)"
            " ORDER BY o.next_at LIMIT ?" + db.skip_locked("o"), (now, now, int(limit))).fetchall()
        for r in rows:
            db.execute("UPDATE alert_outbox SET state='sending', claimed_by=?, claimed_until=? WHERE id=?",
                       (worker, now + lease, r["id"]))
    return rows


def sent(db, msg_id: str, worker: str, attempts: int, at: float) -> None:
    db.execute("UPDATE alert_outbox SET state='sent', attempts=?, sent_at=?, claimed_by=NULL,"
               " claimed_until=NULL, last_error=NULL WHERE id=? AND claimed_by=?", (attempts, at, msg_id, worker))


def dead(db, msg_id: str, worker: str, attempts: int, error: str) -> None:
    db.execute("UPDATE alert_outbox SET state='dead', attempts=?, claimed_by=NULL, claimed_until=NULL,"
               " last_error=? WHERE id=? AND claimed_by=?", (attempts, error, msg_id, worker))


def retry_at(db, msg_id: str, worker: str, attempts: int, at: float, error: str) -> None:
    db.execute("UPDATE alert_outbox SET state='pending', attempts=?, next_at=?, claimed_by=NULL,"
               " claimed_until=NULL, last_error=? WHERE id=? AND claimed_by=?", (attempts, at, error, msg_id, worker))


def messages(db, state, limit: int) -> list:
    """The outbox's newest ``limit`` messages (in ``state`` only, unless None)."""
    q = "SELECT * FROM alert_outbox" + (" WHERE state=?" if state else "") + " ORDER BY created_at DESC LIMIT ?"
    return db.execute(q, ((state,) if state else ()) + (int(limit),)).fetchall()
