"""Ingestion throughput: jobs per minute and queue latency with 1 and 2 ``trdetr-worker`` processes.

Starts ``trdetr-serve`` (no in-process worker) on a free port against the Redis at ``REDIS_URL`` (a fresh
key prefix, deleted afterwards), writes ``--videos`` short synthetic videos with PyAV, and for each
worker count starts that many ``trdetr-worker`` processes, waits until they have loaded their encoders,
uploads every video at once over HTTP and waits for every job to end. It reports, side by side in one
run (the machine is shared and noisy: compare the rows, not runs on different days):

- jobs/min: videos / (last job finished - first upload) x 60;
- queue latency: a job's ``started_at - created_at`` (upload accepted -> a worker starts it), p50 and max;
- try time: ``finished_at - started_at``, p50;
- real-time factor: seconds of video ingested per second of wall time.

The bundle is ``TRDETR_BUNDLE_DIR`` or the default bundle, whose encoders are tiny and untrained: the
numbers measure the queue, decoding and the pipeline around the encoders, not real CLIP/SlowFast cost.

    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/bench_ingest.py --videos 8 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np
import redis

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def write_video(path: Path, seconds: float, fps: int, size: tuple[int, int], seed: int) -> Path:
    """Moving colour blocks, MPEG-4 in MP4."""
    width, height = size
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(int(seconds * fps)):
            image = np.full((height, width, 3), 30, np.uint8)
            x = int(index / (seconds * fps) * (width - 24))
            image[10:34, x:x + 24] = rng.integers(0, 255, 3, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def metrics_up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def run_round(api: httpx.Client, env: dict[str, str], workers: int, videos: list[Path], seconds: float) -> dict:
    ports = [free_port() for _ in range(workers)]
    procs = [subprocess.Popen([str(BIN / "trdetr-worker")], env={**env, "TRDETR_WORKER_METRICS_PORT": str(port)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT) for port in ports]
    try:
        for port in ports:
            wait_until(lambda p=port: metrics_up(p), 180, "the workers to load their encoders")
        started = time.time()
        job_ids = []
        for index, path in enumerate(videos):
            answer = api.put(f"/v1/videos/bench-{workers}-{index}/video", content=path.read_bytes(),
                             headers={"content-type": "video/mp4"})
            answer.raise_for_status()
            job_ids.append(answer.json()["job_id"])
        jobs: dict[str, dict] = {}

        def all_done() -> bool:
            for job_id in job_ids:
                if job_id not in jobs:
                    job = api.get(f"/v1/jobs/{job_id}").json()
                    if job["status"] in ("succeeded", "failed"):
                        jobs[job_id] = job
            return len(jobs) == len(job_ids)

        wait_until(all_done, 3600, "every job to end")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
    failed = [j for j in jobs.values() if j["status"] != "succeeded"]
    if failed:
        raise SystemExit(f"{len(failed)} jobs failed: {failed[0]['error']}")
    wall = max(j["finished_at"] for j in jobs.values()) - started
    latency = [j["started_at"] - j["created_at"] for j in jobs.values()]
    tries = [j["finished_at"] - j["started_at"] for j in jobs.values()]
    return {"workers": workers, "jobs": len(jobs), "wall_s": wall, "jobs_per_min": len(jobs) / wall * 60,
            "latency_p50": statistics.median(latency), "latency_max": max(latency),
            "try_p50": statistics.median(tries), "realtime": len(jobs) * seconds / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8, help="videos per round (default 8)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each video (default 10)")
    parser.add_argument("--size", default="160x120", help="frame size WxH (default 160x120)")
    parser.add_argument("--fps", type=int, default=25, help="frame rate of the videos (default 25)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per worker (default 1)")
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        raise SystemExit("set REDIS_URL: workers and the API must share a Redis server")
    width, height = (int(v) for v in args.size.split("x"))
    prefix = f"trdetr-bench-ingest-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="trdetr-bench-ingest-") as tmp:
        tmp_dir = Path(tmp)
        videos = [write_video(tmp_dir / f"v{i}.mp4", args.seconds, args.fps, (width, height), seed=i)
                  for i in range(args.videos)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRDETR_")}
        env.update(REDIS_URL=redis_url, TRDETR_REDIS_KEY_PREFIX=prefix, TRDETR_INPROCESS_WORKER="false",
                   TRDETR_INGEST_DIR=str(tmp_dir / "ingest"), TRDETR_DEVICE="cpu", TRDETR_WARMUP_RUNS="0",
                   TRDETR_INTRA_OP_THREADS=str(args.threads), TRDETR_MAX_QUEUED_JOBS=str(args.videos + 1),
                   TRDETR_BUNDLE_DIR=os.environ.get("TRDETR_BUNDLE_DIR", str(REPO / "service" / "default_bundle")))
        port = free_port()
        server = subprocess.Popen([str(BIN / "trdetr-serve"), "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        try:
            def ready() -> bool:
                try:
                    return api.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready, 180, "trdetr-serve")
            rows = [run_round(api, env, workers, videos, args.seconds) for workers in args.workers]
        finally:
            api.close()
            server.terminate()
            server.wait(timeout=60)
            client = redis.Redis.from_url(redis_url)
            keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
            if keys:
                client.delete(*keys)
    print(f"{args.videos} videos of {args.seconds:g} s, {width}x{height} at {args.fps} fps; "
          f"{args.threads} ORT thread(s) per worker; bundle {env['TRDETR_BUNDLE_DIR']}")
    print("| workers | jobs/min | queue latency p50 s | queue latency max s | try p50 s | video s per wall s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['workers']} | {row['jobs_per_min']:.1f} | {row['latency_p50']:.2f} | {row['latency_max']:.2f} "
              f"| {row['try_p50']:.2f} | {row['realtime']:.2f} |")


if __name__ == "__main__":
    main()
