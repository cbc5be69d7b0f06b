"""Stage stamps inside benchmark daemons (``bench/trace_write.py``; nothing in the library
changes). Loaded by every Python process that has this directory on ``PYTHONPATH``; does
nothing unless ``MICROTRIO_TRACE_DIR`` is set. Stamps are ``time.monotonic()`` (one clock
for every process on the machine) and go to ``<dir>/<pid>.trace`` at exit, one
``<seconds> <stage>`` line each."""

from __future__ import annotations

import os

if os.environ.get("MICROTRIO_TRACE_DIR"):
    import _trace_hooks

    _trace_hooks.install(os.environ["MICROTRIO_TRACE_DIR"])
