"""Generate ``docs/reference/python-api.md`` from the docstrings of the public Python API.

Every name in ``microtrio.__all__`` and ``microtrio.testing.__all__`` gets a section (in
alphabetical order): its signature and its docstring; a class also lists its public methods
and properties defined in the class itself, an enum its members. Nothing depends on the
machine (memory addresses and absolute paths are left out), so the output is stable.

Usage::

    python tools/gen_api_docs.py           # rewrite docs/reference/python-api.md
    python tools/gen_api_docs.py --check   # exit 1 if the checked-in page is out of date
"""

from __future__ import annotations

import argparse
import enum
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "docs" / "reference" / "python-api.md"
MODULES = ("microtrio", "microtrio.testing")
COMMAND = "python tools/gen_api_docs.py"

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
_UNDERLINE = re.compile(r"^\s*([-=~^])\1{2,}\s*$")

HEADER = f"""# Python API reference

Generated from the docstrings by `{COMMAND}`: do not edit by hand (a test
checks that this page matches the generator's output). It covers every name exported by `microtrio`
(`microtrio.__all__`) and by the test kit `microtrio.testing` (`microtrio.testing.__all__`).
Anything else is private and may change without notice.
"""


def _text(doc: str | None) -> str:
    """A docstring as Markdown: ``x`` and Sphinx roles become code spans, reST section
    underlines become bold lines (they would be page-level headings in Markdown)."""
    if not doc:
        return "*(no docstring)*"
    doc = _ROLE.sub(lambda m: f"`{m.group(1)}`", doc)
    doc = _LITERAL.sub(lambda m: f"`{m.group(1)}`", doc)
    lines = doc.strip().splitlines()
    out: list[str] = []
    for line in lines:
        if out and out[-1].strip() and _UNDERLINE.match(line) and len(line) >= len(out[-1]):
            out[-1] = f"**{out[-1].strip()}**"
            continue
        out.append(line)
    return "\n".join(out)


def _clean(text: str) -> str:
    text = _ADDRESS.sub("", text)
    return text.replace(str(REPO), "<repo>")


def _annotation(annotation: Any) -> str:
    if isinstance(annotation, str):  # ``from __future__ import annotations``: as written
        return annotation
    return inspect.formatannotation(annotation)


def _format(sig: inspect.Signature) -> str:
    """Like ``str(signature)`` but with annotations unquoted, as they are written."""
    parts: list[str] = []
    star_done = False
    kinds = [p.kind for p in sig.parameters.values()]
    for param in sig.parameters.values():
        kind = param.kind
        if kind is param.KEYWORD_ONLY and not star_done:
            parts.append("*")
        if kind in (param.VAR_POSITIONAL, param.KEYWORD_ONLY):
            star_done = True
        prefix = "*" if kind is param.VAR_POSITIONAL else "**" if kind is param.VAR_KEYWORD else ""
        text = prefix + param.name
        annotated = param.annotation is not param.empty
        if annotated:
            text += f": {_annotation(param.annotation)}"
        if param.default is not param.empty:
            text += f" = {param.default!r}" if annotated else f"={param.default!r}"
        parts.append(text)
        if kind is param.POSITIONAL_ONLY and param.POSITIONAL_ONLY not in kinds[len(parts) :]:
            parts.append("/")
    result = f"({', '.join(parts)})"
    if sig.return_annotation is not sig.empty:
        result += f" -> {_annotation(sig.return_annotation)}"
    return result


def _signature(obj: Any) -> str | None:
    try:
        return _clean(_format(inspect.signature(obj)))
    except (TypeError, ValueError):
        return None


def _kind(obj: Any) -> str:
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return "exception"
        if issubclass(obj, enum.Enum):
            return "enum"
        return "class"
    if inspect.iscoroutinefunction(obj):
        return "async function"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "function"
    return "data"


def _bases(cls: type) -> str:
    names = [b.__name__ for b in cls.__bases__ if b is not object]
    return f"({', '.join(names)})" if names else ""


def _members(cls: type) -> list[str]:
    """Public methods and properties defined in ``cls`` itself."""
    out: list[str] = []
    for name, raw in sorted(vars(cls).items()):
        if name.startswith("_"):
            continue
        if isinstance(raw, property):
            out += [f"#### `{cls.__name__}.{name}` (property)", "", _text(inspect.getdoc(raw)), ""]
            continue
        func = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
        if not (inspect.isfunction(func) or inspect.iscoroutinefunction(func)):
            continue
        prefix = "async " if inspect.iscoroutinefunction(func) else ""
        decorator = "classmethod " if isinstance(raw, classmethod) else ""
        decorator = "staticmethod " if isinstance(raw, staticmethod) else decorator
        signature = _signature(func) or "(...)"
        out += [
            f"#### `{cls.__name__}.{name}`",
            "",
            "```python",
            f"{decorator}{prefix}def {name}{signature}",
            "```",
            "",
            _text(inspect.getdoc(func)),
            "",
        ]
    return out


def _section(module: str, name: str, obj: Any) -> list[str]:
    kind = _kind(obj)
    out = [f"### `{module}.{name}`", "", f"*{kind}*", ""]
    if kind in ("class", "exception", "enum"):
        signature = _signature(obj) if kind == "class" else None
        out += ["```python", f"class {name}{_bases(obj)}", "```", ""]
        if signature is not None and signature != "()":
            out += ["```python", f"{name}{signature}", "```", ""]
        out += [_text(inspect.getdoc(obj)), ""]
        if kind == "enum":
            rows = [f"| `{m.name}` | `{m.value!r}` |" for m in obj]
            out += ["| Member | Value |", "|---|---|", *rows, ""]
        elif kind == "class":
            out += _members(obj)
    elif kind in ("function", "async function"):
        prefix = "async " if kind == "async function" else ""
        out += ["```python", f"{prefix}def {name}{_signature(obj) or '(...)'}", "```", ""]
        out += [_text(inspect.getdoc(obj)), ""]
    else:
        value = _clean(repr(obj))
        if len(value) > 100:
            value = value[:97] + "..."
        out += ["```python", f"{name}: {type(obj).__name__} = {value}", "```", ""]
    return out


def render() -> str:
    """The whole page (Markdown, ending with one newline)."""
    lines = [HEADER]
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        names = sorted(module.__all__, key=lambda n: (n.lower(), n))
        lines += [f"## `{module_name}`", "", _text(inspect.getdoc(module)), ""]
        lines += ["| Name | Kind |", "|---|---|"]
        lines += [f"| `{n}` | {_kind(getattr(module, n))} |" for n in names]
        lines.append("")
        for name in names:
            lines += _section(module_name, name, getattr(module, name))
    text = "\n".join(line.rstrip() for line in "\n".join(lines).splitlines())
    return text.rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the page is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(REPO)} is out of date: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
