"""The Redis-stream queue and the job records, against a real Redis: hand-over, heartbeats, tries, ownership."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from ingestion.jobs import JobError, JobStore
from ingestion.queue import JobQueue

pytestmark = pytest.mark.anyio


@pytest.fixture
async def parts(redis_url, key_prefix):
    client = aioredis.Redis.from_url(redis_url)
    queue = JobQueue(client, prefix=key_prefix, claim_idle_s=0.3)
    await queue.ensure_group()
    yield client, queue, JobStore(client, prefix=key_prefix, ttl_s=60)
    await client.aclose()


async def test_a_job_goes_to_one_worker_and_a_silent_workers_job_to_another(parts):
    client, queue, _ = parts
    await queue.enqueue("job-a")
    first = await queue.take("worker-1", block_ms=10)
    assert (first.job_id, first.tries) == ("job-a", 1)
    assert await queue.take("worker-2", block_ms=10) is None, "a held entry is not handed out twice"
    assert (await queue.depth()).running == 1
    # worker-1 keeps beating: worker-2 cannot take the job over
    for _ in range(3):
        await asyncio.sleep(0.2)
        assert await queue.heartbeat(first, "worker-1")
        assert await queue.take("worker-2", block_ms=10) is None
    # worker-1 falls silent: after the claim time worker-2 takes it over, as the second try
    await asyncio.sleep(0.4)
    second = await queue.take("worker-2", block_ms=10)
    assert (second.entry_id, second.tries) == (first.entry_id, 2)
    assert not await queue.heartbeat(first, "worker-1"), "the old holder learns it lost the entry"
    await queue.done(second)
    depth = await queue.depth()
    assert (depth.waiting, depth.running) == (0, 0)
    assert await client.xlen(queue.stream) == 0


async def test_release_counts_a_failed_try_but_not_a_graceful_stop(parts):
    _, queue, _ = parts
    await queue.enqueue("job-b")
    taken = await queue.take("w1", block_ms=10)
    assert await queue.release(taken, "w1", counted=False)
    again = await queue.take("w2", block_ms=10)
    assert again.tries == 1, "a graceful stop does not use up a try"
    assert await queue.release(again, "w2", counted=True)
    third = await queue.take("w1", block_ms=10)
    assert third.tries == 2
    assert not await queue.release(third, "w2", counted=True), "only the holder may release"
    # a back-off keeps the entry from being taken over at once
    assert await queue.release(third, "w1", counted=True, after_s=0.25)
    assert await queue.take("w2", block_ms=10) is None
    await asyncio.sleep(0.3)
    assert (await queue.take("w2", block_ms=10)).tries == 3


async def test_job_record_lifecycle_and_ownership(parts):
    client, _, jobs = parts
    await jobs.create("j1", "video-1", "shared", {"duration_s": 3.0})
    assert await client.ttl(jobs.key("j1")) == -1, "an open job never expires"
    assert await jobs.start("j1", "w1/try1") == "ok"
    assert await jobs.progress("j1", "w1/try1", 0.5)
    # w2 takes over (w1 died): w1 can no longer write
    assert await jobs.start("j1", "w2/try2") == "ok"
    assert not await jobs.progress("j1", "w1/try1", 0.7)
    assert not await jobs.succeed("j1", "w1/try1", {"version": "x"})
    assert await jobs.requeue("j1", "w2/try2", "retry: internal_error", JobError("internal_error", "boom"))
    assert await jobs.start("j1", "w3/try3") == "ok"
    assert await jobs.succeed("j1", "w3/try3", {"version": "v1"})
    job = await jobs.get("j1")
    assert (job.status, job.progress, job.attempts, job.result) == ("succeeded", 1.0, 3, {"version": "v1"})
    assert [h["outcome"] for h in job.history] == ["lost", "retry: internal_error", "succeeded"]
    assert job.last_error == {"code": "internal_error", "message": "boom"} and job.error is None
    assert job.started_at <= job.finished_at
    assert 0 < await client.ttl(jobs.key("j1")) <= 60
    assert await jobs.start("j1", "w4/try4") == "succeeded", "an ended job is never run again"
    assert not await jobs.fail("j1", "", JobError("x", "y"))
    assert await jobs.start("missing", "w") == "missing"


async def test_keys_of_one_job_share_a_hash_tag(parts):
    """Redis Cluster: every per-job key carries the job id as its hash tag, the stream one of its own."""
    _, queue, jobs = parts
    assert jobs.key("abc").endswith("{abc}")
    assert queue.stream.count("{") == 1 and queue.stream.endswith("{queue}")


async def test_a_later_upload_supersedes_an_earlier_job(parts):
    _, _, jobs = parts
    first = await jobs.create("early", "video-2", "shared", {})
    assert await jobs.is_latest(first)
    await jobs.create("late", "video-2", "shared", {})
    assert not await jobs.is_latest(first)
    assert await jobs.is_latest(await jobs.get("late"))
