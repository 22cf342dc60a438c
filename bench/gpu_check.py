"""GPU check: CUDA parity, engine latency and throughput, torch eager reference, and the live service, in one table.

Run through ``bench/gpu_check.sh`` (it installs onnxruntime-gpu and the service's wheels staged by
``bench/gpu_prepare.sh`` on a GPU machine without package access). Stages, each reported even when another fails:

1. parity, per bundle (the released-size random bundle, and the official fixture checkpoint's bundle when it was
   prepared): the device's fp32 graph vs the CPU EP's (max abs difference <= 1e-4 over random padded batches built
   through the preprocessing contract: plain session runs, then the service's IOBinding buckets, with CUDA graphs
   when they capture), and the fp16 graph's task gates (``model_export.export.parity.fp16_gate``);
2. engine (released-size bundle, 75 clips x 20 tokens per row): batch-1 latency and large-batch queries/s, fp32 and
   fp16, plain ``session.run`` vs IOBinding buckets (``service.inference.bound``) vs IOBinding + CUDA graphs, the
   bound runs with the host->device copy of the batch and "device-resident" (inputs already on the device);
3. torch eager reference: the released-size ``model_export`` model, fp32 (TF32 off) and autocast fp16;
4. service: a live ``trdetr-serve`` (IOBinding, precision auto, CUDA graphs when stage 2 captured them) with one
   75-clip stored video: p50 at concurrency 1 end to end, the maximum throughput (closed loop), then p99 with
   open-loop arrivals at 80 % of it.

``--cpu-smoke`` runs the same code on the CPU EP with small counts (the test suite runs it so the script cannot rot).
Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RELEASED = {
    "v_feat_dim": 2818,
    "t_feat_dim": 512,
    "hidden_dim": 256,
    "nheads": 8,
    "dim_feedforward": 1024,
    "enc_layers": 2,
    "dec_layers": 2,
    "n_input_proj": 2,
    "num_queries": 10,
}
OFFICIAL_CHECKPOINT = REPO / ".." / "shared" / "fixtures" / "official_small" / "checkpoint.ckpt"
OFFICIAL_GROUPS = "slowfast:24,clip:8"
STAGE_DIR = Path(
    "/tmp/gpucheck-stage"
)  # where earlier device calls staged folders too large for the last one
GOALS = {"batch1_ms": 2.0, "fp16_qps": 50_000.0, "service_p50_ms": 4.0, "service_p99_ms": 50.0}


@dataclass
class Row:
    """One line of the result table."""

    stage: str
    what: str
    value: str
    goal: str = ""
    status: str = ""


@dataclass
class Plan:
    """Counts and sizes of one run (GPU or CPU smoke)."""

    smoke: bool
    parity_cases: int
    large_batch: int
    budget_s: float
    service_requests: int
    load_seconds: float
    clients: int
    connections: int

    @property
    def device(self) -> str:
        return "cpu" if self.smoke else "cuda"


def make_plan(smoke: bool) -> Plan:
    if smoke:
        return Plan(
            True,
            parity_cases=3,
            large_batch=4,
            budget_s=0.3,
            service_requests=8,
            load_seconds=1.5,
            clients=1,
            connections=2,
        )
    return Plan(
        False,
        parity_cases=24,
        large_batch=256,
        budget_s=1.5,
        service_requests=300,
        load_seconds=8.0,
        clients=8,
        connections=64,
    )


# --- bundles -----------------------------------------------------------------------------------------
def export_released(out: Path) -> Path:
    """A released-size TR-DETR with seeded random weights, exported with its fp16 graph (torch: here only)."""
    import torch

    from model_export.checkpoint import save_checkpoint
    from model_export.config import TRDETRConfig
    from model_export.export import export_bundle
    from model_export.model import build_model

    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = TRDETRConfig(**RELEASED)
    checkpoint = save_checkpoint(out.parent / "released_size_random.ckpt", build_model(config).eval(), config)
    export_bundle(checkpoint, out, fp16=True, run_parity=False, untrained=True)
    checkpoint.unlink()
    return out


def export_official(checkpoint: Path, out: Path) -> Path:
    """The official fixture checkpoint exported as ``trdetr-export --fp16 --video-groups`` does."""
    from model_export.export import export_bundle, parse_video_groups

    export_bundle(
        checkpoint, out, fp16=True, run_parity=False, video_groups=parse_video_groups(OFFICIAL_GROUPS)
    )
    return out


def find_bundle(root: Path, name: str) -> Path | None:
    """``root/name`` or the staged copy of it, when it holds a manifest."""
    for base in (root, STAGE_DIR):
        if (base / name / "manifest.json").exists():
            return base / name
    return None


def bundles(root: Path, plan: Plan) -> dict[str, Path]:
    """The bundles to check: released-size (exported here when it was not prepared) and the official fixture's
    (exported from its checkpoint when only that was carried). The CPU smoke run checks the default bundle."""
    if plan.smoke:
        return {"default bundle": REPO / "service" / "default_bundle"}
    found = {"released-size random": find_bundle(root, "released") or export_released(root / "released")}
    official = find_bundle(root, "official")
    checkpoint = next(
        (
            p
            for p in (root / "checkpoint.ckpt", STAGE_DIR / "checkpoint.ckpt", OFFICIAL_CHECKPOINT)
            if p.exists()
        ),
        None,
    )
    if official is None and checkpoint is not None:
        official = export_official(checkpoint, root / "official")
    if official is not None:
        found["official fixture checkpoint"] = official
    return found


# --- sessions and timing ---------------------------------------------------------------------------
def session(bundle: Path, precision: str, device: str, *, graph: bool = False):
    """The service's own ``OnnxModel`` for one graph of ``bundle`` (TF32 off for fp32, as the service runs it)."""
    from service.inference.session import OnnxModel, cuda_provider_options
    from trdetr_common.manifest import Manifest

    onnx = Manifest.load(bundle).onnx
    path = bundle / (onnx.fp16_file if precision == "fp16" else onnx.fp32_file)
    options = cuda_provider_options(fp32=precision != "fp16", cuda_graph=graph)
    return OnnxModel(path, device=device, cuda_options=options)


def bound_runner(model, bundle: Path, buckets: tuple[int, ...]):
    from service.inference.bound import BoundRunner
    from trdetr_common.manifest import Manifest

    pre = Manifest.load(bundle).preprocessing
    return BoundRunner(model, buckets=buckets, tokens=pre.max_text_tokens, clips=pre.max_video_clips)


def timed(run: Callable[[], object], budget_s: float, min_runs: int = 5) -> list[float]:
    """Seconds per call of ``run`` over ``budget_s`` (at least ``min_runs`` calls), after 3 warm-up calls."""
    for _ in range(3):
        run()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < budget_s:
        begin = time.perf_counter()
        run()
        times.append(time.perf_counter() - begin)
    return times


def p50_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000.0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --- stage 1: parity -------------------------------------------------------------------------------
def parity_stage(name: str, bundle: Path, plan: Plan, rows: list[Row]) -> None:
    from model_export.export.cases import InputSpec, random_cases
    from model_export.export.parity import Thresholds, fp16_gate, fp32_gate
    from service.inference.bound import default_buckets
    from trdetr_common.manifest import Manifest

    manifest = Manifest.load(bundle)
    pre = manifest.preprocessing
    spec = InputSpec(
        video_group_dims=[g.dim for g in pre.video_groups],
        text_dim=pre.text_dim,
        use_tef=pre.tef,
        normalize_video=pre.l2_normalize_video,
        normalize_text=pre.l2_normalize_text,
        max_text_tokens=pre.max_text_tokens,
        max_video_clips=pre.max_video_clips,
    )
    cases = random_cases(spec, plan.parity_cases, seed=0)
    reference = session(bundle, "fp32", "cpu")
    expected = {case.name: reference.run(case.inputs) for case in cases}
    provider = "CUDA EP" if not plan.smoke else "CPU EP (smoke)"
    for graph in (False,) if plan.smoke else (False, True):  # smoke: the engine stage runs the graph option
        try:
            model = session(bundle, "fp32", plan.device, graph=graph)
        except Exception as exc:  # CUDA graphs need every node on the CUDA EP
            rows.append(
                Row("parity", f"{name}: fp32 + CUDA graph", f"not capturable: {exc}"[:160], "", "n/a")
            )
            continue
        bound = bound_runner(model, bundle, default_buckets(8))
        bound.warmup(1)

        def candidate(feeds, model=model, bound=bound):
            return bound.run(feeds) if bound.fits(feeds) else model.run(feeds)

        runs = (
            {"plain session": model.run, "IOBinding buckets": candidate}
            if not graph
            else {"IOBinding + CUDA graph": candidate}
        )
        for label, run in runs.items():
            gate = fp32_gate(
                f"{name} {label}",
                lambda case: expected[case.name],
                run,
                cases,
                reference_label="CPU EP fp32",
                candidate_label=label,
                provider=provider,
                thresholds=Thresholds(fp32_atol=1e-4),
            )
            worst = max(v for k, v in gate.measured.items() if k.startswith("max_abs_diff"))
            rows.append(
                Row(
                    "parity",
                    f"{name}: fp32 {label} vs CPU EP fp32, max abs diff ({len(cases)} batches)",
                    f"{worst:.2e}",
                    "<= 1e-4",
                    verdict(gate.passed),
                )
            )
    if not manifest.onnx.fp16_file:
        rows.append(Row("parity", f"{name}: fp16 gates", "bundle has no fp16 graph", "", "n/a"))
        return
    fp16 = session(bundle, "fp16", plan.device)
    gate = fp16_gate(
        f"{name} fp16",
        lambda inputs: expected_by_inputs(expected, cases, inputs),
        fp16.run,
        cases,
        provider=provider,
        thresholds=Thresholds(),
    )
    m = gate.measured
    rows.append(
        Row(
            "parity",
            f"{name}: fp16 vs CPU fp32: top-1 same / mean top-1 IoU / mean saliency Spearman",
            f"{m['top1_same_rate']:.3f} / {m['mean_top1_iou']:.3f} / {m['mean_saliency_spearman']}",
            ">= 0.99 / 0.98 / 0.99",
            verdict(gate.passed),
        )
    )


def expected_by_inputs(expected: dict, cases: list, inputs: dict) -> dict:
    """The CPU reference outputs of the case whose inputs these are."""
    return next(expected[case.name] for case in cases if case.inputs is inputs)


# --- stage 2: engine -------------------------------------------------------------------------------
def engine_feeds(bundle: Path, batch: int) -> dict[str, np.ndarray]:
    """``batch`` rows of a full window (75 clips) and a 20-token query, built through the contract."""
    from model_export.export.cases import InputSpec, batch_case
    from trdetr_common.manifest import Manifest

    pre = Manifest.load(bundle).preprocessing
    spec = InputSpec(
        video_group_dims=[g.dim for g in pre.video_groups],
        text_dim=pre.text_dim,
        use_tef=pre.tef,
        normalize_video=pre.l2_normalize_video,
        normalize_text=pre.l2_normalize_text,
        max_text_tokens=pre.max_text_tokens,
    )
    shape = (pre.max_video_clips, min(20, pre.max_text_tokens))
    return batch_case("bench", spec, [shape] * batch, np.random.default_rng(batch)).inputs


def engine_stage(bundle: Path, plan: Plan, rows: list[Row]) -> bool:
    """Latency and throughput of every engine mode; returns whether CUDA graphs captured."""
    from trdetr_common.manifest import Manifest

    precisions = ["fp32"] + (["fp16"] if Manifest.load(bundle).onnx.fp16_file else [])
    batches = (1, plan.large_batch)
    feeds = {batch: engine_feeds(bundle, batch) for batch in batches}
    graph_ok = False
    for precision in precisions:
        for graph in (False, True):
            try:
                model = session(bundle, precision, plan.device, graph=graph)
            except Exception as exc:
                rows.append(
                    Row("engine", f"{precision} IOBinding + CUDA graph", f"not capturable: {exc}"[:160])
                )
                continue
            graph_ok = graph_ok or (graph and model.cuda_graph)
            bound = bound_runner(model, bundle, batches)
            bound.warmup(1)
            modes = {} if graph else {"session.run": lambda f, m=model: m.run(f)}
            label = "IOBinding + CUDA graph" if model.cuda_graph else "IOBinding"
            if graph and not model.cuda_graph:
                label = "IOBinding, CUDA graph asked off CUDA (no-op)"
            modes[f"{label} (batch copied in)"] = bound.run
            modes[f"{label} (device-resident inputs)"] = resident_run(bound)
            for mode, run in modes.items():
                for batch in batches:
                    times = timed(lambda run=run, batch=batch: run(feeds[batch]), plan.budget_s)
                    ms = p50_ms(times)
                    qps = batch * 1000.0 / ms
                    goal, status = engine_goal(precision, batch, ms, qps, plan)
                    rows.append(
                        Row(
                            "engine",
                            f"{precision} {mode}, batch {batch}",
                            f"p50 {ms:.3f} ms, {qps:,.0f} q/s",
                            goal,
                            status,
                        )
                    )
    return graph_ok


def resident_run(bound) -> Callable[[dict[str, np.ndarray]], object]:
    """A bound run without the host->device copy: the bucket's device inputs keep the last staged batch."""

    def run(feeds: dict[str, np.ndarray]) -> object:
        bucket = bound._bound[bound.bucket_for(feeds["src_txt"].shape[0])]
        if bound.runs[bucket.batch] == 0:
            bound.run(feeds)
        bound.model.session.run_with_iobinding(bucket.binding, bucket.run_options)
        return bucket.outputs

    return run


def engine_goal(precision: str, batch: int, ms: float, qps: float, plan: Plan) -> tuple[str, str]:
    if plan.smoke:
        return "", ""
    if batch == 1:
        return at_most_goal(plan, "batch1_ms", ms)
    if precision == "fp16":
        return f">= {GOALS['fp16_qps']:,.0f} q/s", verdict(qps >= GOALS["fp16_qps"])
    return "", ""


# --- stage 3: torch eager --------------------------------------------------------------------------
def torch_stage(bundle: Path, plan: Plan, rows: list[Row]) -> None:
    import torch

    from model_export.config import TRDETRConfig
    from model_export.export.onnx_export import TRDETR_INPUTS
    from model_export.model import build_model
    from trdetr_common.manifest import Manifest

    config = Manifest.load(bundle).config if plan.smoke else RELEASED
    config = {k: v for k, v in config.items() if k in TRDETRConfig.__dataclass_fields__}
    torch.manual_seed(0)
    device = torch.device(plan.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = build_model(TRDETRConfig(**config)).eval().to(device)
    autocasts = [("fp32", None)] + ([("autocast fp16", torch.float16)] if device.type == "cuda" else [])
    for label, dtype in autocasts:
        for batch in (1, plan.large_batch):
            tensors = [
                torch.from_numpy(engine_feeds(bundle, batch)[name]).to(device) for name in TRDETR_INPUTS
            ]

            def run(tensors=tensors, dtype=dtype) -> None:
                with (
                    torch.inference_mode(),
                    torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
                ):
                    model(*tensors)
                if device.type == "cuda":
                    torch.cuda.synchronize()

            ms = p50_ms(timed(run, plan.budget_s))
            rows.append(
                Row(
                    "torch eager", f"{label}, batch {batch}", f"p50 {ms:.3f} ms, {batch * 1000 / ms:,.0f} q/s"
                )
            )


# --- stage 4: the live service ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(bundle: Path, plan: Plan, cuda_graph: bool) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRDETR_")}
    env.update(
        TRDETR_BUNDLE_DIR=str(bundle),
        TRDETR_DEVICE=plan.device,
        TRDETR_PRECISION="auto",
        TRDETR_IO_BINDING="on",
        TRDETR_CUDA_GRAPH=str(cuda_graph).lower(),
        TRDETR_LOG_LEVEL="warning",
        TRDETR_INPROCESS_WORKER="false",
        TRDETR_MAX_QUEUE_SIZE="4096",
        TRDETR_REQUEST_TIMEOUT_S="30",
        TRDETR_REDIS_KEY_PREFIX=f"trdetr-gpucheck-{uuid.uuid4().hex[:8]}",
        TRDETR_WARMUP_RUNS="2",
        TRDETR_FEATURE_TTL_S="600",
        TRDETR_MAX_BATCH_SIZE="4" if plan.smoke else "64",
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "--port", str(port)], cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"trdetr-serve exited during start-up (code {process.returncode})")
        time.sleep(0.3)
    process.terminate()
    raise RuntimeError("trdetr-serve did not become ready in 300 s")


def search_body(bundle: Path, url: str) -> dict:
    """Store one full-window video (random features) and return a one-query /v1/moments body for it."""
    import httpx

    from trdetr_common.manifest import Manifest

    pre = Manifest.load(bundle).preprocessing
    rng = np.random.default_rng(0)
    groups = {
        g.name: rng.standard_normal((pre.max_video_clips, g.dim)).astype(np.float32) for g in pre.video_groups
    }
    buffer = io.BytesIO()
    np.savez(buffer, **groups)
    httpx.put(
        f"{url}/v1/videos/gpucheck/features",
        content=buffer.getvalue(),
        headers={"content-type": "application/x-npz"},
        timeout=60,
    ).raise_for_status()
    tokens = io.BytesIO()
    np.save(tokens, rng.standard_normal((min(20, pre.max_text_tokens), pre.text_dim)).astype(np.float32))
    return {
        "video_id": "gpucheck",
        "queries": [{"features_b64": base64.b64encode(tokens.getvalue()).decode()}],
        "top_k": 5,
    }


async def _timed_post(client, body: dict) -> float:
    """Seconds one POST /v1/moments took; NaN when it did not answer 200 (counted as a failure)."""
    import httpx

    start = time.perf_counter()
    try:
        response = await client.post("/v1/moments", json=body)
    except httpx.HTTPError:
        return float("nan")
    return time.perf_counter() - start if response.status_code == 200 else float("nan")


async def _closed_loop(
    url: str, body: dict, connections: int, seconds: float, count: int | None, start_at: float = 0.0
) -> list[float]:
    """``connections`` workers sending back to back for ``seconds`` (or ``count`` requests in all), from wall
    time ``start_at`` (after the warm-up requests, so that client processes start their load together)."""
    import httpx

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        for _ in range(2 * connections):
            (await client.post("/v1/moments", json=body)).raise_for_status()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        end, left = time.perf_counter() + seconds, count

        async def worker() -> None:
            nonlocal left
            while (left is None and time.perf_counter() < end) or (left is not None and left > 0):
                if left is not None:
                    left -= 1
                latencies.append(await _timed_post(client, body))

        await asyncio.gather(*(worker() for _ in range(connections)))
    return latencies


async def _open_loop(url: str, body: dict, rate: float, seconds: float, start_at: float) -> list[float]:
    """Requests sent at a fixed ``rate`` per second for ``seconds``, whatever the answers' latency."""
    import httpx

    limits = httpx.Limits(
        max_connections=100, max_keepalive_connections=100
    )  # x clients < TRDETR_MAX_CONNECTIONS
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        for _ in range(8):
            (await client.post("/v1/moments", json=body)).raise_for_status()

        async def one() -> None:
            latencies.append(await _timed_post(client, body))

        await asyncio.sleep(max(0.0, start_at - time.time()))
        tasks, begin = [], time.perf_counter()
        for index in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, begin + index / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies


def _client(kind: str, url: str, body: dict, arg: float, seconds: float, start_at: float) -> list[float]:
    """One client process: closed loop with ``arg`` connections, or open loop at ``arg`` requests/s."""
    if kind == "closed":
        return asyncio.run(_closed_loop(url, body, max(1, round(arg)), seconds, None, start_at))
    return asyncio.run(_open_loop(url, body, arg, seconds, start_at))


def spread(kind: str, url: str, body: dict, total: float, plan: Plan) -> tuple[list[float], float]:
    """``plan.clients`` client processes sharing ``total`` (connections, or requests/s) for ``plan.load_seconds``
    from a common start; returns (latencies, requests answered per second of load)."""
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 5.0  # process start + warm-up requests
    with context.Pool(plan.clients) as pool:
        results = pool.starmap(
            _client, [(kind, url, body, total / plan.clients, plan.load_seconds, start_at)] * plan.clients
        )
    latencies = [latency for result in results for latency in result]
    return latencies, sum(latency == latency for latency in latencies) / plan.load_seconds


def failures(latencies: list[float]) -> int:
    return sum(latency != latency for latency in latencies)


def failed_as_inf(latencies: list[float]) -> np.ndarray:
    """Latencies in seconds with failed requests (NaN) as infinitely slow, so they count against p99."""
    values = np.array(latencies, dtype=np.float64)
    return np.where(np.isnan(values), np.inf, values)


def at_most_goal(plan: Plan, goal: str, ms: float) -> tuple[str, str]:
    """The goal and status cells of a latency row that must stay <= ``GOALS[goal]`` ms (blank in smoke runs)."""
    if plan.smoke:
        return "", ""
    return f"<= {GOALS[goal]:g} ms", verdict(ms <= GOALS[goal])


def service_stage(bundle: Path, plan: Plan, cuda_graph: bool, rows: list[Row]) -> None:
    import httpx

    process, url = start_service(bundle, plan, cuda_graph)
    try:
        checks = httpx.get(f"{url}/readyz").json()["checks"]
        rows.append(Row("service", "readyz checks", ", ".join(f"{k}={v}" for k, v in checks.items())[:160]))
        body = search_body(bundle, url)
        c1 = asyncio.run(_closed_loop(url, body, 1, 0.0, plan.service_requests))
        p50 = float(np.percentile(failed_as_inf(c1), 50, method="higher")) * 1000.0
        goal, status = at_most_goal(plan, "service_p50_ms", p50)
        rows.append(
            Row(
                "service",
                f"concurrency 1, p50 end to end ({len(c1)} requests, {failures(c1)} failed)",
                f"{p50:.2f} ms",
                goal,
                status,
            )
        )
        _, max_rps = spread("closed", url, body, plan.connections, plan)
        rows.append(
            Row(
                "service",
                f"max throughput, closed loop, {plan.connections} connections",
                f"{max_rps:,.0f} req/s",
            )
        )
        latencies, rps = spread("open", url, body, 0.8 * max_rps, plan)
        p50, p99 = np.percentile(failed_as_inf(latencies), [50, 99], method="higher") * 1000.0
        goal, status = at_most_goal(plan, "service_p99_ms", p99)
        rows.append(
            Row(
                "service",
                f"80 % of max ({0.8 * max_rps:,.0f} req/s offered, {rps:,.0f} answered, {failures(latencies)} failed): "
                "p50 / p99",
                f"{p50:.2f} / {p99:.2f} ms",
                goal,
                status,
            )
        )
    finally:
        with contextlib.suppress(Exception):
            httpx.delete(f"{url}/v1/videos/gpucheck", timeout=10)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


# --- driver --------------------------------------------------------------------------------------------
def guarded(stage: str, rows: list[Row], work: Callable[[], object]) -> object:
    """Run one stage; a failure becomes an ERROR row (the other stages still run)."""
    try:
        return work()
    except Exception as exc:
        traceback.print_exc()
        rows.append(Row(stage, "stage failed", f"{type(exc).__name__}: {exc}"[:200], "", "ERROR"))
        return None


def environment_row(plan: Plan) -> Row:
    import onnxruntime as ort

    device = "CPU (smoke)"
    if not plan.smoke:
        try:
            device = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
        except OSError:
            device = "nvidia-smi not found"
    return Row(
        "env",
        "device / onnxruntime / providers",
        f"{device} / {ort.__version__} / {','.join(ort.get_available_providers())}",
    )


def print_table(rows: list[Row]) -> None:
    print("\n| stage | check | measured | goal | status |\n| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row.stage} | {row.what} | {row.value} | {row.goal} | {row.status} |")


def run(args: argparse.Namespace) -> list[Row]:
    plan = make_plan(args.cpu_smoke)
    rows = [environment_row(plan)]
    if not plan.smoke:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            rows.append(Row("env", "CUDA EP", "missing: source .ortgpu/base/install.sh first", "", "ERROR"))
            print_table(rows)
            return rows
    found = guarded("bundles", rows, lambda: bundles(args.bundles, plan)) or {}
    for name, bundle in found.items():
        guarded("parity", rows, lambda name=name, bundle=bundle: parity_stage(name, bundle, plan, rows))
    released = next(iter(found.values()), None)
    graph_ok = False
    if released is not None:
        graph_ok = bool(guarded("engine", rows, lambda: engine_stage(released, plan, rows)))
        guarded("torch eager", rows, lambda: torch_stage(released, plan, rows))
        guarded("service", rows, lambda: service_stage(released, plan, graph_ok or plan.smoke, rows))
    print_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([row.__dict__ for row in rows], indent=1))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prepare = sub.add_parser("prepare", help="export the bundles (on a build machine with torch)")
    prepare.add_argument("--out", type=Path, default=REPO / ".gpucheck")
    check = sub.add_parser("run", help="run the checks and print the table")
    check.add_argument(
        "--cpu-smoke", action="store_true", help="the same code on the CPU EP with small counts"
    )
    check.add_argument("--bundles", type=Path, default=REPO / ".gpucheck")
    check.add_argument(
        "--json",
        type=Path,
        default=Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None,
    )
    args = parser.parse_args(argv)
    if args.command == "prepare":
        if not (args.out / "released" / "manifest.json").exists():
            export_released(args.out / "released")
        if OFFICIAL_CHECKPOINT.exists() and not (args.out / "official" / "manifest.json").exists():
            export_official(OFFICIAL_CHECKPOINT, args.out / "official")
        return 0
    rows = run(args)
    return 1 if any(row.status == "ERROR" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
