"""An encrypted home's side of the repository: sealing fields, encrypting a new home,
re-wrapping and rotating its keys (part of :class:`pynomaly.store.repository.Repository`).

A mixin: it works on the repository's connection (``self._db``), cipher (``self._cipher``,
None for a plain home) and home; see :mod:`pynomaly.store.crypto` for the keys themselves.
"""

from __future__ import annotations

from pynomaly._errors import RepositoryError
from pynomaly.store import audit as _audit
from pynomaly.store._files import atomic_write
from pynomaly.store.crypto import HomeCipher, KeySource, create_keyring


class Sealing:
    """Sealed fields and keys of an encrypted home."""

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
            ("version_profiles", "profile", ("detector_id", "version")),
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
