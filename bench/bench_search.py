"""Benchmark: ``POST /v1/search`` latency over collections of 100 / 1 000 / 10 000 stored videos, on CPU.

Stores ``N`` random videos of ``--clips`` clips (fp16 in Redis, as uploads are) into one collection of a fresh
key namespace, then times ``--requests`` searches of one query over the collection through the app (ASGI
transport, lifespan running: Redis, batcher and ONNX Runtime as in production) and reports p50 / p99 with
how many videos TR-DETR ran on. There is no stage-1 candidate index yet, so every search is exhaustive up to
``TRDETR_SEARCH_EXHAUSTIVE_LIMIT`` (``--exhaustive-limit``). The namespace is deleted afterwards.

    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/bench_search.py --videos 100 1000 --requests 5

The bundle is the released model's size with random weights (``bench_service.build_bundle``, cached in
``--work-dir``). Not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
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

from bench_service import build_bundle  # noqa: E402

from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.tenancy import SHARED_TENANT_ID  # noqa: E402


def query_b64(text_dim: int, tokens: int, seed: int) -> str:
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(seed).standard_normal((tokens, text_dim)).astype(np.float32))
    return base64.b64encode(buffer.getvalue()).decode()


async def fill(app, videos: int, clips: int, collection: str) -> None:
    """``videos`` random videos (T=clips, the bundle's stored width) into ``collection``, 32 puts at a time."""
    runtime = app.state.runtime
    store = runtime.store.tenant(SHARED_TENANT_ID)
    dim = sum(g.dim for g in runtime.bundle.pre.video_groups)
    rng = np.random.default_rng(0)
    limit = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        features = rng.standard_normal((clips, dim)).astype(np.float32)
        features /= np.linalg.norm(features, axis=1, keepdims=True)
        async with limit:
            await store.put(f"v{i:06d}", features, {"num_clips": clips, "dim": dim}, [collection])

    await asyncio.gather(*(one(i) for i in range(videos)))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


async def run_size(args: argparse.Namespace, bundle: Path, videos: int) -> str:
    prefix = f"trdetr-bench-search-{uuid.uuid4().hex[:8]}"
    settings = Settings(bundle_dir=bundle, redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                        redis_key_prefix=prefix, device="cpu", intra_op_threads=args.threads, warmup_runs=2,
                        request_timeout_s=args.timeout_s, search_exhaustive_limit=args.exhaustive_limit,
                        local_cache_videos=0)
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            started = time.perf_counter()
            await fill(app, videos, args.clips, "bench")
            fill_s = time.perf_counter() - started
            text_dim = app.state.runtime.bundle.pre.text_dim
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as client:
                latencies, answer = [], {}
                for i in range(args.requests):
                    body = {"query": {"features_b64": query_b64(text_dim, args.tokens, seed=i)},
                            "collection": "bench", "top_k": 10, "per_video_k": 3}
                    started = time.perf_counter()
                    response = await client.post("/v1/search", json=body)
                    latencies.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text[:500]
                    answer = response.json()
    finally:
        client_ = redis.Redis.from_url(settings.redis_url)
        for key in client_.scan_iter(match=f"{prefix}:*", count=1000):
            client_.delete(key)
    return (f"| {videos} | {args.clips} | {answer['candidate_videos']} | {answer['stage1']} | "
            f"{percentile(latencies, 50):.0f} | {percentile(latencies, 99):.0f} | {fill_s:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="use this bundle instead of the released-size one")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "trdetr-bench")
    parser.add_argument("--videos", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--clips", type=int, default=75, help="clips per stored video")
    parser.add_argument("--requests", type=int, default=5, help="searches per collection size")
    parser.add_argument("--tokens", type=int, default=20, help="query length in tokens")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ORT intra-op threads")
    parser.add_argument("--exhaustive-limit", type=int, default=1000, help="TRDETR_SEARCH_EXHAUSTIVE_LIMIT")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="TRDETR_REQUEST_TIMEOUT_S for the run")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or build_bundle(args.work_dir)
    print("| videos in the collection | clips each | videos TR-DETR ran on | stage1 | p50 ms | p99 ms | fill s |")
    print("| ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for videos in args.videos:
        print(asyncio.run(run_size(args, bundle, videos)), flush=True)


if __name__ == "__main__":
    main()
