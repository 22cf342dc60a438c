"""Benchmark ``POST /v1/search`` on CPU: stage-1 recall, then latency over 1 000 / 10 000 stored videos.

The synthetic collection has a structure where stage-1 recall means something: ``--clusters`` random unit
"topics" in the 512-d CLIP space; a video of topic c has ``--match-clips`` CLIP rows near c's centroid (its
matching moment) and the rest near random "scenery" vectors (the rest of the video, never a query's topic); a
query of topic c has the text embedding centroid_c + noise. Videos are stored through the cache's own put (the same Lua script as
uploads, so the stage-1 summary and change log are written as in production), 32 at a time.

``recall`` (in process, no HTTP): for ``--recall-queries`` queries, stage 1 (``pick_candidates``: the same
code as the route) with the query's embedding, and

- **vs exhaustive TR-DETR**: stage 2 on *every* video (``run_stage2``), the top ``--top-videos`` videos of that
  ranking, and the fraction of them among the stage-1 candidates. With a random-weight TR-DETR (all we have
  here) this ranking does not depend on CLIP similarity, so the number is ~candidates / videos: it measures
  nothing about stage 1 and is printed to say so;
- **vs the planted topic**: the fraction of the query topic's videos among the candidates, for the summaries
  ``mean`` over clips (the service's), per-dimension ``max`` over clips, and max-similarity over several
  vectors per video (8-clip segment means; every clip), computed here from the same features, exact top-k.

``latency``: ``--requests`` text searches over the whole collection through the app (ASGI transport, lifespan
running: Redis, batcher, ONNX Runtime), p50 / p99, plus the time of stage 1 alone and, per candidate, of
loading its input from Redis (fetch + decode + TEF) next to the whole stage 2.

    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/bench_search.py recall --videos 1000
    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/bench_search.py latency --videos 1000 10000

The bundle is the released model's size with random weights plus the demo's random CLIP-interface text
encoder (with ``text_embeds``), cached in ``--work-dir``. Every namespace is deleted afterwards. Not a test:
numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_service import build_bundle as build_released_bundle  # noqa: E402

from service.app import create_app  # noqa: E402
from service.schemas import CollectionSearchRequest  # noqa: E402
from service.search_across import pick_candidates, run_stage2  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.stage1 import video_summary  # noqa: E402
from service.tenancy import SHARED_TENANT_ID  # noqa: E402

CLIP_DIM = 512


def build_bundle(work_dir: Path) -> Path:
    """Random released-size checkpoint + the demo's random CLIP text tower (with projection) -> a bundle."""
    if (work_dir / "bundle-stage1" / "manifest.json").exists():
        return work_dir / "bundle-stage1"
    from model_export.demo_bundle import DEMO_VIDEO_GROUPS, write_tiny_clip_text_dir

    text_dir = write_tiny_clip_text_dir(work_dir / "tiny_clip_text")
    return build_released_bundle(work_dir, "bundle-stage1", text_encoder_dir=text_dir, video_groups=DEMO_VIDEO_GROUPS)


class Collection:
    """The synthetic topics and videos (see the module docstring)."""

    def __init__(self, videos: int, clips: int, clusters: int, match_clips: int, noise: float, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.centroids = unit(self.rng.standard_normal((clusters, CLIP_DIM)))
        self.scenery = unit(
            self.rng.standard_normal((clusters, CLIP_DIM))
        )  # what the rest of the videos shows
        self.topic = self.rng.integers(0, clusters, videos)
        self.clips, self.match_clips, self.noise = clips, match_clips, noise

    def clip_rows(self, i: int) -> np.ndarray:
        """Video i's CLIP group (clips, 512): its topic on ``match_clips`` rows, scenery (no query's topic)
        elsewhere, so a video is relevant to a query exactly when it has the query's topic."""
        rng = np.random.default_rng(1000 + i)
        rows = self.scenery[rng.integers(0, len(self.scenery), self.clips)]
        rows[: self.match_clips] = self.centroids[self.topic[i]]
        rows = rows + self.noise * rng.standard_normal((self.clips, CLIP_DIM)) / np.sqrt(CLIP_DIM)
        return unit(rng.permutation(rows)).astype(np.float32)

    def query(self, topic: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return unit(self.centroids[topic] + self.noise * rng.standard_normal(CLIP_DIM) / np.sqrt(CLIP_DIM))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


async def fill(app, data: Collection, collection: str) -> None:
    """Every video of ``data`` into ``collection`` through the store's put, 32 at a time."""
    runtime = app.state.runtime
    store = runtime.store.tenant(SHARED_TENANT_ID)
    other = sum(g.dim for g in runtime.bundle.pre.video_groups) - CLIP_DIM
    limit = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        rng = np.random.default_rng(i)
        slowfast = unit(rng.standard_normal((data.clips, other))).astype(np.float32)
        features = np.concatenate([slowfast, data.clip_rows(i)], axis=1)
        async with limit:
            await store.put(
                f"v{i:06d}", features, {"num_clips": data.clips, "dim": features.shape[1]}, [collection]
            )

    await asyncio.gather(*(one(i) for i in range(len(data.topic))))


def settings_for(args: argparse.Namespace, bundle: Path, prefix: str) -> Settings:
    return Settings(
        bundle_dir=bundle,
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        redis_key_prefix=prefix,
        device="cpu",
        intra_op_threads=args.threads,
        warmup_runs=2,
        request_timeout_s=args.timeout_s,
        search_candidates=args.candidates,
        local_cache_videos=0,
    )


def drop(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter(match=f"{settings.redis_key_prefix}:*", count=1000):
        client.delete(key)


async def recall(args: argparse.Namespace, bundle: Path) -> None:
    data = Collection(args.videos[0], args.clips, args.clusters, args.match_clips, args.noise)
    settings = settings_for(args, bundle, f"trdetr-bench-search-{uuid.uuid4().hex[:8]}")
    app = create_app(settings)
    vs_trdetr: list[float] = []
    vs_topic: dict[str, list[float]] = {
        "mean": [],
        "max": [],
        "segments of 8 clips, max-sim": [],
        "every clip, max-sim": [],
    }
    try:
        async with app.router.lifespan_context(app):
            runtime = app.state.runtime
            await fill(app, data, "bench")
            store = runtime.store.tenant(SHARED_TENANT_ID)
            ids = [f"v{i:06d}" for i in range(len(data.topic))]
            rows = [data.clip_rows(i) for i in range(len(ids))]
            summaries = {how: np.stack([video_summary(r, how) for r in rows]) for how in ("mean", "max")}
            segments = [unit(np.stack([r[j : j + 8].mean(0) for j in range(0, len(r), 8)])) for r in rows]
            for q in range(args.recall_queries):
                topic = int(data.topic[q * 7 % len(ids)])
                embed = data.query(topic, seed=q)
                relevant = {ids[i] for i in np.flatnonzero(data.topic == topic)}
                candidates, stage1, _ = await pick_candidates(runtime, store, ids, embed)
                assert stage1 == "index", stage1
                scores = {
                    **{how: matrix @ embed for how, matrix in summaries.items()},
                    "segments of 8 clips, max-sim": np.array([(s @ embed).max() for s in segments]),
                    "every clip, max-sim": np.array([(r @ embed).max() for r in rows]),
                }
                for how, score in scores.items():
                    top = {ids[i] for i in np.argsort(-score)[: args.candidates]}
                    vs_topic[how].append(len(top & relevant) / min(len(relevant), args.candidates))
                service = {ids[i] for i in np.argsort(-scores["mean"])[: args.candidates]}
                print(
                    f"query {q}: service candidates = exact top by the mean summary in "
                    f"{len(set(candidates) & service)} of {len(candidates)}",
                    file=sys.stderr,
                )
                if args.exhaustive:
                    body = CollectionSearchRequest(
                        query={"text": f"query {q}"}, video_ids=ids[:1], per_video_k=1
                    )
                    tokens = (await runtime.text.encode_texts([f"query {q}"]))[0].tokens
                    started = time.perf_counter()
                    hits, _ = await run_stage2(runtime, body, store, tokens, ids)
                    top = list(dict.fromkeys(h[0] for h in hits))[: args.top_videos]
                    vs_trdetr.append(len(set(top) & set(candidates)) / len(top))
                    print(
                        f"query {q}: exhaustive stage 2 over {len(ids)} videos took "
                        f"{time.perf_counter() - started:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        drop(settings)
    print(
        f"videos {len(ids)}, clips {args.clips}, topics {args.clusters}, matching clips {args.match_clips}, "
        f"noise {args.noise}, candidates {args.candidates}, queries {args.recall_queries}"
    )
    for how, values in vs_topic.items():
        print(
            f"recall@candidates of the query topic's videos, summary {how}: {np.mean(values):.3f} "
            f"(min {np.min(values):.3f})"
        )
    if vs_trdetr:
        print(
            f"recall@candidates of exhaustive TR-DETR's top {args.top_videos} videos (random-weight model): "
            f"{np.mean(vs_trdetr):.3f}; chance level {args.candidates / len(ids):.3f}"
        )


async def latency_size(args: argparse.Namespace, bundle: Path, videos: int) -> str:
    data = Collection(videos, args.clips, args.clusters, args.match_clips, args.noise)
    settings = settings_for(args, bundle, f"trdetr-bench-search-{uuid.uuid4().hex[:8]}")
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            runtime = app.state.runtime
            started = time.perf_counter()
            await fill(app, data, "bench")
            fill_s = time.perf_counter() - started
            store = runtime.store.tenant(SHARED_TENANT_ID)
            started = time.perf_counter()
            await runtime.stage1.synced(store)
            build_s = time.perf_counter() - started
            ids = [f"v{i:06d}" for i in range(videos)]
            transport = httpx.ASGITransport(app=app)
            latencies, stage1_s, load_s, stage2_s, answer = [], [], [], [], {}
            async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as client:
                for i in range(args.requests):
                    body = {
                        "query": f"query number {i}",
                        "collection": "bench",
                        "top_k": 10,
                        "per_video_k": 3,
                    }
                    started = time.perf_counter()
                    response = await client.post("/v1/search", json=body)
                    latencies.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text[:500]
                    answer = response.json()
                    # where the time goes, measured apart from the request
                    embed = (await runtime.text.encode_texts([body["query"]]))[0]
                    started = time.perf_counter()
                    candidates, _, _ = await pick_candidates(runtime, store, ids, embed.embed)
                    stage1_s.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    await asyncio.gather(*(store.video_input(v) for v in candidates))
                    load_s.append(time.perf_counter() - started)
                    request = CollectionSearchRequest(
                        query={"text": body["query"]}, video_ids=ids[:1], per_video_k=3
                    )
                    started = time.perf_counter()
                    await run_stage2(runtime, request, store, embed.tokens, candidates)
                    stage2_s.append(time.perf_counter() - started)
    finally:
        drop(settings)
    ms = lambda values, q: float(np.percentile(np.asarray(values) * 1000, q))  # noqa: E731
    return (
        f"| {videos} | {args.clips} | {answer['candidate_videos']} | {answer['stage1']} | {ms(latencies, 50):.0f} | "
        f"{ms(latencies, 99):.0f} | {ms(stage1_s, 50):.1f} | {ms(load_s, 50):.0f} | {ms(stage2_s, 50):.0f} | "
        f"{build_s:.2f} | {fill_s:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["recall", "latency"])
    parser.add_argument(
        "--bundle", type=Path, help="use this bundle (it needs text_embeds) instead of the built one"
    )
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "trdetr-bench")
    parser.add_argument("--videos", type=int, nargs="+", default=[1000])
    parser.add_argument("--clips", type=int, default=16, help="clips per stored video")
    parser.add_argument("--clusters", type=int, default=100, help="synthetic topics")
    parser.add_argument("--match-clips", type=int, default=2, help="clips of a video near its topic")
    parser.add_argument("--noise", type=float, default=1.0, help="norm of the noise added to a topic vector")
    parser.add_argument("--candidates", type=int, default=200, help="TRDETR_SEARCH_CANDIDATES")
    parser.add_argument("--requests", type=int, default=5, help="latency: searches per collection size")
    parser.add_argument("--recall-queries", type=int, default=20)
    parser.add_argument(
        "--exhaustive", action="store_true", help="recall: also run exhaustive TR-DETR (slow)"
    )
    parser.add_argument("--top-videos", type=int, default=10, help="recall: exhaustive top videos compared")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ORT intra-op threads")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="TRDETR_REQUEST_TIMEOUT_S for the run")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or build_bundle(args.work_dir)
    if args.mode == "recall":
        asyncio.run(recall(args, bundle))
        return
    print(
        "| videos | clips each | TR-DETR ran on | stage1 | p50 ms | p99 ms | stage 1 p50 ms | candidates' load "
        "p50 ms | stage 2 p50 ms | index build s | fill s |"
    )
    print("| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for videos in args.videos:
        print(asyncio.run(latency_size(args, bundle, videos)), flush=True)


if __name__ == "__main__":
    main()
