"""Messages that tell a stuck user what to do (issue 26), on the command line: an unknown
detector, `pynomaly user add` without a terminal."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from pynomaly import service

from _daemon_helpers import cardio


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = tmp_path_factory.mktemp("home")
    service.train(h, "cardio", cardio()[:500], "IsolationForest", {"n_estimators": 10, "random_state": 0})
    return h


def _cli(*args, stdin=subprocess.DEVNULL):
    env = {k: v for k, v in os.environ.items() if k != "PYNOMALY_HOME"}
    return subprocess.run([sys.executable, "-m", "pynomaly", *map(str, args)], capture_output=True, text=True,
                          stdin=stdin, env=env, timeout=120)


def test_an_unknown_detector_on_the_command_line_suggests_the_close_name(home, tmp_path):
    np.save(tmp_path / "x.npy", cardio()[:5])
    p = _cli("--home", home, "detect", "--detector", "cardoi", "--data", tmp_path / "x.npy")
    assert p.returncode == 1 and "did you mean 'cardio'" in p.stderr and "pynomaly list" in p.stderr


def test_user_add_without_a_terminal_names_the_non_interactive_option(home):
    p = _cli("--home", home, "user", "add", "bob", "--role", "viewer")
    assert p.returncode == 1 and "--password-stdin" in p.stderr and "no terminal" in p.stderr
    p = subprocess.run([sys.executable, "-m", "pynomaly", "--home", str(home), "user", "add", "bob", "--role",
                        "viewer", "--password-stdin"], input="correct horse battery\n", capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
