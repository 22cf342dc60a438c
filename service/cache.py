"""Redis feature store for per-video clip features, one namespace per tenant.

Each video is one Redis hash ``{prefix}:{<tenant>}:<layout>:video:<video_id>`` with these fields:

- ``feat``: the preprocessed (normalised, groups concatenated, no TEF) features ``(T, D)`` as
  little-endian **float16** bytes, row-major. fp16 halves memory; the values are L2-normalised
  (|x| <= 1), where fp16's ~3 significant digits cost far less than the model's own tolerance.
- ``s1``: the video's stage-1 search summary (:mod:`service.stage1`: its CLIP image group, max over clips,
  L2-normalised, float16), when the bundle has a text embedding in that space; it expires with the features.
- ``meta``: JSON (clip count, dims, clip length, store time, truncation notes, and ``version``: a
  uuid4 hex written by every ``put``, so a reader can tell whether its local copy is still current).

``<tenant>`` is the tenant id (:mod:`service.tenancy`: derived from the API key, never the key
itself; ``shared`` without keys); in braces it is the Redis Cluster hash tag, so a tenant's videos and
its quota books share one slot (:mod:`service.quota`). ``layout`` is a short hash of the bundle's
video preprocessing contract, so a new bundle with a different feature layout never reads features
stored for another one. A replace is one Lua script (quota check, DEL + HSET + EXPIRE, books), so
readers see the old or the new video, never a mix. Keys written before tenancy existed
(``{prefix}:video:<layout>:<id>``) are not migrated: they are never read and expire with their TTL.

Hot videos' model-ready inputs are also kept in process (:class:`LocalInputs`, an LRU). Redis stays
the source of truth: by default every read still asks Redis for the small ``meta`` (one HGET) and uses
the local copy only when its ``version`` matches, so a replace or delete by any replica is seen at once, and
a Redis outage is still a 503 (a video deleted elsewhere is never served from memory). Videos stored
before versions existed have none and are always read from Redis until they are stored again.

``TRDETR_LOCAL_CACHE_TRUST_MS`` > 0 trades that for one round trip less per hot read: a copy whose version
was checked less than that long ago is used without asking again. The staleness is bounded by it and only
concerns replaces and deletes made through *other* replicas (or a Redis outage); this replica's own
``put`` and ``delete`` drop its copy first.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from service.errors import CacheUnavailable, NotFound
from service.metrics import Metrics
from service.quota import DELETE_SCRIPT, PUT_SCRIPT, Quota, TenantKeys, quota_exceeded
from trdetr_common.manifest import PreprocessingContract

log = logging.getLogger(__name__)

STORAGE_DTYPE = np.dtype("<f2")
STORAGE_FORMAT = "float16-le-rowmajor"

ModelInput = Callable[[np.ndarray], np.ndarray]
Summarize = Callable[[np.ndarray], bytes]


def layout_version(pre: PreprocessingContract) -> str:
    """Short hash of everything that decides what stored features mean."""
    layout = {
        "groups": [(g.name, g.dim) for g in pre.video_groups],
        "l2": pre.l2_normalize_video,
        "eps": pre.l2_eps,
        "storage": STORAGE_FORMAT,
    }
    if pre.audio_groups:  # video-only layouts keep their version (and their cached features)
        layout.update(audio=[(g.name, g.dim) for g in pre.audio_groups], audio_l2=pre.l2_normalize_audio,
                      audio_tef=pre.audio_tef)
    return hashlib.sha256(orjson.dumps(layout)).hexdigest()[:12]


class LocalInputs:
    """Bounded LRU of model-ready video inputs, ``video_id -> (version, array, last version check)``.

    Two bounds, both enforced: at most ``capacity`` videos and at most ``max_bytes`` of arrays (a 3-hour
    video's float32 input is ~61 MB, a 150-s one 0.85 MB, so a count alone bounds nothing). An array larger
    than ``max_bytes`` is never kept; capacity 0 keeps nothing. The arrays are read-only: requests share
    them (the batcher copies the rows it needs into its padded batch).
    """

    def __init__(self, capacity: int, max_bytes: int | None = None) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[str, tuple[str, np.ndarray, float]] = OrderedDict()
        self.epoch = 0  # +1 at every forget: a version read from Redis before a forget is not a fresh check

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._entries

    def check_started(self) -> tuple[float, int]:
        """Call before asking Redis for a version: what :meth:`checked_at` needs afterwards."""
        return time.monotonic(), self.epoch

    def checked_at(self, started: tuple[float, int]) -> float:
        """When the version check that began at ``started`` counts as made: its start, or never (-inf) when
        a local put or delete forgot a copy meanwhile (its answer may predate that write)."""
        return started[0] if started[1] == self.epoch else float("-inf")

    def lookup(self, video_id: str, version: str | None, checked_at: float = float("-inf")) -> np.ndarray | None:
        """The cached input when it holds exactly ``version`` (None never matches); records the check time."""
        entry = self._entries.get(video_id)
        if version is None or entry is None or entry[0] != version:
            return None
        self._entries[video_id] = (version, entry[1], checked_at)
        self._entries.move_to_end(video_id)
        return entry[1]

    def trusted(self, video_id: str, within_s: float) -> np.ndarray | None:
        """The cached input when its version was checked in Redis less than ``within_s`` seconds ago (counted
        from when the check was sent)."""
        entry = self._entries.get(video_id)
        if entry is None or time.monotonic() - entry[2] >= within_s:
            return None
        self._entries.move_to_end(video_id)
        return entry[1]

    def remember(self, video_id: str, version: str | None, array: np.ndarray,
                 checked_at: float = float("-inf")) -> None:
        """Keep ``array`` as ``version`` of ``video_id``, evicting the least recently used beyond the bounds."""
        array.flags.writeable = False
        too_big = self.max_bytes is not None and array.nbytes > self.max_bytes
        if self.capacity == 0 or version is None or too_big:
            self.forget(video_id)
            return
        self._drop(video_id)
        self._entries[video_id] = (version, array, checked_at)
        self.nbytes += array.nbytes
        while len(self._entries) > self.capacity or (self.max_bytes is not None and self.nbytes > self.max_bytes):
            self.nbytes -= self._entries.popitem(last=False)[1][1].nbytes

    def forget(self, video_id: str) -> None:
        """Drop the copy of ``video_id`` (a local write or a miss): version checks in flight stop counting."""
        self.epoch += 1
        self._drop(video_id)

    def _drop(self, video_id: str) -> None:
        entry = self._entries.pop(video_id, None)
        if entry is not None:
            self.nbytes -= entry[1].nbytes


class FeatureStore:
    """The shared Redis client, feature layout and local LRU; :meth:`tenant` gives one tenant's view.

    Every Redis failure becomes a 503 ``CacheUnavailable``.
    """

    def __init__(
        self, client: aioredis.Redis, *, prefix: str, layout: str, ttl_s: int, metrics: Metrics,
        model_input: ModelInput, local_videos: int = 0, local_bytes: int | None = None,
        quota: Quota | None = None, bulk_client: aioredis.Redis | None = None, summarize: Summarize | None = None,
        local_trust_s: float = 0.0,
    ) -> None:
        """``model_input`` turns stored features (T, D) into the model's video input (the bundle's
        ``video_input``); ``local_videos`` and ``local_bytes`` bound the in-process LRU of those inputs
        (0 videos disables it); ``quota`` limits what each tenant may store. ``bulk_client`` (default:
        ``client``) moves the features themselves: a 3-hour video is 30 MB, which must not be held to the
        short timeout of the small calls. ``summarize`` turns stored features (T, D) into the video's stage-1
        summary bytes (:func:`service.stage1.video_summarizer`), kept next to them; None: no summaries.
        ``local_trust_s``: how long a local copy is used without checking its version again (0: every read
        checks)."""
        self.client = client
        self.summarize = summarize
        self.bulk = bulk_client or client
        self.prefix = prefix
        self.layout = layout
        self.ttl_s = ttl_s
        self.quota = quota or Quota()
        self.local = LocalInputs(local_videos, local_bytes)
        self.local_trust_s = local_trust_s
        self.model_input = model_input
        self.metrics = metrics
        self.put_script = self.bulk.register_script(PUT_SCRIPT)
        self.delete_script = client.register_script(DELETE_SCRIPT)
        # redis-py's cluster pipeline mishandles MULTI replies (SMEMBERS' callback): reads are plain pipelines there
        self.atomic_reads = not isinstance(client, aioredis.RedisCluster)
        self.scripts: dict[str, Any] = {}  # more scripts, registered on first use (service.collections)

    @classmethod
    def from_url(
        cls, url: str, *, timeout_s: float, max_connections: int, pool_timeout_s: float, prefix: str, layout: str,
        ttl_s: int, metrics: Metrics, model_input: ModelInput, local_videos: int = 0, local_bytes: int | None = None,
        quota: Quota | None = None, bulk_timeout_s: float | None = None, cluster: bool = False,
        summarize: Summarize | None = None, local_trust_s: float = 0.0,
    ) -> FeatureStore:
        """Pooled clients that fail fast (one immediate retry, for connections gone stale after a restart).

        The pools are ``BlockingConnectionPool``s: a call beyond ``max_connections`` concurrent ones
        waits up to ``pool_timeout_s`` for a connection to come back, instead of failing (which made
        healthy Redis look unreachable under load); the request's own deadline bounds that wait too.
        Features go through a second pool whose socket timeout is ``bulk_timeout_s`` (connecting still
        fails after ``timeout_s``); every other call keeps ``timeout_s``. ``cluster``: ``url`` is one node of a
        Redis Cluster, reached with redis-py's ``RedisCluster`` (which keeps a pool per node and follows
        MOVED/ASK); every key of a tenant shares its hash tag, so each script runs on one slot.
        """
        def client(socket_timeout_s: float) -> aioredis.Redis:
            if cluster:
                return aioredis.RedisCluster.from_url(  # type: ignore[return-value]
                    url, socket_timeout=socket_timeout_s, socket_connect_timeout=timeout_s,
                    max_connections=max_connections, retry=Retry(NoBackoff(), 1), health_check_interval=0,
                )
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=timeout_s,
                max_connections=max_connections,
                timeout=pool_timeout_s,
                retry=Retry(NoBackoff(), 1),
                health_check_interval=0,
            )
            return aioredis.Redis.from_pool(pool)

        bulk = client(bulk_timeout_s) if bulk_timeout_s and bulk_timeout_s != timeout_s else None
        return cls(client(timeout_s), prefix=prefix, layout=layout, ttl_s=ttl_s, metrics=metrics,
                   model_input=model_input, local_videos=local_videos, local_bytes=local_bytes, quota=quota,
                   bulk_client=bulk, summarize=summarize, local_trust_s=local_trust_s)

    def tenant(self, tenant_id: str) -> TenantStore:
        """The videos of one tenant (see :mod:`service.tenancy`): it sees no other tenant's."""
        return TenantStore(self, TenantKeys(self.prefix, tenant_id, self.layout))

    async def close(self) -> None:
        await self.client.aclose()
        if self.bulk is not self.client:
            await self.bulk.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    def failed(self, op: str, exc: BaseException) -> NoReturn:
        self.metrics.cache.labels(op, "error").inc()
        log.warning("feature cache %s failed: %s", op, exc)
        raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def redis(self, op: str, call: Awaitable[Any]) -> Any:
        """Await one Redis call; failures become 503 ``CacheUnavailable``."""
        try:
            return await call
        except (RedisError, OSError) as exc:
            self.failed(op, exc)


class TenantStore:
    """One tenant's videos: store, read, inspect, delete. Obtained from :meth:`FeatureStore.tenant`
    (routes get it from the ``TenantStoreDep`` dependency, which derives the tenant from the API key)."""

    def __init__(self, store: FeatureStore, keys: TenantKeys) -> None:
        self.store = store
        self.keys = keys
        self.tenant_id = keys.tenant

    def _local_key(self, video_id: str) -> str:
        return f"{self.tenant_id}/{video_id}"

    async def put(self, video_id: str, features: np.ndarray, meta: dict[str, Any],
                  collections: Sequence[str] = ()) -> dict[str, Any]:
        """Store ``features`` (T, D) as fp16 with a TTL, atomically replacing any previous version.

        The video is added to ``collections`` (created when new); collections it already belongs to are kept.

        The meta gets a fresh ``version``, which tells every replica that its local copy is stale.
        403 ``quota_exceeded`` when the tenant's quota would be exceeded (nothing is changed then).
        """
        store = self.store
        meta = {**meta, "stored_at": time.time(), "storage_dtype": STORAGE_FORMAT, "version": uuid.uuid4().hex}
        store.local.forget(self._local_key(video_id))
        blob = np.ascontiguousarray(features, dtype=STORAGE_DTYPE).tobytes()
        summary = store.summarize(features) if store.summarize is not None else b""
        result = await self._put(video_id, blob, summary, meta, collections)
        if result[0] == 0 and await self._forget_evicted():
            result = await self._put(video_id, blob, summary, meta, collections)
        if result[0] == 0:
            which = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
            raise quota_exceeded(which, store.quota, int(result[2]), int(result[3]), int(result[4]))
        store.metrics.cache.labels("put", "stored").inc()
        return {**meta, "ttl_s": store.ttl_s, "collections": sorted(name.decode() for name in result[5])}

    async def _put(self, video_id: str, blob: bytes, summary: bytes, meta: dict[str, Any],
                   collections: Sequence[str]) -> list[Any]:
        store, quota = self.store, self.store.quota
        return await store.redis("put", store.put_script(
            keys=[self.keys.video(video_id), *self.keys.books()],
            args=[video_id, blob, orjson.dumps(meta), store.ttl_s, time.time(), quota.max_videos, quota.max_bytes,
                  self.keys.base, summary, *dict.fromkeys(collections)],
        ))

    async def _forget_evicted(self) -> int:
        """Drop the books' entries of videos Redis evicted by itself; how many were dropped."""
        store = self.store
        sizes = self.keys.books()[0]
        ids = [raw.decode() for raw in await store.redis("put", store.client.hkeys(sizes))]
        if not ids:
            return 0
        async with store.client.pipeline(transaction=False) as pipe:
            for video_id in ids:
                pipe.exists(self.keys.video(video_id))
            present = await store.redis("put", pipe.execute())
        forgotten = 0
        for video_id, exists in zip(ids, present, strict=True):
            if not exists:
                await self.forget_if_gone(video_id, "put")
                forgotten += 1
        if forgotten:
            log.info("tenant %s: forgot %d evicted videos in the quota books", self.tenant_id, forgotten)
        return forgotten

    async def forget_if_gone(self, video_id: str, op: str = "forget") -> None:
        """Drop a video Redis no longer holds (expired, evicted) from the books, the listing and its collections."""
        store = self.store
        store.local.forget(self._local_key(video_id))
        await store.redis(op, store.delete_script(
            keys=[self.keys.video(video_id), *self.keys.books()], args=[video_id, "1", self.keys.base]))

    async def video_input(self, video_id: str) -> np.ndarray:
        """The model's video input (T, D + TEF) float32, read-only; 404 when absent or expired.

        With the local LRU on, Redis is asked for the small meta first and the features only when the
        local copy is missing or of another version; without it, features and meta come in one call. A copy
        checked less than ``local_trust_s`` ago is used without asking Redis (``local_trusted``).
        """
        store, key, local_key = self.store, self.keys.video(video_id), self._local_key(video_id)
        if store.local_trust_s and (cached := store.local.trusted(local_key, store.local_trust_s)) is not None:
            store.metrics.cache.labels("get", "local_trusted").inc()
            return cached
        started = store.local.check_started()
        if store.local.capacity:
            raw_meta = await store.redis("get", store.client.hget(key, "meta"))
            version = self._known(video_id, raw_meta).get("version")
            if (cached := store.local.lookup(local_key, version, store.local.checked_at(started))) is not None:
                store.metrics.cache.labels("get", "local_hit").inc()
                return cached
            started = store.local.check_started()
        blob, raw_meta = await store.redis("get", store.bulk.hmget(key, ["feat", "meta"]))
        meta = self._known(video_id, raw_meta if blob is not None else None)
        store.metrics.cache.labels("get", "hit").inc()
        stored = np.frombuffer(blob, dtype=STORAGE_DTYPE).reshape(meta["num_clips"], meta["dim"])
        array = store.model_input(stored)
        store.local.remember(local_key, meta.get("version"), array, store.local.checked_at(started))
        return array

    def _known(self, video_id: str, raw_meta: bytes | None) -> dict[str, Any]:
        """The parsed meta; a missing one is a miss: the local copy goes and the request gets 404."""
        if raw_meta is None:
            self.store.local.forget(self._local_key(video_id))
            self.store.metrics.cache.labels("get", "miss").inc()
            raise _unknown(video_id)
        return orjson.loads(raw_meta)

    async def metadata(self, video_id: str) -> dict[str, Any]:
        """Metadata plus ``ttl_s`` (seconds left) and ``collections`` (names) without reading the features."""
        store, key = self.store, self.keys.video(video_id)
        try:
            async with store.client.pipeline(transaction=store.atomic_reads) as pipe:
                pipe.hget(key, "meta")
                pipe.ttl(key)
                pipe.smembers(self.keys.memberships(video_id))
                raw_meta, ttl, names = await pipe.execute()
        except (RedisError, OSError) as exc:
            store.failed("metadata", exc)
        if raw_meta is None or ttl == -2:  # -2: deleted between the reads (cluster: not one transaction)
            store.metrics.cache.labels("metadata", "miss").inc()
            raise _unknown(video_id)
        store.metrics.cache.labels("metadata", "hit").inc()
        return {**orjson.loads(raw_meta), "ttl_s": int(ttl), "collections": sorted(n.decode() for n in names)}

    async def delete(self, video_id: str) -> None:
        """Remove a video (and its quota entry); 404 when it was not stored."""
        store = self.store
        store.local.forget(self._local_key(video_id))
        removed = await store.redis("delete", store.delete_script(
            keys=[self.keys.video(video_id), *self.keys.books()], args=[video_id, "0", self.keys.base]))
        if not removed:
            store.metrics.cache.labels("delete", "miss").inc()
            raise _unknown(video_id)
        store.metrics.cache.labels("delete", "deleted").inc()


def _unknown(video_id: str) -> NotFound:
    return NotFound(
        f"No features stored for video '{video_id}' (never stored, deleted or expired). "
        f"Upload them with PUT /v1/videos/{video_id}/features, or send them inline.",
        {"video_id": video_id},
    )
