"""``trdetr-synth``: write a synthetic dataset in the QVHighlights on-disk format (see ``training.synthetic``).

Each query's moment is planted in noise, often next to a distractor moment of another concept, so only the
text says which one is wanted; a model that learns the task scores well above chance. Example::

    trdetr-synth data/synth --train 256 --val 100 --max-clips 32
    trdetr-train --train-path data/synth/train.jsonl --eval-path data/synth/val.jsonl \\
        --v-feat-dirs data/synth/video/group0_dim24 data/synth/video/group1_dim8 \\
        --t-feat-dir data/synth/text --max-v-l 32 --out-dir runs/synth

The exact trdetr-train command is printed at the end. The output is a pure function of the flags.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from training.synthetic import SyntheticSpec, SyntheticSplit, write_synthetic_split
from trdetr_common.cli import HelpFormatter, exits_quietly_on_broken_pipe

SPLITS = ("train", "val", "test")
QID_STRIDE = 1_000_000  # split i uses qids i * QID_STRIDE ...: held-out qids and videos never repeat

_DEFAULT = SyntheticSpec()


def _dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated widths, e.g. 24,8") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every width must be a positive integer")
    return dims


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trdetr-synth", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="dataset folder to write (created)")
    sizes = parser.add_argument_group("splits (queries each; 0 leaves a split out)")
    sizes.add_argument("--train", type=int, default=256, metavar="N", help="queries of train.jsonl")
    sizes.add_argument("--val", type=int, default=100, metavar="N", help="queries of val.jsonl")
    sizes.add_argument("--test", type=int, default=0, metavar="N", help="queries of test.jsonl")
    sizes.add_argument("--seed", type=int, default=0, help="split i is drawn with seed + i + 1")
    world = parser.add_argument_group("the synthetic world")
    world.add_argument("--group-dims", type=_dims, default=_DEFAULT.group_dims, metavar="D1,D2,...",
                       help="width of each video feature group (one folder per group)")
    world.add_argument("--text-dim", type=int, default=_DEFAULT.text_dim, help="width of the text tokens")
    world.add_argument("--num-concepts", type=int, default=_DEFAULT.num_concepts,
                       help="concepts a query can ask for")
    world.add_argument("--min-clips", type=int, default=_DEFAULT.min_clips, help="shortest video, in clips")
    world.add_argument("--max-clips", type=int, default=_DEFAULT.max_clips,
                       help="longest video, in clips (train with --max-v-l at least this)")
    world.add_argument("--min-tokens", type=int, default=_DEFAULT.min_tokens, help="shortest query, in tokens")
    world.add_argument("--max-tokens", type=int, default=_DEFAULT.max_tokens, help="longest query, in tokens")
    world.add_argument("--moment-noise", type=float, default=_DEFAULT.moment_noise,
                       help="noise on the planted moment's clips, relative to the prototype's scale")
    world.add_argument("--text-noise", type=float, default=_DEFAULT.text_noise, help="noise on the query tokens")
    world.add_argument("--distractor-prob", type=float, default=_DEFAULT.distractor_prob,
                       help="chance that a moment of another concept is planted too")
    world.add_argument("--clip-length", type=float, default=_DEFAULT.clip_length, help="seconds per clip")
    world.add_argument("--concept-seed", type=int, default=_DEFAULT.concept_seed,
                       help="seed of the concept prototypes (shared by all splits)")
    return parser


def spec_from_args(args: argparse.Namespace) -> SyntheticSpec:
    """The ``SyntheticSpec`` the flags describe.

    Raises:
        ValueError: a range that cannot be drawn from (e.g. --min-clips above --max-clips).
    """
    if not 4 <= args.min_clips <= args.max_clips:
        raise ValueError(f"need 4 <= --min-clips <= --max-clips, got {args.min_clips} and {args.max_clips}")
    if not 1 <= args.min_tokens <= args.max_tokens:
        raise ValueError(f"need 1 <= --min-tokens <= --max-tokens, got {args.min_tokens} and {args.max_tokens}")
    if args.num_concepts < 2 or args.text_dim < 1:
        raise ValueError("need --num-concepts >= 2 and --text-dim >= 1")
    if not 0.0 <= args.distractor_prob <= 1.0 or args.moment_noise < 0 or args.text_noise < 0:
        raise ValueError("need 0 <= --distractor-prob <= 1 and non-negative noise levels")
    if args.clip_length <= 0:
        raise ValueError(f"--clip-length must be positive, got {args.clip_length}")
    return SyntheticSpec(
        group_dims=args.group_dims, text_dim=args.text_dim, num_concepts=args.num_concepts,
        min_clips=args.min_clips, max_clips=args.max_clips, min_tokens=args.min_tokens,
        max_tokens=args.max_tokens, moment_noise=args.moment_noise, text_noise=args.text_noise,
        distractor_prob=args.distractor_prob, clip_length=args.clip_length, concept_seed=args.concept_seed)


def write_dataset(out: Path, sizes: dict[str, int], spec: SyntheticSpec, seed: int) -> dict[str, SyntheticSplit]:
    """Write every split with a positive size; split ``i`` of ``SPLITS`` gets seed ``seed + i + 1``."""
    return {split: write_synthetic_split(out, split, sizes[split], seed=seed + i + 1, spec=spec,
                                         first_qid=i * QID_STRIDE)
            for i, split in enumerate(SPLITS) if sizes[split] > 0}


def train_command(splits: dict[str, SyntheticSplit], spec: SyntheticSpec) -> str:
    """The ``trdetr-train`` command line for the written dataset (``--out-dir`` left to fill in)."""
    first = next(iter(splits.values()))
    words = ["trdetr-train", "--train-path", str(splits["train"].annotation_path)] if "train" in splits else \
        ["trdetr-train", "--train-path", "TRAIN.jsonl"]
    if "val" in splits:
        words += ["--eval-path", str(splits["val"].annotation_path)]
    words += ["--v-feat-dirs", *(str(first.root / "video" / name) for name in spec.group_names),
              "--t-feat-dir", str(first.root / "text"), "--max-v-l", str(spec.max_clips),
              "--clip-length", str(spec.clip_length), "--out-dir", "RUN_DIR"]
    return shlex.join(words)


@exits_quietly_on_broken_pipe
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``trdetr-synth``; returns the exit status (0 written, 2 bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    sizes = {split: getattr(args, split) for split in SPLITS}
    if min(sizes.values()) < 0 or not any(sizes.values()):
        parser.error("split sizes must be >= 0 and at least one positive")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"{args.out} is a file: give a directory")
    try:
        spec = spec_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    try:
        splits = write_dataset(args.out, sizes, spec, args.seed)
    except OSError as error:
        print(f"trdetr-synth: error: cannot write {args.out} ({error.strerror})", file=sys.stderr)
        return 2
    except RuntimeError as error:  # a distractor moment does not fit next to the query's moment
        print(f"trdetr-synth: error: {error}", file=sys.stderr)
        return 2
    for split in splits.values():
        print(f"{split.split}: {sizes[split.split]} queries in {split.annotation_path}")
    print(f"train on it: {train_command(splits, spec)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
