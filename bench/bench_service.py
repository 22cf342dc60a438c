"""Benchmark: moment search over HTTP vs the bare ONNX Runtime session, at several concurrencies.

Builds (once, cached in ``--work-dir``) a bundle of the released TR-DETR's size with random weights
(hidden 256, 8 heads, FFN 1024, 2+2 layers, 2 input projections, 10 moment queries; video
2304 + 512 + 2 TEF = 2818, text 512), starts ``trdetr-serve`` as a live uvicorn process, stores
one 75-clip video and fires ``POST /v1/moments`` (``--queries`` queries of ``--tokens`` token features each,
default 1; the released model's "10 queries" are its 10 moment slots, a model property) from an
httpx client at each concurrency. The bare session is the service's own ``OnnxModel`` with the
same thread settings, run on the same inputs in the same process run, so the ratio
``service p50 at concurrency 1 / bare ORT p50`` is the service's overhead (goal <= 1.15).

    .venv/bin/python bench/bench_service.py --requests 200 --concurrency 1 8 32

Not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.inference.session import OnnxModel  # noqa: E402
from trdetr_common.features import build_text_features, build_video_features, tef_columns  # noqa: E402
from trdetr_common.manifest import Manifest  # noqa: E402

RELEASED = {"v_feat_dim": 2818, "t_feat_dim": 512, "hidden_dim": 256, "nheads": 8, "dim_feedforward": 1024,
            "enc_layers": 2, "dec_layers": 2, "n_input_proj": 2, "num_queries": 10}


def build_bundle(work_dir: Path, name: str = "bundle", **export_options) -> Path:
    """Random released-size checkpoint -> ``export_bundle`` (torch is imported here only).

    ``export_options`` go to ``export_bundle`` (e.g. a text encoder); ``name`` keeps such bundles apart in
    ``work_dir``, where a bundle once written is reused.
    """
    bundle = work_dir / name
    if (bundle / "manifest.json").exists():
        return bundle
    import torch

    from model_export.checkpoint import save_checkpoint
    from model_export.config import TRDETRConfig
    from model_export.export import export_bundle
    from model_export.model import build_model

    torch.manual_seed(0)
    config = TRDETRConfig(**RELEASED)
    checkpoint = save_checkpoint(work_dir / "released_size_random.ckpt", build_model(config).eval(), config)
    export_bundle(checkpoint, bundle, run_parity=False, **export_options)
    return bundle


def npy_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode()


def npz_bytes(groups: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **groups)
    return buffer.getvalue()


def percentiles(latencies_s: list[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.array(latencies_s) * 1000.0, [50, 95, 99])
    return float(p50), float(p95), float(p99)


class BareOrt:
    """The service's own ``OnnxModel`` (same options) on the request's exact model inputs.

    ``text`` (L_t, D_t) and ``video`` (T, D_v) are repeated into a batch of ``rows`` (one per query).
    """

    def __init__(self, bundle: Path, text: np.ndarray, video: np.ndarray, threads: int, rows: int) -> None:
        self.model = OnnxModel(bundle / Manifest.load(bundle).onnx.fp32_file, device="cpu", intra_op_threads=threads)
        self.feeds = {"src_txt": np.repeat(text[None], rows, 0), "src_txt_mask": np.ones((rows, len(text)), np.float32),
                      "src_vid": np.repeat(video[None], rows, 0), "src_vid_mask": np.ones((rows, len(video)), np.float32)}
        for _ in range(5):
            self.model.run(self.feeds)

    def timed_run(self) -> float:
        start = time.perf_counter()
        self.model.run(self.feeds)
        return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(bundle: Path, port: int, threads: int, prefix: str, batch_wait_ms: float,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRDETR_")}
    env.update(TRDETR_BUNDLE_DIR=str(bundle), TRDETR_INTRA_OP_THREADS=str(threads), TRDETR_DEVICE="cpu",
               TRDETR_REDIS_KEY_PREFIX=prefix, TRDETR_LOG_LEVEL="warning", TRDETR_MAX_QUEUE_SIZE="1024",
               TRDETR_MAX_BATCH_WAIT_MS=str(batch_wait_ms), **(extra_env or {}))
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "--port", str(port)], cwd=REPO, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError("trdetr-serve exited during start-up")
        time.sleep(0.3)
    process.terminate()
    raise RuntimeError("trdetr-serve did not become ready")


overheads: list[float] = []
"""In-app overhead of each request of the last :func:`timed_requests` call, from its Server-Timing header."""


def app_overhead_s(server_timing: str) -> float:
    """``app - model - body`` of a ``Server-Timing: app;dur=X, model;dur=Y, body;dur=Z`` header, in seconds
    (NaN without one; ``body``, the wait for the request body, is 0 when absent)."""
    parts = dict(part.strip().split(";dur=") for part in server_timing.split(",") if ";dur=" in part)
    if "app" not in parts or "model" not in parts:
        return float("nan")
    return (float(parts["app"]) - float(parts["model"]) - float(parts.get("body", 0.0))) / 1000.0


async def timed_requests(base_url: str, body: dict, concurrency: int, requests: int, start_at: float = 0.0,
                         bare: BareOrt | None = None) -> tuple[list[float], list[float], float, float]:
    """``requests`` POSTs from ``concurrency`` workers of one httpx client, starting at wall time ``start_at``.

    Returns (latencies, bare ORT latencies, first start, last end) with wall-clock times. With
    ``bare`` (concurrency 1 only) every request is preceded by one bare ORT run, so both are measured
    under the same machine load (the build machines are shared).
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120) as client:
        for _ in range(min(requests, 2 * concurrency)):  # warm connections and caches
            assert (await client.post("/v1/moments", json=body)).status_code == 200
        await asyncio.sleep(max(0.0, start_at - time.time()))
        latencies: list[float] = []
        bare_latencies: list[float] = []
        overheads.clear()
        left = requests

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                if bare is not None:
                    bare_latencies.append(bare.timed_run())
                start = time.perf_counter()
                response = await client.post("/v1/moments", json=body)
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text}")
                overheads.append(app_overhead_s(response.headers.get("server-timing", "")))

        first = time.time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, bare_latencies, first, time.time() - sum(bare_latencies)


def _client_process(base_url: str, body: dict, concurrency: int, requests: int, start_at: float):
    return asyncio.run(timed_requests(base_url, body, concurrency, requests, start_at))


def load(base_url: str, body: dict, concurrency: int, requests: int, per_client: int) -> tuple[float, list[float]]:
    """Spread ``concurrency`` over client processes of at most ``per_client`` connections each.

    One httpx client slows down sharply past ~10 connections (on this machine /healthz falls from
    ~500 to ~190 requests/s at 32), which would measure the client, not the service.
    Returns (requests/s over the common window, latencies).
    """
    clients = -(-concurrency // per_client)
    shares = [concurrency // clients + (i < concurrency % clients) for i in range(clients)]
    start_at = time.time() + 2.0 + 0.05 * requests * concurrency / 32
    with ProcessPoolExecutor(clients) as pool:
        futures = [pool.submit(_client_process, base_url, body, share, requests * share // concurrency, start_at)
                   for share in shares]
        results = [future.result() for future in futures]
    latencies = [latency for result in results for latency in result[0]]
    window = max(r[3] for r in results) - min(r[2] for r in results)
    return len(latencies) / window, latencies


def _metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def server_side_summary(metrics: str) -> str:
    """Means over all levels from the service's own Prometheus histograms."""
    route = 'route="/v1/moments"'
    requests = _metric(metrics, f'trdetr_http_request_duration_seconds_count{{method="POST",{route}}}')
    latency = _metric(metrics, f'trdetr_http_request_duration_seconds_sum{{method="POST",{route}}}')
    runs = _metric(metrics, "trdetr_inference_compute_seconds_count")
    compute = _metric(metrics, "trdetr_inference_compute_seconds_sum")
    rows = _metric(metrics, "trdetr_inference_batch_size_sum")
    wait = _metric(metrics, "trdetr_inference_queue_wait_seconds_sum")
    overhead = _metric(metrics, "trdetr_http_overhead_seconds_sum") / max(
        _metric(metrics, "trdetr_http_overhead_seconds_count"), 1)
    return (f"server side, all levels: {requests:.0f} requests, mean in-app latency {1000 * latency / requests:.2f} ms, "
            f"{runs:.0f} ORT runs of mean {rows / runs:.2f} rows and {1000 * compute / runs:.2f} ms, "
            f"mean queue wait {1000 * wait / requests:.2f} ms, mean in-app overhead {1000 * overhead:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="use this bundle instead of building the released-size one")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "trdetr-bench")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--clips", type=int, default=75)
    parser.add_argument("--tokens", type=int, default=20, help="query length in tokens")
    parser.add_argument("--queries", type=int, default=1, help="queries per request (run as one batch)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ORT intra-op threads")
    parser.add_argument("--per-client", type=int, default=8, help="connections per client process")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="TRDETR_MAX_BATCH_WAIT_MS of the server")
    parser.add_argument("--env", nargs="*", default=[], metavar="TRDETR_X=VALUE",
                        help="more settings for the server, e.g. TRDETR_LOCAL_CACHE_TRUST_MS=1000")
    args = parser.parse_args()

    args.work_dir.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or build_bundle(args.work_dir)
    pre = Manifest.load(bundle).preprocessing
    rng = np.random.default_rng(0)
    groups = {g.name: rng.standard_normal((args.clips, g.dim)).astype(np.float32) for g in pre.video_groups}
    tokens = rng.standard_normal((args.tokens, pre.text_dim)).astype(np.float32)
    stored = build_video_features(list(groups.values()), normalize=pre.l2_normalize_video, tef=False)
    video = np.concatenate([stored.astype(np.float16).astype(np.float32), tef_columns(args.clips)], axis=1)
    text = build_text_features(tokens, normalize=pre.l2_normalize_text, max_tokens=pre.max_text_tokens)

    bare = BareOrt(bundle, text, video, args.threads, args.queries)
    port, prefix = free_port(), f"trdetr-bench-{uuid.uuid4().hex[:8]}"
    server = start_server(bundle, port, args.threads, prefix, args.batch_wait_ms,
                          dict(item.split("=", 1) for item in args.env))
    base_url = f"http://127.0.0.1:{port}"
    try:
        put = httpx.put(f"{base_url}/v1/videos/bench/features", content=npz_bytes(groups),
                        headers={"content-type": "application/x-npz"}, timeout=60)
        put.raise_for_status()
        body = {"video_id": "bench", "queries": [{"features_b64": npy_b64(tokens)}] * args.queries, "top_k": 5}
        rows, ort_latencies, c1_overheads = [], [], []
        for concurrency in args.concurrency:
            if concurrency == 1:  # paired with bare ORT runs
                latencies, ort_latencies, first, last = asyncio.run(
                    timed_requests(base_url, body, 1, args.requests, bare=bare))
                rows.append((1, len(latencies) / (last - first), latencies))
                c1_overheads = list(overheads)
            else:
                rows.append((concurrency, *load(base_url, body, concurrency, args.requests, args.per_client)))
        if not ort_latencies:
            ort_latencies = [bare.timed_run() for _ in range(args.requests)]
        metrics = httpx.get(f"{base_url}/metrics").text
        httpx.delete(f"{base_url}/v1/videos/bench")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    ort_p50, ort_p95, ort_p99 = percentiles(ort_latencies)
    print(f"\nbundle {bundle} | {args.clips} clips, {args.queries} x {args.tokens}-token queries, {args.threads} ORT threads, "
          f"{args.requests} requests per level, batch wait {args.batch_wait_ms:g} ms, CPU count {os.cpu_count()}")
    print(f"{'':>16} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'p50/ORT':>8} {'in-app ms':>10}")
    print(f"{'bare ORT':>16} {1000 / ort_p50:8.1f} {ort_p50:8.2f} {ort_p95:8.2f} {ort_p99:8.2f} {1.0:8.2f}")
    for concurrency, rps, latencies in rows:
        p50, p95, p99 = percentiles(latencies)
        in_app = f"{1000 * float(np.nanmedian(c1_overheads)):10.2f}" if concurrency == 1 and c1_overheads else ""
        print(f"{f'service c={concurrency}':>16} {rps:8.1f} {p50:8.2f} {p95:8.2f} {p99:8.2f} {p50 / ort_p50:8.2f}{in_app}")
    print(server_side_summary(metrics))
    if c1_overheads:
        p50, p95, p99 = percentiles([o for o in c1_overheads if o == o])
        print(f"in-app overhead at c=1 (server side, Server-Timing app - model - body): p50 {p50:.2f} ms, p95 {p95:.2f} ms, "
              f"p99 {p99:.2f} ms (goal: <= 1 ms)")


if __name__ == "__main__":
    main()
