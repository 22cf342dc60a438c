"""``trdetr-export``: write a model bundle from a checkpoint, or verify an existing bundle.

    trdetr-export CHECKPOINT --out BUNDLE_DIR [--fp16] [--clip HF_CLIP_DIR] [--slowfast SLOWFAST_CKPT] [--pann PTH]
                  [--opset N] [--video-groups slowfast:2304,clip:512] [--fixtures DIR] [--random-cases N]
                  [--atol 1e-4] [--fp16-min-decisive-rows 10]
    trdetr-export verify BUNDLE_DIR [--checkpoint CKPT] [--fixtures DIR] [--clip HF_CLIP_DIR]
                  [--slowfast SLOWFAST_CKPT]

``--text-encoder`` is an alias of ``--clip``.

Exit status: 0 all checks passed, 1 a parity gate or verification failed, 2 bad arguments or
unusable inputs (the message says what to fix).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from trdetr_common.cli import HelpFormatter, exits_quietly_on_broken_pipe

EXIT_FAILED = 1
EXIT_USAGE = 2


def _common_check_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fixtures", type=Path, metavar="DIR",
        help="official golden fixture directory (cases.npz, padded_batch.npz): ORT is also compared with "
        "the official outputs stored there, within the fp32 tolerance",
    )
    parser.add_argument(
        "--clip", "--text-encoder", dest="text_encoder", type=Path, metavar="HF_CLIP_DIR",
        help="local Hugging Face CLIP directory (openai/clip-vit-base-patch32 layout). On export: write its "
        "towers, text_encoder.onnx + tokenizer.json (query text) and image_encoder.onnx (video group 'clip', "
        "512-d image embeddings), and check them against transformers (--text-encoder is an alias)",
    )
    parser.add_argument(
        "--slowfast", type=Path, metavar="SLOWFAST_CKPT",
        help="SlowFast 8x8 checkpoint: PySlowFast's SLOWFAST_8x8_R50.pkl (Caffe2, read without running pickle "
        "code) or pytorchvideo's SLOWFAST_8x8_R50.pyth. On export: write slowfast.onnx (video group "
        "'slowfast', 2304-d) and check it against torch",
    )
    parser.add_argument(
        "--pann", type=Path, metavar="PANN_PTH",
        help="PANN Cnn14 checkpoint (Cnn14_mAP=0.431.pth, zenodo 3987831) of an audio model's features. On export: "
        "write audio_encoder.onnx (audio group 'pann', 2048-d; log-mel front end inside) and check it against torch",
    )
    parser.add_argument(
        "--random-cases", type=int, default=50, metavar="N",
        help="random input batches for the parity gates: edge shapes of 1 clip, 1 token, the model's max_v_l and "
        "half of it, padded mixed batches, then random batch sizes and lengths (never longer than max_v_l: longer "
        "videos are served as windows of max_v_l clips)",
    )
    parser.add_argument(
        "--int8-data", type=Path, metavar="JSONL",
        help="labelled QVHighlights-format annotation file in the model's feature layout (with --int8-v-feat-dirs "
        "and --int8-t-feat-dir): every 4th row calibrates the int8 graph, the others gate it (top-1 moment, "
        "saliency Spearman, and R1@0.5 within 1 point of fp32)",
    )
    parser.add_argument("--int8-v-feat-dirs", type=Path, nargs="+", metavar="DIR",
                        help="video feature folders of --int8-data, in the model's group order")
    parser.add_argument("--int8-t-feat-dir", type=Path, metavar="DIR", help="text feature folder of --int8-data")
    parser.add_argument("--atol", type=float, default=1e-4, help="fp32 gate: max abs difference")
    parser.add_argument(
        "--fp16-min-decisive-rows", type=int, default=10, metavar="N",
        help="fp16 gate: rows whose reference top-1 foreground probability beats the runner-up by >= 1e-3 that "
        "it needs (a random-weight model has almost none: 0 for demo bundles, recorded in parity.json)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trdetr-export", formatter_class=HelpFormatter,
        description="Export a TR-DETR checkpoint to an ONNX model bundle (model.onnx, manifest.json, "
        "parity.json, optionally model.fp16.onnx, text_encoder.onnx, tokenizer.json) and run the parity "
        "gates; exits 1 naming the failing output, case and difference when a gate fails. "
        "To re-check an existing bundle: trdetr-export verify BUNDLE_DIR --help",
    )
    parser.add_argument("checkpoint", type=Path, help="official, Lighthouse or trdetr-service checkpoint file")
    parser.add_argument("--out", type=Path, required=True, metavar="BUNDLE_DIR", help="bundle directory to write")
    parser.add_argument(
        "--fp16", action="store_true",
        help="also write model.fp16.onnx: fp16 weights and compute, float32 inputs/outputs, LayerNorm, Softmax, "
        "inverse sigmoid (Log) and GRU kept in fp32; gated on top-1 moment, span IoU and saliency rank",
    )
    parser.add_argument(
        "--int8", action="store_true",
        help="also write model.int8.onnx for the CPU: int8 per-channel weights in every weight MatMul, float32 I/O; "
        "gated on top-1 moment (decisive rows), saliency Spearman and, with --int8-data, R1@0.5",
    )
    parser.add_argument(
        "--int8-mode", choices=("static", "dynamic"), default="static",
        help="static: QDQ with activation ranges calibrated on real-distribution inputs (default); dynamic: "
        "activation ranges per run, no calibration",
    )
    parser.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset (default 18)")
    parser.add_argument(
        "--video-groups", metavar="NAME:DIM,...",
        help="ordered video feature groups, e.g. slowfast:2304,clip:512 (must add up to the video width without "
        "the 2 TEF columns). Default: official checkpoints slowfast then clip, Lighthouse clip then slowfast; "
        "otherwise one group 'video' of the full width (recorded as 'unknown' in the manifest)",
    )
    parser.add_argument(
        "--audio-groups", metavar="NAME:DIM,...",
        help="ordered audio feature groups of a checkpoint trained with audio, e.g. pann:2048 (without TEF). "
        "Default: one group 'pann' (2048) or 'audio'; official checkpoints have the TEF columns after the audio "
        "too (a_feat_dim 2050), Lighthouse ones do not (a_feat_dim 2048)",
    )
    parser.add_argument(
        "--skip-parity", action="store_true", help="write the bundle without running any gate (not for release)"
    )
    _common_check_flags(parser)
    return parser


def verify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trdetr-export verify", formatter_class=HelpFormatter,
        description="Re-check an existing bundle: manifest schema, sha256 of every file, graph inputs/outputs, "
        "then the parity gates (torch vs ORT with --checkpoint, the official outputs with --fixtures, the fp16 "
        "graph against the fp32 graph otherwise). Exits 1 on any failure.",
    )
    parser.add_argument("bundle", type=Path, help="bundle directory written by trdetr-export")
    parser.add_argument(
        "--checkpoint", type=Path, metavar="CKPT",
        help="the checkpoint the bundle was exported from (its sha256 must match the manifest)",
    )
    parser.add_argument("--report", type=Path, metavar="FILE", help="write the full JSON report here")
    _common_check_flags(parser)
    return parser


def _run_export(args: argparse.Namespace) -> int:
    from model_export.export import export_bundle, parse_audio_groups, parse_video_groups
    from model_export.export.image_encoder import clip_towers
    from model_export.pann import load_pann
    from model_export.slowfast import load_slowfast

    if args.int8_data is not None and not args.int8:
        raise ValueError("--int8-data calibrates and gates the int8 graph: add --int8")
    groups = parse_video_groups(args.video_groups) if args.video_groups else None
    audio_groups = parse_audio_groups(args.audio_groups) if args.audio_groups else None
    towers = clip_towers(args.text_encoder) if args.text_encoder else set()
    if args.text_encoder and not towers:
        raise ValueError(f"{args.text_encoder} is not a Hugging Face CLIP directory (config.json model_type)")
    manifest = export_bundle(
        args.checkpoint, args.out, fp16=args.fp16, text_encoder_dir=args.text_encoder if "text" in towers else None,
        opset=args.opset, video_groups=groups, fixtures_dir=args.fixtures, num_random_cases=args.random_cases,
        run_parity=not args.skip_parity, thresholds=_thresholds(args), progress=not args.quiet,
        image_encoder_dir=args.text_encoder if "vision" in towers else None,
        slowfast=load_slowfast(args.slowfast) if args.slowfast else None, audio_groups=audio_groups,
        pann=load_pann(args.pann) if args.pann else None,
        int8=args.int8, int8_mode=args.int8_mode, int8_data=_int8_data(args),
    )
    _print_gates(manifest.parity.get("gates", []), manifest.parity.get("skipped", []))
    print(f"bundle written: {args.out} (files: {', '.join(sorted(manifest.files))})")
    return 0


def _run_verify(args: argparse.Namespace) -> int:
    from model_export.export import verify_bundle
    from model_export.export.parity import summarize
    from model_export.pann import load_pann
    from model_export.slowfast import load_slowfast

    report = verify_bundle(
        args.bundle, args.checkpoint, args.fixtures, text_encoder_dir=args.text_encoder,
        num_random_cases=args.random_cases, thresholds=_thresholds(args), progress=not args.quiet,
        slowfast=load_slowfast(args.slowfast) if args.slowfast else None, int8_data=_int8_data(args),
        pann=load_pann(args.pann) if args.pann else None,
    )
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    _print_gates(summarize(report["gates"])["gates"], report["skipped"])
    print(f"bundle verified: {args.bundle}")
    return 0


def _thresholds(args: argparse.Namespace):
    """The gates' pass marks: Thresholds defaults with the command line's --atol and --fp16-min-decisive-rows."""
    from model_export.export.parity import Thresholds

    if args.fp16_min_decisive_rows < 0:
        raise ValueError(f"--fp16-min-decisive-rows must be >= 0, got {args.fp16_min_decisive_rows}")
    return Thresholds(fp32_atol=args.atol, fp16_min_decisive_rows=args.fp16_min_decisive_rows)


def _int8_data(args: argparse.Namespace):
    """--int8-data and its feature folders as a training.dataset.DatasetConfig (None without --int8-data)."""
    if args.int8_data is None:
        return None
    if not args.int8_v_feat_dirs or args.int8_t_feat_dir is None:
        raise ValueError("--int8-data needs --int8-v-feat-dirs DIR [DIR ...] and --int8-t-feat-dir DIR")
    from training.dataset import DatasetConfig

    return DatasetConfig(annotation_path=args.int8_data, v_feat_dirs=tuple(args.int8_v_feat_dirs),
                         t_feat_dir=args.int8_t_feat_dir, max_v_l=None)


def _print_gates(gates: list[dict], skipped: list[str]) -> None:
    for gate in gates:
        numbers = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in gate["measured"].items())
        print(f"[{'PASS' if gate['passed'] else 'FAIL'}] {gate['name']}: {numbers}")
    for note in skipped:
        print(f"[SKIP] {note}")


def _check_paths(args: argparse.Namespace, verifying: bool) -> None:
    """Say what to fix when a path argument is of the wrong kind (before anything is loaded).

    Raises:
        ValueError: a checkpoint that is a directory (or a bundle that is a file), or a missing input.
    """
    checkpoint = args.checkpoint
    if checkpoint is not None and checkpoint.is_dir():
        is_bundle = (checkpoint / "manifest.json").exists()
        hint = "; to re-check a bundle directory: trdetr-export verify BUNDLE_DIR" if is_bundle else ""
        raise ValueError(f"checkpoint {checkpoint} is a directory: give the checkpoint file (.ckpt/.pth){hint}")
    if checkpoint is not None and not checkpoint.exists():
        raise ValueError(f"checkpoint {checkpoint}: no such file")
    if verifying and not args.bundle.is_dir():
        raise ValueError(f"bundle {args.bundle} is not a directory (give the folder written by trdetr-export)")
    if not verifying and args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file: give a directory for the bundle")


@exits_quietly_on_broken_pipe
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trdetr-export``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verifying = bool(argv) and argv[0] == "verify"
    args = verify_parser().parse_args(argv[1:]) if verifying else export_parser().parse_args(argv)

    from model_export import CheckpointError
    from model_export.export import ExportError, LayoutError, ParityError, TextEncoderError, VerificationError
    from model_export.export.image_encoder import ImageEncoderError
    from model_export.pann import PannWeightsError

    try:
        _check_paths(args, verifying)
        return _run_verify(args) if verifying else _run_export(args)
    except (ParityError, VerificationError, ExportError) as error:
        print(f"trdetr-export: FAILED: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (CheckpointError, LayoutError, TextEncoderError, ImageEncoderError, PannWeightsError, FileNotFoundError, ValueError) as error:
        print(f"trdetr-export: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
