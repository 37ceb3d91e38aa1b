"""Small real datasets shipped with the package (see data/README.md for their sources)."""

from __future__ import annotations

from importlib import resources

import numpy as np


def load_cardio() -> tuple[np.ndarray, np.ndarray]:
    """UCI Cardiotocography (ODDS): X (1831 x 21, float64) and y (1 = anomaly, int8)."""
    with resources.files("pynomaly").joinpath("data/cardio.npz").open("rb") as f:
        d = np.load(f)
        return d["X"], d["y"]
