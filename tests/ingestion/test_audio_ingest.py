"""Ingestion jobs on a bundle trained with audio: a video file's job stores the audio group with the video
groups (PANN Cnn14 on its 2-s clips), a silent video gets zero audio rows and a note, and the stored video
is searchable."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ingest_helpers import write_video
from svc_helpers import b64, npy_bytes, serve

from extraction import Extractor, npz_bytes
from service.settings import Settings
from service.uploads import parse_video

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "extraction"))
from audio_bundle import AUDIO_DIM, export_audio_extraction_bundle  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
MP4 = {"content-type": "video/mp4"}


@pytest.fixture(scope="module")
def audio_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_audio_extraction_bundle(tmp_path_factory.mktemp("audio_ingest"))


@pytest.fixture
async def client(redis_url, key_prefix, audio_bundle, tmp_path):
    settings = Settings(bundle_dir=audio_bundle, redis_url=redis_url, redis_key_prefix=key_prefix, device="cpu",
                        intra_op_threads=1, warmup_runs=0, ingest_dir=tmp_path / "ingest")
    async with serve(settings) as http:
        yield http


async def _finished(client, job_id: str, timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, f"job still {job['status']}"
        await asyncio.sleep(0.2)


async def test_a_video_job_stores_the_audio_group_and_is_searchable(client, audio_bundle, tmp_path):
    path = write_video(tmp_path / "sound.mp4", 7.0, audio=True)
    put = await client.put("/v1/videos/sound/video", content=path.read_bytes(), headers=MP4)
    assert put.status_code == 202, put.text
    job = await _finished(client, put.json()["job_id"])
    assert job["status"] == "succeeded", job
    info = job["video"]
    assert info["groups"] == {"slowfast": 2304, "clip": 512, "pann": AUDIO_DIM} and info["num_clips"] == 3

    runtime = client.app.state.runtime
    stored = await runtime.store.tenant("shared").video_input("sound")
    extracted = Extractor(audio_bundle, device="cpu").extract(path)
    want = parse_video(npz_bytes(extracted), "npz", runtime.bundle.pre, max_clips=100, max_unpacked_bytes=1 << 30)
    model_input = runtime.bundle.video_input(want.features.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(stored, model_input, atol=1e-6)
    assert np.abs(want.features[:, -AUDIO_DIM:]).sum() > 0  # real audio features, not zeros

    query = {"features_b64": b64(npy_bytes(np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)))}
    got = await client.post("/v1/highlights", json={"video_id": "sound", "queries": [query]})
    assert got.status_code == 200 and len(got.json()["results"][0]["clips"]) == 3


async def test_a_silent_video_gets_zero_audio_and_says_so(client, tmp_path):
    path = write_video(tmp_path / "silent.mp4", 5.0, audio=False)
    put = await client.put("/v1/videos/silent/video", content=path.read_bytes(), headers=MP4)
    job = await _finished(client, put.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert any("no audio track" in note for note in job["video"]["notes"]), job  # stored with the video
    info = (await client.get("/v1/videos/silent")).json()
    assert any("'pann' is all zeros" in note for note in info["notes"])
    stored = await client.app.state.runtime.store.tenant("shared").video_input("silent")
    assert not stored[:, -AUDIO_DIM - 2:-2].any()  # audio columns zero; the TEF pair after them is not
