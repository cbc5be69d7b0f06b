"""Join-token secrets are compared in constant time, everywhere (issue 8).

Expiry on the leader, single use under concurrent joins and the failed-admission rate limit
are tested with the admission itself in ``tests/cluster/test_admission.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import apsw
import pytest

import microtrio
from microtrio._cluster import _admission
from microtrio._cluster._tokens import secrets_equal

SOURCE = Path(microtrio.__file__).parent


def _names(node: ast.expr) -> list[str]:
    found = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            found.append(sub.id)
        elif isinstance(sub, ast.Attribute):
            found.append(sub.attr)
    return found


def secret_comparisons(tree: ast.AST) -> list[int]:
    """Lines comparing something named like a secret with ``==``/``!=``/``in``."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        if not any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops):
            continue
        operands = [node.left, *node.comparators]
        names = [n.lower() for operand in operands for n in _names(operand)]
        if any("secret" in n for n in names):
            lines.append(node.lineno)
    return lines


def test_no_secret_is_compared_with_equality() -> None:
    offenders = []
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        offenders += [f"{path.relative_to(SOURCE)}:{line}" for line in secret_comparisons(tree)]
    assert not offenders, f"compare secrets with secrets_equal (constant time): {offenders}"


def test_the_scan_finds_an_equality_comparison() -> None:
    source = "if token.secret == candidate:\n    pass\nok = secret in known\nk = 'secret' in body\n"
    assert secret_comparisons(ast.parse(source)) == [1, 3]


def test_secrets_equal() -> None:
    assert secrets_equal("abc", "abc")
    assert not secrets_equal("abc", "abd")
    assert not secrets_equal("abc", "abcd")
    assert not secrets_equal("", "x")


def test_token_lookup_compares_every_secret_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The leader compares the candidate with EVERY stored secret through secrets_equal
    (no early exit that would tell, by timing, how many tokens come before a match)."""
    seen: list[tuple[str, str]] = []

    def spy(a: str, b: str) -> bool:
        seen.append((a, b))
        return secrets_equal(a, b)

    monkeypatch.setattr(_admission, "secrets_equal", spy)
    conn = apsw.Connection(":memory:")
    conn.execute("CREATE TABLE core_token_records (name TEXT, secret TEXT, expiry_date TEXT)")
    for name, secret in (("a", "s-one"), ("b", "s-two"), ("c", "s-three")):
        conn.execute("INSERT INTO core_token_records VALUES (?, ?, NULL)", (name, secret))
    assert _admission._find_token(conn, "s-one") == ("a", None)
    assert sorted(seen) == sorted([("s-one", "s-one"), ("s-two", "s-one"), ("s-three", "s-one")])
    seen.clear()
    assert _admission._find_token(conn, "s-nope") is None
    assert len(seen) == 3
