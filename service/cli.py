"""``trdetr-serve``: run the service with uvicorn, configured from the environment.

The bundle is loaded before uvicorn starts, so a start-up misconfiguration (invalid setting, missing
or damaged bundle, ``TRDETR_PRECISION=fp16`` without an fp16 graph, ``TRDETR_DEVICE=cuda`` without a
usable GPU) ends the process with one line saying what to fix and exit status 2; the traceback is
logged only with ``TRDETR_LOG_LEVEL=debug``. An unreachable ``REDIS_URL`` is not fatal: the service
starts and answers stored-video requests with 503 until Redis is back.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

import uvicorn
from pydantic import ValidationError

from service.app import create_app, load_bundle
from service.http_protocol import limited_protocol
from service.inference.bundle import BundleError
from service.inference.session import ProviderError
from service.settings import Settings
from trdetr_common.cli import HelpFormatter

log = logging.getLogger("trdetr-serve")

STARTUP_FAILURE = 2


def _fail(message: str) -> NoReturn:
    log.error("cannot start: %s", message)
    log.debug("traceback of the start-up failure", exc_info=True)
    sys.exit(STARTUP_FAILURE)


def _settings(overrides: dict[str, object]) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        _fail(f"invalid setting ({problems}); see the configuration table in README.md")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trdetr-serve", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--host", help="bind address (default: TRDETR_HOST)")
    parser.add_argument("--port", type=int, help="port (default: TRDETR_PORT)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Start uvicorn on ``TRDETR_HOST:TRDETR_PORT`` (overridable with --host/--port)."""
    args = build_parser().parse_args(argv)
    overrides = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    settings = _settings(overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        bundle = load_bundle(settings)
    except (BundleError, ProviderError) as exc:
        _fail(f"{exc} (TRDETR_BUNDLE_DIR={settings.bundle_dir}, TRDETR_PRECISION={settings.precision}, "
              f"TRDETR_DEVICE={settings.device})")
    uvicorn.run(
        create_app(settings, bundle), host=settings.host, port=settings.port, log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
        http=limited_protocol(settings.header_timeout_s, settings.max_connections),
        access_log=settings.log_level == "debug",  # per-request lines only when debugging; /metrics counts them
    )


if __name__ == "__main__":
    main()
