"""The feature cache, collections, listing and search on a real 3-master Redis Cluster (issue 12)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis_cluster import RedisCluster, redis_server_binary
from svc_helpers import b64, manifest_of, npy_bytes, npz_bytes, random_groups, random_text, serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

NPZ = {"content-type": "application/x-npz"}
KEY_A, KEY_B = "cluster-key-a-5e1f0c", "cluster-key-b-9d3a27"
A, B = {"X-API-Key": KEY_A}, {"X-API-Key": KEY_B}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[RedisCluster]:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server is not installed")
    nodes = RedisCluster(tmp_path_factory.mktemp("cluster"), binary)
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def pre(small_bundle):
    return manifest_of(small_bundle).preprocessing


def query(pre) -> dict:
    return {"features_b64": b64(npy_bytes(random_text(pre, 4, seed=5)))}


async def test_cache_collections_listing_and_search_on_a_cluster(make_settings, cluster, pre):
    settings = make_settings(redis_url=cluster.url, redis_cluster=True, api_keys=[KEY_A, KEY_B],
                             redis_timeout_s=2.0)
    async with serve(settings) as client:
        for i in range(6):  # two tenants: two hash tags, on different slots of the three nodes
            for headers in (A, B):
                body = npz_bytes(**random_groups(pre, 6 + i, seed=i))
                stored = await client.put(f"/v1/videos/v{i}/features?collection=all", content=body,
                                          headers={**NPZ, **headers})
                assert stored.status_code == 200, stored.text
        assert (await client.get("/v1/videos/v3", headers=A)).json()["num_clips"] == 9
        moments = await client.post("/v1/moments", json={"video_id": "v3", "queries": [query(pre)]}, headers=A)
        assert moments.status_code == 200, moments.text
        assert (await client.delete("/v1/videos/v0", headers=A)).status_code == 200
        assert (await client.put("/v1/collections/few/videos/v1", headers=A)).status_code == 200
        assert (await client.delete("/v1/collections/all/videos/v2", headers=A)).status_code == 200
        sizes = (await client.get("/v1/collections", headers=A)).json()["collections"]
        assert sizes == [{"name": "all", "videos": 4}, {"name": "few", "videos": 1}]
        ids, cursor = [], None
        while True:
            page = (await client.get("/v1/videos", params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                                     headers=A)).json()
            ids += [v["video_id"] for v in page["videos"]]
            if (cursor := page["next_cursor"]) is None:
                break
        assert ids == ["v1", "v2", "v3", "v4", "v5"]
        search = await client.post("/v1/search", json={"query": query(pre), "collection": "all", "top_k": 2},
                                   headers=A)
        assert search.status_code == 200, search.text
        answer = search.json()
        assert answer["searched_videos"] == 4 and answer["next_cursor"]
        more = await client.post("/v1/search", json={"query": query(pre), "collection": "all", "top_k": 2,
                                                     "cursor": answer["next_cursor"]}, headers=A)
        assert more.status_code == 200 and more.json()["results"]
        assert (await client.delete("/v1/collections/few", headers=A)).status_code == 200
        # B's data is its own on the cluster too
        assert [c["videos"] for c in (await client.get("/v1/collections", headers=B)).json()["collections"]] == [6]


async def test_stage1_candidates_on_a_cluster_with_two_tenants(make_settings, cluster):
    """Stage 1 (summaries, change log, per-tenant index) on the cluster: two replicas, two tenants."""
    from svc_helpers import DEFAULT_BUNDLE

    default = manifest_of(DEFAULT_BUNDLE).preprocessing
    settings = make_settings(redis_url=cluster.url, redis_cluster=True, api_keys=[KEY_A, KEY_B], redis_timeout_s=2.0,
                             bundle_dir=DEFAULT_BUNDLE, search_candidates=2, redis_key_prefix="stage1-cluster")
    text = "a cat sleeps on a sofa"
    async with serve(settings) as one, serve(settings) as two:
        match = (await one.app.state.runtime.text.encode_texts([text]))[0].embed
        for i in range(5):
            for headers in (A, B):
                groups = random_groups(default, 5, seed=i)
                if i == 3 and headers is A:
                    groups["clip"][:2] = match
                stored = await one.put(f"/v1/videos/v{i}/features?collection=all", content=npz_bytes(**groups),
                                       headers={**NPZ, **headers})
                assert stored.status_code == 200, stored.text
        body = {"query": text, "collection": "all", "top_k": 50, "per_video_k": 1}
        answer = (await two.post("/v1/search", json=body, headers=A)).json()
        assert answer["stage1"] == "index" and answer["candidate_videos"] == 2
        assert "v3" in {hit["video_id"] for hit in answer["results"]}
        assert (await one.delete("/v1/videos/v3", headers=A)).status_code == 200
        again = (await two.post("/v1/search", json=body, headers=A)).json()
        assert "v3" not in {hit["video_id"] for hit in again["results"]} and again["searched_videos"] == 4
        other = (await two.post("/v1/search", json=body, headers=B)).json()
        assert other["stage1"] == "index" and other["searched_videos"] == 5
        indexes = two.app.state.runtime.stage1._tenants
        assert len(indexes) == 2 and sorted(len(index) for index in indexes.values()) == [4, 5]
