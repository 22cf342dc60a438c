"""Our metrics equal the official TR-DETR metrics file of its released val predictions, exactly."""

import json

from training.evaluation import evaluate


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluate_reproduces_the_official_metrics_file_exactly(official_val_files):
    metrics = evaluate(_jsonl(official_val_files["predictions"]), _jsonl(official_val_files["annotations"]))
    official_text = official_val_files["metrics"].read_text()
    assert metrics == json.loads(official_text)
    # same key order and number formatting too: the JSON text is identical
    assert json.dumps(metrics, indent=4) == official_text
