"""Uploaded tables: what a file must look like before it is read, reading it against a
detector's features without storing anything, and a cache of stored datasets' rows."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from pynomaly import service

from .. import spool
from ..errors import HTTPError

log = logging.getLogger("pynomaly_api.web")

UPLOAD_SUFFIXES = (".csv", ".tsv", ".npy", ".npz", ".parquet")

_MAGIC = {".npy": (b"\x93NUMPY", "a NumPy .npy file"), ".npz": (b"PK", "a NumPy .npz (zip) file"),
          ".parquet": (b"PAR1", "a Parquet file")}


def check_upload(filename: str, data: bytes) -> str:
    """The upload's suffix, once its name and first bytes agree on what it is; HTTPError otherwise."""
    shown = Path(filename).name[:80]
    suffix = Path(filename).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise HTTPError(415, f"{shown!r} is not a file this page reads: upload a .csv, .tsv, .npy, .npz or "
                        ".parquet file")
    if not data:
        raise HTTPError(400, f"{shown!r} is empty")
    magic = _MAGIC.get(suffix)
    if magic is not None and not data.startswith(magic[0]):
        raise HTTPError(415, f"{shown!r} is not {magic[1]}, whatever its name says")
    if magic is None:
        head = data[:65536]
        try:
            if b"\x00" in head:
                raise UnicodeDecodeError("utf-8", head, 0, 1, "NUL byte")
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4:  # not merely a character cut at the 64 KB mark
                raise HTTPError(415, f"{shown!r} is not a text table (CSV), whatever its name says") from None
    return suffix


# An upload's bytes as a file of the server's spool (its size checked, removed afterwards).
upload_file = spool.upload_file


def read_upload(path: str, shown: str, scorer) -> tuple:
    """``(X, names)`` of an uploaded file, every column, once checked against the detector's
    features (nothing stored)."""
    try:
        X, names, _ = service.load_data(path)
    except ValueError as e:  # InvalidInputError and the readers' own (pyarrow's are ValueErrors)
        # The readers' messages name the temporary file and the CLI's option: this page names neither.
        raise HTTPError(400, str(e).replace(Path(path).name, shown).replace(" (--columns)", "")) from None
    except Exception as e:  # noqa: BLE001 - a file the readers choke on is still the uploader's
        log.info("unreadable upload %s: %r", shown, e)
        raise HTTPError(400, f"{shown!r} could not be read ({type(e).__name__}): is it really what its name says?") from None
    v = scorer.version
    want = list(v.feature_names) if v.feature_names else None
    n = len(want) if want and set(want) <= set(names) else X.shape[1]
    if n != v.n_features:
        expected = f" ({', '.join(want[:12])}{', ...' if len(want) > 12 else ''})" if want else ""
        raise HTTPError(400, f"{shown!r} has {X.shape[1]} column(s) ({', '.join(names[:12])}"
                        f"{', ...' if len(names) > 12 else ''}); detector {v.name!r} needs {v.n_features}{expected}")
    return X, names



class RowsCache:
    """Rows of recently used stored datasets, so that a result page shows its top rows'
    features without reading the whole dataset again (a 100k x 21 dataset takes ~60 ms to
    read back: decompression and the artifact's hash check). A dataset id always names the
    same rows; a deleted dataset is not shown from here (its metadata is looked up first).
    An upload is put here when stored, so its result page is quick the first time too."""

    def __init__(self, max_bytes: int = 256 * 2 ** 20):
        self.max_bytes = max_bytes
        self._items: "OrderedDict[str, tuple]" = OrderedDict()
        self._lock = threading.Lock()

    def put(self, dataset_id: str, X: np.ndarray, names: list) -> None:
        if X.nbytes > self.max_bytes:
            return
        with self._lock:
            self._items[dataset_id] = (X, list(names))
            self._items.move_to_end(dataset_id)
            while sum(x.nbytes for x, _ in self._items.values()) > self.max_bytes:
                self._items.popitem(last=False)

    def rows(self, home, dataset_id: str) -> tuple:
        """``(X, names)`` of a stored dataset; DatasetNotFoundError when it is gone."""
        service.dataset(home, dataset_id)
        with self._lock:
            hit = self._items.get(dataset_id)
            if hit is not None:
                self._items.move_to_end(dataset_id)
                return hit
        X, names = service.dataset_rows(home, dataset_id)
        self.put(dataset_id, X, names)
        return X, names


ROWS = RowsCache()
