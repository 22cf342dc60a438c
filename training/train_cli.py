"""``trdetr-train``: train TR-DETR on QVHighlights-format data (see ``training/README.md``).

Example (the official QVHighlights recipe, SlowFast + CLIP video features, CLIP text features)::

    trdetr-train --train-path data/highlight_train_release.jsonl --eval-path data/highlight_val_release.jsonl \\
        --v-feat-dirs features/slowfast_features features/clip_features --t-feat-dir features/clip_text_features \\
        --out-dir runs/qvhl --device cuda
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from training.options import MODEL_FLAGS, LossConfig, TrainConfig, loss_flags, train_flags
from trdetr_common.cli import HelpFormatter, exits_quietly_on_broken_pipe

if TYPE_CHECKING:  # torch is imported only once the arguments are parsed, so --help answers at once
    from training.dataset import DatasetConfig
    from training.trainer import Trainer

logger = logging.getLogger("trdetr-train")

LOSS_FLAGS = loss_flags()
TRAIN_FLAGS = train_flags()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trdetr-train", description=__doc__, formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--train-path", type=Path, required=True, help="training annotations (.jsonl)")
    data.add_argument("--eval-path", type=Path, help="validation annotations with labels (.jsonl)")
    data.add_argument("--v-feat-dirs", type=Path, nargs="+", required=True,
                      help="one folder per video feature group (<vid>.npz, key 'features'), in model order")
    data.add_argument("--t-feat-dir", type=Path, required=True, help="text features folder (qid<qid>.npz)")
    data.add_argument("--max-q-l", type=int, default=32, help="query tokens kept (longer queries are cut)")
    data.add_argument("--max-v-l", type=int, default=75,
                      help="clips per video kept (longer videos are cut); also the model's window")
    data.add_argument("--clip-length", type=float, default=2.0, help="seconds per clip")
    data.add_argument("--max-windows", type=int, default=5, help="ground-truth moments kept per query")
    data.add_argument("--no-norm-vfeat", action="store_true", help="do not L2-normalise video groups")
    data.add_argument("--no-norm-tfeat", action="store_true", help="do not L2-normalise text tokens")
    data.add_argument("--no-tef", action="store_true", help="do not append the 2 TEF columns")
    data.add_argument("--skip-bad-files", action="store_true",
                      help="leave out queries whose feature files are missing/corrupt (default: stop)")
    data.add_argument("--cache-features", action="store_true", help="keep loaded features in memory")
    model = parser.add_argument_group("model (official opt names)")
    for name, (kind, default, text) in MODEL_FLAGS.items():
        model.add_argument(_flag(name), type=kind, default=default, dest=name, help=text)
    loss = parser.add_argument_group("losses and matcher (official opt names)")
    for name, (kind, default, text) in LOSS_FLAGS.items():
        loss.add_argument(_flag(name), type=kind, default=default, dest=name, help=text)
    loss.add_argument("--no-aux-loss", dest="aux_loss", action="store_false",
                      help="no losses on the intermediate decoder layers")
    train = parser.add_argument_group("optimisation")
    for name, (kind, default, text) in TRAIN_FLAGS.items():
        train.add_argument(_flag(name), type=kind, default=default, dest=name, help=text)
    train.add_argument("--out-dir", type=Path, required=True, help="checkpoints and metrics.csv go here")
    train.add_argument("--resume", type=Path, help="continue from a checkpoint written by trdetr-train")
    train.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return parser


def dataset_config(args: argparse.Namespace, path: Path) -> DatasetConfig:
    from training.dataset import DatasetConfig

    return DatasetConfig(
        annotation_path=path, v_feat_dirs=tuple(args.v_feat_dirs), t_feat_dir=args.t_feat_dir,
        max_q_l=args.max_q_l, max_v_l=args.max_v_l, clip_length=args.clip_length, max_windows=args.max_windows,
        normalize_v=not args.no_norm_vfeat, normalize_t=not args.no_norm_tfeat, use_tef=not args.no_tef,
        on_bad_file="skip" if args.skip_bad_files else "fail", cache_features=args.cache_features)


def model_config(args: argparse.Namespace, sample: dict):
    """TRDETRConfig whose input widths come from the data (video width includes TEF)."""
    from model_export import TRDETRConfig

    return TRDETRConfig(
        v_feat_dim=sample["video"].shape[1], t_feat_dim=sample["text"].shape[1],
        **{name: getattr(args, name) for name in MODEL_FLAGS}, aux_loss=args.aux_loss, max_v_l=args.max_v_l,
        max_q_l=args.max_q_l, clip_length=args.clip_length, use_tef=not args.no_tef,
        ctx_mode="video" if args.no_tef else "video_tef")


def build_trainer(args: argparse.Namespace) -> Trainer:
    """Datasets, model, criterion and Trainer from parsed CLI arguments (resumed when asked)."""
    from model_export import build_model, read_checkpoint
    from training.dataset import QVHighlightsDataset
    from training.losses import TRDETRCriterion
    from training.trainer import Trainer, seed_everything

    train_set = QVHighlightsDataset(dataset_config(args, args.train_path), seed=args.seed)
    val_set = QVHighlightsDataset(dataset_config(args, args.eval_path), seed=args.seed) if args.eval_path else None
    config = read_checkpoint(args.resume).config if args.resume else model_config(args, train_set[0])
    seed_everything(args.seed)
    model = build_model(config)
    loss_config = LossConfig(**{name: getattr(args, name) for name in LOSS_FLAGS}, aux_loss=args.aux_loss)
    train_config = TrainConfig(**{name: getattr(args, name) for name in TRAIN_FLAGS}, progress=args.progress)
    trainer = Trainer(model, config, TRDETRCriterion(loss_config), train_config, train_set, args.out_dir, val_set)
    if args.resume:
        trainer.resume(args.resume)
    return trainer


@exits_quietly_on_broken_pipe
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``trdetr-train``; returns the exit status (0 trained, 2 bad arguments or data)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    import torch

    from training.dataset import DatasetError

    if args.device == "cuda" and not torch.cuda.is_available():
        print("trdetr-train: --device cuda asked for but CUDA is not available; use --device cpu",
              file=sys.stderr)
        return 2
    try:
        trainer = build_trainer(args)
    except (DatasetError, ValueError) as error:
        print(f"trdetr-train: {error}", file=sys.stderr)
        return 2
    result = trainer.fit()
    print(f"trained {result.seconds:.1f}s; latest checkpoint {result.latest_checkpoint}")
    if result.best_checkpoint is not None:
        print(f"best {trainer.config.best_metric} = {result.best_score:.4f}: {result.best_checkpoint}")
    checkpoint = result.best_checkpoint or result.latest_checkpoint
    print(f"bundle for the service (the checkpoint records its video feature groups): "
          f"trdetr-export {checkpoint} --out BUNDLE_DIR")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
