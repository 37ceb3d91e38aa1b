"""The README's main job lives in ``pynomaly quickstart`` (cli.py); this module keeps the
``python -m pynomaly.quickstart`` spelling and the rank-based ROC-AUC the report prints."""

from __future__ import annotations

import numpy as np


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC by the rank-sum (Mann-Whitney) statistic, ties given their average rank."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def main() -> int:
    """``python -m pynomaly.quickstart``: the same job as ``pynomaly quickstart``."""
    from .cli import main as cli_main

    return cli_main(["quickstart"])


if __name__ == "__main__":
    raise SystemExit(main())
