"""A bundle trained with audio (official layout: PANN after the video's TEF, TEF again after the audio),
served end to end: uploads (.npz, .npy, inline) with the audio group, every search endpoint against the
torch model called the official way (separate src_aud), long videos, and 422s when audio and bundle disagree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from svc_helpers import (
    AUDIO_DIM,
    TorchReference,
    b64,
    manifest_of,
    npy_bytes,
    npz_bytes,
    official_audio_input,
    random_groups,
    random_text,
    run_exporter,
    serve,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
def audio_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("audio_bundle")
    run_exporter("export_audio_bundle", out)
    return out / "bundle"


@pytest.fixture(scope="module")
def audio_reference(audio_bundle: Path) -> TorchReference:
    return TorchReference(audio_bundle.parent / "random_audio.ckpt")


@pytest.fixture(scope="module")
async def audio_client(make_settings, audio_bundle: Path):
    async with serve(make_settings(bundle_dir=audio_bundle)) as http:
        yield http


def _features(pre, clips: int, audio_clips: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    groups = random_groups(pre, clips, seed)
    audio = np.random.default_rng(seed + 100).standard_normal((audio_clips, AUDIO_DIM)).astype(np.float32)
    return groups, audio


def _query(pre, seed: int) -> tuple[np.ndarray, dict]:
    text = random_text(pre, 5, seed)
    return text, {"features_b64": b64(npy_bytes(text))}


def _model_text(text: np.ndarray) -> np.ndarray:
    return text / (np.linalg.norm(text, axis=-1, keepdims=True) + 1e-5)


async def test_audio_upload_and_search_match_the_official_model(audio_client, audio_bundle, audio_reference):
    pre = manifest_of(audio_bundle).preprocessing
    groups, audio = _features(pre, 31, 33, seed=1)  # audio longer than the video: cut to 31 clips
    body = npz_bytes(**groups, pann=audio)
    put = await audio_client.put("/v1/videos/aud-1/features", content=body,
                                 headers={"Content-Type": "application/x-npz"})
    assert put.status_code == 200, put.text
    info = put.json()
    assert info["num_clips"] == 31 and info["groups"] == {"slowfast": 24, "clip": 8, "pann": AUDIO_DIM}
    assert info["dim"] == 24 + 8 + AUDIO_DIM and any("shortest" in n for n in info["notes"])

    text, query = _query(pre, 2)
    video, aud = official_audio_input(groups, audio, stored=True)
    want = audio_reference(_model_text(text), video, aud)
    got = await audio_client.post("/v1/highlights", json={"video_id": "aud-1", "queries": [query]})
    assert got.status_code == 200, got.text
    raw = [c["raw"] for c in got.json()["results"][0]["clips"]]
    np.testing.assert_allclose(raw, want["saliency_scores"], atol=2e-4)
    moments = await audio_client.post("/v1/moments", json={"video_id": "aud-1", "queries": [query], "top_k": 1})
    assert moments.status_code == 200, moments.text
    probs = np.exp(want["pred_logits"]) / np.exp(want["pred_logits"]).sum(-1, keepdims=True)
    assert moments.json()["results"][0]["moments"][0]["score"] == pytest.approx(probs[:, 0].max(), abs=2e-4)

    # the audio is read: other audio, other highlights
    other = npz_bytes(**groups, pann=np.roll(audio, 7, axis=0))
    await audio_client.put("/v1/videos/aud-2/features", content=other, headers={"Content-Type": "application/x-npz"})
    again = await audio_client.post("/v1/highlights", json={"video_id": "aud-2", "queries": [query]})
    assert np.abs(np.array([c["raw"] for c in again.json()["results"][0]["clips"]]) - raw).max() > 1e-3


async def test_inline_npy_with_audio_columns_is_served_unrounded(audio_client, audio_bundle, audio_reference):
    pre = manifest_of(audio_bundle).preprocessing
    groups, audio = _features(pre, 12, 12, seed=3)
    full = np.concatenate([*groups.values(), audio], axis=1)  # video groups, then audio
    text, query = _query(pre, 4)
    request = {"video": {"format": "npy", "data_b64": b64(npy_bytes(full))}, "queries": [query]}
    got = await audio_client.post("/v1/highlights", json=request)
    assert got.status_code == 200, got.text
    video, aud = official_audio_input(groups, audio, stored=False)
    want = audio_reference(_model_text(text), video, aud)
    np.testing.assert_allclose([c["raw"] for c in got.json()["results"][0]["clips"]], want["saliency_scores"],
                               atol=1e-4)


async def test_a_long_audio_video_runs_on_windows(audio_client, audio_bundle):
    pre = manifest_of(audio_bundle).preprocessing
    groups, audio = _features(pre, pre.max_video_clips + 40, pre.max_video_clips + 40, seed=5)
    await audio_client.put("/v1/videos/aud-long/features", content=npz_bytes(**groups, pann=audio),
                           headers={"Content-Type": "application/x-npz"})
    _, query = _query(pre, 6)
    got = await audio_client.post("/v1/highlights", json={"video_id": "aud-long", "queries": [query]})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["num_clips"] == pre.max_video_clips + 40 and len(body["results"][0]["clips"]) == body["num_clips"]
    assert body["windowing"]["num_windows"] >= 2
    moments = await audio_client.post("/v1/moments", json={"video_id": "aud-long", "queries": [query], "top_k": 3})
    assert moments.status_code == 200 and moments.json()["results"][0]["moments"]
    # the cross-video search runs the same windows (both TEF pairs rewritten per window): the same moments
    search = await audio_client.post("/v1/search", json={"query": query, "video_ids": ["aud-long"], "top_k": 3,
                                                          "per_video_k": 3})
    assert search.status_code == 200, search.text
    hits = search.json()["results"]
    want = moments.json()["results"][0]["moments"]
    assert [(h["start"], h["end"]) for h in hits] == [(m["start"], m["end"]) for m in want]
    assert [h["score"] for h in hits] == pytest.approx([m["score"] for m in want], abs=1e-5)


async def test_audio_bundle_refuses_features_without_audio(audio_client, audio_bundle):
    pre = manifest_of(audio_bundle).preprocessing
    groups, _ = _features(pre, 10, 10, seed=7)
    put = await audio_client.put("/v1/videos/aud-x/features", content=npz_bytes(**groups),
                                 headers={"Content-Type": "application/x-npz"})
    assert put.status_code == 422
    error = put.json()["error"]
    assert error["code"] == "bad_groups" and "trained with audio" in error["message"] and "'pann'" in error["message"]
    npy = await audio_client.put("/v1/videos/aud-x/features", content=npy_bytes(np.concatenate(list(groups.values()), 1)),
                                 headers={"Content-Type": "application/x-npy"})
    assert npy.status_code == 422 and "trained with audio" in npy.json()["error"]["message"]
    info = await audio_client.get("/v1/model")
    assert info.json()["audio_groups"] == {"pann": AUDIO_DIM}


async def test_video_only_bundle_refuses_an_audio_group(client, make_settings):
    pre = manifest_of(make_settings().bundle_dir).preprocessing
    groups = random_groups(pre, 10, seed=8)
    audio = np.ones((10, 2048), np.float32)
    put = await client.put("/v1/videos/vid-x/features", content=npz_bytes(**groups, pann=audio),
                           headers={"Content-Type": "application/x-npz"})
    assert put.status_code == 422
    error = put.json()["error"]
    assert error["code"] == "bad_groups" and "takes no audio" in error["message"]
    inline = await client.post("/v1/highlights", json={
        "video": {"format": "npz", "data_b64": b64(npz_bytes(**groups, pann=audio))},
        "queries": [{"features_b64": b64(npy_bytes(random_text(pre, 3, 1)))}]})
    assert inline.status_code == 422 and "takes no audio" in inline.json()["error"]["message"]


async def test_a_video_file_on_an_audio_bundle_without_its_encoders_is_refused_naming_them(audio_client):
    put = await audio_client.put("/v1/videos/aud-file/video", content=b"\x00" * 64,
                                 headers={"Content-Type": "video/mp4"})
    assert put.status_code == 409, put.text
    error = put.json()["error"]
    assert error["code"] == "encoder_missing" and error["details"]["missing_groups"] == ["slowfast", "clip", "pann"]
