"""Type information ships with the package (issue 16.14): ``py.typed`` and a stub for the
native extension, kept honest against the module and checked by mypy on a typed usage file."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import pynomaly
from pynomaly import _core

from conftest import REPO

PKG = Path(pynomaly.__file__).parent


def test_the_package_is_marked_typed_and_ships_the_stub():
    assert (PKG / "py.typed").exists() and (PKG / "_core.pyi").exists()


def test_the_stub_names_exactly_what_the_extension_has():
    tree = ast.parse((REPO / "python" / "pynomaly" / "_core.pyi").read_text())
    in_stub = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")}
    in_module = {n for n in dir(_core) if not n.startswith("_")}
    assert in_stub == in_module, "regenerate: pybind11-stubgen pynomaly._core -o python (then review)"
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.startswith("_")):
        members = {m.name for m in cls.body if isinstance(m, ast.FunctionDef) and not m.name.startswith("__")}
        actual = {m for m in dir(getattr(_core, cls.name)) if not m.startswith("_")}
        assert members == actual, cls.name


def _doc_params(obj) -> list:
    """Parameter names from a pybind11 docstring's signature line, e.g. "f(x: int, k: int = 1)"."""
    import re

    line = (obj.__doc__ or "").strip().splitlines()[0]
    inside = line[line.index("(") + 1 : line.rindex(")")] if "(" in line else ""
    return [m.group(1) for m in re.finditer(r"(?:^|, )(\w+):", inside) if m.group(1) != "self"]


def test_the_stub_signatures_match_the_extensions():
    tree = ast.parse((REPO / "python" / "pynomaly" / "_core.pyi").read_text())

    def stub_params(fn: ast.FunctionDef) -> list:
        return [a.arg for a in fn.args.args if a.arg != "self"]

    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            assert stub_params(node) == _doc_params(getattr(_core, node.name)), node.name
        elif isinstance(node, ast.ClassDef):
            cls = getattr(_core, node.name)
            for m in node.body:
                if isinstance(m, ast.FunctionDef) and m.name != "__init__":
                    if any(isinstance(d, ast.Name) and d.id == "property" for d in m.decorator_list):
                        continue
                    assert stub_params(m) == _doc_params(getattr(cls, m.name)), f"{node.name}.{m.name}"


def test_mypy_sees_the_types():
    pytest.importorskip("mypy")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--warn-unused-ignores", "--no-incremental", "--follow-imports=silent",
         "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}", str(REPO / "tests" / "typing" / "usage.py")],
        capture_output=True, text=True, timeout=600, cwd=REPO / "tests" / "typing",
    )
    assert out.returncode == 0, out.stdout + out.stderr
