"""``PUT /v1/videos/{id}/video`` and ``GET /v1/jobs/{id}`` on the real app (ASGI), real Redis, real files.

One app for the module, with its in-process worker, small limits (3 clips = 6 s, 400 kB, 0.5 s idle
timeout) so every refusal is quick to provoke.
"""

from __future__ import annotations

import asyncio
import subprocess
import time

import httpx
import numpy as np
import pytest
from ingest_helpers import BIN, DEFAULT_BUNDLE, write_audio_only, write_unknown_codec, write_video
from svc_helpers import npz_bytes, serve

from service.settings import Settings
from service.tenancy import tenant_for_key
from service.uploads import parse_video
from trdetr_common.manifest import Manifest

pytestmark = pytest.mark.anyio

MAX_CLIPS = 3
MP4 = {"content-type": "video/mp4"}
NPZ = {"content-type": "application/x-npz"}


@pytest.fixture(scope="module")
def pre():
    return Manifest.load(DEFAULT_BUNDLE).preprocessing


@pytest.fixture(scope="module")
def settings_for(redis_url, tmp_path_factory):
    def make(prefix: str, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "bundle_dir": DEFAULT_BUNDLE, "redis_url": redis_url, "redis_key_prefix": prefix, "device": "cpu",
            "intra_op_threads": 1, "warmup_runs": 0, "max_video_s": MAX_CLIPS * 2.0, "max_video_bytes": 400_000,
            "upload_idle_timeout_s": 0.5, "ingest_dir": tmp_path_factory.mktemp("ingest"),
            "job_claim_idle_s": 2.0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
async def client(settings_for, key_prefix):
    async with serve(settings_for(key_prefix)) as http:
        yield http


async def wait_job(client: httpx.AsyncClient, job_id: str, timeout_s: float = 60, **kwargs) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = (await client.get(f"/v1/jobs/{job_id}", **kwargs)).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, f"job still {job['status']} after {timeout_s} s"
        await asyncio.sleep(0.1)


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def stored_features(client: httpx.AsyncClient, video_id: str) -> bytes:
    runtime = client.app.state.runtime
    import redis

    raw = redis.Redis.from_url(runtime.settings.redis_url).hget(runtime.store.tenant("shared").keys.video(video_id), "feat")
    assert raw is not None
    return raw


@pytest.mark.slow
async def test_a_video_upload_becomes_searchable_features_equal_to_the_extractor(client, pre, tmp_path):
    video = write_video(tmp_path / "clip.mp4", 3.0)
    answer = await client.put("/v1/videos/uploaded/video", content=video.read_bytes(), headers=MP4)
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert accepted["status"] == "queued" and accepted["video_id"] == "uploaded"
    assert answer.headers["location"] == accepted["status_url"] == f"/v1/jobs/{accepted['job_id']}"
    job = await wait_job(client, accepted["job_id"])
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0 and job["error"] is None
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    stored = (await client.get("/v1/videos/uploaded")).json()
    assert {k: v for k, v in job["video"].items() if k not in ("ttl_s", "expires_at")} == \
        {k: v for k, v in stored.items() if k not in ("ttl_s", "expires_at")}
    # the stored features are exactly what a features upload of trdetr-extract's .npz stores
    out = tmp_path / "extracted"
    subprocess.run([str(BIN / "trdetr-extract"), str(video), "--bundle", str(DEFAULT_BUNDLE), "--out", str(out),
                    "--device", "cpu", "--threads", "1", "--quiet"], check=True, capture_output=True, timeout=120)
    parsed = parse_video((out / "clip.npz").read_bytes(), "npz", pre, max_clips=MAX_CLIPS, max_unpacked_bytes=1 << 26)
    assert stored_features(client, "uploaded") == parsed.features.astype("<f2").tobytes()
    # the worker's put stores the stage-1 summary too (mean of the CLIP group over clips, L2-normalised)
    runtime = client.app.state.runtime
    import redis

    from service.stage1 import SUMMARY_DTYPE, video_summary

    summary = redis.Redis.from_url(runtime.settings.redis_url).hget(
        runtime.store.tenant("shared").keys.video("uploaded"), "s1")
    clip = parsed.features[:, -pre.video_groups[-1].dim:]
    np.testing.assert_allclose(np.frombuffer(summary, SUMMARY_DTYPE), video_summary(clip), atol=2e-3)
    moments = await client.post("/v1/moments", json={"video_id": "uploaded", "queries": ["a red square"], "top_k": 2})
    assert moments.status_code == 200, moments.text
    assert moments.json()["num_clips"] == parsed.num_clips
    settings = client.app.state.runtime.settings
    assert not any((settings.ingest_dir / "uploads").iterdir()), "the upload is deleted once its job ended"


async def test_rotated_and_variable_frame_rate_videos_succeed(client, tmp_path):
    files = {"rotated": write_video(tmp_path / "rot.mp4", 2.5, rotation=90, size=(48, 64)),
             "vfr": write_video(tmp_path / "vfr.mkv", 3.0, vfr=True)}
    jobs = {}
    for name, path in files.items():
        answer = await client.put(f"/v1/videos/{name}/video", content=path.read_bytes(),
                                  headers={"content-type": "video/x-matroska" if name == "vfr" else "video/mp4"})
        assert answer.status_code == 202, answer.text
        jobs[name] = answer.json()["job_id"]
    for name, job_id in jobs.items():
        job = await wait_job(client, job_id)
        assert job["status"] == "succeeded", (name, job)
        assert job["video"]["num_clips"] >= 1


async def test_bad_uploads_get_a_4xx_and_leave_the_stored_video_intact(client, pre, tmp_path):
    features = {g.name: np.random.default_rng(1).standard_normal((2, g.dim)).astype(np.float32)
                for g in pre.video_groups}
    assert (await client.put("/v1/videos/keep/features", content=npz_bytes(**features), headers=NPZ)).status_code == 200
    before = (await client.get("/v1/videos/keep")).json()
    before_features = stored_features(client, "keep")
    good = write_video(tmp_path / "ok.mp4", 2.0).read_bytes()

    async def slow_body():
        yield good[:100]
        await asyncio.sleep(1.0)
        yield good[100:]

    async def chunks(data: bytes):
        for start in range(0, len(data), 50_000):
            yield data[start:start + 50_000]

    too_big = np.random.default_rng(2).integers(0, 255, 450_000, dtype=np.uint8).tobytes()
    cases = [
        ("wrong type", dict(content=good, headers={"content-type": "text/plain"}), 415, "unsupported_media_type"),
        ("empty", dict(content=b"", headers=MP4), 422, "empty_video"),
        ("not a video", dict(content=b"this is not a video at all" * 100, headers=MP4), 422, "not_a_video"),
        ("audio only", dict(content=write_audio_only(tmp_path / "a.m4a").read_bytes(), headers=MP4), 422,
         "no_video_stream"),
        ("unknown codec", dict(content=write_unknown_codec(tmp_path / "u.avi").read_bytes(),
                               headers={"content-type": "application/octet-stream"}), 422, "unsupported_codec"),
        ("truncated mp4 (its index is gone)", dict(content=good[: len(good) // 3], headers=MP4), 422, "corrupt_video"),
        ("too long", dict(content=write_video(tmp_path / "long.mp4", 2.0 * MAX_CLIPS + 2).read_bytes(),
                          headers=MP4), 422, "video_too_long"),
        ("too big", dict(content=too_big, headers=MP4), 413, "payload_too_large"),
        ("too big, streamed", dict(content=chunks(too_big), headers=MP4), 413, "payload_too_large"),
        ("too slow", dict(content=slow_body(), headers=MP4), 408, "upload_too_slow"),
    ]
    for name, request, status, code in cases:
        error = error_of(await client.put("/v1/videos/keep/video", **request), status)
        assert error["code"] == code, (name, error)
        assert error["message"], name
    assert (await client.get("/v1/videos/keep")).json()["num_clips"] == before["num_clips"]
    assert stored_features(client, "keep") == before_features
    settings = client.app.state.runtime.settings
    assert [p for p in settings.ingest_dir.rglob("*") if p.is_file()] == [], "refused uploads leave no file behind"


async def test_a_truncated_file_that_passes_the_probe_fails_its_job_and_the_video_stays(client, pre, tmp_path):
    """An mkv cut short still declares its full duration up front: the job finds out while decoding."""
    features = {g.name: np.random.default_rng(3).standard_normal((2, g.dim)).astype(np.float32)
                for g in pre.video_groups}
    assert (await client.put("/v1/videos/trunc/features", content=npz_bytes(**features), headers=NPZ)).status_code == 200
    before = stored_features(client, "trunc")
    data = write_video(tmp_path / "t.mkv", 5.0).read_bytes()
    answer = await client.put("/v1/videos/trunc/video", content=data[: len(data) // 3],
                              headers={"content-type": "video/x-matroska"})
    assert answer.status_code == 202, answer.text
    job = await wait_job(client, answer.json()["job_id"])
    assert job["status"] == "failed" and job["error"]["code"] == "corrupt_video", job
    assert "truncated" in job["error"]["message"] and job["video"] is None
    assert stored_features(client, "trunc") == before, "a failed job never touches the stored video"
    settings = client.app.state.runtime.settings
    assert not any((settings.ingest_dir / "uploads").iterdir()), "the upload is deleted once its job failed"


async def test_jobs_belong_to_the_key_that_created_them(settings_for, key_prefix, tmp_path):
    async with serve(settings_for(key_prefix, api_keys=["key-one", "key-two"], inprocess_worker=False)) as http:
        one, two = {"X-API-Key": "key-one"}, {"X-API-Key": "key-two"}
        body = write_video(tmp_path / "k.mp4", 2.0).read_bytes()
        assert (await http.put("/v1/videos/mine/video", content=body, headers=MP4)).status_code == 401
        answer = await http.put("/v1/videos/mine/video", content=body, headers={**MP4, **one})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        assert (await http.get(f"/v1/jobs/{job_id}", headers=one)).json()["status"] == "queued"
        assert error_of(await http.get(f"/v1/jobs/{job_id}", headers=two), 404)["code"] == "not_found"
        assert (await http.get(f"/v1/jobs/{job_id}")).status_code == 401
        record = await http.app.state.runtime.ingest.jobs.get(job_id)
        assert record.tenant == tenant_for_key("key-one").id and "key-one" not in repr(record)
        assert error_of(await http.get("/v1/jobs/not-a-job-id", headers=one), 422)["code"] == "invalid_request"


async def test_the_latest_upload_for_a_video_id_wins(client, tmp_path):
    first = write_video(tmp_path / "first.mp4", 5.0, size=(96, 72))
    second = write_video(tmp_path / "second.mp4", 2.0)
    job_ids = []
    for path in (first, second):
        answer = await client.put("/v1/videos/twice/video", content=path.read_bytes(), headers=MP4)
        assert answer.status_code == 202, answer.text
        job_ids.append(answer.json()["job_id"])
    early, late = [await wait_job(client, job_id) for job_id in job_ids]
    assert late["status"] == "succeeded", late
    # the earlier job either finished before the later upload arrived, or was superseded by it
    assert early["status"] == "succeeded" or early["error"]["code"] == "superseded", early
    stored = (await client.get("/v1/videos/twice")).json()
    assert late["video"]["num_clips"] == stored["num_clips"] and early["video"] is None


async def test_a_video_upload_may_take_longer_than_the_request_deadline(settings_for, key_prefix, tmp_path):
    """TRDETR_REQUEST_TIMEOUT_S bounds searches; a large upload on a slow link is guarded by its own timeouts."""
    body = write_video(tmp_path / "slow.mp4", 2.0).read_bytes()

    async def trickle():
        for start in range(0, len(body), len(body) // 6 + 1):
            await asyncio.sleep(0.25)
            yield body[start:start + len(body) // 6 + 1]

    settings = settings_for(key_prefix, request_timeout_s=1.0, upload_min_bytes_per_s=0, inprocess_worker=False)
    async with serve(settings) as http:
        answer = await http.put("/v1/videos/slow/video", content=trickle(), headers=MP4)
        assert answer.status_code == 202, answer.text


async def test_a_job_stores_into_its_keys_namespace_under_its_quota(settings_for, key_prefix, pre, tmp_path):
    settings = settings_for(key_prefix, api_keys=["key-one", "key-two"], quota_max_videos=1)
    async with serve(settings) as http:
        one, two = {"X-API-Key": "key-one"}, {"X-API-Key": "key-two"}
        features = {g.name: np.random.default_rng(4).standard_normal((2, g.dim)).astype(np.float32)
                    for g in pre.video_groups}
        stored = await http.put("/v1/videos/first/features", content=npz_bytes(**features), headers={**NPZ, **one})
        assert stored.status_code == 200, stored.text
        body = write_video(tmp_path / "q.mp4", 2.0).read_bytes()
        over = await http.put("/v1/videos/second/video", content=body, headers={**MP4, **one})
        job = await wait_job(http, over.json()["job_id"], headers=one)
        assert job["status"] == "failed" and job["error"]["code"] == "quota_exceeded", job
        assert (await http.get("/v1/videos/second", headers=one)).status_code == 404
        mine = await http.put("/v1/videos/second/video", content=body, headers={**MP4, **two})
        job = await wait_job(http, mine.json()["job_id"], headers=two)
        assert job["status"] == "succeeded", job
        assert (await http.get("/v1/videos/second", headers=two)).status_code == 200
        assert (await http.get("/v1/videos/second", headers=one)).status_code == 404, "another key's video"


async def test_an_uploaded_video_joins_the_collections_named_with_it(client, tmp_path):
    video = write_video(tmp_path / "coll.mp4", 2.0).read_bytes()
    bad = await client.put("/v1/videos/in-coll/video?collection=no%20spaces", content=video, headers=MP4)
    assert error_of(bad, 422)["code"] == "invalid_collection"
    answer = await client.put("/v1/videos/in-coll/video?collection=uploads&collection=fresh", content=video,
                              headers=MP4)
    assert answer.status_code == 202, answer.text
    job = await wait_job(client, answer.json()["job_id"])
    assert job["status"] == "succeeded" and job["video"]["collections"] == ["fresh", "uploads"], job
    listed = (await client.get("/v1/videos?collection=uploads")).json()["videos"]
    assert [v["video_id"] for v in listed] == ["in-coll"]
