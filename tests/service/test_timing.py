"""Server-side timing: a request that ran the model says how long the model took and how long the app did."""

from __future__ import annotations

import asyncio
import re

import orjson
import pytest
from svc_helpers import b64, manifest_of, npy_bytes, npz_bytes, random_groups, random_text

pytestmark = pytest.mark.anyio


async def test_server_timing_splits_app_and_model_time(client, small_bundle):
    pre = manifest_of(small_bundle).preprocessing
    stored = await client.put("/v1/videos/timing/features", content=npz_bytes(**random_groups(pre, 12, seed=3)),
                              headers={"content-type": "application/x-npz"})
    assert stored.status_code == 200
    query = {"features_b64": b64(npy_bytes(random_text(pre, 5, seed=4)))}
    response = await client.post("/v1/moments", json={"video_id": "timing", "queries": [query, query]})
    assert response.status_code == 200, response.text
    match = re.fullmatch(r"app;dur=([\d.]+), model;dur=([\d.]+), body;dur=([\d.]+)", response.headers["server-timing"])
    assert match, response.headers["server-timing"]
    app_ms, model_ms, body_ms = float(match[1]), float(match[2]), float(match[3])
    assert 0 < model_ms <= app_ms
    assert 0 <= body_ms <= app_ms - model_ms
    assert "server-timing" not in (await client.get("/v1/videos/timing")).headers  # no model run, no header
    metrics = (await client.get("/metrics")).text
    count = re.search(r"^trdetr_http_overhead_seconds_count (\S+)$", metrics, re.M)
    assert count and float(count[1]) >= 1


async def test_waiting_for_a_slow_body_is_not_in_app_overhead(client, small_bundle):
    """A client that sends its body late: the wait shows as ``body`` and stays out of the overhead histogram."""
    pre = manifest_of(small_bundle).preprocessing
    stored = await client.put("/v1/videos/slowbody/features", content=npz_bytes(**random_groups(pre, 6, seed=5)),
                              headers={"content-type": "application/x-npz"})
    assert stored.status_code == 200
    body = orjson.dumps({"video_id": "slowbody", "queries": [{"features_b64": b64(npy_bytes(random_text(pre, 3, seed=6)))}]})

    async def late_chunks():
        for start in range(0, len(body), len(body) // 2 + 1):
            await asyncio.sleep(0.3)
            yield body[start:start + len(body) // 2 + 1]

    before = _overhead_sum(await client.get("/metrics"))
    response = await client.post("/v1/moments", content=late_chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    timing = dict(part.split(";dur=") for part in response.headers["server-timing"].split(", "))
    assert float(timing["body"]) >= 250  # the second chunk came ~0.3 s after the app started
    overhead_s = _overhead_sum(await client.get("/metrics")) - before
    assert overhead_s < (float(timing["app"]) - float(timing["body"])) / 1000.0 + 1e-6


def _overhead_sum(metrics) -> float:
    found = re.search(r"^trdetr_http_overhead_seconds_sum (\S+)$", metrics.text, re.M)
    return float(found[1]) if found else 0.0
