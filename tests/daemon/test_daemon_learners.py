"""One learner per detector per home (issue 23): daemons on one home, the first to learn a
detector holds its lease; the others are refused (naming the holder) and keep scoring, until
the holder stops cleanly (at once) or is SIGKILLed (after the lease's TTL). On a folder home
and on a PostgreSQL home."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

import pynomaly
from pynomaly.client import DaemonInputError

from _daemon_helpers import DaemonProcess, cardio

service = pytest.importorskip("pynomaly.service")
pytest.importorskip("pynomaly_daemon")

TTL = 3.0  # short, so that the SIGKILLed holder's lease lapses quickly; renewed every second


def scaled() -> np.ndarray:
    X = cardio()
    lo, hi = X.min(axis=0), X.max(axis=0)
    return (X - lo) / np.where(hi > lo, hi - lo, 1.0)


def learn_when_allowed(client, rows, timeout: float):
    """The scores of the first ``learn: true`` request not refused for the lease (a refused
    one learns nothing), and how many were refused before it."""
    deadline, refused = time.monotonic() + timeout, 0
    while True:
        try:
            return client.detect("hst", rows, learn=True), refused
        except DaemonInputError as err:
            assert "learned by another process" in str(err)
            refused += 1
            assert time.monotonic() < deadline, f"still refused after {timeout} s: {err}"
            time.sleep(0.1)


def test_one_daemon_learns_a_detector_the_others_score_until_it_is_gone(home, tmp_path_factory):
    X = scaled()
    service.train(home, "hst", X[:400], "HalfSpaceTrees", {"seed": 4, "window_size": 50})
    stream = X[400:]
    reference = service.load_model(home, "hst")[1]  # the whole stream, learned by one model
    args = ("--home", str(home), "--learner-lease-seconds", str(TTL), "--checkpoint-records", "100",
            "--checkpoint-seconds", "3600", "--checkpoint-keep", "3", "--no-native-loop")
    a = DaemonProcess(tmp_path_factory.mktemp("a"), None, *args)
    b = DaemonProcess(tmp_path_factory.mktemp("b"), None, *args)
    c = None
    try:
        with pynomaly.Client(a.sock) as ca, pynomaly.Client(b.sock) as cb:
            got = ca.detect("hst", stream[:100], learn=True)  # a takes the lease; checkpoint v2
            np.testing.assert_array_equal(got.scores, reference.score_learn_many(stream[:100]))
            # b is refused, naming a; it learned nothing, and scores on (without learning).
            with pytest.raises(DaemonInputError, match=rf"learned by another process \(host \S+ pid {a.proc.pid} "):
                cb.detect("hst", stream[100:150], learn=True)
            assert len(cb.detect("hst", stream[100:150]).scores) == 50
            # a keeps its lease past the TTL (renewed on its timer, not by requests), and learns on.
            time.sleep(TTL * 1.5)
            with pytest.raises(DaemonInputError, match="learned by another process"):
                cb.detect("hst", stream[150:160], learn=True)
            got = ca.detect("hst", stream[100:150], learn=True)
            np.testing.assert_array_equal(got.scores, reference.score_learn_many(stream[100:150]))
        # a stops cleanly: it saves its 50 unsaved records (v3) and releases the lease, so b
        # learns at once, from a's last checkpoint (not its own older copy).
        assert a.stop() == 0
        with pynomaly.Client(b.sock) as cb:
            got, _ = learn_when_allowed(cb, stream[150:250], timeout=2.0)  # b's checkpoint v4
            assert got.version == 3
            np.testing.assert_array_equal(got.scores, reference.score_learn_many(stream[150:250]))
            c = DaemonProcess(tmp_path_factory.mktemp("c"), None, *args)
            b.signal(signal.SIGKILL)
            b.proc.wait()
            # b's lease outlives it by the TTL: c is refused meanwhile, then learns from b's
            # last checkpoint (nothing b learned was lost: it checkpointed every 100 records).
            killed = time.monotonic()
            with pynomaly.Client(c.sock) as cc:
                got, refused = learn_when_allowed(cc, stream[250:400], timeout=TTL * 4)
                assert refused > 0 and time.monotonic() - killed > TTL * 0.5
                np.testing.assert_array_equal(got.scores, reference.score_learn_many(stream[250:400]))
        versions = [v["version"] for v in service.versions(home, "hst")]
        assert versions[0] == 1 and versions[-1] == 5  # c's checkpoint after 100 of its 150 records
    finally:
        for d in (a, b, c):
            if d is not None:
                d.stop()
    # c stopped cleanly: its last 50 records saved, and the lease free for anyone.
    last = service.load_model(home, "hst")[1]
    np.testing.assert_array_equal(last.score_many(stream[400:450]), reference.score_many(stream[400:450]))
    service.streaming.take_lease(home, "hst", "someone else", 1.0)
