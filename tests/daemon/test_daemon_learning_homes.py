"""A daemon learning a streaming detector on the homes other than a plain folder (issue 23): an
encrypted folder home (its checkpoints sealed like every version) and a PostgreSQL home (its
checkpoints rows in the database). Checkpoints are written, a daemon started after the first
was SIGKILLed reads the last one back, and the scores go on equal to ``score_learn_many`` of
the whole stream."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest

import pynomaly
from pynomaly import KeyRequiredError

from _daemon_helpers import DaemonProcess, cardio, wait_until

service = pytest.importorskip("pynomaly.service")
pytest.importorskip("pynomaly_daemon")

TTL = 1.0  # the killed daemon's learner lease lapses this long after its last renewal


def scaled() -> np.ndarray:
    X = cardio()
    lo, hi = X.min(axis=0), X.max(axis=0)
    return (X - lo) / np.where(hi > lo, hi - lo, 1.0)


@pytest.fixture(params=["encrypted", "postgresql"])
def learning_home(request, tmp_path, monkeypatch):
    """``(home, extra daemon arguments)``: an encrypted folder home (its key in the
    environment, and given to the daemons), or a PostgreSQL home."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_home"), ()
    pytest.importorskip("cryptography", reason="encrypted homes need the cryptography package")
    key, home = tmp_path / "kek", tmp_path / "home"
    service.create_key_file(key)
    service.init_home(home, encrypt=True, key=service.key_source(key_file=key))
    monkeypatch.setenv("PYNOMALY_KEY_FILE", str(key))
    monkeypatch.delenv("PYNOMALY_KEY", raising=False)
    monkeypatch.delenv("PYNOMALY_KEY_COMMAND", raising=False)
    return home, ("--key-file", str(key))


def test_checkpoints_are_stored_read_back_after_sigkill_and_learning_goes_on(learning_home, tmp_path_factory):
    home, extra = learning_home
    X = scaled()
    service.train(home, "hst", X[:400], "HalfSpaceTrees", {"seed": 8, "window_size": 50})
    stream = X[400:1100]
    reference = service.load_model(home, "hst")[1]
    args = ("--home", str(home), *extra, "--checkpoint-records", "200", "--checkpoint-seconds", "3600",
            "--checkpoint-keep", "2", "--learner-lease-seconds", str(TTL), "--no-native-loop")
    a = DaemonProcess(tmp_path_factory.mktemp("a"), None, *args)
    try:
        with pynomaly.Client(a.sock) as c:
            for start in range(0, 400, 100):  # checkpoints after 200 and 400 records: v2, v3
                got = c.detect("hst", stream[start:start + 100], learn=True)
                np.testing.assert_array_equal(got.scores, reference.score_learn_many(stream[start:start + 100]))
        assert wait_until(lambda: service.versions(home, "hst")[-1]["version"] == 3)
    finally:
        a.signal(signal.SIGKILL)
        a.proc.wait()
        a.stop()
    last = service.versions(home, "hst")[-1]
    assert last["parameters"]["checkpoint"] == {"of": 2, "records": 200}
    if not isinstance(home, str):  # the encrypted folder: the checkpoint is sealed as every version
        assert not list(Path(home).rglob("*.zst"))
        assert len(list(Path(home).rglob("*.pne"))) >= 3  # the trained version and two checkpoints
        with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyRequiredError):
            mp.delenv("PYNOMALY_KEY_FILE")
            service.load_model(home, "hst", 3)
    # The state read back from the home is the reference's after exactly 400 records.
    np.testing.assert_array_equal(service.load_model(home, "hst")[1].score_many(stream[600:700]),
                                  reference.score_many(stream[600:700]))
    time.sleep(TTL)  # the killed daemon's lease lapses
    b = DaemonProcess(tmp_path_factory.mktemp("b"), None, *args)
    try:
        with pynomaly.Client(b.sock) as c:
            for start in range(400, 700, 100):  # a checkpoint after 200 more (v4); 100 saved at the stop (v5)
                got = c.detect("hst", stream[start:start + 100], learn=True)
                assert got.version == (3 if start < 600 else 4)
                np.testing.assert_array_equal(got.scores, reference.score_learn_many(stream[start:start + 100]))
    finally:
        assert b.stop() == 0
    versions = service.versions(home, "hst")
    assert [v["version"] for v in versions] == [1, 4, 5]
    assert versions[-1]["parameters"]["checkpoint"] == {"of": 4, "records": 100}
    probe = scaled()[:200]
    np.testing.assert_array_equal(service.load_model(home, "hst")[1].score_many(probe), reference.score_many(probe))
