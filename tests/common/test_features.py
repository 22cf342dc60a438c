"""Model inputs are built bit for bit as the official TR-DETR dataset builds them."""

import numpy as np
import pytest

from trdetr_common.features import (
    FeatureError,
    build_text_features,
    build_video_features,
    l2_normalize,
    pad_batch,
    tef_columns,
    truncation_note,
)

# The golden fixture's video groups and text width (shared/fixtures/official_small/README.md).
GROUP_DIMS = (24, 8)
TEXT_DIM = 16


def _raw_case_inputs(cases, i):
    """Regenerate the raw (un-normalised) features of fixture case i from its seed."""
    num_clips, num_tokens = (int(n) for n in cases["lengths"][i])
    rng = np.random.RandomState(int(cases["input_seeds"][i]))
    groups = [rng.standard_normal((num_clips, dim)).astype(np.float32) for dim in GROUP_DIMS]
    tokens = rng.standard_normal((num_tokens, TEXT_DIM)).astype(np.float32)
    return groups, tokens


def test_video_and_text_inputs_equal_the_official_ones_bit_for_bit(official_cases):
    for i in range(int(official_cases["num_cases"])):
        groups, tokens = _raw_case_inputs(official_cases, i)
        np.testing.assert_array_equal(build_video_features(groups), official_cases[f"src_vid_{i}"])
        np.testing.assert_array_equal(build_text_features(tokens), official_cases[f"src_txt_{i}"])


def test_pad_batch_equals_the_official_collate(official_cases, official_padded_batch):
    n = int(official_cases["num_cases"])
    for name in ("vid", "txt"):
        padded, mask = pad_batch([official_cases[f"src_{name}_{i}"] for i in range(n)])
        np.testing.assert_array_equal(padded, official_padded_batch[f"src_{name}"])
        np.testing.assert_array_equal(mask, official_padded_batch[f"src_{name}_mask"])
        assert padded.dtype == mask.dtype == np.float32


def test_tef_columns_match_float32_torch_for_every_length_up_to_512():
    torch = pytest.importorskip("torch", reason="torch is only needed to cross-check the float32 arithmetic")
    for length in range(1, 513):
        start = torch.arange(0, length, 1.0) / length
        expected = torch.stack([start, start + 1.0 / length], dim=1).numpy()
        np.testing.assert_array_equal(tef_columns(length), expected, err_msg=f"T={length}")


def test_tef_columns_are_clip_start_and_end_fractions():
    np.testing.assert_array_equal(tef_columns(4), [[0.0, 0.25], [0.25, 0.5], [0.5, 0.75], [0.75, 1.0]])
    assert tef_columns(3).dtype == np.float32


def test_l2_normalize_divides_by_norm_plus_eps_and_keeps_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    out = l2_normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [3 / (5 + 1e-5), 4 / (5 + 1e-5)], rtol=1e-6)
    np.testing.assert_array_equal(out[1], [0.0, 0.0])


def test_groups_are_normalised_separately_then_cut_to_the_shortest():
    long_group = np.full((5, 2), 2.0)
    short_group = np.full((3, 1), 7.0)
    video = build_video_features([long_group, short_group], tef=False)
    assert video.shape == (3, 3)
    np.testing.assert_allclose(video[:, :2], 2 / (np.sqrt(8) + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(video[:, 2], 7 / (7 + 1e-5), rtol=1e-6)


def test_max_clips_cuts_before_tef_so_tef_spans_the_kept_clips():
    video = build_video_features([np.ones((10, 4))], max_clips=4)
    assert video.shape == (4, 6)
    np.testing.assert_array_equal(video[:, -2:], tef_columns(4))


def test_without_normalisation_and_tef_the_groups_are_only_concatenated():
    a, b = np.arange(6.0).reshape(3, 2), np.arange(3.0).reshape(3, 1)
    video = build_video_features([a, b], normalize=False, tef=False)
    np.testing.assert_array_equal(video, np.concatenate([a, b], axis=1).astype(np.float32))


def test_text_is_truncated_to_max_tokens_and_normalised_per_token():
    tokens = np.arange(1.0, 81.0).reshape(40, 2)
    text = build_text_features(tokens)
    assert text.shape == (32, 2)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert build_text_features(tokens, max_tokens=None).shape == (40, 2)


def test_integer_features_are_accepted_and_cast_to_float32():
    assert build_text_features(np.ones((2, 3), dtype=np.int64)).dtype == np.float32


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.ones(5), "must be a 2-D array"),
        (np.ones((0, 4)), "is empty"),
        (np.ones((3, 0)), "feature dim 0"),
        (np.array([[1.0, np.nan]]), "NaN or infinite values"),
        (np.array([[1e300]]), "too large for float32"),
        (np.array([["a", "b"]]), "cannot be cast to float32"),
    ],
)
def test_bad_video_groups_get_a_feature_error_saying_what_to_fix(bad, message):
    with pytest.raises(FeatureError, match=message):
        build_video_features([np.ones((3, 4)), bad])


def test_feature_error_is_a_value_error():
    with pytest.raises(ValueError, match="no video feature groups"):
        build_video_features([])


def test_pad_batch_rejects_mismatched_widths():
    with pytest.raises(FeatureError, match="sequence 1 has shape"):
        pad_batch([np.ones((2, 3)), np.ones((2, 4))])


def test_truncation_note_only_when_group_lengths_differ():
    assert truncation_note({"slowfast": 75, "clip": 75}) is None
    note = truncation_note({"slowfast": 75, "clip": 74})
    assert "slowfast: 75, clip: 74" in note and "74 clips" in note


def test_l2_normalize_rows_near_float32_max_do_not_overflow_to_zeros():
    from trdetr_common.features import l2_normalize

    huge = np.full((2, 8), 3.0e38, np.float32)
    huge[1, ::2] *= -1
    out = l2_normalize(huge)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    ordinary = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_array_equal(l2_normalize(ordinary), ordinary / (np.linalg.norm(ordinary, axis=1, keepdims=True) + 1e-5))


def test_with_tef_inserts_the_same_tef_pair_at_each_position():
    from trdetr_common.features import tef_columns, tef_offsets, with_tef

    features = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    out = with_tef(features, (4, 7))  # after 4 video columns, and after the 3 audio columns
    assert out.shape == (5, 11) and tef_offsets((4, 7)) == (4, 9)
    np.testing.assert_array_equal(out[:, :4], features[:, :4])
    np.testing.assert_array_equal(out[:, 6:9], features[:, 4:])
    np.testing.assert_array_equal(out[:, 4:6], tef_columns(5))
    np.testing.assert_array_equal(out[:, 9:11], tef_columns(5))
    np.testing.assert_array_equal(with_tef(features, ()), features)


def test_per_group_normalisation_flags():
    a, b = np.full((3, 2), 3.0, np.float32), np.full((3, 2), 3.0, np.float32)
    video = build_video_features([a, b], normalize=[True, False], tef=False)
    np.testing.assert_allclose(np.linalg.norm(video[:, :2], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(video[:, 2:], b)
