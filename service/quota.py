"""Per-tenant storage quotas (videos and bytes), kept by Lua scripts on keys of one Redis slot.

Every key of a tenant carries the tenant's hash tag (see :class:`TenantKeys`), so a tenant's videos and
its bookkeeping live in one slot, on one Redis Cluster shard, and a script may touch all of them
atomically -- no multi-slot transaction, no distributed lock. The bookkeeping per tenant and layout:

- ``sizes``: hash ``video_id -> bytes stored`` (features + meta); its length is the video count;
- ``expiry``: sorted set ``video_id -> expiry time`` (unix seconds), so expired videos are forgotten
  cheaply (``ZRANGEBYSCORE``) before every quota check;
- ``bytes``: the sum of ``sizes``.

:data:`PUT_SCRIPT` checks the quota and, only if it holds, replaces the video and updates the books,
all in one atomic step: two replicas can never both take the last free slot. A video Redis removed
by itself under ``maxmemory`` (LRU eviction) stays in the books until a put is refused; then the
store drops every entry whose video is gone (:data:`FORGET_SCRIPT`, which checks that the video key
is still absent) and tries once more. If Redis evicts the bookkeeping keys themselves, counting
restarts from the videos stored afterwards (documented in service/README.md).

The same scripts keep the listing index and the collections (:mod:`service.collections`) in step: a put
gives a new video the next insertion number (a replaced one keeps its own, so listing cursors stay
valid) and adds it to the collections named with it; a delete, a forgotten eviction and the sweep of
expired videos (run by every put and before every listing or search) take it out of all of them. Each of
these steps also appends the video's id to the tenant's stage-1 change log (``s1log``, a Redis stream), in the
same atomic step, so every replica's candidate index can follow (:mod:`service.stage1`).
"""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import ServiceError

STAGE1_LOG_MAXLEN = 100_000
"""Approximate length the stage-1 change log is trimmed to (``XADD MAXLEN ~``); a replica that falls further
behind (its last entry trimmed away) rebuilds its index from the stored summaries."""

STAGE1_LOG_LUA = f"""
local function s1log(base, id)
  local seq = redis.call('INCR', base .. ':s1seq')
  redis.call('XADD', base .. ':s1log', 'MAXLEN', '~', {STAGE1_LOG_MAXLEN}, '*', 'seq', seq, 'id', id)
end
"""
"""Lua: note in the tenant's stage-1 change log that a video's summary may have changed (put, replace, delete,
expiry): every replica re-reads that video's summary (:mod:`service.stage1`)."""

UNLIST_LUA = STAGE1_LOG_LUA + """
local function unlist(base, id)
  redis.call('ZREM', base .. ':index', id)
  local memberships = base .. ':vcoll:' .. id
  for _, name in ipairs(redis.call('SMEMBERS', memberships)) do
    redis.call('ZREM', base .. ':coll:' .. name, id)
  end
  redis.call('DEL', memberships)
end
"""
"""Lua: take a video out of the tenant's listing index and every collection it belongs to (the keys are
built from ``base``, the tenant's key base: they share its hash tag, hence its slot)."""

SWEEP_LUA = UNLIST_LUA + """
local function sweep(sizes, expiry, bytes, base, now)
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now)) do
    redis.call('DECRBY', bytes, tonumber(redis.call('HGET', sizes, gone) or '0'))
    redis.call('HDEL', sizes, gone)
    unlist(base, gone)
    s1log(base, gone)
  end
  redis.call('ZREMRANGEBYSCORE', expiry, '-inf', now)
end
"""
"""Lua: forget every video whose TTL has passed (books, listing index, collections)."""

SWEEP_SCRIPT = SWEEP_LUA + """
-- KEYS: sizes, expiry, bytes.  ARGV: base, now_s
sweep(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]))
return 1
"""

PUT_SCRIPT = SWEEP_LUA + """
-- KEYS: video, sizes, expiry, bytes.  ARGV: video_id, feat, meta, ttl_s, now_s, max_videos, max_bytes, base,
-- stage-1 summary ('' for none), collection names to add the video to...
local id, ttl, now = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
local max_videos, max_bytes, base = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local size = string.len(ARGV[2]) + string.len(ARGV[3]) + string.len(ARGV[9])
sweep(KEYS[2], KEYS[3], KEYS[4], base, now)
local old = tonumber(redis.call('HGET', KEYS[2], id) or '-1')
local videos = redis.call('HLEN', KEYS[2])
if old < 0 then videos = videos + 1 end
local used = tonumber(redis.call('GET', KEYS[4]) or '0') + size - math.max(old, 0)
if max_videos > 0 and videos > max_videos then return {0, 'videos', videos - 1, used - size, size} end
if max_bytes > 0 and used > max_bytes then return {0, 'bytes', videos - 1, used - size, size} end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'feat', ARGV[2], 'meta', ARGV[3])
if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 's1', ARGV[9]) end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('HSET', KEYS[2], id, size)
redis.call('ZADD', KEYS[3], now + ttl, id)
redis.call('SET', KEYS[4], used)
for i = 2, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
-- listing order: a video keeps its place when replaced (cursors stay valid); a new one goes last
local index, names = base .. ':index', base .. ':collections'
local seq = redis.call('ZSCORE', index, id)
if not seq then
  seq = redis.call('INCR', base .. ':seq')
  redis.call('ZADD', index, seq, id)
end
local memberships = base .. ':vcoll:' .. id
for i = 10, #ARGV do
  redis.call('SADD', memberships, ARGV[i])
  redis.call('SADD', names, ARGV[i])
end
for _, name in ipairs(redis.call('SMEMBERS', memberships)) do
  redis.call('ZADD', base .. ':coll:' .. name, seq, id)
  redis.call('EXPIRE', base .. ':coll:' .. name, ttl)
end
if redis.call('EXISTS', memberships) == 1 then redis.call('EXPIRE', memberships, 2 * ttl) end
for _, key in ipairs({index, base .. ':seq'}) do redis.call('EXPIRE', key, ttl) end
if redis.call('EXISTS', names) == 1 then redis.call('EXPIRE', names, ttl) end
s1log(base, id)
for _, key in ipairs({base .. ':s1log', base .. ':s1seq'}) do redis.call('EXPIRE', key, ttl) end
return {1, 'ok', videos, used, size, redis.call('SMEMBERS', memberships)}
"""

DELETE_SCRIPT = UNLIST_LUA + """
-- KEYS: video, sizes, expiry, bytes.  ARGV: video_id, only_if_gone ('1': forget an evicted video), base
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local removed = redis.call('DEL', KEYS[1])
local size = redis.call('HGET', KEYS[2], ARGV[1])
if size then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('DECRBY', KEYS[4], tonumber(size))
end
unlist(ARGV[3], ARGV[1])
if removed == 1 or size then s1log(ARGV[3], ARGV[1]) end
return removed
"""
FORGET_SCRIPT = DELETE_SCRIPT  # with only_if_gone = '1'


@dataclass(frozen=True)
class TenantKeys:
    """The Redis keys of one tenant under one feature layout.

    ``{prefix}:{<tenant>}:<layout>:video:<video_id>`` and ``...:sizes`` / ``...:expiry`` / ``...:bytes``:
    the braces make the tenant id the Redis Cluster hash tag, so all of them share one slot.
    """

    prefix: str
    tenant: str
    layout: str

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{{self.tenant}}}:{self.layout}"

    def video(self, video_id: str) -> str:
        return f"{self.base}:video:{video_id}"

    def books(self) -> list[str]:
        """``sizes``, ``expiry``, ``bytes``: the script keys after the video's own."""
        return [f"{self.base}:sizes", f"{self.base}:expiry", f"{self.base}:bytes"]

    def index(self) -> str:
        """Sorted set ``video_id -> insertion number``: the listing order of the tenant's videos."""
        return f"{self.base}:index"

    def collection_names(self) -> str:
        """Set of the tenant's collection names."""
        return f"{self.base}:collections"

    def collection(self, name: str) -> str:
        """Sorted set ``video_id -> insertion number`` of one collection (the video's number in :meth:`index`)."""
        return f"{self.base}:coll:{name}"

    def search_results(self, token: str) -> str:
        """The ranked results of one ``POST /v1/search``, kept for its cursor's next pages."""
        return f"{self.base}:search:{token}"

    def stage1_log(self) -> str:
        """Stream of ``{seq, id}`` entries: videos whose stage-1 summary may have changed (:mod:`service.stage1`)."""
        return f"{self.base}:s1log"

    def stage1_seq(self) -> str:
        """Counter numbering the :meth:`stage1_log` entries (a gap tells a replica it missed some)."""
        return f"{self.base}:s1seq"

    def memberships(self, video_id: str) -> str:
        """Set of the collection names a video belongs to."""
        return f"{self.base}:vcoll:{video_id}"


@dataclass(frozen=True)
class Quota:
    """Limits per tenant (0 = none)."""

    max_videos: int = 0
    max_bytes: int = 0


def quota_exceeded(which: str, quota: Quota, videos: int, used_bytes: int, size: int) -> ServiceError:
    """403 ``quota_exceeded``, naming the quota that is full and what is stored now."""
    if which == "videos":
        limit, what = quota.max_videos, f"{quota.max_videos} videos (TRDETR_QUOTA_MAX_VIDEOS), {videos} stored"
    else:
        limit = quota.max_bytes
        what = f"{quota.max_bytes} bytes (TRDETR_QUOTA_MAX_BYTES), {used_bytes} stored, this video needs {size}"
    return ServiceError(
        403, "quota_exceeded",
        f"The storage quota of this API key is full: {what}. Delete videos you no longer need "
        "(DELETE /v1/videos/{video_id}), wait for some to expire, or store this one again to replace it.",
        {"quota": which, "limit": limit, "videos": videos, "bytes": used_bytes, "video_bytes": size},
    )
