"""Named collections of a tenant's videos, and the cursor-paginated listing of its videos.

Keys (all under the tenant's key base, so they share its Redis Cluster hash tag and slot; see
:class:`service.quota.TenantKeys`):

- ``index``: sorted set ``video_id -> insertion number`` (``seq``: an INCR counter). A new video gets the
  next number, a replaced one keeps its own, so ordering by it is stable under concurrent writes;
- ``coll:<name>``: sorted set of one collection's videos, scored by the same insertion number;
- ``vcoll:<video_id>``: the names of the collections a video belongs to (so a delete can leave them all);
- ``collections``: the tenant's collection names (a collection exists, possibly empty, until deleted).

Listing pages are ``ZRANGE BYSCORE (last_seen +inf LIMIT 0 N``: the cursor is the last insertion number
returned, so a video present throughout is returned exactly once whatever is put or deleted between
pages (new videos come after every existing one). Every membership change is one Lua script, and the
feature store's put / delete scripts maintain the index and memberships in the same atomic step as the
features. Expired videos are swept out (books, index, collections) before every listing and search;
a video found missing anyway (evicted by Redis under ``maxmemory``) is forgotten when a listing or search
meets it, so collections never keep dangling ids.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from service.cache import TenantStore
from service.errors import InvalidInput, NotFound
from service.quota import SWEEP_SCRIPT
from service.schemas import COLLECTION_PATTERN, MAX_COLLECTIONS_PER_UPLOAD

LINK_SCRIPT = """
-- KEYS: video.  ARGV: base, video_id, name, ttl_s
local base, id, name, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local index = base .. ':index'
local seq = redis.call('ZSCORE', index, id)
if not seq then
  seq = redis.call('INCR', base .. ':seq')
  redis.call('ZADD', index, seq, id)
  redis.call('EXPIRE', index, ttl)
  redis.call('EXPIRE', base .. ':seq', ttl)
end
local memberships, coll, names = base .. ':vcoll:' .. id, base .. ':coll:' .. name, base .. ':collections'
redis.call('SADD', memberships, name)
redis.call('EXPIRE', memberships, 2 * ttl)
redis.call('ZADD', coll, seq, id)
redis.call('EXPIRE', coll, ttl)
redis.call('SADD', names, name)
redis.call('EXPIRE', names, ttl)
return 1
"""

UNLINK_SCRIPT = """
-- KEYS: collections (routes the script to the tenant's slot).  ARGV: base, video_id, name.  -1: no such collection, 0: the video is not in it, 1: removed
local base, id, name = ARGV[1], ARGV[2], ARGV[3]
if redis.call('SISMEMBER', base .. ':collections', name) == 0 then return -1 end
redis.call('SREM', base .. ':vcoll:' .. id, name)
return redis.call('ZREM', base .. ':coll:' .. name, id)
"""

DROP_SCRIPT = """
-- KEYS: collections (routes the script to the tenant's slot).  ARGV: base, name.  0: no such collection
local base, name = ARGV[1], ARGV[2]
if redis.call('SREM', base .. ':collections', name) == 0 then return 0 end
local coll = base .. ':coll:' .. name
for _, id in ipairs(redis.call('ZRANGE', coll, 0, -1)) do
  redis.call('SREM', base .. ':vcoll:' .. id, name)
end
redis.call('DEL', coll)
return 1
"""

_CURSOR_PREFIX = b"v1:"


@dataclass(frozen=True)
class ListedVideo:
    video_id: str
    meta: dict[str, Any]


@dataclass(frozen=True)
class VideoPage:
    videos: list[ListedVideo]
    next_cursor: str | None


def encode_cursor(seq: int) -> str:
    """An opaque cursor for 'after the video with insertion number ``seq``'."""
    return base64.urlsafe_b64encode(_CURSOR_PREFIX + str(seq).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The insertion number in a listing cursor; 422 ``invalid_cursor`` for anything this service did not issue."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if raw.startswith(_CURSOR_PREFIX):
            return int(raw[len(_CURSOR_PREFIX):])
    except (binascii.Error, ValueError):
        pass
    raise InvalidInput("The cursor is not one this service returned; pass the next_cursor of the previous page "
                       "unchanged, or leave it out to start from the first page.", {"cursor": cursor[:64]},
                       code="invalid_cursor")


def unknown_collection(name: str) -> NotFound:
    return NotFound(f"No collection '{name}' (never created or deleted). Add a video to create it: "
                    f"PUT /v1/collections/{name}/videos/{{video_id}}, or ?collection={name} on an upload.",
                    {"collection": name})


class Collections:
    """One tenant's collections and video listing (from :meth:`Collections.of`: shares the tenant's store)."""

    def __init__(self, tenant: TenantStore) -> None:
        self.tenant = tenant
        self.keys = tenant.keys
        self.store = tenant.store

    async def _script(self, op: str, source: str, keys: list[str], args: list[Any]) -> Any:
        script = self.store.scripts.get(source)
        if script is None:
            script = self.store.scripts[source] = self.store.client.register_script(source)
        return await self.store.redis(op, script(keys=keys, args=args))

    async def sweep(self) -> None:
        """Forget the tenant's expired videos (books, listing, collections)."""
        await self._script("sweep", SWEEP_SCRIPT, self.keys.books(), [self.keys.base, time.time()])

    async def add(self, name: str, video_id: str) -> None:
        """Put a stored video in collection ``name`` (created when new); 404 when the video is not stored."""
        added = await self._script("collection", LINK_SCRIPT, [self.keys.video(video_id)],
                                   [self.keys.base, video_id, name, self.store.ttl_s])
        if not added:
            raise NotFound(f"No features stored for video '{video_id}' (never stored, deleted or expired); store "
                           "it before adding it to a collection.", {"video_id": video_id})

    async def remove(self, name: str, video_id: str) -> None:
        """Take a video out of a collection (the video stays stored); 404 for an unknown collection or member."""
        removed = await self._script("collection", UNLINK_SCRIPT, [self.keys.collection_names()],
                                     [self.keys.base, video_id, name])
        if removed == -1:
            raise unknown_collection(name)
        if removed == 0:
            raise NotFound(f"Video '{video_id}' is not in collection '{name}'.",
                           {"collection": name, "video_id": video_id})

    async def drop(self, name: str) -> None:
        """Delete a collection (not its videos); 404 when it does not exist."""
        if not await self._script("collection", DROP_SCRIPT, [self.keys.collection_names()], [self.keys.base, name]):
            raise unknown_collection(name)

    async def names_and_sizes(self) -> dict[str, int]:
        """Every collection of the tenant with its number of (unexpired) videos, by name."""
        await self.sweep()
        client = self.store.client
        names = sorted(raw.decode() for raw in await self.store.redis("collections", client.smembers(
            self.keys.collection_names())))
        async with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcard(self.keys.collection(name))
            sizes = await self.store.redis("collections", pipe.execute()) if names else []
        return dict(zip(names, (int(size) for size in sizes), strict=True))

    async def require(self, name: str) -> None:
        """404 unless collection ``name`` exists."""
        exists = await self.store.redis("collections", self.store.client.sismember(
            self.keys.collection_names(), name))
        if not exists:
            raise unknown_collection(name)

    async def members(self, name: str | None) -> list[str]:
        """Every video id of a collection (``None``: of the tenant), in insertion order; 404 for an unknown one."""
        await self.sweep()
        if name is not None:
            await self.require(name)
        key = self.keys.index() if name is None else self.keys.collection(name)
        return [raw.decode() for raw in await self.store.redis("collections", self.store.client.zrange(key, 0, -1))]

    async def page(self, name: str | None, limit: int, cursor: str | None) -> VideoPage:
        """Up to ``limit`` videos after ``cursor`` (of collection ``name``, or all), with their metadata.

        Videos found missing (evicted) are forgotten and skipped, so a page may hold fewer than ``limit``;
        ``next_cursor`` is None once the end is reached.
        """
        after = decode_cursor(cursor) if cursor else 0
        await self.sweep()
        if name is not None:
            await self.require(name)
        key = self.keys.index() if name is None else self.keys.collection(name)
        client = self.store.client
        entries = await self.store.redis("list", client.zrangebyscore(key, f"({after}", "+inf", start=0, num=limit,
                                                                      withscores=True))
        ids = [raw.decode() for raw, _ in entries]
        async with client.pipeline(transaction=False) as pipe:
            for video_id in ids:
                pipe.hget(self.keys.video(video_id), "meta")
                pipe.ttl(self.keys.video(video_id))
                pipe.smembers(self.keys.memberships(video_id))
            replies = await self.store.redis("list", pipe.execute()) if ids else []
        videos = []
        for i, video_id in enumerate(ids):
            raw_meta, ttl, names = replies[3 * i: 3 * i + 3]
            if raw_meta is None or ttl == -2:
                await self.tenant.forget_if_gone(video_id, "list")
                continue
            meta = {**orjson.loads(raw_meta), "ttl_s": int(ttl), "collections": sorted(n.decode() for n in names)}
            videos.append(ListedVideo(video_id, meta))
        more = len(entries) == limit
        return VideoPage(videos, encode_cursor(int(entries[-1][1])) if more else None)


def check_names(names: list[str]) -> list[str]:
    """Collection names from ``?collection=`` (repeatable), deduplicated; 422 naming what is wrong."""
    if len(names) > MAX_COLLECTIONS_PER_UPLOAD:
        raise InvalidInput(f"{len(names)} collections given; a video may be added to at most "
                           f"{MAX_COLLECTIONS_PER_UPLOAD} at once.",
                           {"collections": len(names), "max_collections": MAX_COLLECTIONS_PER_UPLOAD},
                           code="too_many_collections")
    for name in names:
        if not re.fullmatch(COLLECTION_PATTERN, name):
            raise InvalidInput(f"Collection name {name[:80]!r} is not valid: use 1-64 letters, digits, '_', '.' or "
                               "'-', starting with a letter or digit.", {"collection": name[:80],
                                                                        "pattern": COLLECTION_PATTERN},
                               code="invalid_collection")
    return list(dict.fromkeys(names))
