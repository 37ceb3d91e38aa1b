"""Learner leases (migration 11, pynomaly.store.learners) through the service functions the
faces call: one holder per detector, taken atomically by concurrent callers, renewed,
released, taken over once lapsed. On both backends."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pynomaly import DetectorNotFoundError, InvalidInputError, LearnerConflictError, service
from pynomaly.service.streaming import checkpoint, release_leases, renew_leases, take_lease


@pytest.fixture
def trained(home):
    service.train(home, "s", np.random.default_rng(0).random((200, 3)), "HalfSpaceTrees", {"seed": 1})
    return home


def test_one_of_many_concurrent_takers_gets_the_lease(trained):
    won, refused, go = [], [], threading.Barrier(6)

    def take(who):
        go.wait()
        try:
            take_lease(trained, "s", who, 30.0)
            won.append(who)
        except LearnerConflictError as err:
            refused.append(str(err))

    threads = [threading.Thread(target=take, args=(f"p{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 5
    assert all(f"learned by another process ({won[0]})" in m for m in refused)
    assert take_lease(trained, "s", won[0], 30.0) == 1  # the holder asking again: renewed; the latest version


def test_renew_release_and_take_over_after_the_lease_lapsed(trained):
    take_lease(trained, "s", "a", 1.0)
    assert renew_leases(trained, "a", ["s"], 1.0) == {"s"}
    assert renew_leases(trained, "b", ["s"], 1.0) == set()
    with pytest.raises(LearnerConflictError, match=r"\(a\)"):
        take_lease(trained, "s", "b", 1.0)
    time.sleep(1.1)
    take_lease(trained, "s", "b", 1.0)  # a's lease lapsed
    assert renew_leases(trained, "a", ["s"], 1.0) == set()  # a learns it lost it
    # A checkpoint by a learner that lost its lease saves nothing.
    model = service.load_model(trained, "s")[1]
    with pytest.raises(LearnerConflictError, match=r"\(b\)"):
        checkpoint(trained, "s", model.to_bytes(), of_version=1, records=1, threshold=0.0, keep=2, lease=("a", 1.0))
    assert [v["version"] for v in service.versions(trained, "s")] == [1]
    release_leases(trained, "b")
    take_lease(trained, "s", "a", 30.0)  # released: free at once
    assert checkpoint(trained, "s", model.to_bytes(), of_version=1, records=1, threshold=0.0, keep=2,
                      lease=("a", 30.0)) == 2
    assert take_lease(trained, "s", "a", 30.0) == 2


def test_bad_lease_arguments_are_refused_clearly(trained):
    with pytest.raises(DetectorNotFoundError, match="no detector named 'nope'"):
        take_lease(trained, "nope", "a", 1.0)
    assert renew_leases(trained, "a", ["nope"], 1.0) == set()  # no lease left behind for it
    for ttl in (0, -1.0, float("nan"), True, "30"):
        with pytest.raises(InvalidInputError, match="learner lease lasts"):
            take_lease(trained, "s", "a", ttl)
