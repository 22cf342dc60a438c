"""Benchmark: moments and highlights on videos far longer than the model's window.

**Quality** (``quality``, the default): the synthetic TR-DETR of ``bench/train_synthetic.py`` (window W = 32
clips; trained once and cached in ``--work-dir`` when ``--checkpoint`` is not given) searches long synthetic
videos made by concatenating the short synthetic ones: each query's own held-out video (the same 100
held-out videos ``train_synthetic.py`` reports R1@0.5 on), placed at a random position among filler videos
whose planted concept differs from the query's, cut to ``m x W`` clips for each ``--lengths`` factor m.
Every video goes through ``training.predict`` (the code of ``trdetr-predict``, which windows with
``trdetr_common.windows`` like the service); the model runs once per (length, stride) and each merge rule is
applied to the same outputs. Reported per row: MR R1@0.5, R1@0.7 and mAP (official metrics, top
``num_queries`` moments), HD mAP and HIT@1 at "VeryGood", windows per video, and how many top-1 moments do
not even overlap the queried one.

    .venv/bin/python bench/bench_long_video.py --lengths 1 4 20 60 --strides 0.25 0.5 --merges nms fuse salient

**Speed** (``speed``): p50 latency of one query on a ``--clips`` (default 900 = 30 min) video stored in the
live service (``trdetr-serve`` on the released-size random-weight bundle of ``bench/bench_service.py``), one
server per stride, next to a 75-clip (one window) query and the bare ONNX Runtime session running the same
window rows as one batch.

    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/bench_long_video.py speed --strides 0.25 0.5

Not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from trdetr_common.windows import MERGE_RULES, plan_windows, stride_for  # noqa: E402

SYNTHETIC_WINDOW = 32  # train_synthetic.py's --max-clips
TEST_SEED, TEST_FIRST_QID = 2, 1_000_000  # train_synthetic.py's held-out split (seed 0)


# --- quality ----------------------------------------------------------------------------------
def trained_checkpoint(work_dir: Path) -> Path:
    """The synthetic model of train_synthetic.py, trained once into ``work_dir/synth`` (minutes on a CPU)."""
    checkpoint = work_dir / "synth" / "run" / "model_latest.ckpt"
    if not checkpoint.exists():
        import train_synthetic

        train_synthetic.main(["--keep", str(work_dir / "synth"), "--max-clips", str(SYNTHETIC_WINDOW)])
    return checkpoint


def _concept(record: dict) -> int:
    return int(re.search(r"concept (\d+)", record["query"]).group(1))


def _read_split(split) -> list[tuple[dict, list[np.ndarray]]]:
    """(record, per-group features) of every video of a written synthetic split."""
    config = split.dataset_config()
    out = []
    for record in (json.loads(line) for line in split.annotation_path.read_text().splitlines() if line):
        groups = [np.load(folder / f"{record['vid']}.npz")["features"] for folder in config.v_feat_dirs]
        out.append((record, groups))
    return out


def short_videos(root: Path, queries: int, seed: int) -> tuple[list, list]:
    """The held-out videos of train_synthetic.py (targets) and 300 filler videos without distractors."""
    from training.synthetic import SyntheticSpec, write_synthetic_split

    spec = SyntheticSpec(min_clips=16, max_clips=SYNTHETIC_WINDOW)
    targets = _read_split(write_synthetic_split(root / "short", "test", queries, seed=TEST_SEED, spec=spec,
                                                first_qid=TEST_FIRST_QID))
    filler_spec = SyntheticSpec(min_clips=16, max_clips=SYNTHETIC_WINDOW, distractor_prob=0.0)
    fillers = _read_split(write_synthetic_split(root / "fill", "fill", 300, seed=seed + 100, spec=filler_spec,
                                                first_qid=5_000_000))
    return targets, fillers


def _long_video(record: dict, groups: list[np.ndarray], fillers: list, total: int,
                rng: np.random.Generator) -> tuple[list[np.ndarray], int]:
    """``groups`` at a random clip offset inside ``total`` clips of fillers of other concepts; (video, offset)."""
    length = len(groups[0])
    offset = int(rng.integers(0, total - length + 1))
    others = [f[1] for f in fillers if _concept(f[0]) != _concept(record)]
    pieces: list[list[np.ndarray]] = []
    while sum(len(p[0]) for p in pieces) < total - length:
        pieces.append(others[int(rng.integers(len(others)))])
    video = []
    for g, group in enumerate(groups):
        fill = np.concatenate([p[g] for p in pieces] or [np.zeros((0, group.shape[1]))], axis=0)
        video.append(np.concatenate([fill[:offset], group, fill[offset:total - length]]).astype(np.float32))
    return video, offset


def write_long_split(root: Path, factor: int, targets: list, fillers: list, seed: int):
    """A QVHighlights-format split of one ``factor x W``-clip video per target query (see the module doc).

    Returns the dataset config (no truncation, no labels) and the annotation path.
    """
    from training.synthetic import SyntheticSpec, SyntheticSplit

    spec = SyntheticSpec(min_clips=16, max_clips=SYNTHETIC_WINDOW)
    split = SyntheticSplit(root / f"x{factor}", "long", spec)
    config = split.dataset_config(t_feat_dir=root / "short" / "text", max_v_l=None, load_labels=False)
    for folder in config.v_feat_dirs:
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + factor)
    total = factor * SYNTHETIC_WINDOW
    lines = []
    for record, groups in targets:
        video, offset = _long_video(record, groups, fillers, total, rng)
        vid = f"long{record['qid']}_x{factor}"
        for folder, array in zip(config.v_feat_dirs, video, strict=True):
            np.savez(folder / f"{vid}.npz", features=array)
        shift = offset * spec.clip_length
        lines.append(json.dumps({**record, "vid": vid, "duration": total * spec.clip_length,
                                 "relevant_windows": [[s + shift, e + shift] for s, e in record["relevant_windows"]],
                                 "relevant_clip_ids": [c + offset for c in record["relevant_clip_ids"]]}))
    split.annotation_path.write_text("\n".join(lines) + "\n")
    return config, split.annotation_path


def quality(args: argparse.Namespace) -> list[dict]:
    import torch

    from training.dataset import QVHighlightsDataset, read_jsonl
    from training.evaluation import evaluate
    from training.predict import TorchBackend, prediction_record, window_outputs

    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or trained_checkpoint(args.work_dir)
    backend = TorchBackend.from_checkpoint(checkpoint)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        targets, fillers = short_videos(Path(tmp), args.queries, args.seed)
        for factor in args.lengths:
            config, annotation_path = write_long_split(Path(tmp), factor, targets, fillers, args.seed)
            dataset, annotations = QVHighlightsDataset(config), read_jsonl(annotation_path)
            strides = args.strides if factor > 1 else args.strides[:1]  # one window: the stride does not matter
            for fraction in strides:
                started = time.perf_counter()
                outputs = window_outputs(backend, dataset, args.batch_size, stride_fraction=fraction, progress=False)
                seconds = time.perf_counter() - started
                for merge in args.merges if factor > 1 else args.merges[:1]:
                    preds = [prediction_record(q, backend.clip_length, merge) for q in outputs]
                    brief = evaluate(preds, annotations)["brief"]
                    off = sum(_off_the_moment(p, a) for p, a in zip(preds, annotations, strict=True))
                    rows.append({"length": f"{factor}x", "clips": factor * SYNTHETIC_WINDOW,
                                 "stride": stride_for(SYNTHETIC_WINDOW, fraction) if factor > 1 else "-",
                                 "merge": merge if factor > 1 else "-",
                                 "windows": outputs[0].plan.num_windows, "R1@0.5": brief["MR-full-R1@0.5"],
                                 "R1@0.7": brief["MR-full-R1@0.7"], "mAP": brief["MR-full-mAP"],
                                 "HD mAP": brief["HL-min-VeryGood-mAP"], "HIT@1": brief["HL-min-VeryGood-Hit1"],
                                 "top-1 off the moment": off,
                                 "model s": round(seconds, 1)})
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def _off_the_moment(prediction: dict, annotation: dict) -> bool:
    """The top-1 moment does not even overlap the queried moment (it came from an unrelated part)."""
    start, end = prediction["pred_relevant_windows"][0][:2]
    return all(end <= s or start >= e for s, e in annotation["relevant_windows"])


def print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("| " + " | ".join("---" if k in ("length", "merge") else "---:" for k in keys) + " |")
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


# --- speed ------------------------------------------------------------------------------------
def speed(args: argparse.Namespace) -> list[dict]:
    import asyncio
    import signal
    import uuid

    import httpx
    from bench_service import (
        BareOrt,
        build_bundle,
        free_port,
        npy_b64,
        npz_bytes,
        percentiles,
        timed_requests,
    )

    from trdetr_common.features import build_text_features, build_video_features, tef_columns
    from trdetr_common.manifest import Manifest
    from trdetr_common.windows import window_input

    bundle = args.bundle or build_bundle(args.work_dir)
    pre = Manifest.load(bundle).preprocessing
    rng = np.random.default_rng(0)
    groups = {g.name: rng.standard_normal((args.clips, g.dim)).astype(np.float32) for g in pre.video_groups}
    short = {name: array[:pre.max_video_clips] for name, array in groups.items()}
    tokens = rng.standard_normal((args.tokens, pre.text_dim)).astype(np.float32)
    stored = build_video_features(list(groups.values()), normalize=pre.l2_normalize_video, tef=False)
    video = np.concatenate([stored.astype(np.float16).astype(np.float32), tef_columns(args.clips)], axis=1)
    text = build_text_features(tokens, normalize=pre.l2_normalize_text, max_tokens=pre.max_text_tokens)
    rows = []
    for fraction in args.strides:
        plan = plan_windows(args.clips, pre.max_video_clips, stride_for(pre.max_video_clips, fraction))
        windows = np.stack([window_input(video, s, plan.length, tef=pre.tef) for s in plan.starts])
        bare = BareOrt(bundle, text, windows[0], args.threads, 1)
        bare.feeds.update(src_txt=np.repeat(text[None], plan.num_windows, 0),
                          src_txt_mask=np.ones((plan.num_windows, len(text)), np.float32), src_vid=windows,
                          src_vid_mask=np.ones(windows.shape[:2], np.float32))
        port, prefix = free_port(), f"trdetr-bench-long-{uuid.uuid4().hex[:8]}"
        server = _start(bundle, port, args.threads, prefix, fraction)
        base_url = f"http://127.0.0.1:{port}"
        try:
            for vid, body in (("long", groups), ("short", short)):
                httpx.put(f"{base_url}/v1/videos/{vid}/features", content=npz_bytes(body),
                          headers={"content-type": "application/x-npz"}, timeout=120).raise_for_status()
            query = [{"features_b64": npy_b64(tokens)}]
            measured = {}
            for vid in ("short", "long"):
                latencies, bare_latencies, _, _ = asyncio.run(timed_requests(
                    base_url, {"video_id": vid, "queries": query, "top_k": 5}, 1, args.requests,
                    bare=bare if vid == "long" else None))
                measured[vid] = percentiles(latencies)[0]
            ort = percentiles(bare_latencies)[0]
            for vid in ("short", "long"):
                httpx.delete(f"{base_url}/v1/videos/{vid}")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        rows.append({"clips": args.clips, "stride": plan.stride, "windows": plan.num_windows,
                     "p50 ms (long)": round(measured["long"], 1), "bare ORT p50 ms (same rows)": round(ort, 1),
                     "long / ORT": round(measured["long"] / ort, 2),
                     "p50 ms (75 clips)": round(measured["short"], 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _start(bundle: Path, port: int, threads: int, prefix: str, fraction: float):
    """trdetr-serve as bench_service.py starts it, with this window stride."""
    import bench_service

    return bench_service.start_server(bundle, port, threads, prefix, 2.0,
                                      extra_env={"TRDETR_WINDOW_STRIDE": str(fraction)})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=("quality", "speed"), default="quality")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "trdetr-bench")
    parser.add_argument("--strides", type=float, nargs="+", default=[0.25, 0.5],
                        help="window strides as fractions of the window")
    # quality
    parser.add_argument("--checkpoint", type=Path, help="synthetic checkpoint (default: train one into --work-dir)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 4, 20, 60], help="video length / window")
    parser.add_argument("--merges", nargs="+", choices=MERGE_RULES, default=list(MERGE_RULES))
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    # speed
    parser.add_argument("--bundle", type=Path, help="bundle for the speed run (default: released-size random)")
    parser.add_argument("--clips", type=int, default=900)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch / ORT threads")
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    rows = quality(args) if args.mode == "quality" else speed(args)
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
