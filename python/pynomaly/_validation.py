"""Turning user input into arrays the native core reads in place.

float32/float64 arrays of any memory layout go to the core untouched (it reads strided data);
everything else (lists, ints, bools, object arrays of numbers, DataFrames, pandas nullable
columns) is converted once to float64. Messages carry the phrases scikit-learn's own checks
look for ("Reshape your data", "n_samples=1", "0 feature(s)", "sparse", "Complex data").
"""

from __future__ import annotations

import numbers

import numpy as np

from ._errors import InvalidInputError


class NotANumberError(InvalidInputError, TypeError):
    """An object array holds a value that is no number: a TypeError too, as NumPy's own
    conversion error is, so code written against scikit-learn (``except TypeError``) still works."""

_FLOATS = (np.dtype(np.float64), np.dtype(np.float32))  # float64 first: `in` tries identity, the common case


def as_matrix(X, *, name: str = "X") -> np.ndarray:
    """Return X as a 2-D float32/float64 array, converting only when needed.

    Raises InvalidInputError for non-numeric data (naming the offending column of a
    DataFrame), wrong dimensionality, or 0 rows / 0 features.
    """
    if type(X) is not np.ndarray or X.dtype not in _FLOATS:
        X = _convert(X, name)
    if X.ndim != 2:
        hint = (". Reshape your data: X.reshape(1, -1) for a single row, X.reshape(-1, 1) for a single feature"
                if X.ndim == 1 else "")
        raise InvalidInputError(f"{name} must be 2-dimensional (rows x features), got {X.ndim} dimension(s){hint}")
    if X.shape[0] == 0:
        raise InvalidInputError(f"{name} has 0 rows; at least one row is required")
    if X.shape[1] == 0:
        raise InvalidInputError(f"{name} has 0 feature(s) (shape={X.shape}) while a minimum of 1 is required.")
    if X.strides[0] % X.itemsize or X.strides[1] % X.itemsize:
        X = np.ascontiguousarray(X)
    return X


def _convert(X, name: str) -> np.ndarray:
    columns = getattr(X, "columns", None)
    dtypes = getattr(X, "dtypes", None)
    if columns is not None and dtypes is not None and hasattr(X, "to_numpy"):
        bad = [str(c) for c, dt in zip(columns, dtypes) if not _is_numeric_dtype(dt)]
        if bad:
            raise InvalidInputError(f"{name} has non-numeric column(s) {bad}; encode or drop them first")
        if any(not isinstance(dt, np.dtype) for dt in dtypes):
            # pandas nullable columns (Float64, Int64, boolean) would become an object array:
            # their NA becomes NaN, refused below like any NaN.
            X = X.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            X = X.to_numpy()
    arr = numeric_array(X, name)
    return arr if arr.dtype in _FLOATS else arr.astype(np.float64)  # bool, ints, float16/longdouble


def numeric_array(obj, name: str) -> np.ndarray:
    """``np.asarray(obj)`` as a bool, int or float array, else InvalidInputError.

    Object arrays holding numbers are converted to float64 (None becomes NaN); sparse matrices
    and complex numbers are refused with a message saying so.
    """
    if type(obj).__module__.startswith("scipy.sparse"):
        raise InvalidInputError(f"{name} is a {type(obj).__name__}: sparse input is not supported, pass X.toarray()")
    try:
        arr = np.asarray(obj)
    except (TypeError, ValueError) as e:  # ragged lists and the like
        raise InvalidInputError(f"{name} cannot be read as a numeric array: {e}") from None
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise NotANumberError(
                f"{name} has dtype object with a value that is not a number ({e}); encode or drop non-numeric data first"
            ) from None
    if arr.dtype.kind == "c":
        raise InvalidInputError(f"{name} has complex values (dtype {arr.dtype}): Complex data not supported")
    if arr.dtype.kind not in "biuf":
        raise InvalidInputError(
            f"{name} must be numeric (float, int or bool), got dtype {arr.dtype}; encode or drop non-numeric data first"
        )
    return arr


def feature_names(X) -> "list[str] | None":
    """The column names of a DataFrame-like X when they are all strings (scikit-learn's rule
    for ``feature_names_in_``), else None (arrays, integer column labels)."""
    columns = getattr(X, "columns", None)
    if columns is None:
        return None
    names = list(columns)
    if not names or not all(isinstance(c, str) for c in names):
        return None
    return names


def _is_numeric_dtype(dt) -> bool:
    try:
        return np.dtype(dt).kind in "biuf"
    except TypeError:  # pandas extension dtypes
        return getattr(dt, "kind", "O") in "biuf"


def resolve_n_jobs(n_jobs) -> int:
    """scikit-learn's meaning: None -> 1, -1 -> every usable CPU, -2 -> all but one, k -> k."""
    if n_jobs is None:
        return 1
    if not isinstance(n_jobs, numbers.Integral) or isinstance(n_jobs, bool) or n_jobs == 0:
        raise InvalidInputError(f"n_jobs must be None or a non-zero integer, got {n_jobs!r}")
    if n_jobs > 0:
        return int(n_jobs)
    return max(usable_cpus() + 1 + int(n_jobs), 1)


def usable_cpus() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_contamination(contamination) -> float:
    if isinstance(contamination, bool) or not isinstance(contamination, numbers.Real):
        raise InvalidInputError(f"contamination must be a float in (0, 0.5], got {contamination!r}")
    c = float(contamination)
    if not (0.0 < c <= 0.5):
        raise InvalidInputError(f"contamination must be in (0, 0.5], got {contamination!r}")
    return c
