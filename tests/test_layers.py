"""Imports point the intended way: faces (CLI, daemon) -> service -> repository and registry ->
estimators and adapters -> native core, with the domain module used by all and using none.
Read from the source files' import statements, so a wrong-way import fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PKG = REPO / "python" / "pynomaly"
DAEMON = REPO / "daemon" / "pynomaly_daemon"
API = REPO / "api" / "pynomaly_api"


def imports(path: Path, package: str) -> set:
    """Absolute names of the modules ``path`` imports (relative imports resolved in ``package``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def module_imports(path: Path) -> set:
    root = next(r for r in (PKG, DAEMON, API) if r in path.parents)
    rel = path.relative_to(root.parent).with_suffix("")
    package = ".".join(rel.parts[:-1])
    return imports(path, package)


def hits(names: set, forbidden) -> list:
    return sorted(n for n in names for f in forbidden if n == f or n.startswith(f + "."))


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_the_package_never_imports_its_faces(path):
    assert not hits(module_imports(path), ["pynomaly_daemon", "pynomaly_api"])


BELOW_THE_SERVICE = ["pynomaly._core", "pynomaly.iforest", "pynomaly.neighbors", "pynomaly.scores",
                     "pynomaly.repository", "pynomaly.registry", "pynomaly._format", "pynomaly.base"]


@pytest.mark.parametrize("path", sorted(DAEMON.rglob("*.py")) + sorted(API.rglob("*.py")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_faces_use_the_service_not_the_layers_below(path):
    assert not hits(module_imports(path), BELOW_THE_SERVICE)


@pytest.mark.parametrize("path", sorted(API.rglob("*.py")), ids=lambda p: p.name)
def test_the_faces_do_not_import_each_other(path):
    assert not hits(module_imports(path), ["pynomaly_daemon"])
    assert not hits(module_imports(DAEMON / "server.py"), ["pynomaly_api"])


def test_the_cli_reaches_the_repository_only_through_the_service():
    names = module_imports(PKG / "cli.py") | module_imports(PKG / "quickstart.py")
    assert not hits(names, ["pynomaly.repository", "pynomaly_daemon", "pynomaly.registry"])
    assert not hits(module_imports(PKG / "quickstart.py"), ["pynomaly.cli"])  # no cycle


def test_the_domain_uses_nothing_but_the_errors():
    names = {n for n in module_imports(PKG / "domain.py") if n.startswith("pynomaly")}
    assert names <= {"pynomaly._errors", "pynomaly._errors.PynomalyError"}


def test_the_repository_builds_no_models():
    assert not hits(module_imports(PKG / "repository.py"), ["pynomaly.registry", "pynomaly.service", "pynomaly._format"])
    assert "from_bytes" not in (PKG / "repository.py").read_text()


def test_the_service_and_adapters_use_no_private_names_of_other_modules():
    text = (PKG / "service.py").read_text()
    assert "_select" not in text and "._progress" not in text
    assert not hits(module_imports(PKG / "adapters" / "jax.py"), ["pynomaly.adapters.torch"])


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
