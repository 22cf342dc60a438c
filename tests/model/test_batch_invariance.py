"""Every row of a padded batch gives the same outputs as running it alone, for any mix of lengths
(1 clip, 1 token, 150 clips included), and MR2HD reproduces the official per-sample slicing + GRU."""

from __future__ import annotations

import pytest
import torch

from model_export.model.mr2hd import GRUFeatureExtractor, gather_moment_clips, python_slice_bounds

from .conftest import perturbed_model, random_inputs, tiny_config

ATOL = 1e-5
#: Random weights give saliency scores of magnitude ~10: allow float32 noise relative to the value too.
RTOL = 1e-5
FACTS = ["mr2hd_top1_query", "mr2hd_start", "mr2hd_end", "mr2hd_slice_len"]
LENGTHS = [(1, 1), (150, 4), (7, 1), (33, 9), (2, 12)]


def _single_and_batched(model, config, lengths, seed=0):
    txt, txt_mask, vid, vid_mask = random_inputs(config, lengths, seed)
    with torch.no_grad():
        batched = model(txt, txt_mask, vid, vid_mask, return_intermediates=True)
        singles = [
            model(txt[i:i + 1, :n_t], txt_mask[i:i + 1, :n_t], vid[i:i + 1, :n_v], vid_mask[i:i + 1, :n_v],
                  return_intermediates=True)
            for i, (n_v, n_t) in enumerate(lengths)
        ]
    return batched, singles


@pytest.mark.parametrize("config_kwargs", [
    {},
    {"nheads": 8, "enc_layers": 1, "dec_layers": 2, "n_input_proj": 3, "use_txt_pos": True, "clip_length": 1.0},
    {"n_input_proj": 1, "a_feat_dim": 6, "num_queries": 7},
], ids=["base", "txt-pos-3proj", "audio-1proj"])
def test_padded_rows_equal_single_runs(config_kwargs):
    config = tiny_config(**config_kwargs)
    model = perturbed_model(config, seed=3)
    if config.a_feat_dim:  # audio features travel concatenated onto the video ones
        config = tiny_config(**{**config_kwargs, "v_feat_dim": config.vid_input_dim, "a_feat_dim": None})
    batched, singles = _single_and_batched(model, config, LENGTHS)
    for i, ((n_v, _), single) in enumerate(zip(LENGTHS, singles, strict=True)):
        torch.testing.assert_close(batched["pred_logits"][i], single["pred_logits"][0], rtol=0, atol=ATOL)
        torch.testing.assert_close(batched["pred_spans"][i], single["pred_spans"][0], rtol=0, atol=ATOL)
        torch.testing.assert_close(batched["saliency_scores"][i, :n_v], single["saliency_scores"][0], rtol=RTOL, atol=ATOL)
        for aux_b, aux_s in zip(batched["aux_outputs"], single["aux_outputs"], strict=True):
            torch.testing.assert_close(aux_b["pred_spans"][i], aux_s["pred_spans"][0], rtol=0, atol=ATOL)
        facts = ["mr2hd_slice_len"] if _top1_is_a_tie(single) else FACTS
        for fact in facts:
            assert batched["intermediates"][fact][i] == single["intermediates"][fact][0], fact


def _top1_is_a_tie(single: dict) -> bool:
    """With one clip every query sees the same memory: all logits tie and the top-1 pick is float noise
    (any pick then slices that single clip, so only the slice length is comparable)."""
    fg = single["pred_logits"][0].softmax(-1)[:, 0].sort(descending=True).values
    return bool(fg[0] - fg[1] < 1e-4)


def test_audio_features_are_concatenated_onto_video():
    config = tiny_config(a_feat_dim=6)
    model = perturbed_model(config)
    txt, txt_mask, vid, vid_mask = random_inputs(tiny_config(v_feat_dim=18), [(9, 3)])
    with torch.no_grad():
        split = model(txt, txt_mask, vid[..., :12], vid_mask, src_aud=vid[..., 12:])
        joined = model(txt, txt_mask, vid, vid_mask)
    torch.testing.assert_close(split["saliency_scores"], joined["saliency_scores"], rtol=0, atol=0)


def test_extreme_lengths_give_finite_outputs_of_the_contract_shapes():
    config = tiny_config()
    model = perturbed_model(config)
    for n_v, n_t in [(1, 1), (1, 20), (150, 1), (150, 32)]:
        txt, txt_mask, vid, vid_mask = random_inputs(config, [(n_v, n_t)])
        with torch.no_grad():
            out = model(txt, txt_mask, vid, vid_mask)
        assert out["pred_logits"].shape == (1, config.num_queries, 2)
        assert out["pred_spans"].shape == (1, config.num_queries, 2)
        assert out["saliency_scores"].shape == (1, n_v)
        assert len(out["aux_outputs"]) == config.dec_layers - 1
        assert all(torch.isfinite(out[k]).all() for k in ("pred_logits", "pred_spans", "saliency_scores"))


def test_bool_and_float_masks_are_equivalent():
    config = tiny_config()
    model = perturbed_model(config)
    txt, txt_mask, vid, vid_mask = random_inputs(config, [(5, 3), (9, 6)])
    with torch.no_grad():
        as_float = model(txt, txt_mask, vid, vid_mask)
        as_bool = model(txt, txt_mask.bool(), vid, vid_mask.bool())
    torch.testing.assert_close(as_float["saliency_scores"], as_bool["saliency_scores"], rtol=0, atol=0)


@pytest.mark.parametrize("length", [1, 2, 5])
def test_slice_bounds_follow_python_slicing(length):
    """Every start/stop from -2L to 2L selects exactly the rows Python's seq[start:stop] selects."""
    seq = list(range(length))
    pairs = [(s, e) for s in range(-2 * length, 2 * length + 1) for e in range(-2 * length, 2 * length + 1)]
    start = torch.tensor([float(s) for s, _ in pairs])
    stop = torch.tensor([float(e) for _, e in pairs])
    begin, rows = python_slice_bounds(start, stop, torch.full_like(start, float(length)))
    for (s, e), b, r in zip(pairs, begin.tolist(), rows.tolist(), strict=True):
        assert seq[int(b):int(b) + int(r)] == seq[s:e], (s, e)


def test_moment_gru_equals_official_slice_pad_and_run_per_sample():
    """Official MR2HD per sample: clips[start:end + 1], zero-padded to the sample's length, through the GRU."""
    torch.manual_seed(0)
    gru = GRUFeatureExtractor(8, 8)
    lengths, starts, ends = [6, 4, 1, 6, 3], [-3, 1, -1, 2, -2], [1, 9, 0, 4, 1]
    clips = torch.randn(len(lengths), max(lengths), 8)
    n = torch.tensor(lengths, dtype=torch.float32)
    begin, rows = python_slice_bounds(torch.tensor(starts, dtype=torch.float32),
                                      torch.tensor(ends, dtype=torch.float32) + 1, n)
    with torch.no_grad():
        hidden = gru(gather_moment_clips(clips, begin, rows), n)
        for i, (length, start, end) in enumerate(zip(lengths, starts, ends, strict=True)):
            sliced = clips[i, :length][start:end + 1]
            padded = torch.cat([sliced, torch.zeros(length - len(sliced), 8)])
            _, expected = gru.gru(padded[None])
            torch.testing.assert_close(hidden[i], expected[-1, 0], rtol=0, atol=1e-6)
