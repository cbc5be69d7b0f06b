"""Launcher of the ``atheris_*.py`` harnesses (coverage-guided fuzzing, not run in CI).

Install atheris in your own environment (it is not a project dependency)::

    pip install atheris

Run a harness from the repository root for as long as you like; libFuzzer options pass
through (``-max_total_time`` in seconds, ``-jobs``/``-workers`` for parallel runs, a corpus
directory as the first argument keeps what it learns between runs, and an empty one is
first filled with the harness's ``SEEDS``)::

    mkdir -p /tmp/corpus-raft
    python -m tests.fuzz._atheris raft_codec /tmp/corpus-raft -max_total_time=3600

Harnesses: ``raft_codec``, ``frame``, ``log_reader``, ``text``. Only ``microtrio`` modules
are instrumented (instrumenting trio, hypercorn and cryptography too takes minutes and
buys nothing). A crash (an exception outside the harness's allowed error types) stops the
run and leaves ``crash-<sha1>`` with the input; replay it with
``python -m tests.fuzz._atheris raft_codec crash-<sha1>``. Every harness's ``one_input``
also runs in CI on its seeds and random inputs (tests/fuzz/test_atheris_harnesses.py), so
the harnesses cannot rot.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(f"usage: python -m tests.fuzz._atheris HARNESS [libFuzzer args]\n{__doc__}")
    try:
        import atheris  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        sys.exit("atheris is not installed: pip install atheris")
    package = __name__.rpartition(".")[0] or "tests.fuzz"
    with atheris.instrument_imports(include=["microtrio"]):
        harness = importlib.import_module(f"{package}.atheris_{argv[1]}")
    corpus = Path(argv[2]) if len(argv) > 2 and not argv[2].startswith("-") else None
    if corpus is not None and corpus.is_dir() and not any(corpus.iterdir()):
        for number, seed in enumerate(harness.SEEDS):  # start from the harness's seeds
            (corpus / f"seed-{number}").write_bytes(seed)
    atheris.Setup([argv[0], *argv[2:]], harness.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
