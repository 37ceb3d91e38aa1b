"""Detectors and their versions: the detector rows, saving a version (the number assigned once,
the artifact durable before the row), the version marks that never go back, loading,
lifecycle changes, deleting and exporting (part of :class:`pynomaly.store.repository.Repository`).

A mixin: it works on the repository's connection (``self._db``), its artifacts
(:mod:`pynomaly.store._artifacts`) and its sealing (:mod:`pynomaly.store._sealing`).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from pynomaly._errors import ArtifactIntegrityError, DetectorNotFoundError, InvalidInputError, KeyRequiredError
from pynomaly._errors import RepositoryError
from pynomaly.domain import Detector, DetectorStatus
from pynomaly.store._files import atomic_write
from pynomaly.store.exportfile import Export, write_export


class Versions:
    """Detectors, their versions and the version marks."""

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
            raise self._no_detector(name)
        return self._row_to_detector(r)

    def _no_detector(self, name: str) -> DetectorNotFoundError:
        """The error for a name that is not here, suggesting the nearest one."""
        names = [r[0] for r in self._db.execute("SELECT name FROM detectors")]
        return DetectorNotFoundError.for_name(name, names, self.shown)

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
                    dataset_id=None, notify: bool = True) -> Detector:
        """Store a model's bytes as the detector's next version, and the detector as given.

        The caller has applied the lifecycle (``mark_trained`` and usually ``activate``); the
        version number is assigned here, atomically, and written back to ``detector``.
        ``format`` is the model class's ``artifact_format``; "pickle" blobs are signed with
        this home's key. ``notify`` False: serving processes are not told at once (a learner's
        frequent checkpoints; they see the version at their next periodic refresh).
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
            if notify:
                self._changed(db, detector.name)
        self._ensure_artifact(sha, blob)
        return detector

    # A version whose parameters hold this key is a checkpoint of a learning detector (issue 23):
    # the only versions a retention policy deletes.
    CHECKPOINT_KEY = "checkpoint"

    def prune_checkpoints(self, name: str, keep: int) -> list:
        """Delete all but the newest ``keep`` checkpoint versions of ``name`` (trained versions
        stay); returns the deleted version numbers. Nobody is notified: no served version
        changes (the newest checkpoints stay)."""
        with self._transaction() as db:
            r = db.execute("SELECT id FROM detectors WHERE name = ?", (name,)).fetchone()
            if r is None:
                raise DetectorNotFoundError(f"no detector named {name!r} in {self.shown}")
            rows = db.execute("SELECT version, artifact, parameters FROM detector_versions WHERE detector_id = ?"
                              " ORDER BY version DESC", (r["id"],)).fetchall()
            checkpoints = [x for x in rows if self.CHECKPOINT_KEY in json.loads(x["parameters"] or "{}")]
            old = checkpoints[keep:]
            for x in old:
                db.execute("DELETE FROM detector_versions WHERE detector_id = ? AND version = ?", (r["id"], x["version"]))
            still = set(self._referenced(db))
            for x in old:
                loc = self._location(x["artifact"], self.version_context(name, x["version"]))
                if loc not in still:
                    self._discard(loc)
        return sorted(int(x["version"]) for x in old)

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
                raise self._no_detector(name)
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
                raise self._no_detector(name)
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
