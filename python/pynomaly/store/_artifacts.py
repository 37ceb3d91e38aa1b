"""The repository's artifacts: bytes stored under their SHA-256, zstd-compressed, as files
beside the database (a folder home; sealed in an encrypted one) or rows of ``artifacts`` (a
database home), and the HMAC signature of pickled ones (part of
:class:`pynomaly.store.repository.Repository`).

A mixin: it works on the repository's connection (``self._db``), ``self._files`` (files or
rows), cipher and home.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from pynomaly._errors import ArtifactIntegrityError, KeyRequiredError, RepositoryError
from pynomaly.store._files import atomic_write, zstd
from pynomaly.store._home import signing_key
from pynomaly.store.crypto import context_tag


def _check_sha(sha) -> str:
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ArtifactIntegrityError(f"bad artifact id {sha!r}")
    return sha


class Artifacts:
    """Content-addressed artifacts, their contexts and signatures."""

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

    def _ensure_artifact(self, sha: str, blob: bytes) -> None:
        """After committing a row that points at ``sha``: if a concurrent delete removed the
        (shared, identical) file in between, write it again."""
        if self._files and not self._artifact_path(sha).exists():
            self.put_artifact(blob)

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
