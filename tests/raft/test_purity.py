"""The Raft core is pure: no trio, no sockets, no clock, no disk, no global random."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import microtrio.raft

RAFT_DIR = Path(microtrio.raft.__file__).parent
MODULES = sorted(RAFT_DIR.glob("*.py"))

FORBIDDEN_MODULES = {
    "asyncio", "os", "pathlib", "select", "selectors", "shutil", "socket", "ssl",
    "subprocess", "threading", "time", "trio", "datetime", "io", "tempfile", "sqlite3", "apsw",
    "pickle", "marshal", "shelve",
}  # fmt: skip
FORBIDDEN_CALLS = {"open", "input", "print", "exec", "eval", "__import__"}


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root in FORBIDDEN_MODULES:
                    out.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            root = (node.module or "").split(".")[0]
            if node.level == 0 and root in FORBIDDEN_MODULES:
                out.append(f"line {node.lineno}: from {node.module} import ...")
            if node.level == 0 and root == "random":
                names = [a.name for a in node.names if a.name != "Random"]
                if names:
                    out.append(f"line {node.lineno}: from random import {names}")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                out.append(f"line {node.lineno}: call {func.id}()")
        elif isinstance(node, ast.Attribute):
            # random.<anything but Random> is the hidden global generator.
            if isinstance(node.value, ast.Name) and node.value.id == "random":
                if node.attr != "Random":
                    out.append(f"line {node.lineno}: random.{node.attr}")
    return out


def test_raft_package_has_modules() -> None:
    assert len(MODULES) >= 5


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_is_pure(path: Path) -> None:
    assert _problems(path) == []


def test_checker_catches_impurity(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import time\nimport trio.lowlevel\nfrom os import path\nimport random\n"
        "x = random.random()\nopen('f')\nfrom random import randint\n"
    )
    problems = _problems(bad)
    assert len(problems) == 6, problems
