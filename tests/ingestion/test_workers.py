"""Real processes: ``trdetr-serve`` (no in-process worker) over HTTP and ``trdetr-worker`` processes.

- a worker SIGKILLed mid-job: another worker takes the job over and it succeeds exactly once;
- a job whose every try fails ends ``failed`` with its reason after ``TRDETR_JOB_MAX_TRIES`` tries;
- a worker stopped with SIGTERM gives its job back without using up a try.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis.asyncio as aioredis
from ingest_helpers import BIN, DEFAULT_BUNDLE, clean_env, free_port, wait_for, write_video
from redis_fixtures import key_namespace

from ingestion.jobs import JobRecord, JobStore

pytestmark = pytest.mark.slow

MP4 = {"content-type": "video/mp4"}


@pytest.fixture(scope="module")
def stack_env(redis_url, tmp_path_factory) -> Iterator[dict[str, str]]:
    with key_namespace(redis_url, "trdetr-ingest-proc") as prefix:
        env = clean_env(
            REDIS_URL=redis_url, TRDETR_REDIS_KEY_PREFIX=prefix, TRDETR_BUNDLE_DIR=str(DEFAULT_BUNDLE),
            TRDETR_DEVICE="cpu", TRDETR_INTRA_OP_THREADS="1", TRDETR_WARMUP_RUNS="0",
            TRDETR_INGEST_DIR=str(tmp_path_factory.mktemp("ingest")), TRDETR_JOB_CLAIM_IDLE_S="2",
            TRDETR_INPROCESS_WORKER="false", TRDETR_WORKER_METRICS_PORT="0", TRDETR_MAX_VIDEO_CLIPS="20",
        )
        yield env


@pytest.fixture(scope="module")
def api(stack_env) -> Iterator[httpx.Client]:
    port = free_port()
    process = subprocess.Popen([str(BIN / "trdetr-serve"), "--port", str(port)], env=stack_env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def ready() -> bool:
        assert process.poll() is None, process.stdout.read()
        try:
            return client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, 120, "trdetr-serve to become ready", 0.2)
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def workers(env: dict[str, str], count: int, **overrides: str) -> Iterator[list[subprocess.Popen]]:
    """``count`` trdetr-worker processes; any still running afterwards are stopped (SIGKILL if they hang)."""
    procs = [subprocess.Popen([str(BIN / "trdetr-worker")], env={**env, **overrides}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def record(env: dict[str, str], job_id: str) -> JobRecord:
    """The job's full record (owner, tries, history), read from Redis as a worker would."""

    async def read() -> JobRecord:
        client = aioredis.Redis.from_url(env["REDIS_URL"])
        try:
            return await JobStore(client, prefix=env["TRDETR_REDIS_KEY_PREFIX"], ttl_s=60).get(job_id)
        finally:
            await client.aclose()

    return asyncio.run(read())


def upload(api: httpx.Client, video_id: str, path) -> str:
    answer = api.put(f"/v1/videos/{video_id}/video", content=path.read_bytes(), headers=MP4)
    assert answer.status_code == 202, answer.text
    return answer.json()["job_id"]


def final(api: httpx.Client, job_id: str, timeout_s: float = 120) -> dict:
    return wait_for(lambda: (j := api.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed") and j,
                    timeout_s, f"job {job_id} to end", 0.2)


def test_a_worker_killed_mid_job_is_replaced_and_the_job_succeeds_once(api, stack_env, tmp_path):
    video = write_video(tmp_path / "long.mp4", 12.0, size=(96, 72))
    with workers(stack_env, 2) as procs:
        job_id = upload(api, "killed", video)
        running = wait_for(lambda: (r := record(stack_env, job_id)).status == "running" and r.owner and r, 60,
                           "a worker to start the job", 0.05)
        holder_pid = int(running.owner.split("/")[0].rsplit("-", 2)[1])
        (holder,) = [p for p in procs if p.pid == holder_pid]
        holder.kill()  # mid-job: no chance to clean up or give the job back
        holder.wait()
        job = final(api, job_id)
        assert job["status"] == "succeeded", job
        (survivor,) = [p for p in procs if p is not holder]
        assert survivor.poll() is None, "the other worker is still serving"
    full = record(stack_env, job_id)
    assert [h["outcome"] for h in full.history] == ["lost", "succeeded"], full.history
    assert str(holder_pid) in full.history[0]["worker"] and str(survivor.pid) in full.history[1]["worker"]
    assert full.attempts == 2
    assert job["video"] == {**api.get("/v1/videos/killed").json(), "ttl_s": job["video"]["ttl_s"],
                            "expires_at": job["video"]["expires_at"]}
    answer = api.post("/v1/moments", json={"video_id": "killed", "queries": ["a moving square"], "top_k": 1})
    assert answer.status_code == 200, answer.text
    uploads = stack_env["TRDETR_INGEST_DIR"] + "/uploads"
    assert os.listdir(uploads) == [], "the upload is deleted once the job ended"


def test_a_job_that_keeps_failing_ends_failed_with_its_reason(api, stack_env, tmp_path):
    video = write_video(tmp_path / "short.mp4", 4.0)
    with workers(stack_env, 1, TRDETR_JOB_TIMEOUT_S="0.001", TRDETR_JOB_MAX_TRIES="3"):
        job_id = upload(api, "doomed", video)
        job = final(api, job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "job_timeout", job
    assert "3 tries" in job["error"]["message"] and "TRDETR_JOB_TIMEOUT_S" in job["error"]["message"]
    full = record(stack_env, job_id)
    assert [h["outcome"] for h in full.history] == ["retry: job_timeout", "retry: job_timeout", "failed: job_timeout"]
    assert api.get("/v1/videos/doomed").status_code == 404, "a failed job stores nothing"
    assert os.listdir(stack_env["TRDETR_INGEST_DIR"] + "/uploads") == []


def test_a_stopping_worker_gives_its_job_back_without_using_a_try(api, stack_env, tmp_path):
    video = write_video(tmp_path / "mid.mp4", 12.0, size=(96, 72))
    with workers(stack_env, 1, TRDETR_GRACEFUL_SHUTDOWN_S="0") as (first,):
        job_id = upload(api, "handed-over", video)
        wait_for(lambda: record(stack_env, job_id).status == "running", 60, "the worker to start the job", 0.05)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0, first.stdout.read()
    released = record(stack_env, job_id)
    assert released.status == "queued" and [h["outcome"] for h in released.history] == ["released"]
    with workers(stack_env, 1):
        job = final(api, job_id)
    assert job["status"] == "succeeded", job
    full = record(stack_env, job_id)
    assert [h["outcome"] for h in full.history] == ["released", "succeeded"]
