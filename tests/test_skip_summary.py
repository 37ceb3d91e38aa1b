"""The end of a test run says in one line what was skipped for lack of what (issue 26)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO, skip_summary


def test_skip_reasons_are_grouped_by_what_they_lack():
    line = skip_summary([
        "Skipped: dataset cardio not found under /x (set PYNOMALY_DATASETS)",
        "Skipped: no datasets under /x (set PYNOMALY_DATASETS)",
        "dataset thyroid not found in /x (set PYNOMALY_DATASETS)",
        "Skipped: no initdb or pg_ctl on PATH (Debian: postgresql)",
        "Skipped: could not import 'torch.nn': No module named 'torch'",
        "Skipped: could not import 'torch': No module named 'torch'",
        "Skipped: something else entirely",
    ])
    assert line.startswith("skipped: 3 need the ADBench datasets in ")
    assert ", 2 need torch," in line and "1 need PostgreSQL" in line and line.endswith("1 something else entirely")
    assert skip_summary([]) == ""


def test_a_run_without_datasets_ends_with_the_line(tmp_path):
    env = {**os.environ, "PYNOMALY_DATASETS": str(tmp_path / "none")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cardio",
                          str(REPO / "tests" / "estimators" / "test_scores.py")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    last = out.stdout.strip().splitlines()[-2:]
    assert last[0].startswith("skipped: ") and f"need the ADBench datasets in {tmp_path / 'none'}" in last[0], last
    assert "skipped" in last[1]
