"""Stage 1 of POST /v1/search (issue 12): candidates by CLIP text embedding vs per-video CLIP image summaries,
in a per-tenant vector index kept consistent across replicas through the Redis change log."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import redis
from svc_helpers import DEFAULT_BUNDLE, b64, manifest_of, npy_bytes, npz_bytes, random_text, serve

from service.stage1 import SUMMARY_DTYPE, TenantIndex, video_summary
from service.tenancy import SHARED_TENANT_ID, tenant_for_key

pytestmark = pytest.mark.anyio

NPZ = {"content-type": "application/x-npz"}
QUERY = "a dog catches a frisbee"
KEY_A, KEY_B = "alpha-key-8f2e1c5b7d", "bravo-key-3a9d6e0f42"


@pytest.fixture(scope="module")
def pre():
    return manifest_of(DEFAULT_BUNDLE).preprocessing


@pytest.fixture
def settings_for(make_settings, key_prefix):
    prefix = f"{key_prefix}:stage1{time.monotonic_ns()}"

    def make(**overrides):
        values = {
            "bundle_dir": DEFAULT_BUNDLE,
            "redis_key_prefix": prefix,
            "search_candidates": 2,
            "local_cache_videos": 0,
        }
        return make_settings(**{**values, **overrides})

    return make


async def embed_of(app, text: str) -> np.ndarray:
    return (await app.app.state.runtime.text.encode_texts([text]))[0].embed


def video(pre, clips: int, seed: int, match: np.ndarray | None = None, matching_clips: int = 1) -> bytes:
    """Random groups; with ``match``, the first ``matching_clips`` CLIP rows are that embedding (a video whose
    frames look like the query)."""
    rng = np.random.default_rng(seed)
    groups = {g.name: rng.standard_normal((clips, g.dim)).astype(np.float32) for g in pre.video_groups}
    if match is not None:
        groups["clip"][:matching_clips] = match
    return npz_bytes(**groups)


async def put(app, pre, video_id: str, seed: int, match=None, headers=None, collection: str = "all") -> None:
    response = await app.put(
        f"/v1/videos/{video_id}/features?collection={collection}",
        content=video(pre, 6, seed, match),
        headers={**NPZ, **(headers or {})},
    )
    assert response.status_code == 200, response.text


async def search(app, headers=None, **body) -> dict:
    response = await app.post(
        "/v1/search",
        json={"query": QUERY, "collection": "all", "top_k": 100, "per_video_k": 1, **body},
        headers=headers or {},
    )
    assert response.status_code == 200, response.text
    return response.json()


def searched_ids(answer: dict) -> set[str]:
    return {hit["video_id"] for hit in answer["results"]}


def test_the_default_bundle_has_the_text_embedding_and_names_the_clip_group(pre):
    spec = pre.text_encoder
    assert (spec.embedding_output, spec.embedding_group) == ("text_embeds", "clip")


def test_the_summary_is_the_mean_over_clips_l2_normalised():
    rows = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.0], [-1.0, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(video_summary(rows), [0.0, 1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(
        video_summary(rows, "max"), np.array([1.0, 0.5, 0.0]) / np.hypot(1.0, 0.5), rtol=1e-6
    )


def test_exact_and_hnsw_search_agree_and_respect_the_scope():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"v{i}" for i in range(500)]
    exact, approximate = TenantIndex(32, exact_max=10_000), TenantIndex(32, exact_max=0)
    for index in (exact, approximate):
        index.upsert(ids, vectors)
    query = vectors[7] + 0.1 * rng.standard_normal(32).astype(np.float32)
    scope = ids[::2]  # half of the videos
    best = exact.top(query, scope, 10)
    expected = np.argsort(-(vectors[::2] @ query))[:10]
    assert best == [scope[i] for i in expected]
    assert len(set(approximate.top(query, scope, 10)) & set(best)) >= 9
    assert set(approximate.top(query, scope, 10)) <= set(scope)
    exact.remove(["v0", best[0]])
    assert best[0] not in exact.top(query, scope, 10) and len(exact) == 498


async def test_the_text_encoder_gives_the_normalised_embedding_next_to_the_tokens(settings_for):
    async with serve(settings_for()) as app:
        runtime = app.app.state.runtime
        encoded = (await runtime.text.encode_texts([QUERY]))[0]
        again = (await runtime.text.encode_texts(["  A dog catches a FRISBEE "]))[0]  # the LRU's entry
        assert encoded.embed.shape == (512,) and abs(float(np.linalg.norm(encoded.embed)) - 1.0) < 1e-5
        assert again is encoded
        encoder = runtime.bundle.text_encoder
        ids, mask = encoder.tokenize([QUERY])
        raw = encoder.model.run({"input_ids": ids, "attention_mask": mask})["text_embeds"][0]
        np.testing.assert_array_equal(encoded.embed, raw)
        np.testing.assert_array_equal(encoded.tokens, encoder.encode([QUERY])[0])


async def test_a_put_stores_the_summary_next_to_the_features(settings_for, pre, redis_url):
    settings = settings_for()
    async with serve(settings) as app:
        await put(app, pre, "v", seed=3)
        store = app.app.state.runtime.store.tenant(SHARED_TENANT_ID)
    client = redis.Redis.from_url(redis_url)
    blob, ttl = client.hget(store.keys.video("v"), "s1"), client.ttl(store.keys.video("v"))
    clip = np.load(__import__("io").BytesIO(video(pre, 6, 3)))["clip"]
    clip /= np.linalg.norm(clip, axis=1, keepdims=True) + pre.l2_eps
    np.testing.assert_allclose(np.frombuffer(blob, SUMMARY_DTYPE), video_summary(clip), atol=2e-3)
    assert ttl > 0


async def test_two_replicas_share_one_index_through_redis(settings_for, pre):
    async with serve(settings_for()) as a, serve(settings_for()) as b:
        match = await embed_of(a, QUERY)
        for i in range(6):
            await put(a, pre, f"noise{i}", seed=10 + i)
        await put(a, pre, "target", seed=1, match=match)
        on_b = await search(b)  # put on A, search on B
        assert on_b["stage1"] == "index" and on_b["candidate_videos"] == 2 and on_b["searched_videos"] == 7
        assert "target" in searched_ids(on_b) and len(searched_ids(on_b)) == 2
        assert (await b.delete("/v1/videos/target")).status_code == 200  # delete on B
        on_a = await search(a)
        assert "target" not in searched_ids(on_a) and on_a["searched_videos"] == 6
        index = await a.app.state.runtime.stage1.synced(a.app.state.runtime.store.tenant(SHARED_TENANT_ID))
        assert "target" not in index.keys and len(index) == 6
        await put(b, pre, "noise0", seed=2, match=match)  # a replace on B moves a video to the top on A
        assert "noise0" in searched_ids(await search(a))
        assert a.app.state.runtime.stage1.rebuilds == 1 and b.app.state.runtime.stage1.rebuilds == 1


async def test_a_replica_whose_log_entries_were_trimmed_rebuilds(settings_for, pre, redis_url):
    async with serve(settings_for()) as a, serve(settings_for()) as b:
        match = await embed_of(a, QUERY)
        for i in range(4):
            await put(a, pre, f"noise{i}", seed=10 + i)
        await search(b)
        await put(a, pre, "target", seed=1, match=match)
        await put(a, pre, "late", seed=5)
        keys = a.app.state.runtime.store.tenant(SHARED_TENANT_ID).keys
        redis.Redis.from_url(redis_url).xtrim(
            keys.stage1_log(), maxlen=1, approximate=False
        )  # B's next entry is gone
        answer = await search(b)
        assert b.app.state.runtime.stage1.rebuilds == 2 and "target" in searched_ids(answer)
        assert answer["searched_videos"] == 6


async def test_expired_videos_leave_the_index(settings_for, pre):
    async with serve(settings_for(feature_ttl_s=1)) as app:
        match = await embed_of(app, QUERY)
        await put(app, pre, "target", seed=1, match=match)
        for i in range(3):
            await put(app, pre, f"noise{i}", seed=10 + i)
        assert "target" in searched_ids(await search(app))
    async with serve(settings_for(feature_ttl_s=60)) as app:
        await asyncio.sleep(1.5)
        for i in range(3, 6):
            await put(app, pre, f"noise{i}", seed=10 + i)
        answer = await search(app)
        assert "target" not in searched_ids(answer) and answer["searched_videos"] == 3
        index = await app.app.state.runtime.stage1.synced(
            app.app.state.runtime.store.tenant(SHARED_TENANT_ID)
        )
        assert set(index.keys) == {"noise3", "noise4", "noise5"}


async def test_each_api_key_has_its_own_index(settings_for, pre):
    a, b = {"X-API-Key": KEY_A}, {"X-API-Key": KEY_B}
    async with serve(settings_for(api_keys=[KEY_A, KEY_B])) as app:
        match = await embed_of(app, QUERY)
        await put(app, pre, "target", seed=1, match=match, headers=a)
        for i in range(4):
            await put(app, pre, f"noise{i}", seed=10 + i, headers=b)
        assert "target" in searched_ids(await search(app, a))  # A's scope is only its own video
        answer = await search(app, b)
        assert answer["stage1"] == "index" and "target" not in searched_ids(answer)
        runtime = app.app.state.runtime
        index_b = await runtime.stage1.synced(runtime.store.tenant(tenant_for_key(KEY_B).id))
        assert set(index_b.keys) == {f"noise{i}" for i in range(4)}


async def test_without_a_text_embedding_the_search_is_exhaustive_up_to_the_limit_and_says_why(
    settings_for, pre
):
    async with serve(settings_for(search_exhaustive_limit=3)) as app:
        for i in range(5):
            await put(app, pre, f"v{i}", seed=i)
        features = {"features_b64": b64(npy_bytes(random_text(pre, 4, seed=1)))}
        answer = await search(app, query=features)
        assert answer["stage1"] == "exhaustive_limit" and answer["candidate_videos"] == 3
        assert (
            "token features" in answer["notes"][0] and "TRDETR_SEARCH_EXHAUSTIVE_LIMIT" in answer["notes"][0]
        )
        assert (await search(app))["stage1"] == "index"
