"""Raw TR-DETR outputs become ranked moments and clip scores as the official inference does."""

import json
from pathlib import Path

import numpy as np
import pytest

from trdetr_common.postprocess import (
    clip_saliency,
    foreground_scores,
    official_hl_scores,
    official_jsonl_windows,
    rank_moments,
    span_cxw_to_xx,
    temporal_nms,
    top_clips,
)

OFFICIAL_PREDS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "official_trdetr_preds"

# Three queries with foreground probabilities 0.75, 0.5 and 0.25 (softmax of [log 3, 0] etc.).
LOGITS = np.array([[np.log(3.0), 0.0], [0.0, 0.0], [0.0, np.log(3.0)]], dtype=np.float32)
# [center, width] -> [0.4, 0.6], [-0.1, 0.3] (starts before the video), [0.85, 1.05] (ends after it).
SPANS = np.array([[0.5, 0.2], [0.1, 0.4], [0.95, 0.2]], dtype=np.float32)


def test_foreground_scores_is_softmax_of_class_zero_and_stable_for_huge_logits():
    np.testing.assert_allclose(foreground_scores(LOGITS), [0.75, 0.5, 0.25], rtol=1e-6)
    huge = foreground_scores(np.array([[1000.0, 0.0], [0.0, 1000.0]]))
    np.testing.assert_array_equal(huge, [1.0, 0.0])
    assert foreground_scores(np.zeros((4, 5, 2), dtype=np.float32)).shape == (4, 5)


def test_span_cxw_to_xx():
    np.testing.assert_allclose(span_cxw_to_xx(np.array([[0.5, 1.0], [0.3, 0.2]])), [[0, 1], [0.2, 0.4]])


def test_rank_moments_scales_clamps_to_the_video_and_rounds_to_clips():
    moments = rank_moments(LOGITS, SPANS, num_clips=75, clip_length_s=2.0)
    # 150 s video: [60, 90]; [-15, 45] -> clamp [0, 45] -> 45 / 2 = 22.5 rounds half to even -> 44;
    # [127.5, 157.5] -> [127.5, 150] -> 127.5 / 2 = 63.75 -> 128.
    np.testing.assert_allclose(moments, [[60, 90, 0.75], [0, 44, 0.5], [128, 150, 0.25]], rtol=1e-6)
    assert moments.dtype == np.float64


def test_rank_moments_clamps_to_this_video_not_to_150_seconds():
    moments = rank_moments(LOGITS, SPANS, num_clips=10, clip_length_s=2.0)
    np.testing.assert_allclose(moments[:, :2], [[8, 12], [0, 6], [16, 20]])


def test_rank_moments_without_rounding_keeps_clamped_float_times():
    moments = rank_moments(LOGITS, SPANS, num_clips=75, clip_length_s=2.0, round_to_clip=False)
    np.testing.assert_allclose(moments[:, :2], [[60, 90], [0, 45], [127.5, 150]], rtol=1e-6)


def test_times_are_cut_to_four_decimals_before_rounding_to_clips_as_official():
    # end = (0.2 + 0.5 * 0.2000002) * 150 = 45.000015 in float32; the official jsonl writes 45.0,
    # and 45.0 / 2 = 22.5 rounds (half to even) to 22 -> 44 s, not to 46 s.
    spans = np.array([[0.2, np.float32(0.2000002)]], dtype=np.float32)
    moments = rank_moments(np.zeros((1, 2), np.float32), spans, num_clips=75, clip_length_s=2.0)
    assert moments[0, 1] == 44.0


def test_rank_moments_sorts_by_score_keeping_query_order_on_ties():
    logits = np.zeros((3, 2), dtype=np.float32)  # all 0.5
    moments = rank_moments(logits, SPANS, num_clips=75, clip_length_s=2.0)
    np.testing.assert_array_equal(moments[:, 0], [60, 0, 128])


def test_rank_moments_top_k_min_score_and_nms():
    spans = np.array([[0.5, 0.2], [0.5, 0.18], [0.1, 0.1]], dtype=np.float32)  # 2nd overlaps 1st
    moments = rank_moments(LOGITS, spans, num_clips=75, clip_length_s=2.0, nms_iou=0.7)
    np.testing.assert_allclose(moments[:, 2], [0.75, 0.25], rtol=1e-6)
    assert len(rank_moments(LOGITS, spans, num_clips=75, clip_length_s=2.0, top_k=1)) == 1
    kept = rank_moments(LOGITS, spans, num_clips=75, clip_length_s=2.0, min_score=0.4)
    np.testing.assert_allclose(kept[:, 2], [0.75, 0.5], rtol=1e-6)


def test_rank_moments_rejects_outputs_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"both \(num_queries, 2\)"):
        rank_moments(LOGITS[None], SPANS[None], num_clips=75, clip_length_s=2.0)
    with pytest.raises(ValueError, match="num_clips >= 1"):
        rank_moments(LOGITS, SPANS, num_clips=0, clip_length_s=2.0)


def test_official_jsonl_windows_rounds_scores_to_four_decimals():
    logits = np.array([[0.3, 0.0], [0.0, 0.0]], dtype=np.float32)  # p = 0.574442516...
    windows = official_jsonl_windows(logits, SPANS[:2], duration_s=150)
    assert windows == [[60.0, 90.0, 0.5744], [0.0, 44.0, 0.5]]


def test_service_moments_and_official_jsonl_agree_on_full_length_videos(official_cases):
    """On 75-clip (150 s) videos both paths give the same windows; scores differ only by rounding."""
    for i in range(int(official_cases["num_cases"])):
        if int(official_cases["lengths"][i][0]) != 75:
            continue
        logits, spans = official_cases[f"pred_logits_{i}"], official_cases[f"pred_spans_{i}"]
        moments = rank_moments(logits, spans, num_clips=75, clip_length_s=2.0)
        official = np.array(official_jsonl_windows(logits, spans, duration_s=150.0))
        np.testing.assert_array_equal(moments[:, :2], official[:, :2])
        np.testing.assert_allclose(moments[:, 2], official[:, 2], atol=5e-5)
        assert np.all(np.diff(moments[:, 2]) <= 0)
        assert np.all(moments[:, :2] % 2 == 0) and moments[:, :2].min() >= 0 and moments[:, :2].max() <= 150


def test_temporal_nms_keeps_best_and_drops_hull_iou_above_threshold():
    moments = np.array([[0, 10, 0.9], [1, 10, 0.8], [20, 30, 0.7], [0, 4, 0.95]])
    # [0, 4] vs [0, 10]: 4 / 10 = 0.4 kept; [0, 10] vs [1, 10]: 9 / 10 = 0.9 dropped.
    np.testing.assert_array_equal(temporal_nms(moments, 0.5), [[0, 4, 0.95], [0, 10, 0.9], [20, 30, 0.7]])
    np.testing.assert_array_equal(temporal_nms(moments, 0.5, max_after=2), [[0, 4, 0.95], [0, 10, 0.9]])
    # the threshold is strict: IoU exactly 0.9 survives a 0.9 threshold
    assert len(temporal_nms(moments, 0.9)) == 4


def test_temporal_nms_single_and_empty_inputs():
    single = np.array([[3.0, 5.0, 0.1]])
    np.testing.assert_array_equal(temporal_nms(single, 0.5), single)
    assert temporal_nms(np.zeros((0, 3)), 0.5).shape == (0, 3)


def test_clip_saliency_gives_bounds_raw_and_min_max_scores():
    result = clip_saliency(np.array([-1.0, 3.0, 1.0]), clip_length_s=2.0)
    np.testing.assert_array_equal(result.start_s, [0, 2, 4])
    np.testing.assert_array_equal(result.end_s, [2, 4, 6])
    np.testing.assert_array_equal(result.raw, [-1, 3, 1])
    np.testing.assert_array_equal(result.normalized, [0, 1, 0.5])


def test_constant_saliency_normalises_to_all_ones():
    np.testing.assert_array_equal(clip_saliency(np.full(4, 0.3), 2.0).normalized, np.ones(4))


def test_top_clips_sorted_descending_with_earlier_clip_first_on_ties():
    np.testing.assert_array_equal(top_clips(np.array([0.1, 0.9, 0.5, 0.9]), 3), [1, 3, 2])
    np.testing.assert_array_equal(top_clips(np.array([0.1, 0.2]), 10), [1, 0])


def test_bad_saliency_is_rejected_with_a_reason():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        clip_saliency(np.zeros((2, 2)), 2.0)
    with pytest.raises(ValueError, match="NaN"):
        top_clips(np.array([0.1, np.nan]), 1)


def test_official_hl_scores_are_float16_values_of_the_valid_clips():
    assert official_hl_scores(np.array([0.1, -0.2, 7.0], dtype=np.float32), num_clips=2) == [
        0.0999755859375,
        -0.199951171875,
    ]


def test_official_hl_scores_reproduce_the_official_jsonl_values():
    path = OFFICIAL_PREDS / "best_hl_val_preds.jsonl"
    if not path.exists():
        pytest.skip(f"official predictions not found at {path} (the shared data directory is absent)")
    with path.open() as lines:
        rows = [json.loads(line) for _, line in zip(range(50), lines, strict=False)]
    for row in rows:
        scores = row["pred_saliency_scores"]
        assert official_hl_scores(np.array(scores, dtype=np.float32)) == scores


def test_foreground_scores_agree_with_torch_softmax_to_float32_rounding():
    torch = pytest.importorskip("torch", reason="torch is only needed to cross-check the softmax")
    logits = (np.random.default_rng(0).standard_normal((10_000, 2)) * 5).astype(np.float32)
    expected = torch.softmax(torch.from_numpy(logits), -1)[:, 0].numpy()
    # numpy's and torch's float32 exp may differ in the last bit: scores agree to ~1 ulp
    np.testing.assert_allclose(foreground_scores(logits), expected, rtol=0, atol=2.5e-7)
