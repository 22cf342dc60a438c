"""The job queue: one Redis stream read by a consumer group of workers.

Why Redis Streams and not a job library (arq, saq, rq): the queue must survive a worker killed
mid-job (the job goes to another worker), keep a long job from being taken over while its worker
lives, bound the number of tries, and work on a Redis Cluster later. Stream consumer groups do all of
it with maintained server commands (XADD, XREADGROUP, XACK, XAUTOCLAIM, XPENDING's delivery counts),
the queue is one key (so one slot), and KEDA and Prometheus can read its depth. arq, saq and rq keep
jobs in several keys changed together in MULTI/EXEC transactions or multi-key scripts, which a
Redis Cluster refuses across slots (arq's cluster support is an open request, python-arq/arq#385),
and reclaim a dead worker's job only after the job's whole timeout, with no heartbeat.

- **Enqueue**: ``XADD`` an entry ``{job: <job_id>}``; the job's state lives in its record (:mod:`.jobs`).
- **Take**: a worker first takes over entries whose holder sent no heartbeat for ``claim_idle_s``
  (``XAUTOCLAIM``, which counts the delivery), else reads a new one (``XREADGROUP >``).
- **Heartbeat**: while it works, the holder resets its entry's idle time (``XCLAIM ... JUSTID`` to
  itself, which does not count a delivery), in a script that first checks it still holds the entry.
- **Tries**: the entry's delivery count (``XPENDING``) is the try number; a crashed worker's try
  counts, a worker stopping gracefully gives its entry back uncounted (:meth:`JobQueue.release`).
- **Done**: ``XACK`` + ``XDEL``, so the stream's length is the number of jobs waiting or running.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

GROUP = "workers"
RELEASED = "released"
"""Consumer that holds entries given back by workers until another worker takes them over."""

# KEYS[1] stream; ARGV group, entry id, consumer. Resets the entry's idle time if consumer holds it.
_HEARTBEAT = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"""

# KEYS[1] stream; ARGV group, entry id, consumer, idle ms to set, delivery count to set.
# Hands the entry to RELEASED with an idle time that lets another worker take it over at once (or
# after a back-off), and with the delivery count the next try should start from.
_RELEASE = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], '""" + RELEASED + """', 0, ARGV[2], 'IDLE', ARGV[4],
           'RETRYCOUNT', ARGV[5], 'JUSTID')
return 1
"""


@dataclass(frozen=True)
class Delivery:
    """One entry handed to a worker: the stream entry id, the job and which try this is (1-based)."""

    entry_id: str
    job_id: str
    tries: int


@dataclass(frozen=True)
class QueueDepth:
    waiting: int
    running: int


class JobQueue:
    """The stream ``{prefix}:ingest:{queue}`` (hash-tagged: one slot) and its consumer group."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, claim_idle_s: float) -> None:
        self.client = client
        self.stream = f"{prefix}:ingest:{{queue}}"
        self.claim_idle_ms = max(1, int(claim_idle_s * 1000))
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._release = client.register_script(_RELEASE)
        self._cursor = "0-0"

    async def ensure_group(self) -> None:
        """Create the stream and its group if absent (from id 0: entries added before are delivered too)."""
        try:
            await self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, job_id: str) -> str:
        entry = await self.client.xadd(self.stream, {"job": job_id})
        return entry.decode()

    async def depth(self) -> QueueDepth:
        """Jobs waiting for a worker and jobs held by one (running, or given back and waiting again)."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xlen(self.stream)
            pipe.xpending(self.stream, GROUP)
            try:
                length, pending = await pipe.execute()
            except ResponseError as exc:  # no stream or group yet
                if "NOGROUP" in str(exc):
                    return QueueDepth(0, 0)
                raise
        running = int(pending["pending"]) if pending else 0
        return QueueDepth(waiting=max(0, int(length) - running), running=running)

    async def take(self, consumer: str, block_ms: int) -> Delivery | None:
        """The next entry for ``consumer``: a stale one first (taken over), else a new one, else None."""
        delivery = await self._take_stale(consumer)
        if delivery is not None:
            return delivery
        reply = await self.client.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=1, block=block_ms)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                return await self._delivery(entry_id, fields)
        return None

    async def _take_stale(self, consumer: str) -> Delivery | None:
        reply = await self.client.xautoclaim(self.stream, GROUP, consumer, self.claim_idle_ms,
                                             start_id=self._cursor, count=1)
        cursor, entries = reply[0], reply[1]
        self._cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        for entry_id, fields in entries:
            if fields is None:  # deleted while pending: nothing to do for it
                await self.client.xack(self.stream, GROUP, entry_id)
                continue
            return await self._delivery(entry_id, fields)
        return None

    async def _delivery(self, entry_id: bytes, fields: dict[bytes, bytes]) -> Delivery:
        ident = entry_id.decode()
        tries = 1
        info = await self.client.xpending_range(self.stream, GROUP, ident, ident, 1)
        if info:
            tries = int(info[0]["times_delivered"])
        return Delivery(entry_id=ident, job_id=fields.get(b"job", b"").decode(), tries=tries)

    async def heartbeat(self, delivery: Delivery, consumer: str) -> bool:
        """Keep the entry from being taken over; False when ``consumer`` no longer holds it."""
        return bool(await self._heartbeat(keys=[self.stream], args=[GROUP, delivery.entry_id, consumer]))

    async def release(self, delivery: Delivery, consumer: str, *, counted: bool, after_s: float = 0.0) -> bool:
        """Give the entry back for another try after ``after_s`` seconds.

        ``counted=False`` (a graceful stop) does not use up a try; ``counted=True`` (the try failed) does.
        """
        idle_ms = max(0, self.claim_idle_ms - int(after_s * 1000))
        count = delivery.tries if counted else max(0, delivery.tries - 1)
        return bool(await self._release(keys=[self.stream],
                                        args=[GROUP, delivery.entry_id, consumer, idle_ms, count]))

    async def done(self, delivery: Delivery) -> None:
        """The job has ended: acknowledge and delete its entry."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xack(self.stream, GROUP, delivery.entry_id)
            pipe.xdel(self.stream, delivery.entry_id)
            await pipe.execute()

    async def forget_consumer(self, consumer: str) -> None:
        """Remove a stopping worker's consumer from the group, unless it still holds entries."""
        for info in await self.client.xinfo_consumers(self.stream, GROUP):
            if _name(info) == consumer:
                if int(info["pending"]) == 0:
                    await self.client.xgroup_delconsumer(self.stream, GROUP, consumer)
                return

    async def prune_consumers(self, idle_s: float) -> int:
        """Remove consumers that hold nothing and were idle ``idle_s`` (workers that died long ago)."""
        removed = 0
        for info in await self.client.xinfo_consumers(self.stream, GROUP):
            name = _name(info)
            if int(info["pending"]) == 0 and int(info["idle"]) > idle_s * 1000 and name != RELEASED:
                await self.client.xgroup_delconsumer(self.stream, GROUP, name)
                removed += 1
        return removed


def _name(info: dict) -> str:
    name = info["name"]
    return name.decode() if isinstance(name, bytes) else str(name)
