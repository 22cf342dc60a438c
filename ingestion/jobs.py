"""Job records: one Redis hash per job, changed only by single-key Lua scripts.

Key: ``{prefix}:ingest:job:{<job_id>}``. The braces are the Redis Cluster hash tag: all a job's state
is one key, so every change of it is atomic on one slot, and nothing here needs a multi-slot
transaction (the queue's stream and the video's features are other keys, changed by separate calls).

Fields (strings; JSON where structured): ``job_id``, ``video_id``, ``tenant`` (the non-secret id of the
API key that created the job, ``shared`` without keys), ``status`` (``queued``, ``running``,
``succeeded``, ``failed``), ``progress`` (0-1), ``created_at`` / ``started_at`` / ``finished_at`` (unix
seconds), ``owner`` (the worker try holding the job), ``attempts``, ``error`` and ``last_error``
(``{"code", "message"}``), ``result`` (what was stored), ``source`` (the upload's probe), ``collections``
(the collections the stored video is added to, JSON list), and
``history`` (one entry per try: worker, start, end, outcome; a try whose worker died stays open
until the next try marks it ``lost``).

A running or queued job has no TTL (an LRU Redis could otherwise evict a job that is still owed
work); once it ends, the record expires ``TRDETR_JOB_TTL_S`` later.

The worker that holds a job is its ``owner``; every write by a worker checks it, so a worker that
lost its job (it stalled past the claim time and another worker took over) can no longer change it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

FINAL_STATUSES = ("succeeded", "failed")

_START = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'succeeded' or status == 'failed' then return status end
local history = cjson.decode(redis.call('HGET', KEYS[1], 'history') or '[]')
local last = history[#history]
if last and last['outcome'] == cjson.null then
  last['outcome'] = 'lost'
  last['ended_at'] = tonumber(ARGV[2])
end
table.insert(history, {worker = ARGV[1], started_at = tonumber(ARGV[2]), ended_at = cjson.null,
                       outcome = cjson.null})
redis.call('HSET', KEYS[1], 'status', 'running', 'owner', ARGV[1], 'progress', '0',
           'history', cjson.encode(history))
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('PERSIST', KEYS[1])
return 'ok'
"""

_PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[2])
return 1
"""

# ARGV: owner ('' = whoever holds it), new status, now, ttl (0 = none), outcome, then field/value pairs
_END_TRY = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'failed' then return 0 end
if ARGV[1] ~= '' and (status ~= 'running' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1]) then
  return 0
end
local history = cjson.decode(redis.call('HGET', KEYS[1], 'history') or '[]')
local last = history[#history]
if last and last['outcome'] == cjson.null then
  last['outcome'] = ARGV[5]
  last['ended_at'] = tonumber(ARGV[3])
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'owner', '', 'history', cjson.encode(history))
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return 1
"""


@dataclass(frozen=True)
class JobError:
    """Why a job (or one try of it) failed: a stable ``code`` and a message that says what to fix."""

    code: str
    message: str

    def json(self) -> bytes:
        return orjson.dumps({"code": self.code, "message": self.message})


@dataclass
class JobRecord:
    """A job as stored in Redis (see the module docstring for the fields)."""

    job_id: str
    video_id: str
    tenant: str
    status: str
    created_at: float
    progress: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    owner: str = ""
    error: dict[str, str] | None = None
    last_error: dict[str, str] | None = None
    result: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    collections: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> JobRecord:
        text = {key.decode(): value.decode() for key, value in raw.items()}

        def number(name: str) -> float | None:
            return float(text[name]) if text.get(name) else None

        def parsed(name: str) -> Any:
            return orjson.loads(text[name]) if text.get(name) else None

        return cls(
            job_id=text["job_id"], video_id=text["video_id"], tenant=text.get("tenant", "shared"),
            status=text["status"], created_at=float(text["created_at"]), progress=float(text.get("progress") or 0),
            started_at=number("started_at"), finished_at=number("finished_at"),
            attempts=int(text.get("attempts") or 0), owner=text.get("owner", ""), error=parsed("error"),
            last_error=parsed("last_error"), result=parsed("result"), source=parsed("source") or {},
            collections=parsed("collections") or [], history=parsed("history") or [],
        )


class JobStore:
    """Create, read and change job records (every change is one single-key Lua script or command)."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, ttl_s: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._start = client.register_script(_START)
        self._progress = client.register_script(_PROGRESS)
        self._end_try = client.register_script(_END_TRY)

    def key(self, job_id: str) -> str:
        return f"{self.prefix}:ingest:job:{{{job_id}}}"

    def latest_key(self, tenant: str, video_id: str) -> str:
        """The newest job for a video id (a later upload supersedes an earlier one that has not finished)."""
        return f"{self.prefix}:ingest:latest:{tenant}:{video_id}"

    async def create(self, job_id: str, video_id: str, tenant: str, source: dict[str, Any],
                     collections: list[str] | None = None) -> JobRecord:
        """A new ``queued`` job (no TTL until it ends), made the newest job of its video id; on success the video
        is added to ``collections``."""
        collections = collections or []
        now = time.time()
        await self.client.hset(self.key(job_id), mapping={
            "job_id": job_id, "video_id": video_id, "tenant": tenant, "status": "queued", "progress": "0",
            "created_at": repr(now), "attempts": "0", "source": orjson.dumps(source), "history": "[]",
            "collections": orjson.dumps(collections),
        })
        await self.client.set(self.latest_key(tenant, video_id), job_id, ex=self.ttl_s)
        return JobRecord(job_id=job_id, video_id=video_id, tenant=tenant, status="queued", created_at=now,
                         source=source, collections=collections)

    async def discard(self, job_id: str) -> None:
        """Remove a job that was never queued (its upload failed half-way)."""
        await self.client.delete(self.key(job_id))

    async def get(self, job_id: str) -> JobRecord | None:
        raw = await self.client.hgetall(self.key(job_id))
        return JobRecord.from_hash(raw) if raw else None

    async def is_latest(self, job: JobRecord) -> bool:
        latest = await self.client.get(self.latest_key(job.tenant, job.video_id))
        return latest is None or latest.decode() == job.job_id

    async def start(self, job_id: str, owner: str) -> str:
        """Take the job for one try: ``ok``, ``missing`` (no record), or its final status if it has ended."""
        result = await self._start(keys=[self.key(job_id)], args=[owner, repr(time.time())])
        return result.decode() if isinstance(result, bytes) else str(result)

    async def progress(self, job_id: str, owner: str, fraction: float) -> bool:
        """Write progress; False when ``owner`` no longer holds the job."""
        return bool(await self._progress(keys=[self.key(job_id)], args=[owner, f"{fraction:.4f}"]))

    async def _end(self, job_id: str, owner: str, status: str, outcome: str, ttl_s: int,
                   fields: dict[str, str | bytes]) -> bool:
        args: list[str | bytes] = [owner, status, repr(time.time()), str(ttl_s), outcome]
        for name, value in fields.items():
            args += [name, value]
        return bool(await self._end_try(keys=[self.key(job_id)], args=args))

    async def succeed(self, job_id: str, owner: str, result: dict[str, Any]) -> bool:
        """Mark the try ``owner`` holds as the job's success; False if it lost the job meanwhile."""
        return await self._end(job_id, owner, "succeeded", "succeeded", self.ttl_s, {
            "finished_at": repr(time.time()), "progress": "1", "result": orjson.dumps(result)})

    async def fail(self, job_id: str, owner: str, error: JobError) -> bool:
        """End the job ``failed`` (``owner=''``: whoever holds it, for a job given up before a try)."""
        return await self._end(job_id, owner, "failed", f"failed: {error.code}", self.ttl_s, {
            "finished_at": repr(time.time()), "error": error.json(), "last_error": error.json()})

    async def requeue(self, job_id: str, owner: str, outcome: str, error: JobError | None) -> bool:
        """End one try without ending the job: it is ``queued`` again for another try."""
        fields: dict[str, str | bytes] = {"progress": "0"}
        if error is not None:
            fields["last_error"] = error.json()
        return await self._end(job_id, owner, "queued", outcome, 0, fields)
