"""The installed ``trdetr-eval`` command: official metrics on stdout, clear one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TRDETR_EVAL = Path(sys.executable).parent / "trdetr-eval"
ANNOTATION = {
    "qid": 1,
    "duration": 10,
    "relevant_windows": [[0, 8]],
    "relevant_clip_ids": [0],
    "saliency_scores": [[2, 2, 2]],
}
PREDICTION = {"qid": 1, "pred_relevant_windows": [[0, 8, 0.9]], "pred_saliency_scores": [0.5] * 5}


def run_eval(*args):
    if not TRDETR_EVAL.exists():
        pytest.fail(
            f"{TRDETR_EVAL} missing: run `.venv/bin/pip install -e . --no-deps -q` to register entry points"
        )
    return subprocess.run([str(TRDETR_EVAL), *map(str, args)], capture_output=True, text=True, timeout=120)


def write_jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_cli_prints_and_writes_the_official_metrics(official_val_files, tmp_path):
    out = tmp_path / "metrics.json"
    result = run_eval(official_val_files["predictions"], official_val_files["annotations"], "--out", out)
    assert result.returncode == 0, result.stderr
    official_text = official_val_files["metrics"].read_text()
    assert result.stdout == official_text + "\n"
    assert out.read_text() == official_text


@pytest.mark.parametrize(
    ("prediction_lines", "message"),
    [
        ([json.dumps(PREDICTION), "{not json"], "preds.jsonl line 2: not valid JSON"),
        ([{"pred_relevant_windows": [[0, 8, 0.9]]}], "preds.jsonl line 1: missing key 'qid'"),
        ([PREDICTION, PREDICTION], "preds.jsonl line 2: qid 1 already on line 1"),
        ([], "preds.jsonl: no records"),
    ],
)
def test_malformed_prediction_files_exit_1_naming_file_and_line(tmp_path, prediction_lines, message):
    preds = write_jsonl(tmp_path / "preds.jsonl", prediction_lines)
    gt = write_jsonl(tmp_path / "gt.jsonl", [ANNOTATION])
    result = run_eval(preds, gt)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_annotations_without_labels_are_named(tmp_path):
    preds = write_jsonl(tmp_path / "preds.jsonl", [PREDICTION])
    gt = write_jsonl(tmp_path / "gt.jsonl", [{"qid": 1, "duration": 10}])
    result = run_eval(preds, gt)
    assert result.returncode == 1
    assert (
        "gt.jsonl line 1: missing key 'relevant_windows' (is this an unlabelled test split?)" in result.stderr
    )


def test_missing_file_is_reported_without_traceback(tmp_path):
    result = run_eval(tmp_path / "nope.jsonl", tmp_path / "gt.jsonl")
    assert result.returncode == 1
    assert "nope.jsonl: no such file" in result.stderr and "Traceback" not in result.stderr


def test_small_valid_files_give_metrics_json(tmp_path):
    preds = write_jsonl(tmp_path / "preds.jsonl", [PREDICTION])
    gt = write_jsonl(tmp_path / "gt.jsonl", [ANNOTATION])
    result = run_eval(preds, gt)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["brief"]["MR-full-R1@0.7"] == 100.0
    assert metrics["HL-min-Fair"]["HL-Hit1"] == 100.0


def test_saliency_of_the_wrong_length_exits_1_unless_the_videos_were_cut(tmp_path):
    preds = write_jsonl(tmp_path / "preds.jsonl", [{**PREDICTION, "pred_saliency_scores": [0.5] * 3}])
    gt = write_jsonl(tmp_path / "gt.jsonl", [ANNOTATION])
    result = run_eval(preds, gt)
    assert result.returncode == 1 and result.stdout == ""
    assert "qid 1: 'pred_saliency_scores' has 3 scores but its video (10 s) has 5 clips" in result.stderr
    assert run_eval(preds, gt, "--max-v-l", "3").returncode == 0
