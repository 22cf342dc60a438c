"""Dynamic batching: coalesced answers equal one-by-one answers; full queue -> 429; deadline -> 504."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from svc_helpers import b64, manifest_of, npy_bytes, npz_bytes, random_groups, random_text, serve

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def pre(small_bundle):
    return manifest_of(small_bundle).preprocessing


def mixed_requests(pre, count: int) -> list[dict]:
    """Requests with different video lengths (1..max clips), text lengths and query counts."""
    rng = np.random.default_rng(42)
    requests = []
    for index in range(count):
        clips = int(rng.integers(1, pre.max_video_clips + 1)) if index else pre.max_video_clips
        queries = [
            {"features_b64": b64(npy_bytes(random_text(pre, int(rng.integers(1, pre.max_text_tokens + 1)),
                                                       seed=100 * index + q)))}
            for q in range(1 + index % 3)
        ]
        video = {"format": "npz", "data_b64": b64(npz_bytes(**random_groups(pre, clips, seed=index)))}
        requests.append({"video": video, "queries": queries, "top_k": 10})
    return requests


def gated(model_fn):
    """The real model behind a gate: runs only once ``gate`` is set (to hold the worker thread busy)."""
    gate, started = threading.Event(), threading.Event()

    def run(feeds):
        started.set()
        gate.wait(timeout=30)
        return model_fn(feeds)

    run.started = started
    return run, gate


async def test_concurrent_mixed_requests_get_their_one_by_one_answers(make_settings, pre):
    requests = mixed_requests(pre, 12)
    async with serve(make_settings(max_batch_wait_ms=100.0, max_batch_size=32)) as client:
        alone = []
        for body in requests:  # sequential: every request is a batch of its own
            alone.append(((await client.post("/v1/moments", json=body)).json(),
                          (await client.post("/v1/highlights", json=body)).json()))
        metrics = client.app.state.runtime.metrics
        runs_before = metrics.batch_requests.collect()[0].samples

        async def both(body):
            return await asyncio.gather(client.post("/v1/moments", json=body), client.post("/v1/highlights", json=body))

        together = await asyncio.gather(*(both(body) for body in requests))
        runs_after = metrics.batch_requests.collect()[0].samples

    runs = _count_and_sum(runs_after) - _count_and_sum(runs_before)
    assert runs[1] / runs[0] > 1.5, f"requests were not coalesced: {runs[1]:.0f} requests in {runs[0]:.0f} runs"
    for (moments_alone, highlights_alone), (moments, highlights) in zip(alone, together, strict=True):
        assert moments.status_code == highlights.status_code == 200
        for got, want in zip(moments.json()["results"], moments_alone["results"], strict=True):
            got_m = np.array([[m["start"], m["end"], m["score"]] for m in got["moments"]])
            want_m = np.array([[m["start"], m["end"], m["score"]] for m in want["moments"]])
            np.testing.assert_array_equal(got_m[:, :2], want_m[:, :2])
            np.testing.assert_allclose(got_m[:, 2], want_m[:, 2], atol=1e-5)
        for got, want in zip(highlights.json()["results"], highlights_alone["results"], strict=True):
            np.testing.assert_allclose([c["raw"] for c in got["clips"]], [c["raw"] for c in want["clips"]], atol=1e-4)


def _count_and_sum(samples) -> np.ndarray:
    values = {s.name.rsplit("_", 1)[-1]: s.value for s in samples if s.name.endswith(("_count", "_sum"))}
    return np.array([values["count"], values["sum"]])


async def test_full_queue_is_429_with_retry_after(make_settings, pre):
    body = mixed_requests(pre, 1)[0]
    async with serve(make_settings(max_queue_size=1, max_batch_size=1, max_batch_wait_ms=0.0)) as client:
        batcher = client.app.state.runtime.batcher
        batcher.model_fn, gate = gated(batcher.model_fn)
        running = asyncio.create_task(client.post("/v1/moments", json=body))  # taken by the worker, held
        await _until(batcher.model_fn.started.is_set)
        queued = asyncio.create_task(client.post("/v1/moments", json=body))  # fills the 1-slot queue
        await _until(lambda: batcher.queue_depth == 1)
        refused = await client.post("/v1/moments", json=body)
        gate.set()
        assert (await running).status_code == 200 and (await queued).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "queue_full"
    assert 'trdetr_rejected_requests_total{reason="queue_full"} 1.0' in metrics


async def test_deadline_exceeded_is_504_and_the_service_keeps_working(make_settings, pre):
    body = mixed_requests(pre, 1)[0]
    async with serve(make_settings(request_timeout_s=0.3)) as client:
        batcher = client.app.state.runtime.batcher
        real = batcher.model_fn
        batcher.model_fn, gate = gated(real)
        late = await client.post("/v1/moments", json=body)
        gate.set()
        batcher.model_fn = real
        assert late.status_code == 504
        assert late.json()["error"]["code"] == "deadline_exceeded"
        assert (await client.post("/v1/moments", json=body)).status_code == 200


async def _until(condition, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not condition():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)
