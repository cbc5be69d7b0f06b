"""``python -m examples.kv``: microtrio's commands, with ``daemon`` running the KV service."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
