"""API extensions registry (reference 6.5).

The registry lists the internal extensions first, then the application's, in order.
Its "version" is the number of extensions. On the wire a one-element list is
serialised as a bare string (microcluster quirk); :func:`decode_extensions` accepts
either shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import final

from .._errors import ValidationError

__all__ = [
    "INTERNAL_EXTENSIONS",
    "ExtensionRegistry",
    "decode_extensions",
    "encode_extensions",
]

INTERNAL_EXTENSIONS: tuple[str, ...] = (
    "internal:runtime_extension_v1",
    "internal:rename_core_endpoints",
)

_EXTERNAL_RE = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")
_INTERNAL_RE = re.compile(r"^internal:[a-z0-9]+(_[a-z0-9]+)*$")


@final
class ExtensionRegistry:
    """Ordered, validated list of API extension names (internal ones first)."""

    __slots__ = ("_names",)

    def __init__(self, app_extensions: Iterable[str] = ()) -> None:
        names = list(INTERNAL_EXTENSIONS)
        for name in app_extensions:
            if not isinstance(name, str):
                raise ValidationError(f"API extension name must be a string: {name!r}")
            if name.startswith("internal:") or _INTERNAL_RE.match(name):
                raise ValidationError(f"Cannot register internal API extension {name!r}")
            if not _EXTERNAL_RE.match(name):
                raise ValidationError(f"Invalid API extension name {name!r}")
            if name in names:
                raise ValidationError(f"Duplicate API extension {name!r}")
            names.append(name)
        self._names: tuple[str, ...] = tuple(names)

    @property
    def names(self) -> list[str]:
        """All extension names, internal first (a fresh list)."""
        return list(self._names)

    @property
    def version(self) -> int:
        """The number of extensions."""
        return len(self._names)

    def has(self, name: str) -> bool:
        """Whether ``name`` is a registered extension."""
        return name in self._names

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ExtensionRegistry):
            return self._names == other._names
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._names)

    def __repr__(self) -> str:
        return f"ExtensionRegistry({list(self._names)!r})"


def encode_extensions(names: Sequence[str]) -> str | list[str]:
    """Wire shape of an extension list: a bare string for exactly one element."""
    if len(names) == 1:
        return names[0]
    return list(names)


def decode_extensions(value: object) -> list[str]:
    """Accept a list of strings, a bare string (one element) or None (empty)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValidationError(f"Invalid API extensions value: {value!r}")
