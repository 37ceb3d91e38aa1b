"""Datasets (their description, and their rows when uploaded) and detection results (their
metadata, and scores and labels as an artifact) of a home (part of
:class:`pynomaly.store.repository.Repository`).
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from datetime import datetime, timezone
from typing import Optional

import numpy as np

from pynomaly._errors import DatasetNotFoundError, ResultNotFoundError
from pynomaly.domain import DetectionResult, shown


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


class Records:
    """Datasets and detection results."""

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
        np.savez(buf, scores=result.scores, labels=result.labels, **_top_arrays(result.top_features))
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
            top = _top_features(z) if "top_rows" in z.files else None
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
            top_features=top,
        )


# Each anomaly's top features (a detection's explain: K) travel in the result's artifact beside
# its scores: per-row outputs of one result, sealed and stored (file or database) as they are.
def _top_arrays(top) -> dict:
    """``{row: [{"feature", "value", "attribution"}, ...]}`` (K per row) as the artifact's arrays."""
    if not top:
        return {}
    rows = sorted(top)
    return {
        "top_rows": np.asarray(rows, dtype=np.int64),
        "top_names": np.asarray([[f["feature"] for f in top[r]] for r in rows], dtype=np.str_),
        "top_values": np.asarray([[f["value"] for f in top[r]] for r in rows], dtype=np.float64),
        "top_attributions": np.asarray([[f["attribution"] for f in top[r]] for r in rows], dtype=np.float64),
    }


def _top_features(z) -> dict:
    names, values, attributions = z["top_names"], z["top_values"], z["top_attributions"]
    return {int(r): [{"feature": str(f), "value": float(v), "attribution": float(a)}
                     for f, v, a in zip(names[i], values[i], attributions[i])]
            for i, r in enumerate(z["top_rows"])}
