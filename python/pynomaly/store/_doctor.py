"""``pynomaly doctor``: everything that can be wrong with a home, and the repairs that lose
nothing (part of :class:`pynomaly.store.repository.Repository`).
"""

from __future__ import annotations

import os
from pathlib import Path

from pynomaly._errors import ArtifactIntegrityError, RepositoryError


class Doctor:
    """Checks and repairs of a home."""

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
