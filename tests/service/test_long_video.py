"""Videos longer than the model's window, through the live app: real Redis, real ORT, the ASGI transport.

The small bundle's window is 75 clips. A longer video runs on overlapping windows (TEF relative to each
window), in fair runs of at most ``max_batch_size`` rows; a video that fits the window answers exactly as
the single-window code path did.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from svc_helpers import (
    DEFAULT_BUNDLE,
    b64,
    manifest_of,
    model_text,
    model_video,
    npy_bytes,
    npz_bytes,
    random_groups,
    random_text,
    serve,
)

from service.cache import LocalInputs
from service.inference.batcher import fair_shares
from service.settings import Settings
from trdetr_common.features import pad_batch
from trdetr_common.postprocess import clip_saliency, rank_moments
from trdetr_common.windows import WindowOutput, merge_moments, merge_saliency

NPZ = {"content-type": "application/x-npz"}


@pytest.fixture(scope="module")
def pre(small_bundle):
    return manifest_of(small_bundle).preprocessing


def query(tokens: np.ndarray) -> dict:
    return {"features_b64": b64(npy_bytes(tokens))}


async def store(client, video_id: str, groups: dict[str, np.ndarray]) -> None:
    response = await client.put(f"/v1/videos/{video_id}/features", content=npz_bytes(**groups), headers=NPZ)
    assert response.status_code == 200, response.text


def run_model(runtime, texts: list[np.ndarray], videos: list[np.ndarray]) -> list[WindowOutput]:
    """The app's own ORT session on one padded batch (the single-window code path's batch building)."""
    src_txt, txt_mask = pad_batch(texts)
    src_vid, vid_mask = pad_batch(videos)
    out = runtime.bundle.run({"src_txt": src_txt, "src_txt_mask": txt_mask, "src_vid": src_vid,
                              "src_vid_mask": vid_mask})
    return [WindowOutput(out["pred_logits"][i], out["pred_spans"][i], out["saliency_scores"][i, :len(videos[i])])
            for i in range(len(texts))]


def moments_of(body: dict) -> np.ndarray:
    return np.array([[m["start"], m["end"], m["score"]] for m in body["moments"]]).reshape(-1, 3)


@pytest.mark.anyio
async def test_a_video_that_fits_the_window_answers_exactly_as_the_single_window_path(client, pre):
    groups = random_groups(pre, 60, seed=1)
    await store(client, "fits", groups)
    runtime = client.app.state.runtime
    video = model_video(groups, pre, stored=True)
    for tokens in ([5], [3, 9, 6]):  # one query (no padding) and a padded batch of three
        texts = [random_text(pre, n, seed=10 + n) for n in tokens]
        body = {"video_id": "fits", "queries": [query(t) for t in texts], "top_k": 7}
        got_m = (await client.post("/v1/moments", json={**body, "nms_iou": 0.6})).json()
        got_h = (await client.post("/v1/highlights", json=body)).json()
        want = run_model(runtime, [model_text(t, pre) for t in texts], [video] * len(texts))
        one = {"window_clips": 75, "stride_clips": runtime.stride_clips, "num_windows": 1, "merge": "none"}
        assert got_m["windowing"] == got_h["windowing"] == one
        for i, row in enumerate(want):
            expected = rank_moments(row.pred_logits, row.pred_spans, num_clips=60, clip_length_s=2.0, top_k=7,
                                    nms_iou=0.6)
            assert np.array_equal(moments_of(got_m["results"][i]), expected)  # bit for bit
            raw = clip_saliency(row.saliency, 2.0).raw
            assert [c["raw"] for c in got_h["results"][i]["clips"]] == raw.tolist()


@pytest.mark.anyio
async def test_a_long_video_runs_on_windows_with_tef_relative_to_each_window(make_settings, pre):
    """Every window is the model input of the cropped video (as training built it); the answers are the
    windows' outputs merged by trdetr_common.windows."""
    groups = random_groups(pre, 200, seed=2)
    texts = [random_text(pre, 6, seed=3)]
    async with serve(make_settings(max_batch_size=1)) as client:  # one window per run: the reference's batches
        runtime = client.app.state.runtime
        await store(client, "long", groups)
        body = {"video_id": "long", "queries": [query(texts[0])], "top_k": 5}
        got_m = (await client.post("/v1/moments", json=body)).json()
        got_h = (await client.post("/v1/highlights", json=body)).json()
        plan = runtime.window_plan(200)
        crops = [model_video({k: a[s:s + 75] for k, a in groups.items()}, pre, stored=True) for s in plan.starts]
        outputs = [run_model(runtime, [model_text(texts[0], pre)], [crop])[0] for crop in crops]
        metrics = (await client.get("/metrics")).text

    assert plan.num_windows > 2 and plan.starts[-1] == 125
    rule = runtime.settings.moment_merge
    assert got_m["windowing"] == {"window_clips": 75, "stride_clips": plan.stride, "num_windows": plan.num_windows,
                                  "merge": rule}
    assert got_h["windowing"]["merge"] == "mean" and got_m["num_clips"] == 200 and got_m["duration_s"] == 400.0
    expected = merge_moments(outputs, plan, clip_length_s=2.0, rule=rule, top_k=5)
    assert np.array_equal(moments_of(got_m["results"][0]), expected)
    clips = got_h["results"][0]["clips"]
    assert len(clips) == 200 and clips[-1]["end"] == 400.0
    raw = merge_saliency([o.saliency for o in outputs], plan)
    np.testing.assert_array_equal([c["raw"] for c in clips], raw)
    assert [c["clip"] for c in got_h["results"][0]["top_clips"]] == np.argsort(-raw, kind="stable")[:5].tolist()
    assert f"trdetr_inference_request_windows_sum {2.0 * plan.num_windows}" in metrics


class RecordingModel:
    """The real model behind a gate that records each run's rows (by text length) and batch shape."""

    def __init__(self, model_fn, delay_s: float = 0.0) -> None:
        self.model_fn, self.delay_s = model_fn, delay_s
        self.gate, self.started = threading.Event(), threading.Event()
        self.runs: list[list[int]] = []
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, feeds):
        self.started.set()
        self.gate.wait(timeout=30)
        time.sleep(self.delay_s)
        self.runs.append(feeds["src_txt_mask"].sum(1).astype(int).tolist())
        self.shapes.append(feeds["src_vid"].shape)
        return self.model_fn(feeds)


@pytest.mark.anyio
async def test_a_long_request_is_split_into_bounded_runs_and_does_not_starve_a_short_one(make_settings, pre):
    async with serve(make_settings(max_batch_size=2, max_batch_wait_ms=0.0)) as client:
        batcher = client.app.state.runtime.batcher
        model = batcher.model_fn = RecordingModel(batcher.model_fn)
        await store(client, "long-fair", random_groups(pre, 450, seed=4))
        await store(client, "short-fair", random_groups(pre, 10, seed=5))
        windows = client.app.state.runtime.window_plan(450).num_windows
        long_body = {"video_id": "long-fair", "queries": [query(random_text(pre, 4, seed=6))] * 2}
        long_task = asyncio.create_task(client.post("/v1/moments", json=long_body))
        await _until(model.started.is_set)  # the first run (2 rows of the long request) is held
        short_task = asyncio.create_task(client.post(
            "/v1/moments", json={"video_id": "short-fair", "queries": [query(random_text(pre, 7, seed=7))]}))
        await _until(lambda: batcher.queue_depth == 2)
        model.gate.set()
        long_response, short_response = await long_task, await short_task

    assert long_response.status_code == short_response.status_code == 200
    assert long_response.json()["windowing"]["num_windows"] == windows
    assert model.runs[0] == [4, 4] and sorted(model.runs[1]) == [4, 7], model.runs  # the very next run
    assert sum(len(run) for run in model.runs) == 2 * windows + 1
    assert all(7 not in run for run in model.runs[2:])
    assert all(shape[0] <= 2 and shape[1] <= 75 for shape in model.shapes)  # only a run is materialised


@pytest.mark.anyio
async def test_a_long_request_past_its_deadline_is_504_and_stops_using_runs(make_settings, pre):
    async with serve(make_settings(max_batch_size=1, request_timeout_s=0.5)) as client:
        batcher = client.app.state.runtime.batcher
        real = batcher.model_fn
        model = batcher.model_fn = RecordingModel(real, delay_s=0.1)
        model.gate.set()
        await store(client, "long-late", random_groups(pre, 450, seed=8))
        await store(client, "short-late", random_groups(pre, 10, seed=8))
        body = {"video_id": "long-late", "queries": [query(random_text(pre, 4, seed=9))] * 2}
        late = await client.post("/v1/moments", json=body)
        runs_at_504 = len(model.runs)
        await asyncio.sleep(0.5)
        runs_after = len(model.runs)
        batcher.model_fn = real
        assert (await client.post("/v1/moments", json={"video_id": "short-late", "queries": [
            query(random_text(pre, 4, seed=9))]})).status_code == 200
    assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
    assert runs_at_504 < 2 * client.app.state.runtime.window_plan(450).num_windows
    assert runs_after <= runs_at_504 + 1, "the expired request kept consuming runs"


@pytest.mark.anyio
async def test_over_the_length_limit_is_a_422_naming_seconds_and_clips(make_settings, pre):
    async with serve(make_settings(max_video_s=100, local_cache_mb=1.5)) as client:
        refused = await client.put("/v1/videos/too-long/features", content=npz_bytes(**random_groups(pre, 51, seed=10)),
                                   headers=NPZ)
        inline = await client.post("/v1/moments", json={
            "video": {"format": "npz", "data_b64": b64(npz_bytes(**random_groups(pre, 51, seed=10)))},
            "queries": [query(random_text(pre, 3, seed=11))]})
        accepted = await client.put("/v1/videos/at-limit/features",
                                    content=npz_bytes(**random_groups(pre, 50, seed=12)), headers=NPZ)
        model = (await client.get("/v1/model")).json()
        local = client.app.state.runtime.store.local
    for response in (refused, inline):
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "video_too_long"
        for words in ("51 clips (102 s)", "at most 50 clips (100 s", "TRDETR_MAX_VIDEO_S"):
            assert words in error["message"], error["message"]
        assert error["details"] == {"num_clips": 51, "max_clips": 50, "duration_s": 102.0, "max_video_s": 100.0}
    assert accepted.status_code == 200
    assert model["limits"]["max_video_clips"] == 50 and model["limits"]["max_video_s"] == 100.0
    assert model["max_video_clips"] == 75 and model["window_stride_clips"] >= 1
    assert local.max_bytes == int(1.5 * 1024 * 1024)


def test_fair_shares_split_a_run_evenly_and_give_the_rest_to_the_first():
    assert fair_shares([100, 1], 32) == [31, 1]
    assert fair_shares([100, 100, 100], 32) == [11, 11, 10]
    assert fair_shares([3, 0, 2], 32) == [3, 0, 2]
    assert fair_shares([5], 2) == [2]


def test_the_local_cache_is_bounded_by_bytes_as_well_as_by_count():
    cache = LocalInputs(capacity=10, max_bytes=1000)
    for name in ("a", "b", "c"):
        cache.remember(name, "v1", np.zeros(100, np.float32))  # 400 bytes each
    assert "a" not in cache and "b" in cache and "c" in cache and cache.nbytes == 800
    cache.remember("huge", "v1", np.zeros(300, np.float32))  # larger than the whole budget: never kept
    assert "huge" not in cache and len(cache) == 2
    cache.remember("b", "v2", np.zeros(50, np.float32))  # a new version replaces the old one's bytes
    assert cache.nbytes == 600 and cache.lookup("b", "v2") is not None


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_three_hour_float32_upload_fits_the_default_limits(redis_url, key_prefix):
    """5400 clips of the released layout (61 MB as float32) are accepted by a default configuration."""
    pre = manifest_of(DEFAULT_BUNDLE).preprocessing
    clips = int(Settings().max_video_s // pre.clip_length_s)
    body = npz_bytes(**{g.name: np.ones((clips, g.dim), np.float32) for g in pre.video_groups})
    assert len(body) <= Settings().max_body_bytes
    settings = Settings(redis_url=redis_url, redis_key_prefix=key_prefix, warmup_runs=0, device="cpu",
                        intra_op_threads=1)
    async with serve(settings) as client:
        response = await client.put("/v1/videos/three-hours/features", content=body, headers=NPZ)
    assert response.status_code == 200, response.text[:500]
    assert response.json()["num_clips"] == 5400 and response.json()["duration_s"] == 10800.0


async def _until(condition, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not condition():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)
