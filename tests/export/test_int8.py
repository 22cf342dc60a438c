"""The int8 graph's gate (model_export.export.parity.int8_gate / r1_gate) and ``trdetr-export --int8``."""

from __future__ import annotations

import numpy as np
import pytest

from model_export.export.cases import Case
from model_export.export.int8 import calibration_batches
from model_export.export.parity import Thresholds, int8_gate, r1_gate

T = Thresholds(int8_min_decisive_rows=3)


def _case(rows: int, clips: int = 6) -> Case:
    inputs = {"src_txt": np.zeros((rows, 2, 4), np.float32), "src_txt_mask": np.ones((rows, 2), np.float32),
              "src_vid": np.zeros((rows, clips, 4), np.float32), "src_vid_mask": np.ones((rows, clips), np.float32)}
    return Case("c", inputs)


def _outputs(fg_logits: np.ndarray, saliency: np.ndarray) -> dict[str, np.ndarray]:
    """(B, Q) foreground logits (background 0) and (B, L) saliency -> model outputs."""
    logits = np.stack([fg_logits, np.zeros_like(fg_logits)], axis=-1).astype(np.float32)
    spans = np.tile(np.array([0.5, 0.2], np.float32), (*fg_logits.shape, 1))
    return {"pred_logits": logits, "pred_spans": spans, "saliency_scores": saliency.astype(np.float32)}


def _gate(ref: dict, cand: dict, rows: int, thresholds: Thresholds = T):
    return int8_gate("g", lambda _: ref, lambda _: cand, [_case(rows)], provider="CPUExecutionProvider",
                     thresholds=thresholds)


def test_gate_passes_when_decisive_rows_keep_their_top1_and_saliency_order():
    rng = np.random.default_rng(0)
    fg = rng.normal(size=(5, 4)) * 3
    saliency = rng.normal(size=(5, 6))
    gate = _gate(_outputs(fg, saliency), _outputs(fg + 0.01, saliency * 1.1 + 0.01), 5)
    assert gate.passed, gate.failures
    assert gate.measured["top1_identical_rate_decisive"] == 1.0
    assert gate.measured["mean_saliency_spearman"] == pytest.approx(1.0)


def test_gate_fails_naming_the_row_whose_decisive_top1_moved():
    fg = np.array([[4.0, 0.0, -1.0]] * 4)
    moved = fg.copy()
    moved[2] = [0.0, 4.0, -1.0]
    saliency = np.tile(np.arange(6.0), (4, 1))
    gate = _gate(_outputs(fg, saliency), _outputs(moved, saliency), 4)
    assert not gate.passed
    assert "top-1 moment identical in 75.00% of decisive rows" in gate.failures[0]
    assert "row 2" in gate.failures[0]


def test_gate_ignores_top1_flips_between_near_tied_queries_but_needs_decisive_rows():
    fg = np.array([[1.0, 1.001, -3.0]] * 4)  # a tie at int8 precision
    flipped = np.array([[1.001, 1.0, -3.0]] * 4)
    saliency = np.tile(np.arange(6.0), (4, 1))
    gate = _gate(_outputs(fg, saliency), _outputs(flipped, saliency), 4)
    assert gate.measured["decisive_rows"] == 0
    assert not gate.passed and "cannot be validated" in gate.failures[0]


def test_gate_fails_when_the_saliency_order_changes():
    fg = np.array([[4.0, 0.0]] * 3)
    saliency = np.tile(np.arange(6.0), (3, 1))
    gate = _gate(_outputs(fg, saliency), _outputs(fg, saliency[:, ::-1].copy()), 3)
    assert not gate.passed and "Spearman" in gate.failures[0]


def test_r1_gate_allows_one_point_and_not_more():
    assert r1_gate("r", 50.0, 49.0, 100, thresholds=T, dataset="d").passed
    failed = r1_gate("r", 50.0, 48.5, 100, thresholds=T, dataset="d")
    assert not failed.passed and "1.50 points below" in failed.failures[0]


def test_calibration_batches_are_single_rows_trimmed_to_their_lengths():
    case = _case(2, clips=6)
    case.inputs["src_vid_mask"][1, 4:] = 0
    case.inputs["src_txt_mask"][1, 1:] = 0
    batches = calibration_batches([case, case], max_rows=3)
    assert len(batches) == 3
    assert batches[1]["src_vid"].shape == (1, 4, 4) and batches[1]["src_txt"].shape == (1, 1, 4)
    assert batches[0]["src_vid_mask"].shape == (1, 6)


def test_cli_refuses_int8_data_without_int8_and_half_given_data(tmp_path, capsys):
    from model_export.cli import EXIT_USAGE, main

    ckpt = tmp_path / "none.ckpt"
    ckpt.write_bytes(b"")  # exists: the flag combination is refused before the checkpoint is read
    assert main([str(ckpt), "--out", str(tmp_path / "b"), "--int8-data", str(tmp_path / "a.jsonl")]) == EXIT_USAGE
    assert "add --int8" in capsys.readouterr().err
    code = main([str(ckpt), "--out", str(tmp_path / "b"), "--int8", "--int8-data", str(tmp_path / "a.jsonl")])
    assert code == EXIT_USAGE and "--int8-t-feat-dir" in capsys.readouterr().err
