"""The gates on a trained model (decisive answers): trdetr-train on synthetic data, exported with fp16.

A random-weight model's top-1 moment queries are near-ties almost everywhere, so an fp16 gate on it shows
nothing about flipped answers; here the held-out synthetic rows give decisive margins and the gate must keep
them, with the strict and tie-aware rates reported apart. The checkpoint's max_v_l is 32: no parity case is
longer (the service runs longer videos as windows of 32 clips).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_export import load_checkpoint
from model_export.export import export_bundle
from model_export.export.checks import memoize, torch_runner
from model_export.export.int8 import dataset_cases
from model_export.export.parity import CPU, Thresholds, fp16_gate, fp32_gate, make_session, ort_runner

from .conftest import FEW_CASES, SYNTHETIC_WINDOW

pytestmark = pytest.mark.slow  # trains a model and exports ONNX graphs


@pytest.fixture(scope="module")
def trained_bundle(trained_synthetic, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained checkpoint exported with fp16; the random-input fp16 gate needs no decisive rows here (random
    features are not what it was trained on), the held-out data below does."""
    checkpoint, _ = trained_synthetic
    out = tmp_path_factory.mktemp("trained_bundle") / "bundle"
    export_bundle(checkpoint, out, fp16=True, num_random_cases=FEW_CASES,
                  thresholds=Thresholds(fp16_min_decisive_rows=0))
    return out


def test_no_parity_case_is_longer_than_the_checkpoints_max_v_l(trained_bundle):
    report = json.loads((trained_bundle / "parity.json").read_text())
    fp32 = next(g for g in report["gates"] if g["kind"] == "fp32")
    lengths = [int(n) for case in fp32["cases"] for n in case["case"].split("L_v=[")[1].split("]")[0].split(", ")]
    assert max(lengths) == SYNTHETIC_WINDOW, "the window itself is covered, nothing longer"
    assert fp32["measured"]["rows"] == len(lengths) and fp32["measured"]["decisive_flips"] == 0
    assert {"rows", "decisive_rows", "tie_flips", "tie_flips_excused"} <= set(fp32["measured"])


def test_the_gates_see_decisive_rows_on_held_out_data_and_report_the_strict_rate(trained_synthetic, trained_bundle):
    checkpoint, heldout = trained_synthetic
    cases = dataset_cases(heldout.dataset_config(), 64, calibration=False) + \
        dataset_cases(heldout.dataset_config(), 64, calibration=True)
    model, _ = load_checkpoint(checkpoint)
    torch_ref = memoize(torch_runner(model))
    fp16 = ort_runner(make_session(str(trained_bundle / "model.fp16.onnx"), fp32=False))
    gate = fp16_gate("fp16 ORT vs torch, held-out synthetic rows", torch_ref, fp16, cases, provider=CPU,
                     thresholds=Thresholds())
    m = gate.measured
    assert gate.passed, gate.failures
    assert m["rows"] == 64 and m["decisive_rows"] >= Thresholds().fp16_min_decisive_rows
    assert m["top1_strict_rate_decisive"] >= 0.99 and m["top1_tie_aware_rate"] >= m["top1_strict_rate"]
    fp32 = fp32_gate("fp32 torch vs ORT, held-out synthetic rows", lambda case: torch_ref(case.inputs),
                     ort_runner(make_session(str(trained_bundle / "model.onnx"))), cases, reference_label="torch",
                     candidate_label="ORT fp32", provider=CPU, thresholds=Thresholds())
    assert fp32.passed, fp32.failures
    assert fp32.measured["decisive_flips"] == 0 and fp32.measured["rows"] == 64
