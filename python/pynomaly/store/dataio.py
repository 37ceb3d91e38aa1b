"""Reading data matrices from files and writing detection results.

Inputs: CSV (header optional), NumPy ``.npy`` (2-D) and ``.npz`` (array ``X``, or the only
array), Parquet when pyarrow is installed. ``columns`` selects features by name (or by index,
for files without names). Non-numeric columns are named in the error.
Outputs: CSV, JSON or Parquet, chosen by the file extension.
"""

from __future__ import annotations

import array
import csv
import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from pynomaly._errors import InvalidInputError

__all__ = ["load_table", "array_from_npy", "check_table", "DataTooLargeError", "write_result", "check_result_path"]

_MISSING = {"", "na", "nan", "null", "none"}


class DataTooLargeError(InvalidInputError):
    """A data file would take more memory, or hold more columns, than allowed once read.

    Raised by :func:`check_table` from the file's headers, before its data is read: a few
    compressed megabytes may declare gigabytes (a .npz of zeros, a Parquet of 100,000 columns).
    ``limit`` says which bound: ``"bytes"`` or ``"columns"``.
    """

    def __init__(self, message: str, limit: str):
        super().__init__(message)
        self.limit = limit


def _memory_bytes() -> int:
    """Physical memory: a local file's matrix must fit in it (the bound of a bomb, not a quota)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def load_table(path, columns=None, *, max_bytes: Optional[int] = None, max_columns: Optional[int] = None):
    """Read a numeric matrix from a file.

    Parameters
    ----------
    path : str or Path
        ``.csv``, ``.npy``, ``.npz`` or ``.parquet`` file.
    columns : sequence of str or int, optional
        Features to keep, by name (CSV header, Parquet) or 0-based index; default all.
    max_bytes, max_columns : int, optional
        Refuse (:class:`DataTooLargeError`, before reading the data) a file whose matrix would
        take more bytes, or that has more columns; see :func:`check_table`. Default: the
        machine's physical memory, any number of columns.

    Returns
    -------
    X : ndarray, float64, shape (n_rows, n_features)
    names : list of str
        Column names (``"x0", "x1", ...`` when the file has none).
    """
    path = Path(path)
    check_table(path, _memory_bytes() if max_bytes is None else max_bytes, max_columns)
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
    f = io.BytesIO(blob)
    shape, fortran_order, dtype = _npy_header(f, name)
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


# What zipfile raises for a damaged or encrypted archive, or one of an unsupported compression
# (NotImplementedError, found by fuzzing).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, NotImplementedError,
               RuntimeError, ValueError)


def _read_npz(path: Path) -> np.ndarray:
    try:
        with zipfile.ZipFile(path) as z:
            arrays = {n[:-4] if n.endswith(".npy") else n: n for n in z.namelist()}
            member = arrays.get("X", next(iter(arrays.values())) if len(arrays) == 1 else None)
            blob = None if member is None else z.read(member)
    except _ZIP_ERRORS as e:
        raise InvalidInputError(f"{path.name} is not a readable .npz archive: {type(e).__name__}: {e}") from None
    if member is None:
        raise InvalidInputError(f"{path.name} holds arrays {sorted(arrays)}; name the data array 'X'")
    return array_from_npy(blob, f"{path.name}[{member}]")


def check_table(path, max_bytes: int, max_columns: Optional[int] = None) -> None:
    """Refuse a data file whose matrix would exceed ``max_bytes`` (as float64, with the copy
    a conversion makes) or ``max_columns``, from what its headers declare, before its data is read.

    ``.npy``/``.npz``: the array's header (shape and dtype; in a .npz also the member's declared
    uncompressed size; reading it stays bounded by both). Parquet: the footer's length, then its
    column and row counts and uncompressed sizes. CSV/TSV: the first row's width and the rows,
    counted in one pass that keeps none of them. Raises :class:`DataTooLargeError`, or
    InvalidInputError for a missing or unreadable file.
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"{str(path)!r} is a folder; give a data file (.csv, .tsv, .npy, .npz, .parquet)")
    if not path.is_file():
        raise InvalidInputError(f"data file {str(path)!r} does not exist")
    ext = path.suffix.lower()
    if ext == ".npy":
        with open(path, "rb") as f:
            shape, _, dtype = _npy_header(f, path.name)
        _check_size(path, shape, dtype, max_bytes, max_columns)
        if _n_bytes(shape, dtype.itemsize) > path.stat().st_size:
            raise InvalidInputError(f"{path.name} declares a {' x '.join(map(str, shape))} array but holds less data")
    elif ext == ".npz":
        _check_npz(path, max_bytes, max_columns)
    elif ext in (".parquet", ".pq"):
        _check_parquet(path, max_bytes, max_columns)
    elif ext in (".csv", ".txt", ".tsv"):
        _check_csv(path, "\t" if ext == ".tsv" else ",", max_bytes, max_columns)


def _n_bytes(shape, itemsize: int) -> int:
    n = itemsize
    for k in shape:
        n *= int(k)
    return n


def _too_large(path: Path, what: str, max_bytes: int) -> DataTooLargeError:
    return DataTooLargeError(f"{path.name} {what}: more than the {_mb(max_bytes)} allowed", "bytes")


def _too_wide(path: Path, n: int, max_columns: int) -> DataTooLargeError:
    return DataTooLargeError(f"{path.name} has {n:,} columns, more than the {max_columns:,} allowed", "columns")


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n:,} bytes"


def _check_size(path: Path, shape, dtype, max_bytes: int, max_columns: Optional[int]) -> None:
    if len(shape) != 2:
        raise InvalidInputError(f"{path.name} holds a {len(shape)}-D array; a 2-D array (rows x features) is required")
    if dtype.kind not in "biuf":
        raise InvalidInputError(f"{path.name} holds {dtype} data; numeric data is required")
    if max_columns is not None and shape[1] > max_columns:
        raise _too_wide(path, shape[1], max_columns)
    # The float64 matrix, and the array it is converted from when that is of another dtype.
    need = _n_bytes(shape, 8) + (0 if dtype == np.float64 else _n_bytes(shape, dtype.itemsize))
    if need > max_bytes:
        raise _too_large(path, f"holds a {shape[0]:,} x {shape[1]:,} {dtype} array, {_mb(need)} once read", max_bytes)


def _npy_header(f, name: str):
    """(shape, fortran_order, dtype) from a .npy header, reading nothing after it."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            return fmt.read_array_header_1_0(f)
        if version == (2, 0):
            return fmt.read_array_header_2_0(f)
        raise ValueError(f"format version {version} (1.0 and 2.0 are read)")
    except Exception as e:  # numpy's header parser (tokenize, literal_eval) has no one error of its own
        raise InvalidInputError(f"{name} is not a readable .npy array: {e}") from None


def _check_npz(path: Path, max_bytes: int, max_columns: Optional[int]) -> None:
    try:
        with zipfile.ZipFile(path) as z:
            # The member np.load would give load_table: "X", else the only one.
            members = {(n[:-4] if n.endswith(".npy") else n): n for n in z.namelist()}
            member = members.get("X") or (next(iter(members.values())) if len(members) == 1 else None)
            if member is None:
                return  # load_table names the arrays and asks for an "X"
            info = z.getinfo(member)
            with z.open(member) as f:  # decompresses only the header's bytes
                shape, _, dtype = _npy_header(f, path.name)
                header = f.tell()
    except InvalidInputError:
        raise
    except _ZIP_ERRORS as e:
        raise InvalidInputError(f"{path.name} is not a readable .npz archive: {type(e).__name__}: {e}") from None
    _check_size(path, shape, dtype, max_bytes, max_columns)
    # The member's declared size: reading it stops there (zipfile) and at the header's shape.
    if info.file_size - header > max_bytes:
        raise _too_large(path, f"declares {_mb(info.file_size - header)} of data uncompressed", max_bytes)


_PARQUET_FOOTER_PER_COLUMN = 1024  # bytes of footer per column allowed: ~190 is usual, one row group


def _check_parquet(path: Path, max_bytes: int, max_columns: Optional[int]) -> None:
    # The footer is parsed whole (into far more memory than its bytes: 275 MB for the 19 MB of
    # 100,000 columns), so its length is checked first, from the file's last 8 bytes.
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size < 12:
            raise InvalidInputError(f"{path.name} is not a Parquet file (too short)")
        f.seek(-8, os.SEEK_END)
        footer, magic = struct.unpack("<I4s", f.read(8))
    if magic != b"PAR1" or footer > size - 12:
        raise InvalidInputError(f"{path.name} is not a Parquet file (no footer)")
    most = (max_columns or 100_000) * _PARQUET_FOOTER_PER_COLUMN + 65536
    if footer > min(most, max_bytes):
        raise DataTooLargeError(f"{path.name} has a {_mb(footer)} footer (the metadata of its columns and row "
                                f"groups): more than {_mb(min(most, max_bytes))} allowed", "columns")
    from pynomaly._optional import require

    pq = require("pyarrow.parquet", "parquet")
    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as e:  # noqa: BLE001 - pyarrow's errors for a bad file are of many kinds
        raise InvalidInputError(f"{path.name} is not a readable Parquet file: {e}") from None
    if max_columns is not None and meta.num_columns > max_columns:
        raise _too_wide(path, meta.num_columns, max_columns)
    need = _n_bytes((meta.num_rows, meta.num_columns), 8)
    stored = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if max(need, stored) > max_bytes:
        raise _too_large(path, f"holds {meta.num_rows:,} rows x {meta.num_columns:,} columns, "
                               f"{_mb(max(need, stored))} once read", max_bytes)


def _check_csv(path: Path, delimiter: str, max_bytes: int, max_columns: Optional[int]) -> None:
    width = rows = 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            delimiter = _sniff_delimiter(f.readline(), delimiter)
            f.seek(0)
            for r in csv.reader(f, delimiter=delimiter):
                if not r:
                    continue
                if not width:
                    width = len(r)
                    if max_columns is not None and width > max_columns:
                        raise _too_wide(path, width, max_columns)
                    if not all(_is_number(v) for v in r):
                        continue  # the header (as _read_csv decides)
                rows += 1
                if rows * width * 8 > max_bytes:
                    raise _too_large(path, f"holds more than {rows - 1:,} rows of {width:,} columns", max_bytes)
    except UnicodeDecodeError:
        return  # load_table says where the file is not UTF-8
    except csv.Error as e:
        raise InvalidInputError(f"{path.name} is not a readable CSV file: {e}") from None


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
    # Values go into one array of doubles per column as they are read (8 bytes a value): a
    # list of rows of strings took some 80 bytes a value, ten times the matrix it became.
    header, cols, bad, n = None, None, set(), 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            delimiter = _sniff_delimiter(f.readline(), delimiter)
            f.seek(0)
            for r in csv.reader(f, delimiter=delimiter):
                if not r:
                    continue
                if cols is None:
                    if not all(_is_number(v) for v in r):
                        header = [h.strip() for h in r]
                        cols = [array.array("d") for _ in r]
                        continue
                    cols = [array.array("d") for _ in r]
                n += 1
                if len(r) != len(cols):
                    line = n + (1 if header else 0)
                    raise InvalidInputError(f"{path.name}: line {line} has {len(r)} fields, expected {len(cols)}")
                for j, v in enumerate(r):
                    if j in bad:
                        continue
                    try:
                        cols[j].append(float(v))
                    except ValueError:
                        if v.strip().lower() in _MISSING:
                            cols[j].append(float("nan"))
                        else:
                            bad.add(j)
    except UnicodeDecodeError as e:
        raise InvalidInputError(
            f"{path.name} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8"
        ) from None
    if cols is None:
        raise InvalidInputError(f"{path.name} is empty")
    if not n:
        raise InvalidInputError(f"{path.name} has a header but no data rows")
    names = header or [f"x{i}" for i in range(len(cols))]
    X = np.empty((n, len(cols)), dtype=np.float64)
    for j, col in enumerate(cols):
        X[:, j] = np.nan if j in bad else np.frombuffer(col, dtype=np.float64)
        cols[j] = None  # each column's memory goes as soon as it is copied
    # Non-numeric columns are an error only when selected: an id or a label column next to
    # the features is common, and `columns` is how to leave it out.
    return X, names, [names[j] for j in sorted(bad)]


def read_header(path) -> "list[str] | None":
    """The column names a CSV/TSV or Parquet file declares, read as :func:`load_table` reads
    them (same delimiter sniffing; a first row of numbers is data, not a header), without
    reading the rows. None for other formats, a file without a header, or one that cannot be
    read (its full read then says why)."""
    p = Path(path)
    ext = p.suffix.lower()
    try:
        if ext in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(p).names)
        if ext not in (".csv", ".txt", ".tsv"):
            return None
        with open(p, newline="", encoding="utf-8-sig") as f:
            first = f.readline()
        row = next(csv.reader([first], delimiter=_sniff_delimiter(first, "\t" if ext == ".tsv" else ",")), [])
    except Exception:
        return None
    if not row or all(_is_number(v) for v in row):
        return None
    return [h.strip() for h in row]


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return v.strip().lower() in _MISSING


def _read_parquet(path: Path, columns):
    from pynomaly._optional import require

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


def _top_columns(top_features, top_k, n: int):
    """Column names and per-row cells of the top features for the tabular formats."""
    if top_features is None:
        return [], [()] * n
    k = int(top_k)
    names = [f"top{i}_{part}" for i in range(1, k + 1) for part in ("feature", "value", "attribution")]
    rows = []
    for feats in top_features:
        cells = []
        for i in range(k):
            f = feats[i] if feats is not None and i < len(feats) else None
            cells += [f["feature"], f["value"], f["attribution"]] if f else [None, None, None]
        rows.append(tuple(cells))
    return names, rows


def write_result(path, scores: np.ndarray, labels: np.ndarray, summary: dict, *, extra: "dict | None" = None,
                 top_features=None, top_k=None) -> None:
    """Write per-row scores and labels to ``path`` (format from the extension: .csv, .json,
    .parquet); JSON also carries ``summary``. The file appears atomically.

    ``extra`` adds per-row float columns after them (e.g. ``{"p_value": ...}``).
    ``top_features`` (optional, with ``top_k``): per row, None or its top features as dicts
    ``{"feature", "value", "attribution"}`` (the flagged rows' explanations). JSON gets a
    ``top_features`` list (null for rows without); CSV and Parquet get columns
    ``top{i}_feature``, ``top{i}_value``, ``top{i}_attribution`` for i in 1..top_k (empty for
    rows without).
    """
    extra = {k: np.asarray(v, dtype=np.float64) for k, v in (extra or {}).items()}
    path = check_result_path(path)
    ext = path.suffix.lower()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    top_names, top_rows = _top_columns(top_features, top_k, len(scores))
    try:
        if ext == ".csv":
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["index", "score", "label", *extra, *top_names])
                floats = [col.tolist() for col in extra.values()]
                w.writerows((i, repr(float(s)), int(v), *(repr(c[i]) for c in floats), *top)
                            for i, s, v, top in zip(range(len(scores)), scores, labels, top_rows))
        elif ext == ".json":
            with open(tmp, "w") as f:
                doc = {"summary": summary, "scores": [float(s) for s in scores], "labels": [int(v) for v in labels],
                       **{k: [float(x) for x in col] for k, col in extra.items()}}
                if top_features is not None:
                    doc["top_features"] = list(top_features)
                json.dump(doc, f)
        elif ext in (".parquet", ".pq"):
            from pynomaly._optional import require

            pa = require("pyarrow", "parquet")
            import pyarrow.parquet as pq

            columns = {"index": np.arange(len(scores)), "score": scores, "label": labels, **extra}
            for j, name in enumerate(top_names):
                columns[name] = [r[j] for r in top_rows]
            pq.write_table(pa.table(columns), tmp)
        else:
            raise InvalidInputError(f"cannot write {path.name}: accepted output formats are .csv, .json, .parquet")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
