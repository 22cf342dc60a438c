"""Server-side timing: a request that ran the model says how long the model took and how long the app did."""

from __future__ import annotations

import re

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
    match = re.fullmatch(r"app;dur=([\d.]+), model;dur=([\d.]+)", response.headers["server-timing"])
    assert match, response.headers["server-timing"]
    app_ms, model_ms = float(match[1]), float(match[2])
    assert 0 < model_ms <= app_ms
    assert "server-timing" not in (await client.get("/v1/videos/timing")).headers  # no model run, no header
    metrics = (await client.get("/metrics")).text
    count = re.search(r"^trdetr_http_overhead_seconds_count (\S+)$", metrics, re.M)
    assert count and float(count[1]) >= 1
