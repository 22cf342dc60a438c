"""Paths to the read-only shared QVHighlights data used by the evaluation tests."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def official_val_files() -> dict[str, Path]:
    """The official TR-DETR val predictions, their official metrics and the val annotations."""
    files = {
        "predictions": SHARED / "official_trdetr_preds" / "best_hl_val_preds.jsonl",
        "metrics": SHARED / "official_trdetr_preds" / "best_hl_val_preds_metrics.json",
        "annotations": SHARED / "qvhighlights" / "highlight_val_release.jsonl",
    }
    missing = [str(path) for path in files.values() if not path.exists()]
    if missing:
        pytest.skip(f"shared QVHighlights data absent: {missing}")
    return files
