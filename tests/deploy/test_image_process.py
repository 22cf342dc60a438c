"""The service images' process contract, run without Docker: the image's CMD with the image's ENV.

``trdetr-serve`` is started with exactly the environment the Dockerfile's service stages set (only the
bundle path, port and writable directories moved to this machine), then probed with the image's own
HEALTHCHECK script, and stopped with SIGTERM as ``docker stop`` / Kubernetes do.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dockerfile
import pytest
from deploy_helpers import DOCKER_DIR, REPO, load_docker_script

healthcheck = load_docker_script("healthcheck")
DEFAULT_BUNDLE = REPO / "service" / "default_bundle"
START_BUDGET_S = 90.0


def image_environment(target: str) -> dict[str, str]:
    """ENV of ``target`` and the stages it is built FROM, in Dockerfile order."""
    stages: dict[str, tuple[str, dict[str, str]]] = {}
    name = ""
    for command in dockerfile.parse_file(str(DOCKER_DIR / "Dockerfile")):
        if command.cmd == "FROM":
            name = command.value[-1]
            stages[name] = (command.value[0], {})
        elif command.cmd == "ENV":
            stages[name][1].update(zip(command.value[::2], command.value[1::2], strict=True))
    env: dict[str, str] = {}
    while target in stages:
        parent, own = stages[target]
        env = {**own, **env}
        target = parent
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(path: str, port: int, process: subprocess.Popen[bytes], budget_s: float) -> float:
    """Seconds until ``path`` answers 2xx; fails if the process dies or the budget runs out."""
    start = time.monotonic()
    while time.monotonic() - start < budget_s:
        if process.poll() is not None:
            pytest.fail(f"trdetr-serve exited with {process.returncode} before {path} answered")
        if healthcheck.probe(path, port, timeout_s=1.0):
            return time.monotonic() - start
        time.sleep(0.2)
    pytest.fail(f"{path} did not answer within {budget_s} s")


@contextmanager
def serve_like_the_image(bundle: Path, workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, dict[str, str]]]:
    env = image_environment("cpu")
    port = _free_port()
    env.update(
        TRDETR_BUNDLE_DIR=str(bundle), TRDETR_PORT=str(port), HOME=str(workdir), TMPDIR=str(workdir),
        TRDETR_INGEST_DIR=str(workdir / "ingest"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    log = (workdir / "serve.log").open("wb")
    process = subprocess.Popen(["trdetr-serve"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        yield process, port, env
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


@pytest.mark.slow
def test_image_cmd_becomes_healthy_then_ready_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        pytest.skip("service/default_bundle/ is not in the repo yet: the image has no bundle to serve")
    with serve_like_the_image(DEFAULT_BUNDLE, tmp_path) as (process, port, env):
        assert env["TRDETR_HOST"] == "0.0.0.0" and env["TRDETR_DEVICE"] == "cpu"
        _wait_for("/healthz", port, process, START_BUDGET_S)
        _wait_for("/readyz", port, process, START_BUDGET_S)
        result = subprocess.run([sys.executable, str(DOCKER_DIR / "healthcheck.py"), "/healthz"], env=env)
        assert result.returncode == 0, "the HEALTHCHECK command fails against a healthy service"
        process.send_signal(signal.SIGTERM)
        grace_s = float(env["TRDETR_GRACEFUL_SHUTDOWN_S"])
        try:
            returncode = process.wait(timeout=grace_s + 5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {grace_s + 5} s after SIGTERM:\n{(tmp_path / 'serve.log').read_text()}")
    log = (tmp_path / "serve.log").read_text()
    # uvicorn drains, then re-raises the signal: exit status 0, or "killed by SIGTERM" (143 in Docker).
    assert returncode in (0, -signal.SIGTERM), log
    assert "Application shutdown complete" in log, log


def test_image_environment_follows_the_stage_chain() -> None:
    env = image_environment("gpu")
    assert env["TRDETR_DEVICE"] == "cuda" and env["TRDETR_BUNDLE_DIR"] == "/opt/trdetr/bundle"
    assert image_environment("cpu")["TRDETR_DEVICE"] == "cpu"
