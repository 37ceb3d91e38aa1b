"""Encrypted homes (``pynomaly init --encrypt``): every algorithm kind round-trips, no file
holds a dataset's values or a model's threshold in clear, a wrong or missing key is one clear
error that leaves nothing behind, tampered or swapped ciphertext is refused, key rotation and
re-encryption (killed half-way, then resumed) lose nothing, and exports stay encrypted."""

from __future__ import annotations

import base64
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cryptography")

from pynomaly import KeyRequiredError, service
from pynomaly.estimators import registry  # noqa: E402
from pynomaly.domain import Detector  # noqa: E402
from pynomaly.store.repository import ArtifactIntegrityError, Repository, RepositoryError  # noqa: E402

from conftest import load_dataset  # noqa: E402
from test_repository import _kinds, _need  # noqa: E402 - the same list of kinds as the plain round trip


def new_key(path: Path) -> Path:
    """A key file (base64 of 32 random bytes, mode 0600) outside any home."""
    service.create_key_file(path)
    return path


@pytest.fixture
def keyed(tmp_path, monkeypatch):
    """An encrypted home whose key file is in the environment: (home, key file)."""
    key = new_key(tmp_path / "kek")
    home = tmp_path / "home"
    service.init_home(home, encrypt=True, key=service.key_source(key_file=key))
    monkeypatch.setenv("PYNOMALY_KEY_FILE", str(key))
    monkeypatch.delenv("PYNOMALY_KEY", raising=False)
    monkeypatch.delenv("PYNOMALY_KEY_COMMAND", raising=False)
    return home, key


def all_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())


@pytest.mark.parametrize("algorithm, params, module", _kinds())
def test_every_kind_round_trips_in_an_encrypted_home(keyed, algorithm, params, module):
    _need(module)
    home, _ = keyed
    X, _ = load_dataset("thyroid")
    model = registry.create(algorithm, **params).fit(X)
    d = Detector(name="m", algorithm=algorithm, parameters=params)
    d.mark_trained(n_features=X.shape[1])
    d.activate()
    with Repository(home) as repo:
        repo.add_version(d, model.to_bytes(), format=getattr(model, "artifact_format", "native"),
                         threshold=model.threshold_)
    with Repository(home) as repo:
        _, loaded = service.load_model(repo, "m")
        assert repo.versions("m")[0]["threshold"] == model.threshold_
    np.testing.assert_array_equal(loaded.decision_function(X), model.decision_function(X))
    assert loaded.threshold_ == model.threshold_
    assert not list(home.rglob("*.zst"))  # nothing stored the plain way


def _secrets(X, threshold, source: Path) -> dict:
    # Values as a model file, the database (SQLite stores REAL big-endian) or text would hold them.
    out = {"threshold <f8": struct.pack("<d", threshold), "threshold >f8": struct.pack(">d", threshold),
           "threshold text": repr(threshold).encode(), "source path": str(source).encode(),
           "file name": source.name.encode()}
    for i in (0, 7, 100):
        out[f"row {i}"] = np.ascontiguousarray(X[i], "<f8").tobytes()
    return out


@pytest.mark.parametrize("algorithm", ["IsolationForest", "KNN"])  # KNN keeps its training rows
def test_no_file_holds_values_or_thresholds_in_clear(tmp_path, keyed, algorithm):
    home, _ = keyed
    X, _ = load_dataset("cardio")
    src = tmp_path / "patients-2026.npy"
    np.save(src, X)
    service.train(home, "d", src, algorithm, {"n_neighbors": 5} if algorithm == "KNN" else {"random_state": 0})
    result = service.detect(home, "d", src)  # a stored result and a dataset row too
    with Repository(home) as repo:
        threshold = repo.versions("d")[0]["threshold"]
        assert result.threshold == threshold and repo.datasets()[0]["source"] == str(src.resolve())
    data = all_bytes(home)
    found = [k for k, v in _secrets(X, threshold, src.resolve()).items() if v in data]
    assert found == []
    # The same check finds them in a plain home: it is not vacuous.
    plain = tmp_path / "plain"
    os.environ.pop("PYNOMALY_KEY_FILE")
    service.train(plain, "d", src, algorithm, {"n_neighbors": 5} if algorithm == "KNN" else {"random_state": 0})
    service.detect(plain, "d", src)
    plain_found = [k for k, v in _secrets(X, threshold, src.resolve()).items() if v in all_bytes(plain)]
    assert "threshold >f8" in plain_found and "source path" in plain_found


def test_listing_needs_no_key_and_everything_else_names_what_is_missing(keyed, monkeypatch):
    home, key = keyed
    X, _ = load_dataset("cardio")
    service.train(home, "d", X, params={"random_state": 0})
    monkeypatch.delenv("PYNOMALY_KEY_FILE")
    assert [d.name for d in service.list_detectors(home)] == ["d"]
    with pytest.raises(KeyRequiredError, match="PYNOMALY_KEY.*--key-file"):
        service.load_for_scoring(home, "d")
    # A wrong key: named as such; a training refused before anything is stored.
    monkeypatch.setenv("PYNOMALY_KEY", base64.b64encode(os.urandom(32)).decode())
    before = sorted(p.name for p in home.rglob("*") if p.is_file() and not p.name.startswith("pynomaly.db"))
    with pytest.raises(KeyRequiredError, match=r"\$PYNOMALY_KEY does not open"):
        service.train(home, "e", X)
    with pytest.raises(KeyRequiredError):
        service.train(home, "d", X)
    after = sorted(p.name for p in home.rglob("*") if p.is_file() and not p.name.startswith("pynomaly.db"))
    assert after == before and [d.version for d in service.list_detectors(home)] == [1]
    # Keys that are not keys.
    for bad, said in (("c2hvcnQ=", "5 bytes after base64"), ("not base64!", "not base64"),
                      ("password-password-password-12345", "32 bytes that are not base64")):  # not a raw key
        monkeypatch.setenv("PYNOMALY_KEY", bad)
        with pytest.raises(KeyRequiredError, match=said):
            service.load_for_scoring(home, "d")


def test_key_files_must_be_private_and_outside_the_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    inside = new_key(tmp_path / "k")
    os.chmod(inside, 0o644)
    with pytest.raises(KeyRequiredError, match="chmod 600"):
        service.init_home(home, encrypt=True, key=service.key_source(key_file=inside))
    home.mkdir(exist_ok=True)
    with pytest.raises(KeyRequiredError, match="inside the home"):
        service.init_home(home, encrypt=True, key=service.key_source(key_file=new_key(home / "k")))
    for var in ("PYNOMALY_KEY", "PYNOMALY_KEY_FILE", "PYNOMALY_KEY_COMMAND"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(KeyRequiredError, match="needs a key-encryption key kept outside it"):
        service.init_home(tmp_path / "h2", encrypt=True)
    assert not (tmp_path / "h2" / "keyring.json").exists()


def test_a_key_command(tmp_path):
    key = base64.b64encode(os.urandom(32)).decode()
    home = tmp_path / "home"
    service.init_home(home, encrypt=True, key=service.key_source(key_command=f"echo {key}"))
    X, _ = load_dataset("cardio")
    with Repository(home, key=service.key_source(key_command=f"echo {key}")) as repo:
        service.train(repo, "d", X, params={"random_state": 0})
        assert service.load_for_scoring(repo, "d").version.version == 1
    with pytest.raises(KeyRequiredError, match="exited with status 3: nope"):
        with Repository(home, key=service.key_source(key_command="echo nope >&2; exit 3")) as repo:
            repo.require_key()


def test_only_an_empty_home_is_made_encrypted(tmp_path):
    X, _ = load_dataset("cardio")
    service.train(tmp_path / "h", "d", X)
    with pytest.raises(RepositoryError, match="already holds data"):
        service.init_home(tmp_path / "h", encrypt=True, key=service.key_source(key_file=new_key(tmp_path / "k")))


def test_tampered_or_swapped_ciphertext_is_refused(keyed):
    home, _ = keyed
    X, _ = load_dataset("cardio")
    service.train(home, "a", X, params={"random_state": 0})
    service.train(home, "b", X, params={"random_state": 1})
    with Repository(home) as repo:
        path_a = repo._artifact_path(repo.versions("a")[0]["artifact"], Repository.version_context("a", 1))
    # One flipped bit.
    raw = bytearray(path_a.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path_a.write_bytes(bytes(raw))
    with pytest.raises(ArtifactIntegrityError, match="fails authentication"):
        service.load_for_scoring(home, "a")
    assert service.doctor(home)["damaged_artifacts"]
    # b's row repointed at a's blob (a file copied in, under the name the row expects): the
    # blob is bound to detector a version 1, so it is refused as b's.
    service.train(home, "a", X, params={"random_state": 0})  # a v2, intact
    db = sqlite3.connect(home / "pynomaly.db")
    with Repository(home) as repo:
        sha_a2 = repo.versions("a")[1]["artifact"]
        src = repo._artifact_path(sha_a2, Repository.version_context("a", 2))
        dst = repo._artifact_path(sha_a2, Repository.version_context("b", 1))
    db.execute("UPDATE detector_versions SET artifact = ? WHERE version = 1 AND detector_id = "
               "(SELECT id FROM detectors WHERE name = 'b')", (sha_a2,))
    db.commit()
    dst.write_bytes(src.read_bytes())
    with pytest.raises(ArtifactIntegrityError, match="belongs to another detector"):
        service.load_for_scoring(home, "b")
    # A sealed field moved to another row.
    t_a = db.execute("SELECT threshold FROM detector_versions WHERE version = 2").fetchone()[0]
    db.execute("UPDATE detector_versions SET threshold = ? WHERE version = 1 AND detector_id = "
               "(SELECT id FROM detectors WHERE name = 'b')", (t_a,))
    db.commit()
    db.close()
    with pytest.raises(ArtifactIntegrityError, match="fails authentication"):
        service.show(home, "b")


def test_rotate_rewraps_without_rewriting(keyed, tmp_path, monkeypatch):
    home, old = keyed
    X, _ = load_dataset("cardio")
    service.train(home, "d", X, params={"random_state": 0})
    ref = service.load_for_scoring(home, "d").model.decision_function(X)
    files = {p: p.read_bytes() for p in (home / "artifacts").rglob("*.pne")}
    new = new_key(tmp_path / "kek2")
    service.rotate_key(home, service.key_source(key_file=new))
    assert {p: p.read_bytes() for p in (home / "artifacts").rglob("*.pne")} == files
    from pynomaly.store.crypto import HomeCipher

    HomeCipher._deks.clear()  # as a new process would
    with pytest.raises(KeyRequiredError, match="does not open"):
        service.load_for_scoring(home, "d")
    monkeypatch.setenv("PYNOMALY_KEY_FILE", str(new))
    np.testing.assert_array_equal(service.load_for_scoring(home, "d").model.decision_function(X), ref)


_REENCRYPT_KILLED = textwrap.dedent(
    """
    import os, signal, sys
    import pynomaly.store._sealing as R  # where re-encryption rewrites the files
    from pynomaly import service
    real, n = R.atomic_write, [0]
    def write_then_die(path, data):
        real(path, data)
        n[0] += 1
        if n[0] == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
    R.atomic_write = write_then_die
    service.reencrypt(sys.argv[1])
    """
)


def test_reencrypt_killed_half_way_resumes_and_loses_nothing(keyed):
    home, key = keyed
    X, _ = load_dataset("cardio")
    for name in ("a", "b", "c"):
        service.train(home, name, X[:500], params={"random_state": 0})
        service.detect(home, name, X[:50])
    refs = {n: service.load_for_scoring(home, n).model.decision_function(X) for n in "abc"}
    results = {n: service.show(home, n)["results"][0]["threshold"] for n in "abc"}
    with Repository(home) as repo:
        old = repo._cipher.current()
    env = {**os.environ, "PYNOMALY_KEY_FILE": str(key)}
    proc = subprocess.run([sys.executable, "-c", _REENCRYPT_KILLED, str(home), "3"], env=env)
    assert proc.returncode == -signal.SIGKILL
    from pynomaly.store.crypto import HomeCipher

    HomeCipher._deks.clear()
    # Half-way: some files under the new key, some under the old; both keys are held, all reads.
    with Repository(home) as repo:
        ring = repo._cipher.ring()
        assert old in ring["keys"] and ring["current"] != old and ring["retiring"] == [old]
        ids = {HomeCipher.artifact_key_id(p.read_bytes()) for p in (home / "artifacts").rglob("*.pne")}
        assert ids == {old, ring["current"]}
    for n in "abc":
        np.testing.assert_array_equal(service.load_for_scoring(home, n).model.decision_function(X), refs[n])
    done = service.reencrypt(home)  # resumed
    assert done["retired"] == [old] and done["key"] == ring["current"]
    with Repository(home) as repo:
        assert list(repo._cipher.ring()["keys"]) == [done["key"]]
        ids = {HomeCipher.artifact_key_id(p.read_bytes()) for p in (home / "artifacts").rglob("*.pne")}
        assert ids == {done["key"]}
    HomeCipher._deks.clear()
    for n in "abc":
        np.testing.assert_array_equal(service.load_for_scoring(home, n).model.decision_function(X), refs[n])
        assert service.show(home, n)["results"][0]["threshold"] == results[n]
    assert service.doctor(home)["damaged_artifacts"] == []


def test_exports_of_an_encrypted_home_are_encrypted(keyed, tmp_path):
    home, _ = keyed
    X, _ = load_dataset("cardio")
    service.train(home, "d", X, params={"random_state": 0})
    ref = service.load_for_scoring(home, "d")
    with pytest.raises(KeyRequiredError, match="must be encrypted too"):
        service.export(home, "d", tmp_path / "d.pnx")
    assert not (tmp_path / "d.pnx").exists()
    ek = os.urandom(32)
    service.export(home, "d", tmp_path / "d.pnx", key=ek)
    raw = (tmp_path / "d.pnx").read_bytes()
    assert struct.pack("<d", ref.version.threshold) not in raw and b'"threshold"' not in raw
    with pytest.raises(KeyRequiredError, match="encrypted export"):
        service.import_detector(tmp_path / "other", tmp_path / "d.pnx")
    with pytest.raises(ArtifactIntegrityError, match="wrong export key"):
        service.import_detector(tmp_path / "other", tmp_path / "d.pnx", key=os.urandom(32))
    det = service.import_detector(tmp_path / "other", tmp_path / "d.pnx", key=ek)
    got = service.load_for_scoring(tmp_path / "other", det.name)
    np.testing.assert_array_equal(got.model.decision_function(X), ref.model.decision_function(X))
    assert got.version.threshold == ref.version.threshold


def test_importing_pynomaly_does_not_import_cryptography(tmp_path):
    code = ("import sys, numpy as np; from pynomaly import service; "
            "service.train(sys.argv[1], 'd', np.random.default_rng(0).standard_normal((200, 3))); "
            "service.load_for_scoring(sys.argv[1], 'd'); assert 'cryptography' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "h")], check=True)


def test_the_audit_trail_of_an_encrypted_home_is_sealed_and_survives_reencryption(keyed):
    home, _ = keyed
    for who in ("token:alice", "token:bob", "token:carol"):
        service.audit_record(home, actor=who, action="token.create", target="x", origin="http 10.1.2.3")
    assert b"alice" not in all_bytes(home) and b"10.1.2.3" not in all_bytes(home)
    service.reencrypt(home)
    assert service.audit_verify(home)["ok"]
    assert [e["actor"] for e in service.audit_entries(home)] == ["token:alice", "token:bob", "token:carol"]
    db = sqlite3.connect(home / "pynomaly.db")
    a1, a2 = (r[0] for r in db.execute("SELECT actor FROM audit ORDER BY seq LIMIT 2"))
    db.execute("UPDATE audit SET actor = ? WHERE seq = 1", (a2,))  # bob's sealed name moved onto entry 1
    db.commit()
    db.close()
    found = service.audit_verify(home)
    assert not found["ok"] and "entry 1 was modified" in found["problems"][0]
