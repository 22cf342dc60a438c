"""Every endpoint's happy path, with answers equal to the torch model's post-processed outputs."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from svc_helpers import (
    b64,
    full_layout,
    manifest_of,
    model_text,
    model_video,
    npy_bytes,
    npz_bytes,
    random_groups,
    random_text,
    serve,
)

from trdetr_common.postprocess import clip_saliency, rank_moments, top_clips

pytestmark = pytest.mark.anyio

NPZ = {"content-type": "application/x-npz"}
NPY = {"content-type": "application/x-npy"}


@pytest.fixture(scope="module")
def pre(small_bundle):
    return manifest_of(small_bundle).preprocessing


def feature_query(tokens: np.ndarray) -> dict:
    return {"features_b64": b64(npy_bytes(tokens))}


def expected_moments(reference, text, video, pre, **kwargs) -> np.ndarray:
    out = reference(model_text(text, pre), video)
    return rank_moments(out["pred_logits"], out["pred_spans"], num_clips=len(video),
                        clip_length_s=pre.clip_length_s, **kwargs)


def as_array(moments: list[dict]) -> np.ndarray:
    return np.array([[m["start"], m["end"], m["score"]] for m in moments]).reshape(-1, 3)


TIE = 1e-4  # scores closer than this are a near-tie: ORT and torch may rank them either way


def assert_same_moments(got: list[dict], want: np.ndarray) -> None:
    """Same windows (whole clips, no float noise) and scores rank by rank; only moments whose scores are
    within ``TIE`` of each other may swap places."""
    got_array = as_array(got)
    assert got_array.shape == want.shape
    np.testing.assert_allclose(got_array[:, 2], want[:, 2], atol=TIE)
    for rank, (start, end, score) in enumerate(got_array):
        if (want[rank, :2] == (start, end)).all():
            continue
        tied = want[np.abs(want[:, 2] - score) <= TIE]
        assert ((tied[:, :2] == (start, end)).all(axis=1)).any(), (rank, got_array, want)


async def test_store_npz_reports_clips_duration_dims_expiry_and_truncation(client, pre):
    groups = random_groups(pre, {pre.video_groups[0].name: 31, pre.video_groups[1].name: 30}, seed=1)
    response = await client.put("/v1/videos/ep-npz/features", content=npz_bytes(**groups), headers=NPZ)
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["num_clips"] == 30
    assert info["duration_s"] == 30 * pre.clip_length_s
    assert info["dim"] == sum(g.dim for g in pre.video_groups)
    assert info["groups"] == {g.name: g.dim for g in pre.video_groups}
    assert info["storage_dtype"].startswith("float16")
    assert 0 < info["ttl_s"] <= client.app.state.runtime.settings.feature_ttl_s
    assert any("cut to the shortest, 30 clips" in note for note in info["notes"])


async def test_get_video_gives_metadata_and_ttl_left(client, pre):
    await client.put("/v1/videos/ep-get/features", content=npz_bytes(**random_groups(pre, 12, seed=2)), headers=NPZ)
    response = await client.get("/v1/videos/ep-get")
    assert response.status_code == 200
    assert response.json()["num_clips"] == 12
    assert 0 < response.json()["ttl_s"] <= client.app.state.runtime.settings.feature_ttl_s


async def test_delete_video_removes_it(client, pre):
    await client.put("/v1/videos/ep-del/features", content=npz_bytes(**random_groups(pre, 5, seed=3)), headers=NPZ)
    assert (await client.delete("/v1/videos/ep-del")).json() == {"video_id": "ep-del", "deleted": True}
    assert (await client.get("/v1/videos/ep-del")).status_code == 404
    assert (await client.delete("/v1/videos/ep-del")).status_code == 404


async def test_moments_on_stored_npz_equal_torch_model(client, pre, reference):
    groups = random_groups(pre, 40, seed=4)
    await client.put("/v1/videos/ep-mr/features", content=npz_bytes(**groups), headers=NPZ)
    texts = [random_text(pre, 9, seed=5), random_text(pre, 3, seed=6)]
    response = await client.post("/v1/moments", json={
        "video_id": "ep-mr", "queries": [feature_query(t) for t in texts], "top_k": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["num_clips"] == 40 and body["duration_s"] == 40 * pre.clip_length_s
    video = model_video(groups, pre, stored=True)
    for result, text in zip(body["results"], texts, strict=True):
        assert_same_moments(result["moments"], expected_moments(reference, text, video, pre, top_k=4))
        moments = as_array(result["moments"])
        assert (np.diff(moments[:, 2]) <= 0).all(), "sorted best first"
        assert (moments[:, 0] >= 0).all() and (moments[:, 1] <= body["duration_s"]).all(), "clamped"


async def test_moments_nms_and_min_score_follow_the_official_postprocessing(client, pre, reference):
    groups = random_groups(pre, 25, seed=7)
    await client.put("/v1/videos/ep-nms/features", content=npz_bytes(**groups), headers=NPZ)
    text = random_text(pre, 6, seed=8)
    response = await client.post("/v1/moments", json={
        "video_id": "ep-nms", "queries": [feature_query(text)], "top_k": 10, "nms_iou": 0.5, "min_score": 0.2})
    want = expected_moments(reference, text, model_video(groups, pre, stored=True), pre,
                            top_k=10, nms_iou=0.5, min_score=0.2)
    assert_same_moments(response.json()["results"][0]["moments"], want)


async def test_store_npy_fp16_full_layout_equals_npz(client, pre, reference):
    groups = random_groups(pre, 18, seed=9, dtype="float16")
    response = await client.put("/v1/videos/ep-npy/features", content=npy_bytes(full_layout(groups)), headers=NPY)
    assert response.status_code == 200, response.text
    assert response.json()["notes"] == []
    text = random_text(pre, 5, seed=10)
    response = await client.post("/v1/moments", json={"video_id": "ep-npy", "queries": [feature_query(text)]})
    want = expected_moments(reference, text, model_video(groups, pre, stored=True), pre, top_k=5)
    assert_same_moments(response.json()["results"][0]["moments"], want)


async def test_moments_with_inline_video_need_no_cache(client, pre, reference):
    groups = random_groups(pre, 14, seed=11)
    text = random_text(pre, 4, seed=12)
    response = await client.post("/v1/moments", json={
        "video": {"format": "npz", "data_b64": b64(npz_bytes(**groups))}, "queries": [feature_query(text)]})
    assert response.status_code == 200, response.text
    assert response.json()["video_id"] is None
    want = expected_moments(reference, text, model_video(groups, pre, stored=False), pre, top_k=5)
    assert_same_moments(response.json()["results"][0]["moments"], want)


async def test_highlights_give_raw_and_normalised_scores_of_every_clip(client, pre, reference):
    groups = random_groups(pre, 20, seed=13)
    await client.put("/v1/videos/ep-hd/features", content=npz_bytes(**groups), headers=NPZ)
    text = random_text(pre, 8, seed=14)
    response = await client.post("/v1/highlights", json={
        "video_id": "ep-hd", "queries": [feature_query(text)], "top_k": 3})
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    saliency = reference(model_text(text, pre), model_video(groups, pre, stored=True))["saliency_scores"]
    want = clip_saliency(saliency, pre.clip_length_s)
    clips = result["clips"]
    assert [c["clip"] for c in clips] == list(range(20))
    np.testing.assert_allclose([c["raw"] for c in clips], want.raw, atol=1e-4)
    np.testing.assert_allclose([c["normalized"] for c in clips], want.normalized, atol=1e-3)
    assert [(c["start"], c["end"]) for c in clips] == [(i * 2.0, i * 2.0 + 2.0) for i in range(20)]
    assert min(c["normalized"] for c in clips) == 0.0 and max(c["normalized"] for c in clips) == 1.0
    assert [c["clip"] for c in result["top_clips"]] == top_clips(saliency, 3).tolist()


async def test_model_summary_names_the_active_providers(client, pre):
    body = (await client.get("/v1/model")).json()
    assert body["providers"] == ["CPUExecutionProvider"]
    assert body["video_groups"] == {g.name: g.dim for g in pre.video_groups}
    assert body["text_dim"] == pre.text_dim and body["max_video_clips"] == pre.max_video_clips
    assert body["text_encoder"] is False


async def test_health_and_readiness(client):
    assert (await client.get("/healthz")).json()["status"] == "ok"
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["providers"] == ["CPUExecutionProvider"]
    assert ready.json()["checks"]["feature_cache"] == "ok"


async def test_metrics_count_requests_batches_and_cache_results(client, pre):
    await client.get("/v1/videos/ep-never-stored")
    text = {"features_b64": b64(npy_bytes(random_text(pre, 3, seed=15)))}
    await client.post("/v1/highlights", json={
        "video": {"format": "npy", "data_b64": b64(npy_bytes(full_layout(random_groups(pre, 6, seed=16))))},
        "queries": [text]})
    text_metrics = (await client.get("/metrics")).text
    for needle in (
        'trdetr_http_requests_total{method="GET",route="/v1/videos/{video_id}",status="404"}',
        'trdetr_http_request_duration_seconds_bucket{le="0.001",method="POST",route="/v1/highlights"}',
        "trdetr_inference_batch_size_count",
        "trdetr_inference_queue_wait_seconds_count",
        "trdetr_inference_compute_seconds_count",
        "trdetr_inference_queue_depth",
        'trdetr_cache_requests_total{op="metadata",result="miss"}',
    ):
        assert needle in text_metrics, needle


async def test_openapi_documents_every_endpoint_with_examples(client):
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path, method in [("/v1/videos/{video_id}/features", "put"), ("/v1/videos/{video_id}", "get"),
                         ("/v1/videos/{video_id}", "delete"), ("/v1/moments", "post"), ("/v1/highlights", "post"),
                         ("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get"), ("/v1/model", "get")]:
        assert method in paths[path], (path, method)
    upload = paths["/v1/videos/{video_id}/features"]["put"]["requestBody"]["content"]
    assert {"application/x-npy", "application/x-npz"} <= set(upload)
    schemas = spec["components"]["schemas"]
    for name in ("MomentsRequest", "MomentsResponse", "HighlightsResponse", "VideoInfo"):
        assert schemas[name].get("examples"), name
    assert "negative" in paths["/v1/highlights"]["post"]["description"]
    for path, method, status in [("/v1/moments", "post", "422"), ("/v1/moments", "post", "429"),
                                 ("/v1/videos/{video_id}/features", "put", "415"), ("/v1/videos/{video_id}", "get", "404")]:
        schema = paths[path][method]["responses"][status]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/ErrorResponse"), (path, status)


async def test_storing_again_replaces_atomically_while_readers_run(client, pre):
    versions = {10: npz_bytes(**random_groups(pre, 10, seed=17)), 20: npz_bytes(**random_groups(pre, 20, seed=18))}
    await client.put("/v1/videos/ep-swap/features", content=versions[10], headers=NPZ)
    query = feature_query(random_text(pre, 3, seed=19))

    async def writer(clips: int):
        return await client.put("/v1/videos/ep-swap/features", content=versions[clips], headers=NPZ)

    async def reader():
        return await client.post("/v1/highlights", json={"video_id": "ep-swap", "queries": [query]})

    calls = [writer(20 if i % 2 else 10) if i % 3 == 0 else reader() for i in range(24)]
    for response in await asyncio.gather(*calls):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["num_clips"] in (10, 20)
        if "results" in body:  # a reader saw one whole version: as many clip scores as clips
            assert len(body["results"][0]["clips"]) == body["num_clips"]
    await writer(20)
    assert (await client.get("/v1/videos/ep-swap")).json()["num_clips"] == 20


async def test_features_expire_after_the_ttl(make_settings, pre):
    async with serve(make_settings(feature_ttl_s=1)) as short:
        stored = await short.put("/v1/videos/ep-ttl/features", content=npz_bytes(**random_groups(pre, 4, seed=20)),
                                 headers=NPZ)
        assert stored.json()["ttl_s"] == 1
        await asyncio.sleep(1.6)
        assert (await short.get("/v1/videos/ep-ttl")).status_code == 404
