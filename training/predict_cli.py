"""``trdetr-predict``: official-format predictions of a checkpoint or an ONNX bundle over a dataset.

Examples::

    trdetr-predict runs/qvhl/model_best.ckpt --data-path data/highlight_val_release.jsonl \\
        --v-feat-dirs features/slowfast_features features/clip_features --t-feat-dir features/clip_text_features \\
        --out val_preds.jsonl
    trdetr-predict bundles/trdetr ...same data flags... --out val_preds.jsonl   # ONNX bundle on ORT
    trdetr-eval val_preds.jsonl data/highlight_val_release.jsonl

Preprocessing settings (``--max-q-l``, ``--no-tef``...) default to the official ones; the feature widths are
checked against the model before anything runs. Videos longer than the model's window (the ``max_v_l`` it was
trained with) are searched on overlapping windows (``--window-stride``) and the answers merged
(``--moment-merge``), as the service does; ``--max-v-l 75`` instead cuts every video to its first 75 clips,
as the official evaluation does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trdetr_common.cli import HelpFormatter, exits_quietly_on_broken_pipe
from trdetr_common.windows import DEFAULT_MERGE, DEFAULT_STRIDE_FRACTION, MERGE_RULES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trdetr-predict", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("model", type=Path, help="checkpoint file (.ckpt) or bundle directory (manifest.json)")
    parser.add_argument("--data-path", type=Path, required=True, help="annotations (.jsonl); labels not needed")
    parser.add_argument("--v-feat-dirs", type=Path, nargs="+", required=True,
                        help="one folder per video feature group, in the model's order")
    parser.add_argument("--t-feat-dir", type=Path, required=True, help="text features folder (qid<qid>.npz)")
    parser.add_argument("--out", type=Path, required=True, help="predictions jsonl to write")
    parser.add_argument("--max-q-l", type=int, default=32, help="query tokens kept (longer queries are cut)")
    parser.add_argument("--max-v-l", type=int, default=None,
                        help="cut every video to its first N clips (official: 75); default: keep every clip "
                        "and window videos longer than the model's window")
    parser.add_argument("--window-stride", type=float, default=DEFAULT_STRIDE_FRACTION,
                        help="stride between windows of a long video, as a fraction of the model's window")
    parser.add_argument("--moment-merge", choices=MERGE_RULES, default=DEFAULT_MERGE,
                        help="how moments of overlapping windows are merged")
    parser.add_argument("--clip-length", type=float, default=2.0, help="seconds per clip")
    parser.add_argument("--no-norm-vfeat", action="store_true", help="do not L2-normalise video groups")
    parser.add_argument("--no-norm-tfeat", action="store_true", help="do not L2-normalise text tokens")
    parser.add_argument("--no-tef", action="store_true", help="do not append the 2 TEF columns")
    parser.add_argument("--batch-size", type=int, default=100, help="queries per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device for checkpoints (bundles run on ORT CPU)")
    parser.add_argument("--skip-bad-files", action="store_true", help="leave out queries with bad feature files")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


@exits_quietly_on_broken_pipe
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``trdetr-predict``; returns the exit status (0 written, 2 bad arguments or data)."""
    args = build_parser().parse_args(argv)
    from training.dataset import DatasetConfig, DatasetError, QVHighlightsDataset  # torch: after --help
    from training.predict import PredictError, load_backend, predict, write_jsonl

    try:
        dataset = QVHighlightsDataset(DatasetConfig(
            annotation_path=args.data_path, v_feat_dirs=tuple(args.v_feat_dirs), t_feat_dir=args.t_feat_dir,
            max_q_l=args.max_q_l, max_v_l=args.max_v_l, clip_length=args.clip_length,
            normalize_v=not args.no_norm_vfeat, normalize_t=not args.no_norm_tfeat, use_tef=not args.no_tef,
            load_labels=False, on_bad_file="skip" if args.skip_bad_files else "fail"))
        backend = load_backend(args.model, args.device)
        rows = predict(backend, dataset, args.batch_size, progress=args.progress,
                       stride_fraction=args.window_stride, merge=args.moment_merge)
    except (DatasetError, PredictError, ValueError) as error:
        print(f"trdetr-predict: {error}", file=sys.stderr)
        return 2
    write_jsonl(rows, args.out)
    skipped = f" ({len(dataset.skipped)} skipped)" if dataset.skipped else ""
    print(f"wrote {len(rows)} predictions{skipped} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
