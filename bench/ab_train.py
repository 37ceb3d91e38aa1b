"""A/B of ``pynomaly train`` wall time between two builds, in alternating rounds.

    python bench/ab_train.py --baseline-python /path/to/other/venv/bin/python [--rounds 15]

Each round runs ``python -m pynomaly --home H train --detector bench --data cardio.npz --param
random_state=0`` once with this interpreter (A) and once with ``--baseline-python`` (B), in turn,
each side into its own home (created by one untimed run first, so that every timed run stores
a next version as a user's would). The time is the whole command: interpreter start, imports,
reading the data, fitting, storing. Prints the medians, the A/B ratio of the medians and the
interquartile range of the per-round ratios (the round-to-round noise), and the CPU seconds
(user + system) of the commands, which a shared machine disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def dataset() -> Path:
    root = Path(os.environ.get("PYNOMALY_DATASETS", HERE.parent.parent / "shared" / "datasets"))
    path = root / "cardio.npz"
    return path if path.exists() else HERE.parent / "python" / "pynomaly" / "data" / "cardio.npz"


def cpu_model() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def train(python: str, home: Path, data: Path, extra) -> "tuple[float, float]":
    """(wall seconds, CPU seconds of the command)."""
    cmd = [python, "-m", "pynomaly", "--home", str(home), "train", "--detector", "bench", "--data", str(data),
           "--param", "random_state=0", *extra]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout}{p.stderr}")
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-python", required=True, help="interpreter whose pynomaly is side B")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--data", type=Path, default=None, help="training data (default: cardio)")
    ap.add_argument("--train-args", default="", help="extra options for `pynomaly train`, e.g. '--algorithm LOF'")
    args = ap.parse_args()
    data = args.data or dataset()
    extra = args.train_args.split()
    sides = {"A": sys.executable, "B": args.baseline_python}
    for side, py in sides.items():
        where = subprocess.run([py, "-c", "import pynomaly; print(pynomaly.__file__, pynomaly.build_info()['simd'])"],
                               capture_output=True, text=True).stdout.strip()
        print(f"# {side}: {py} ({where})")
    print(f"# cpu: {cpu_model()}, {os.cpu_count()} cpus; data {data}; rounds {args.rounds}; "
          f"load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="pynomaly-ab-train-") as tmp:
        homes = {side: Path(tmp) / side for side in sides}
        for side, py in sides.items():
            train(py, homes[side], data, extra)  # creates the home; not timed
        res = {side: [] for side in sides}
        for r in range(args.rounds):
            order = ("A", "B") if r % 2 == 0 else ("B", "A")  # neither side always goes first
            for side in order:
                res[side].append(train(sides[side], homes[side], data, extra))
    wall = {s: np.array([w for w, _ in v]) for s, v in res.items()}
    cpu = {s: np.array([c for _, c in v]) for s, v in res.items()}
    ratios = wall["A"] / wall["B"]
    q1, q3 = np.percentile(ratios, [25, 75])
    cq1, cq3 = np.percentile(cpu["A"] / cpu["B"], [25, 75])
    print(f"\n{'':>10} {'A median':>9} {'B median':>9} {'A/B':>6} {'A/B spread':>12}   (per-round ratios, IQR)")
    print(f"{'wall s':>10} {np.median(wall['A']):>9.3f} {np.median(wall['B']):>9.3f} "
          f"{np.median(wall['A']) / np.median(wall['B']):>6.3f} {f'{q1:.3f}-{q3:.3f}':>12}")
    print(f"{'cpu s':>10} {np.median(cpu['A']):>9.3f} {np.median(cpu['B']):>9.3f} "
          f"{np.median(cpu['A']) / np.median(cpu['B']):>6.3f} {f'{cq1:.3f}-{cq3:.3f}':>12}")


if __name__ == "__main__":
    main()
