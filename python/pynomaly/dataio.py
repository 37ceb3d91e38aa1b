"""Reading data matrices from files and writing detection results.

Inputs: CSV (header optional), NumPy ``.npy`` (2-D) and ``.npz`` (array ``X``, or the only
array), Parquet when pyarrow is installed. ``columns`` selects features by name (or by index,
for files without names). Non-numeric columns are named in the error.
Outputs: CSV, JSON or Parquet, chosen by the file extension.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ._errors import InvalidInputError

__all__ = ["load_table", "array_from_npy", "write_result", "check_result_path"]

_MISSING = {"", "na", "nan", "null", "none"}


def load_table(path, columns=None):
    """Read a numeric matrix from a file.

    Parameters
    ----------
    path : str or Path
        ``.csv``, ``.npy``, ``.npz`` or ``.parquet`` file.
    columns : sequence of str or int, optional
        Features to keep, by name (CSV header, Parquet) or 0-based index; default all.

    Returns
    -------
    X : ndarray, float64, shape (n_rows, n_features)
    names : list of str
        Column names (``"x0", "x1", ...`` when the file has none).
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"{str(path)!r} is a folder; give a data file (.csv, .tsv, .npy, .npz, .parquet)")
    if not path.is_file():
        raise InvalidInputError(f"data file {str(path)!r} does not exist")
    ext = path.suffix.lower()
    bad = []
    if ext in (".csv", ".txt", ".tsv"):
        X, names, bad = _read_csv(path, delimiter="\t" if ext == ".tsv" else ",")
    elif ext == ".npy":
        X = array_from_npy(_read_bytes(path), path.name)
        names = [f"x{i}" for i in range(X.shape[1])]
    elif ext == ".npz":
        X = _read_npz(path)
        names = [f"x{i}" for i in range(X.shape[1])]
    elif ext in (".parquet", ".pq"):
        return _read_parquet(path, columns)
    else:
        raise InvalidInputError(f"cannot read {path.name}: accepted formats are .csv, .tsv, .npy, .npz, .parquet")
    X, names = select_columns(X, names, columns)
    bad = [n for n in names if n in bad]
    if bad:
        raise InvalidInputError(
            f"{path.name} has non-numeric column(s) {bad}; select numeric columns (--columns) or encode them"
        )
    if X.dtype.kind not in "biuf":
        raise InvalidInputError(f"{path.name} holds {X.dtype} data; numeric data is required")
    return _finite(X.astype(np.float64, copy=False), names, path), names


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise InvalidInputError(f"cannot read {str(path)!r}: {e}") from None


def array_from_npy(blob: bytes, name: str) -> np.ndarray:
    """The 2-D numeric array of a ``.npy`` file's bytes (a file, an ``.npz`` member, a stored
    dataset). Raises InvalidInputError for anything else.

    numpy's own reader trusts the header: a shape larger than the bytes allocates it first
    (MemoryError, or gigabytes for a few bytes of header), and each malformation raises a
    different exception. Here the header is checked against the bytes before anything is read.
    """
    fmt = np.lib.format
    f = io.BytesIO(blob)
    try:
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version[0]}.{version[1]} is not supported (1.0 and 2.0 are)")
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
    except Exception as e:  # numpy's header parser (tokenize, literal_eval) has no one error of its own
        raise InvalidInputError(f"{name} is not a readable .npy array: {e}") from None
    if len(shape) != 2:
        raise InvalidInputError(f"{name} holds a {len(shape)}-D array; a 2-D array (rows x features) is required")
    if dtype.kind not in "biuf" or dtype.hasobject or dtype.itemsize == 0:
        raise InvalidInputError(f"{name} holds {dtype} data; numeric data is required")
    count = shape[0] * shape[1]
    if count * dtype.itemsize != len(blob) - f.tell():
        raise InvalidInputError(
            f"{name} is not a readable .npy array: its header declares {shape} {dtype} "
            f"({count * dtype.itemsize} bytes), the file holds {len(blob) - f.tell()}"
        )
    X = np.frombuffer(blob, dtype=dtype, count=count, offset=f.tell())
    return X.reshape(shape, order="F" if fortran_order else "C").copy(order="K")  # writable, as np.load's


def _read_npz(path: Path) -> np.ndarray:
    try:
        with zipfile.ZipFile(path) as z:
            arrays = {n[:-4] if n.endswith(".npy") else n: n for n in z.namelist()}
            member = arrays.get("X", next(iter(arrays.values())) if len(arrays) == 1 else None)
            blob = None if member is None else z.read(member)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, NotImplementedError,
            RuntimeError, ValueError) as e:  # damaged, encrypted, or of an unsupported compression
        raise InvalidInputError(f"{path.name} is not a readable .npz archive: {type(e).__name__}: {e}") from None
    if member is None:
        raise InvalidInputError(f"{path.name} holds arrays {sorted(arrays)}; name the data array 'X'")
    return array_from_npy(blob, f"{path.name}[{member}]")


def select_columns(X, names, columns):
    """Columns of X chosen by name or index: ``(X[:, chosen], chosen names)``; None keeps all."""
    if columns is None:
        return X, list(names)
    idx = []
    for c in columns:
        if isinstance(c, str) and c in names:
            idx.append(names.index(c))
        elif isinstance(c, (int, np.integer)) or (isinstance(c, str) and c.lstrip("-").isdigit()):
            i = int(c)
            if not -len(names) <= i < len(names):
                raise InvalidInputError(f"column index {i} is out of range for {len(names)} columns")
            idx.append(i % len(names))
        else:
            raise InvalidInputError(f"no column {c!r}; columns are {names}")
    if not idx:
        raise InvalidInputError("columns selects no column")
    return X[:, idx], [names[i] for i in idx]


def _finite(X, names, path):
    bad = ~np.isfinite(X).all(axis=0)
    if bad.any():
        cols = [names[i] for i in np.flatnonzero(bad)]
        raise InvalidInputError(f"{path.name}: column(s) {cols} contain missing or infinite values; fill or drop them")
    return X


def _sniff_delimiter(first_line: str, default: str) -> str:
    """The delimiter of a text table whose first line is given: ``default`` when it appears
    there, else the first of ; TAB | that does (a ';'-separated file used to be read as one
    non-numeric column named 'a;b;c')."""
    if default in first_line:
        return default
    for d in (";", "\t", "|"):
        if d in first_line:
            return d
    return default


def _read_csv(path: Path, delimiter: str):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            delimiter = _sniff_delimiter(f.readline(), delimiter)
            f.seek(0)
            rows = [r for r in csv.reader(f, delimiter=delimiter) if r]
    except UnicodeDecodeError as e:
        raise InvalidInputError(
            f"{path.name} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8"
        ) from None
    except csv.Error as e:  # e.g. a field past the csv module's size limit
        raise InvalidInputError(f"{path.name} is not a readable CSV table: {e}") from None
    if not rows:
        raise InvalidInputError(f"{path.name} is empty")
    header = None
    if not all(_is_number(v) for v in rows[0]):
        header, rows = [h.strip() for h in rows[0]], rows[1:]
    if not rows:
        raise InvalidInputError(f"{path.name} has a header but no data rows")
    width = len(header) if header else len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            line = i + (2 if header else 1)
            raise InvalidInputError(f"{path.name}: line {line} has {len(r)} fields, expected {width}")
    names = header or [f"x{i}" for i in range(width)]
    cols = list(zip(*rows))
    X = np.empty((len(rows), width), dtype=np.float64)
    bad = []
    for j, col in enumerate(cols):
        try:
            X[:, j] = [float("nan") if v.strip().lower() in _MISSING else float(v) for v in col]
        except ValueError:
            bad.append(names[j])
    # Non-numeric columns are an error only when selected: an id or a label column next to
    # the features is common, and `columns` is how to leave it out.
    return X, names, bad


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return v.strip().lower() in _MISSING


def _read_parquet(path: Path, columns):
    from .adapters import require

    pq = require("pyarrow.parquet", "parquet")
    import pyarrow.types as pat

    # A damaged file meets pyarrow's errors (ArrowInvalid, OSError, and UnicodeDecodeError for
    # a column name that is not UTF-8, found by fuzzing): there is no one type to catch.
    unreadable = Exception
    try:
        schema = pq.read_schema(path)
    except unreadable as e:
        raise InvalidInputError(f"{path.name} is not a readable Parquet file: {e}") from None
    names = list(schema.names)
    _, sel = select_columns(np.empty((0, len(names))), names, columns)
    bad = [n for n in sel if not (pat.is_integer(schema.field(n).type) or pat.is_floating(schema.field(n).type) or pat.is_boolean(schema.field(n).type))]
    if bad:
        raise InvalidInputError(
            f"{path.name} has non-numeric column(s) {bad}; select numeric columns with --columns or encode them"
        )
    try:
        table = pq.read_table(path, columns=sel)
        X = np.column_stack([table.column(n).to_numpy(zero_copy_only=False).astype(np.float64) for n in sel])
    except unreadable as e:
        raise InvalidInputError(f"{path.name} is not a readable Parquet file: {e}") from None
    return _finite(X, sel, path), sel


_RESULT_FORMATS = (".csv", ".json", ".parquet", ".pq")


def check_result_path(path) -> Path:
    """Check, before any work, that a result can be written to ``path``: a known format, an
    existing folder, and for Parquet the pyarrow package. Raises InvalidInputError."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in _RESULT_FORMATS:
        raise InvalidInputError(f"cannot write {path.name}: accepted output formats are .csv, .json, .parquet")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InvalidInputError(f"cannot write {str(path)!r}: the folder {str(folder)!r} does not exist")
    if path.is_dir():
        raise InvalidInputError(f"cannot write {str(path)!r}: it is a folder")
    if not os.access(folder, os.W_OK):
        raise InvalidInputError(f"cannot write {str(path)!r}: the folder {str(folder)!r} is not writable")
    if ext in (".parquet", ".pq"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InvalidInputError(
                f"writing {path.name} (Parquet) needs pyarrow: pip install 'pynomaly[parquet]', "
                "or write .csv or .json"
            ) from None
    return path


def write_result(path, scores: np.ndarray, labels: np.ndarray, summary: dict) -> None:
    """Write per-row scores and labels to ``path`` (format from the extension: .csv, .json,
    .parquet); JSON also carries ``summary``. The file appears atomically."""
    path = check_result_path(path)
    ext = path.suffix.lower()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if ext == ".csv":
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["index", "score", "label"])
                w.writerows(zip(range(len(scores)), (repr(float(s)) for s in scores), (int(v) for v in labels)))
        elif ext == ".json":
            with open(tmp, "w") as f:
                json.dump({"summary": summary, "scores": [float(s) for s in scores], "labels": [int(v) for v in labels]}, f)
        elif ext in (".parquet", ".pq"):
            from .adapters import require

            pa = require("pyarrow", "parquet")
            import pyarrow.parquet as pq

            table = pa.table({"index": np.arange(len(scores)), "score": scores, "label": labels})
            pq.write_table(table, tmp)
        else:
            raise InvalidInputError(f"cannot write {path.name}: accepted output formats are .csv, .json, .parquet")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
