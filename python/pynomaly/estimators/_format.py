"""pynomaly's model file format, version 1: self-describing, checksummed, no pickle.

Layout (all integers and arrays little-endian, packed, no padding)::

    offset  size         field
    0       8            magic  b"PYNOMALY"
    8       4   u32      format version (1)
    12      8            kind, ASCII padded with NUL: b"IFOREST\\0"
    20      8   u64      header length H
    28      H            header: UTF-8 JSON object (below)
    28+H    ...          arrays, in this order:
                           tree_offset  int32   [n_trees + 1]
                           feature      int32   [n_nodes]   (-1 marks a leaf)
                           threshold    float32 [n_nodes]   (go left if float32(x) <= threshold)
                           left         int32   [n_nodes]   (right child = left + 1, tree-local)
                           leaf_value   float64 [n_nodes]   (depth + c(leaf size) at leaves)
                           train_scores float64 [n_train_scores]
    end-4   4   u32      CRC-32 (zlib) of every byte before it

Header keys: "params" (the estimator's get_params(), JSON-able values), "n_features", "psi",
"n_trees", "n_nodes", "max_samples_", "threshold", "n_train_scores", and
"feature_names" (list of strings, only for a detector fitted with column names; every kind).

Neighbour detectors (kinds b"LOF\\0\\0\\0\\0\\0" and b"KNN\\0\\0\\0\\0\\0") use the same frame; their arrays
are the training rows, then per-row float64 arrays::

                           train_X      float32 or float64 ("dtype" in the header) [n_train * n_features]
                           train_scores float64 [n_train]
                           lrd, kdist   float64 [n_train] each (LOF only: local reachability
                                                density and k-distance of each training row)

with header keys "params", "n_train", "n_features", "dtype" ("<f4" or "<f8"), "threshold",
"algorithm".

A reader rejects, with ModelFormatError and whatever the bytes: a wrong magic, an unknown
version or kind, a checksum mismatch, a header field of the wrong type or out of range, a length
that disagrees with the header, and parameters or rows the model could not score with; the
native core then validates every size and node index itself. tests/fuzz/fuzz_loaders.py fuzzes
every reader here: a format added later joins it.
"""

from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np

from pynomaly import _core
from pynomaly._errors import InvalidInputError, ModelFormatError
from pynomaly.domain import flagged
from pynomaly.estimators._validation import resolve_n_jobs

MAGIC = b"PYNOMALY"
VERSION = 1
KIND_IFOREST = b"IFOREST\0"
KIND_LOF = b"LOF\0\0\0\0\0"
KIND_KNN = b"KNN\0\0\0\0\0"
# Registry name of each kind: how a bare model file says what it holds.
ALGORITHM_OF_KIND = {KIND_IFOREST: "IsolationForest", KIND_LOF: "LOF", KIND_KNN: "KNN"}
_PREFIX = struct.Struct("<8sI8sQ")


def _json_safe(value):
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return None  # e.g. a RandomState instance: not reproducible from a file anyway


def pack(kind: bytes, header: dict, parts) -> bytes:
    """Frame a model: prefix, JSON header, raw array bytes, CRC-32 of everything before it."""
    hbytes = json.dumps(header, sort_keys=True).encode()
    body = b"".join([_PREFIX.pack(MAGIC, VERSION, kind, len(hbytes)), hbytes, *parts])
    return body + struct.pack("<I", zlib.crc32(body))


def algorithm_of(data) -> "str | None":
    """The registry name of the native model in ``data`` (by its magic and kind), or None."""
    head = bytes(memoryview(data)[: _PREFIX.size]) if len(data) >= _PREFIX.size else b""
    if len(head) < _PREFIX.size:
        return None
    magic, _, kind, _ = _PREFIX.unpack(head)
    return ALGORITHM_OF_KIND.get(kind) if magic == MAGIC else None


def unpack(data, kind: bytes, what: str):
    """Check the frame of a model of `kind` and return (header dict, memoryview, offset of arrays).

    Raises ModelFormatError for a wrong magic, version or kind, a checksum mismatch or a bad
    header; the caller checks the array lengths against the header.
    """
    try:
        data = memoryview(data).cast("B")
    except TypeError:
        raise ModelFormatError(f"model data must be bytes-like, got {type(data).__name__}") from None
    if len(data) < _PREFIX.size + 4:
        raise ModelFormatError(f"model data is truncated ({len(data)} bytes)")
    magic, version, found, hlen = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise ModelFormatError("not a pynomaly model (bad magic bytes)")
    if version != VERSION:
        raise ModelFormatError(f"unsupported model format version {version}; this pynomaly reads version {VERSION}")
    if found != kind:
        raise ModelFormatError(f"model kind {found.rstrip(bytes(1))!r} is not {what}")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise ModelFormatError("model data is corrupted or truncated (checksum mismatch)")
    end = _PREFIX.size + hlen
    if end > len(data) - 4:
        raise ModelFormatError("model data is truncated (header)")
    try:
        header = json.loads(bytes(data[_PREFIX.size : end]))
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
        raise ModelFormatError(f"model header is invalid: {type(e).__name__}: {e}") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"model header is invalid: a JSON object is required, got {type(header).__name__}")
    return header, data, end


# Every header field is checked here, before any of it reaches numpy or the native core: a
# size the core would compute with (n_features, psi) once crashed every process that loaded
# the file (a division by zero), and numpy or pybind11 raise their own errors for the rest.
_INT64_MAX = 2**63 - 1
_INT32_MAX = 2**31 - 1


def _int(header: dict, key: str, lo: int, hi: int) -> int:
    v = header.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ModelFormatError(f"model header is invalid: {key!r} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _threshold(header: dict, nullable: bool = False) -> "float | None":
    v = header.get("threshold")
    if v is None and nullable:
        return None  # a forest written before its threshold was known (pynomaly.dask ships those)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ModelFormatError(f"model header is invalid: 'threshold' must be a finite number, got {v!r}")
    return float(v)


def _model(cls, header: dict):
    """``cls(**header["params"])``, with the parameters a fitted model still uses checked."""
    params = header.get("params")
    if not isinstance(params, dict):
        raise ModelFormatError(f"model header is invalid: 'params' must be an object, got {type(params).__name__}")
    try:
        model = cls(**params)
    except TypeError as e:
        raise ModelFormatError(f"model header is invalid: parameters of {cls.__name__}: {e}") from None
    try:
        model._rate()  # the contamination rate (or "auto" where the detector defines it)
        if resolve_n_jobs(model.n_jobs) > _INT32_MAX:
            raise InvalidInputError(f"n_jobs must be at most {_INT32_MAX}, got {model.n_jobs!r}")
        if hasattr(model, "_check_params"):  # the neighbour detectors' own check (k, metric, ...)
            model._check_params()
    except InvalidInputError as e:
        raise ModelFormatError(f"model header is invalid: {e}") from None
    return model


def with_feature_names(header: dict, model) -> dict:
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        header["feature_names"] = [str(n) for n in names]
    return header


def restore_feature_names(model, header: dict) -> None:
    names = header.get("feature_names")
    if isinstance(names, list) and len(names) == model.n_features_in_ and all(isinstance(n, str) for n in names):
        model.feature_names_in_ = np.asarray(names, dtype=object)


def dump_forest(model) -> bytes:
    forest = model._forest
    arrays = forest.arrays()
    scores = model.decision_scores_
    scores = np.zeros(0) if scores is None else np.ascontiguousarray(scores, dtype="<f8")
    header = {
        "params": {k: _json_safe(v) for k, v in model.get_params().items()},
        "n_features": forest.n_features,
        "psi": forest.psi,
        "n_trees": forest.n_trees,
        "n_nodes": int(arrays["feature"].size),
        "max_samples_": int(model.max_samples_),
        "threshold": None if model.threshold_ is None else float(model.threshold_),
        "n_train_scores": int(scores.size),
    }
    parts = [
        arrays["tree_offset"].astype("<i4").tobytes(),
        arrays["feature"].astype("<i4").tobytes(),
        arrays["threshold"].astype("<f4").tobytes(),
        arrays["left"].astype("<i4").tobytes(),
        arrays["leaf_value"].astype("<f8").tobytes(),
        scores.tobytes(),
    ]
    return pack(KIND_IFOREST, with_feature_names(header, model), parts)


def load_forest(cls, data):
    header, data, end = unpack(data, KIND_IFOREST, "an isolation forest")
    n_trees = _int(header, "n_trees", 1, _INT32_MAX - 1)
    n_nodes = _int(header, "n_nodes", 1, _INT32_MAX)
    n_scores = _int(header, "n_train_scores", 0, _INT64_MAX)
    n_features = _int(header, "n_features", 1, _INT64_MAX)  # the core holds it to its own limit
    psi = _int(header, "psi", 1, _INT64_MAX)
    max_samples = _int(header, "max_samples_", 1, _INT64_MAX) if "max_samples_" in header else psi
    threshold = _threshold(header, nullable=True)  # "float or null", as the layout above says
    expected = end + 4 * (n_trees + 1) + (4 + 4 + 4 + 8) * n_nodes + 8 * n_scores + 4
    if expected != len(data):
        raise ModelFormatError(f"model data has {len(data)} bytes, header implies {expected}")
    model = _model(cls, header)

    pos = end

    def take(dtype, count):
        nonlocal pos
        a = np.frombuffer(data, dtype=dtype, count=count, offset=pos)
        pos += a.nbytes
        return a

    tree_offset = take("<i4", n_trees + 1)
    feature = take("<i4", n_nodes)
    threshold_ = take("<f4", n_nodes)
    left = take("<i4", n_nodes)
    leaf_value = take("<f8", n_nodes)
    scores = take("<f8", n_scores).copy()
    try:
        forest = _core.Forest(n_features, psi, tree_offset, feature, threshold_, left, leaf_value)
    except ValueError as e:  # ModelFormatError from the core's own checks
        raise ModelFormatError(f"model data is inconsistent: {e}") from None
    model._forest = forest
    model.max_samples_ = max_samples
    model.n_features_in_ = n_features
    model.decision_scores_ = scores if n_scores else None
    model.threshold_ = threshold
    model.labels_ = (None if model.decision_scores_ is None or threshold is None
                     else flagged(scores, threshold).astype(np.int64))
    restore_feature_names(model, header)
    return model


# ---- neighbour detectors (LOF, KNN) ------------------------------------------------------------
KIND_LOF = b"LOF\0\0\0\0\0"
KIND_KNN = b"KNN\0\0\0\0\0"


def dump_neighbors(model, kind: bytes) -> bytes:
    X = model._fit_X
    dtype = "<f4" if X.dtype == np.float32 else "<f8"
    header = {
        "params": {k: _json_safe(v) for k, v in model.get_params().items()},
        "n_train": int(X.shape[0]),
        "n_features": int(X.shape[1]),
        "dtype": dtype,
        "threshold": float(model.threshold_),
        "algorithm": model.algorithm_,
    }
    parts = [np.ascontiguousarray(X, dtype=dtype).tobytes(), np.ascontiguousarray(model.decision_scores_, "<f8").tobytes()]
    if kind == KIND_LOF:
        parts += [np.ascontiguousarray(model._lrd, "<f8").tobytes(), np.ascontiguousarray(model._kdist, "<f8").tobytes()]
    return pack(kind, with_feature_names(header, model), parts)


def load_neighbors(cls, data, kind: bytes, what: str):
    header, data, pos = unpack(data, kind, what)
    n = _int(header, "n_train", 2, _INT64_MAX)
    d = _int(header, "n_features", 1, _INT64_MAX)
    dtype, algorithm = header.get("dtype"), header.get("algorithm")
    if dtype not in ("<f4", "<f8"):
        raise ModelFormatError(f"model header is invalid: 'dtype' must be '<f4' or '<f8', got {dtype!r}")
    if algorithm not in ("brute", "kd_tree"):
        raise ModelFormatError(f"model header is invalid: 'algorithm' must be 'brute' or 'kd_tree', got {algorithm!r}")
    threshold = _threshold(header)
    n_rows_arrays = 3 if kind == KIND_LOF else 1
    expected = pos + n * d * (4 if dtype == "<f4" else 8) + 8 * n * n_rows_arrays + 4
    if expected != len(data):
        raise ModelFormatError(f"model data has {len(data)} bytes, header implies {expected}")
    model = _model(cls, header)

    def take(dt, count):
        nonlocal pos
        a = np.frombuffer(data, dtype=dt, count=count, offset=pos).copy()
        pos += a.nbytes
        return a

    X = take(dtype, n * d).reshape(n, d).astype(np.float32 if dtype == "<f4" else np.float64, copy=False)
    try:  # the core's own rules, as every query applies them: rows (finite, |x| <= 1e150), metric and algorithm
        _core.knn(X, 1, X[:1], model.metric, model.algorithm, 1)
    except ValueError as e:
        raise ModelFormatError(f"model data is inconsistent: {e}") from None
    scores = take("<f8", n)
    model._fit_X = X
    model.n_features_in_ = d
    model.algorithm_ = algorithm
    model.decision_scores_ = scores
    if kind == KIND_LOF:
        model._lrd = take("<f8", n)
        model._kdist = take("<f8", n)
    model.threshold_ = threshold
    model.labels_ = flagged(scores, threshold).astype(np.int64)
    restore_feature_names(model, header)
    return model
