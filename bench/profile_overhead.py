"""Where a request's non-model time goes: section medians (µs) of ``POST /v1/moments`` at concurrency 1.

Starts ``trdetr-serve`` as a live uvicorn process (same protocol, loop and settings as ``bench_service.py``)
with ``perf_counter_ns`` probes wrapped around the service's own functions (the service code is not changed;
the probes are installed by this script in the server process only), stores one 75-clip video and sends
``--requests`` sequential requests (stored video, one feature query) from an httpx client in this process.
The server writes every request's marks to a JSON file at shutdown; this script prints the median of each
section, in the order a request passes them:

    .venv/bin/python bench/profile_overhead.py --requests 300

Sections (each is the time from the previous mark):
  asgi_to_app       uvicorn hands the request to the ASGI app -> the metrics middleware opens its timing
  to_route          middlewares (deadline, body limit), Starlette's exception layers, routing, reading the body
  body_parse        orjson-parsing the body
  deps_validate     query-count precheck, FastAPI dependencies (API key, runtime, tenant store), pydantic
  inputs            resolve_inputs: the video's Redis version check overlapped with decoding the query
  handoff_in        queueing the job -> the batcher thread starts the run
  build_batch       padding the run's inputs (a view for one row)
  model             the ONNX Runtime run (the only part that is not overhead)
  split_handoff     cutting the outputs per request, metrics, the thread hands the rows to the event loop
  resume            the loop sets the request's future -> the request's coroutine resumes
  respond           post-processing and JSON
  to_send           response object -> ``http.response.start`` reaches the metrics middleware
  Server-Timing overhead  ``app`` - ``model`` - ``body`` (what trdetr_http_overhead_seconds observes; ``body``:
                    the wait for the request body, inside to_route)

Not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

SECTIONS = (
    "asgi_to_app",
    "to_route",
    "body_parse",
    "deps_validate",
    "inputs",
    "handoff_in",
    "build_batch",
    "model",
    "split_handoff",
    "resume",
    "respond",
    "to_send",
)
MARKS = (
    "asgi",
    "timing",
    "parse_start",
    "parsed",
    "handler",
    "inputs",
    "run_start",
    "batch_built",
    "model_done",
    "run_end",
    "resumed",
    "json_done",
    "response_start",
)
MARKS_PATH = "/__profile_marks"
PROFILE_PATH = "/__profile_start"


def install_probes(sort: str, top: int) -> None:
    """Server process: wrap the service's functions so each request records :data:`MARKS` (ns); ``GET
    PROFILE_PATH`` starts cProfile on the event loop's thread (CPU time of that thread only, so the ORT run
    in its own thread is not in it), ``GET MARKS_PATH`` returns the marks and the profile."""
    profiler = cProfile.Profile(time.thread_time_ns, 1e-9)
    cpu_start: list[int] = []
    import service.app as app_module
    import service.inference.batcher as batcher
    import service.json_body as json_body
    import service.middleware as middleware
    import service.routers.search as search

    marks: dict[str, int] = {}
    requests: list[dict[str, int]] = []
    now = time.perf_counter_ns

    def mark(name: str) -> None:
        marks[name] = now()

    original_start = middleware.start_request

    def start_request():
        mark("timing")
        return original_start()

    middleware.start_request = start_request

    original_parse = json_body.parse_json

    async def parse_json(body: bytes):
        mark("parse_start")
        try:
            return await original_parse(body)
        finally:
            mark("parsed")

    json_body.parse_json = parse_json

    original_infer, original_resolve, original_json = search._infer, search.resolve_inputs, search._json

    async def infer(*args, **kwargs):
        mark("handler")
        try:
            return await original_infer(*args, **kwargs)
        finally:
            mark("resumed")

    async def resolve_inputs(*args, **kwargs):
        try:
            return await original_resolve(*args, **kwargs)
        finally:
            mark("inputs")

    def to_json(model):
        response = original_json(model)
        mark("json_done")
        return response

    search._infer, search.resolve_inputs, search._json = infer, resolve_inputs, to_json

    original_build, original_split = batcher.build_batch, batcher.split_outputs

    def build_batch(slices):
        mark("run_start")
        feeds = original_build(slices)
        mark("batch_built")
        return feeds

    def split_outputs(slices, outputs):
        mark("model_done")
        return original_split(slices, outputs)

    original_deliver = batcher._deliver

    def deliver(slices, results):
        mark("run_end")
        original_deliver(slices, results)

    batcher.build_batch, batcher.split_outputs, batcher._deliver = build_batch, split_outputs, deliver

    original_create = app_module.create_app

    def create_app(*args, **kwargs):
        inner = original_create(*args, **kwargs)

        async def probed(scope, receive, send):
            if scope["type"] == "http" and scope["path"] == PROFILE_PATH:  # start the loop thread's profile
                if top:
                    profiler.enable()
                cpu_start.append(time.thread_time_ns())
                requests.clear()
                await send({"type": "http.response.start", "status": 204, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            if scope["type"] == "http" and scope["path"] == MARKS_PATH:  # the marks and the profile, as JSON
                profiler.disable()
                cpu_ns = time.thread_time_ns() - cpu_start[-1]
                stream = io.StringIO()
                if top:
                    pstats.Stats(profiler, stream=stream).sort_stats(sort).print_stats(top)
                body = json.dumps(
                    {"requests": requests, "loop_cpu_ns": cpu_ns, "profile": stream.getvalue()}
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
            if scope["type"] != "http" or scope["path"] != "/v1/moments":
                await inner(scope, receive, send)
                return
            marks.clear()
            mark("asgi")

            async def probed_send(message):
                if message["type"] == "http.response.start":
                    mark("response_start")
                    timing = dict(message.get("headers", [])).get(b"server-timing", b"").decode()
                    parts = dict(p.strip().split(";dur=") for p in timing.split(",") if ";dur=" in p)
                    if parts:
                        marks["server_timing_app_ns"] = int(float(parts["app"]) * 1e6)
                        marks["server_timing_model_ns"] = int(float(parts["model"]) * 1e6)
                        marks["server_timing_body_ns"] = int(float(parts.get("body", 0.0)) * 1e6)
                await send(message)

            await inner(scope, receive, probed_send)
            requests.append(dict(marks))

        probed.state = inner.state  # type: ignore[attr-defined]
        return probed

    import service.cli as cli

    cli.create_app = create_app


def serve(port: int, sort: str, top: int) -> None:
    install_probes(sort, top)
    from service.cli import main as cli_main

    cli_main(["--port", str(port)])


def summarise(requests: list[dict[str, int]]) -> None:
    """Print each section's median and p90 in µs over the measured requests."""
    rows = [r for r in requests if all(m in r for m in MARKS)]
    print(f"{len(rows)} requests with every mark (of {len(requests)} measured)")
    print(f"{'section':>24} {'p50 µs':>8} {'p90 µs':>8}")
    totals = []
    for section, (first, second) in zip(SECTIONS, zip(MARKS, MARKS[1:], strict=False), strict=True):
        values = np.array([r[second] - r[first] for r in rows]) / 1000.0
        totals.append(values)
        print(f"{section:>24} {np.median(values):8.0f} {np.percentile(values, 90):8.0f}")
    overhead = (
        np.array(
            [
                r["server_timing_app_ns"] - r["server_timing_model_ns"] - r.get("server_timing_body_ns", 0)
                for r in rows
            ]
        )
        / 1000.0
    )
    non_model = sum(t for s, t in zip(SECTIONS, totals, strict=True) if s not in ("asgi_to_app", "model"))
    print(
        f"{'sum, model excluded':>24} {np.median(non_model):8.0f} {np.percentile(non_model, 90):8.0f}"
        "   (timing opened -> response start, as Server-Timing app, minus the ORT run)"
    )
    print(
        f"{'Server-Timing overhead':>24} {np.median(overhead):8.0f} {np.percentile(overhead, 90):8.0f}"
        "   (app - model - body: what trdetr_http_overhead_seconds observes)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "trdetr-bench")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument(
        "--env", nargs="*", default=[], metavar="TRDETR_X=VALUE", help="more settings for the server"
    )
    parser.add_argument("--sort", default="tottime", help="cProfile sort key of the printed profile")
    parser.add_argument("--top", type=int, default=0, help="print the event loop's cProfile, this many rows")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ORT intra-op threads")
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.sort, args.top)
        return

    from bench_service import build_bundle, free_port, npy_b64, npz_bytes

    from trdetr_common.manifest import Manifest

    args.work_dir.mkdir(parents=True, exist_ok=True)
    bundle = build_bundle(args.work_dir)
    pre = Manifest.load(bundle).preprocessing
    rng = np.random.default_rng(0)
    groups = {g.name: rng.standard_normal((75, g.dim)).astype(np.float32) for g in pre.video_groups}
    tokens = rng.standard_normal((20, pre.text_dim)).astype(np.float32)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRDETR_")}
    env.update(
        TRDETR_BUNDLE_DIR=str(bundle),
        TRDETR_INTRA_OP_THREADS=str(args.threads),
        TRDETR_DEVICE="cpu",
        TRDETR_REDIS_KEY_PREFIX=f"trdetr-profile-{uuid.uuid4().hex[:8]}",
        TRDETR_LOG_LEVEL="warning",
    )
    env.update(item.split("=", 1) for item in args.env)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--sort", args.sort, "--top", str(args.top)],
        cwd=REPO,
        env=env,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start")
                time.sleep(0.3)
            client.put(
                "/v1/videos/bench/features",
                content=npz_bytes(groups),
                headers={"content-type": "application/x-npz"},
            ).raise_for_status()
            body = {"video_id": "bench", "queries": [{"features_b64": npy_b64(tokens)}], "top_k": 5}
            for _ in range(args.warmup):
                client.post("/v1/moments", json=body).raise_for_status()
            client.get(PROFILE_PATH)
            for _ in range(args.requests):
                client.post("/v1/moments", json=body).raise_for_status()
            result = client.get(MARKS_PATH).json()
            client.delete("/v1/videos/bench")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    summarise(result["requests"])
    print(
        f"event loop thread CPU per request: {result['loop_cpu_ns'] / args.requests / 1000:.0f} µs "
        "(cProfile on, with --top: slower than without)"
    )
    if args.top:
        print(result["profile"])


if __name__ == "__main__":
    main()
