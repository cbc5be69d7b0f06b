"""Every relative link and anchor in docs/ resolves, and every page is in the mkdocs nav.

Pure Python (no mkdocs needed): links are read from the Markdown outside code, anchors are
the slugs Python-Markdown's ``toc`` extension gives headings (what mkdocs renders).
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"`+[^`]*`+")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def slugify(text: str) -> str:
    """Python-Markdown's default ``toc`` slug of a heading's rendered text."""
    text = re.sub(r"`([^`]*)`", r"\1", text)  # code spans render as their text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links render as their text
    text = re.sub(r"(\*\*|\*)", "", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for _, line in _prose_lines(path.read_text()):
        match = _HEADING.match(line)
        if match:
            slug = base = slugify(match.group(2))
            n = 0
            while slug in found:  # duplicates get -1, -2, ... as in toc
                n += 1
                slug = f"{base}_{n}"
            found.add(slug)
    return found


def broken_links(docs: Path) -> list[str]:
    """Every relative link or anchor under ``docs`` that does not resolve."""
    problems: list[str] = []
    for page in sorted(docs.rglob("*.md")):
        for number, line in _prose_lines(page.read_text()):
            for target in _LINK.findall(_CODE_SPAN.sub("", line)):
                if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                    continue  # http:, https:, mailto: ...
                where = f"{page.relative_to(docs)}:{number}: {target}"
                file_part, _, anchor = target.partition("#")
                dest = (page.parent / file_part).resolve() if file_part else page
                if not dest.is_file():
                    problems.append(f"{where}: no such file")
                    continue
                if docs.resolve() not in dest.parents:
                    problems.append(f"{where}: outside docs/ (the site would not have it)")
                    continue
                if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    problems.append(f"{where}: no heading with anchor #{anchor}")
    return problems


def _nav_pages(nav: object) -> set[str]:
    pages: set[str] = set()
    if isinstance(nav, str):
        pages.add(nav)
    elif isinstance(nav, list):
        for item in nav:
            pages |= _nav_pages(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            pages |= _nav_pages(value)
    return pages


def test_every_link_and_anchor_resolves() -> None:
    assert broken_links(DOCS) == []


def test_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages - nav == set(), "add these pages to the nav in mkdocs.yml"
    assert nav - pages == set(), "the nav in mkdocs.yml names pages that do not exist"


def test_the_checker_catches_breakage(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text(
        "# Title\n\n## Heartbeats and `cluster list`\n\n"
        "[ok](sub/b.md#the-b-page) [ok](#heartbeats-and-cluster-list) [web](https://x.y/z)\n"
        "`[not a link](nowhere.md)`\n\n```\n[not a link](nowhere.md)\n```\n"
        "[bad anchor](sub/b.md#nope) [bad file](missing.md) [outside](../x.md)\n"
    )
    (docs / "sub" / "b.md").write_text("# The B page\n\n[up](../a.md#title)\n")
    (tmp_path / "x.md").write_text("# outside\n")
    problems = broken_links(docs)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "sub/b.md#nope: no heading with anchor #nope",
        "missing.md: no such file",
        "../x.md: outside docs/ (the site would not have it)",
    ]


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Heartbeats and `cluster list`", "heartbeats-and-cluster-list"),
        ("SQL passthrough: better than microcluster", "sql-passthrough-better-than-microcluster"),
        ("Histories (`_history.py`)", "histories-_historypy"),
        ("1.6 REST building blocks", "16-rest-building-blocks"),
    ],
)
def test_slugs_match_python_markdown(heading: str, slug: str) -> None:
    assert slugify(heading) == slug
