"""``trdetr-serve`` as a real process on a free port, spoken to over real HTTP."""

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

import httpx
import numpy as np
import pytest
from svc_helpers import DEFAULT_BUNDLE, b64, manifest_of, npy_bytes, npz_bytes, random_groups, random_text

SERVE = Path(sys.executable).parent / "trdetr-serve"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any service configuration, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRDETR_") and k != "REDIS_URL"}
    return {**env, **values}


@contextmanager
def live_server(env: dict[str, str], port: int, timeout_s: float = 120) -> Iterator[httpx.Client]:
    """Run trdetr-serve until /readyz answers 200; SIGTERM it afterwards and check it exits cleanly."""
    process = subprocess.Popen([str(SERVE), "--port", str(port)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    client.server_pid = process.pid  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert process.poll() is None, f"trdetr-serve exited:\n{process.stdout.read()}"
            assert time.monotonic() < deadline, "trdetr-serve did not become ready"
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    output = process.stdout.read()
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status is 0 or -SIGTERM
    assert code in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output, output


def test_trdetr_serve_answers_over_http(small_bundle, redis_url, key_prefix):
    pre = manifest_of(small_bundle).preprocessing
    port = free_port()
    env = clean_env(TRDETR_BUNDLE_DIR=str(small_bundle), REDIS_URL=redis_url, TRDETR_REDIS_KEY_PREFIX=key_prefix,
                    TRDETR_INTRA_OP_THREADS="1", TRDETR_DEVICE="cpu")
    with live_server(env, port) as client:
        stored = client.put("/v1/videos/live/features", content=npz_bytes(**random_groups(pre, 11, seed=1)),
                            headers={"content-type": "application/x-npz"})
        assert stored.status_code == 200, stored.text
        query = {"features_b64": b64(npy_bytes(random_text(pre, 5, seed=2)))}
        answer = client.post("/v1/moments", json={"video_id": "live", "queries": [query], "top_k": 3})
        assert answer.status_code == 200, answer.text
        moments = answer.json()["results"][0]["moments"]
        assert 1 <= len(moments) <= 3 and np.isfinite([m["score"] for m in moments]).all()
        assert client.get("/v1/model").json()["bundle"] == small_bundle.name
        assert 'route="/v1/moments",status="200"' in client.get("/metrics").text


@pytest.mark.slow
def test_with_nothing_configured_it_serves_the_default_bundle_on_an_embedded_redis():
    if not (DEFAULT_BUNDLE / "manifest.json").exists():
        pytest.skip(f"the default bundle is not in this checkout ({DEFAULT_BUNDLE} has no manifest.json)")
    pre = manifest_of(DEFAULT_BUNDLE).preprocessing
    with live_server(clean_env(), free_port(), timeout_s=300) as client:
        model = client.get("/v1/model").json()
        assert model["bundle"] == DEFAULT_BUNDLE.name
        assert client.get("/readyz").json()["checks"]["feature_cache"] == "ok"
        stored = client.put("/v1/videos/default/features", content=npz_bytes(**random_groups(pre, 8, seed=3)),
                            headers={"content-type": "application/x-npz"})
        assert stored.status_code == 200, stored.text
        query = {"features_b64": b64(npy_bytes(random_text(pre, 6, seed=4)))}
        answer = client.post("/v1/highlights", json={"video_id": "default", "queries": [query]})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["results"][0]["clips"]) == 8
        if model["text_encoder"]:
            text = client.post("/v1/moments", json={"video_id": "default", "queries": ["a man plays the guitar"]})
            assert text.status_code == 200, text.text
