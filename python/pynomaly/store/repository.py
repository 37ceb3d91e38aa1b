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

Schema changes are numbered migrations (``pynomaly.store._schema.MIGRATIONS``), applied on
open (:func:`pynomaly.store._schema.open_database`), once, whatever the number of processes
starting together.

Where each concern lives (:class:`Repository` is their facade):

    pynomaly.store._versions    detectors, saving and loading versions, version marks, export
    pynomaly.store._artifacts   content-addressed artifacts (files or rows), pickle signatures
    pynomaly.store._records     datasets and detection results
    pynomaly.store._sealing     an encrypted home: sealed fields, encrypt, re-wrap, re-encrypt
    pynomaly.store._doctor      check and repair (``pynomaly doctor``)
    pynomaly.store.audit        the audit trail (the methods here only open the home's cipher)
"""

from __future__ import annotations

from pynomaly._errors import ArtifactIntegrityError, DetectorNotFoundError, KeyRequiredError, RepositoryError
from pynomaly.store import audit as _audit
from pynomaly.store._artifacts import Artifacts
from pynomaly.store._doctor import Doctor
from pynomaly.store._home import default_home, local_dir, redacted
from pynomaly.store._records import Records
from pynomaly.store._schema import open_database
from pynomaly.store._sealing import Sealing
from pynomaly.store._versions import Versions
from pynomaly.store.crypto import HomeCipher, KeySource, is_encrypted, key_source

__all__ = [
    "Repository",
    "default_home",
    "DetectorNotFoundError",
    "ArtifactIntegrityError",
    "RepositoryError",
]


class Repository(Versions, Records, Artifacts, Sealing, Doctor):
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

    The methods live with their concern, one module each (see the module's docstring); this
    class opens the home and holds what they share: ``_db`` (the connection), ``home``,
    ``shown``, ``_local`` (where the signing key is), ``_files`` (artifacts as files, else
    rows) and ``_cipher`` (None for a plain home).
    """

    def __init__(self, home=None, *, key: "KeySource | None" = None):
        self._key_source = key
        self._db = open_database(home)
        self.home = self._db.home  # a Path, or the URL as given (the password too: replicas reconnect with it)
        if self._db.postgres:
            self.shown = redacted(self.home)
            self._local = local_dir(self.home)  # the signing key (see _key)
        else:
            self.shown = str(self.home)
            self._local = self.home
        self._files = not self._db.postgres  # artifacts as files beside the database, else rows in it
        encrypted = self._files and is_encrypted(self.home)
        self._cipher = HomeCipher(self.home, key if key is not None else key_source()) if encrypted else None


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
