"""Datasets and stored results: reading a table to train or detect on (:func:`load_data`),
keeping a dataset's rows in the home, and reading back what a detection stored."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np

from pynomaly._errors import ArtifactIntegrityError, InvalidInputError
from pynomaly.domain import DetectionResult, fingerprint
from pynomaly.estimators._validation import as_matrix
from pynomaly.service._common import opened


def load_data(data, columns=None):
    """``(X, column_names, source)`` from a file path or an array-like (DataFrames keep their
    column names). ``columns`` selects features by name or index."""
    if isinstance(data, (str, Path)):
        from pynomaly.store.dataio import load_table

        X, names = load_table(data, columns)
        return X, names, str(Path(data).resolve())
    names = [str(c) for c in data.columns] if hasattr(data, "columns") else None
    X = as_matrix(data)
    if names is None:
        names = [f"x{i}" for i in range(X.shape[1])]
    if columns is not None:
        from pynomaly.store.dataio import select_columns

        X, names = select_columns(X, names, list(columns))
    return X, names, None


def store_dataset(home, data, name: Optional[str] = None, *, columns=None) -> dict:
    """Keep a dataset's rows in the repository, to train or detect on later by its id.

    ``data`` is a file (.csv, .tsv, .npy, .npz, .parquet) or an array-like; ``name``
    defaults to the file's name. Rows must be finite numbers (checked before anything is
    stored). Returns the dataset's metadata (``id``, ``name``, ``n_rows``, ``n_columns``,
    ``column_names``, ...); the same rows stored twice under the same name get the same id.
    """
    X, names, source = load_data(data, columns)
    if X.shape[0] == 0:
        raise InvalidInputError("the dataset has no rows")
    if name is None:
        name = Path(source).name if source else "array"
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(X, dtype=np.float64), allow_pickle=False)
    with opened(home) as repo:
        did = repo.add_dataset(str(name), f"stored:{name}", X.shape, names, fingerprint(X), rows=buf.getvalue())
        return repo.dataset(did)


def list_datasets(home) -> list:
    """Metadata of every recorded dataset (``stored`` says whether its rows are kept)."""
    with opened(home) as repo:
        return repo.datasets()


def datasets_overview(home) -> list:
    """Every dataset's metadata, newest first, with ``trained``: the names of the detectors
    with a version trained on it; read in one repository session."""
    with opened(home) as repo:
        trained_on: dict = {}
        for d in repo.list():
            for v in repo.versions(d.name):
                if v.get("dataset_id"):
                    trained_on.setdefault(v["dataset_id"], set()).add(d.name)
        return [dict(ds, trained=sorted(trained_on.get(ds["id"], ()))) for ds in repo.datasets()][::-1]


def dataset(home, dataset_id: str) -> dict:
    """One dataset's metadata; DatasetNotFoundError when unknown."""
    with opened(home) as repo:
        return repo.dataset(dataset_id)


def dataset_rows(home, dataset_id: str, columns=None):
    """``(X, column_names)`` of a stored dataset (``columns`` selects by name or index)."""
    with opened(home) as repo:
        meta = repo.dataset(dataset_id)
        blob = repo.dataset_rows(dataset_id)
    from pynomaly.store.dataio import array_from_npy

    try:
        X = array_from_npy(blob, f"the stored rows of dataset {dataset_id}")
    except InvalidInputError as e:
        raise ArtifactIntegrityError(f"dataset {dataset_id} cannot be read: {e}") from None
    names = list(meta["column_names"]) or [f"x{i}" for i in range(X.shape[1])]
    if columns is not None:
        from pynomaly.store.dataio import select_columns

        X, names = select_columns(X, names, list(columns))
    return X, names


def dataset_preview(home, dataset_id: str, head: int = 10) -> dict:
    """What a look at a dataset shows: its metadata (``meta``), its first ``head`` rows
    (``head``, lists of floats) and one summary per column (``columns``: name, min, max, mean,
    std, number of distinct values, share of zeros), over every stored row. A dataset
    whose rows are not kept (only recorded) has ``head`` and ``columns`` None."""
    meta = dataset(home, dataset_id)
    if not meta.get("stored"):
        return {"meta": meta, "head": None, "columns": None}
    X, names = dataset_rows(home, dataset_id)
    columns = []
    for j, name in enumerate(names):
        col = X[:, j]
        columns.append({"name": name, "min": float(col.min()), "max": float(col.max()), "mean": float(col.mean()),
                        "std": float(col.std()), "distinct": int(np.unique(col).size),
                        "zeros": float(np.count_nonzero(col == 0) / col.size)})
    return {"meta": meta, "head": X[:head].tolist(), "columns": columns, "names": names}


def delete_dataset(home, dataset_id: str) -> None:
    """Forget a dataset and its stored rows."""
    with opened(home) as repo:
        repo.delete_dataset(dataset_id)


def result(home, result_id: str) -> DetectionResult:
    """A stored detection result with its scores and labels; ResultNotFoundError when unknown."""
    with opened(home) as repo:
        return repo.load_result(result_id)


def results(home, name: str) -> list:
    """Metadata of detector ``name``'s stored results, oldest first."""
    with opened(home) as repo:
        return repo.results(name)

