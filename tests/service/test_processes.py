"""Processes (issue 14, items 10-11): no embedded redis-server outlives trdetr-serve; misconfiguration is
one clear line and a non-zero exit."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from test_live_server import SERVE, clean_env, free_port, live_server


def redis_servers_under(marker: Path) -> list[int]:
    """Pids of redis-server processes whose command line mentions ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "redis-server" in cmdline and str(marker) in cmdline:
            found.append(int(proc.name))
    return found


def wait_gone(marker: Path, timeout_s: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := redis_servers_under(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def start(env: dict[str, str], port: int) -> subprocess.Popen:
    return subprocess.Popen([str(SERVE), "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_no_embedded_redis_outlives_the_service_on_any_exit_path(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = clean_env(TMPDIR=str(tmp), TRDETR_DEVICE="cpu", TRDETR_INTRA_OP_THREADS="1", TRDETR_WARMUP_RUNS="0")

    # 1. stopped with SIGTERM (via live_server), then 2. with SIGINT
    with live_server(env, free_port()):
        assert redis_servers_under(tmp), "the embedded redis-server was not started under TMPDIR"
    assert not wait_gone(tmp)
    port = free_port()
    with live_server(env, port) as client:
        process_pid = client.server_pid
        # 3. a second service on the same port fails to start (its own redis must go too)
        blocked = start(env, port)
        assert blocked.wait(timeout=120) != 0
        os.kill(process_pid, signal.SIGINT)
        for _ in range(100):
            if not Path(f"/proc/{process_pid}").exists() or "zombie" in Path(f"/proc/{process_pid}/status").read_text():
                break
            time.sleep(0.1)
    assert not wait_gone(tmp)

    # 4. killed with SIGKILL: the kernel stops its redis-server (parent-death signal)
    killed = start(env, free_port())
    deadline = time.monotonic() + 120
    while not redis_servers_under(tmp) and time.monotonic() < deadline:
        time.sleep(0.1)
    killed.kill()
    killed.wait()
    assert not wait_gone(tmp)

    # 5. its data directory deleted while it runs, then SIGTERM
    data = tmp_path / "data"
    with live_server({**env, "TRDETR_EMBEDDED_REDIS_DIR": str(data)}, free_port()):
        shutil.rmtree(data)
    assert not wait_gone(tmp) and not wait_gone(data)

    # 6. a start that fails on a missing bundle
    missing = start({**env, "TRDETR_BUNDLE_DIR": str(tmp_path / "none")}, free_port())
    assert missing.wait(timeout=120) == 2
    assert not redis_servers_under(tmp)


@pytest.mark.parametrize(
    ("variables", "words"),
    [
        ({"TRDETR_BUNDLE_DIR": "/nonexistent/bundle"}, ["cannot read the bundle manifest", "TRDETR_BUNDLE_DIR"]),
        ({"TRDETR_PRECISION": "fp16"}, ["no fp16 graph"]),
        ({"TRDETR_PRECISION": "int8"}, ["no int8 graph", "trdetr-export --int8"]),
        ({"TRDETR_DEVICE": "cuda"}, ["TRDETR_DEVICE=cuda"]),
        ({"TRDETR_MAX_BATCH_SIZE": "lots"}, ["invalid setting", "max_batch_size"]),
    ],
    ids=["missing-bundle", "fp16-without-graph", "int8-without-graph", "cuda-without-gpu", "bad-value"],
)
def test_start_up_misconfiguration_is_one_line_and_a_non_zero_exit(small_bundle, variables, words):
    import onnxruntime as ort

    if variables.get("TRDETR_DEVICE") == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine's onnxruntime has CUDA")
    env = clean_env(**{"TRDETR_BUNDLE_DIR": str(small_bundle), **variables})
    result = subprocess.run([str(SERVE), "--port", str(free_port())], env=env, capture_output=True, text=True,
                            timeout=120)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output
    assert len(output.splitlines()) == 1 and "Traceback" not in output, output
    for word in words:
        assert word in output, (word, output)


def test_the_traceback_is_there_at_debug_level(small_bundle):
    env = clean_env(TRDETR_BUNDLE_DIR="/nonexistent/bundle", TRDETR_LOG_LEVEL="debug")
    result = subprocess.run([str(SERVE), "--port", str(free_port())], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "Traceback" in result.stderr + result.stdout


def test_an_unreachable_redis_url_is_not_fatal(small_bundle):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    env = clean_env(TRDETR_BUNDLE_DIR=str(small_bundle), REDIS_URL=f"redis://127.0.0.1:{dead_port}/0",
                    TRDETR_DEVICE="cpu", TRDETR_INTRA_OP_THREADS="1")
    with live_server(env, free_port()) as client:
        assert client.get("/readyz").json()["checks"]["feature_cache"] == "unreachable"
