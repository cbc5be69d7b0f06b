"""The checked-in Python API reference equals what ``tools/gen_api_docs.py`` generates."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import microtrio
import microtrio.testing

REPO = Path(__file__).resolve().parent.parent.parent
PAGE = REPO / "docs" / "reference" / "python-api.md"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_api_docs", REPO / "tools" / "gen_api_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_api_docs", module)
    spec.loader.exec_module(module)
    return module


def test_checked_in_page_is_up_to_date() -> None:
    generated = _generator().render()
    current = PAGE.read_text(encoding="utf-8")
    assert current == generated, (
        "docs/reference/python-api.md is out of date with the docstrings: "
        "run `python tools/gen_api_docs.py` and commit the page"
    )


def test_every_public_name_has_a_section() -> None:
    text = _generator().render()
    for module in (microtrio, microtrio.testing):
        for name in module.__all__:
            assert f"### `{module.__name__}.{name}`" in text, name
    assert " at 0x" not in text  # nothing machine-dependent
    assert str(REPO) not in text


def test_signature_and_docstring_are_rendered() -> None:
    text = _generator().render()
    section = text.split("### `microtrio.testing.open_cluster`", 1)[1].split("\n### ", 1)[0]
    assert "def open_cluster(size: int = 3, *, tmp_path:" in section
    assert "Start a `size`-member cluster" in section  # ``size`` became a code span


def test_check_mode_reports_a_stale_page(tmp_path: Path) -> None:
    generator = _generator()
    generator.OUTPUT = tmp_path / "python-api.md"
    generator.OUTPUT.write_text("stale\n", encoding="utf-8")
    generator.REPO = tmp_path
    assert generator.main(["--check"]) == 1
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0
