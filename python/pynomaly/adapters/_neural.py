"""What the neural detectors (PyTorch autoencoder, JAX Deep SVDD) share: the training
parameters and their checks, feature standardization, and the progress callback of ``fit``.

Each subclass still spells its own ``__init__`` out, because scikit-learn's parameter API
reads the constructor's signature; the shared parameters are stored and checked here.
"""

from __future__ import annotations

import numbers

import numpy as np

from .._errors import InvalidInputError
from ..base import BaseDetector


def check_pos_int(name, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def check_pos_float(name, v, allow_zero=False) -> float:
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)
    if not ok or not np.isfinite(v):
        raise InvalidInputError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {v!r}")
    return float(v)


def standardization(X: np.ndarray, on: bool):
    """Per-feature mean and standard deviation (zeros and ones when ``on`` is false)."""
    d = X.shape[1]
    if not on:
        return np.zeros(d), np.ones(d)
    mean = X.mean(axis=0, dtype=np.float64)
    std = X.std(axis=0, dtype=np.float64)
    std[~(std > 0)] = 1.0  # constant columns stay at 0 instead of dividing by zero
    return mean, std


class NeuralDetector(BaseDetector):
    """Base of the epoch-trained detectors (not used directly)."""

    def _init_training(self, hidden_neurons, epochs, batch_size, learning_rate, weight_decay, contamination,
                       random_state, standardize) -> None:
        self.hidden_neurons = hidden_neurons
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.contamination = contamination
        self.random_state = random_state
        self.standardize = standardize

    def check_fit(self, n_rows: int, n_features: int) -> None:
        """See :meth:`BaseDetector.check_fit`: the training parameters."""
        self._training_params()

    def _training_params(self):
        """The checked ``(epochs, batch_size, learning_rate, weight_decay)``; contamination too."""
        self._rate()
        return (
            check_pos_int("epochs", self.epochs),
            check_pos_int("batch_size", self.batch_size),
            check_pos_float("learning_rate", self.learning_rate),
            check_pos_float("weight_decay", self.weight_decay, allow_zero=True),
        )
