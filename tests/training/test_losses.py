"""Matcher and losses: known values and the behaviour the official criterion has."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import (
    LossConfig,
    TRDETRCriterion,
    label_losses,
    margin_loss,
    rank_contrastive_loss,
    sigmoid_focal_loss,
    span_losses,
)
from training.matcher import HungarianMatcher
from training.spans import generalized_temporal_iou, span_cxw_to_xx, span_xx_to_cxw


def test_span_format_round_trip():
    xx = torch.tensor([[0.1, 0.5], [0.0, 1.0]])
    torch.testing.assert_close(span_xx_to_cxw(xx), torch.tensor([[0.3, 0.4], [0.5, 1.0]]))
    torch.testing.assert_close(span_cxw_to_xx(span_xx_to_cxw(xx)), xx)


def test_generalized_iou_known_values():
    a = torch.tensor([[0.0, 0.4]])
    b = torch.tensor([[0.2, 0.6], [0.6, 1.0], [0.0, 0.4]])
    # overlap 0.2 / union 0.6; disjoint: 0 - (1.0 - 0.8) / 1.0; identical: 1
    torch.testing.assert_close(generalized_temporal_iou(a, b), torch.tensor([[1 / 3, -0.2, 1.0]]))


def test_matcher_pairs_each_target_with_the_query_predicting_it():
    targets = [torch.tensor([[0.7, 0.2], [0.2, 0.1]])]
    spans = torch.tensor([[[0.5, 0.5], [0.2, 0.1], [0.9, 0.05], [0.7, 0.2]]])
    logits = torch.zeros(1, 4, 2)
    queries, tgt = HungarianMatcher()(logits, spans, targets)[0]
    assert dict(zip(tgt.tolist(), queries.tolist(), strict=True)) == {0: 3, 1: 1}


def test_matcher_prefers_the_confident_query_among_equal_spans():
    spans = torch.tensor([[[0.5, 0.2], [0.5, 0.2]]])
    logits = torch.tensor([[[0.0, 3.0], [3.0, 0.0]]])  # query 1 is foreground-confident
    queries, _ = HungarianMatcher()(logits, spans, [torch.tensor([[0.5, 0.2]])])[0]
    assert queries.tolist() == [1]


def test_focal_loss_known_value():
    # logit 0, target 1: p = 0.5, ce = ln 2, (1 - p_t)^2 = 0.25, alpha_t = 0.25
    loss = sigmoid_focal_loss(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(loss, torch.tensor([0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)]))


def test_label_loss_targets_both_channels_one_hot():
    """Matched queries want (fg, bg) = (1, 0), unmatched (0, 1): confident correct logits give ~0 loss."""
    indices = [(torch.tensor([1]), torch.tensor([0]))]
    right = torch.tensor([[[-9.0, 9.0], [9.0, -9.0], [-9.0, 9.0]]])
    wrong = torch.tensor([[[9.0, -9.0], [-9.0, 9.0], [9.0, -9.0]]])
    assert label_losses(right, indices, 0.25, 2.0)["loss_label"] < 1e-6
    assert label_losses(wrong, indices, 0.25, 2.0)["loss_label"] > 1.0
    assert label_losses(right, indices, 0.25, 2.0)["class_error"] == 0
    assert label_losses(wrong, indices, 0.25, 2.0)["class_error"] == 100


def test_span_losses_zero_for_exact_matches_and_positive_otherwise():
    targets = [torch.tensor([[0.4, 0.2]])]
    indices = [(torch.tensor([0]), torch.tensor([0]))]
    exact = span_losses(torch.tensor([[[0.4, 0.2], [0.9, 0.1]]]), targets, indices)
    assert exact["loss_span"] == 0 and exact["loss_giou"] == 0
    off = span_losses(torch.tensor([[[0.5, 0.2], [0.9, 0.1]]]), targets, indices)
    torch.testing.assert_close(off["loss_span"], torch.tensor(0.05))  # mean |0.1| over centre and width
    torch.testing.assert_close(off["loss_giou"], torch.tensor(1 - 0.1 / 0.3))


def test_margin_loss_is_zero_once_positives_lead_by_the_margin():
    saliency = torch.tensor([[1.0, 0.0, 0.5]])
    pos, neg = torch.tensor([[0, 2]]), torch.tensor([[1, 1]])
    assert margin_loss(saliency, pos, neg, margin=0.2) == 0
    # pairs (1.0 vs 0.0 -> 0) and (0.5 vs 0.0 -> 0) hinge at margin 0.7: (0 + 0.2) / 2 * 2
    torch.testing.assert_close(margin_loss(saliency, pos, neg, margin=0.7), torch.tensor(0.2))


def test_rank_contrastive_prefers_scores_ordered_like_the_labels():
    labels = torch.tensor([[0.0, 12.0, 6.0, 0.0, 0.0]])
    mask = torch.ones(1, 5)
    good = rank_contrastive_loss(torch.tensor([[-2.0, 3.0, 1.0, -2.0, -2.0]]), mask, labels)
    bad = rank_contrastive_loss(torch.tensor([[3.0, -2.0, -2.0, 1.0, 3.0]]), mask, labels)
    assert good < bad


def test_rank_contrastive_ignores_padded_clips():
    labels = torch.tensor([[0.0, 12.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    low = rank_contrastive_loss(torch.tensor([[0.0, 1.0, -5.0, -5.0]]), mask, labels)
    high = rank_contrastive_loss(torch.tensor([[0.0, 1.0, 50.0, 50.0]]), mask, labels)
    torch.testing.assert_close(low, high)


def _outputs(batch: int, queries: int, clips: int, layers: int) -> dict:
    def logits():
        return torch.randn(batch, queries, 2, requires_grad=True)

    def spans():
        return torch.rand(batch, queries, 2, requires_grad=True)

    return {"pred_logits": logits(), "pred_spans": spans(),
            "saliency_scores": torch.randn(batch, clips, requires_grad=True),
            "aux_outputs": [{"pred_logits": logits(), "pred_spans": spans()} for _ in range(layers - 1)]}


def _targets(batch: int, clips: int) -> dict:
    all_labels = torch.zeros(batch, clips)
    all_labels[:, 2:5] = torch.tensor([4.0, 12.0, 7.0])
    return {"span_labels": [torch.tensor([[0.4, 0.2]]) for _ in range(batch)],
            "saliency_pos_labels": torch.tensor([[3, 2]] * batch), "saliency_neg_labels": torch.tensor([[2, 7]] * batch),
            "saliency_all_labels": all_labels, "src_vid_mask": torch.ones(batch, clips),
            "src_pos_mask": (all_labels > 0).float(), "src_txt_mask": torch.ones(batch, 4)}


def test_criterion_weights_terms_and_adds_aux_losses():
    config = LossConfig(VTC_loss_coef=0.0, CTC_loss_coef=0.0)
    criterion = TRDETRCriterion(config)
    outputs = _outputs(batch=3, queries=5, clips=10, layers=3)
    total, logs = criterion(outputs, _targets(3, 10))
    for name in ("loss_span", "loss_giou", "loss_label", "loss_saliency", "loss_span_0", "loss_label_1"):
        assert name in logs
    expected = sum(criterion.weight_of(k) * v for k, v in logs.items() if k != "loss_overall")
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert criterion.weight_of("loss_giou_1") == config.giou_loss_coef and criterion.weight_of("class_error") == 0
    total.backward()
    assert outputs["aux_outputs"][0]["pred_spans"].grad is not None


def test_no_aux_loss_drops_aux_terms():
    criterion = TRDETRCriterion(LossConfig(VTC_loss_coef=0.0, CTC_loss_coef=0.0, aux_loss=False))
    _, logs = criterion(_outputs(2, 4, 8, 2), _targets(2, 8))
    assert not any(name.endswith("_0") for name in logs)


def test_loss_config_reads_an_official_opt():
    opt = {"span_loss_coef": 5, "VTC_loss_coef": 1, "lw_saliency": 4.0, "unrelated": "x", "aux_loss": False}
    config = LossConfig.from_opt(opt)
    assert (config.span_loss_coef, config.VTC_loss_coef, config.lw_saliency, config.aux_loss) == (5, 1, 4.0, False)
    assert config.giou_loss_coef == 1.0
