"""The embedded repository: detectors, their versions, datasets and results under one folder.

Layout of the home folder (``PYNOMALY_HOME``, else the user's data folder)::

    pynomaly.db            SQLite (WAL): detectors, detector_versions, datasets, results
    artifacts/ab/<sha>.zst artifacts, zstd-compressed, named by the SHA-256 of their content
    secret.key             32 random bytes (mode 0600): the HMAC key for pickled artifacts
    keyring.json           encrypted homes only: the data keys, wrapped (see pynomaly.crypto)
    audit-head.json        number and hash of the newest audit entry (see pynomaly.audit)

An encrypted home (``pynomaly init --encrypt``) keeps each artifact as
``artifacts/ab/<sha>.<context tag>.pne``: sealed with AES-256-GCM, bound to its content hash
and to its context (a model version's detector name and version, a result's id), so one blob
per context; dataset names and sources and every stored threshold are sealed fields. Names,
versions, statuses and feature names (the model's schema) stay readable: listing needs no key.

Artifact formats, per detector kind (``artifact_format`` of the class, default "native"):
native detectors their own ``to_bytes`` (no pickle); torch a ``torch.save`` of tensors read
back with ``weights_only=True``; JAX an ``.npz`` read with ``allow_pickle=False``; PyOD a
pickle, which is only unpickled after its HMAC signature (kept in the database) checks out.

Durability: an artifact is written to a temporary file, fsynced and renamed into place before
one SQLite transaction (``BEGIN IMMEDIATE``) records the version, so a process killed at any
point leaves the previous version loadable (at worst an unreferenced artifact file remains).
Version numbers are assigned inside that transaction, so several processes may save at once.

A database home (``--home postgresql://user@host/db?host=/socket/dir&port=N``, see
:mod:`pynomaly._home`) keeps the same tables in PostgreSQL, plus what a folder home keeps as
files beside them:

    artifacts(sha, data)       the artifacts, zstd-compressed, content-addressed, as rows
    version_marks(name, version)   the highest version ever given to each name
    audit_head                 number and hash of the newest audit entry
    schema_migrations          the migrations applied (a folder home has the table too)

The artifacts live in the database, not in a shared folder: the artifact row is inserted in
the transaction that records the version, so a save is one transaction (no orphan files, no
window in which a row points at bytes not yet written), a backup of the database is a backup
of everything, and replicas on several machines need no shared disk. The cost is database
size (models are typically kilobytes to a few megabytes, compressed). The pickle-signing key
is deliberately *not* in the database: it is ``local_dir(home)/secret.key`` (see
:mod:`pynomaly._home`; replicas share it through ``PYNOMALY_CONFIG_DIR``), so that someone
who can write rows cannot make a replica unpickle them. Every save, activate, archive and
delete sends ``NOTIFY pynomaly_versions, '<name>'`` at its commit, for the serving caches of
other processes (:mod:`pynomaly.serving.sources`). Encrypted homes are folder homes only.

Schema changes are numbered migrations (``pynomaly._schema.MIGRATIONS``), applied on open by
:func:`pynomaly._db.migrate`, once, whatever the number of processes starting together.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import sqlite3
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np

from pynomaly.store import _db
from pynomaly.store._schema import MIGRATIONS
from pynomaly.store import audit as _audit
from pynomaly.store._home import is_database_url, local_dir, redacted, signing_key
from pynomaly._errors import ArtifactIntegrityError, DatasetNotFoundError, DetectorNotFoundError, InvalidInputError
from pynomaly._errors import KeyRequiredError, RepositoryError, ResultNotFoundError
from pynomaly.store._files import atomic_write, zstd
from pynomaly.store.crypto import HomeCipher, KeySource, context_tag, create_keyring, is_encrypted, key_source
from pynomaly.domain import DetectionResult, Detector, DetectorStatus, shown
from pynomaly.store.exportfile import Export, write_export

__all__ = [
    "Repository",
    "default_home",
    "DetectorNotFoundError",
    "ArtifactIntegrityError",
    "RepositoryError",
]


def _check_sha(sha) -> str:
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ArtifactIntegrityError(f"bad artifact id {sha!r}")
    return sha


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def default_home():
    """``$PYNOMALY_HOME`` (a folder as a Path; a PostgreSQL URL as the string itself), else the
    per-user data folder (XDG on Linux, Application Support on macOS, %LOCALAPPDATA% on
    Windows) + ``pynomaly``."""
    env = os.environ.get("PYNOMALY_HOME")
    if env:
        return env if is_database_url(env) else Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "pynomaly"


class Repository:
    """Detectors, versions, datasets and results stored under a home folder.

    Parameters
    ----------
    home : str, Path or None
        The folder (created, mode 0700, if absent), or a PostgreSQL URL (a database home: see
        the module's docstring); None means :func:`default_home`. ``self.home`` is the Path or
        the URL as given; ``self.shown`` is what messages name (the URL without a password).
    key : KeySource, optional
        Where an encrypted home's key-encryption key comes from; default: the environment
        (``PYNOMALY_KEY_FILE``, ``PYNOMALY_KEY_COMMAND``, ``PYNOMALY_KEY``). Asked for only
        when sealed data is read or written (listing needs none).

    Use as a context manager or call :meth:`close`. Each instance owns one connection (a lost
    PostgreSQL connection is replaced on the next call); open one per thread or process.
    """

    def __init__(self, home=None, *, key: "KeySource | None" = None):
        self._key_source = key
        if home is None:
            home = default_home()
        if is_database_url(home):
            self.home = home  # the URL, as given (the password too: replicas reconnect with it)
            self.shown = redacted(home)
            self._local = local_dir(home)  # the signing key (see _key)
        else:
            self.home = Path(home).expanduser()
            self.shown = str(self.home)
            self._local = self.home
            try:
                self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
                (self.home / "artifacts").mkdir(exist_ok=True, mode=0o700)
            except OSError as e:
                raise RepositoryError(f"cannot create the pynomaly home folder {str(self.home)!r}: {e}") from None
        db = None
        try:
            db = _db.Database(self.home)
            _db.migrate(db, MIGRATIONS)
        except sqlite3.DatabaseError as e:
            if db is not None:
                db.close()
            raise RepositoryError(
                f"the repository database {str(self.home / 'pynomaly.db')!r} cannot be used ({e}); if it is "
                "damaged, move it aside (the artifacts/ folder keeps the models' bytes) and restore it from a backup"
            ) from None
        except BaseException:
            if db is not None:
                db.close()
            raise
        self._db = db
        self._files = not self._db.postgres  # artifacts as files beside the database, else rows in it
        encrypted = self._files and is_encrypted(self.home)
        self._cipher = HomeCipher(self.home, key if key is not None else key_source()) if encrypted else None

    # -- encryption ----------------------------------------------------------------------------
    @property
    def encrypted(self) -> bool:
        """Whether this home seals its data (``pynomaly init --encrypt``)."""
        return self._cipher is not None

    def require_key(self) -> None:
        """For an encrypted home, raise KeyRequiredError now (before any work) unless its key
        is given and opens every data key; nothing for a plain home."""
        if self._cipher is not None:
            self._cipher.require()

    def _seal(self, value, where: str):
        return value if self._cipher is None else self._cipher.seal_field(value, where)

    def _open(self, value, where: str):
        return value if self._cipher is None else self._cipher.open_field(value, where)

    def encrypt_home(self, key: KeySource) -> None:
        """Make this (empty) home encrypted, its data key wrapped by the key from ``key``."""
        if self._cipher is not None:
            raise RepositoryError(f"the home {self.home} is already encrypted")
        if not self._files:
            raise RepositoryError(
                f"encrypted homes are folder homes only for now; {self.shown} is a PostgreSQL database "
                "(use the database's own encryption at rest, or a folder home with --encrypt)"
            )
        used = [t for t in ("detectors", "datasets", "results")
                if self._db.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() is not None]
        if used or any((self.home / "artifacts").glob("*/*")):
            raise RepositoryError(
                f"the home {self.home} already holds data ({', '.join(used) or 'artifacts'}); encrypt a new home "
                "instead (pynomaly --home NEW init --encrypt) and move detectors over with export and import"
            )
        key.check_outside(self.home)
        create_keyring(self.home, key.load())
        self._cipher = HomeCipher(self.home, key)
        self._key_source = key

    def rewrap_key(self, new_key: KeySource) -> list:
        """Wrap the data keys with a new key-encryption key; the artifacts stay as they are."""
        if self._cipher is None:
            raise RepositoryError(f"the home {self.home} is not encrypted (pynomaly init --encrypt)")
        return self._cipher.rewrap(new_key)

    def _sealed_fields(self):
        """Every sealed column: (table, column, key columns, how a row names itself)."""
        return (
            ("datasets", "source", ("id",)),
            ("datasets", "name", ("id",)),
            ("detector_versions", "threshold", ("detector_id", "version")),
            ("results", "threshold", ("id",)),
            *(("audit", col, ("seq",)) for col in _audit.SEALED),
        )

    def reencrypt(self, progress=None) -> dict:
        """Seal everything under a new data key, then forget the old ones.

        Resumable: the new key is recorded (with the old ones kept) before anything is
        rewritten; each file is replaced atomically and each table's fields in one
        transaction; the old keys are dropped only once a pass, made under the write lock,
        finds nothing sealed with them. Run it again after a crash: it carries on.
        Returns ``{"key": new id, "files": n rewritten, "fields": n, "retired": [ids]}``.
        """
        c = self._cipher
        if c is None:
            raise RepositoryError(f"the home {self.home} is not encrypted (pynomaly init --encrypt)")
        new = c.begin_new_key()
        files = fields = 0
        while True:
            n_files = self._reseal_files(new, progress)
            with self._transaction() as db:
                n_fields = self._reseal_fields(db, new)
                # Under the write lock: writers seal inside their transactions, so nothing
                # old can appear between this last pass and dropping the old keys.
                if n_files == 0 or self._reseal_files(new, progress) == 0:
                    retired = c.finish_new_key()
                    return {"key": new, "files": files + n_files, "fields": fields + n_fields, "retired": retired}
            files += n_files
            fields += n_fields

    def _reseal_files(self, key_id: str, progress=None) -> int:
        n = 0
        for path in sorted((self.home / "artifacts").glob("*/*.pne")):
            sha, tag = self._split_name(path)
            if sha is None:
                continue
            try:
                raw = path.read_bytes()
            except FileNotFoundError:  # deleted meanwhile
                continue
            if HomeCipher.artifact_key_id(raw) == key_id:
                continue
            packed = self._cipher.open_artifact(raw, sha, tag, f"artifact {path.name}")
            atomic_write(path, self._cipher.seal_artifact(packed, sha, tag))
            n += 1
            if progress is not None:
                progress(f"re-encrypted {path.name}")
        return n

    def _reseal_fields(self, db, key_id: str) -> int:
        n = 0
        for table, column, keys in self._sealed_fields():
            for r in db.execute(f"SELECT {', '.join(keys)}, {column} AS v FROM {table}").fetchall():
                kid = HomeCipher.field_key_id(r["v"])
                if kid is None or kid == key_id:
                    continue
                where = self._where(table, column, [r[k] for k in keys])
                value = self._cipher.open_field(r["v"], where)
                cond = " AND ".join(f"{k} = ?" for k in keys)
                db.execute(f"UPDATE {table} SET {column} = ? WHERE {cond}",
                           (self._cipher.seal_field(value, where), *[r[k] for k in keys]))
                n += 1
        return n

    @staticmethod
    def _where(table: str, column: str, key_values) -> str:
        # The same form as pynomaly.audit.where for the audit table's sealed fields.
        return f"{table}.{column}\0" + "\0".join(str(v) for v in key_values)

    # -- audit ---------------------------------------------------------------------------------
    def audit_append(self, *, actor: str, action: str, target: str = "", origin: str = "", outcome: str = "ok",
                     detail=None) -> dict:
        """Append an entry to the audit log (see :mod:`pynomaly.audit`); returns it."""
        seal = None
        if self._cipher is not None:
            try:
                self._cipher.require()
                seal = self._cipher.seal_field
            except KeyRequiredError:  # e.g. the refusal of a command that lacked the key
                seal = None
        with self._transaction() as db:
            return _audit.append(db, self.home, actor=actor, action=action, target=target, origin=origin,
                                 outcome=outcome, detail=detail, seal=seal)

    def audit_entries(self, since=None) -> list:
        """Audit entries, oldest first (those at or after the datetime ``since``)."""
        return _audit.entries(self._db, since, None if self._cipher is None else self._cipher.open_field)

    def audit_verify(self) -> dict:
        """Check the audit chain; see :func:`pynomaly.audit.verify`."""
        # Under the write lock: an append writes the head mark before its commit, so reading
        # the rows and the mark while one is half-way would see a mark ahead of the rows.
        with self._transaction() as db:
            return _audit.verify(db, self.home, None if self._cipher is None else self._cipher.open_field)

    # -- plumbing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _transaction(self):
        # The write lock at once (BEGIN IMMEDIATE, or its PostgreSQL stand-in; see pynomaly._db).
        return self._db.transaction()

    # Processes serving a database home listen on this channel (pynomaly.serving.sources):
    # the payload is the detector's name, sent at commit by whatever changed what it serves.
    NOTIFY_CHANNEL = "pynomaly_versions"

    def _changed(self, db, name: str) -> None:
        db.notify(self.NOTIFY_CHANNEL, name)

    # -- artifacts -----------------------------------------------------------------------------
    def _artifact_path(self, sha: str, context: str = "") -> Path:
        _check_sha(sha)
        if self._cipher is not None:
            return self.home / "artifacts" / sha[:2] / f"{sha}.{context_tag(context)}.pne"
        return self.home / "artifacts" / sha[:2] / f"{sha}.zst"

    def _location(self, sha: str, context: str = ""):
        """Where an artifact lives: its file (a folder home) or its row's key (a database home)."""
        return self._artifact_path(sha, context) if self._files else _check_sha(sha)

    def _read_stored(self, loc):
        """The stored (packed) bytes at ``loc``, or None when there are none."""
        if not self._files:
            r = self._db.execute("SELECT data FROM artifacts WHERE sha = ?", (loc,)).fetchone()
            return None if r is None else bytes(r["data"])
        try:
            return loc.read_bytes()
        except FileNotFoundError:
            return None

    def _discard(self, loc) -> None:
        """Remove an artifact no row uses any more (inside the deleting transaction)."""
        if self._files:
            loc.unlink(missing_ok=True)
        else:
            self._db.execute("DELETE FROM artifacts WHERE sha = ?", (loc,))

    @staticmethod
    def _split_name(path: Path):
        """``(sha, context tag)`` of an encrypted artifact's file name, else ``(None, None)``."""
        parts = path.name.split(".")
        if len(parts) == 3 and parts[2] == "pne" and len(parts[0]) == 64 and len(parts[1]) == 32:
            return parts[0], parts[1]
        return None, None

    @staticmethod
    def version_context(name: str, version) -> str:
        """The context a model version's artifact is bound to: its detector name and version."""
        return f"model\0{name}\0{int(version)}"

    @staticmethod
    def dataset_context(dataset_id: str) -> str:
        """The context a stored dataset's rows are bound to."""
        return f"dataset:{dataset_id}"

    @staticmethod
    def result_context(result_id: str) -> str:
        """The context a stored result's scores are bound to."""
        return f"result\0{result_id}"

    def _pack(self, data: bytes, sha: str, context: str) -> bytes:
        packed = zstd().ZstdCompressor(level=6).compress(data)
        if self._cipher is not None:
            packed = self._cipher.seal_artifact(packed, sha, context_tag(context))
        return packed

    def put_artifact(self, data: bytes, context: str = "") -> str:
        """Store bytes (zstd-compressed) under their SHA-256; return it. Idempotent.

        A file already stored under that name is kept only when it holds these bytes: one
        that was truncated or corrupted since is replaced (atomically), so a new version
        never points at a damaged file that merely has the right name.

        In an encrypted home the bytes are sealed, bound to their hash and to ``context`` (a
        string naming what they belong to; :meth:`get_artifact` must be given the same), and
        each context has its own file. In a database home they are a row of ``artifacts``,
        written in the caller's transaction (or one of its own).
        """
        sha = hashlib.sha256(data).hexdigest()
        if (self._cipher is not None or not self._files) and not self._db.in_transaction:
            # Sealing writes hold the write lock, so a re-encryption's last pass (made under
            # it) cannot miss a file sealed with a key it is about to drop.
            with self._transaction():
                self._put(data, sha, context)
        else:
            self._put(data, sha, context)
        return sha

    def _put(self, data: bytes, sha: str, context: str) -> None:
        loc = self._location(sha, context)
        if self._files:
            if not loc.exists() or not self._holds(loc, sha, context):
                loc.parent.mkdir(exist_ok=True, mode=0o700)
                atomic_write(loc, self._pack(data, sha, context))
        elif not self._holds(loc, sha, context):
            self._db.execute("INSERT INTO artifacts (sha, data) VALUES (?, ?)"
                             " ON CONFLICT (sha) DO UPDATE SET data = excluded.data",
                             (sha, self._pack(data, sha, context)))

    def _holds(self, loc, sha: str, context: str = "") -> bool:
        """Whether the artifact at ``loc`` opens to bytes whose SHA-256 is ``sha``."""
        try:
            raw = self._read_stored(loc)
            if raw is None:
                return False
            data = self._unpack(raw, sha, context, f"artifact {sha[:12]}")
        except KeyRequiredError:
            raise
        except RepositoryError:
            raise
        except Exception:  # noqa: BLE001 - unreadable or corrupted: it does not hold them
            return False
        return hashlib.sha256(data).hexdigest() == sha

    def _unpack(self, raw: bytes, sha: str, context: str, what: str) -> bytes:
        if self._cipher is not None:
            raw = self._cipher.open_artifact(raw, sha, context_tag(context), what)
        return zstd().ZstdDecompressor().decompress(raw)

    def get_artifact(self, sha: str, context: str = "") -> bytes:
        """The bytes stored under ``sha`` (and ``context``, in an encrypted home); refused
        when missing, not matching their hash, or (encrypted) failing authentication."""
        loc = self._location(sha, context)
        raw = self._read_stored(loc)
        if raw is None:
            where = loc.parent if self._files else f"the artifacts table of {self.shown}"
            raise ArtifactIntegrityError(f"artifact {sha[:12]} is missing from {where}")
        if self._cipher is not None:
            raw = self._cipher.open_artifact(raw, sha, context_tag(context), f"artifact {sha[:12]}")
        try:
            data = zstd().ZstdDecompressor().decompress(raw)
        except Exception as e:
            raise ArtifactIntegrityError(f"artifact {sha[:12]} is corrupted (cannot decompress: {e})") from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise ArtifactIntegrityError(f"artifact {sha[:12]} was modified: its content does not match its hash")
        return data

    # -- signing (pickled artifacts only) ------------------------------------------------------
    def _key(self) -> bytes:
        return signing_key(self._local)

    def _sign(self, sha: str, algorithm: str) -> str:
        msg = f"pynomaly-artifact/1\0{algorithm}\0{sha}".encode()
        return hmac.new(self._key(), msg, hashlib.sha256).hexdigest()

    def _verify(self, sha: str, algorithm: str, signature) -> bool:
        return isinstance(signature, str) and hmac.compare_digest(self._sign(sha, algorithm), signature)

    # -- detectors -----------------------------------------------------------------------------
    def _row_to_detector(self, r) -> Detector:
        try:
            return self._detector_of(r)
        except (ValueError, TypeError, KeyError) as e:  # json, dates, enum: a damaged row
            raise RepositoryError(
                f"the row of detector {r['name']!r} in {self._db.where} is damaged "
                f"({type(e).__name__}: {e}); delete it (pynomaly delete {r['name']}) or restore the database"
            ) from None

    def _detector_of(self, r) -> Detector:
        return Detector(
            id=r["id"],
            name=r["name"],
            algorithm=r["algorithm"],
            parameters=json.loads(r["parameters"]),
            status=DetectorStatus(r["status"]),
            created_at=datetime.fromisoformat(r["created_at"]),
            trained_at=datetime.fromisoformat(r["trained_at"]) if r["trained_at"] else None,
            version=r["version"],
            n_features=r["n_features"],
            feature_names=json.loads(r["feature_names"]) if r["feature_names"] else None,
            data_fingerprint=r["data_fingerprint"],
            error=r["error"],
        )

    def get(self, name: str) -> Detector:
        """The detector called ``name``; DetectorNotFoundError if there is none."""
        r = self._db.execute("SELECT * FROM detectors WHERE name = ?", (name,)).fetchone()
        if r is None:
            raise DetectorNotFoundError(f"no detector named {name!r} in {self.shown}")
        return self._row_to_detector(r)

    def exists(self, name: str) -> bool:
        """Whether a detector called ``name`` exists."""
        return self._db.execute("SELECT 1 FROM detectors WHERE name = ?", (name,)).fetchone() is not None

    def list(self) -> list:
        """All detectors, by name."""
        return [self._row_to_detector(r) for r in self._db.execute("SELECT * FROM detectors ORDER BY name")]

    def _write_detector(self, db, d: Detector) -> None:
        db.execute(
            "INSERT INTO detectors (id, name, algorithm, parameters, status, created_at, trained_at, version,"
            " n_features, feature_names, data_fingerprint, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(id) DO UPDATE SET algorithm=excluded.algorithm, parameters=excluded.parameters,"
            " status=excluded.status, trained_at=excluded.trained_at, version=excluded.version,"
            " n_features=excluded.n_features, feature_names=excluded.feature_names,"
            " data_fingerprint=excluded.data_fingerprint, error=excluded.error",
            (
                d.id,
                d.name,
                d.algorithm,
                json.dumps(d.parameters),
                d.status.value,
                d.created_at.isoformat(),
                d.trained_at.isoformat() if d.trained_at else None,
                d.version,
                d.n_features,
                json.dumps(d.feature_names) if d.feature_names is not None else None,
                d.data_fingerprint,
                d.error,
            ),
        )

    def _adopt_existing(self, db, d: Detector) -> None:
        """Give ``d`` the id of a stored detector with the same name (another process may have
        created it since ``d`` was made), so saving continues that detector's versions."""
        r = db.execute("SELECT id, created_at FROM detectors WHERE name = ?", (d.name,)).fetchone()
        if r is not None and r["id"] != d.id:
            d.id = r["id"]
            d.created_at = datetime.fromisoformat(r["created_at"])

    def put(self, detector: Detector) -> Detector:
        """Insert or update the detector's own row (status, error, ...), not its versions."""
        with self._transaction() as db:
            self._adopt_existing(db, detector)
            self._write_detector(db, detector)
            self._changed(db, detector.name)
        return detector

    def add_version(self, detector: Detector, blob: bytes, *, format: str = "native", threshold=None,
                    dataset_id=None) -> Detector:
        """Store a model's bytes as the detector's next version, and the detector as given.

        The caller has applied the lifecycle (``mark_trained`` and usually ``activate``); the
        version number is assigned here, atomically, and written back to ``detector``.
        ``format`` is the model class's ``artifact_format``; "pickle" blobs are signed with
        this home's key.
        """
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise InvalidInputError(f"a stored model must be bytes, got {type(blob).__name__}")
        blob = bytes(blob)
        if self._cipher is not None:
            return self._add_sealed_version(detector, blob, format, threshold, dataset_id)
        sha = hashlib.sha256(blob).hexdigest()
        if self._files:
            self.put_artifact(blob)  # durable before the row that points at it exists
        signature = self._sign(sha, detector.algorithm) if format == "pickle" else None
        with self._transaction() as db:
            self._adopt_existing(db, detector)
            self._write_detector(db, detector)  # first save: the row must exist for the FK
            detector.version = self._next_version(db, detector)
            if not self._files:
                self.put_artifact(blob)  # a row, in this transaction: one commit for all
            self._insert_version(db, detector, sha, format, signature, len(blob), threshold, dataset_id)
            self._write_detector(db, detector)
            self._changed(db, detector.name)
        self._ensure_artifact(sha, blob)
        return detector

    def _add_sealed_version(self, detector: Detector, blob: bytes, format: str, threshold, dataset_id) -> Detector:
        # The artifact is bound to the version number, which is known only inside the
        # transaction: it is written (durably) there, before the commit of the row pointing at
        # it. A crash in between leaves an unreferenced file (doctor's orphan), never a row
        # without its bytes.
        self.require_key()  # before the version number is taken
        sha = hashlib.sha256(blob).hexdigest()
        signature = self._sign(sha, detector.algorithm) if format == "pickle" else None
        with self._transaction() as db:
            self._adopt_existing(db, detector)
            self._write_detector(db, detector)
            detector.version = self._next_version(db, detector)
            self.put_artifact(blob, self.version_context(detector.name, detector.version))
            self._insert_version(db, detector, sha, format, signature, len(blob), threshold, dataset_id)
            self._write_detector(db, detector)
        return detector

    # -- version numbers that never go back -----------------------------------------------
    # The highest version ever given to each name is also kept in a file beside the database
    # (rewritten atomically while the write lock is held), so a database that lost its latest
    # rows (a removed -wal file, a restored backup) cannot hand out a number again: a
    # (name, version) pair names one model for the life of the home, across deletes too.
    # A database home keeps them in the table version_marks, in the same transaction.
    def _marks_path(self) -> Path:
        return self.home / "version-marks.json"

    def version_marks(self) -> dict:
        """Name -> highest version ever assigned in this home."""
        if not self._files:
            return {r["name"]: r["version"] for r in self._db.execute("SELECT name, version FROM version_marks")}
        try:
            marks = json.loads(self._marks_path().read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise RepositoryError(
                f"{str(self._marks_path())!r} is damaged ({e}); `pynomaly doctor --repair` rebuilds it"
            ) from None
        return marks if isinstance(marks, dict) else {}

    def _write_marks(self, db, marks: dict) -> None:
        """Record ``marks`` (inside the write transaction)."""
        if self._files:
            atomic_write(self._marks_path(), json.dumps(marks, sort_keys=True).encode())
            return
        for name, version in marks.items():
            db.execute("INSERT INTO version_marks (name, version) VALUES (?, ?) ON CONFLICT (name)"
                       " DO UPDATE SET version = excluded.version", (name, int(version)))

    def _next_version(self, db, detector: Detector) -> int:
        in_db = db.execute(
            "SELECT COALESCE(MAX(version), 0) FROM detector_versions WHERE detector_id = ?", (detector.id,)
        ).fetchone()[0]
        marks = self.version_marks()
        version = max(int(in_db), int(marks.get(detector.name, 0))) + 1
        # Durable before the commit (a folder home): a crash in between leaves a gap, never a
        # reused number.
        self._write_marks(db, {**marks, detector.name: version} if self._files else {detector.name: version})
        return version

    def _ensure_artifact(self, sha: str, blob: bytes) -> None:
        """After committing a row that points at ``sha``: if a concurrent delete removed the
        (shared, identical) file in between, write it again."""
        if self._files and not self._artifact_path(sha).exists():
            self.put_artifact(blob)

    def _insert_version(self, db, d, sha, fmt, signature, size, threshold, dataset_id) -> None:
        db.execute(
            "INSERT INTO detector_versions (detector_id, version, algorithm, parameters, artifact, format,"
            " signature, size, n_features, feature_names, data_fingerprint, threshold, dataset_id, trained_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                d.id,
                d.version,
                d.algorithm,
                json.dumps(d.parameters),
                sha,
                fmt,
                signature,
                size,
                d.n_features,
                json.dumps(d.feature_names) if d.feature_names is not None else None,
                d.data_fingerprint,
                self._seal(None if threshold is None else float(threshold),
                           self._where("detector_versions", "threshold", (d.id, d.version))),
                dataset_id,
                (d.trained_at or datetime.now(timezone.utc)).isoformat(),
            ),
        )

    def versions(self, name: str) -> list:
        """Metadata of every stored version of ``name`` (dicts, oldest first)."""
        d = self.get(name)
        rows = self._db.execute(
            "SELECT * FROM detector_versions WHERE detector_id = ? ORDER BY version", (d.id,)
        ).fetchall()
        out = []
        for r in rows:
            v = dict(r)
            v["parameters"] = json.loads(v["parameters"])
            v["feature_names"] = json.loads(v["feature_names"]) if v["feature_names"] else None
            v["threshold"] = self._open(v["threshold"], self._where("detector_versions", "threshold",
                                                                    (v["detector_id"], v["version"])))
            out.append(v)
        return out

    def _version_row(self, d: Detector, version):
        if version is None:
            r = self._db.execute(
                "SELECT * FROM detector_versions WHERE detector_id = ? ORDER BY version DESC LIMIT 1", (d.id,)
            ).fetchone()
            if r is None:
                raise DetectorNotFoundError(f"detector {d.name!r} has no trained version")
        else:
            r = self._db.execute(
                "SELECT * FROM detector_versions WHERE detector_id = ? AND version = ?", (d.id, int(version))
            ).fetchone()
            if r is None:
                raise DetectorNotFoundError(f"detector {d.name!r} has no version {version}")
        return r

    def load_artifact(self, name: str, version=None):
        """A stored version's metadata and model bytes: ``(Detector, bytes)``.

        ``version`` None is the latest. The returned Detector describes the loaded version
        (its ``version``, ``algorithm``, ``parameters``, features and training time). The
        bytes have passed their hash check, and a pickled artifact its HMAC check; turning
        them into a model is the service's work (:func:`pynomaly.service.load_model`).
        Raises DetectorNotFoundError or ArtifactIntegrityError.
        """
        d = self.get(name)
        r = self._version_row(d, version)
        blob = self.get_artifact(r["artifact"], self.version_context(d.name, r["version"]))
        if r["format"] == "pickle" and not self._verify(r["artifact"], r["algorithm"], r["signature"]):
            raise ArtifactIntegrityError(
                f"artifact of {name!r} version {r['version']} is not signed by this repository's key; refusing to unpickle it"
            )
        d.version = r["version"]
        d.algorithm = r["algorithm"]
        d.parameters = json.loads(r["parameters"])
        d.n_features = r["n_features"]
        d.feature_names = json.loads(r["feature_names"]) if r["feature_names"] else None
        d.data_fingerprint = r["data_fingerprint"]
        d.trained_at = datetime.fromisoformat(r["trained_at"])
        return d, blob

    def set_status(self, name: str, action: str) -> Detector:
        """Apply a lifecycle action ("archive" or "activate") and store it."""
        with self._transaction() as db:
            r = db.execute("SELECT * FROM detectors WHERE name = ?", (name,)).fetchone()
            if r is None:
                raise DetectorNotFoundError(f"no detector named {name!r} in {self.shown}")
            d = self._row_to_detector(r)
            getattr(d, action)()
            self._write_detector(db, d)
            self._changed(db, name)
        return d

    def delete(self, name: str) -> int:
        """Delete a detector, its versions and results; return how many versions went.

        Artifacts no longer referenced by any row are removed within the same transaction.
        """
        with self._transaction() as db:
            r = db.execute("SELECT id FROM detectors WHERE name = ?", (name,)).fetchone()
            if r is None:
                raise DetectorNotFoundError(f"no detector named {name!r} in {self.shown}")
            gone = {self._location(x[0], self.version_context(name, x[1])) for x in db.execute(
                "SELECT artifact, version FROM detector_versions WHERE detector_id = ?", (r["id"],))}
            gone |= {self._location(x[0], self.result_context(x[1])) for x in db.execute(
                "SELECT scores_artifact, id FROM results WHERE detector_id = ?", (r["id"],))}
            n = db.execute("SELECT COUNT(*) FROM detector_versions WHERE detector_id = ?", (r["id"],)).fetchone()[0]
            db.execute("DELETE FROM detectors WHERE id = ?", (r["id"],))
            # A plain home shares one file among rows with identical bytes: keep those others use.
            still = set(self._referenced(db))
            # Unlinked while holding the write lock: a concurrent save of byte-identical
            # content commits after this and then finds its file gone (see _ensure_artifact).
            for loc in gone - still:
                self._discard(loc)
            self._changed(db, name)
        return n

    def _referenced(self, db) -> dict:
        """Artifact location (see _location) -> (sha, context, [what uses it]) for every row."""
        out = {}
        for r in db.execute(
            "SELECT d.name, v.version, v.artifact FROM detector_versions v JOIN detectors d ON d.id = v.detector_id"
        ):
            ctx = self.version_context(r["name"], r["version"])
            entry = out.setdefault(self._location(r["artifact"], ctx), (r["artifact"], ctx, []))
            entry[2].append(f"{r['name']} v{r['version']}")
        for r in db.execute(
            "SELECT d.name, r.id, r.scores_artifact FROM results r JOIN detectors d ON d.id = r.detector_id"
        ):
            ctx = self.result_context(r["id"])
            entry = out.setdefault(self._location(r["scores_artifact"], ctx), (r["scores_artifact"], ctx, []))
            entry[2].append(f"{r['name']} result {r['id'][:8]}")
        for r in db.execute("SELECT dataset_id, artifact FROM dataset_data"):
            ctx = self.dataset_context(r["dataset_id"])
            entry = out.setdefault(self._location(r["artifact"], ctx), (r["artifact"], ctx, []))
            entry[2].append(f"dataset {r['dataset_id'][:8]}")
        return out

    # -- checks ------------------------------------------------------------------------------
    def check(self, repair: bool = False, load=None) -> dict:
        """Look for everything that can be wrong with this home; with ``repair``, fix what can
        be fixed without losing anything.

        Returns a dict of findings (lists, empty when fine): ``database`` (SQLite's integrity
        check), ``version_marks`` (the marks file is damaged), ``missing_artifacts`` and
        ``damaged_artifacts`` (versions or results whose bytes
        are gone or do not match their hash: restore them from a backup, or delete the
        detector), ``orphan_artifacts`` (files no row points at: a crash between writing the
        file and the row, or rows the database lost), ``lost_versions`` (numbers the version
        marks say were given but the database no longer has), ``unfinished`` (detectors never
        trained: rows an older pynomaly left when a first training was killed), ``temp_files``
        and ``repaired`` (what ``repair`` did: orphans are moved to ``lost+found/``, never
        deleted; unfinished rows and temporary files are removed; the version marks are
        raised to what the database holds).

        ``unloadable_versions`` (``{"detector", "version", "error"}``): intact artifacts that
        still do not make a model. A pickled one must carry this home's signature (it is never
        unpickled here); any other is given to ``load(algorithm, format, blob)``, which raises
        when the bytes do not make a model (the service passes one: the repository builds no
        models), so a crafted artifact imported with a valid hash is not called healthy.

        A database home has no files: ``database`` stays empty (PostgreSQL checks its own
        pages), artifacts are rows, written in the transaction of the row that uses them, so
        an orphan can only come from an edit outside pynomaly; it is reported and left in
        place (it costs space, never correctness).
        """
        out = {k: [] for k in ("database", "missing_artifacts", "damaged_artifacts", "unloadable_versions",
                               "orphan_artifacts", "lost_versions", "version_marks", "unfinished", "temp_files",
                               "repaired")}
        if self._files:
            result = [r[0] for r in self._db.execute("PRAGMA integrity_check")]
            if result != ["ok"]:
                out["database"] = result
        referenced = self._referenced(self._db)
        for loc, (sha, ctx, users) in sorted(referenced.items(), key=lambda kv: str(kv[0])):
            if self._read_stored(loc) is None:
                out["missing_artifacts"].append({"artifact": sha, "used_by": users})
            elif not self._holds(loc, sha, ctx):
                out["damaged_artifacts"].append({"artifact": sha, "used_by": users})
        out["unloadable_versions"] = self._unloadable_versions(load)
        if self._files:
            for path in sorted((self.home / "artifacts").glob("*/*")):
                if path.name.startswith(".tmp-"):
                    out["temp_files"].append(str(path))
                elif path.suffix in (".zst", ".pne") and path not in referenced:
                    out["orphan_artifacts"].append(str(path))
        else:
            out["orphan_artifacts"] = [f"artifact {r['sha']}" for r in self._db.execute(
                "SELECT sha FROM artifacts ORDER BY sha") if r["sha"] not in referenced]
        try:
            marks = self.version_marks()
        except RepositoryError as e:  # damaged: repair rebuilds it from the versions stored
            out["version_marks"] = [str(e)]
            marks = {}
        latest = {r["name"]: r["v"] for r in self._db.execute(
            "SELECT d.name, COALESCE(MAX(v.version), 0) AS v FROM detectors d "
            "LEFT JOIN detector_versions v ON v.detector_id = d.id GROUP BY d.id")}
        for name, mark in sorted(marks.items()):
            if name in latest and mark > latest[name]:
                out["lost_versions"].append({"detector": name, "versions": list(range(latest[name] + 1, mark + 1))})
        for r in self._db.execute(
            "SELECT name FROM detectors d WHERE version = 0 AND status = 'created' "
            "AND NOT EXISTS (SELECT 1 FROM detector_versions v WHERE v.detector_id = d.id)"
        ):
            out["unfinished"].append(r["name"])
        if repair:
            self._repair(out, marks, latest)
        return out

    def _unloadable_versions(self, load) -> list:
        found = []
        rows = self._db.execute(
            "SELECT d.name, v.version, v.algorithm, v.format, v.artifact, v.signature FROM detector_versions v "
            "JOIN detectors d ON d.id = v.detector_id ORDER BY d.name, v.version").fetchall()
        for r in rows:
            try:
                blob = self.get_artifact(r["artifact"], self.version_context(r["name"], r["version"]))
            except ArtifactIntegrityError:
                continue  # missing or damaged: reported as such
            if r["format"] == "pickle":
                error = None if self._verify(r["artifact"], r["algorithm"], r["signature"]) else \
                    "a pickled artifact not signed by this home's key"
            elif load is None:
                continue
            else:
                try:
                    load(r["algorithm"], r["format"], blob)
                    error = None
                except Exception as e:  # a doctor reports what it finds, whatever the loader raised
                    error = f"{type(e).__name__}: {e}"
            if error is not None:
                found.append({"detector": r["name"], "version": r["version"], "error": error})
        return found

    def _repair(self, found: dict, marks: dict, latest: dict) -> None:
        done = found["repaired"]
        lost = Path(self._local) / "lost+found"
        for p in found["orphan_artifacts"] if self._files else ():
            lost.mkdir(exist_ok=True, mode=0o700)
            os.replace(p, lost / Path(p).name)
            done.append(f"moved orphan {Path(p).name} to {lost}")
        for p in found["temp_files"]:
            Path(p).unlink(missing_ok=True)
            done.append(f"removed temporary file {p}")
        with self._transaction() as db:
            for name in found["unfinished"]:
                db.execute("DELETE FROM detectors WHERE name = ? AND version = 0 AND status = 'created'", (name,))
                done.append(f"removed unfinished detector {name!r} (never trained)")
            fixed = {**marks, **{n: max(v, marks.get(n, 0)) for n, v in latest.items()}}
            if fixed != marks or found["version_marks"]:
                self._write_marks(db, fixed)
                done.append("raised the version marks to the versions stored")

    # -- datasets and results ------------------------------------------------------------------
    def add_dataset(self, name: str, source, shape, column_names, fingerprint: str, rows: Optional[bytes] = None) -> str:
        """Record a dataset (deduplicated by fingerprint and source); return its id.

        ``rows`` (the data's bytes, see ``service.store_dataset``) are stored as an artifact
        with it, so that the dataset can be scored or trained on later by its id.
        """
        self.require_key()
        with self._transaction() as db:
            did = None
            if self._cipher is None:
                r = db.execute(
                    "SELECT id FROM datasets WHERE fingerprint = ? AND source IS NOT DISTINCT FROM ?",
                    (fingerprint, source)
                ).fetchone()
                did = r["id"] if r is not None else None
            else:  # sealed sources differ each time: compare them opened
                for r in db.execute("SELECT id, source FROM datasets WHERE fingerprint = ?", (fingerprint,)).fetchall():
                    if self._open(r["source"], self._where("datasets", "source", (r["id"],))) == source:
                        did = r["id"]
                        break
            if did is None:
                did = uuid.uuid4().hex
                w = lambda col: self._where("datasets", col, (did,))  # noqa: E731
                db.execute(
                    "INSERT INTO datasets VALUES (?,?,?,?,?,?,?,?)",
                    (did, self._seal(name, w("name")), self._seal(source, w("source")), int(shape[0]),
                     int(shape[1]), json.dumps(list(column_names or [])), fingerprint, _now_iso()),
                )
            if rows is not None:
                # Written inside the transaction (a sealing write holds the write lock, see
                # reencrypt); a crash before the commit leaves an orphan file, which doctor finds.
                sha = self.put_artifact(rows, self.dataset_context(did))
                db.execute("INSERT INTO dataset_data VALUES (?, ?)"
                           " ON CONFLICT (dataset_id) DO UPDATE SET artifact = excluded.artifact",
                           (did, sha))
            return did

    _DATASET_SELECT = "SELECT d.*, x.artifact FROM datasets d LEFT JOIN dataset_data x ON x.dataset_id = d.id"

    def _dataset_dict(self, r) -> dict:
        v = dict(r)
        for col in ("name", "source"):
            v[col] = self._open(v[col], self._where("datasets", col, (v["id"],)))
        v["column_names"] = json.loads(v["column_names"]) if v["column_names"] else []
        v["stored"] = v.pop("artifact", None) is not None
        return v

    def datasets(self) -> list:
        """Every recorded dataset, as dicts (``stored``: whether its rows are kept)."""
        return [self._dataset_dict(r) for r in self._db.execute(self._DATASET_SELECT + " ORDER BY d.created_at")]

    def dataset(self, dataset_id: str) -> dict:
        """One recorded dataset's metadata; DatasetNotFoundError when there is none."""
        r = self._db.execute(self._DATASET_SELECT + " WHERE d.id = ?", (str(dataset_id),)).fetchone()
        if r is None:
            raise DatasetNotFoundError(f"no dataset {shown(dataset_id)}")
        return self._dataset_dict(r)

    def dataset_rows(self, dataset_id: str) -> bytes:
        """The stored bytes of a dataset's rows; DatasetNotFoundError when only its description
        was recorded (data scored from a file or array is not kept)."""
        self.dataset(dataset_id)
        r = self._db.execute("SELECT artifact FROM dataset_data WHERE dataset_id = ?", (str(dataset_id),)).fetchone()
        if r is None:
            raise DatasetNotFoundError(f"dataset {dataset_id} was recorded without its rows; upload it to keep them")
        return self.get_artifact(r["artifact"], self.dataset_context(str(dataset_id)))

    def delete_dataset(self, dataset_id: str) -> None:
        """Forget a dataset and its stored rows (results that used it keep its id)."""
        with self._transaction() as db:
            r = db.execute("SELECT artifact FROM dataset_data WHERE dataset_id = ?", (str(dataset_id),)).fetchone()
            if db.execute("DELETE FROM datasets WHERE id = ?", (str(dataset_id),)).rowcount == 0:
                raise DatasetNotFoundError(f"no dataset {shown(dataset_id)}")
            if r is not None:
                loc = self._location(r["artifact"], self.dataset_context(str(dataset_id)))
                if loc not in self._referenced(db):  # a plain home shares one artifact among identical bytes
                    self._discard(loc)

    def save_result(self, result: DetectionResult) -> str:
        """Store a detection result: metadata in SQLite, scores and labels as an artifact."""
        buf = io.BytesIO()
        np.savez(buf, scores=result.scores, labels=result.labels)
        blob = buf.getvalue()
        context = self.result_context(result.id)
        self.require_key()
        # Plain: the file is durable before the row. Sealed: written inside the transaction
        # (see reencrypt: every sealing write holds the write lock). A database home: a row
        # in the same transaction.
        in_tx = self._cipher is not None or not self._files
        sha = hashlib.sha256(blob).hexdigest() if in_tx else self.put_artifact(blob, context)
        m = result.metrics
        with self._transaction() as db:
            if in_tx:
                self.put_artifact(blob, context)
            db.execute(
                "INSERT INTO results VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    result.id,
                    result.detector_id,
                    result.detector_version,
                    result.dataset_id,
                    self._seal(float(result.threshold), self._where("results", "threshold", (result.id,))),
                    m["total_samples"],
                    m["anomalies_detected"],
                    m["processing_time_ms"],
                    sha,
                    result.timestamp.isoformat(),
                ),
            )
        if not in_tx:
            self._ensure_artifact(sha, blob)
        return result.id

    def results(self, name: str) -> list:
        """Metadata of the stored detection results of ``name`` (dicts, oldest first)."""
        d = self.get(name)
        rows = self._db.execute("SELECT * FROM results WHERE detector_id = ? ORDER BY created_at", (d.id,))
        out = []
        for r in rows:
            v = dict(r)
            v["threshold"] = self._open(v["threshold"], self._where("results", "threshold", (v["id"],)))
            out.append(v)
        return out

    def load_result(self, result_id: str) -> DetectionResult:
        """A stored DetectionResult with its scores and labels."""
        r = self._db.execute("SELECT * FROM results WHERE id = ?", (result_id,)).fetchone()
        if r is None:
            raise ResultNotFoundError(f"no detection result {shown(result_id)}")
        blob = self.get_artifact(r["scores_artifact"], self.result_context(r["id"]))
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            scores, labels = z["scores"], z["labels"]
        return DetectionResult(
            id=r["id"],
            detector_id=r["detector_id"],
            detector_version=r["detector_version"],
            dataset_id=r["dataset_id"],
            threshold=self._open(r["threshold"], self._where("results", "threshold", (r["id"],))),
            scores=scores,
            labels=labels,
            processing_time_ms=r["processing_time_ms"],
            timestamp=datetime.fromisoformat(r["created_at"]),
        )

    # -- export / import -----------------------------------------------------------------------
    def export(self, name: str, path, version=None, *, key: "bytes | None" = None) -> Path:
        """Write one self-contained, checksummed file holding a detector version.

        Layout: ``PYNOMALY-EXPORT\\n``, u32 format version, u64 header length, JSON header
        (detector and version metadata, artifact hash and signature), the zstd-compressed
        artifact, then the SHA-256 of everything before it. With ``key`` (32 bytes) the file
        is sealed to that key (see :func:`pynomaly.exportfile.write_export`); an encrypted
        home refuses to write a plain one.
        """
        if self._cipher is not None and key is None:
            raise KeyRequiredError(
                f"{name!r} lives in an encrypted home; an export of it must be encrypted too: give the key to "
                "encrypt it to (CLI: --export-key-file PATH, a file holding the base64 of 32 random bytes)"
            )
        d = self.get(name)
        r = self._version_row(d, version)
        version_fields = {
            k: r[k] for k in ("version", "format", "signature", "n_features", "data_fingerprint", "trained_at")
        }
        version_fields["threshold"] = self._open(
            r["threshold"], self._where("detector_versions", "threshold", (d.id, r["version"])))
        return write_export(
            path,
            name=d.name,
            algorithm=r["algorithm"],
            parameters=json.loads(r["parameters"]),
            created_at=d.created_at.isoformat(),
            feature_names=json.loads(r["feature_names"]) if r["feature_names"] else None,
            blob=self.get_artifact(r["artifact"], self.version_context(d.name, r["version"])),
            key=key,
            **version_fields,
        )

    def signed_here(self, export: "Export") -> bool:
        """Whether a pickled export was signed with this home's key (so it came from here)."""
        return self._verify(export.sha256, export.algorithm, export.signature)
