"""Streaming detectors: score each record and learn from it, in order, in bounded memory.

``HalfSpaceTrees`` (River's semantics exactly; ``from_river`` takes over a River model) and
``OnlineIsolationForest`` (Leveni et al., ICML 2024) run in the native core. Both drop into
River (``learn_one(x: dict)``, ``score_one(x) -> float``, usable as a ``river.compose.Pipeline``
step) and take arrays for throughput: ``score_many``, ``learn_many`` and ``score_learn_many``
(prequential: each row is scored, then learned, in order). Higher scores are more anomalous.

The feature set is fixed by ``features=`` or by the first record (a dict's keys, sorted as
River sorts them; an array's column indices). A record with a missing or extra key, a value
that is not a finite number, or an array of the wrong width raises InvalidInputError and
leaves the detector as it was. The same seed and the same stream give the same scores, bit
for bit, however the stream is cut into batches; ``to_bytes``/``from_bytes`` snapshots (see
:mod:`pynomaly.estimators._stream_format`) resume exactly where the detector stopped.

They also keep the batch detectors' contract, so the registry trains and stores them like any
other: ``fit(X)`` learns the rows in order and sets ``threshold_`` (the ``1 - contamination``
percentile of the fitted detector's scores of X); ``decision_function(X)`` scores without
learning; ``predict(X)`` is ``score > threshold_`` as 0/1.
"""

from __future__ import annotations

import random
import secrets
from numbers import Real

import numpy as np

from pynomaly._errors import InvalidInputError, ModelFormatError, NotFittedError
from pynomaly.domain import flagged
from pynomaly.estimators import _stream_format
from pynomaly.estimators._validation import check_contamination

__all__ = ["HalfSpaceTrees", "OnlineIsolationForest"]


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_features(features) -> tuple | None:
    if features is None:
        return None
    features = tuple(features)
    if not features or any(isinstance(f, bool) or not isinstance(f, (str, int)) for f in features):
        raise InvalidInputError("features must be a non-empty sequence of str or int names")
    if len(set(features)) != len(features):
        raise InvalidInputError("features must not repeat a name")
    return features


def _number(name, value) -> float:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Real, np.number)) or isinstance(value, complex):
        raise InvalidInputError(f"feature {name!r} is a {type(value).__name__}, not a number")
    v = float(value)
    if not np.isfinite(v):
        raise InvalidInputError(f"feature {name!r} is {v}; streaming detectors accept finite numbers only")
    return v


class _StreamDetector:
    """What both streaming detectors share: features, input checks, the River-facing and the
    array-facing methods, snapshots. A subclass makes its native state in ``_start``."""

    _kind = ""  # the snapshot header's class name

    @property
    def _supervised(self) -> bool:  # river.compose.Pipeline asks every step
        return False

    def _init_stream(self, features, contamination) -> None:
        self.contamination = check_contamination(contamination)
        self.threshold_ = None  # set by fit (or a snapshot of a fitted detector)
        self._features = _check_features(features)
        self._native = None
        if self._features is not None:
            self._native = self._start(len(self._features))

    # ---- what a subclass provides -----------------------------------------------------------
    def _start(self, n_features: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def _params(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- features and records ---------------------------------------------------------------
    @property
    def features_(self) -> tuple | None:
        """The feature names in column order, once fixed (None before the first record)."""
        return self._features

    @property
    def n_features_in_(self) -> int | None:
        return None if self._features is None else len(self._features)

    def _fix_features(self, features: tuple) -> None:
        self._features = features
        self._native = self._start(len(features))

    def _explain(self, x) -> None:
        """Raise the most precise error for a record the native reader refused."""
        if not isinstance(x, dict):
            raise InvalidInputError(f"a record must be a dict of feature name -> number, got {type(x).__name__}")
        missing = [f for f in self._features if f not in x]
        extra = [k for k in x if k not in set(self._features)]
        if missing or extra:
            raise InvalidInputError(f"a record must have exactly the features {list(self._features)}; "
                                    f"missing {missing}, extra {extra}")
        for f in self._features:
            _number(f, x[f])

    def _first_record(self, x) -> None:
        """Fix the features from a first dict (sorted, as River does), after checking it whole."""
        if not isinstance(x, dict) or not x:
            raise InvalidInputError("a record must be a non-empty dict of feature name -> number")
        try:
            features = _check_features(sorted(x))
        except TypeError:
            raise InvalidInputError("a record's feature names must be all str or all int (they are sorted)") from None
        for f in features:
            _number(f, x[f])
        self._fix_features(features)

    def _rows(self, X) -> np.ndarray:
        """A C-ordered float64 (rows x features) copy or view of X, with the width checked.
        A first array fixes the features (its column indices); ``_batch`` undoes that if the
        native check then refuses the array."""
        A = np.asarray(X)
        if A.dtype.kind not in "biuf":
            raise InvalidInputError(f"X must hold numbers, got dtype {A.dtype}")
        if A.ndim == 1 and self._features is not None and A.size == len(self._features):
            A = A.reshape(1, -1)
        if A.ndim != 2:
            raise InvalidInputError(f"X must be 2-dimensional (records x features), got {A.ndim} dimension(s)")
        if self._features is None:
            if A.shape[1] < 1:
                raise InvalidInputError("X must have at least one column")
            self._fix_features(tuple(range(A.shape[1])))
        elif A.shape[1] != len(self._features):
            raise InvalidInputError(f"X must have {len(self._features)} columns (the detector's features), "
                                    f"got {A.shape[1]}")
        return np.ascontiguousarray(A, dtype=np.float64)

    def _batch(self, method: str, X, *args):
        """Run a native array method; a refused first array leaves the detector unstarted."""
        fresh = self._native is None
        try:
            A = self._rows(X)
            return getattr(self._native, method)(A, *args)
        except InvalidInputError:
            if fresh:
                self._features, self._native = None, None
            raise

    # ---- River's interface ------------------------------------------------------------------
    def learn_one(self, x: dict) -> None:
        """Learn one record (a dict of feature name -> number)."""
        if self._native is None:
            self._first_record(x)
        try:
            self._native.learn_one(x, self._features)
        except InvalidInputError:
            self._explain(x)
            raise

    def score_one(self, x: dict) -> float:
        """The record's anomaly score (higher is more anomalous); learns nothing."""
        if self._native is None:
            if isinstance(x, dict) and x:
                return 0.0  # as River: nothing learned yet, nothing is anomalous
            raise InvalidInputError("a record must be a non-empty dict of feature name -> number")
        try:
            return self._native.score_one(x, self._features)
        except InvalidInputError:
            self._explain(x)
            raise

    # ---- arrays -------------------------------------------------------------------------------
    def score_many(self, X, n_jobs: int = 1) -> np.ndarray:
        """Scores of the rows of X (records x features) without learning them; n_jobs threads."""
        return self._batch("score_many", X, n_jobs)

    def learn_many(self, X) -> None:
        """Learn the rows of X in order (as learn_one on each)."""
        self._batch("learn_many", X)

    def score_learn_many(self, X) -> np.ndarray:
        """Prequential: score each row, then learn it, in order; equal to the score_one/learn_one
        loop. Returns the scores."""
        return self._batch("score_learn_many", X)

    # ---- the batch detectors' contract (registry, training, stored versions) ------------------
    def check_fit(self, n_rows: int, n_features: int) -> None:
        """Refuse, before any work, a fit this detector cannot do."""
        if n_rows < 1 or n_features < 1:
            raise InvalidInputError(f"fit needs at least one row and one feature, got {n_rows} x {n_features}")
        if self._features is not None and n_features != len(self._features):
            raise InvalidInputError(f"X must have {len(self._features)} columns (the detector's features)")

    def fit(self, X, y=None):
        """Learn the rows of X in order, then set ``threshold_`` from the detector's scores of
        X at ``contamination``. Returns self."""
        from pynomaly.estimators import scores as _scores

        self.learn_many(X)
        self.decision_scores_ = self.score_many(X)
        self.threshold_ = float(_scores.threshold(self.decision_scores_, self.contamination))
        return self

    def decision_function(self, X) -> np.ndarray:
        """Scores of the rows of X, higher is more anomalous; learns nothing (``score_many``)."""
        return self.score_many(X)

    def predict(self, X) -> np.ndarray:
        """1 where the score is above ``threshold_``, else 0 (int64)."""
        if self.threshold_ is None:
            raise NotFittedError(f"this {type(self).__name__} has no threshold_ yet: fit it, or set threshold_")
        return flagged(self.score_many(X), self.threshold_).astype(np.int64)

    # ---- state --------------------------------------------------------------------------------
    def memory_bytes(self) -> int:
        """Bytes of native state: bounded by the trees and the window, not the stream's length."""
        return 0 if self._native is None else int(self._native.memory_bytes)

    def to_bytes(self) -> bytes:
        """A versioned snapshot (no pickle); ``type(self).from_bytes`` resumes from it exactly."""
        state = b"" if self._native is None else self._native.to_bytes()
        extra = {**self._header_extra(), "threshold": self.threshold_}
        return _stream_format.pack(self._kind, self._params(), self._features, extra, state)

    def _header_extra(self) -> dict:
        return {}

    @classmethod
    def from_bytes(cls, blob: bytes):
        """The detector a ``to_bytes`` snapshot holds; ModelFormatError for anything else."""
        params, features, extra, state = _stream_format.unpack(cls._kind, blob)
        try:
            model = cls(**cls._args_from_header(params))
            model._features = _check_features(features)
        except (InvalidInputError, TypeError, ValueError) as e:
            raise ModelFormatError(f"stream snapshot: bad parameters or features ({e})") from None
        model._restore(extra)
        t = extra.get("threshold")
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t)):
            raise ModelFormatError("stream snapshot: the threshold must be a finite number or null")
        model.threshold_ = None if t is None else float(t)
        if state:
            if model._features is None:
                raise ModelFormatError("stream snapshot: a state without features")
            model._native = model._native_class().from_bytes(state)
            if model._native.n_features != len(model._features) or model._native.params != model._native_params():
                raise ModelFormatError("stream snapshot: the state's parameters or width differ from its header's")
        elif model._features is not None:
            model._native = model._start(len(model._features))
        return model

    @classmethod
    def _args_from_header(cls, params: dict) -> dict:
        return params

    def _restore(self, extra: dict) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._args_from_header(self._params()).items())
        return f"{type(self).__name__}({args})"


class HalfSpaceTrees(_StreamDetector):
    """Half-Space Trees (Tan, Ting & Liu 2011) with River's semantics and parameters.

    Parameters
    ----------
    n_trees, height, window_size
        As River's: trees of ``height`` (``2**(height+1) - 1`` nodes each), masses counted over
        windows of ``window_size`` records. Scores are 0 until the first window is complete.
    limits
        ``{feature: (lo, hi)}``; features not named span [0, 1] (scale the data, e.g. with
        ``river.preprocessing.MinMaxScaler`` in a pipeline).
    seed
        Any int Python's ``random.Random`` takes: the same seed grows the same trees as River's
        ``HalfSpaceTrees(seed=seed)`` on the same features. None: a random seed.
    features
        The feature names in column order; by default the first record's (a dict's keys sorted).
    contamination
        The share of anomalies ``fit`` sets ``threshold_`` for (not River's; for stored detectors).
    """

    _kind = "HalfSpaceTrees"

    def __init__(self, n_trees=10, height=8, window_size=250, limits=None, seed=None, features=None,
                 contamination=0.1):
        self.n_trees = _check_int("n_trees", n_trees)
        self.height = _check_int("height", height)
        if self.height > 24:
            raise InvalidInputError(f"height must be at most 24, got {height}")
        self.window_size = _check_int("window_size", window_size)
        if self.window_size >= 2**31:
            raise InvalidInputError(f"window_size must be below 2**31, got {window_size}")
        self.limits = self._check_limits(limits)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InvalidInputError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        # River draws the trees from random.Random(seed) at the first record: keep its state.
        self._mt_state = random.Random(seed).getstate()[1]
        self._init_stream(features, contamination)

    @staticmethod
    def _check_limits(limits) -> dict:
        out = {}
        for name, pair in dict(limits or {}).items():
            try:
                lo, hi = (float(v) for v in pair)
            except (TypeError, ValueError):
                raise InvalidInputError(f"limits[{name!r}] must be a pair (lo, hi) of numbers, got {pair!r}") from None
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise InvalidInputError(f"limits[{name!r}] must be finite with lo < hi, got {pair!r}")
            out[name] = (lo, hi)
        return out

    def _native_class(self):
        from pynomaly import _core

        return _core.HalfSpaceTreesState

    def _start(self, n_features: int):
        lo = np.array([self.limits.get(f, (0.0, 1.0))[0] for f in self._features])
        hi = np.array([self.limits.get(f, (0.0, 1.0))[1] for f in self._features])
        return self._native_class().grow(self.n_trees, self.height, self.window_size, lo, hi,
                                         np.array(self._mt_state, dtype=np.uint32))

    def _params(self) -> dict:
        return {"n_trees": self.n_trees, "height": self.height, "window_size": self.window_size,
                "limits": [[k, lo, hi] for k, (lo, hi) in self.limits.items()], "seed": self.seed,
                "contamination": self.contamination}

    def _header_extra(self) -> dict:
        # Before the first record the trees are not grown: the generator's state grows them.
        return {"mt_state": list(self._mt_state)} if self._native is None else {}

    def _restore(self, extra: dict) -> None:
        state = extra.get("mt_state")
        if state is not None:
            if (not isinstance(state, list) or len(state) != 625
                    or any(type(v) is not int or not 0 <= v < 2**32 for v in state) or state[-1] > 624):
                raise ModelFormatError("stream snapshot: bad generator state")
            self._mt_state = tuple(state)

    @classmethod
    def _args_from_header(cls, params: dict) -> dict:
        limits = params.get("limits")
        if not isinstance(limits, list) or any(not isinstance(e, list) or len(e) != 3 for e in limits):
            raise ModelFormatError("stream snapshot: limits must be a list of [feature, lo, hi]")
        return {**params, "limits": {name: (lo, hi) for name, lo, hi in limits}}

    def _native_params(self) -> dict:
        return {"n_trees": self.n_trees, "height": self.height, "window_size": self.window_size}

    @classmethod
    def from_river(cls, model, features=None) -> "HalfSpaceTrees":
        """Take over a River ``anomaly.HalfSpaceTrees``: its parameters, trees, masses and window
        position (or, before its first record, its random state). From then on, fed the same
        records, both give the same scores while both learn.

        ``features`` defaults to the names River grew its trees over (those in ``model.limits``,
        which River fills from the first record).
        """
        limits = {k: tuple(v) for k, v in model.limits.items()}
        ours = cls(n_trees=model.n_trees, height=model.height, window_size=model.window_size,
                   limits=limits, seed=model.seed)
        ours._mt_state = model.rng.getstate()[1]
        if not model.trees:
            if features is not None:
                ours._fix_features(_check_features(features))
            return ours
        names = _check_features(features if features is not None else sorted(limits))
        index = {f: j for j, f in enumerate(names)}
        internal, nodes = 2**model.height - 1, 2 ** (model.height + 1) - 1
        feature = np.zeros((model.n_trees, internal), np.int32)
        threshold = np.zeros((model.n_trees, internal))
        l_mass = np.zeros((model.n_trees, nodes), np.int32)
        r_mass = np.zeros((model.n_trees, nodes), np.int32)
        for t, root in enumerate(model.trees):
            stack = [(root, 0)]
            while stack:
                node, i = stack.pop()
                l_mass[t, i], r_mass[t, i] = node.l_mass, node.r_mass
                if i < internal:
                    if node.feature not in index:
                        raise InvalidInputError(f"River's trees split on {node.feature!r}, not among features {names}")
                    feature[t, i], threshold[t, i] = index[node.feature], node.threshold
                    stack += [(node.children[0], 2 * i + 1), (node.children[1], 2 * i + 2)]
        ours._features = names
        ours._native = ours._native_class()(model.n_trees, model.height, model.window_size, len(names),
                                            feature.ravel(), threshold.ravel(), l_mass.ravel(), r_mass.ravel(),
                                            model.counter, model._first_window)
        return ours


class OnlineIsolationForest(_StreamDetector):
    """Online Isolation Forest (Leveni et al., ICML 2024): isolation trees that grow as records
    arrive and forget those that leave a sliding window.

    Parameters
    ----------
    n_trees
        Trees in the forest.
    max_leaf_samples
        Records a leaf counts before it may split (times ``2**depth`` with adaptive growth).
    window_size
        Records remembered; older ones are unlearned.
    growth
        ``"adaptive"`` (deeper leaves need more records, as the paper's default) or ``"fixed"``.
    seed
        An int in [0, 2**64) or None (random).
    features
        The feature names in column order; by default the first record's.
    contamination
        The share of anomalies ``fit`` sets ``threshold_`` for (for stored detectors).

    Scores are in (0, 1], higher is more anomalous (iForest's ``2**(-depth / c)``); 0 before
    any record is learned.
    """

    _kind = "OnlineIsolationForest"

    def __init__(self, n_trees=32, max_leaf_samples=32, window_size=2048, growth="adaptive", seed=None,
                 features=None, contamination=0.1):
        self.n_trees = _check_int("n_trees", n_trees)
        self.max_leaf_samples = _check_int("max_leaf_samples", max_leaf_samples)
        self.window_size = _check_int("window_size", window_size)
        if growth not in ("adaptive", "fixed"):
            raise InvalidInputError(f"growth must be 'adaptive' or 'fixed', got {growth!r}")
        self.growth = growth
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
            raise InvalidInputError(f"seed must be an int in [0, 2**64) or None, got {seed!r}")
        self.seed = seed
        self._seed = secrets.randbits(64) if seed is None else seed
        self._init_stream(features, contamination)

    def _native_class(self):
        from pynomaly import _core

        return _core.OnlineIsolationForestState

    def _start(self, n_features: int):
        return self._native_class()(self.n_trees, self.max_leaf_samples, self.window_size,
                                    self.growth == "adaptive", self._seed, n_features)

    def _params(self) -> dict:
        return {"n_trees": self.n_trees, "max_leaf_samples": self.max_leaf_samples,
                "window_size": self.window_size, "growth": self.growth, "seed": self.seed,
                "contamination": self.contamination}

    def _header_extra(self) -> dict:
        return {"seed_used": self._seed}

    def _restore(self, extra: dict) -> None:
        s = extra.get("seed_used")
        if type(s) is not int or not 0 <= s < 2**64:
            raise ModelFormatError("stream snapshot: bad seed")
        self._seed = s

    def _native_params(self) -> dict:
        return {"n_trees": self.n_trees, "max_leaf_samples": self.max_leaf_samples, "window_size": self.window_size,
                "adaptive": self.growth == "adaptive", "seed": self._seed}

    @property
    def window_count(self) -> int:
        """Records in the window now (at most window_size)."""
        return 0 if self._native is None else int(self._native.window_count)
