"""Denial of service (issue 14, items 1-4): hostile bodies, npz bombs, Redis pool exhaustion, deadlines.

The live-server tests speak real HTTP over real sockets to one ``trdetr-serve`` process, bounded in
count and time; the others run the app in process against the real Redis.
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from svc_helpers import b64, manifest_of, npy_bytes, npz_bytes, random_groups, random_text, serve
from test_live_server import clean_env, free_port, live_server

NPZ = {"content-type": "application/x-npz"}


@pytest.fixture(scope="module")
def pre(small_bundle):
    return manifest_of(small_bundle).preprocessing


def query(pre) -> dict:
    return {"features_b64": b64(npy_bytes(random_text(pre, 4, seed=1)))}


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def npz_bomb(pre, clips: int) -> bytes:
    """A deflated .npz of zeros: a few hundred KB that inflate to ``clips`` full rows per group."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for group in pre.video_groups:
            archive.writestr(f"{group.name}.npy", npy_bytes(np.zeros((clips, group.dim), np.float32)))
    return buffer.getvalue()


class HealthProbe:
    """Polls /healthz from a thread and records the slowest answer."""

    def __init__(self, base_url: str) -> None:
        self.base_url, self.worst_s, self.stop = base_url, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                assert client.get("/healthz").status_code == 200
                self.worst_s = max(self.worst_s, time.monotonic() - started)
                time.sleep(0.01)

    def __enter__(self) -> HealthProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def live(small_bundle, redis_url, key_prefix):
    port = free_port()
    env = clean_env(TRDETR_BUNDLE_DIR=str(small_bundle), REDIS_URL=redis_url, TRDETR_REDIS_KEY_PREFIX=key_prefix,
                    TRDETR_INTRA_OP_THREADS="1", TRDETR_DEVICE="cpu", TRDETR_REQUEST_TIMEOUT_S="2")
    with live_server(env, port) as client:
        yield client


# --- item 1: JSON bodies ---------------------------------------------------------------------------
@pytest.mark.slow
def test_a_hostile_json_body_neither_stalls_the_loop_nor_balloons_memory(live):
    body = orjson.dumps({"video_id": "x", "queries": ["a"] * 1_300_000})  # ~5.2 MB: over the JSON limit
    small = orjson.dumps({"video_id": "x", "queries": ["a"] * 1_000_000})  # ~4.0 MB: within it
    assert len(small) <= 4 * 1024 * 1024 < len(body)
    before = peak_rss_bytes(live.server_pid)
    with HealthProbe(str(live.base_url)) as probe:
        refused = live.post("/v1/moments", content=body, headers={"content-type": "application/json"})
        answered = live.post("/v1/moments", content=small, headers={"content-type": "application/json"})
    assert refused.status_code == 413 and "TRDETR_MAX_JSON_BODY_BYTES" in refused.json()["error"]["message"]
    assert answered.status_code == 422, answered.text
    assert answered.json()["error"]["code"] == "too_many_values"
    growth = peak_rss_bytes(live.server_pid) - before
    assert growth < 16 * len(small), f"peak memory grew by {growth / 1e6:.0f} MB for a {len(small) / 1e6:.1f} MB body"
    assert probe.worst_s < 1.0, f"/healthz took {probe.worst_s:.2f} s while the hostile body was handled"


# --- item 2: npz bombs ------------------------------------------------------------------------------
def test_an_npz_bomb_is_refused_from_its_headers_before_inflating(live, pre):
    bomb = npz_bomb(pre, 300_000)  # inflates to 300 000 x 32 x 4 = 38 MB
    assert len(bomb) < 200_000
    before = peak_rss_bytes(live.server_pid)
    started = time.monotonic()
    response = live.put("/v1/videos/bomb/features", content=bomb, headers=NPZ)
    assert response.status_code == 422 and response.json()["error"]["code"] == "video_too_long", response.text
    assert time.monotonic() - started < 2.0
    growth = peak_rss_bytes(live.server_pid) - before
    assert growth < 10_000_000, f"peak memory grew by {growth / 1e6:.0f} MB: the bomb was inflated"


def test_a_short_group_next_to_a_bomb_inflates_only_the_rows_used(live, pre):
    groups = random_groups(pre, 5, seed=3)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        first, *rest = pre.video_groups
        archive.writestr(f"{first.name}.npy", npy_bytes(np.zeros((300_000, first.dim), np.float32)))
        for group in rest:
            archive.writestr(f"{group.name}.npy", npy_bytes(groups[group.name]))
    before = peak_rss_bytes(live.server_pid)
    response = live.put("/v1/videos/half-bomb/features", content=buffer.getvalue(), headers=NPZ)
    assert response.status_code == 200, response.text
    assert response.json()["num_clips"] == 5 and "cut to the shortest" in response.json()["notes"][0]
    assert peak_rss_bytes(live.server_pid) - before < 10_000_000


@pytest.mark.anyio
async def test_feature_decoding_runs_at_most_decode_concurrency_files_at_once(make_settings, pre, monkeypatch):
    import service.routers.videos as videos

    running, peak, real = 0, 0, videos.parse_video

    def slow_parse(*args, **kwargs):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        time.sleep(0.2)
        running -= 1
        return real(*args, **kwargs)

    monkeypatch.setattr(videos, "parse_video", slow_parse)
    body = npz_bytes(**random_groups(pre, 4, seed=2))
    async with serve(make_settings(decode_concurrency=2)) as client:
        stored = await client.put("/v1/videos/searched/features", content=body, headers=NPZ)
        uploads = [asyncio.create_task(client.put(f"/v1/videos/u{i}/features", content=body, headers=NPZ))
                   for i in range(8)]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        search = await client.post("/v1/moments", json={"video_id": "searched", "queries": [query(pre)]})
        search_s = time.monotonic() - started
        answers = await asyncio.gather(*uploads)
    assert stored.status_code == 200 and search.status_code == 200
    assert all(answer.status_code == 200 for answer in answers)
    assert peak == 2, f"{peak} files were decoded at once"
    assert search_s < 0.6, f"a search waited {search_s:.2f} s behind queued uploads"


# --- item 3: Redis pool ---------------------------------------------------------------------------
@pytest.mark.anyio
async def test_more_concurrent_requests_than_redis_connections_wait_for_one(make_settings, pre):
    async with serve(make_settings(redis_max_connections=2)) as client:
        body = npz_bytes(**random_groups(pre, 3, seed=4))
        assert (await client.put("/v1/videos/pooled/features", content=body, headers=NPZ)).status_code == 200
        answers = await asyncio.gather(*(client.get("/v1/videos/pooled") for _ in range(80)))
    statuses = sorted({answer.status_code for answer in answers})
    assert statuses == [200], [answer.text for answer in answers if answer.status_code != 200][:2]


# --- item 4: deadline, admission, slow bodies -----------------------------------------------------
@pytest.mark.anyio
async def test_the_deadline_covers_a_slow_redis_call(make_settings, pre):
    async with serve(make_settings(request_timeout_s=1.0, local_cache_videos=0)) as client:
        body = npz_bytes(**random_groups(pre, 3, seed=5))
        assert (await client.put("/v1/videos/slow/features", content=body, headers=NPZ)).status_code == 200
        redis_client = client.app.state.runtime.store.bulk  # features are read through the bulk pool
        real_hmget = redis_client.hmget

        async def slow_hmget(*args, **kwargs):
            await asyncio.sleep(3)
            return await real_hmget(*args, **kwargs)

        redis_client.hmget = slow_hmget
        started = time.monotonic()
        late = await client.post("/v1/moments", json={"video_id": "slow", "queries": [query(pre)]})
        elapsed = time.monotonic() - started
        redis_client.hmget = real_hmget
    assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded", late.text
    assert elapsed < 2.5


@pytest.mark.anyio
async def test_admission_refuses_work_the_measured_queue_cannot_finish_in_time(make_settings, pre):
    async with serve(make_settings(request_timeout_s=1.5, max_batch_size=1, max_batch_wait_ms=0.0)) as client:
        batcher = client.app.state.runtime.batcher
        real = batcher.model_fn

        def slow_model(feeds):
            time.sleep(0.3)
            return real(feeds)

        batcher.model_fn = slow_model
        inline = {"format": "npz", "data_b64": b64(npz_bytes(**random_groups(pre, 3, seed=6)))}
        request = {"video": inline, "queries": [query(pre)]}
        assert (await client.post("/v1/moments", json=request)).status_code == 200  # measures ~0.3 s per row
        answers = await asyncio.gather(*(client.post("/v1/moments", json=request) for _ in range(8)))
        batcher.model_fn = real
    codes = [answer.status_code for answer in answers]
    refused = [answer for answer in answers if answer.status_code == 429]
    assert refused and 504 not in codes, codes
    assert refused[0].json()["error"]["code"] == "overloaded"
    assert int(refused[0].headers["retry-after"]) >= 1


@pytest.mark.slow
def test_slow_bodies_are_cut_off_at_the_deadline_while_health_checks_answer(live):
    port = live.base_url.port
    connections = []
    for _ in range(40):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"POST /v1/moments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")
        connections.append(sock)
    started = time.monotonic()
    answers: dict[int, bytes] = {}
    with HealthProbe(str(live.base_url)) as probe:
        while len(answers) < len(connections) and time.monotonic() - started < 8:
            for index, sock in enumerate(connections):
                if index in answers:
                    continue
                try:
                    sock.sendall(b" ")  # one byte at a time: never finishing the body
                    sock.settimeout(0.01)
                    data = sock.recv(4096)
                    answers[index] = data or b"closed"
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:
                    answers[index] = b"closed"
            time.sleep(0.2)
    for sock in connections:
        sock.close()
    assert len(answers) == len(connections), f"{len(connections) - len(answers)} slow bodies still held after 8 s"
    assert all(b"408" in data or data == b"closed" for data in answers.values())
    assert any(b"body_timeout" in data for data in answers.values())
    assert probe.worst_s < 1.0


# --- connections: slow request heads and too many open connections ---------------------------------
@pytest.fixture(scope="module")
def strict_live(small_bundle, redis_url, key_prefix):
    """A server with a 1-s request-head deadline and at most 4 open connections."""
    env = clean_env(TRDETR_BUNDLE_DIR=str(small_bundle), REDIS_URL=redis_url, TRDETR_REDIS_KEY_PREFIX=key_prefix,
                    TRDETR_INTRA_OP_THREADS="1", TRDETR_DEVICE="cpu", TRDETR_HEADER_TIMEOUT_S="1",
                    TRDETR_MAX_CONNECTIONS="4")
    with live_server(env, free_port()) as client:
        yield client


def read_until_closed(sock: socket.socket, limit_s: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``limit_s`` passes)."""
    sock.settimeout(limit_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        pass
    return received


def test_a_slowloris_request_head_is_cut_off_with_408(strict_live):
    port = strict_live.base_url.port
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for i in range(4):  # a header line every 0.3 s: each byte would reset an idle timer, not this deadline
            time.sleep(0.3)
            try:
                sock.sendall(f"X-Slow-{i}: y\r\n".encode())
            except OSError:
                break
        answer = read_until_closed(sock, 5)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    body = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "header_timeout" and "TRDETR_HEADER_TIMEOUT_S" in body["error"]["message"]
    assert 0.9 < elapsed < 3.0, f"cut off after {elapsed:.2f} s"
    assert strict_live.get("/healthz").status_code == 200


def test_a_kept_alive_connection_gets_the_head_deadline_again_after_each_response(strict_live):
    with socket.create_connection(("127.0.0.1", strict_live.base_url.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        first = b""
        while b"\r\n\r\n" not in first:
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next head, never finished
        answer = read_until_closed(sock, 5)
    assert b"HTTP/1.1 408" in answer and b"header_timeout" in answer, answer


def test_connections_over_the_cap_get_503_and_are_closed_while_the_others_are_served(strict_live):
    sockets = [socket.create_connection(("127.0.0.1", strict_live.base_url.port)) for _ in range(7)]
    try:
        refused = []
        for sock in sockets:
            sock.settimeout(0.3)
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue  # accepted: the server waits for a request on it
            if not answer.startswith(b"HTTP/1.1 408"):  # an accepted one may meet its 1-s head deadline meanwhile
                refused.append(answer)
        assert 3 <= len(refused) <= 7 - 3, f"{len(refused)} of 7 refused with a cap of 4 (the test client may hold 1)"
        for answer in refused:
            head, body = answer.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower(), answer
            error = orjson.loads(body)["error"]
            assert error["code"] == "too_many_connections" and "TRDETR_MAX_CONNECTIONS" in error["message"]
    finally:
        for sock in sockets:
            sock.close()
    time.sleep(0.2)
    assert strict_live.get("/healthz").status_code == 200  # closed connections free their places
