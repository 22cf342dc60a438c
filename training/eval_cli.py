"""``trdetr-eval``: QVHighlights metrics of a prediction jsonl, printed as the official JSON.

Usage::

    trdetr-eval PREDICTIONS.jsonl ANNOTATIONS.jsonl [--out METRICS.json] [--shared-qids-only]

Prints the metrics (official layout, 4-space indent, same text as the official
``*_metrics.json``) to stdout and optionally writes them to ``--out``. A malformed file gets one
line on stderr naming the file and line, and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.evaluation import EvaluationError, evaluate, validate_annotation, validate_prediction
from trdetr_common.cli import HelpFormatter, exits_quietly_on_broken_pipe

__all__ = ["main", "read_records"]


def read_records(path: Path, check: Callable[[Any], None]) -> list[dict]:
    """Parse a jsonl file, one JSON object a line (blank lines skipped), each passed to ``check``.

    Raises:
        EvaluationError: naming the file and 1-based line of the first bad line or repeated qid.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EvaluationError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise EvaluationError(f"{path}: not a UTF-8 text file") from None
    except OSError as error:
        raise EvaluationError(f"{path}: cannot read ({error.strerror})") from None
    records, first_line_of_qid = [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            check(record)
        except json.JSONDecodeError as error:
            raise EvaluationError(f"{path} line {number}: not valid JSON ({error.msg})") from None
        except EvaluationError as error:
            raise EvaluationError(f"{path} line {number}: {error}") from None
        qid = record["qid"]
        if qid in first_line_of_qid:
            raise EvaluationError(f"{path} line {number}: qid {qid} already on line {first_line_of_qid[qid]}")
        first_line_of_qid[qid] = number
        records.append(record)
    if not records:
        raise EvaluationError(f"{path}: no records (the file is empty)")
    return records


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trdetr-eval",
        description="QVHighlights moment retrieval and highlight detection metrics (official definitions).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("predictions", type=Path, help="prediction jsonl (qid, pred_relevant_windows, ...)")
    parser.add_argument("annotations", type=Path, help="annotation jsonl, e.g. highlight_val_release.jsonl")
    parser.add_argument("--out", type=Path, help="also write the metrics JSON to this file")
    parser.add_argument(
        "--shared-qids-only",
        action="store_true",
        help="evaluate the qids present in both files instead of requiring the same qids",
    )
    parser.add_argument(
        "--max-v-l", type=int, default=None, metavar="N",
        help="the predictions were made on videos cut to their first N clips (trdetr-predict --max-v-l N): "
        "N saliency scores are then accepted for longer videos. Default: one score per clip of every video",
    )
    return parser


@exits_quietly_on_broken_pipe
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 bad input, 2 bad usage, 141 stdout closed early)."""
    args = _parser().parse_args(argv)
    try:
        predictions = read_records(args.predictions, validate_prediction)
        first = predictions[0]
        annotations = read_records(
            args.annotations,
            lambda record: validate_annotation(
                record,
                moments="pred_relevant_windows" in first,
                highlights="pred_saliency_scores" in first,
            ),
        )
        metrics = evaluate(predictions, annotations, match_number=not args.shared_qids_only,
                           max_clips=args.max_v_l)
    except EvaluationError as error:
        print(f"trdetr-eval: error: {error}", file=sys.stderr)
        return 1
    text = json.dumps(metrics, indent=4)
    print(text)
    if args.out is not None:
        try:
            args.out.write_text(text)
        except OSError as error:
            print(f"trdetr-eval: error: cannot write {args.out} ({error.strerror})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
