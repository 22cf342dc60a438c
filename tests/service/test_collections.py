"""Collections and the video listing (issue 12): membership kept by puts, deletes and expiry; stable cursors."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from svc_helpers import manifest_of, npz_bytes, random_groups, serve

from service.tenancy import SHARED_TENANT_ID

pytestmark = pytest.mark.anyio

NPZ = {"content-type": "application/x-npz"}


@pytest.fixture(scope="module")
def pre(small_bundle):
    return manifest_of(small_bundle).preprocessing


@pytest.fixture
async def app(make_settings, key_prefix):
    """A fresh namespace per test, so listings see only this test's videos."""
    async with serve(make_settings(redis_key_prefix=f"{key_prefix}:coll{time.monotonic_ns()}")) as client:
        yield client


def upload(pre, clips: int = 4, seed: int = 1) -> bytes:
    return npz_bytes(**random_groups(pre, clips, seed=seed))


async def put(client, pre, video_id: str, *collections: str, clips: int = 4):
    query = "&".join(f"collection={name}" for name in collections)
    response = await client.put(f"/v1/videos/{video_id}/features?{query}", content=upload(pre, clips), headers=NPZ)
    assert response.status_code == 200, response.text
    return response.json()


async def sizes(client) -> dict[str, int]:
    response = await client.get("/v1/collections")
    assert response.status_code == 200, response.text
    return {c["name"]: c["videos"] for c in response.json()["collections"]}


async def listed(client, collection: str | None = None, limit: int = 100) -> list[str]:
    ids, cursor = [], None
    while True:
        params = {"limit": limit, **({"collection": collection} if collection else {}),
                  **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/videos", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        ids += [v["video_id"] for v in page["videos"]]
        if (cursor := page["next_cursor"]) is None:
            return ids


async def test_membership_follows_uploads_links_and_deletes(app, pre):
    stored = await put(app, pre, "a", "cats", "pets")
    assert stored["collections"] == ["cats", "pets"]
    await put(app, pre, "b", "cats")
    await put(app, pre, "c")
    assert await sizes(app) == {"cats": 2, "pets": 1}
    assert (await app.put("/v1/collections/pets/videos/c")).json() == {"collection": "pets", "video_id": "c",
                                                                       "member": True}
    # a replacement keeps the memberships; the metadata names them
    await put(app, pre, "a", clips=6)
    assert (await app.get("/v1/videos/a")).json()["collections"] == ["cats", "pets"]
    assert await listed(app, "pets") == ["a", "c"]
    assert (await app.delete("/v1/collections/cats/videos/a")).status_code == 200
    assert await listed(app, "cats") == ["b"]
    # deleting a video takes it out of every collection
    assert (await app.delete("/v1/videos/c")).status_code == 200
    assert await sizes(app) == {"cats": 1, "pets": 1}
    # deleting a collection keeps its videos
    assert (await app.delete("/v1/collections/pets")).status_code == 200
    assert await sizes(app) == {"cats": 1}
    assert (await app.get("/v1/videos/a")).json()["collections"] == []
    assert await listed(app) == ["a", "b"]


async def test_unknown_collections_and_videos_are_404_and_bad_names_422(app, pre):
    await put(app, pre, "a", "cats")
    for method, url in (("DELETE", "/v1/collections/dogs"), ("GET", "/v1/videos?collection=dogs"),
                        ("DELETE", "/v1/collections/dogs/videos/a"), ("PUT", "/v1/collections/cats/videos/nope"),
                        ("DELETE", "/v1/collections/cats/videos/nope")):
        response = await app.request(method, url)
        assert response.status_code == 404, (method, url, response.text)
        assert response.json()["error"]["code"] == "not_found"
    bad = await app.put("/v1/videos/x/features?collection=bad%20name", content=upload(pre), headers=NPZ)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_collection"
    assert (await app.get("/v1/videos/x")).status_code == 404
    many = "&".join(f"collection=c{i}" for i in range(17))
    too_many = await app.put(f"/v1/videos/x/features?{many}", content=upload(pre), headers=NPZ)
    assert too_many.status_code == 422 and "at most 16" in too_many.json()["error"]["message"]
    cursor = await app.get("/v1/videos?cursor=not-a-cursor")
    assert cursor.status_code == 422 and cursor.json()["error"]["code"] == "invalid_cursor"


async def test_expired_and_evicted_videos_drop_out(make_settings, key_prefix, pre, redis_url):
    prefix = f"{key_prefix}:exp{time.monotonic_ns()}"
    async with serve(make_settings(redis_key_prefix=prefix, feature_ttl_s=1)) as app:
        await put(app, pre, "short", "news")
        await asyncio.sleep(2.1)
    async with serve(make_settings(redis_key_prefix=prefix)) as app:
        await put(app, pre, "long", "news")
        await put(app, pre, "evicted", "news")
        assert await sizes(app) == {"news": 2}  # the expired one was swept out by the put
        store = app.app.state.runtime.store
        redis.Redis.from_url(redis_url).delete(store.tenant(SHARED_TENANT_ID).keys.video("evicted"))
        assert await listed(app, "news") == ["long"]  # met missing: forgotten
        assert await sizes(app) == {"news": 1}
        keys = {k.decode() for k in redis.Redis.from_url(redis_url).scan_iter(match=f"{prefix}:*", count=1000)}
        assert not any(k.endswith(("vcoll:evicted", "vcoll:short")) for k in keys), keys


async def test_listing_pages_are_stable_under_concurrent_writes(app, pre):
    for i in range(12):
        await put(app, pre, f"v{i:02d}")
    seen, cursor, page_no = [], None, 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await app.get("/v1/videos", params=params)).json()
        seen += [v["video_id"] for v in page["videos"]]
        # between pages: replace a video already listed and one not yet, delete one ahead, add new ones
        if page_no == 0:
            await asyncio.gather(put(app, pre, "v00", clips=5), put(app, pre, "v09", clips=5),
                                 app.delete("/v1/videos/v07"), put(app, pre, "new1"), put(app, pre, "new2"))
        page_no += 1
        if (cursor := page["next_cursor"]) is None:
            break
    throughout = [f"v{i:02d}" for i in range(12) if i != 7]
    assert [v for v in seen if v in throughout] == throughout  # each once, in order: no duplicates, no gaps
    assert len(seen) == len(set(seen)) and "v07" not in seen and {"new1", "new2"} <= set(seen)
