"""The VTC / CTC local-global alignment losses read the model's training outputs and behave as the
official formulas: low when video and text agree, high when they do not."""

from __future__ import annotations

import math

import torch

from model_export.model.alignment import ctc_loss, vtc_loss

from .conftest import perturbed_model, random_inputs, tiny_config


def test_vtc_of_matching_orthogonal_pairs_is_the_closed_form():
    pooled = torch.eye(3, 8)
    loss = vtc_loss({"src_vid_cls_ed": pooled, "src_txt_cls_ed": 2 * pooled}, temperature=0.5)
    # logits: 1/0.5 on the diagonal, 0 elsewhere -> CE = log(1 + 2 e^-2) in both directions
    assert math.isclose(loss.item(), math.log(1 + 2 * math.exp(-2.0)), rel_tol=1e-6)


def test_vtc_is_higher_for_swapped_pairs():
    pooled = torch.eye(3, 8)
    matched = vtc_loss({"src_vid_cls_ed": pooled, "src_txt_cls_ed": pooled})
    swapped = vtc_loss({"src_vid_cls_ed": pooled, "src_txt_cls_ed": pooled[[1, 2, 0]]})
    assert swapped > matched + 10


def test_ctc_rewards_clips_aligned_with_the_sentence_inside_the_moment():
    sentence = torch.tensor([1.0, 0.0, 0.0, 0.0])
    clips = torch.stack([sentence, -sentence, sentence, sentence])[None]  # clip 3 is padding
    outputs = {"src_vid_ed": clips, "src_txt_ed": torch.stack([sentence, torch.zeros(4)])[None]}
    targets = {"src_pos_mask": torch.tensor([[1.0, 0.0, 1.0, 0.0]]), "src_vid_mask": torch.tensor([[1.0, 1, 1, 0]]),
               "src_txt_mask": torch.tensor([[1.0, 0.0]])}
    good = ctc_loss(outputs, targets, temperature=0.5)
    # logits 2, -2, 2 on the valid clips, 0 on the padded one (official: padded clips count with target 0)
    expected = (3 * math.log1p(math.exp(-2.0)) + math.log(2.0)) / 4
    assert math.isclose(good.item(), expected, rel_tol=1e-6)
    flipped = ctc_loss(outputs, {**targets, "src_pos_mask": 1 - targets["src_pos_mask"]}, temperature=0.5)
    assert flipped > good


def test_training_outputs_feed_both_losses_and_carry_gradients():
    config = tiny_config()
    model = perturbed_model(config).train()
    txt, txt_mask, vid, vid_mask = random_inputs(config, [(6, 3), (9, 2)])
    out = model(txt, txt_mask, vid, vid_mask)
    for key in ("video_mask", "src_vid_ed", "src_txt_ed", "src_vid_cls_ed", "src_txt_cls_ed", "aux_outputs"):
        assert key in out
    pos_mask = torch.zeros_like(vid_mask)
    pos_mask[:, 2:4] = 1
    loss = vtc_loss(out) + ctc_loss(out, {"src_pos_mask": pos_mask, "src_vid_mask": vid_mask,
                                          "src_txt_mask": txt_mask})
    loss.backward()
    assert model.input_vid_proj[0].net[1].weight.grad.abs().sum() > 0
    assert model.input_txt_proj[0].net[1].weight.grad.abs().sum() > 0


def test_pooled_features_ignore_padding():
    config = tiny_config()
    model = perturbed_model(config)
    txt, txt_mask, vid, vid_mask = random_inputs(config, [(4, 2), (9, 5)])
    with torch.no_grad():
        padded = model(txt, txt_mask, vid, vid_mask)
        alone = model(txt[:1, :2], txt_mask[:1, :2], vid[:1, :4], vid_mask[:1, :4])
    torch.testing.assert_close(padded["src_vid_cls_ed"][0], alone["src_vid_cls_ed"][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(padded["src_txt_cls_ed"][0], alone["src_txt_cls_ed"][0], rtol=0, atol=1e-5)
