"""Isolation forest (Liu, Ting and Zhou 2008) over the native core.

Scores are those of the paper and of scikit-learn: ``2 ** (-E[h(x)] / c(psi))`` in (0, 1],
higher for more anomalous rows, i.e. ``-sklearn.ensemble.IsolationForest.score_samples``.
"""

from __future__ import annotations

import numbers
import secrets
import warnings

import numpy as np

from pynomaly import _core
from pynomaly._errors import InvalidInputError, NotFittedError
from pynomaly.estimators import explain as _explain
from pynomaly.estimators._validation import _FLOATS, resolve_n_jobs
from pynomaly.estimators.base import BaseDetector, PickleAsBytes, check_memory

__all__ = ["IsolationForest"]


class IsolationForest(PickleAsBytes, BaseDetector):
    """Isolation forest anomaly detector with PyOD's conventions.

    Parameters
    ----------
    n_estimators : int, default 100
        Number of trees.
    max_samples : "auto", int or float, default "auto"
        Rows drawn (without replacement) to grow each tree: ``min(256, n)`` for "auto", an
        absolute count (capped at n, with a warning), or a fraction of n in (0, 1].
    max_features : int or float, default 1.0
        Features drawn (without replacement) for each tree: a count or a fraction of d.
    contamination : float or "auto", default 0.1
        Expected share of anomalies in (0, 0.5]; sets ``threshold_``. "auto" is scikit-learn's
        fixed threshold: a score above 0.5 is an anomaly (``offset_ == -0.5`` there).
    random_state : None, int, numpy RandomState or Generator
        Seed for reproducible forests. The same seed gives the same forest for any n_jobs.
    n_jobs : None or int
        Threads for training and scoring: None means 1, -1 every usable CPU; requests above
        the usable CPUs are capped. Calls whose rows fit in one block (up to 1024 rows,
        fewer for wide data) run on the calling thread.

    Attributes
    ----------
    decision_scores_ : ndarray of shape (n_samples,)
        Scores of the training rows (higher = more anomalous).
    threshold_ : float
        Scores above it are labelled anomalies (``1 - contamination`` percentile of the
        training scores).
    labels_ : ndarray of int, shape (n_samples,)
        0/1 labels of the training rows.
    max_samples_ : int
        The rows per tree actually used (psi).
    n_features_in_ : int
    feature_names_in_ : ndarray of str, only when fitted on a DataFrame with string column names
    feature_importances_ : ndarray of shape (n_features,)
        Share of each feature among the splits of a tree, averaged over the trees (sums to 1).
    """

    _fitted_marker = "_forest"
    _auto_threshold = 0.5
    _explain_methods = {
        "tree_shap": ("log2_score", "path_length"),
        "path": ("log2_score", "path_length"),
        "permutation": ("score",),
    }
    _keeps_background = False  # exact methods; the v1 format keeps no rows

    def __init__(
        self,
        n_estimators: int = 100,
        max_samples="auto",
        max_features=1.0,
        contamination: float = 0.1,
        random_state=None,
        n_jobs=None,
    ):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.max_features = max_features
        self.contamination = contamination
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _fit_plan(self, n: int, d: int):
        """Checked ``(n_estimators, psi, max_features, n_jobs)`` for a fit on n x d data."""
        self._rate()
        n_estimators = self.n_estimators
        if isinstance(n_estimators, bool) or not isinstance(n_estimators, numbers.Integral) or n_estimators < 1:
            raise InvalidInputError(f"n_estimators must be a positive integer, got {n_estimators!r}")
        if n < 2:
            raise InvalidInputError(f"X has {n} row (n_samples={n}); an isolation forest needs at least 2 rows to train")
        psi = self._resolve_max_samples(n)
        k = self._resolve_max_features(d)
        n_jobs = resolve_n_jobs(self.n_jobs)
        # Each tree holds at most 2 psi - 1 nodes (feature, threshold, child, leaf value: 20
        # bytes) and, for scoring, a complete layout of 2^(depth + 1) slots (32 bytes each);
        # the training rows are scored too (8 bytes each). Refused before any allocation:
        # n_estimators=10**8 otherwise grows until the machine runs out.
        slots = 2 << max(1, int(psi - 1).bit_length())
        need = int(n_estimators) * (40 * psi + 32 * slots) + 8 * n
        check_memory(need, f"an isolation forest of {n_estimators} trees with max_samples={psi}",
                     "lower n_estimators or max_samples")
        return int(n_estimators), psi, k, n_jobs

    def check_fit(self, n_rows: int, n_features: int) -> None:
        """See :meth:`BaseDetector.check_fit`: parameters, rows, and the forest's memory."""
        self._fit_plan(int(n_rows), int(n_features))

    def fit(self, X, y=None, *, progress=None) -> "IsolationForest":
        """Grow the forest on X and score its rows; ``y`` is ignored (unsupervised).

        ``progress(fraction)``, when given, is called with the share of trees grown (from the
        calling thread, at most every 50 ms); an exception it raises stops the fit.
        """
        if progress is not None and not callable(progress):
            raise InvalidInputError(f"progress must be a callable taking a fraction, got {type(progress).__name__}")
        X = self._fit_input(X)
        n, d = X.shape
        n_estimators, psi, k, n_jobs = self._fit_plan(n, d)
        self._forest = _core.Forest.train(X, n_estimators, psi, k, _seed_from(self.random_state), n_jobs, progress)
        self.max_samples_ = psi
        self.n_features_in_ = d
        self.decision_scores_ = self._forest.score(X, n_jobs)
        self._process_decision_scores()
        return self

    # -- the two halves of a fit that pynomaly.dask runs apart --------------------------------
    def _plan_trees(self, n: int, d: int) -> dict:
        """What ``fit`` on n x d data draws before it reads any row: each tree's features
        ("features", T x k), rows in draw order ("rows", T x psi) and random state."""
        n_estimators, psi, k, _ = self._fit_plan(n, d)
        return _core.forest_plan(n, d, n_estimators, psi, k, _seed_from(self.random_state))

    def _adopt_trees(self, parts, n: int, d: int) -> None:
        """Become the forest made of the trees in ``parts`` (``_core.forest_grow`` results, in
        tree order), as ``fit`` on n x d data would, before scoring the training rows."""
        offsets = [np.zeros(1, dtype=np.int32)]
        base = 0
        for p in parts:
            offsets.append(p["tree_offset"][1:] + base)
            base += int(p["tree_offset"][-1])
        joined = {k: np.concatenate([p[k] for p in parts]) for k in ("feature", "threshold", "left", "leaf_value")}
        psi = self._resolve_max_samples(n)
        self._forest = _core.Forest(d, psi, np.concatenate(offsets).astype(np.int32), joined["feature"],
                                    joined["threshold"], joined["left"], joined["leaf_value"])
        self.max_samples_ = psi
        self.n_features_in_ = d

    def decision_function(self, X) -> np.ndarray:
        """Anomaly score of each row of X in (0, 1]; higher is more anomalous."""
        try:
            forest = self._forest
        except AttributeError:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first") from None
        # Fast path: float arrays of any layout go straight to the core, which checks shape
        # and finiteness itself; a single-row call costs microseconds.
        if type(X) is not np.ndarray or X.dtype not in _FLOATS or X.ndim != 2:
            X = self._score_input(X)
        else:
            self._check_n_features(X.shape[1])
        return forest.score(X, 1 if self.n_jobs is None else resolve_n_jobs(self.n_jobs))

    @property
    def feature_importances_(self) -> np.ndarray:
        """Importance of each feature: its share of a tree's splits, averaged over the trees
        that split at all, then normalised to sum to 1 (zeros if no tree splits).

        PyOD's ``IForest.feature_importances_`` averages the trees' impurity decreases instead,
        measured on the random targets scikit-learn grows isolation trees with; a random split
        of i.i.d. targets decreases the node-weighted impurity by one variance in expectation,
        whatever the node, so each split counts once here: the expectation of PyOD's values
        (which the trees alone, without those targets, cannot reproduce exactly).
        """
        self._check_fitted()
        a = self._forest.arrays()
        offsets = np.asarray(a["tree_offset"], dtype=np.int64)
        feature = np.asarray(a["feature"])
        tree = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        split = feature >= 0
        per_tree = np.bincount(tree[split], minlength=len(offsets) - 1)
        if not per_tree.any():
            return np.zeros(self.n_features_in_)
        share = np.bincount(feature[split], weights=1.0 / per_tree[tree[split]], minlength=self.n_features_in_)
        return share / share.sum()

    # -- explanations ------------------------------------------------------------------------
    def explain(self, X, method=None, output=None, *, background=None):
        """Per-feature attributions of the rows' scores (see :meth:`BaseDetector.explain`).

        method="tree_shap" (default): exact path-dependent TreeSHAP (Lundberg et al. 2020), the
        values ``shap.TreeExplainer`` gives for the same forest: with ``output="path_length"``
        equal to ``shap.TreeExplainer(sk).shap_values(X.astype(np.float32))`` for a forest from
        :meth:`from_sklearn`, values plus base equal to E[h(x)], the mean path length. The node
        sample counts it needs are recovered from the leaf values (depth + c(n), c strictly
        increasing), so forests stored before this method existed are explained too. Native, per
        leaf: O(leaves x distinct features on the leaf's path) per tree and row with tables
        precomputed once per forest (cached on the detector, at most 64 MiB; deeper leaves are
        computed per row, never with more work than shap's O(leaves x depth^2)).

        method="path": DIFFI-style path attribution (after DIFFI, Carletti et al. 2023, which
        weighs splits by the imbalance they induce): in each tree, the change of the expected
        path length from the root to the leaf x reaches, V(leaf) - V(root), is shared among the
        splits on x's path in proportion to 1 - n(child) / n(node), how much of the node's
        training sample the split separates from x, each share credited to the feature tested
        there. Additive like TreeSHAP, with the same base (values plus base equal E[h(x)]); the
        shares are precomputed per leaf, so a row costs a walk per tree, as scoring, plus one
        add per distinct feature on the path.

        How it relates to TreeSHAP: both decompose the same E[h(x)] - E[h], tree by tree. For a
        tree, TreeSHAP weighs every leaf by how likely each coalition of features is to reach
        it, so it credits features tested anywhere in the tree, with negative values for those
        whose tests x passes (they pull toward the ordinary); path looks at x's own path only:
        features not tested there get nothing from that tree, and its shares all have the sign
        of the tree's change. They agree on the top feature where one feature's splits isolate
        x; they disagree where features interact (x is isolated by several features together,
        or a feature is unusual but not tested on x's paths): path ranks by the sample each
        feature's splits cut away, TreeSHAP by marginal contributions over coalitions. path is
        not consistent in Lundberg's sense; use it for serving at line rate, TreeSHAP to audit.
        (It replaced the Saabas decomposition, each split credited with the change of V it
        caused, which was less faithful on satellite and landsat: bench/RESULTS.md, issue 22.)

        output="log2_score" (default): ``log2(decision_function(X))`` = -E[h(x)] / c(psi), so
        values are the path-length values times -1 / c(psi): still exact, positive toward
        anomalous. output="path_length": E[h(x)] itself (negative toward anomalous).

        method="permutation" (model-agnostic, against ``background``) is offered for comparison.
        """
        return super().explain(X, method, output, background=background)

    def _explainer(self) -> "_core.ForestExplainer":
        return self._explainer_and_scale()[0]

    def _explainer_and_scale(self) -> tuple:
        """The forest's native explainer and the factor from path-length values to log2_score
        ones (-1 / c(psi)), built once per forest and cached: a served row pays neither."""
        cached = self.__dict__.get("_explainer_cache")
        if cached is None or cached[0] is not self._forest:
            forest = self._forest
            c = _core.average_path_length(float(forest.psi))
            # c(psi) = 0 (psi <= 1): every row scores 1 (log2 0), so there is nothing to attribute
            cached = (forest, _core.ForestExplainer(forest), -1.0 / c if c > 0 else 0.0)
            object.__setattr__(self, "_explainer_cache", cached)
        return cached[1], cached[2]

    def _explain(self, X, method, output, background):
        if method == "permutation":
            return super()._explain(X, method, output, background)
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        if not np.isfinite(X32).all():
            r, c = np.argwhere(~np.isfinite(X32))[0]
            raise InvalidInputError(f"X has {X[r, c]!r} at row {r}, column {c}, which is not a finite float32; "
                                    "impute or clip it first")
        return self._native_attributions(X32, method, output)

    def _native_attributions(self, X, method: str, output: str) -> tuple:
        """``(values, base_values)`` of rows X by a native method ("tree_shap" or "path"); X is
        converted to float32 by the binding as ``_explain`` converts it, finite values checked there."""
        explainer, scale = self._explainer_and_scale()
        n_jobs = 1 if self.n_jobs is None else resolve_n_jobs(self.n_jobs)
        values = (explainer.tree_shap if method == "tree_shap" else explainer.path)(X, n_jobs)
        if output != "log2_score":
            return values, np.full(X.shape[0], explainer.expected_value)
        values *= scale
        return values, np.full(X.shape[0], explainer.expected_value * scale)

    def _explain_checked_rows(self, X, method):
        if method is None:
            method = next(iter(self._explain_methods))
        if method not in ("tree_shap", "path"):
            return super()._explain_checked_rows(X, method)
        values, base = self._native_attributions(X, method, "log2_score")
        return _explain.Explanation(values=values, base_values=base,
                                    feature_names=_explain.feature_names_of(self, X.shape[1]), output="log2_score",
                                    method=method, data=np.asarray(X, dtype=np.float64))

    # -- parameters ------------------------------------------------------------------------
    def _resolve_max_samples(self, n: int) -> int:
        m = self.max_samples
        if isinstance(m, str):
            if m != "auto":
                raise InvalidInputError(f"max_samples must be 'auto', an int or a float in (0, 1], got {m!r}")
            psi = min(256, n)
        elif isinstance(m, numbers.Integral) and not isinstance(m, bool):
            if m < 1:
                raise InvalidInputError(f"max_samples must be at least 1, got {m!r}")
            if m > n:
                warnings.warn(f"max_samples ({m}) is greater than the number of rows ({n}); using {n}", UserWarning)
            psi = min(int(m), n)
        elif isinstance(m, numbers.Real) and not isinstance(m, bool):
            if not (0.0 < m <= 1.0):
                raise InvalidInputError(f"a float max_samples must be in (0, 1], got {m!r}")
            psi = int(m * n)
        else:
            raise InvalidInputError(f"max_samples must be 'auto', an int or a float in (0, 1], got {m!r}")
        return max(psi, 2)

    def _resolve_max_features(self, d: int) -> int:
        m = self.max_features
        if isinstance(m, numbers.Integral) and not isinstance(m, bool):
            if not (1 <= m <= d):
                raise InvalidInputError(f"max_features must be between 1 and {d} (the number of features), got {m!r}")
            return int(m)
        if isinstance(m, numbers.Real) and not isinstance(m, bool):
            if not (0.0 < m <= 1.0):
                raise InvalidInputError(f"a float max_features must be in (0, 1], got {m!r}")
            return max(1, int(m * d))
        raise InvalidInputError(f"max_features must be an int or a float in (0, 1], got {m!r}")

    # -- importing models from scikit-learn and PyOD -----------------------------------------
    @classmethod
    def from_sklearn(cls, model) -> "IsolationForest":
        """Convert a fitted ``sklearn.ensemble.IsolationForest`` into a native forest.

        ``decision_function(X)`` of the result equals ``-model.score_samples(X)`` (to rounding
        of the sum over trees). ``threshold_`` is ``-model.offset_`` so ``predict`` agrees with
        scikit-learn's; training scores are not known, so ``decision_scores_`` is None.
        """
        if not hasattr(model, "estimators_") or not hasattr(model, "estimators_features_"):
            raise NotFittedError("from_sklearn needs a fitted sklearn.ensemble.IsolationForest")
        forest = _forest_from_sklearn(model)
        self = cls(
            n_estimators=len(model.estimators_),
            max_samples=model.max_samples,
            max_features=model.max_features,
            contamination=model.contamination,
            random_state=model.random_state,
            n_jobs=model.n_jobs,
        )
        self._forest = forest
        self.max_samples_ = int(model.max_samples_)
        self.n_features_in_ = int(model.n_features_in_)
        names = getattr(model, "feature_names_in_", None)
        if names is not None:
            self.feature_names_in_ = np.asarray(names, dtype=object)
        self.decision_scores_ = None
        self.labels_ = None
        self.threshold_ = float(-model.offset_)
        return self

    @classmethod
    def from_pyod(cls, model) -> "IsolationForest":
        """Convert a fitted ``pyod.models.iforest.IForest`` into a native forest.

        Scores are on the paper's scale. PyOD's ``decision_function`` is
        ``-(score_samples - offset_)`` of the wrapped scikit-learn forest, so ours equals
        ``model.decision_function(X) - model.detector_.offset_``.
        ``decision_scores_`` and ``threshold_`` are PyOD's, shifted the same way, so
        ``predict`` and ``labels_`` agree with PyOD's.
        """
        inner = getattr(model, "detector_", None)
        if inner is None:
            raise NotFittedError("from_pyod needs a fitted pyod.models.iforest.IForest")
        self = cls.from_sklearn(inner)
        shift = -float(inner.offset_)
        # Training scores first: assigning contamination to a fitted detector re-derives its
        # threshold from them (then PyOD's own threshold and labels are kept).
        self.decision_scores_ = np.asarray(model.decision_scores_, dtype=np.float64) + shift
        self.contamination = model.contamination
        self.threshold_ = float(model.threshold_) + shift
        self.labels_ = np.asarray(model.labels_, dtype=np.int64)
        return self

    def memory_bytes(self) -> int:
        """Bytes held: the native forest (nodes and compiled scoring layouts) and the arrays."""
        forest = self.__dict__.get("_forest")
        return super().memory_bytes() + (forest.memory_bytes if forest is not None else 0)

    def serving_handle(self, name: str, version: int) -> "_core.ServedForest":
        """The native object a server scores this fitted forest with (the daemon's native
        path): the forest, ``threshold_``, and the name and version it is served under."""
        return _core.ServedForest(self._forest, int(self.n_features_in_), float(self._decision_threshold()), str(name),
                                  int(version))

    # -- serialization -------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Serialize the fitted detector (format: see ``pynomaly._format``); no pickle inside."""
        from pynomaly.estimators._format import dump_forest

        if not hasattr(self, "_forest"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")
        return dump_forest(self)

    @classmethod
    def from_bytes(cls, data) -> "IsolationForest":
        """Load a detector written by ``to_bytes``; corrupted or truncated data raise ModelFormatError."""
        from pynomaly.estimators._format import load_forest

        return load_forest(cls, data)


def _seed_from(random_state) -> int:
    if random_state is None:
        return secrets.randbits(64)
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise InvalidInputError(f"random_state must be a non-negative integer, got {random_state!r}")
        return int(random_state) & 0xFFFFFFFFFFFFFFFF
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**63 - 1, dtype=np.int64))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63 - 1))
    raise InvalidInputError(f"random_state must be None, an int, a RandomState or a Generator, got {random_state!r}")


def _round_down_to_float32(t: np.ndarray) -> np.ndarray:
    """Largest float32 <= t: for any float32 x, ``x <= t`` iff ``x <= result``."""
    f = t.astype(np.float32)
    over = f.astype(np.float64) > t
    f[over] = np.nextafter(f[over], np.float32(-np.inf))
    return f


def _forest_from_sklearn(model) -> "_core.Forest":
    """Renumber each scikit-learn tree breadth-first so that children are adjacent."""
    offsets = [0]
    feats, thrs, lefts, leaves = [], [], [], []
    dpl = getattr(model, "_decision_path_lengths", None)
    apl = getattr(model, "_average_path_length_per_tree", None)
    for i, (est, features) in enumerate(zip(model.estimators_, model.estimators_features_)):
        tree = est.tree_
        cl, cr = tree.children_left, tree.children_right
        features = np.asarray(features)
        order = [0]
        depth = [0]
        new_left = []
        for pos in range(tree.node_count):
            if pos >= len(order):
                break
            node = order[pos]
            if cl[node] != -1:
                new_left.append(len(order))
                order.extend((cl[node], cr[node]))
                depth.extend((depth[pos] + 1, depth[pos] + 1))
            else:
                new_left.append(0)
        order = np.asarray(order)
        is_leaf = cl[order] == -1
        f = np.where(is_leaf, -1, features[np.where(is_leaf, 0, tree.feature[order])]).astype(np.int32)
        t = np.where(is_leaf, 0.0, tree.threshold[order])
        if dpl is not None and apl is not None:
            # scikit-learn adds (path length in nodes + c(leaf size)) - 1 per tree: same order here.
            value = dpl[i][order] + apl[i][order] - 1.0
        else:
            value = np.asarray(depth, dtype=np.float64) + np.array(
                [_core.average_path_length(float(s)) for s in tree.n_node_samples[order]]
            )
        feats.append(f)
        thrs.append(_round_down_to_float32(t))
        lefts.append(np.asarray(new_left, dtype=np.int32))
        leaves.append(np.where(is_leaf, value, 0.0))
        offsets.append(offsets[-1] + len(order))
    return _core.Forest(
        int(model.n_features_in_),
        int(model.max_samples_),
        np.asarray(offsets, dtype=np.int32),
        np.concatenate(feats),
        np.concatenate(thrs),
        np.concatenate(lefts),
        np.concatenate(leaves),
    )
