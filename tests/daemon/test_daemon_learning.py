"""``detect`` with ``learn: true`` through a real daemon, and its checkpoints (issue 23)."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

import pynomaly
from pynomaly.client import DaemonInputError
import msgpack

from _daemon_helpers import DaemonProcess, cardio, close_raw_sockets, frame, raw_connect, raw_rows, read_frame, wait_until

service = pytest.importorskip("pynomaly.service")
pytest.importorskip("pynomaly_daemon")


def scaled() -> np.ndarray:
    X = cardio()
    lo, hi = X.min(axis=0), X.max(axis=0)
    return (X - lo) / np.where(hi > lo, hi - lo, 1.0)  # HST's default limits are [0, 1]


def stored(home, version=None):
    return service.load_model(home, "hst", version)[1]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = tmp_path_factory.mktemp("home") / "home"
    X = scaled()
    service.train(h, "hst", X[:400], "HalfSpaceTrees", {"seed": 3, "window_size": 100})
    service.train(h, "forest", X[:400], "IsolationForest", {"random_state": 0, "n_estimators": 20})
    return h


@pytest.mark.parametrize("loop", ["native-loop", "uvloop"])
def test_learning_requests_equal_score_learn_many_in_arrival_order(tmp_path, home, loop):
    X = scaled()[400:1400]
    extra = ("--no-native-loop",) if loop == "uvloop" else ()
    d = DaemonProcess(tmp_path, None, "--home", str(home), *extra)
    try:
        reference = stored(home)
        got, want = [], []
        # Two clients taking turns, batches of every size, some only scoring: each row's score
        # depends on what the other client had the detector learn before it.
        with pynomaly.Client(d.sock) as a, pynomaly.Client(d.sock) as b:
            start = 0
            for i, n in enumerate([1, 7, 64, 65, 200, 3, 300, 1, 359]):
                rows = X[start:start + n]
                start += n
                client = a if i % 2 else b
                if i % 3 == 2:  # scored without learning: the state stays
                    got.append(client.detect("hst", rows).scores)
                    want.append(reference.score_many(rows))
                else:
                    got.append(client.detect("hst", rows, learn=True).scores)
                    want.append(reference.score_learn_many(rows))
            assert start == len(X)
        np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("loop", ["native-loop", "uvloop"])
def test_pipelined_learning_requests_are_answered_one_at_a_time_in_order(tmp_path, home, loop):
    X = scaled()[400:1400]
    extra = ("--no-native-loop",) if loop == "uvloop" else ()
    d = DaemonProcess(tmp_path, None, "--home", str(home), "--workers", "4", *extra)
    try:
        s = raw_connect(d.sock, timeout=30)
        sizes = [200, 1, 100, 3, 250, 40, 6, 400]  # small ones would be coalesced, large ones split, if not in a lane
        bounds = np.cumsum([0] + sizes)
        s.sendall(b"".join(frame({"op": "detect", "id": i, "detector": "hst", "want": ["scores"], "learn": True,
                                  "rows": raw_rows(X[a:b])}) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))))
        replies = [msgpack.unpackb(read_frame(s), raw=False) for _ in sizes]
        assert [r["id"] for r in replies] == list(range(len(sizes)))
        got = np.concatenate([np.frombuffer(r["scores"], "<f8") for r in replies])
        np.testing.assert_array_equal(got, stored(home).score_learn_many(X[:bounds[-1]]))
    finally:
        close_raw_sockets()
        assert d.stop() == 0


def test_learning_refused_clearly_for_a_detector_that_does_not_learn(tmp_path, home):
    d = DaemonProcess(tmp_path, None, "--home", str(home))
    try:
        with pynomaly.Client(d.sock) as c:
            with pytest.raises(DaemonInputError, match="IsolationForest, which does not learn"):
                c.detect("forest", scaled()[:5], learn=True)
            with pytest.raises(DaemonInputError, match="does not learn"):
                c.detect("forest", scaled()[:500], learn=True)  # a large request, the same
            # A bad row fails its request only, and the model learned nothing from it.
            bad = scaled()[:3].copy()
            bad[1, 0] = np.nan
            with pytest.raises(DaemonInputError):
                c.detect("hst", bad, learn=True)
            np.testing.assert_array_equal(c.detect("hst", scaled()[:9], learn=True).scores,
                                          stored(home).score_learn_many(scaled()[:9]))
    finally:
        assert d.stop() == 0


def test_sigkill_resumes_from_the_last_checkpoint(tmp_path_factory):
    h = tmp_path_factory.mktemp("ckpt") / "home"
    X = scaled()
    service.train(h, "hst", X[:400], "HalfSpaceTrees", {"seed": 5, "window_size": 50})
    stream = X[400:]
    args = ("--home", str(h), "--checkpoint-records", "300", "--checkpoint-keep", "2", "--checkpoint-seconds", "3600",
            "--learner-lease-seconds", "1")
    d = DaemonProcess(tmp_path_factory.mktemp("run1"), None, *args)
    try:
        live = stored(h)
        with pynomaly.Client(d.sock) as c:
            for start in range(0, 1250, 50):  # checkpoints after 300, 600, 900 and 1200 records
                got = c.detect("hst", stream[start:start + 50], learn=True)
                np.testing.assert_array_equal(got.scores, live.score_learn_many(stream[start:start + 50]))
                if start == 650:
                    # Past the daemon's refresh interval (1 s): it must not load its own
                    # checkpoint back (that would forget the 50 records learned since).
                    time.sleep(1.3)
        # The last one is saved (version 5, of version 4, 300 records since), then the daemon dies
        # without its drain's final save.
        assert wait_until(lambda: service.versions(h, "hst")[-1]["version"] == 5)
    finally:
        d.signal(signal.SIGKILL)
        d.proc.wait()
        d.stop()
    versions = service.versions(h, "hst")
    # Retention: the trained version and the newest two checkpoints.
    assert [v["version"] for v in versions] == [1, 4, 5]
    assert versions[-1]["parameters"]["checkpoint"] == {"of": 4, "records": 300}
    assert "checkpoint" not in versions[0]["parameters"]
    # Nothing older lost: the last checkpoint is the trained model after exactly 1200 records.
    reference = stored(h, 1)
    reference.score_learn_many(stream[:1200])
    restored = stored(h, 5)
    np.testing.assert_array_equal(restored.score_many(stream[1250:1300]), reference.score_many(stream[1250:1300]))
    # A restart serves and learns from there (once the killed daemon's learner lease lapsed),
    # and a graceful stop saves what it learned.
    time.sleep(1.0)
    d = DaemonProcess(tmp_path_factory.mktemp("run2"), None, *args)
    try:
        with pynomaly.Client(d.sock) as c:
            got = c.detect("hst", stream[1250:1400], learn=True)
            with pytest.raises(DaemonInputError, match="latest version only"):
                c.detect("hst", stream[:5], version=4, learn=True)
        assert got.version == 5
        np.testing.assert_array_equal(got.scores, reference.score_learn_many(stream[1250:1400]))
    finally:
        assert d.stop() == 0
    last = service.versions(h, "hst")[-1]
    assert (last["version"], last["parameters"]["checkpoint"]) == (6, {"of": 5, "records": 150})
    np.testing.assert_array_equal(stored(h, 6).score_many(stream[1400:1450]), reference.score_many(stream[1400:1450]))
