"""Test-suite root: pytest puts this folder on sys.path, so helpers shared by several test
folders (``_member_support``) import by their module name.

Property tests (hypothesis) draw the same inputs on every run (profile ``microtrio-ci``,
derandomized), so the suite never fails on a draw it did not make before; a long random
exploration runs with ``HYPOTHESIS_PROFILE=default`` (and ``MICROTRIO_FUZZ_SCALE`` for
tests/fuzz)."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("microtrio-ci", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "microtrio-ci"))
