"""The in-process LRU of hot videos' model inputs, with two replicas sharing one real Redis.

A replica answers from its local copy only while the copy's version is the one in Redis, so a
replace or delete made through any replica is seen by all of them on their next request.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest
from svc_helpers import b64, manifest_of, npy_bytes, npz_bytes, random_groups, random_text, serve

from service.tenancy import SHARED_TENANT_ID

pytestmark = pytest.mark.anyio

NPZ = {"content-type": "application/x-npz"}


@pytest.fixture(scope="module")
def pre(small_bundle):
    return manifest_of(small_bundle).preprocessing


def search(pre, video_id: str) -> dict:
    return {"video_id": video_id, "queries": [{"features_b64": b64(npy_bytes(random_text(pre, 4, seed=1)))}]}


async def store(client: httpx.AsyncClient, pre, video_id: str, seed: int) -> None:
    body = npz_bytes(**random_groups(pre, 8, seed=seed))
    assert (await client.put(f"/v1/videos/{video_id}/features", content=body, headers=NPZ)).status_code == 200


async def highlights(client: httpx.AsyncClient, pre, video_id: str) -> list[float]:
    """Raw saliency of every clip: it changes with the video's features."""
    response = await client.post("/v1/highlights", json=search(pre, video_id))
    assert response.status_code == 200, response.text
    return [clip["raw"] for clip in response.json()["results"][0]["clips"]]


async def cache_count(client: httpx.AsyncClient, result: str) -> float:
    metrics = (await client.get("/metrics")).text
    found = re.search(rf'trdetr_cache_requests_total{{op="get",result="{result}"}} (\S+)', metrics)
    return float(found.group(1)) if found else 0.0


class SharedTenantLocal:
    """The local LRU's entries of the shared tenant (no API keys), by video id."""

    def __init__(self, cache) -> None:
        self.cache = cache

    def __contains__(self, video_id: str) -> bool:
        return f"{SHARED_TENANT_ID}/{video_id}" in self.cache

    def __len__(self) -> int:
        return len(self.cache)


def local(client: httpx.AsyncClient) -> SharedTenantLocal:
    return SharedTenantLocal(client.app.state.runtime.store.local)  # type: ignore[attr-defined]


async def test_a_repeated_search_is_answered_from_the_local_copy(make_settings, pre):
    async with serve(make_settings()) as a:
        await store(a, pre, "hot", seed=10)
        first = await highlights(a, pre, "hot")
        assert await cache_count(a, "local_hit") == 0
        assert await highlights(a, pre, "hot") == first
        assert await cache_count(a, "local_hit") == 1
        assert "hot" in local(a)


async def test_a_replace_through_one_replica_is_seen_by_the_other(make_settings, pre):
    async with serve(make_settings()) as a, serve(make_settings()) as b:
        await store(a, pre, "shared", seed=11)
        old = await highlights(a, pre, "shared")
        assert "shared" in local(a)

        await store(b, pre, "shared", seed=12)
        new = await highlights(b, pre, "shared")
        assert new != old
        assert await highlights(a, pre, "shared") == new, "A must not answer from its stale copy"
        assert await highlights(a, pre, "shared") == new
        assert await cache_count(a, "local_hit") == 1  # the second read after the replace


async def test_a_delete_through_one_replica_is_a_404_on_the_other(make_settings, pre):
    async with serve(make_settings()) as a, serve(make_settings()) as b:
        await store(a, pre, "gone", seed=13)
        await highlights(a, pre, "gone")
        assert "gone" in local(a)

        assert (await b.delete("/v1/videos/gone")).status_code == 200
        answer = await a.post("/v1/moments", json=search(pre, "gone"))
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "not_found"
        assert "gone" not in local(a), "the stale copy is evicted"


async def test_the_local_cache_keeps_at_most_local_cache_videos(make_settings, pre):
    async with serve(make_settings(local_cache_videos=2)) as client:
        for index, video_id in enumerate(("v1", "v2", "v3")):
            await store(client, pre, video_id, seed=20 + index)
            await highlights(client, pre, video_id)
        assert len(local(client)) == 2
        assert "v1" not in local(client), "the least recently used video goes first"

        await highlights(client, pre, "v1")  # fetched from Redis again, now evicting v2
        assert "v1" in local(client) and "v3" in local(client) and "v2" not in local(client)
        assert await cache_count(client, "local_hit") == 0


async def test_zero_local_cache_videos_disables_the_local_cache(make_settings, pre):
    async with serve(make_settings(local_cache_videos=0)) as client:
        await store(client, pre, "cold", seed=30)
        assert await highlights(client, pre, "cold") == await highlights(client, pre, "cold")
        assert len(local(client)) == 0
        assert await cache_count(client, "local_hit") == 0
        assert await cache_count(client, "hit") == 2


async def test_a_trusted_local_copy_is_stale_for_at_most_the_trust_bound(make_settings, pre):
    """TRDETR_LOCAL_CACHE_TRUST_MS: a replace through another replica is seen once the bound has passed (not
    before, by design); a replace through the same replica is seen at once."""
    trust_s = 3.0
    async with serve(make_settings(local_cache_trust_ms=trust_s * 1000)) as a, serve(make_settings()) as b:
        await store(a, pre, "trusted", seed=40)
        old = await highlights(a, pre, "trusted")  # checks the version in Redis, keeps the copy
        checked = time.monotonic()

        await store(b, pre, "trusted", seed=41)
        new = await highlights(b, pre, "trusted")
        assert new != old
        stale = await highlights(a, pre, "trusted")
        if time.monotonic() - checked < trust_s:  # a slow machine may already be past the bound
            assert stale == old, "within the bound the copy is used without asking Redis"
            assert await cache_count(a, "local_trusted") == 1
        await asyncio.sleep(max(0.0, trust_s - (time.monotonic() - checked)) + 0.2)
        assert await highlights(a, pre, "trusted") == new, "past the bound the version is checked again"

        await store(a, pre, "trusted", seed=42)  # through A itself: its copy goes at once
        assert await highlights(a, pre, "trusted") == await highlights(b, pre, "trusted") != new

        assert (await a.delete("/v1/videos/trusted")).status_code == 200
        assert (await a.post("/v1/moments", json=search(pre, "trusted"))).status_code == 404
