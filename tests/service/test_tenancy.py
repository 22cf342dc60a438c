"""Tenants and storage quotas (issue 14, item 5): each API key sees only its own videos, within its quota."""

from __future__ import annotations

import pytest
import redis
from svc_helpers import b64, manifest_of, npy_bytes, npz_bytes, random_groups, random_text, serve

from service.tenancy import SHARED_TENANT_ID, tenant_for_key

pytestmark = pytest.mark.anyio

NPZ = {"content-type": "application/x-npz"}
KEY_A, KEY_B = "alpha-key-8f2e1c5b7d", "bravo-key-3a9d6e0f42"
A, B = {"X-API-Key": KEY_A}, {"X-API-Key": KEY_B}


@pytest.fixture(scope="module")
def pre(small_bundle):
    return manifest_of(small_bundle).preprocessing


def upload(pre, clips: int = 4, seed: int = 1) -> bytes:
    return npz_bytes(**random_groups(pre, clips, seed=seed))


def search(pre, video_id: str) -> dict:
    return {"video_id": video_id, "queries": [{"features_b64": b64(npy_bytes(random_text(pre, 3, seed=2)))}]}


def test_tenant_ids_are_stable_distinct_and_do_not_contain_the_key():
    assert tenant_for_key(KEY_A) == tenant_for_key(KEY_A)
    assert tenant_for_key(KEY_A) != tenant_for_key(KEY_B)
    assert KEY_A not in tenant_for_key(KEY_A).id and tenant_for_key(KEY_A).id != SHARED_TENANT_ID
    assert all(c not in tenant_for_key(KEY_A).id for c in "{}:/")


async def test_a_key_cannot_read_search_or_delete_another_keys_videos(make_settings, pre, redis_url, key_prefix):
    async with serve(make_settings(api_keys=[KEY_A, KEY_B])) as client:
        assert (await client.put("/v1/videos/mine/features", content=upload(pre), headers={**NPZ, **A})).status_code == 200
        assert (await client.get("/v1/videos/mine", headers=A)).status_code == 200
        assert (await client.get("/v1/videos/mine", headers=B)).status_code == 404
        assert (await client.post("/v1/moments", json=search(pre, "mine"), headers=B)).status_code == 404
        assert (await client.delete("/v1/videos/mine", headers=B)).status_code == 404
        # B stores its own video under the same id; A's is untouched
        other = await client.put("/v1/videos/mine/features", content=upload(pre, clips=6), headers={**NPZ, **B})
        assert other.status_code == 200
        assert (await client.get("/v1/videos/mine", headers=A)).json()["num_clips"] == 4
        assert (await client.get("/v1/videos/mine", headers=B)).json()["num_clips"] == 6
        assert (await client.post("/v1/moments", json=search(pre, "mine"), headers=A)).status_code == 200
    keys = [key.decode() for key in redis.Redis.from_url(redis_url).scan_iter(match=f"{key_prefix}:*", count=1000)]
    assert keys and not any(KEY_A in key or KEY_B in key for key in keys), "an API key appears in a Redis key"
    tenant_a = tenant_for_key(KEY_A).id
    assert any(key.startswith(f"{key_prefix}:{{{tenant_a}}}:") and key.endswith(":video:mine") for key in keys)


async def test_the_video_quota_refuses_a_new_video_but_not_a_replacement(make_settings, pre, redis_url, key_prefix):
    settings = make_settings(api_keys=[KEY_A, KEY_B], quota_max_videos=2, redis_key_prefix=f"{key_prefix}:videos")
    async with serve(settings) as client:
        for name in ("q1", "q2"):
            stored = await client.put(f"/v1/videos/{name}/features", content=upload(pre), headers={**NPZ, **A})
            assert stored.status_code == 200
        refused = await client.put("/v1/videos/q3/features", content=upload(pre), headers={**NPZ, **A})
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["code"] == "quota_exceeded" and error["details"]["quota"] == "videos"
        assert "TRDETR_QUOTA_MAX_VIDEOS" in error["message"] and error["details"]["videos"] == 2
        assert (await client.get("/v1/videos/q3", headers=A)).status_code == 404
        replaced = await client.put("/v1/videos/q1/features", content=upload(pre, seed=5), headers={**NPZ, **A})
        assert replaced.status_code == 200
        # another key has its own quota
        assert (await client.put("/v1/videos/q3/features", content=upload(pre), headers={**NPZ, **B})).status_code == 200
        # deleting frees a place
        assert (await client.delete("/v1/videos/q2", headers=A)).status_code == 200
        assert (await client.put("/v1/videos/q3/features", content=upload(pre), headers={**NPZ, **A})).status_code == 200
        # a video Redis evicted by itself (LRU) is forgotten by the books when the quota would refuse
        store = client.app.state.runtime.store
        evicted = store.tenant(tenant_for_key(KEY_A).id).keys.video("q1")
        redis.Redis.from_url(redis_url).delete(evicted)
        assert (await client.put("/v1/videos/q4/features", content=upload(pre), headers={**NPZ, **A})).status_code == 200


async def test_the_byte_quota_names_itself_and_applies_to_the_shared_tenant(make_settings, pre, key_prefix):
    one_video = 4 * sum(g.dim for g in pre.video_groups) * 2  # 4 clips of float16
    settings = make_settings(quota_max_bytes=2 * one_video + 1500, redis_key_prefix=f"{key_prefix}:bytes")
    async with serve(settings) as client:
        assert (await client.put("/v1/videos/b1/features", content=upload(pre), headers=NPZ)).status_code == 200
        refused = await client.put("/v1/videos/b2/features", content=upload(pre, clips=30), headers=NPZ)
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["details"]["quota"] == "bytes" and "TRDETR_QUOTA_MAX_BYTES" in error["message"]
        assert (await client.put("/v1/videos/b2/features", content=upload(pre), headers=NPZ)).status_code == 200


async def test_expired_videos_leave_the_quota(make_settings, pre, key_prefix):
    import asyncio

    settings = make_settings(quota_max_videos=1, feature_ttl_s=1, redis_key_prefix=f"{key_prefix}:expiry")
    async with serve(settings) as client:
        assert (await client.put("/v1/videos/e1/features", content=upload(pre), headers=NPZ)).status_code == 200
        assert (await client.put("/v1/videos/e2/features", content=upload(pre), headers=NPZ)).status_code == 403
        await asyncio.sleep(1.2)
        assert (await client.put("/v1/videos/e2/features", content=upload(pre), headers=NPZ)).status_code == 200


async def test_a_key_cannot_list_search_or_change_another_keys_collections(make_settings, pre, key_prefix):
    settings = make_settings(api_keys=[KEY_A, KEY_B], redis_key_prefix=f"{key_prefix}:colltenancy")
    async with serve(settings) as client:
        put = await client.put("/v1/videos/mine/features?collection=secret", content=upload(pre), headers={**NPZ, **A})
        assert put.status_code == 200 and put.json()["collections"] == ["secret"]
        assert (await client.get("/v1/collections", headers=B)).json() == {"collections": []}
        assert (await client.get("/v1/videos", headers=B)).json() == {"videos": [], "next_cursor": None}
        assert (await client.get("/v1/videos?collection=secret", headers=B)).status_code == 404
        query = search(pre, "mine")["queries"][0]
        assert (await client.post("/v1/search", json={"query": query, "collection": "secret"},
                                  headers=B)).status_code == 404
        by_id = await client.post("/v1/search", json={"query": query, "video_ids": ["mine"]}, headers=B)
        assert by_id.status_code == 200 and by_id.json()["results"] == [] and by_id.json()["searched_videos"] == 0
        assert (await client.put("/v1/collections/secret/videos/mine", headers=B)).status_code == 404
        assert (await client.delete("/v1/collections/secret/videos/mine", headers=B)).status_code == 404
        assert (await client.delete("/v1/collections/secret", headers=B)).status_code == 404
        # A still has all of it
        assert (await client.get("/v1/collections", headers=A)).json() == {"collections": [{"name": "secret",
                                                                                            "videos": 1}]}
        mine = await client.post("/v1/search", json={"query": query, "collection": "secret"}, headers=A)
        assert mine.status_code == 200 and {h["video_id"] for h in mine.json()["results"]} == {"mine"}
        # a cursor of A's search means nothing to B
        paged = await client.post("/v1/search", json={"query": query, "collection": "secret", "top_k": 1}, headers=A)
        cursor = paged.json()["next_cursor"]
        assert cursor is not None
        stolen = await client.post("/v1/search", json={"query": query, "collection": "secret", "top_k": 1,
                                                       "cursor": cursor}, headers=B)
        assert stolen.status_code == 422 and stolen.json()["error"]["code"] == "cursor_expired"
