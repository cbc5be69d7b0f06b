"""The atheris harnesses' entry points run in CI (without atheris) so they cannot rot.

Each ``one_input`` gets its seeds, every one-byte truncation of them, and random inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from . import atheris_frame, atheris_log_reader, atheris_raft_codec, atheris_text
from ._fuzz import edits, fuzz_settings, mutate

HARNESSES = [atheris_raft_codec, atheris_frame, atheris_log_reader, atheris_text]


@pytest.mark.parametrize("harness", HARNESSES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_seeds_and_truncations(harness: ModuleType) -> None:
    one_input: Callable[[bytes], None] = harness.one_input
    assert harness.SEEDS
    for seed in harness.SEEDS:
        for cut in range(len(seed) + 1):
            one_input(seed[:cut])


@pytest.mark.parametrize("harness", HARNESSES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
@fuzz_settings(60)
@given(st.data())
def test_mutated_seeds(harness: ModuleType, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(harness.SEEDS))
    changes = data.draw(edits)
    harness.one_input(mutate(seed, changes))
    harness.one_input(data.draw(st.binary(max_size=80)))
