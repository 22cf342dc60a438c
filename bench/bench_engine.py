"""Benchmark: the model engine on the CPU - ONNX Runtime fp32 / int8 graphs vs the official-equivalent torch
eager model, interleaved in one run on the same threads.

Builds (once, cached in ``--work-dir``) a released-size TR-DETR with seeded random weights (hidden 256, 8 heads,
FFN 1024, 2+2 layers, 2 input projections, 10 queries; video 2304 + 512 + 2 TEF = 2818, text 512), exports it
with ``export_trdetr`` and quantizes it with ``model_export.export.int8`` (static QDQ calibrated on batches
built through the preprocessing contract, and dynamic). Then, round after round, every engine runs the same
batch (``--clips`` clips, ``--tokens`` tokens per row; batch 1 and 32 by default), so that load changes on the
machine hit all engines alike; the table gives each engine's median latency, queries/s and speed-up over torch.

    .venv/bin/python bench/bench_engine.py                       # batch 1 and 32, 2 threads
    .venv/bin/python bench/bench_engine.py --batches 1 --rounds 10

torch runs ``model_export.model`` (numerically the official code: tests/model, tests/export gates) in eval mode
under ``torch.inference_mode``; ONNX Runtime runs with ``intra_op_num_threads = --threads`` and no spin-waiting
(what the service does), so idle ORT threads do not steal the cores from the torch runs.
The table also gives each engine's median process CPU time per run (all threads); on shared, loaded cores it
moves far less than the wall time when a run is descheduled. ``--ort-configs 1:0 2:1`` adds the fp32 graph with
other intra-op thread counts / spin-waiting, ``--graph LABEL=PATH`` any other ONNX file (e.g. an older export),
``--engines`` picks the ORT engines to run.
Not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model_export.config import TRDETRConfig  # noqa: E402
from model_export.export.cases import InputSpec, batch_case, random_cases  # noqa: E402
from model_export.export.graph_opt import optimise_graph  # noqa: E402
from model_export.export.int8 import calibration_batches, quantize_int8  # noqa: E402
from model_export.export.onnx_export import TRDETR_INPUTS, export_trdetr  # noqa: E402
from model_export.model import build_model  # noqa: E402

RELEASED = {"v_feat_dim": 2818, "t_feat_dim": 512, "hidden_dim": 256, "nheads": 8, "dim_feedforward": 1024,
            "enc_layers": 2, "dec_layers": 2, "n_input_proj": 2, "num_queries": 10}
SPEC = InputSpec(video_group_dims=[2304, 512], text_dim=512, use_tef=True, normalize_video=True,
                 normalize_text=True, max_text_tokens=32)
Feeds = dict[str, np.ndarray]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--clips", type=int, default=75)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="torch threads and ORT intra-op threads")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per batch size")
    parser.add_argument("--budget-s", type=float, default=2.0, help="seconds per engine per round (at least 1 run)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/trdetr-bench-engine"))
    parser.add_argument("--engines", nargs="+", help="run only these engines (labels as in the table); "
                        "torch eager always runs")
    parser.add_argument("--graph", action="append", default=[], metavar="LABEL=PATH",
                        help="also time this ONNX file (e.g. an older export) under LABEL")
    parser.add_argument("--ort-configs", nargs="+", default=[], metavar="THREADS:SPIN",
                        help="also run the ORT fp32 graph with these intra-op threads and spinning (0/1), "
                        "e.g. 1:0 2:1")
    return parser.parse_args(argv)


def build_graphs(work_dir: Path) -> tuple[torch.nn.Module, dict[str, Path]]:
    """The torch model and its ONNX graphs (fp32, static int8, dynamic int8), cached in ``work_dir``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(TRDETRConfig(**RELEASED)).eval()
    state = work_dir / "released_size_random.pt"
    if state.exists():
        model.load_state_dict(torch.load(state, weights_only=True))
    else:
        torch.save(model.state_dict(), state)
    graphs = {"ORT fp32": work_dir / "model.onnx", "ORT int8 static": work_dir / "model.int8.static.onnx",
              "ORT int8 dynamic": work_dir / "model.int8.dynamic.onnx"}
    if not graphs["ORT fp32"].exists():
        export_trdetr(model, RELEASED["t_feat_dim"], RELEASED["v_feat_dim"], graphs["ORT fp32"], 18)
        optimise_graph(graphs["ORT fp32"])  # what trdetr-export writes as model.onnx
    calibration = calibration_batches(random_cases(SPEC, 40, seed=1)[9:], 64)
    for name, mode in (("ORT int8 static", "static"), ("ORT int8 dynamic", "dynamic")):
        if not graphs[name].exists():
            quantize_int8(graphs["ORT fp32"], graphs[name], calibration, mode=mode)
    return model, graphs


def build_graphs_fp32(work_dir: Path) -> Path:
    """The cached fp32 graph written by :func:`build_graphs`."""
    return work_dir / "model.onnx"


def ort_engine(path: Path, threads: int, spin: bool = False) -> Callable[[Feeds], object]:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)


def torch_engine(model: torch.nn.Module) -> Callable[[Feeds], object]:
    def run(feeds: Feeds) -> object:
        with torch.inference_mode():
            return model(*[torch.from_numpy(feeds[name]) for name in TRDETR_INPUTS])

    return run


def time_round(run: Callable[[Feeds], object], feeds: Feeds, budget_s: float) -> list[tuple[float, float]]:
    """(wall, process CPU) seconds of each of as many runs as fit in ``budget_s`` (at least one).

    The CPU time (all threads of this process) is what the run cost the machine; on shared, loaded cores it
    is far less sensitive than the wall time to the run being descheduled (busy-waiting threads count).
    """
    times: list[tuple[float, float]] = []
    started = time.perf_counter()
    while not times or time.perf_counter() - started < budget_s:
        begin, begin_cpu = time.perf_counter(), time.process_time()
        run(feeds)
        times.append((time.perf_counter() - begin, time.process_time() - begin_cpu))
    return times


def bench_batch(engines: dict[str, Callable[[Feeds], object]], batch: int, args: argparse.Namespace) -> list[dict]:
    feeds = batch_case("bench", SPEC, [(args.clips, args.tokens)] * batch, np.random.default_rng(batch)).inputs
    for run in engines.values():  # warm-up
        run(feeds)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, run in engines.items():
            samples[name] += time_round(run, feeds, args.budget_s)
    torch_ms = statistics.median(t[0] for t in samples["torch eager"]) * 1000
    torch_cpu_ms = statistics.median(t[1] for t in samples["torch eager"]) * 1000
    rows = []
    for name, times in samples.items():
        ms = statistics.median(t[0] for t in times) * 1000
        cpu_ms = statistics.median(t[1] for t in times) * 1000
        rows.append({"engine": name, "batch": batch, "p50_ms": ms, "queries_per_s": batch * 1000 / ms,
                     "speedup_vs_torch": torch_ms / ms, "cpu_ms": cpu_ms, "cpu_speedup_vs_torch": torch_cpu_ms / cpu_ms,
                     "runs": len(times)})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, graphs = build_graphs(args.work_dir)
    graphs.update(dict(item.split("=", 1) for item in args.graph))
    if args.engines:
        graphs = {name: path for name, path in graphs.items() if name in args.engines}
    engines = {"torch eager": torch_engine(model)}
    engines.update({name: ort_engine(Path(path), args.threads) for name, path in graphs.items()})
    for config in args.ort_configs:
        threads, spin = (int(v) for v in config.split(":"))
        engines[f"ORT fp32, {threads} threads{', spinning' if spin else ''}"] = ort_engine(
            build_graphs_fp32(args.work_dir), threads, bool(spin))
    rows = [row for batch in args.batches for row in bench_batch(engines, batch, args)]
    print(f"\nreleased-size TR-DETR, {args.clips} clips x {args.tokens} tokens per row, {args.threads} threads, "
          f"onnxruntime {ort.__version__}, torch {torch.__version__}, {args.rounds} interleaved rounds")
    print("| engine | batch | p50 ms | queries/s | speed-up vs torch | p50 CPU ms | CPU-time speed-up vs torch | runs |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['engine']} | {r['batch']} | {r['p50_ms']:.1f} | {r['queries_per_s']:.0f} | "
              f"{r['speedup_vs_torch']:.2f}x | {r['cpu_ms']:.1f} | {r['cpu_speedup_vs_torch']:.2f}x | {r['runs']} |")
    return rows


if __name__ == "__main__":
    main()
