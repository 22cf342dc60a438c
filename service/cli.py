"""``trdetr-serve``: run the service with uvicorn, configured from the environment."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from service.app import create_app
from service.settings import Settings


def main(argv: list[str] | None = None) -> None:
    """Start uvicorn on ``TRDETR_HOST:TRDETR_PORT`` (overridable with --host/--port)."""
    parser = argparse.ArgumentParser(prog="trdetr-serve", description=__doc__)
    parser.add_argument("--host", help="bind address (default: TRDETR_HOST)")
    parser.add_argument("--port", type=int, help="port (default: TRDETR_PORT)")
    args = parser.parse_args(argv)
    overrides = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
        access_log=settings.log_level == "debug",  # per-request lines only when debugging; /metrics counts them
    )


if __name__ == "__main__":
    main()
