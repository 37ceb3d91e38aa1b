"""The repository: round trips for every algorithm kind, versions, lifecycle, integrity
(hashes, HMAC on pickles), crash safety and several processes at once.

Tests taking ``home`` run on both backends (a folder, a PostgreSQL database); those taking
``tmp_path`` as the home are about a folder home's files (SQLite's own file, artifact files,
the version-marks file) and say so. PostgreSQL's own cases (migrations, a server that goes
away, NOTIFY, SKIP LOCKED) are in test_repository_postgres.py."""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from pynomaly.estimators import registry
from pynomaly import service
from pynomaly.domain import DetectorNotReadyError, DetectorStatus
from pynomaly.store.repository import (
    ArtifactIntegrityError,
    DetectorNotFoundError,
    Repository,
    RepositoryError,
    default_home,
)

from _homes import artifact_count, damage_artifact, is_pg, raw_sql, remove_artifact
from conftest import load_dataset
from pynomaly.store._home import local_dir

TESTS = Path(__file__).resolve().parents[1]  # tests/, where the shared helpers live


def _kinds():
    kinds = [
        ("IsolationForest", {"n_estimators": 50, "random_state": 0}, None),
        ("pyod.ECOD", {}, "pyod"),
        ("pyod.IForest", {"use_native": True, "random_state": 0}, "pyod"),
        ("TorchAutoEncoder", {"epochs": 2, "random_state": 0}, "torch"),
        ("JaxDeepSVDD", {"epochs": 2, "random_state": 0}, "jax"),
        ("LOF", {"n_neighbors": 10, "novelty": True}, "neighbors"),
        ("KNN", {"n_neighbors": 5}, "neighbors"),
    ]
    return [pytest.param(a, p, m, id=a) for a, p, m in kinds]


def _need(module):
    if module == "neighbors":
        try:
            registry.get("LOF")
        except Exception:
            pytest.skip("pynomaly.neighbors (LOF/KNN) is not in this build yet")
    elif module:
        pytest.importorskip(module)


@pytest.mark.parametrize("algorithm, params, module", _kinds())
def test_round_trip_scores_identically(home, algorithm, params, module):
    _need(module)
    X, _ = load_dataset("cardio")
    det = service.train(home, "d", X, algorithm, params)
    assert det.version == 1 and det.status is DetectorStatus.ACTIVE and det.n_features == X.shape[1]
    with Repository(home) as repo:
        stored, model = service.load_model(repo, "d")
        fmt = repo.versions("d")[0]["format"]
    assert stored.algorithm == algorithm and stored.parameters == params
    assert fmt == {"native": "native", "pyod": "pickle", "torch": "torch", "jax": "jax"}[registry.kind(algorithm)]
    # every kind is seeded: a fresh model with the same parameters is the reference
    again = registry.create(algorithm, **params).fit(X)
    np.testing.assert_allclose(model.decision_function(X), again.decision_function(X), rtol=1e-5)
    # scoring through the service uses the stored model
    r = service.detect(home, "d", X[:100], save=False)
    np.testing.assert_array_equal(r.scores, model.decision_function(X[:100]))


@pytest.mark.parametrize("algorithm, params, module", _kinds())
def test_loaded_model_equals_saved_model(home, algorithm, params, module):
    _need(module)
    X, _ = load_dataset("thyroid")
    model = registry.create(algorithm, **params).fit(X)
    from pynomaly.domain import Detector

    d = Detector(name="m", algorithm=algorithm, parameters=params)
    d.mark_trained(n_features=X.shape[1])
    d.activate()
    with Repository(home) as repo:
        repo.add_version(d, model.to_bytes(), format=getattr(model, "artifact_format", "native"), threshold=model.threshold_)
    with Repository(home) as repo:  # a new connection, as another process would
        _, loaded = service.load_model(repo, "m")
    np.testing.assert_array_equal(loaded.decision_function(X), model.decision_function(X))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.threshold_ == model.threshold_


def test_stored_lof_scores_new_data_by_default(home):
    _need("neighbors")
    X, _ = load_dataset("cardio")
    det = service.train(home, "lof", X[:1500], "LOF", {"n_neighbors": 10})
    assert det.parameters == {"novelty": True, "n_neighbors": 10}
    r = service.detect(home, "lof", X[1500:])
    assert r.scores.shape == (len(X) - 1500,)


def test_versions_latest_and_given(home):
    X, _ = load_dataset("cardio")
    v1 = service.train(home, "d", X, params={"random_state": 1})
    v2 = service.train(home, "d", X, params={"random_state": 2})
    assert (v1.version, v2.version) == (1, 2) and v1.id == v2.id
    ref1 = registry.create("IsolationForest", random_state=1).fit(X).decision_function(X)
    ref2 = registry.create("IsolationForest", random_state=2).fit(X).decision_function(X)
    with Repository(home) as repo:
        d, latest = service.load_model(repo, "d")
        assert d.version == 2
        d1, first = service.load_model(repo, "d", version=1)
        assert d1.version == 1 and d1.parameters == {"random_state": 1}
        assert [v["version"] for v in repo.versions("d")] == [1, 2]
        with pytest.raises(DetectorNotFoundError, match="no version 3"):
            service.load_model(repo, "d", version=3)
    np.testing.assert_array_equal(latest.decision_function(X), ref2)
    np.testing.assert_array_equal(first.decision_function(X), ref1)
    r = service.detect(home, "d", X, version=1, save=False)
    assert r.detector_version == 1


def test_failed_training_is_recorded_and_retrain_failure_keeps_previous(home):
    """A failure during the fit itself (here PyOD refusing its own parameter) records the
    detector FAILED with the reason; a retry succeeds; a failed retrain keeps the versions."""
    pytest.importorskip("pyod")
    X, _ = load_dataset("cardio")
    with pytest.raises(ValueError):
        service.train(home, "bad", X, "pyod.KNN", {"n_neighbors": 5000})
    with Repository(home) as repo:
        d = repo.get("bad")
    assert d.status is DetectorStatus.FAILED and "n_neighbors" in d.error
    with pytest.raises(DetectorNotReadyError, match="failed"):
        service.load_for_scoring(home, "bad")
    service.train(home, "bad", X, params={"random_state": 0})  # a retry succeeds
    assert service.show(home, "bad")["status"] == "active"
    with pytest.raises(ValueError):
        service.train(home, "bad", X, params={"n_estimators": -1})
    det, _ = service.load_model(home, "bad")
    assert det.version == 1 and det.status is DetectorStatus.ACTIVE


def test_what_can_be_checked_first_leaves_nothing_behind(home):
    """Issue 16.3/16.4: a bad parameter value, or a fit that cannot fit in memory, is refused
    before any write: no detector row, no dataset row."""
    X, _ = load_dataset("cardio")
    with pytest.raises(ValueError, match="n_estimators"):
        service.train(home, "typo", X, params={"n_estimators": "1OO"})
    with pytest.raises(ValueError, match=r"needs about .* of memory; .* are available"):
        service.train(home, "huge", X, params={"n_estimators": 100_000_000})
    with pytest.raises(ValueError, match="n_neighbors"):
        service.train(home, "k", X[:10], "LOF", {"n_neighbors": 0})
    assert service.list_detectors(home) == []
    with Repository(home) as repo:
        assert repo.datasets() == []


def test_a_killed_first_training_leaves_no_row(home):
    """Issue 16.3: nothing is stored until the fit is done."""
    code = textwrap.dedent(f"""
        import numpy as np, sys
        from pynomaly import service
        X = np.random.default_rng(0).standard_normal((400_000, 8))
        print("fitting", flush=True)
        service.train({str(home)!r}, "slow", X, params={{"n_estimators": 3000}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "fitting"
        time.sleep(1.0)
        assert proc.poll() is None, "the fit ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        proc.stdout.close()
    assert service.list_detectors(home) == []


def test_archive_activate_delete(home):
    X, _ = load_dataset("cardio")
    service.train(home, "d", X, params={"random_state": 0})
    service.train(home, "keep", X, params={"random_state": 0})  # same content: shared artifact
    assert service.archive(home, "d").status is DetectorStatus.ARCHIVED
    with pytest.raises(DetectorNotReadyError, match="archived"):
        service.detect(home, "d", X)
    with pytest.raises(ValueError, match="archived"):
        service.train(home, "d", X)
    service.activate(home, "d")
    service.detect(home, "d", X)  # stores a result (and its scores artifact)
    before = artifact_count(home)
    assert service.delete(home, "d") == 1
    assert artifact_count(home) == before - 1  # the result's scores went; the shared model stayed
    with pytest.raises(DetectorNotFoundError, match="no detector named 'd'"):
        service.show(home, "d")
    with pytest.raises(DetectorNotFoundError):
        service.delete(home, "d")
    m = service.load_for_scoring(home, "keep").model
    assert m.decision_function(X[:3]).shape == (3,)
    assert [d.name for d in service.list_detectors(home)] == ["keep"]


def test_datasets_and_results_are_recorded(home):
    X, _ = load_dataset("cardio")
    service.train(home, "d", X, params={"random_state": 0})
    r = service.detect(home, "d", X, contamination=0.05)
    assert abs(r.metrics["anomalies_detected"] - 0.05 * len(X)) <= 2
    with Repository(home) as repo:
        (meta,) = repo.results("d")
        back = repo.load_result(meta["id"])
        ds = repo.datasets()
    np.testing.assert_array_equal(back.scores, r.scores)
    np.testing.assert_array_equal(back.labels, r.labels)
    assert meta["anomalies_detected"] == r.metrics["anomalies_detected"] and back.threshold == r.threshold
    assert len(ds) == 1 and ds[0]["n_rows"] == X.shape[0] and ds[0]["n_columns"] == X.shape[1]
    assert meta["dataset_id"] == ds[0]["id"]
    with pytest.raises(ValueError, match="either threshold or contamination"):
        service.detect(home, "d", X, threshold=0.5, contamination=0.1)
    with pytest.raises(ValueError, match="trained on 21"):
        service.detect(home, "d", X[:, :5])


def test_each_anomalys_top_features_are_stored_with_the_result(home):
    """A detection asked for each anomaly's top K features keeps them with its result: loaded
    back they are equal, floats and names, to what the detection returned."""
    X, _ = load_dataset("cardio")
    service.train(home, "d", X, params={"random_state": 0, "n_estimators": 30})
    r = service.detect(home, "d", X, contamination=0.02, explain=True, top_k=3)
    assert sorted(r.top_features) == r.anomaly_indices.tolist()
    assert all(len(top) == 3 and top[0]["attribution"] >= top[2]["attribution"] for top in r.top_features.values())
    assert service.result(home, r.id).top_features == r.top_features
    assert service.result(home, service.detect(home, "d", X[:50]).id).top_features is None


# -- integrity -----------------------------------------------------------------------------------
def test_modified_artifact_is_refused(home):
    X, _ = load_dataset("cardio")
    service.train(home, "d", X, params={"random_state": 0})
    with Repository(home) as repo:
        sha = repo.versions("d")[0]["artifact"]
    damage_artifact(home, sha)
    with pytest.raises(ArtifactIntegrityError):
        service.load_for_scoring(home, "d")
    remove_artifact(home, sha)
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        service.load_for_scoring(home, "d")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_tampered_pickle_is_refused_before_unpickling(home, tmp_path):
    """Whoever can write the database (rows, artifacts) cannot make pynomaly unpickle: the
    signing key is not in the database (a database home keeps it in local_dir)."""
    pytest.importorskip("pyod")
    X, _ = load_dataset("cardio")
    service.train(home, "p", X, "pyod.ECOD")
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Payload(str(marker)))
    with Repository(home) as repo:
        sha = repo.put_artifact(evil)  # a well-formed, content-addressed artifact ...
    raw_sql(home, "UPDATE detector_versions SET artifact = ?", (sha,))  # ... swapped in behind its back
    with pytest.raises(ArtifactIntegrityError, match="not signed"):
        service.load_for_scoring(home, "p")
    assert not marker.exists()


def test_key_file_is_private_and_checked(home):
    pytest.importorskip("pyod")
    X, _ = load_dataset("cardio")
    service.train(home, "p", X, "pyod.ECOD")
    key = local_dir(home) / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    key.chmod(0o644)
    with pytest.raises(RepositoryError, match="chmod 600"):
        service.load_for_scoring(home, "p")
    key.chmod(0o600)
    key.write_bytes(os.urandom(32))  # another key: the stored signature no longer matches
    with pytest.raises(ArtifactIntegrityError, match="not signed"):
        service.load_for_scoring(home, "p")
    key.unlink()  # a replica without the shared key: a new one is made, and it does not check
    with pytest.raises(ArtifactIntegrityError, match="not signed"):
        service.load_for_scoring(home, "p")


def test_export_import_native_and_checksum(home, tmp_path):
    X, _ = load_dataset("cardio")
    service.train(home, "d", X, params={"random_state": 0})
    service.train(home, "d", X, params={"random_state": 9})
    f = service.export(home, "d", tmp_path / "d.pnx", version=1)
    det = service.import_detector(tmp_path / "b", f)
    assert det.name == "d" and det.version == 1 and det.status is DetectorStatus.ACTIVE
    src = service.load_for_scoring(home, "d", version=1).model
    dst = service.load_for_scoring(tmp_path / "b", "d").model
    np.testing.assert_array_equal(src.decision_function(X), dst.decision_function(X))
    again = service.import_detector(tmp_path / "b", f)  # importing again: the next version
    assert again.version == 2
    renamed = service.import_detector(tmp_path / "b", f, "edge")
    assert renamed.name == "edge" and renamed.version == 1
    raw = bytearray(f.read_bytes())
    for pos in (5, len(raw) // 2, len(raw) - 1):
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        (tmp_path / "bad.pnx").write_bytes(bytes(bad))
        with pytest.raises(ArtifactIntegrityError):
            service.import_detector(tmp_path / "c", tmp_path / "bad.pnx")
    (tmp_path / "short.pnx").write_bytes(raw[:40])
    with pytest.raises(ArtifactIntegrityError):
        service.import_detector(tmp_path / "c", tmp_path / "short.pnx")
    assert service.list_detectors(tmp_path / "c") == []


def test_export_import_pickle_needs_trust_elsewhere(home, tmp_path):
    pytest.importorskip("pyod")
    X, _ = load_dataset("cardio")
    service.train(home, "p", X, "pyod.ECOD")
    f = service.export(home, "p", tmp_path / "p.pnx")
    service.import_detector(home, f, "same-home")  # same key: accepted
    with pytest.raises(ArtifactIntegrityError, match="trust_pickle"):
        service.import_detector(tmp_path / "b", f)
    det = service.import_detector(tmp_path / "b", f, trust_pickle=True)
    a = service.load_for_scoring(home, "p").model
    b = service.load_for_scoring(tmp_path / "b", det.name).model  # re-signed with b's key
    np.testing.assert_array_equal(a.decision_function(X), b.decision_function(X))


def test_default_home(monkeypatch, tmp_path):
    monkeypatch.setenv("PYNOMALY_HOME", str(tmp_path / "h"))
    assert default_home() == tmp_path / "h"
    monkeypatch.delenv("PYNOMALY_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert default_home() == tmp_path / "xdg" / "pynomaly"
    with Repository() as repo:
        assert repo.home == default_home() and repo.home.is_dir()


def test_a_database_url_home_is_kept_as_given(monkeypatch):
    url = "postgresql://alice:s3cret@db.example/pynomaly?sslmode=require"
    monkeypatch.setenv("PYNOMALY_HOME", url)
    assert default_home() == url


def test_unusable_home_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RepositoryError, match="cannot create the pynomaly home folder"):
        Repository(tmp_path / "file" / "home")


# -- crash safety and concurrency ------------------------------------------------------------------
_WRITER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import pynomaly.repository as R
    from pynomaly import service
    home, where, data = sys.argv[1], sys.argv[2], sys.argv[3]
    X = np.load(data)["X"]

    def hang(*a, **k):
        print("in-save", flush=True)
        time.sleep(600)

    if where == "artifact":          # killed while the artifact file is being written
        os.fsync = hang
    elif where == "transaction":     # killed inside the transaction, after the INSERT
        orig = R.Repository._insert_version
        def insert_then_hang(self, *a, **k):
            orig(self, *a, **k)
            hang()
        R.Repository._insert_version = insert_then_hang
    service.train(home, "d", X, params={"random_state": 2})
    """
)


@pytest.mark.parametrize("where", ["artifact", "transaction"])
def test_writer_killed_mid_save_leaves_previous_version(home, where):
    if where == "artifact" and is_pg(home):
        pytest.skip("a database home writes no artifact file: its artifact is a row of the transaction")
    tmp_path = home
    X, _ = load_dataset("cardio")
    service.train(tmp_path, "d", X, params={"random_state": 1})
    before = service.load_for_scoring(tmp_path, "d").model
    from conftest import dataset_path

    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), where, str(dataset_path("cardio"))],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "in-save"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    det, after = service.load_model(tmp_path, "d")
    assert det.version == 1 and det.status is DetectorStatus.ACTIVE
    np.testing.assert_array_equal(after.decision_function(X), before.decision_function(X))
    with Repository(tmp_path) as repo:
        assert [v["version"] for v in repo.versions("d")] == [1]
    # And life goes on. Killed inside the transaction, the writer had already reserved v2 in the
    # version marks (durable before the commit): the number is skipped, never given to another model.
    # A database home's marks are rows of the same transaction: rolled back with it, nothing to skip.
    skipped = where == "transaction" and not is_pg(home)
    assert service.train(tmp_path, "d", X, params={"random_state": 2}).version == (3 if skipped else 2)


_WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pynomaly import service
    home, seed = sys.argv[1], int(sys.argv[2])
    X = np.random.default_rng(seed).standard_normal((300, 4))
    for i in range(3):
        det = service.train(home, "shared", X, params={"n_estimators": 10, "random_state": seed * 10 + i})
        m = service.load_for_scoring(home, "shared").model
        assert m.decision_function(X[:5]).shape == (5,)
        service.train(home, f"own-{seed}", X, params={"n_estimators": 10, "random_state": i})
        service.list_detectors(home)
    print("done", flush=True)
    """
)


def test_concurrent_processes(home):
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(home), str(s)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for s in range(1, 4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert out.strip() == "done"
    with Repository(home) as repo:
        versions = repo.versions("shared")
        assert [v["version"] for v in versions] == list(range(1, 10))  # none lost, none twice
        assert sorted(d.name for d in repo.list()) == ["own-1", "own-2", "own-3", "shared"]
        for v in versions:
            _, m = service.load_model(repo, "shared", version=v["version"])
            assert m.get_params()["random_state"] == v["parameters"]["random_state"]
        assert all(len(repo.versions(f"own-{s}")) == 3 for s in range(1, 4))


def test_delete_racing_a_save_of_identical_content(tmp_path):
    """Delete A while B is being saved with byte-identical content (one shared artifact):
    B's version must still load. (A folder home's race between a file and a transaction; a
    database home writes the artifact row in the version's transaction.)"""
    from pynomaly.domain import Detector

    X, _ = load_dataset("glass")
    model = registry.create("IsolationForest", n_estimators=20, random_state=0).fit(X)

    def trained(name):
        d = Detector(name=name, algorithm="IsolationForest", parameters={"n_estimators": 20, "random_state": 0})
        d.mark_trained(n_features=X.shape[1])
        d.activate()
        return d

    with Repository(tmp_path) as a, Repository(tmp_path) as b:
        a.add_version(trained("A"), model.to_bytes())
        real_put = Repository.put_artifact

        calls = []

        def put_then_other_process_deletes(self, data):
            sha = real_put(self, data)  # the file exists: nothing written ...
            if not calls:
                a.delete("A")  # ... and another process deletes the only detector using it
                assert not self._artifact_path(sha).exists()
            calls.append(sha)
            return sha

        b.put_artifact = put_then_other_process_deletes.__get__(b)
        b.add_version(trained("B"), model.to_bytes())
        _, loaded = service.load_model(b, "B")
    assert len(calls) == 2  # the second call re-wrote the file
    np.testing.assert_array_equal(loaded.decision_function(X), model.decision_function(X))


def test_a_retrain_replaces_a_corrupted_artifact_of_the_same_content(home):
    """Issue 16.1: the same data and parameters give byte-identical artifacts; a stored one that
    was damaged since must not be reused by the new version."""
    tmp_path = home
    X, _ = load_dataset("cardio")
    params = {"n_estimators": 20, "random_state": 7}
    service.train(tmp_path, "x", X, params=params)
    assert artifact_count(home) == 1
    with Repository(home) as repo:
        damage_artifact(home, repo.versions("x")[0]["artifact"])  # truncated where it is stored
    with pytest.raises(ArtifactIntegrityError):
        service.load_for_scoring(tmp_path, "x")
    assert service.train(tmp_path, "x", X, params=params).version == 2
    s = service.load_for_scoring(tmp_path, "x")  # v2, same content name, now intact again
    assert s.version.version == 2 and s.score(X[:5]).shape == (5,)
    _, v1 = service.load_model(tmp_path, "x", 1)  # and v1, which shares the file, is readable too
    np.testing.assert_array_equal(v1.decision_function(X[:5]), s.score(X[:5]))


def test_documented_submodules_work_after_a_plain_import():
    """Issue 16.11: ``import pynomaly; pynomaly.service.load_for_scoring`` as the README shows."""
    code = "import pynomaly, sys; assert 'pynomaly.service' not in sys.modules; pynomaly.service.load_for_scoring; pynomaly.registry.get"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_version_number_is_never_given_twice_and_doctor_reports_what_was_lost(tmp_path):
    """Issue 16.2: the database loses its latest versions (as with a removed -wal file under a
    killed writer); the next training must not reuse their numbers for other models, and
    doctor reports the loss and the orphaned artifacts, and repairs without losing anything.
    (A folder home: marks and artifacts are files that outlive the database's rows.)"""
    X, _ = load_dataset("cardio")
    for seed in (1, 2, 3):
        service.train(tmp_path, "x", X, params={"n_estimators": 10, "random_state": seed})
    db = sqlite3.connect(tmp_path / "pynomaly.db")
    db.execute("DELETE FROM detector_versions WHERE version >= 2")
    db.execute("UPDATE detectors SET version = 1 WHERE name = 'x'")
    db.commit()
    db.close()
    found = service.doctor(tmp_path)
    assert found["lost_versions"] == [{"detector": "x", "versions": [2, 3]}]
    assert len(found["orphan_artifacts"]) == 2 and not found["missing_artifacts"] and not found["repaired"]
    assert service.train(tmp_path, "x", X, params={"n_estimators": 10, "random_state": 4}).version == 4
    service.delete(tmp_path, "x")  # across a delete too: x v1 named a model once, never another
    assert service.train(tmp_path, "x", X, params={"n_estimators": 10, "random_state": 5}).version == 5
    fixed = service.doctor(tmp_path, repair=True)
    assert len(fixed["repaired"]) >= 2 and not any(Path(p).exists() for p in fixed["orphan_artifacts"])
    assert len(list((tmp_path / "lost+found").glob("*.zst"))) >= 2  # moved, not deleted
    again = service.doctor(tmp_path)
    assert not again["orphan_artifacts"] and not again["damaged_artifacts"]


def test_doctor_finds_missing_and_damaged_artifacts_and_unfinished_rows(home):
    tmp_path = home
    X, _ = load_dataset("cardio")
    service.train(tmp_path, "a", X, params={"n_estimators": 10, "random_state": 1})
    service.train(tmp_path, "b", X, params={"n_estimators": 10, "random_state": 2})
    with Repository(tmp_path) as repo:
        va, vb = repo.versions("a")[0]["artifact"], repo.versions("b")[0]["artifact"]
    remove_artifact(home, va)
    damage_artifact(home, vb, 4)
    # what an older pynomaly left after a killed first train
    raw_sql(home, "INSERT INTO detectors (id, name, algorithm, parameters, status, created_at, version)"
                  " VALUES ('zz', 'half', 'IsolationForest', '{}', 'created', '2026-01-01T00:00:00+00:00', 0)")
    found = service.doctor(tmp_path, repair=True)
    assert [m["used_by"] for m in found["missing_artifacts"]] == [["a v1"]]
    assert [m["used_by"] for m in found["damaged_artifacts"]] == [["b v1"]]
    assert found["unfinished"] == ["half"] and "half" not in [d.name for d in service.list_detectors(tmp_path)]


def test_doctor_rebuilds_damaged_version_marks(tmp_path):
    """(A folder home's marks file; a database home's marks are rows of its transactions.)"""
    X, _ = load_dataset("cardio")
    service.train(tmp_path, "a", X, params={"n_estimators": 5, "random_state": 1})
    service.train(tmp_path, "a", X, params={"n_estimators": 5, "random_state": 2})
    (tmp_path / "version-marks.json").write_text("{not json")
    with pytest.raises(RepositoryError, match="doctor --repair"):
        service.train(tmp_path, "a", X, params={"n_estimators": 5, "random_state": 3})
    found = service.doctor(tmp_path, repair=True)
    assert found["version_marks"] and any("marks" in r for r in found["repaired"])
    assert service.train(tmp_path, "a", X, params={"n_estimators": 5, "random_state": 3}).version == 3
