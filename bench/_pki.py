"""Write the benchmark cluster's PKI: ``python bench/_pki.py DIR`` (skips if present).

``cluster.crt/key`` (the listeners' certificate, SAN 127.0.0.1), ``memberN.crt/key`` (the
members' client certificates on the Raft channel) and ``client.crt/key`` (the load client's).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from microtrio._certs import generate_cert_key_pair, write_cert_key_pair  # noqa: E402


def main(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("cluster", "member1", "member2", "member3", "client"):
        crt, key = directory / f"{name}.crt", directory / f"{name}.key"
        if not crt.exists():
            cn = "microtrio-cluster" if name == "cluster" else name
            write_cert_key_pair(crt, key, generate_cert_key_pair(cn))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
