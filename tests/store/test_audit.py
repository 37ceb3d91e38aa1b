"""The audit trail: every state-changing CLI command is recorded with who, what, when, from
where and the outcome (failures too); the hash chain catches an edited, a deleted or a
truncated entry (`pynomaly audit verify` exits 1); `--since` filters; the service function the
other faces call appends one entry per call. Tests taking ``home`` run on both backends (a
database home keeps the head mark in a table: see pynomaly.audit for what that can and cannot
show)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from pynomaly import InvalidInputError, service

from _homes import raw_sql


def run(*args, home, env=None, check=True):
    e = {k: v for k, v in os.environ.items() if not k.startswith("PYNOMALY_") or k == "PYNOMALY_CONFIG_DIR"}
    e.update(env or {})
    cmd = [sys.executable, "-m", "pynomaly", "--home", str(home), *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def test_audit_record_is_the_one_call_for_every_face(home):
    e1 = service.audit_record(home, actor="token:alice", action="token.create", target="bob",
                              origin="http 10.0.0.7", detail={"scopes": ["detect"]})
    e2 = service.audit_record(home, actor="token:mallory", action="refused", target="POST /detectors",
                              origin="http 10.0.0.9", outcome="forbidden")
    assert (e1["seq"], e2["seq"]) == (1, 2) and e2["prev"] == e1["hash"]
    got = service.audit_entries(home)
    assert [(e["actor"], e["action"], e["outcome"]) for e in got] == [
        ("token:alice", "token.create", "ok"), ("token:mallory", "refused", "forbidden")]
    assert got[0]["detail"] == {"scopes": ["detect"]} and got[0]["origin"] == "http 10.0.0.7"
    assert datetime.fromisoformat(got[0]["at"]).tzinfo is not None
    assert service.audit_verify(home) == {"ok": True, "entries": 2, "problems": []}
    # Default actor: this process's user.
    assert service.audit_record(home, action="x")["actor"].startswith(f"uid={os.getuid()}")
    for bad in ({"action": ""}, {"action": "x", "actor": 5}, {"action": "x", "detail": ["a"]}):
        with pytest.raises(InvalidInputError):
            service.audit_record(home, **bad)


def test_since(home):
    service.audit_record(home, action="old")
    # (Dated back through SQL for the test only; verify would see it, which is the point of the chain.)
    long_ago = (datetime.now(timezone.utc) - timedelta(days=3)).isoformat()
    raw_sql(home, "UPDATE audit SET at = ? WHERE seq = 1", (long_ago,))
    service.audit_record(home, action="new")
    assert [e["action"] for e in service.audit_entries(home, since="1d")] == ["new"]
    assert [e["action"] for e in service.audit_entries(home, since="2000-01-01")] == ["old", "new"]
    with pytest.raises(InvalidInputError, match="neither an ISO date"):
        service.audit_entries(home, since="yesterday")


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((300, 4)))
    return path


def test_cli_records_each_state_changing_command_with_its_outcome(home, tmp_path, data):
    run("train", "--detector", "d", "--data", data, home=home)
    run("detect", "--detector", "d", "--data", data, home=home)
    run("list", home=home)  # reads: not recorded
    run("archive", "d", home=home)
    run("activate", "d", home=home)
    run("export", "d", tmp_path / "d.pnx", home=home)
    run("import", tmp_path / "d.pnx", "--name", "e", home=home)
    p = run("delete", "nope", "--yes", home=home, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    run("delete", "e", "--yes", home=home)
    got = json.loads(run("audit", "--json", home=home).stdout)
    assert [(e["action"], e["target"].split(" ")[0], e["outcome"].split(":")[0]) for e in got] == [
        ("train", "d", "ok"), ("detect", "d", "ok"), ("archive", "d", "ok"), ("activate", "d", "ok"),
        ("export", "d", "ok"), ("import", str(tmp_path / "d.pnx"), "ok"), ("delete", "nope", "error"),
        ("delete", "e", "ok")]
    assert "no detector named 'nope'" in got[6]["outcome"]
    assert all(e["actor"].startswith(f"uid={os.getuid()}") and e["origin"].startswith("cli host=") for e in got)
    text = run("audit", home=home).stdout
    assert "WHO" in text and "archive" in text
    assert run("audit", "verify", home=home).stdout.startswith("audit trail intact: 8 entries")


def _tampered(home, data, how):
    run("train", "--detector", "d", "--data", data, home=home)
    for verb in ("archive", "activate", "archive"):
        run(verb, "d", home=home)
    how(lambda sql, params=(): raw_sql(home, sql, params))
    return run("audit", "verify", home=home, check=False)


@pytest.mark.parametrize("how, said", [
    (lambda sql: sql("UPDATE audit SET actor = 'uid=1(daemon)' WHERE seq = 2"), "entry 2 was modified"),
    # An edit that also recomputes the entry's own hash breaks the link to the next entry.
    (lambda sql: _rehash(sql, 2, outcome="error: nothing"), "entry 3 does not follow entry 2"),
    (lambda sql: sql("DELETE FROM audit WHERE seq = 3"), "entries 3..3 are missing"),
    (lambda sql: sql("DELETE FROM audit WHERE seq = 4"), "newest entries were deleted"),
], ids=["edited", "edited-and-rehashed", "deleted", "truncated"])
def test_verify_catches_edited_and_deleted_entries(home, data, how, said):
    p = _tampered(home, data, how)
    assert p.returncode == 1 and said in p.stdout and "Traceback" not in p.stderr


def test_verify_of_an_intact_trail_exits_0(home, data):
    p = _tampered(home, data, lambda sql: None)
    assert p.returncode == 0 and "intact: 4 entries" in p.stdout


def _rehash(sql, seq, **changes):
    from pynomaly.store.audit import _FIELDS, _hash

    row = dict(zip(_FIELDS, sql(f"SELECT {', '.join(_FIELDS)} FROM audit WHERE seq = ?", (seq,))[0]))
    row.update(changes)
    row["hash"] = _hash(row)
    sql("UPDATE audit SET outcome = ?, hash = ? WHERE seq = ?", (row["outcome"], row["hash"], seq))


def test_bad_since_is_one_line(tmp_path):
    p = run("audit", "--since", "last tuesday", home=tmp_path, check=False)
    assert p.returncode == 1 and "neither an ISO date" in p.stderr and "Traceback" not in p.stderr


def test_encrypted_home_from_the_command_line(tmp_path, data):
    pytest.importorskip("cryptography")
    home, key, key2 = tmp_path / "home", tmp_path / "kek", tmp_path / "kek2"
    out = run("--key-file", key, "init", "--encrypt", home=home).stdout
    assert "wrote a new key-encryption key" in out and (os.stat(key).st_mode & 0o777) == 0o600
    p = run("train", "--detector", "d", "--data", data, home=home, check=False)
    assert p.returncode == 1 and "is encrypted and no key was given" in p.stderr and "Traceback" not in p.stderr
    run("--key-file", key, "train", "--detector", "d", "--data", data, home=home)
    assert "d" in run("list", home=home).stdout  # no key needed to list
    p = run("--key-file", key, "export", "d", tmp_path / "d.pnx", home=home, check=False)
    assert p.returncode == 1 and "--export-key-file" in p.stderr
    run("--key-file", key, "export", "d", tmp_path / "d.pnx", "--export-key-file", tmp_path / "ek", home=home)
    run("import", tmp_path / "d.pnx", "--export-key-file", tmp_path / "ek", home=tmp_path / "plain")
    run("--key-file", key, "keys", "rotate", "--new-key-file", key2, home=home)
    p = run("--key-file", key, "detect", "--detector", "d", "--data", data, home=home, check=False)
    assert p.returncode == 1 and "does not open" in p.stderr
    run("detect", "--detector", "d", "--data", data, home=home, env={"PYNOMALY_KEY": key2.read_text().strip()})
    assert "re-encrypted" in run("--key-file", key2, "keys", "reencrypt", home=home).stdout
    # The trail of an encrypted home: who, where and how sealed (needs the key to read), except
    # what was written without the key (the refused train); the chain outlives re-encryption.
    p = run("audit", home=home, check=False)
    assert p.returncode == 1 and "no key was given" in p.stderr
    got = json.loads(run("--key-file", key2, "audit", "--json", home=home).stdout)
    assert [e["action"] for e in got] == ["init.encrypt", "train", "train", "export", "export", "keys.rotate",
                                          "detect", "detect", "keys.reencrypt"]
    assert [e["outcome"] == "ok" for e in got] == [True, False, True, False, True, True, False, True, True]
    assert all(e["actor"].startswith(f"uid={os.getuid()}") for e in got)
    stored = dict(raw_sql(home, "SELECT seq, actor FROM audit"))
    assert stored[3].startswith("enc1:") and stored[2].startswith("uid=")
    assert run("--key-file", key2, "audit", "verify", home=home).returncode == 0


def test_refusal_limiter_records_one_per_caller_and_second_and_counts_the_rest():
    from pynomaly.store.audit import RefusalLimiter

    lim = RefusalLimiter(interval=1.0, callers=3)
    assert lim.admit("a", 0.0) == 0
    assert lim.admit("a", 0.5) is None and lim.admit("a", 0.9) is None
    assert lim.admit("b", 0.9) == 0  # another caller is not held back
    assert lim.admit("a", 1.2) == 2  # the two left out, counted in the next entry
    assert lim.admit("a", 1.3) is None
    for i, c in enumerate("cdef"):  # more callers than it keeps: the old ones are forgotten
        lim.admit(c, 5.0 + i / 10)
    assert len(lim._last) <= 4 and lim.admit("a", 5.5) == 0
