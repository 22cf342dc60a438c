"""Smoke benchmark of training: train TR-DETR on synthetic QVHighlights-format data on the CPU and report
R1@0.5 on held-out synthetic videos and the training time.

    .venv/bin/python bench/train_synthetic.py                 # defaults below, ~minutes on 2 CPU cores
    .venv/bin/python bench/train_synthetic.py --epochs 5 --train-queries 64 --keep runs/synth

Everything goes through the real entry points: the data is written by ``training.synthetic``, the model is
trained by ``trdetr-train`` (``training.train_cli``), predictions for the held-out split are written by
``trdetr-predict`` from the saved official-format checkpoint, and scored by ``training.evaluation``.
hidden_dim stays 256 (the official decoder needs it); fewer layers and a smaller feed-forward keep it quick.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import predict_cli, train_cli  # noqa: E402
from training.dataset import read_jsonl  # noqa: E402
from training.evaluation import evaluate  # noqa: E402
from training.synthetic import SyntheticSpec, write_synthetic_split  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-queries", type=int, default=256)
    parser.add_argument("--test-queries", type=int, default=100)
    parser.add_argument("--max-clips", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--bsz", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--keep", type=Path, help="write data and checkpoints here instead of a temp dir")
    return parser.parse_args(argv)


def train_args(split, out_dir: Path, args: argparse.Namespace) -> list[str]:
    """trdetr-train flags for the synthetic set: small layers, light dropout, no periodic evaluation."""
    config = split.dataset_config()
    return [
        "--train-path", str(config.annotation_path), "--v-feat-dirs", *map(str, config.v_feat_dirs),
        "--t-feat-dir", str(config.t_feat_dir), "--max-v-l", str(args.max_clips), "--cache-features",
        "--enc-layers", "1", "--dec-layers", "2", "--dim-feedforward", "256", "--num-queries", "5",
        "--dropout", "0.0", "--input-dropout", "0.1",
        "--n-epoch", str(args.epochs), "--bsz", str(args.bsz), "--lr", str(args.lr), "--seed", str(args.seed),
        "--out-dir", str(out_dir), "--no-progress",
    ]


def run(args: argparse.Namespace, root: Path) -> dict:
    spec = SyntheticSpec(min_clips=min(16, args.max_clips), max_clips=args.max_clips)
    train = write_synthetic_split(root / "data", "train", args.train_queries, seed=args.seed + 1, spec=spec)
    test = write_synthetic_split(root / "data", "test", args.test_queries, seed=args.seed + 2, spec=spec,
                                 first_qid=1_000_000)
    parsed = train_cli.build_parser().parse_args(train_args(train, root / "run", args))
    trainer = train_cli.build_trainer(parsed)
    started = time.perf_counter()
    result = trainer.fit()
    train_seconds = time.perf_counter() - started
    config = test.dataset_config()
    preds = root / "test_preds.jsonl"
    code = predict_cli.main([str(result.latest_checkpoint), "--data-path", str(config.annotation_path),
                             "--v-feat-dirs", *map(str, config.v_feat_dirs), "--t-feat-dir", str(config.t_feat_dir),
                             "--max-v-l", str(args.max_clips), "--out", str(preds), "--no-progress"])
    if code:
        raise SystemExit(f"trdetr-predict failed with exit code {code}")
    brief = evaluate(read_jsonl(preds), read_jsonl(config.annotation_path))["brief"]
    return {"R1@0.5": brief["MR-full-R1@0.5"] / 100, "R1@0.7": brief["MR-full-R1@0.7"] / 100,
            "mAP": brief["MR-full-mAP"] / 100, "HL-mAP(VeryGood)": brief["HL-min-VeryGood-mAP"] / 100,
            "train_seconds": round(train_seconds, 1), "epochs": args.epochs,
            "train_queries": args.train_queries, "test_queries": args.test_queries,
            "checkpoint": str(result.latest_checkpoint)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.keep:
        report = run(args, args.keep)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            report = run(args, Path(tmp))
    print(json.dumps(report, indent=2))
    print(f"R1@0.5 = {report['R1@0.5']:.3f} on {args.test_queries} held-out synthetic videos after "
          f"{report['train_seconds']:.0f} s of training")
    return report


if __name__ == "__main__":
    main()
