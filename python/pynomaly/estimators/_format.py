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
"n_trees", "n_nodes", "max_samples_", "threshold" (float or null), "n_train_scores", and
"feature_names" (list of strings, only for a detector fitted with column names; every kind).

Neighbour detectors (kinds b"LOF\\0\\0\\0\\0\\0" and b"KNN\\0\\0\\0\\0\\0") use the same frame; their arrays
are the training rows, then per-row float64 arrays::

                           train_X      float32 or float64 ("dtype" in the header) [n_train * n_features]
                           train_scores float64 [n_train]
                           lrd, kdist   float64 [n_train] each (LOF only: local reachability
                                                density and k-distance of each training row)

with header keys "params", "n_train", "n_features", "dtype" ("<f4" or "<f8"), "threshold",
"algorithm".

A reader rejects a wrong magic, an unknown version or kind, a length that disagrees with the
header, and a checksum mismatch; the native core then validates every node index.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np

from pynomaly import _core
from pynomaly._errors import ModelFormatError
from pynomaly.domain import flagged

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
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise ModelFormatError(f"model header is invalid: {e}") from None
    return header, data, end


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
    try:
        n_trees, n_nodes, n_scores = int(header["n_trees"]), int(header["n_nodes"]), int(header["n_train_scores"])
        n_features, psi = int(header["n_features"]), int(header["psi"])
        params = dict(header["params"])
    except (ValueError, KeyError, TypeError) as e:
        raise ModelFormatError(f"model header is invalid: {e}") from None
    if min(n_trees, n_nodes, n_scores) < 0:
        raise ModelFormatError("model header has negative sizes")
    expected = end + 4 * (n_trees + 1) + (4 + 4 + 4 + 8) * n_nodes + 8 * n_scores + 4
    if expected != len(data):
        raise ModelFormatError(f"model data has {len(data)} bytes, header implies {expected}")

    pos = end

    def take(dtype, count):
        nonlocal pos
        a = np.frombuffer(data, dtype=dtype, count=count, offset=pos)
        pos += a.nbytes
        return a

    tree_offset = take("<i4", n_trees + 1)
    feature = take("<i4", n_nodes)
    threshold = take("<f4", n_nodes)
    left = take("<i4", n_nodes)
    leaf_value = take("<f8", n_nodes)
    scores = take("<f8", n_scores).copy()
    try:
        forest = _core.Forest(n_features, psi, tree_offset, feature, threshold, left, leaf_value)
    except ValueError as e:
        raise ModelFormatError(f"model data is inconsistent: {e}") from None
    try:
        model = cls(**params)
    except TypeError as e:
        raise ModelFormatError(f"model parameters are invalid: {e}") from None
    model._forest = forest
    model.max_samples_ = int(header.get("max_samples_", psi))
    model.n_features_in_ = n_features
    model.decision_scores_ = scores if n_scores else None
    model.threshold_ = header["threshold"]
    model.labels_ = None if model.decision_scores_ is None else flagged(scores, model.threshold_).astype(np.int64)
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
    try:
        n, d, dtype = int(header["n_train"]), int(header["n_features"]), str(header["dtype"])
        params, threshold, algorithm = dict(header["params"]), float(header["threshold"]), str(header["algorithm"])
    except (ValueError, KeyError, TypeError) as e:
        raise ModelFormatError(f"model header is invalid: {e}") from None
    if dtype not in ("<f4", "<f8") or n < 1 or d < 1:
        raise ModelFormatError(f"model header is invalid: n_train={n}, n_features={d}, dtype={dtype!r}")
    n_rows_arrays = 3 if kind == KIND_LOF else 1
    expected = pos + n * d * (4 if dtype == "<f4" else 8) + 8 * n * n_rows_arrays + 4
    if expected != len(data):
        raise ModelFormatError(f"model data has {len(data)} bytes, header implies {expected}")

    def take(dt, count):
        nonlocal pos
        a = np.frombuffer(data, dtype=dt, count=count, offset=pos).copy()
        pos += a.nbytes
        return a

    X = take(dtype, n * d).reshape(n, d).astype(np.float32 if dtype == "<f4" else np.float64, copy=False)
    scores = take("<f8", n)
    try:
        model = cls(**params)
    except TypeError as e:
        raise ModelFormatError(f"model parameters are invalid: {e}") from None
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
