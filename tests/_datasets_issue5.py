"""Real datasets for the repository/CLI/adapter tests (../shared/datasets, or PYNOMALY_DATASETS);
tests skip with a reason where they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("PYNOMALY_DATASETS", REPO.parent / "shared" / "datasets"))


def load_dataset(name: str):
    path = DATASETS / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"dataset {name} not found under {DATASETS} (set PYNOMALY_DATASETS)")
    with np.load(path) as d:
        return d["X"], d["y"].astype(np.int64)


def dataset_path(name: str) -> Path:
    path = DATASETS / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"dataset {name} not found under {DATASETS} (set PYNOMALY_DATASETS)")
    return path


def roc_auc(y, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores))
