"""Container health probe: exit 0 when ``GET http://127.0.0.1:$TRDETR_PORT<path>`` answers 2xx, else 1.

The service images have no curl; this uses the standard library only. Usage::

    python healthcheck.py /healthz
    python healthcheck.py /metrics 9100     # another port (trdetr-worker's metrics)
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def probe(path: str, port: int, timeout_s: float = 2.0) -> bool:
    """True when the local service answers ``path`` with a 2xx status within ``timeout_s``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    port = int(argv[2]) if len(argv) > 2 else int(os.environ.get("TRDETR_PORT", "8000"))
    return 0 if probe(path, port) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
