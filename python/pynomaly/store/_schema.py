"""Every table of a home, the numbered migrations that made them, and :func:`open_database`,
the one way to a home's database: resolved, connected and migrated.

Migrations are applied on open by :func:`pynomaly.store._db.migrate`, on folder and database
homes alike. Written once, in the SQL both SQLite and PostgreSQL accept; ``_db.ddl`` adapts
the column types. The modules that own the rows (the repository, audit, revocations, jobs,
alerts) hold their queries; the tables are all here.
"""

from __future__ import annotations

import sqlite3

from pynomaly._errors import RepositoryError
from pynomaly.store import _db
from pynomaly.store._home import prepare

__all__ = ["MIGRATIONS", "open_database", "migrated_home"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS detectors (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    algorithm TEXT NOT NULL,
    parameters TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    trained_at TEXT,
    version INTEGER NOT NULL,
    n_features INTEGER,
    feature_names TEXT,
    data_fingerprint TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS detector_versions (
    detector_id TEXT NOT NULL REFERENCES detectors(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    algorithm TEXT NOT NULL,
    parameters TEXT NOT NULL,
    artifact TEXT NOT NULL,
    format TEXT NOT NULL,
    signature TEXT,
    size INTEGER NOT NULL,
    n_features INTEGER,
    feature_names TEXT,
    data_fingerprint TEXT,
    threshold REAL,
    dataset_id TEXT,
    trained_at TEXT NOT NULL,
    PRIMARY KEY (detector_id, version)
);
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    source TEXT,
    n_rows INTEGER NOT NULL,
    n_columns INTEGER NOT NULL,
    column_names TEXT,
    fingerprint TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (fingerprint, source)
);
CREATE TABLE IF NOT EXISTS results (
    id TEXT PRIMARY KEY,
    detector_id TEXT NOT NULL REFERENCES detectors(id) ON DELETE CASCADE,
    detector_version INTEGER NOT NULL,
    dataset_id TEXT,
    threshold REAL,
    total_samples INTEGER NOT NULL,
    anomalies_detected INTEGER NOT NULL,
    processing_time_ms REAL,
    scores_artifact TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""

_DATASET_DATA_SCHEMA = """
CREATE TABLE IF NOT EXISTS dataset_data (
    dataset_id TEXT PRIMARY KEY REFERENCES datasets(id) ON DELETE CASCADE,
    artifact TEXT NOT NULL
);
"""

# The audit trail (pynomaly.store.audit).
_AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    origin TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
)
"""

# A database home's audit head mark (see pynomaly.store.audit): one row, id 1.
_AUDIT_HEAD_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
)
"""

# Tables a database home keeps in the database, where a folder home keeps files beside it: the
# artifacts themselves (see the module's docstring), the version marks and the audit head.
_DATABASE_HOME_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    sha TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS version_marks (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
""" + _AUDIT_HEAD_SCHEMA


# The alert rules, their window counts and the outbox (pynomaly.alerts). Until migration 5 they
# were created on first use, outside the numbered migrations: this is that shape, so a home that
# already has them keeps them as they are.
_ALERTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_rules (
    id TEXT PRIMARY KEY,
    detector TEXT NOT NULL,
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    secret TEXT,
    score_above REAL,
    rate_above REAL,
    count INTEGER,
    within REAL,
    dedup REAL NOT NULL,
    timeout REAL NOT NULL,
    max_attempts INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_rules_by_detector ON alert_rules (detector);
CREATE TABLE IF NOT EXISTS alert_counts (
    rule_id TEXT NOT NULL,
    at REAL NOT NULL,
    n INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_counts_by_rule ON alert_counts (rule_id, at);
CREATE TABLE IF NOT EXISTS alert_outbox (
    id TEXT PRIMARY KEY,
    rule_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    created_at REAL NOT NULL,
    sent_at REAL,
    claimed_by TEXT,
    claimed_until REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS alert_outbox_due ON alert_outbox (state, next_at);
CREATE INDEX IF NOT EXISTS alert_outbox_by_fingerprint ON alert_outbox (fingerprint, created_at)
"""


# API tokens and sessions revoked before they expire (pynomaly.store.revocations).
_REVOCATIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS revoked_tokens (
    id INTEGER PRIMARY KEY,
    jti TEXT,
    subject TEXT,
    not_before REAL,
    expires REAL,
    revoked_at REAL NOT NULL,
    CHECK ((jti IS NULL) <> (subject IS NULL))
)
"""

# The job queue (pynomaly.service.jobs, its rows in pynomaly.store.jobs). Until migration 8 it
# was created on first use, outside the numbered migrations: this is that shape, so a home
# that already has it keeps it as it is.
_JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT,
    fraction REAL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    worker TEXT,
    heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 3,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    notes TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at)
"""


# Drift monitoring (pynomaly.store.drift, issue 24). A version's reference profile: the base64
# of pynomaly.estimators.drift.Profile.to_bytes (a sealed field in an encrypted home); gone
# with its version.
_PROFILES_SCHEMA = """
CREATE TABLE IF NOT EXISTS version_profiles (
    detector_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    profile TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (detector_id, version),
    FOREIGN KEY (detector_id, version) REFERENCES detector_versions (detector_id, version) ON DELETE CASCADE
)
"""

# The live window: served rows counted on a version's reference bins, one row per detector
# name, version and time bucket (its start, in Unix seconds), added to by every process that
# scores (pynomaly.estimators.drift.Counts.to_bytes).
_DRIFT_COUNTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS drift_counts (
    detector TEXT NOT NULL,
    version INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    counts BLOB NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (detector, version, bucket)
);
CREATE INDEX IF NOT EXISTS drift_counts_by_bucket ON drift_counts (bucket)
"""


# Which process learns each streaming detector (pynomaly.store.learners, issue 23): one lease
# per detector name, in the database's clock (Unix seconds), taken over once it lapsed.
_LEARNERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS learners (
    detector TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    acquired_at REAL NOT NULL,
    renewed_at REAL NOT NULL,
    expires_at REAL NOT NULL
)
"""


def _statements(schema: str):
    def apply(db):
        for stmt in _db.ddl(schema, db.dialect):
            db.execute(stmt)

    return apply


def _add_column(table: str, column: str, decl: str):
    """``ALTER TABLE .. ADD COLUMN``, idempotent like the other migrations (SQLite has no
    ``IF NOT EXISTS`` for columns)."""
    def apply(db):
        if db.postgres:
            db.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {decl}")
        elif column not in [r[1] for r in db.execute(f"PRAGMA table_info({table})")]:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    return apply


def _all(*steps):
    """Several steps as one migration."""
    def apply(db):
        for step in steps:
            step(db)

    return apply


def _database_home_only(schema: str):
    apply = _statements(schema)
    return lambda db: apply(db) if db.postgres else None


# The repository's migrations, in order (migration n is MIGRATIONS[n - 1]); append, never
# edit. 1 to 3 are what a folder home's ``PRAGMA user_version`` counted before the
# schema_migrations table existed; each is idempotent, so a home that had them is safe anyway.
MIGRATIONS = [
    ("detectors, versions, datasets, results", _statements(_SCHEMA)),
    ("the audit table", _statements(_AUDIT_SCHEMA)),
    ("dataset_data: the stored rows of uploaded datasets", _statements(_DATASET_DATA_SCHEMA)),
    ("a database home's artifacts, version marks and audit head", _database_home_only(_DATABASE_HOME_SCHEMA)),
    ("alert rules, counts and outbox (made on first use before)", _statements(_ALERTS_SCHEMA)),
    # A rule's HMAC under the installation's key (pynomaly.alerts.rule_signature): whoever can
    # write rows cannot make a dispatcher run a command or write a file (issue 25).
    ("alert_rules.signature", _add_column("alert_rules", "signature", "TEXT")),
    ("revoked_tokens: API tokens and sessions revoked before they expire", _statements(_REVOCATIONS_SCHEMA)),
    ("jobs' tables (made on first use before)", _statements(_JOBS_SCHEMA)),
    ("version_profiles: each version's drift reference", _statements(_PROFILES_SCHEMA)),
    # Drift's second number also gives alert rules their drift conditions (pynomaly.alerts:
    # drift_above, score_drift_above); each step is idempotent.
    ("drift_counts: served rows on the reference's bins, by time bucket; alert rules on drift",
     _all(_statements(_DRIFT_COUNTS_SCHEMA), _add_column("alert_rules", "drift_above", "REAL"),
          _add_column("alert_rules", "score_drift_above", "REAL"))),
    ("learners: which process learns each streaming detector (a lease)", _statements(_LEARNERS_SCHEMA)),
]


def open_database(home) -> "_db.Database":
    """A connection to ``home``'s database, migrated to :data:`MIGRATIONS`: what every module
    that reads or writes a home's rows opens (the repository, jobs, alerts, revocations).

    ``home`` is anything :func:`pynomaly.store._home.prepare` accepts (None, a folder, a URL,
    a Repository); the connection's ``home`` is the resolved one. Migrating reads first, so
    an up-to-date database costs one query here and takes no write lock.
    """
    home = prepare(home)
    db = None
    try:
        db = _db.Database(home)
        _db.migrate(db, MIGRATIONS)
    except sqlite3.DatabaseError as e:
        if db is not None:
            db.close()
        raise RepositoryError(
            f"the repository database {str(home / 'pynomaly.db')!r} cannot be used ({e}); if it is "
            "damaged, move it aside (the artifacts/ folder keeps the models' bytes) and restore it from a backup"
        ) from None
    except BaseException:
        if db is not None:
            db.close()
        raise
    return db



def migrated_home(home):
    """``home`` resolved (a Path or the URL; see :func:`open_database`), its database
    migrated: for a long-running reader that connects to it later, again and again."""
    with open_database(home) as db:
        return db.home
