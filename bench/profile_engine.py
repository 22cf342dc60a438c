"""Profile an ONNX graph of the model on the CPU: where the time of one run goes, per op type.

Runs ONNX Runtime's own profiler (``SessionOptions.enable_profiling``) on the benchmark's inputs (released-size
layout: 75 clips x 20 tokens per row by default) and sums the kernel times of the measured runs per op type.

    .venv/bin/python bench/profile_engine.py /tmp/trdetr-bench-engine/model.onnx --batches 1 32

The table gives, per op type, the node count, the share of kernel time and the mean microseconds per node
call; "all kernels" vs "run wall" shows how much of a run is spent between kernels (scheduling, allocation).
Not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_engine import SPEC  # noqa: E402
from model_export.export.cases import batch_case  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("graph", type=Path, help="ONNX file with the served inputs and outputs")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--clips", type=int, default=75)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="profiled runs per batch (after 2 warm-up runs)")
    parser.add_argument("--top", type=int, default=12, help="op types listed")
    return parser.parse_args(argv)


def profile(graph: Path, batch: int, args: argparse.Namespace) -> dict:
    """Kernel time per op type over ``args.runs`` runs of one batch; also the nodes and the mean run time."""
    feeds = batch_case(
        "profile", SPEC, [(args.clips, args.tokens)] * batch, np.random.default_rng(batch)
    ).inputs
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        options.log_severity_level = 3
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        for _ in range(2):
            session.run(None, feeds)
        started = time.perf_counter()
        for _ in range(args.runs):
            session.run(None, feeds)
        wall_ms = (time.perf_counter() - started) * 1000 / args.runs
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    measured_from = runs[2]["ts"] if len(runs) > 2 else 0  # skip the warm-up runs
    per_op: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    nodes: dict[str, set] = defaultdict(set)
    for event in events:
        if (
            event.get("cat") != "Node"
            or not event["name"].endswith("_kernel_time")
            or event["ts"] < measured_from
        ):
            continue
        op = event["args"]["op_name"]
        per_op[op] += event["dur"] / 1000 / args.runs
        calls[op] += 1
        nodes[op].add(event["name"])
    return {
        "batch": batch,
        "wall_ms": wall_ms,
        "kernel_ms": sum(per_op.values()),
        "per_op": dict(per_op),
        "calls": {op: calls[op] / args.runs for op in calls},
        "nodes": {op: len(n) for op, n in nodes.items()},
    }


def print_profile(result: dict, top: int) -> None:
    kernel = result["kernel_ms"]
    total_nodes = sum(result["nodes"].values())
    print(
        f"\nbatch {result['batch']}: run wall {result['wall_ms']:.2f} ms, all kernels {kernel:.2f} ms, "
        f"{total_nodes} nodes"
    )
    print("| op | nodes | share of kernel time | ms per run | us per node call |\n|---|---:|---:|---:|---:|")
    for op, ms in sorted(result["per_op"].items(), key=lambda item: -item[1])[:top]:
        per_call = ms * 1000 / max(result["calls"][op], 1)
        print(f"| {op} | {result['nodes'][op]} | {ms / kernel:.1%} | {ms:.3f} | {per_call:.1f} |")


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    results = [profile(args.graph, batch, args) for batch in args.batches]
    print(
        f"{args.graph}: {args.clips} clips x {args.tokens} tokens per row, {args.threads} threads, "
        f"onnxruntime {ort.__version__}"
    )
    for result in results:
        print_profile(result, args.top)
    return results


if __name__ == "__main__":
    main()
