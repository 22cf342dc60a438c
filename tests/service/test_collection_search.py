"""POST /v1/search (issue 12): one query over a collection, ranked across videos, paged by cursor."""

from __future__ import annotations

import time

import pytest
from svc_helpers import b64, manifest_of, npy_bytes, npz_bytes, random_groups, random_text, serve

pytestmark = pytest.mark.anyio

NPZ = {"content-type": "application/x-npz"}
CLIPS = {"a": 20, "b": 75, "long": 160, "c": 9, "d": 40}  # "long": three windows of the 75-clip model


@pytest.fixture(scope="module")
def pre(small_bundle):
    return manifest_of(small_bundle).preprocessing


@pytest.fixture
async def app(make_settings, key_prefix):
    async with serve(make_settings(redis_key_prefix=f"{key_prefix}:search{time.monotonic_ns()}")) as client:
        yield client


def query(pre) -> dict:
    return {"features_b64": b64(npy_bytes(random_text(pre, 5, seed=11)))}


async def store_all(app, pre, collection: str = "set") -> None:
    for seed, (video_id, clips) in enumerate(CLIPS.items()):
        body = npz_bytes(**random_groups(pre, clips, seed=seed))
        response = await app.put(f"/v1/videos/{video_id}/features?collection={collection}", content=body,
                                 headers=NPZ)
        assert response.status_code == 200, response.text


async def all_pages(app, body: dict) -> tuple[list[dict], dict]:
    first = response = (await app.post("/v1/search", json=body)).json()
    hits = list(response["results"])
    while response["next_cursor"]:
        response = (await app.post("/v1/search", json={**body, "cursor": response["next_cursor"]})).json()
        assert len(response["results"]) <= body["top_k"]
        hits += response["results"]
    return hits, first


async def test_ranking_across_videos_equals_each_videos_moments(app, pre):
    await store_all(app, pre)
    body = {"query": query(pre), "collection": "set", "top_k": 4, "per_video_k": 3, "nms_iou": 0.7}
    hits, first = await all_pages(app, body)
    assert first["searched_videos"] == first["candidate_videos"] == len(CLIPS) and first["stage1"] == "none"
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True) and len(hits) == len({(h["video_id"], h["start"]) for h in hits})
    for video_id in CLIPS:
        moments = (await app.post("/v1/moments", json={"video_id": video_id, "queries": [query(pre)], "top_k": 3,
                                                       "nms_iou": 0.7})).json()["results"][0]["moments"]
        mine = [h for h in hits if h["video_id"] == video_id]
        # spans exactly; scores up to float32 rounding (batched with other videos' rows vs. alone)
        assert [(h["start"], h["end"]) for h in mine] == [(m["start"], m["end"]) for m in moments], video_id
        assert [h["score"] for h in mine] == pytest.approx([m["score"] for m in moments], abs=1e-5), video_id
    # the same by ids; a deleted video drops out of later searches
    by_ids, _ = await all_pages(app, {**body, "collection": None, "video_ids": list(CLIPS)})
    assert [(h["video_id"], h["start"], h["end"]) for h in by_ids] == [(h["video_id"], h["start"], h["end"])
                                                                        for h in hits]
    assert (await app.delete("/v1/videos/long")).status_code == 200
    again, first = await all_pages(app, body)
    assert first["searched_videos"] == len(CLIPS) - 1 and {h["video_id"] for h in again} == set(CLIPS) - {"long"}


async def test_errors_name_what_to_fix(make_settings, key_prefix, pre):
    settings = make_settings(redis_key_prefix=f"{key_prefix}:searcherr{time.monotonic_ns()}", search_max_video_ids=3)
    async with serve(settings) as app:
        await store_all(app, pre)
        unknown = await app.post("/v1/search", json={"query": query(pre), "collection": "nope"})
        assert unknown.status_code == 404 and "nope" in unknown.json()["error"]["message"]
        many = await app.post("/v1/search", json={"query": query(pre), "video_ids": ["a", "b", "c", "d"]})
        assert many.status_code == 422 and many.json()["error"]["code"] == "too_many_video_ids"
        assert many.json()["error"]["details"]["max_video_ids"] == 3 and "3" in many.json()["error"]["message"]
        both = await app.post("/v1/search", json={"query": query(pre), "video_ids": ["a"], "collection": "set"})
        assert both.status_code == 422
        bad = await app.post("/v1/search", json={"query": query(pre), "collection": "set", "cursor": "s1.zz.1"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_cursor"
        page = (await app.post("/v1/search", json={"query": query(pre), "collection": "set", "top_k": 1})).json()
        other = await app.post("/v1/search", json={"query": query(pre), "collection": "set", "top_k": 1,
                                                   "per_video_k": 1, "cursor": page["next_cursor"]})
        assert other.status_code == 422 and "another search" in other.json()["error"]["message"]
        text = await app.post("/v1/search", json={"query": "a dog", "collection": "set"})
        assert text.status_code == 422 and text.json()["error"]["code"] == "text_encoder_missing"


async def test_a_scope_over_the_exhaustive_limit_is_cut_and_the_response_says_so(make_settings, key_prefix, pre):
    settings = make_settings(redis_key_prefix=f"{key_prefix}:searchcut{time.monotonic_ns()}",
                             search_exhaustive_limit=3)
    async with serve(settings) as app:
        await store_all(app, pre)
        answer = (await app.post("/v1/search", json={"query": query(pre), "collection": "set", "top_k": 50})).json()
        assert answer["stage1"] == "exhaustive_limit" and answer["candidate_videos"] == 3
        assert answer["searched_videos"] == len(CLIPS) and "TRDETR_SEARCH_EXHAUSTIVE_LIMIT" in answer["notes"][0]
    async with serve(make_settings(redis_key_prefix=settings.redis_key_prefix, search_exhaustive_limit=5)) as app:
        whole = (await app.post("/v1/search", json={"query": query(pre), "collection": "set", "top_k": 50})).json()
        assert whole["stage1"] == "none" and whole["candidate_videos"] == len(CLIPS) and not whole["notes"]
        assert {h["video_id"] for h in answer["results"]} <= {"a", "b", "long"}
