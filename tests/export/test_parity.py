"""The parity gates on plain numpy runners: what passes, what fails and what the message names."""

from __future__ import annotations

import numpy as np
import pytest

from model_export.export.cases import InputSpec, random_cases
from model_export.export.parity import ParityError, Thresholds, fp16_gate, fp32_gate, raise_on_failure

SPEC = InputSpec(video_group_dims=[6, 4], text_dim=5, use_tef=True, normalize_video=True, normalize_text=True,
                 max_text_tokens=32)


def reference(inputs):
    """A deterministic stand-in model: logits/spans from pooled text, saliency from the clips.

    Returns pred_logits (B, 3, 2), pred_spans (B, 3, 2), saliency_scores (B, L_v).
    """
    text = (inputs["src_txt"] * inputs["src_txt_mask"][..., None]).sum(1)  # (B, D_t)
    logits = np.stack([text[:, :3], -text[:, :3]], axis=-1) * 3.0
    spans = 1 / (1 + np.exp(-np.stack([text[:, 1:4], text[:, 2:5]], axis=-1)))
    saliency = inputs["src_vid"].sum(-1) * inputs["src_vid_mask"]
    return {"pred_logits": logits, "pred_spans": spans, "saliency_scores": saliency}


def shifted(output: str, by: float, case_name: str, cases):
    """The reference with ``by`` added to one output of one case."""
    target = next(c for c in cases if c.name == case_name).inputs

    def run(inputs):
        out = {k: v.copy() for k, v in reference(inputs).items()}
        if inputs is target:
            out[output] += by
        return out

    return run


@pytest.fixture(scope="module")
def cases():
    return random_cases(SPEC, 12, seed=3)


def test_random_cases_cover_the_edge_shapes_and_follow_the_input_contract(cases):
    lengths = [(c.video_lengths, c.text_lengths) for c in cases]
    assert ([1], [1]) in lengths and ([150], [12]) in lengths and ([75], [20]) in lengths
    assert any(len(v) > 1 and len(set(v)) > 1 for v, _ in lengths), "a padded batch of mixed lengths"
    mixed = next(c for c in cases if len(set(c.video_lengths)) > 1)
    row = int(np.argmin(mixed.video_lengths))
    n = mixed.video_lengths[row]
    assert np.all(mixed.inputs["src_vid"][row, n:] == 0), "padding is zeros"
    np.testing.assert_allclose(np.linalg.norm(mixed.inputs["src_vid"][row, :n, :6], axis=-1), 1, atol=1e-4)
    np.testing.assert_allclose(mixed.inputs["src_vid"][row, :n, -2], np.arange(n) / n, atol=1e-6)  # TEF
    assert [c.inputs["src_vid"].shape for c in random_cases(SPEC, 12, seed=3)] == [
        c.inputs["src_vid"].shape for c in cases], "seeded"


def test_identical_runners_pass_the_fp32_gate(cases):
    gate = fp32_gate("g", lambda c: reference(c.inputs), reference, cases, reference_label="r",
                     candidate_label="c", provider="CPU", atol=1e-4)
    assert gate.passed and gate.measured["max_abs_diff_saliency_scores"] == 0
    assert len(gate.cases) == len(cases)


def test_a_difference_in_one_output_fails_the_fp32_gate_naming_output_case_and_size(cases):
    gate = fp32_gate("fp32 gate", lambda c: reference(c.inputs), shifted("pred_spans", 3e-4, "random-07", cases),
                     cases, reference_label="r", candidate_label="c", provider="CPU", atol=1e-4)
    assert not gate.passed
    [message] = gate.failures
    assert "output pred_spans" in message and "random-07" in message and "0.0003 > 0.0001" in message
    with pytest.raises(ParityError, match="pred_spans"):
        raise_on_failure([gate])


def test_padded_clips_are_not_compared(cases):
    def garbage_in_padding(inputs):
        out = reference(inputs)
        out["saliency_scores"] = np.where(inputs["src_vid_mask"] > 0, out["saliency_scores"], 1e6)
        return out

    gate = fp32_gate("g", lambda c: reference(c.inputs), garbage_in_padding, cases, reference_label="r",
                     candidate_label="c", provider="CPU", atol=1e-4)
    assert gate.passed


def test_small_fp16_noise_passes_the_fp16_gate(cases):
    rng = np.random.default_rng(0)

    def noisy(inputs):
        return {k: v + rng.normal(0, 1e-4, v.shape) for k, v in reference(inputs).items()}

    gate = fp16_gate("fp16", reference, noisy, cases, provider="CPU", thresholds=Thresholds())
    assert gate.passed, gate.failures
    assert gate.measured["rows"] == sum(len(c.video_lengths) for c in cases)


def test_swapped_moments_fail_the_fp16_gate_on_top1_and_iou(cases):
    def broken(inputs):
        out = reference(inputs)
        return {**out, "pred_logits": -out["pred_logits"], "pred_spans": out["pred_spans"][:, ::-1]}

    gate = fp16_gate("fp16", reference, broken, cases, provider="CPU", thresholds=Thresholds())
    text = "\n".join(gate.failures)
    assert not gate.passed
    assert "pred_logits top-1 moment identical in 0.00% of rows" in text and "pred_spans mean top-1 IoU" in text


def test_reordered_saliency_fails_the_fp16_gate_on_spearman(cases):
    def broken(inputs):
        return {**reference(inputs), "saliency_scores": -reference(inputs)["saliency_scores"]}

    gate = fp16_gate("fp16", reference, broken, cases, provider="CPU", thresholds=Thresholds())
    [message] = gate.failures
    assert "output saliency_scores mean Spearman -1.0000 < 0.99" in message


def test_a_near_tie_resolved_the_other_way_is_still_the_top1_moment(cases):
    """Two queries whose foreground probabilities differ by less than the tie margin are both top-1."""
    case = cases[3]
    ref = reference(case.inputs)
    ref["pred_logits"][:] = [[0.0, 0.0], [-1e-3, 0.0], [-5.0, 5.0]]  # fg prob 0.5, 0.49975, ~0
    cand = {k: v.copy() for k, v in ref.items()}
    cand["pred_logits"][:, 1, 0] = 1e-3  # fp16-sized noise puts query 1 first
    gate = fp16_gate("fp16", lambda _: ref, lambda _: cand, [case], provider="CPU", thresholds=Thresholds())
    assert gate.measured["top1_same_rate"] == 1.0 and gate.measured["top1_exact_query_rate"] < 1.0
    # MR2HD refines the saliency with the picked moment: after a tie it is not compared
    assert all(row["saliency_spearman"] is None for row in gate.cases)
    strict = fp16_gate("fp16", lambda _: ref, lambda _: cand, [case], provider="CPU",
                       thresholds=Thresholds(fp16_tie_margin=0.0))
    assert not strict.passed
