"""Scoring and isolation-forest training on Dask collections (extra: ``pip install 'pynomaly[dask]'``).

- :func:`score` / :func:`predict`: lazy scores or 0/1 labels of a dask array or dask dataframe,
  for any fitted detector (IsolationForest, LOF, KNN, the PyOD / PyTorch / JAX adapters).
- :func:`fit`: an :class:`~pynomaly.IsolationForest` grown from a dask collection without
  collecting it: the forest is the one ``fit(X.compute())`` grows, bit for bit, and the
  threshold is the exact ``np.percentile`` of the training scores.
- :func:`explain`: per-feature attributions of the rows (``model.explain``) block by block,
  equal to the in-process ones (every method explains a row independently of the others).
- :func:`percentile`: ``np.percentile`` of a 1-D dask array, exactly, by distributed selection.

The model reaches each worker once. With a ``distributed`` client it is scattered to every
worker (``broadcast=True``) and every block task refers to that one piece of data; with the
local schedulers it is one key of the graph. Each worker process decodes it once and keeps the
detector in a small cache keyed by the bytes' hash, so blocks do not re-read it.

Threads: Dask's nanny starts workers with ``OMP_NUM_THREADS=1``; we do not rely on it either
way, because every native call is given its thread count (OpenMP's ``num_threads``). By default
a block is scored with one thread: a worker already runs as many tasks at once as it has
threads, and the native kernels release the GIL, so one thread per task fills the worker's
cores without oversubscribing them. Pass ``n_jobs`` when workers have fewer threads than cores
(e.g. one single-threaded worker per machine). Results never depend on ``n_jobs``.

Blocks are scored independently, so a detector whose score of a row depends on the other rows
of the same call (PyOD's ECOD and COPOD score new rows together with the batch) gives scores
that depend on the partitioning; every native detector and row-wise adapter does not.

Trust boundary: native detectors travel as their ``to_bytes`` format (no pickle). The other
detectors (PyOD, PyTorch, JAX) travel as a pickle of the object in this process, to the workers
of the client you connected; that is what Dask does with any task argument. Nothing is read
back from storage here, so no unsigned pickle from elsewhere is ever loaded.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import threading
from collections import OrderedDict

import numpy as np

try:
    import dask
    import dask.array as da
    import dask.dataframe as dd
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    from pynomaly.estimators.adapters import MissingExtraError

    raise MissingExtraError(
        f"pynomaly.dask needs dask; install it with: pip install 'pynomaly[dask]' ({e})"
    ) from None

from pynomaly._errors import InvalidInputError, NotFittedError
from pynomaly.domain import flagged
from pynomaly.estimators._validation import as_matrix, check_contamination
from pynomaly.estimators.iforest import IsolationForest
from pynomaly.estimators.neighbors import KNN, LOF

__all__ = ["score", "predict", "explain", "fit", "percentile"]

# Detectors shipped in their own byte format; any other detector travels as a pickle.
_NATIVE = {"IsolationForest": IsolationForest, "LOF": LOF, "KNN": KNN}


# -- the model, once per worker ------------------------------------------------------------
class _Shipped:
    """A detector's bytes, its kind and their hash: what a worker receives (once)."""

    __slots__ = ("kind", "data", "digest")

    def __init__(self, kind: str, data: bytes):
        self.kind = kind
        self.data = data
        self.digest = hashlib.sha256(data).hexdigest()

    def __reduce__(self):
        return (_Shipped, (self.kind, self.data))


def _encode(model) -> _Shipped:
    if isinstance(getattr(model, "decision_scores_", None), da.Array):
        # Fitted by fit() below: workers need the forest and threshold, not the training scores
        # (which to_bytes would otherwise collect into this process).
        # (copy.copy would go through the pickle state, i.e. to_bytes, collecting them too.)
        light = object.__new__(type(model))
        light.__dict__.update(model.__dict__, decision_scores_=None, labels_=None)
        model = light
    name = type(model).__name__
    if _NATIVE.get(name) is type(model):
        return _Shipped(name, model.to_bytes())
    return _Shipped("pickle", pickle.dumps(model, protocol=5))


_cache: "OrderedDict[tuple, object]" = OrderedDict()
_cache_lock = threading.Lock()
_CACHE_SIZE = 4


def _decoded(shipped: _Shipped, n_jobs: int):
    """The detector in `shipped`, decoded once per process (and per n_jobs, which it carries)."""
    key = (shipped.digest, n_jobs)
    with _cache_lock:
        model = _cache.get(key)
        if model is not None:
            _cache.move_to_end(key)
            return model
    if shipped.kind == "pickle":
        model = pickle.loads(shipped.data)
    else:
        model = _NATIVE[shipped.kind].from_bytes(shipped.data)
    if "n_jobs" in model.get_params():
        model.set_params(n_jobs=n_jobs)
    with _cache_lock:
        _cache[key] = model
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return model


def _client():
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover
        return None
    try:
        return get_client()
    except ValueError:  # no client: the local schedulers
        return None


_LOCAL_SCHEDULERS = {"threads", "threading", "sync", "synchronous", "single-threaded", "processes", "multiprocessing"}


def _model_ref(model):
    """One graph key holding the model: scattered to every worker when a client is active."""
    shipped = _encode(model)
    client = _client()
    scheduler = dask.config.get("scheduler", None)
    if client is not None and not (isinstance(scheduler, str) and scheduler in _LOCAL_SCHEDULERS):
        return dask.delayed(client.scatter(shipped, broadcast=True, hash=False))
    return dask.delayed(shipped, pure=True)


# -- input ------------------------------------------------------------------------------------
def _check_fitted(model) -> None:
    if not hasattr(model, "get_params") or not hasattr(model, "decision_function"):
        raise InvalidInputError(f"model must be a pynomaly detector, got {type(model).__name__}")
    if not hasattr(model, "threshold_"):
        raise NotFittedError(f"this {type(model).__name__} is not fitted yet; call fit(X) first")


def _n_jobs(n_jobs) -> int:
    if n_jobs is None:
        return 1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise InvalidInputError(f"n_jobs must be None or a positive integer (threads per task), got {n_jobs!r}")
    return n_jobs


def _columns_for(model, X, columns):
    """The dataframe columns the detector reads, in its feature order."""
    if columns is None:
        columns = getattr(model, "feature_names_in_", None)
    d = getattr(model, "n_features_in_", None)
    have = list(X.columns)
    if columns is None:
        if d is not None and len(have) != d:
            raise InvalidInputError(
                f"X has {len(have)} columns, the detector was fitted with {d} features and knows no feature "
                "names; pass columns=[...] to say which columns to score"
            )
        return have
    columns = list(columns)
    missing = [c for c in columns if c not in have]
    if missing:
        raise InvalidInputError(f"X lacks column(s) {missing} that the detector was fitted on; it has {have}")
    if d is not None and len(columns) != d:
        raise InvalidInputError(f"{len(columns)} columns given, the detector was fitted with {d} features")
    return columns


def _as_rows(X, model, columns):
    """(kind, collection): a row-chunked 2-D dask array, or a dataframe restricted to `columns`."""
    if isinstance(X, dd.DataFrame):
        return "frame", X[_columns_for(model, X, columns)]
    if isinstance(X, da.Array):
        if columns is not None:
            raise InvalidInputError("columns= selects dataframe columns; X is a dask array")
        if X.ndim != 2:
            raise InvalidInputError(f"X must be 2-dimensional (rows x features), got {X.ndim} dimension(s)")
        d = getattr(model, "n_features_in_", None)
        if d is not None and X.shape[1] != d:
            raise InvalidInputError(f"X has {X.shape[1]} features, the detector was fitted with {d}")
        return "array", X.rechunk({1: -1}) if X.numblocks[1] > 1 else X
    raise InvalidInputError(
        f"X must be a dask array or a dask dataframe, got {type(X).__name__}; for in-memory data call "
        "the detector's own decision_function/predict"
    )


# -- scoring ----------------------------------------------------------------------------------
def _block_result(block, shipped, n_jobs, labels):
    X = block.to_numpy() if hasattr(block, "to_numpy") else block
    if X.shape[0] == 0:  # an empty partition scores to nothing (the detectors refuse 0 rows)
        return np.empty(0, dtype=np.int64 if labels else np.float64)
    model = _decoded(shipped, n_jobs)
    X = as_matrix(X)
    return model.predict(X) if labels else model.decision_function(X)


def _frame_result(part, shipped, n_jobs, labels):
    import pandas as pd

    return pd.Series(_block_result(part, shipped, n_jobs, labels), index=part.index)


def _map(model, X, columns, n_jobs, labels: bool):
    _check_fitted(model)
    n_jobs = _n_jobs(n_jobs)
    kind, X = _as_rows(X, model, columns)
    ref = _model_ref(model)
    dtype = np.int64 if labels else np.float64
    if kind == "frame":
        import pandas as pd

        return X.map_partitions(_frame_result, ref, n_jobs, labels, meta=pd.Series(dtype=dtype))
    return da.map_blocks(_block_result, X, ref, n_jobs, labels, drop_axis=1, dtype=dtype)


def score(model, X, *, columns=None, n_jobs=None):
    """Anomaly scores of the rows of a dask collection, lazily (``model.decision_function``).

    Parameters
    ----------
    model : fitted pynomaly detector
        Native (IsolationForest, LOF, KNN: novelty scoring against the fitted rows) or an
        adapter (PyOD, PyTorch, JAX). Sent to each worker once (see the module doc).
    X : dask.array.Array (n, d) or dask.dataframe.DataFrame
        A dataframe's columns are chosen by ``columns``, else by the detector's
        ``feature_names_in_`` (set by :func:`fit` on a dataframe), else all of them; other
        columns are ignored.
    columns : list, optional
    n_jobs : None or int
        Threads per block task (default 1: the worker's own threads give the parallelism).

    Returns
    -------
    dask.array.Array of float64 (one chunk per row chunk of X), or for a dataframe a
    dask Series with X's index.
    """
    return _map(model, X, columns, n_jobs, labels=False)


def predict(model, X, *, columns=None, n_jobs=None):
    """0/1 labels (1 = anomaly, score above ``threshold_``) of a dask collection, lazily.

    Same arguments and result shapes as :func:`score`, with int64 values; equal to
    ``model.predict`` on the collected rows.
    """
    return _map(model, X, columns, n_jobs, labels=True)


# -- exact distributed percentile ------------------------------------------------------------
_DIGIT_BITS = 11  # histogram of 2048 bins per block and pass: 6 passes at most for 64-bit keys
_GATHER_AT = 8192  # once a bin holds at most this many values, gather them and finish locally
_SIGN = np.uint64(1 << 63)


def _block_explanation(block, shipped, n_jobs, method, output):
    X = as_matrix(block)
    if X.shape[0] == 0:
        return np.empty((0, X.shape[1] + 1))
    e = _decoded(shipped, n_jobs).explain(X, method, output)
    return np.column_stack([e.values, e.base_values])


def explain(model, X, *, method=None, output=None, columns=None, n_jobs=None):
    """Per-feature attributions of the rows of a dask collection, lazily (``model.explain``).

    Same arguments as :func:`score`, plus ``method`` and ``output`` as ``model.explain`` takes
    them (checked here, before any task runs). Each block is explained on a worker with the
    model shipped once; since every method explains a row on its own (the model-agnostic one
    uses the same permutations and background for every row), the result equals
    ``model.explain(X.compute(), method, output)``.

    Returns
    -------
    Explanation
        Whose ``values`` (n, d) and ``base_values`` (n,) are dask arrays (call ``.compute()``),
        ``data`` the rows as a dask array, and ``feature_names``, ``output``, ``method`` as
        in-process.
    """
    from pynomaly.estimators import explain as _explain

    _check_fitted(model)
    n_jobs = _n_jobs(n_jobs)
    method, output = _explain.check_request(type(model).__name__, model._explain_methods, method, output)
    kind, X = _as_rows(X, model, columns)
    if kind == "frame":
        X = X.to_dask_array(lengths=True)
    d = X.shape[1]
    ref = _model_ref(model)
    both = da.map_blocks(_block_explanation, X, ref, n_jobs, method, output, chunks=(X.chunks[0], (d + 1,)),
                         dtype=np.float64)
    return _explain.Explanation(values=both[:, :d], base_values=both[:, d], feature_names=_explain.feature_names_of(
        model, d), output=output, method=method, data=X)


def _keys(values: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 keys of float64 values (negatives flipped, positives offset)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def _value_of(key: int) -> float:
    k = np.uint64(key)
    bits = k & ~_SIGN if k & _SIGN else ~k
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def _block_histograms(block, targets):
    """Per target (prefix, bits): counts of the next digit among keys with that prefix, or with
    digit None, the matching keys themselves (sorted)."""
    block = np.asarray(block, dtype=np.float64)
    if np.isnan(block).any():
        raise InvalidInputError("scores contain NaN; a percentile is defined for ordered values only")
    keys = _keys(block)
    out = []
    for prefix, bits, digit in targets:
        sel = keys if bits == 0 else keys[(keys >> np.uint64(64 - bits)) == np.uint64(prefix)]
        if digit is None:
            out.append(np.sort(sel))
        else:
            d = ((sel >> np.uint64(64 - bits - digit)) & np.uint64((1 << digit) - 1)).astype(np.int64)
            out.append(np.bincount(d, minlength=1 << digit))
    return out


def _select(x, ranks):
    """Values at the given 0-based ranks of the sorted 1-D dask array x (exact)."""
    blocks = list(x.to_delayed().ravel())
    # Per rank: key prefix found so far, its length in bits, the rank among keys with it, and
    # how many keys share it.
    state = {r: [0, 0, r, x.shape[0]] for r in ranks}
    found = {}
    while len(found) < len(state):
        targets = {}
        for r, (prefix, bits, _, count) in state.items():
            if r in found:
                continue
            gather = count <= _GATHER_AT or bits == 64
            targets[(prefix, bits)] = None if gather else min(_DIGIT_BITS, 64 - bits)
        order = [(p, b, dg) for (p, b), dg in targets.items()]
        parts = dask.compute(*[dask.delayed(_block_histograms)(b, order) for b in blocks])
        for i, (prefix, bits, digit) in enumerate(order):
            if digit is None:
                keys = np.sort(np.concatenate([p[i] for p in parts]))
            else:
                counts = np.sum([p[i] for p in parts], axis=0)
                cum = np.cumsum(counts)
            for r, st in state.items():
                if r in found or (st[0], st[1]) != (prefix, bits):
                    continue
                if digit is None:
                    found[r] = _value_of(int(keys[st[2]]))
                    continue
                b = int(np.searchsorted(cum, st[2], side="right"))
                below = int(cum[b - 1]) if b else 0
                state[r] = [(prefix << digit) | b, bits + digit, st[2] - below, int(counts[b])]
    return [found[r] for r in ranks]


def percentile(x, q: float) -> float:
    """``np.percentile(x.compute(), q)`` (method "linear"), bit for bit, without collecting x.

    An exact distributed selection: a few passes of per-block histograms over the bits of the
    values narrow each needed order statistic down to a few thousand candidates, which are
    gathered; the two neighbours are then interpolated with NumPy's own formula.
    """
    if not isinstance(x, da.Array) or x.ndim != 1:
        raise InvalidInputError("x must be a 1-dimensional dask array")
    q = float(q)
    if not (0.0 <= q <= 100.0):
        raise InvalidInputError(f"percentile q must be in [0, 100], got {q!r}")
    if any(math.isnan(c) for c in x.chunks[0]):
        x = x.compute_chunk_sizes()
    n = int(x.shape[0])
    if n == 0:
        raise InvalidInputError("percentile of 0 values")
    # NumPy's steps for method="linear" (as cpp/scores.cpp percentile): virtual index,
    # neighbours, gamma, then np.lib._function_base_impl._lerp, operation for operation.
    vi = (n - 1) * (q / 100.0)
    if vi >= n - 1:
        prev = nxt = n - 1
        gamma = vi - -1.0
    else:
        prev = int(math.floor(vi))
        nxt = prev + 1
        gamma = vi - prev
    a, b = _select(x, sorted({prev, nxt})) if prev != nxt else _select(x, [prev]) * 2
    diff = b - a
    r = a + diff * gamma
    if gamma >= 0.5:
        r = b - diff * (1.0 - gamma)
    return r


# -- distributed isolation-forest fit ----------------------------------------------------------
def _take_rows(block, local_rows):
    X = block.to_numpy() if hasattr(block, "to_numpy") else np.asarray(block)
    return X[local_rows]


def _grow(sample, x_rows, rows, features, rng_state):
    from pynomaly import _core

    return _core.forest_grow(sample, x_rows, rows, features, rng_state)


def fit(model, X, *, columns=None, n_jobs=None):
    """Fit an unfitted (or refit a fitted) :class:`~pynomaly.IsolationForest` on a dask collection.

    The data stay where they are. Each tree's rows are drawn as the in-process fit draws them
    (they depend only on the row count), the ψ rows per tree are gathered from the partitions
    holding them, trees are grown in parallel tasks and merged: the forest equals
    ``model.fit(X.compute())``'s bit for bit (same ``random_state``, same row order). The
    training scores are then computed on the cluster and kept there (``persist``), and
    ``threshold_`` is their exact ``1 - contamination`` percentile (see :func:`percentile`).

    ``decision_scores_`` and ``labels_`` are dask arrays (call ``.compute()`` for NumPy; methods
    that need the training scores, such as ``to_bytes`` or ``predict_proba``, collect them).
    A dataframe's columns (``columns``, default all) are remembered as ``feature_names_in_``.

    Returns the fitted model.
    """
    if not isinstance(model, IsolationForest):
        raise InvalidInputError(
            f"pynomaly.dask.fit grows isolation forests only, got {type(model).__name__}; fit other "
            "detectors in one process and score with pynomaly.dask.score"
        )
    check_contamination(model.contamination)
    names = None
    if isinstance(X, dd.DataFrame):
        names = list(X.columns) if columns is None else _columns_for(None, X, columns)
        X = X[names].to_dask_array(lengths=True)
    elif isinstance(X, da.Array):
        if columns is not None:
            raise InvalidInputError("columns= selects dataframe columns; X is a dask array")
        if X.ndim != 2:
            raise InvalidInputError(f"X must be 2-dimensional (rows x features), got {X.ndim} dimension(s)")
        if X.numblocks[1] > 1:
            X = X.rechunk({1: -1})
        if any(math.isnan(c) for c in X.chunks[0]):
            X = X.compute_chunk_sizes()
    else:
        raise InvalidInputError(f"X must be a dask array or a dask dataframe, got {type(X).__name__}")
    lengths = np.asarray(X.chunks[0], dtype=np.int64)
    n, d = int(lengths.sum()), int(X.shape[1])
    if d == 0:
        raise InvalidInputError("X has 0 features; at least one is required")
    plan = model._plan_trees(n, d)

    # Gather each sampled row once, from the partition that holds it.
    wanted, x_rows = np.unique(plan["rows"], return_inverse=True)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    part_of = np.searchsorted(starts, wanted, side="right") - 1
    blocks = X.to_delayed().ravel()
    tasks = [
        dask.delayed(_take_rows)(blocks[p], wanted[part_of == p] - starts[p]) for p in np.unique(part_of)
    ]
    sample = as_matrix(np.concatenate(dask.compute(*tasks)))

    # Grow the trees in a few parallel tasks over the (small) gathered sample, shipped once.
    x_rows = x_rows.reshape(plan["rows"].shape)
    T = x_rows.shape[0]
    client = _client()
    n_tasks = min(T, 2 * max(1, sum(client.nthreads().values()) if client is not None else 2))
    bounds = np.linspace(0, T, n_tasks + 1).astype(int)
    sample_ref = dask.delayed(sample, pure=True)
    grown = [
        dask.delayed(_grow)(sample_ref, x_rows[a:b], plan["rows"][a:b], plan["features"][a:b], plan["rng_state"][a:b])
        for a, b in zip(bounds[:-1], bounds[1:])
        if b > a
    ]
    try:
        parts = dask.compute(*grown)
    except InvalidInputError:
        # Several tasks may have failed; growing every tree here reports the value Forest.train
        # would (the lowest row among each tree's first bad value) with its global row.
        _grow(sample, x_rows, plan["rows"], plan["features"], plan["rng_state"])
        raise
    model._adopt_trees(parts, n, d)
    if names is not None:
        model.feature_names_in_ = np.asarray(names, dtype=object)

    # Scored by the bare forest: no training scores or threshold yet (and none of a previous fit).
    model.decision_scores_ = None
    model.labels_ = None
    object.__setattr__(model, "threshold_", None)
    scores = score(model, X, n_jobs=n_jobs).persist()
    if model.threshold is None:
        threshold = percentile(scores, 100.0 * (1.0 - check_contamination(model.contamination)))
    else:
        threshold = float(model.threshold)
    model.decision_scores_ = scores
    model.threshold_ = threshold
    model.labels_ = flagged(scores, threshold).astype(np.int64)
    return model
