"""Shared knobs of the fuzz tests.

CI runs every property with a small number of examples (the whole folder stays well under
90 s on two loaded cores). A developer raises them for a long run::

    MICROTRIO_FUZZ_SCALE=100 pytest tests/fuzz -p no:cacheprovider

``examples(n)`` is ``n`` times the scale; deadlines are off (a loaded CI machine must not
turn a slow example into a failure). At scale 1 (CI) the examples are derandomized: the same
inputs on every run, so CI never fails on a draw it did not make before; a long run at a
higher scale draws at random and is where new inputs are found.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SCALE = max(1, int(os.environ.get("MICROTRIO_FUZZ_SCALE", "1")))


def fuzz_settings(examples: int, **extra: Any) -> settings:
    """Hypothesis settings for ``examples`` examples (times MICROTRIO_FUZZ_SCALE)."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=SCALE == 1 and os.environ.get("HYPOTHESIS_PROFILE") is None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        **extra,
    )


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply ``(kind, position, value)`` edits: 0 overwrite a byte, 1 insert, 2 delete,
    3 overwrite four bytes with ``value`` big-endian, 4 the same little-endian (so length
    and count fields get absurd values, not just flipped bits).

    Positions wrap around the current length, so any list of edits applies to any input.
    """
    buf = bytearray(data)
    for kind, position, value in edits:
        if not buf:
            buf.append(value & 0xFF)
            continue
        at = position % len(buf)
        if kind == 0:
            buf[at] = value & 0xFF
        elif kind == 1:
            buf.insert(at, value & 0xFF)
        elif kind == 2:
            del buf[at]
        else:
            word = value & 0xFFFFFFFF
            buf[at : at + 4] = word.to_bytes(4, "big" if kind == 3 else "little")
    return bytes(buf)


_VALUES = st.sampled_from([0, 1, 0x7F, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF]) | st.integers(0, 2**32 - 1)

edits = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 2**16), _VALUES), min_size=1, max_size=6
)
"""Strategy for the ``edits`` argument of :func:`mutate`."""
