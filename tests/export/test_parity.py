"""The parity gates on plain numpy runners: what passes, what fails and what the message names."""

from __future__ import annotations

import numpy as np
import pytest

from model_export.cli import _thresholds, export_parser, verify_parser
from model_export.export.cases import Case, InputSpec, random_cases
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
    assert ([1], [1]) in lengths and ([38], [12]) in lengths and ([75], [20]) in lengths
    assert max(max(v) for v, _ in lengths) == 75, "never longer than the model's max_v_l (75 by default)"
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
                     candidate_label="c", provider="CPU", thresholds=Thresholds())
    assert gate.passed and gate.measured["max_abs_diff_saliency_scores"] == 0
    assert len(gate.cases) == len(cases)


def test_a_difference_in_one_output_fails_the_fp32_gate_naming_output_case_and_size(cases):
    gate = fp32_gate("fp32 gate", lambda c: reference(c.inputs), shifted("pred_spans", 3e-4, "random-07", cases),
                     cases, reference_label="r", candidate_label="c", provider="CPU", thresholds=Thresholds())
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
                     candidate_label="c", provider="CPU", thresholds=Thresholds())
    assert gate.passed


def test_small_fp16_noise_passes_the_fp16_gate(cases):
    rng = np.random.default_rng(0)

    def noisy(inputs):
        return {k: v + rng.normal(0, 1e-4, v.shape) for k, v in reference(inputs).items()}

    gate = fp16_gate("fp16", reference, noisy, cases, provider="CPU", thresholds=Thresholds())
    assert gate.passed, gate.failures
    assert gate.measured["decisive_rows"] >= Thresholds().fp16_min_decisive_rows
    assert gate.measured["rows"] == sum(len(c.video_lengths) for c in cases)


def test_swapped_moments_fail_the_fp16_gate_on_top1_and_iou(cases):
    def broken(inputs):
        out = reference(inputs)
        return {**out, "pred_logits": -out["pred_logits"], "pred_spans": out["pred_spans"][:, ::-1]}

    gate = fp16_gate("fp16", reference, broken, cases, provider="CPU", thresholds=Thresholds())
    text = "\n".join(gate.failures)
    assert not gate.passed
    assert "pred_logits top-1 moment query identical in 0.00% of decisive rows" in text
    assert "identical (tie-aware) in" in text and "pred_spans mean top-1 IoU" in text


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
    loose = Thresholds(fp16_min_decisive_rows=0)  # one row, not decisive
    gate = fp16_gate("fp16", lambda _: ref, lambda _: cand, [case], provider="CPU", thresholds=loose)
    assert gate.passed, gate.failures
    assert gate.measured["top1_tie_aware_rate"] == 1.0 and gate.measured["top1_strict_rate"] < 1.0
    assert gate.measured["tie_flips"] == 1 and gate.measured["top1_strict_rate_decisive"] is None
    # MR2HD refines the saliency with the picked moment: after a tie it is not compared
    assert all(row["saliency_spearman"] is None for row in gate.cases)
    strict = fp16_gate("fp16", lambda _: ref, lambda _: cand, [case], provider="CPU",
                       thresholds=Thresholds(fp16_tie_margin=0.0, fp16_min_decisive_rows=0))
    assert not strict.passed


def _rows_case(rows: int, clips: int = 6) -> Case:
    """A batch of ``rows`` rows (the gates read only the masks of the inputs)."""
    inputs = {"src_txt": np.zeros((rows, 2, 4), np.float32), "src_txt_mask": np.ones((rows, 2), np.float32),
              "src_vid": np.zeros((rows, clips, 4), np.float32), "src_vid_mask": np.ones((rows, clips), np.float32)}
    return Case("rows", inputs)


def _outputs(fg_prob: np.ndarray, clips: int = 6) -> dict[str, np.ndarray]:
    """(B, Q) foreground probabilities -> model outputs: logits (B, Q, 2) with background logit 0, the same span
    for every query, a distinct saliency (B, clips) per row."""
    fg_prob = np.asarray(fg_prob, np.float64)
    logits = np.stack([np.log(fg_prob / (1 - fg_prob)), np.zeros_like(fg_prob)], axis=-1).astype(np.float32)
    spans = np.tile(np.array([0.5, 0.2], np.float32), (*fg_prob.shape, 1))
    saliency = np.random.default_rng(len(fg_prob)).normal(size=(len(fg_prob), clips)).astype(np.float32)
    return {"pred_logits": logits, "pred_spans": spans, "saliency_scores": saliency}


def _margins(margins: list[float]) -> np.ndarray:
    """(B, 4) foreground probabilities: top 0.6, runner-up 0.6 - margin, then 0.2 and 0.1."""
    return np.array([[0.6, 0.6 - m, 0.2, 0.1] for m in margins])


def _swap_top2(out: dict[str, np.ndarray], rows: list[int]) -> dict[str, np.ndarray]:
    """A copy of ``out`` whose rows ``rows`` have the logits of queries 0 and 1 swapped (top-1 flipped)."""
    out = {k: v.copy() for k, v in out.items()}
    for row in rows:
        out["pred_logits"][row, [0, 1]] = out["pred_logits"][row, [1, 0]]
    return out


def _fp32(ref: dict, cand: dict, case: Case, thresholds: Thresholds | None = None):
    return fp32_gate("fp32 gate", lambda _: ref, lambda _: cand, [case], reference_label="r", candidate_label="c",
                     provider="CPU", thresholds=thresholds or Thresholds())


def test_the_gate_defaults_are_pinned_in_thresholds_and_on_the_command_line():
    """--atol 1.0 or a tie margin of 5e-2 would excuse real differences: the defaults are fixed here."""
    t = Thresholds()
    assert (t.fp32_atol, t.fp32_tie_margin, t.fp32_max_tie_flip_rate) == (1e-4, 1e-5, 0.02)
    assert (t.fp16_tie_margin, t.fp16_min_decisive_rows, t.fp16_top1_rate) == (1e-3, 10, 0.99)
    export_args = export_parser().parse_args(["ckpt", "--out", "bundle"])
    verify_args = verify_parser().parse_args(["bundle"])
    for args in (export_args, verify_args):
        assert (args.atol, args.fp16_min_decisive_rows) == (1e-4, 10)
        assert _thresholds(args) == t


def test_a_candidate_perturbed_by_1e3_fails_the_fp32_gate():
    ref = _outputs(_margins([0.3] * 8))
    cand = {k: v + np.float32(1e-3) for k, v in ref.items()}
    gate = _fp32(ref, cand, _rows_case(8))
    assert not gate.passed
    assert all("differs by 0.001 > 0.0001" in message for message in gate.failures) and len(gate.failures) == 3


def test_a_near_tie_flip_leaves_out_only_that_rows_saliency_and_is_counted():
    """The issue's case: MR2HD picks another top-1 on a near-tie and that row's saliency moves by 0.08."""
    case = _rows_case(60)
    ref = _outputs(_margins([1e-6] + [0.3] * 59))
    cand = _swap_top2(ref, [0])
    cand["saliency_scores"][0] += 0.08
    gate = _fp32(ref, cand, case)
    assert gate.passed, gate.failures
    keys = ("rows", "decisive_rows", "tie_flips", "tie_flips_excused", "decisive_flips")
    assert {k: gate.measured[k] for k in keys} == {
        "rows": 60, "decisive_rows": 59, "tie_flips": 1, "tie_flips_excused": 1, "decisive_flips": 0}
    assert gate.cases[0]["excused_saliency_rows"] == [0] and gate.thresholds["max_tie_flips_excused"] == 1
    assert gate.measured["max_abs_diff_pred_logits"] < 1e-4
    # everything else of that row is still compared: its spans, and the saliency of every other row
    spans = {**cand, "pred_spans": cand["pred_spans"].copy()}
    spans["pred_spans"][0] += 3e-4
    assert "output pred_spans differs by 0.0003" in "\n".join(_fp32(ref, spans, case).failures)
    other = {**cand, "saliency_scores": cand["saliency_scores"].copy()}
    other["saliency_scores"][1] += 0.08
    assert "output saliency_scores differs by 0.08" in "\n".join(_fp32(ref, other, case).failures)


def test_more_near_tie_flips_than_the_bound_fail_the_fp32_gate():
    ref = _outputs(_margins([1e-6, 1e-6, 1e-6] + [0.3] * 57))  # 60 rows: 2 % allows 1 excused flip
    cand = _swap_top2(ref, [0, 1, 2])
    cand["saliency_scores"][[0, 1]] += 0.08
    gate = _fp32(ref, cand, _rows_case(60))
    assert (gate.measured["tie_flips"], gate.measured["tie_flips_excused"]) == (3, 2)
    [message] = gate.failures
    assert "saliency_scores left out of the check on 2 rows whose near-tied top-1 query flipped" in message
    assert "(reference margin < 1e-05) > 1 allowed (2% of 60 rows), first: rows (B=60" in message


def test_a_near_tie_flip_that_changes_no_output_is_counted_and_needs_no_excuse():
    """One clip: every query's span slices the same clip, so MR2HD gives the same saliency whichever is top-1."""
    ref = _outputs(_margins([1e-7] * 5))
    gate = _fp32(ref, _swap_top2(ref, [0, 1, 2, 3, 4]), _rows_case(5))
    assert gate.passed, gate.failures
    assert (gate.measured["tie_flips"], gate.measured["tie_flips_excused"]) == (5, 0)


def test_a_top1_flip_on_a_decisive_row_fails_the_fp32_gate_even_within_atol():
    ref = _outputs(_margins([2e-5] + [0.3] * 59))  # 2e-5 >= the 1e-5 tie margin: decisive
    cand = _swap_top2(ref, [0])
    gate = _fp32(ref, cand, _rows_case(60))
    assert gate.measured["max_abs_diff_pred_logits"] < 1e-4 and gate.measured["decisive_flips"] == 1
    [message] = gate.failures
    assert "top-1 moment query differs on 1 decisive rows" in message and "row 0 (reference margin 2e-05)" in message


def test_an_fp16_flip_on_a_decisive_row_fails_although_near_ties_keep_the_tie_aware_rate_high():
    """140 near-tied rows (fp16 may pick either) hide one decisive flip in the tie-aware rate (149/150 >= 99 %);
    the strict rate over the decisive rows does not (9/10)."""
    margins = [1e-4] * 140 + [0.01] + [0.3] * 9
    ref = _outputs(_margins(margins))
    cand = _swap_top2(ref, list(range(20)) + [140])  # 20 tie flips and the decisive row at margin 0.01
    gate = fp16_gate("fp16", lambda _: ref, lambda _: cand, [_rows_case(150)], provider="CPU", thresholds=Thresholds())
    m = gate.measured
    assert (m["rows"], m["decisive_rows"], m["tie_flips"]) == (150, 10, 20)
    assert m["top1_tie_aware_rate"] == pytest.approx(149 / 150) and m["top1_strict_rate"] == pytest.approx(129 / 150)
    assert m["top1_strict_rate_decisive"] == pytest.approx(0.9)
    [message] = gate.failures
    assert "top-1 moment query identical in 90.00% of decisive rows < 99%" in message
    assert "row 140 (reference margin 0.01)" in message


def test_the_fp16_gate_needs_decisive_rows():
    ref = _outputs(_margins([1e-4] * 30))  # every row a near-tie: a random-weight model's answers
    gate = fp16_gate("fp16", lambda _: ref, lambda _: ref, [_rows_case(30)], provider="CPU", thresholds=Thresholds())
    [message] = gate.failures
    assert "only 0 of 30 rows have a decisive top-1 margin (>= 0.001) < 10" in message
    assert fp16_gate("fp16", lambda _: ref, lambda _: ref, [_rows_case(30)], provider="CPU",
                     thresholds=Thresholds(fp16_min_decisive_rows=0)).passed


def test_random_cases_stay_within_the_models_max_v_l():
    spec = InputSpec(video_group_dims=[6, 4], text_dim=5, use_tef=True, normalize_video=True, normalize_text=True,
                     max_text_tokens=8, max_video_clips=32)
    cases = random_cases(spec, 40, seed=0)
    longest = max(max(c.video_lengths) for c in cases)
    assert longest == 32, "the window itself is covered, nothing longer"
    assert ([16], [8]) in [(c.video_lengths, c.text_lengths) for c in cases], "half the window, text cut to 8"
    assert max(max(c.text_lengths) for c in cases) == 8
