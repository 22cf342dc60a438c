"""``trdetr-extract``: video files -> one ``.npz`` of per-clip features each, as the bundle's manifest says.

    trdetr-extract VIDEO... --bundle DIR --out DIR [--device auto|cpu|cuda] [--threads N]
                   [--batch-size N] [--max-duration SECONDS] [--quiet]

Writes ``OUT/<video stem>.npz`` (exactly the bytes a ``PUT /v1/videos/{id}/features`` upload takes).
Exit status: 0 every video done, 1 some video failed (each failure printed with its code), 2 bad
arguments or an unusable bundle.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from trdetr_common.cli import HelpFormatter

from .errors import ExtractionError
from .pipeline import Extractor, npz_bytes

EXIT_FAILED = 1
EXIT_USAGE = 2


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trdetr-extract", formatter_class=HelpFormatter,
        description="Extract per-clip video features (e.g. SlowFast 2304 + CLIP 512 per 2 s) from video files with "
        "a bundle's encoders, on ONNX Runtime, and write one .npz per video ready for PUT /v1/videos/{id}/features.",
    )
    parser.add_argument("videos", nargs="+", type=Path, metavar="VIDEO", help="video files (anything FFmpeg reads)")
    parser.add_argument("--bundle", type=Path, required=True, metavar="DIR", help="bundle written by trdetr-export")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory (created)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA EP when usable, else CPU; cuda: fail without a usable GPU")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="ONNX Runtime CPU threads per encoder (0 = one per core)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N",
                        help="clips (SlowFast) or frames (CLIP) per encoder run")
    parser.add_argument("--max-duration", type=float, default=None, metavar="SECONDS",
                        help="refuse videos longer than this (default: no limit)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _extract_one(extractor: Extractor, video: Path, out_dir: Path, args: argparse.Namespace) -> str:
    """Extract one video and write its .npz; returns the summary line."""
    with tqdm(total=100, desc=video.name, unit="%", disable=args.quiet, file=sys.stderr, leave=False) as bar:
        def progress(fraction: float) -> None:
            bar.update(round(fraction * 100) - bar.n)

        result = extractor.extract(video, max_duration_s=args.max_duration, progress=progress)
    target = out_dir / f"{video.stem}.npz"
    target.write_bytes(npz_bytes(result))
    shapes = ", ".join(f"{name} {array.shape[1]}" for name, array in result.groups.items())
    speed = result.duration_s / max(result.timings_s["total"], 1e-9)
    notes = f" ({'; '.join(result.notes)})" if result.notes else ""
    return f"{video} -> {target}: {result.num_clips} clips [{shapes}], {speed:.2f}x real time{notes}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trdetr-extract``; returns the exit status."""
    args = parser().parse_args(argv)
    if args.batch_size < 1 or args.threads < 0:
        print("trdetr-extract: error: --batch-size must be >= 1 and --threads >= 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        extractor = Extractor(args.bundle, device=args.device, intra_op_threads=args.threads, batch_size=args.batch_size)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"trdetr-extract: error: cannot use the bundle {args.bundle}: {error}", file=sys.stderr)
        return EXIT_USAGE
    if extractor.missing_groups:
        print(f"trdetr-extract: error: the bundle has no encoder for the feature group(s) "
              f"{', '.join(extractor.missing_groups)}; export one with trdetr-export --clip/--slowfast (--pann for audio)", file=sys.stderr)
        return EXIT_USAGE
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for video in args.videos:
        try:
            print(_extract_one(extractor, video, args.out, args))
        except ExtractionError as error:
            failed += 1
            print(f"trdetr-extract: {video}: {error.code}: {error.message}", file=sys.stderr)
    return EXIT_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
