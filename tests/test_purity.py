"""core/ and wire/ stay pure: no IO, clocks, randomness or concurrency imports.

The pure layers are driven by events and tested deterministically (simulator, hypothesis);
one ``import time`` there would make a test depend on the wall clock. This is the AST check
DESIGN.md section 2 asks for. It checks direct imports only; a self-test proves the checker
flags every import form, and the file count proves it looked at real modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "kevo_repl"
PURE_DIRS = ("core", "wire")
FORBIDDEN = frozenset(
    {
        "zmq",
        "lmdb",
        "structlog",
        "time",
        "random",
        "os",
        "threading",
        "asyncio",
        "socket",
        "subprocess",
        "select",
        "signal",
    }
)


def forbidden_imports(source: str, filename: str = "<string>") -> list[str]:
    """``"line: module"`` for every import of a forbidden top-level module in ``source``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        found.extend(
            f"{node.lineno}: {name}" for name in modules if name.split(".")[0] in FORBIDDEN
        )
    return found


def pure_modules() -> list[Path]:
    return sorted(p for d in PURE_DIRS for p in (PACKAGE_ROOT / d).rglob("*.py"))


@pytest.mark.parametrize(
    "source",
    [
        "import os",
        "import os.path",
        "import json, time",
        "import zmq as z",
        "from os import path",
        "from os.path import join",
        "from asyncio import sleep as s",
        "def f():\n    import random\n",
        "try:\n    import lmdb\nexcept ImportError:\n    pass\n",
        "if True:\n    from structlog import get_logger\n",
    ],
)
def test_checker_flags_every_import_form(source: str) -> None:
    assert forbidden_imports(source), source


@pytest.mark.parametrize(
    "source",
    [
        "import json",
        "import timeit",
        "import ossaudiodev",
        "from . import os",
        "from .time import x",
        "from kevo_repl.core import errors",
        "from typing import Final",
    ],
)
def test_checker_allows_lookalikes_and_relative_imports(source: str) -> None:
    assert forbidden_imports(source) == []


def test_checker_finds_real_modules() -> None:
    modules = pure_modules()
    names = {p.relative_to(PACKAGE_ROOT).as_posix() for p in modules}
    assert {"core/errors.py", "wire/batch.py", "wire/envelope.py"} <= names
    assert len(modules) >= 6


def test_core_and_wire_import_nothing_impure() -> None:
    violations = {
        p.relative_to(PACKAGE_ROOT).as_posix(): hits
        for p in pure_modules()
        if (hits := forbidden_imports(p.read_text(), str(p)))
    }
    assert violations == {}, f"impure imports in core/ or wire/: {violations}"
