"""``python -m examples.kv``: microtrio's commands, with ``daemon`` running the KV service."""

from __future__ import annotations

import sys

from ..microd.cli import main
from .service import VERSION, daemon_args

if __name__ == "__main__":
    sys.exit(main(args_factory=daemon_args, prog="python -m examples.kv", version=VERSION))
