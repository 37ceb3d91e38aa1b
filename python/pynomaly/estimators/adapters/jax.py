"""A JAX Deep SVDD detector (Ruff et al. 2018): a network maps normal data close to a centre.

``JaxDeepSVDD`` trains a bias-free MLP (or a user's function ``apply_fn(params, X)``) so that
the embeddings of the training rows are close to a fixed centre ``c`` (the mean embedding at
initialisation); the anomaly score of a row is its squared distance to ``c``. Training steps
and scoring are ``jax.jit``-compiled; Adam is written out here so no optimizer library is
needed. Runs on whatever device JAX uses by default (a GPU when jax[cuda] is installed).

Persistence (``artifact_format = "jax"``): an ``.npz`` archive of the parameter arrays (the
leaves of the parameter pytree, in order), the centre, the standardization, the training
scores and a JSON header; read with ``allow_pickle=False``. A user's function is code, not
data: pass ``apply_fn`` and ``init_params`` (for the pytree structure) to ``from_bytes``.
"""

from __future__ import annotations

import io
import json
import numbers
import secrets

import numpy as np

from pynomaly._errors import InvalidInputError, ModelFormatError, NotFittedError
from pynomaly.domain import flagged
from pynomaly.estimators._format import restore_feature_names, with_feature_names
from pynomaly.estimators.adapters import require
from pynomaly.estimators.adapters._neural import NeuralDetector, check_pos_int, standardization

__all__ = ["JaxDeepSVDD"]

_FORMAT = "pynomaly.jax/1"


def _jax():
    jax = require("jax", "jax")
    return jax, jax.numpy


def _mlp_apply(params, x):
    """Bias-free MLP with leaky ReLU (biases would let Deep SVDD collapse to a constant)."""
    import jax

    for w in params[:-1]:
        x = jax.nn.leaky_relu(x @ w, 0.01)
    return x @ params[-1]


class JaxDeepSVDD(NeuralDetector):
    """Deep SVDD anomaly detector in JAX (score = squared distance to the centre).

    Parameters
    ----------
    hidden_neurons : sequence of int, default (64, 32)
        Layer widths of the bias-free MLP; the last is the embedding size. Ignored when
        ``apply_fn`` is given.
    epochs : int, default 50
    batch_size : int, default 128
    learning_rate : float, default 1e-3
    weight_decay : float, default 1e-6
        L2 penalty on the parameters.
    contamination : float, default 0.1
    random_state : int or None
    apply_fn : callable or None
        ``apply_fn(params, X) -> embeddings`` (a JAX-traceable function); needs ``init_params``.
    init_params : pytree or None
        Initial parameters for ``apply_fn`` (a copy is trained).
    standardize : bool, default True
    """

    artifact_format = "jax"

    def __init__(
        self,
        hidden_neurons=(64, 32),
        epochs: int = 50,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-6,
        contamination: float = 0.1,
        random_state=None,
        apply_fn=None,
        init_params=None,
        standardize: bool = True,
    ):
        self._init_training(hidden_neurons, epochs, batch_size, learning_rate, weight_decay, contamination,
                            random_state, standardize)
        self.apply_fn = apply_fn
        self.init_params = init_params

    def _apply(self):
        return self.apply_fn if self.apply_fn is not None else _mlp_apply

    def _initial_params(self, jax, jnp, d: int, seed: int):
        if self.apply_fn is not None:
            if self.init_params is None:
                raise InvalidInputError("apply_fn needs init_params (the initial parameter pytree)")
            return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=jnp.float32), self.init_params)
        widths = [check_pos_int("hidden_neurons[i]", h) for h in (self.hidden_neurons or ())]
        if not widths:
            raise InvalidInputError("hidden_neurons must list at least one layer width, e.g. (64, 32)")
        keys = jax.random.split(jax.random.PRNGKey(seed), len(widths))
        params, prev = [], d
        for k, w in zip(keys, widths):  # He initialisation
            params.append(jax.random.normal(k, (prev, w), jnp.float32) * np.sqrt(2.0 / prev))
            prev = w
        return params

    def fit(self, X, y=None, *, progress=None) -> "JaxDeepSVDD":
        """Train on X (``y`` ignored) and score its rows; ``progress(fraction)`` is called after each epoch."""
        jax, jnp = _jax()
        epochs, batch, lr, wd = self._training_params()
        if self.random_state is not None and (
            isinstance(self.random_state, bool) or not isinstance(self.random_state, numbers.Integral)
        ):
            raise InvalidInputError(f"random_state must be None or an int, got {self.random_state!r}")
        X = self._fit_input(X)
        n, d = X.shape
        self.mean_, self.std_ = standardization(X, self.standardize)
        seed = secrets.randbits(31) if self.random_state is None else int(self.random_state) % (2**31)
        data = jnp.asarray(((X - self.mean_) / self.std_).astype(np.float32))
        apply = self._apply()
        params = self._initial_params(jax, jnp, d, seed)

        # The centre is fixed at the initial mean embedding; coordinates too close to 0 are
        # pushed away from it, as in the paper, so the trivial all-zero map does not fit.
        c = jnp.mean(apply(params, data), axis=0)
        eps = 0.1
        c = jnp.where(jnp.abs(c) < eps, jnp.where(c < 0, -eps, eps), c)

        def loss_fn(p, xb):
            dist = jnp.sum((apply(p, xb) - c) ** 2, axis=1)
            l2 = sum(jnp.sum(w**2) for w in jax.tree_util.tree_leaves(p))
            return jnp.mean(dist) + wd * l2

        b1, b2, adam_eps = 0.9, 0.999, 1e-8

        @jax.jit
        def step(p, m, v, t, xb):
            loss, g = jax.value_and_grad(loss_fn)(p, xb)
            m = jax.tree_util.tree_map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
            v = jax.tree_util.tree_map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, v, g)
            scale = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
            p = jax.tree_util.tree_map(lambda p_, m_, v_: p_ - scale * m_ / (jnp.sqrt(v_) + adam_eps), p, m, v)
            return p, m, v, loss

        m = jax.tree_util.tree_map(jnp.zeros_like, params)
        v = jax.tree_util.tree_map(jnp.zeros_like, params)
        rng = np.random.default_rng(seed)
        t = 0
        for epoch in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch):
                t += 1
                params, m, v, loss = step(params, m, v, float(t), data[order[start : start + batch]])
            if not np.isfinite(float(loss)):
                raise InvalidInputError("training diverged (loss is not finite); lower learning_rate")
            if progress is not None:
                progress((epoch + 1) / epochs)
        self.params_ = params
        self.center_ = c
        self.n_features_in_ = d
        self.decision_scores_ = self._score(data)
        self._process_decision_scores()
        return self

    def _score(self, data) -> np.ndarray:
        jax, jnp = _jax()
        fn = getattr(self, "_score_jit", None)
        if fn is None:
            apply = self._apply()
            fn = self._score_jit = jax.jit(lambda p, c, x: jnp.sum((apply(p, x) - c) ** 2, axis=1))
        out = [np.asarray(fn(self.params_, self.center_, data[s : s + 8192])) for s in range(0, data.shape[0], 8192)]
        return np.concatenate(out).astype(np.float64)

    def decision_function(self, X) -> np.ndarray:
        """Squared distance of each row's embedding to the centre (higher = more anomalous)."""
        if not hasattr(self, "params_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")
        _, jnp = _jax()
        X = self._score_input(X)
        return self._score(jnp.asarray(((X - self.mean_) / self.std_).astype(np.float32)))

    # -- persistence -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Serialize as an ``.npz`` archive (arrays and a JSON header; no pickle)."""
        if not hasattr(self, "params_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")
        jax, _ = _jax()
        params = self.get_params()
        params.pop("apply_fn")
        params.pop("init_params")
        params["hidden_neurons"] = list(params["hidden_neurons"] or ())
        leaves = jax.tree_util.tree_leaves(self.params_)
        header = {
            "format": _FORMAT,
            "params": params,
            "custom_fn": self.apply_fn is not None,
            "n_leaves": len(leaves),
            "n_features": self.n_features_in_,
            "threshold": self.threshold_,
        }
        with_feature_names(header, self)
        arrays = {f"leaf_{i}": np.asarray(a) for i, a in enumerate(leaves)}
        buf = io.BytesIO()
        np.savez(
            buf,
            header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            center=np.asarray(self.center_),
            mean=self.mean_,
            std=self.std_,
            decision_scores=self.decision_scores_,
            # The sample of training rows explain(method="permutation") measures against.
            **({"background": self._background} if "_background" in self.__dict__ else {}),
            **arrays,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data, apply_fn=None, init_params=None) -> "JaxDeepSVDD":
        """Load bytes written by :meth:`to_bytes` (``allow_pickle=False``).

        ``apply_fn`` and ``init_params`` are required when the detector used a user's function.
        """
        jax, jnp = _jax()
        try:
            with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            header = json.loads(arrays["header"].tobytes().decode())
            if header.get("format") != _FORMAT:
                raise ModelFormatError(f"not a pynomaly JAX artifact (format {header.get('format')!r})")
            leaves = [jnp.asarray(arrays[f"leaf_{i}"]) for i in range(int(header["n_leaves"]))]
        except ModelFormatError:
            raise
        except Exception as e:
            raise ModelFormatError(f"cannot read JAX artifact: {e}") from None
        params = header["params"]
        params["hidden_neurons"] = tuple(params["hidden_neurons"])
        if header["custom_fn"]:
            if apply_fn is None or init_params is None:
                raise InvalidInputError(
                    "this detector uses a user-defined function: pass apply_fn=... and init_params=... to load it"
                )
            treedef = jax.tree_util.tree_structure(init_params)
            if treedef.num_leaves != len(leaves):
                raise InvalidInputError(
                    f"init_params has {treedef.num_leaves} arrays, the artifact has {len(leaves)}"
                )
            tree = jax.tree_util.tree_unflatten(treedef, leaves)
        else:
            tree = leaves
        self = cls(**params, apply_fn=apply_fn, init_params=init_params)
        self.params_ = tree
        self.center_ = jnp.asarray(arrays["center"])
        self.n_features_in_ = int(header["n_features"])
        self.mean_, self.std_ = arrays["mean"], arrays["std"]
        self.decision_scores_ = arrays["decision_scores"]
        if "background" in arrays:  # absent from artifacts written before explanations
            background = np.asarray(arrays["background"], dtype=np.float64)
            if background.ndim != 2 or background.shape[1] != self.n_features_in_:
                raise ModelFormatError(f"JAX artifact's background has shape {background.shape}, "
                                       f"expected (rows, {self.n_features_in_})")
            self._background = background
        self.threshold_ = float(header["threshold"])
        self.labels_ = flagged(self.decision_scores_, self.threshold_).astype(np.int64)
        restore_feature_names(self, header)
        return self

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_score_jit", None)
        return state
