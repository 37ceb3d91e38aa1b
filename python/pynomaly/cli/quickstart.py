"""The README's main job: train an isolation forest on the bundled cardio dataset, store it,
detect with it and report (``pynomaly quickstart`` or ``python -m pynomaly.quickstart``, the
old path of this module)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import numpy as np


def add_quickstart(sub):
    q = sub.add_parser("quickstart", help="train on the bundled cardio dataset, store, detect, report",
                       description="Train an isolation forest on the bundled cardio dataset (UCI "
                       "Cardiotocography via ODDS), store it in the home folder, detect with it and report.")
    q.add_argument("--detector", default="cardio-quickstart", help="name to store it under (default cardio-quickstart)")


def _cmd_quickstart(args, home, progress, out):
    run(home, args.detector, progress=progress, out=out)


COMMANDS = {"quickstart": _cmd_quickstart}


def keeps_detector(home) -> bool:
    """Whether the quickstart stores into a home the user chose (``--home``, ``PYNOMALY_HOME``);
    otherwise it works in a throwaway one, so trying it leaves nothing in the user data folder."""
    return bool(home) or bool(os.environ.get("PYNOMALY_HOME"))


def run(home=None, detector: str = "cardio-quickstart", *, progress=None, out=None) -> None:
    """Run the quickstart job against the repository ``home`` (a throwaway one, removed at the
    end, unless one is given or PYNOMALY_HOME is set) and print its report to ``out``."""
    out = out or sys.stdout
    if keeps_detector(home):
        _run(home, detector, progress, out, kept=True)
        return
    throwaway = tempfile.mkdtemp(prefix="pynomaly-quickstart-")
    out.write(f"using a throwaway home {throwaway} (removed at the end; to keep the detector, give "
              "--home DIR or set PYNOMALY_HOME)\n")
    try:
        _run(throwaway, detector, progress, out, kept=False)
    finally:
        shutil.rmtree(throwaway, ignore_errors=True)  # its pending drift counts go with it (drift_live.flush)


def _run(home, detector: str, progress, out, kept: bool) -> None:
    from pynomaly import build_info
    from pynomaly import service
    from pynomaly.store.datasets import load_cardio

    X, y = load_cardio()
    info = build_info()
    out.write(f"pynomaly {info['version']}  simd={info['simd']}  openmp={info['openmp']}\n")
    out.write(f"dataset: cardio (UCI Cardiotocography via ODDS), {X.shape[0]} rows x {X.shape[1]} features\n")
    out.write(f"storing detector {detector!r} in {service.home_path(home)}\n")
    out.flush()
    t0 = time.perf_counter()
    det = service.train(home, detector, X, "IsolationForest", {"contamination": 0.1, "random_state": 42},
                        progress=progress)
    t1 = time.perf_counter()
    result = service.detect(home, detector, X, progress=progress)
    if progress is not None and hasattr(progress, "close"):
        progress.close()
    out.write(f"trained and stored detector {det.name!r} v{det.version} in {1e3 * (t1 - t0):.0f} ms\n")
    flagged = np.flatnonzero(result.labels)
    out.write(f"threshold {result.threshold:.4f}: {len(flagged)} of {len(X)} rows flagged as anomalies, "
              f"scored in {result.metrics['processing_time_ms']:.2f} ms\n")
    out.write(f"precision of flagged rows against the labels: {y[flagged].mean():.3f}; "
              f"ROC-AUC {roc_auc(y, result.scores):.3f}\n")
    top = result.anomalies[:5]
    out.write("top 5 rows: " + ", ".join(f"#{i} (score {result.scores[i]:.3f}, label {y[i]})" for i, _ in top) + "\n")
    if kept:
        out.write(f"next: pynomaly show {det.name}   |   pynomaly detect --detector {det.name} --data FILE\n")
    else:
        out.write("next: pynomaly --home DIR quickstart to keep the detector, then pynomaly --home DIR show "
                  f"{det.name}\n")


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
    run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
