"""A PyTorch autoencoder detector: rows that reconstruct badly are anomalous.

``TorchAutoEncoder`` trains a small fully connected autoencoder (or a user's ``torch.nn.Module``
mapping (n, d) to (n, d)) with Adam on standardized data; the anomaly score of a row is its
mean squared reconstruction error. It runs on CUDA when available (``device=None``).

Persistence (``artifact_format = "torch"``): ``to_bytes`` writes ``torch.save`` of a dict of
tensors and plain values (the state_dict, standardization, training scores, a JSON header);
``from_bytes`` reads it with ``torch.load(weights_only=True)``, so loading never runs pickled
code. A user-defined module's weights are stored, its code is not: pass ``module=`` (an
instance of the same architecture) to ``from_bytes``.
"""

from __future__ import annotations

import copy
import io
import json
import secrets

import numpy as np

from pynomaly._errors import InvalidInputError, ModelFormatError, NotFittedError
from pynomaly.domain import flagged
from pynomaly.estimators._format import restore_feature_names, with_feature_names
from pynomaly.estimators.adapters import require
from pynomaly.estimators.adapters._neural import NeuralDetector, check_pos_int, standardization

__all__ = ["TorchAutoEncoder"]

_FORMAT = "pynomaly.torch/1"


def _torch():
    return require("torch", "torch")


class TorchAutoEncoder(NeuralDetector):
    """Autoencoder anomaly detector in PyTorch (score = mean squared reconstruction error).

    Parameters
    ----------
    hidden_neurons : sequence of int, default (64, 32)
        Encoder widths; the decoder mirrors them. Ignored when ``module`` is given.
    epochs : int, default 30
    batch_size : int, default 64
    learning_rate : float, default 1e-3
    weight_decay : float, default 1e-5
    contamination : float, default 0.1
    random_state : int or None
        Seeds weight initialisation and batch order (torch's global RNG is left untouched).
    device : str or None
        "cpu", "cuda", "cuda:1", ...; None picks CUDA when available.
    module : torch.nn.Module or None
        A user's network mapping a float32 (n, d) batch to (n, d); a copy is trained.
    standardize : bool, default True
        Scale features to zero mean and unit variance (statistics of the training data).
    """

    artifact_format = "torch"
    _explain_methods = {"reconstruction": ("score",), "permutation": ("score",)}
    _keeps_background = False  # the reconstruction error is explained exactly

    def __init__(
        self,
        hidden_neurons=(64, 32),
        epochs: int = 30,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-5,
        contamination: float = 0.1,
        random_state=None,
        device=None,
        module=None,
        standardize: bool = True,
    ):
        self._init_training(hidden_neurons, epochs, batch_size, learning_rate, weight_decay, contamination,
                            random_state, standardize)
        self.device = device
        self.module = module

    # -- training ----------------------------------------------------------------------------
    def fit(self, X, y=None, *, progress=None) -> "TorchAutoEncoder":
        """Train on X (``y`` ignored) and score its rows; ``progress(fraction)`` is called after each epoch."""
        torch = _torch()
        epochs, batch, lr, wd = self._training_params()
        X = self._fit_input(X)
        n, d = X.shape
        self.mean_, self.std_ = standardization(X, self.standardize)
        device = _device(torch, self.device)
        seed = secrets.randbits(63) if self.random_state is None else int(self.random_state)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = self._new_network(torch, d)
        net = net.to(device)
        data = torch.from_numpy(((X - self.mean_) / self.std_).astype(np.float32)).to(device)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=wd)
        net.train()
        for epoch in range(epochs):
            order = torch.randperm(n, generator=gen).to(device)
            for start in range(0, n, batch):
                xb = data[order[start : start + batch]]
                opt.zero_grad(set_to_none=True)
                loss = torch.mean((net(xb) - xb) ** 2)
                if not torch.isfinite(loss):
                    raise InvalidInputError("training diverged (loss is not finite); lower learning_rate")
                loss.backward()
                opt.step()
            if progress is not None:
                progress((epoch + 1) / epochs)
        net.eval()
        self.network_ = net
        self.device_ = str(device)
        self.n_features_in_ = d
        self.decision_scores_ = self._score(torch, data)
        self._process_decision_scores()
        return self

    def _new_network(self, torch, d: int):
        if self.module is not None:
            if not isinstance(self.module, torch.nn.Module):
                raise InvalidInputError(f"module must be a torch.nn.Module, got {type(self.module).__name__}")
            return copy.deepcopy(self.module)
        widths = [check_pos_int("hidden_neurons[i]", h) for h in (self.hidden_neurons or ())]
        if not widths:
            raise InvalidInputError("hidden_neurons must list at least one layer width, e.g. (64, 32)")
        layers, prev = [], d
        for w in widths + widths[-2::-1]:  # encoder, then the mirrored decoder
            layers += [torch.nn.Linear(prev, w), torch.nn.ReLU()]
            prev = w
        layers.append(torch.nn.Linear(prev, d))
        return torch.nn.Sequential(*layers)

    # -- scoring -----------------------------------------------------------------------------
    def decision_function(self, X) -> np.ndarray:
        """Mean squared reconstruction error of each row (higher = more anomalous)."""
        if not hasattr(self, "network_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")
        torch = _torch()
        X = self._score_input(X)
        data = torch.from_numpy(((X - self.mean_) / self.std_).astype(np.float32)).to(self.device_)
        return self._score(torch, data)

    def explain(self, X, method=None, output=None, *, background=None):
        """Per-feature attributions of each row's score (see :meth:`BaseDetector.explain`).

        method="reconstruction" (default): the score is the mean over features of the squared
        reconstruction error (of the standardized row), so feature j's attribution is its own
        term, ``(reconstruction_j - z_j) ** 2 / d``: exact, non-negative, summing to
        ``decision_function(X)``; base is 0. (What a feature's value did to the reconstruction
        of the others is part of their terms: this says where the error is, which is what the
        score measures.)
        """
        return super().explain(X, method, output, background=background)

    def _explain(self, X, method, output, background):
        if method == "permutation":
            return super()._explain(X, method, output, background)
        torch = _torch()
        data = torch.from_numpy(((X - self.mean_) / self.std_).astype(np.float32)).to(self.device_)
        with torch.no_grad():
            err = ((self.network_(data) - data) ** 2).cpu().numpy().astype(np.float64)
        return err / X.shape[1], np.zeros(X.shape[0])

    def _score(self, torch, data) -> np.ndarray:
        out = []
        with torch.no_grad():
            for start in range(0, data.shape[0], 8192):  # chunks keep memory flat
                xb = data[start : start + 8192]
                out.append(torch.mean((self.network_(xb) - xb) ** 2, dim=1).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    # -- persistence -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Serialize with ``torch.save`` (tensors and plain values only; see the module doc)."""
        if not hasattr(self, "network_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")
        torch = _torch()
        params = self.get_params()
        params.pop("module")
        params["hidden_neurons"] = list(params["hidden_neurons"] or ())
        header = {
            "params": params,
            "custom_module": self.module is not None,
            "n_features": self.n_features_in_,
            "threshold": self.threshold_,
        }
        with_feature_names(header, self)
        payload = {
            "format": _FORMAT,
            "header": json.dumps(header),
            "state_dict": {k: v.detach().cpu() for k, v in self.network_.state_dict().items()},
            "mean": torch.from_numpy(np.asarray(self.mean_, dtype=np.float64)),
            "std": torch.from_numpy(np.asarray(self.std_, dtype=np.float64)),
            "decision_scores": torch.from_numpy(self.decision_scores_),
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data, module=None, device=None) -> "TorchAutoEncoder":
        """Load bytes written by :meth:`to_bytes` with ``weights_only=True``.

        ``module`` is required when the detector wrapped a user's network (same architecture);
        ``device`` overrides where it runs (default: CUDA when available).
        """
        torch = _torch()
        try:
            payload = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
            if payload.get("format") != _FORMAT:
                raise ModelFormatError(f"not a pynomaly torch artifact (format {payload.get('format')!r})")
            header = json.loads(payload["header"])
        except ModelFormatError:
            raise
        except Exception as e:
            raise ModelFormatError(f"cannot read torch artifact: {e}") from None
        params = header["params"]
        params["hidden_neurons"] = tuple(params["hidden_neurons"])
        if header["custom_module"] and module is None:
            raise InvalidInputError(
                "this detector wraps a user-defined torch.nn.Module: pass module=<an instance of the same"
                " architecture> to load it"
            )
        self = cls(**params, module=module)
        if device is not None:
            self.device = device
        net = self._new_network(torch, int(header["n_features"]))
        try:
            net.load_state_dict(payload["state_dict"])
        except RuntimeError as e:
            raise InvalidInputError(f"weights do not fit the network: {e}") from None
        dev = _device(torch, self.device)
        self.network_ = net.to(dev).eval()
        self.device_ = str(dev)
        self.n_features_in_ = int(header["n_features"])
        self.mean_ = payload["mean"].numpy()
        self.std_ = payload["std"].numpy()
        self.decision_scores_ = payload["decision_scores"].numpy()
        self.threshold_ = float(header["threshold"])
        self.labels_ = flagged(self.decision_scores_, self.threshold_).astype(np.int64)
        restore_feature_names(self, header)
        return self


def _device(torch, want):
    if want is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(want)
    except (RuntimeError, TypeError) as e:
        raise InvalidInputError(f"device must be None, 'cpu' or 'cuda[:N]', got {want!r} ({e})") from None
