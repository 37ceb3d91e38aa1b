"""Imports point down the layers (issue 21), read from every module's source: module-level
imports and those inside functions alike, each resolved to the module it names.

    faces      pynomaly.cli (its command groups and the quickstart), pynomaly_daemon, pynomaly_api
    serving    pynomaly.serving
    service    pynomaly.service
    client     pynomaly.client: the socket client, a library (loads no native code)
    store | estimators   (siblings: neither imports the other)
    binding | wire       pynomaly._core | pynomaly.wire, the socket protocol's Structs
    domain     pynomaly.domain, pynomaly._errors, pynomaly._optional (optional libraries, imported late)

An arrow may point down or stay in its layer; never up, never between the two siblings, never
between two faces, and never round in a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO

PKG = REPO / "python" / "pynomaly"
DAEMON = REPO / "daemon" / "pynomaly_daemon"
API = REPO / "api" / "pynomaly_api"
ROOTS = (PKG, DAEMON, API)


def module_name(path: Path) -> str:
    root = next(r for r in ROOTS if r == path.parent or r in path.parents)
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for root in ROOTS for p in sorted(root.rglob("*.py"))}


def _resolve(name: str):
    """The module ``name`` is, or is an attribute of (``pkg.mod.func`` -> ``pkg.mod``)."""
    while name and name not in MODULES and name != "pynomaly._core":
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path) -> set:
    """The modules of ours that ``path`` imports, anywhere in it."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            names = [f"{base}.{a.name}" for a in node.names] + [base]
            if any(_resolve(n) == n for n in names[:-1]):  # `from pkg import submodule`
                names = names[:-1]
        else:
            continue
        for n in names:
            r = _resolve(n)
            if r is not None and r != mod:
                out.add(r)
    return out


GRAPH = {m: imports(p) for m, p in MODULES.items()}

LAYERS = [  # (rank, prefixes): lower ranks are lower layers
    (0, ("pynomaly._errors", "pynomaly._optional", "pynomaly.domain")),
    (1, ("pynomaly._core",)),
    (1, ("pynomaly.wire",)),  # the socket protocol's Structs: the daemon's, the client's
    (2, ("pynomaly.estimators",)),
    (2, ("pynomaly.store",)),
    (2.5, ("pynomaly.client", "pynomaly._client_io")),  # a library for users and for faces that talk to a daemon
    (3, ("pynomaly.service",)),
    (4, ("pynomaly.serving",)),
    (5, ("pynomaly.cli", "pynomaly.__main__")),
    (5, ("pynomaly_daemon",)),
    (5, ("pynomaly_api",)),
]
# The package's own entry (lazy re-exports by name, see its __getattr__) and the table of old
# import paths sit outside the layers: nothing imports them but the import system.
OUTSIDE = {"pynomaly", "pynomaly._aliases"}


def layer(mod: str):
    for i, (rank, prefixes) in enumerate(LAYERS):
        if any(mod == p or mod.startswith(p + ".") for p in prefixes):
            return i, rank
    return None


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m not in OUTSIDE and layer(m) is None] == []


def test_the_entry_imports_only_the_domain_and_the_alias_table():
    allowed = {"pynomaly._errors", "pynomaly.domain", "pynomaly._aliases", "pynomaly._core"}  # _core: in build_info
    assert GRAPH["pynomaly"] - allowed == set()


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if m not in OUTSIDE))
def test_arrows_point_down(mod):
    here, rank = layer(mod)
    wrong = []
    for dep in sorted(GRAPH[mod]):
        if dep in OUTSIDE:
            if dep == "pynomaly" and rank == 5:
                continue  # faces may use the package's public names
            wrong.append(f"{dep} (outside the layers)")
            continue
        there, dep_rank = layer(dep)
        if dep_rank > rank:
            wrong.append(f"{dep} (up: layer {dep_rank} from {rank})")
        elif dep_rank == rank and there != here:
            wrong.append(f"{dep} (sideways: {LAYERS[there][1][0]} from {LAYERS[here][1][0]})")
    assert wrong == []


def test_no_import_cycles():
    """Tarjan's strongly connected components over the import graph; a package's __init__
    importing its own submodules is counted too (it is an edge like any other)."""
    index, low, on, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_service_layer_imports_one_way():
    """Inside the service: metrics is a leaf (every module counts in it), alerts counts in
    metrics, the use cases queue alerts, jobs runs the use cases; nothing imports back. The
    package's __init__ re-exports its modules and is left out."""
    service = {m: {d for d in GRAPH[m] if d.startswith("pynomaly.service.")}
               for m in MODULES if m.startswith("pynomaly.service.")}
    assert service["pynomaly.service.metrics"] == set()
    assert "pynomaly.service.jobs" not in set().union(*(service[m] for m in service if m != "pynomaly.service.jobs"))
    done = set()

    def down(m, path):
        assert m not in path, " -> ".join(path + [m])  # a cycle
        if m not in done:
            for d in sorted(service[m]):
                down(d, path + [m])
            done.add(m)

    for m in sorted(service):
        down(m, [])


def test_the_socket_client_loads_no_native_code():
    """An edge box with only the client: `import pynomaly.client` loads neither the core nor
    the service layer."""
    import subprocess
    import sys

    code = ("import pynomaly.client, sys; bad = sorted(m for m in sys.modules if m == 'pynomaly._core' or "
            "m.startswith(('pynomaly.service', 'pynomaly.store', 'pynomaly.serving'))); assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_the_store_builds_no_models():
    store = [m for m in MODULES if m.startswith("pynomaly.store")]
    assert not any("from_bytes" in MODULES[m].read_text() for m in store)


def test_the_service_and_adapters_use_no_private_names_of_other_modules():
    text = (PKG / "service" / "usecases.py").read_text()
    assert "_select" not in text and "._progress" not in text
    assert "pynomaly.estimators.adapters.torch" not in GRAPH["pynomaly.estimators.adapters.jax"]


def test_without_datasets_every_test_is_still_collected_with_a_reason(tmp_path):
    """Issue 16.13: a parametrisation over absent datasets must not collapse into an empty
    parameter set (pytest then shows "[NOTSET]" and no reason)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYNOMALY_DATASETS": str(tmp_path / "none")}
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(REPO / "tests")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "[NOTSET]" not in out.stdout


def test_skip_reasons_are_grouped_by_what_they_lack():
    """Issue 26: the end of a run says in one line what was skipped for lack of what."""
    from conftest import skip_summary

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
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYNOMALY_DATASETS": str(tmp_path / "none")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cardio",
                          str(REPO / "tests" / "estimators" / "test_scores.py")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    last = out.stdout.strip().splitlines()[-2:]
    assert last[0].startswith("skipped: ") and f"need the ADBench datasets in {tmp_path / 'none'}" in last[0], last
    assert "skipped" in last[1]


def test_objects_pickled_before_the_layers_still_load():
    """tests/data/pickled-before-layers.pkl was written by main before issue 21 (its classes are
    named pynomaly.iforest.IsolationForest and pynomaly.neighbors.LOF/KNN): they load as the
    same classes and score as they did."""
    import pickle

    import numpy as np

    import pynomaly

    with open(REPO / "tests" / "data" / "pickled-before-layers.pkl", "rb") as f:
        saved = pickle.load(f)
    for name, model in saved["models"].items():
        assert type(model) is getattr(pynomaly, name)
        np.testing.assert_array_equal(model.decision_function(saved["X"]), saved["scores"][name])


def test_old_import_paths_name_the_same_modules():
    import importlib

    from pynomaly import _aliases

    for old, new in _aliases.MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    import pynomaly.adapters.pyod
    import pynomaly.estimators.adapters.pyod

    assert pynomaly.adapters.pyod is pynomaly.estimators.adapters.pyod


# -- the store: the only SQL, and a floor of its own (issue 21) ---------------------------------
# A statement's opening words (SELECT also needs a FROM, or a bare `SELECT 1`-like probe), so that
# prose about SQL (docstrings are skipped anyway) or a message saying "update" is not taken for it.
_SQL = re.compile(r"^\s*(SELECT\b.*\bFROM\b|SELECT\s+[\d(]|INSERT\s+INTO\b|UPDATE\s+\w+\s+SET\b|DELETE\s+FROM\b"
                  r"|CREATE\s+(UNIQUE\s+)?(TABLE|INDEX)\b|ALTER\s+TABLE\b|DROP\s+(TABLE|INDEX)\b|PRAGMA\s+\w)",
                  re.S)


def _sql_strings(path: Path) -> list:
    """The string constants of ``path`` (f-strings' literal parts too) that read as SQL
    statements, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    texts, parts = [], set()
    for n in ast.walk(tree):
        if isinstance(n, ast.JoinedStr):  # an f-string: its literal parts, each {...} read as a name
            parts.update(id(v) for v in n.values)
            texts.append((n, "".join(v.value if isinstance(v, ast.Constant) else "x" for v in n.values)))
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
            texts.append((n, n.value))
    return [f"{path.name}:{n.lineno}: {text.strip()[:60]!r}" for n, text in texts
            if id(n) not in parts and _SQL.match(text)]


def test_the_sql_check_sees_statements_and_not_prose(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text('"""SELECT ... FOR UPDATE SKIP LOCKED, said in a docstring."""\n'
                      'a = "SELECT * FROM jobs WHERE id = ?"\nb = f"UPDATE {t} SET x = 1"\nc = "SELECT 1"\n'
                      'd = "INSERT INTO t VALUES (?)"\ne = "Update the detector first"\nf = "select a model"\n')
    assert [s.split(":")[1] for s in _sql_strings(sample)] == ["2", "3", "4", "5"]


def test_no_sql_outside_the_store():
    store = PKG / "store"
    found = [s for m, p in MODULES.items() if store not in p.parents for s in _sql_strings(p)]
    assert found == []


def test_the_store_imports_no_service_serving_or_face():
    up = ("pynomaly.service", "pynomaly.serving", "pynomaly.cli", "pynomaly.client", "pynomaly_daemon",
          "pynomaly_api")
    wrong = {m: sorted(d for d in GRAPH[m] if d.startswith(up)) for m in MODULES if m.startswith("pynomaly.store")}
    assert {m: d for m, d in wrong.items() if d} == {}


def test_the_store_has_no_import_cycle():
    """_home at the bottom, then _db (a resolved home), _schema (tables, open_database), the
    modules that own rows, the repository on top: no module imports one above it."""
    store = {m for m in MODULES if m.startswith("pynomaly.store.")}
    seen, done = set(), set()

    def visit(m, path):
        assert m not in seen - done, " -> ".join([*path, m])
        if m in done:
            return
        seen.add(m)
        for d in sorted(GRAPH[m] & store):
            visit(d, [*path, m])
        done.add(m)

    for m in sorted(store):
        visit(m, [])


def test_every_file_stays_within_one_concern():
    """Issue 21's limits: Python modules up to 600 lines, tests up to 800, C++ files up to 700."""
    def lines(p):
        return len(p.read_text().splitlines())

    big = {str(p.relative_to(REPO)): lines(p) for p in MODULES.values() if lines(p) > 600}
    big.update({str(p.relative_to(REPO)): lines(p) for p in (REPO / "tests").rglob("*.py") if lines(p) > 800})
    for folder in ("cpp", "python/src"):
        big.update({str(p.relative_to(REPO)): lines(p) for p in (REPO / folder).rglob("*")
                    if p.suffix in (".cpp", ".hpp") and lines(p) > 700})
    assert big == {}


def test_the_tests_follow_the_layers():
    """tests/<layer>/ for each layer's suites; only what spans them (layers, types, the domain,
    deployment) at the top."""
    top = sorted(p.name for p in (REPO / "tests").glob("test_*.py"))
    assert top == ["test_deploy.py", "test_domain.py", "test_layers.py", "test_typing.py"]
    for layer in ("estimators", "store", "service", "serving", "daemon", "api", "cli"):
        assert list((REPO / "tests" / layer).glob("test_*.py")), layer
