"""Stage 1 of ``POST /v1/search``: pick the candidate videos of a large scope by CLIP similarity.

TR-DETR (stage 2) costs a model run per video, so a scope larger than ``TRDETR_SEARCH_CANDIDATES`` is first
narrowed to that many videos: the query's CLIP projected text embedding (the bundle's text encoder's
``text_embeds`` output, :attr:`TextEncoderSpec.embedding_output`) against one summary vector per video of its
CLIP image group (:attr:`TextEncoderSpec.embedding_group`; the released features' ``clip`` group *is* CLIP's
projected image embedding, the same space). CLIP ranks a video by how much some of its frames look like the
text, which is what TR-DETR's best moment needs too.

**Summary** (:func:`video_summary`): the group's rows (already L2-normalised per clip), mean over clips, then
L2-normalised again, stored as float16 in the video's Redis hash (field ``s1``) by the same atomic put as its
features, so it expires and is deleted with them. Chosen by measurement (``bench/bench_search.py recall``,
README "Search many videos, stage 1"): on videos whose matching part is 2 of 16 clips, recall@200 of the query
topic's videos was 0.995 for the mean and 0.57 for the per-dimension max over clips (10 000 videos); the max
of per-dimension maxima mostly collects noise. Max-similarity over several vectors per video (every clip, or
means of 8-clip segments) was as good or better, and much better on long videos with a short match (2 of 75
clips, 2 000 videos: 1.000 / 0.996 vs 0.903 for the mean), but needs 10-75 vectors per video in every
replica's memory; not done yet.

**Index**, per tenant per replica, in memory (Redis stays the source of truth): the summaries as rows of a
float32 matrix, and a usearch HNSW graph over them (a maintained single-file library with a small wheel;
cosine metric, add/remove by integer key = the row, local to the replica, so no replica needs to agree on it).
A scope of at most ``exact_max`` indexed videos (default 20 000, every measured case) is ranked *exactly*: one
matrix product over the scope's rows, ~4 ms for 10 000 videos on the loaded 2-core machine, where building
an HNSW graph of 10 000 vectors takes ~5-50 s (measured; it would make every rebuild slow) and searching it
is no faster. The graph is built only when a larger scope is first searched, then kept in step by every
add/remove; it returns an oversampled top list filtered to the scope, grown until enough candidates are found.
usearch is pinned below 2.18: 2.26's ``numkong`` extension crashes the process (segfault) when imported before
onnxruntime (measured here). faiss or hnswlib would do as well; Redis's own vector search (RediSearch) is not
in every Redis (not in the plain server the tests and the embedded Redis run), so it is not relied on.

**Consistency across replicas**: every put, replace, delete, forgotten eviction and expiry sweep appends the
video's id to the tenant's change log (``s1log``, a Redis stream, ``XADD MAXLEN ~``; :mod:`service.quota`'s
scripts, in the same atomic step as the change, numbered by the ``s1seq`` counter). Before each stage-1
query a replica reads the log after its last entry (one round trip when nothing changed) and re-reads the
summary of each id named there: present -> (re)added, absent -> removed. Reading the *current* summary makes
replaying an entry twice harmless. This catch-up runs in the search request, not in a background tailer, so a
put acknowledged by replica A is seen by the next search on replica B (read-your-writes across replicas), and
tenants that never search cost nothing. A replica rebuilds the tenant's index from the stored summaries (the
tenant's listing index + one ``HGET`` per video, pipelined) on its first search, and whenever the entry after
its last one was trimmed away or the log restarted (a gap in ``seq``). Hits whose features expired since are
dropped by stage 2's loader, and the expiry sweep (before every search) logs them so indexes drop them too.

Tenancy and Redis Cluster: the log, counter and summaries are under the tenant's key base (its hash tag, one
slot), and each tenant has its own index: a key's index holds only its own videos.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from usearch.index import Index

from service.cache import TenantStore
from trdetr_common.manifest import PreprocessingContract

log = logging.getLogger(__name__)

SUMMARY_DTYPE = np.dtype("<f2")
SUMMARY_FIELD = "s1"
LOG_BATCH = 1000
"""Change-log entries read per round trip, and summaries fetched per pipeline."""


def video_summary(group: np.ndarray, how: str = "mean") -> np.ndarray:
    """One video's stage-1 summary (P,) float32, L2-normalised, from its embedding group's rows (T, P).

    ``how``: ``mean`` over clips (the service's choice) or ``max`` per dimension (measured alternative).
    """
    pooled = group.max(axis=0) if how == "max" else group.mean(axis=0)
    pooled = pooled.astype(np.float32)
    return pooled / max(float(np.linalg.norm(pooled)), 1e-12)


def video_summarizer(pre: PreprocessingContract) -> Callable[[np.ndarray], bytes] | None:
    """Stored features (T, D) -> summary bytes (P float16), for :class:`~service.cache.FeatureStore`; None when
    the bundle has no text embedding or no video group in its space (stage 1 is off then)."""
    spec = pre.text_encoder
    if spec.embedding_output is None or spec.embedding_group is None:
        return None
    start = 0
    for group in pre.video_groups:
        if group.name == spec.embedding_group:
            columns = slice(start, start + group.dim)
            return lambda features: video_summary(features[:, columns]).astype(SUMMARY_DTYPE).tobytes()
        start += group.dim
    return None


def embedding_dim(pre: PreprocessingContract) -> int | None:
    """Width of the summaries and text embeddings (the embedding group's), None when stage 1 is off."""
    name = pre.text_encoder.embedding_group
    return (
        next((g.dim for g in pre.video_groups if g.name == name), None)
        if pre.text_encoder.embedding_output
        else None
    )


@dataclass
class TenantIndex:
    """One tenant's summaries on this replica: rows of a float32 matrix (P wide) plus, for scopes above
    ``exact_max``, a usearch HNSW graph over the same rows (built when first needed, then kept in step).

    ``last_id`` / ``last_seq``: the last change-log entry applied (None: never built).
    """

    dim: int
    exact_max: int
    matrix: np.ndarray = field(init=False)
    rows: dict[str, int] = field(default_factory=dict)  # video id -> row
    owners: list[str | None] = field(default_factory=list)  # row -> video id (None: free)
    free: list[int] = field(default_factory=list)
    graph: Index | None = None
    last_id: str | None = None
    last_seq: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.matrix = np.zeros((0, self.dim), np.float32)
        self.rows, self.owners, self.free, self.graph = {}, [], [], None

    @property
    def keys(self) -> dict[str, int]:
        """The indexed video ids (with their rows)."""
        return self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def upsert(self, video_ids: list[str], vectors: np.ndarray) -> None:
        """(Re)place the summaries (N, P) of ``video_ids``."""
        for video_id, vector in zip(video_ids, np.asarray(vectors, np.float32), strict=True):
            row = self.rows.get(video_id)
            if row is None:
                row = self.free.pop() if self.free else self._grow()
                self.rows[video_id], self.owners[row] = row, video_id
            self.matrix[row] = vector
            if self.graph is not None:
                if row in self.graph:
                    self.graph.remove(row)
                self.graph.add(row, vector)

    def _grow(self) -> int:
        row = len(self.owners)
        if row == len(self.matrix):
            grown = np.zeros((max(64, 2 * len(self.matrix)), self.dim), np.float32)
            grown[:row] = self.matrix
            self.matrix = grown
        self.owners.append(None)
        return row

    def remove(self, video_ids: list[str]) -> None:
        for video_id in video_ids:
            row = self.rows.pop(video_id, None)
            if row is None:
                continue
            self.owners[row] = None
            self.free.append(row)
            if self.graph is not None:
                self.graph.remove(row)

    def top(self, query: np.ndarray, scope: list[str], count: int) -> list[str]:
        """The ``count`` videos of ``scope`` (ids, best first) most similar to ``query`` (P,), among those with a
        summary here; exact for a scope of at most ``exact_max`` indexed videos, else the HNSW graph."""
        known = [video_id for video_id in scope if video_id in self.rows]
        if len(known) <= self.exact_max:
            return self._exact(query, known, count)
        return self._approximate(query, set(known), count) or self._exact(query, known, count)

    def _exact(self, query: np.ndarray, known: list[str], count: int) -> list[str]:
        if not known:
            return []
        rows = np.fromiter((self.rows[v] for v in known), np.int64, len(known))
        scores = self.matrix[rows] @ query.astype(np.float32)
        count = min(count, len(known))
        best = np.argpartition(-scores, count - 1)[:count]
        best = best[np.lexsort((best, -scores[best]))]  # by score, ties by scope order
        return [known[i] for i in best]

    def _approximate(self, query: np.ndarray, scope: set[str], count: int) -> list[str]:
        """HNSW top list, oversampled by how much of the index the scope is, filtered to it, grown (x4) until
        ``count`` members are found; [] when even the whole index did not give enough (the caller goes exact)."""
        if self.graph is None:
            self.graph = Index(ndim=self.dim, metric="cos", dtype="f32", connectivity=16, expansion_add=64)
            rows = np.fromiter(self.rows.values(), np.uint64, len(self.rows))
            self.graph.add(rows, self.matrix[rows.astype(np.int64)])
        total = len(self)
        ask = min(total, max(4 * count, int(2 * count * total / max(len(scope), 1))))
        while True:
            self.graph.expansion_search = max(ask, 64)
            matches = self.graph.search(query.astype(np.float32), ask)
            hits = [
                owner
                for row in matches.keys.tolist()
                if (owner := self.owners[row]) is not None and owner in scope
            ]
            if len(hits) >= count:
                return hits[:count]
            if ask >= total:
                return []
            ask = min(total, 4 * ask)


class Stage1Indexes:
    """Every tenant's :class:`TenantIndex` on this replica, kept in step with Redis through the change log."""

    def __init__(self, dim: int, exact_max: int = 20_000) -> None:
        self.dim = dim
        self.exact_max = exact_max
        self._tenants: dict[str, TenantIndex] = {}
        self.rebuilds = 0  # for tests and logs: how many times an index was rebuilt from Redis

    async def synced(self, tenant: TenantStore) -> TenantIndex:
        """The tenant's index, with every change logged in Redis until now applied (built on first use)."""
        index = self._tenants.get(tenant.keys.base)
        if index is None:
            index = self._tenants.setdefault(tenant.keys.base, TenantIndex(self.dim, self.exact_max))
        async with index.lock:
            if index.last_id is None or not await self._catch_up(index, tenant):
                await self._rebuild(index, tenant)
        return index

    async def _catch_up(self, index: TenantIndex, tenant: TenantStore) -> bool:
        """Apply the log after ``last_id``; False when entries were missed (trimmed, or the log restarted)."""
        store, keys = tenant.store, tenant.keys
        while True:
            async with store.client.pipeline(transaction=False) as pipe:
                pipe.get(keys.stage1_seq())
                pipe.xrange(keys.stage1_log(), f"({index.last_id}", "+", count=LOG_BATCH)
                seq, entries = await store.redis("stage1", pipe.execute())
            if not entries:
                return int(seq or 0) == index.last_seq
            if int(entries[0][1][b"seq"]) != index.last_seq + 1:
                return False
            await self._refresh(index, tenant, list(dict.fromkeys(e[1][b"id"].decode() for e in entries)))
            index.last_id, index.last_seq = entries[-1][0].decode(), int(entries[-1][1][b"seq"])
            if len(entries) < LOG_BATCH:
                return True

    async def _rebuild(self, index: TenantIndex, tenant: TenantStore) -> None:
        """Every stored summary of the tenant, read after the log's last entry (so later changes are replayed)."""
        store, keys = tenant.store, tenant.keys
        async with store.client.pipeline(transaction=False) as pipe:
            pipe.xrevrange(keys.stage1_log(), "+", "-", count=1)
            pipe.zrange(keys.index(), 0, -1)
            last, members = await store.redis("stage1", pipe.execute())
        index.clear()
        index.last_id, index.last_seq = (last[0][0].decode(), int(last[0][1][b"seq"])) if last else ("0-0", 0)
        await self._refresh(index, tenant, [raw.decode() for raw in members])
        self.rebuilds += 1
        log.info("stage-1 index of %s rebuilt: %d videos", keys.base, len(index))

    async def _refresh(self, index: TenantIndex, tenant: TenantStore, video_ids: list[str]) -> None:
        """Re-read the summaries of ``video_ids``: present ones are (re)added, missing ones removed."""
        store = tenant.store
        for start in range(0, len(video_ids), LOG_BATCH):
            chunk = video_ids[start : start + LOG_BATCH]
            async with store.client.pipeline(transaction=False) as pipe:
                for video_id in chunk:
                    pipe.hget(tenant.keys.video(video_id), SUMMARY_FIELD)
                blobs = await store.redis("stage1", pipe.execute())
            found = [
                (v, b) for v, b in zip(chunk, blobs, strict=True) if b is not None and len(b) == 2 * self.dim
            ]
            present = {v for v, _ in found}
            index.remove([v for v in chunk if v not in present])
            if found:
                vectors = np.frombuffer(b"".join(b for _, b in found), SUMMARY_DTYPE).reshape(
                    len(found), self.dim
                )
                index.upsert([v for v, _ in found], vectors)
