"""Long videos: window plans, per-window model inputs as the official dataset builds them, merged answers."""

from __future__ import annotations

import numpy as np
import pytest

from trdetr_common.features import build_video_features, tef_columns
from trdetr_common.postprocess import rank_moments
from trdetr_common.windows import (
    WindowOutput,
    fill_window,
    merge_moments,
    merge_saliency,
    plan_windows,
    stride_for,
    window_input,
    window_moments,
)

CLIP = 2.0


def test_a_video_no_longer_than_the_window_is_one_window_over_the_whole_video():
    for clips in (1, 10, 75):
        plan = plan_windows(clips, 75, 38)
        assert plan.starts == (0,) and plan.length == clips and plan.num_windows == 1
        assert plan.bounds(0) == (0, clips)


@pytest.mark.parametrize("clips", [76, 113, 200, 5400])
@pytest.mark.parametrize("window,stride", [(75, 38), (75, 19), (32, 8), (32, 32), (5, 1)])
def test_windows_have_the_model_length_cover_every_clip_and_the_last_ends_with_the_video(clips, window, stride):
    plan = plan_windows(clips, window, stride)
    starts = np.array(plan.starts)
    assert plan.length == window
    assert starts[0] == 0 and starts[-1] == clips - window
    assert (np.diff(starts) > 0).all() and (np.diff(starts) <= stride).all()
    assert (np.diff(starts)[:-1] == stride).all()  # only the last step is shorter
    assert plan.coverage().min() >= 1 and plan.coverage().sum() == plan.num_windows * window


def test_stride_is_a_rounded_fraction_of_the_window_and_bad_plans_are_refused():
    assert [stride_for(75, f) for f in (0.25, 0.5, 1.0, 0.001)] == [19, 38, 75, 1]
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError):
            stride_for(75, bad)
    with pytest.raises(ValueError, match="stride"):
        plan_windows(100, 75, 76)  # a gap no window would see


def test_a_window_input_is_the_official_input_of_the_cropped_video():
    """The official dataset normalises each clip row on its own and computes TEF over the clips it is given:
    a window must be exactly the model input of the crop, not the whole video's TEF."""
    rng = np.random.default_rng(0)
    groups = [rng.standard_normal((50, 6)).astype(np.float32), 3 * rng.standard_normal((50, 3)).astype(np.float32)]
    whole = build_video_features(groups)  # (50, 9 + 2): what the service keeps for the video
    plan = plan_windows(50, 20, 8)
    for start in plan.starts:
        got = window_input(whole, start, plan.length, tef=True)
        crop = build_video_features([g[start:start + plan.length] for g in groups])
        np.testing.assert_array_equal(got, crop)
        np.testing.assert_array_equal(got[:, -2:], tef_columns(20))
        if start:
            assert not np.array_equal(got[:, -2:], whole[start:start + 20, -2:])
    assert window_input(whole, 0, 50, tef=True) is whole  # the whole video: no copy


def test_fill_window_writes_one_padded_row_and_leaves_the_padding_alone():
    video = build_video_features([np.ones((30, 4), np.float32)])
    row = np.zeros((12, video.shape[1]), np.float32)
    fill_window(row, video, 20, 10, tef=True)
    np.testing.assert_array_equal(row[:10], build_video_features([np.ones((10, 4), np.float32)]))
    assert not row[10:].any()


def _output(moments: list[tuple[float, float, float]], length: int, saliency=None) -> WindowOutput:
    """A window's model output predicting these ``(start_clip, end_clip, probability)`` moments."""
    spans = np.array([[(a + b) / 2 / length, (b - a) / length] for a, b, _ in moments], np.float32)
    logits = np.array([[np.log(p / (1 - p)), 0.0] for _, _, p in moments], np.float32)
    saliency = np.zeros(length, np.float32) if saliency is None else np.asarray(saliency, np.float32)
    return WindowOutput(logits, spans, saliency)


def test_one_window_gives_exactly_the_single_video_answer():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((10, 2)).astype(np.float32)
    spans = rng.uniform(0.05, 0.6, (10, 2)).astype(np.float32)
    saliency = rng.standard_normal(40).astype(np.float32)
    plan = plan_windows(40, 75, 38)
    for rule in ("nms", "fuse", "salient"):
        got = merge_moments([WindowOutput(logits, spans, saliency)], plan, clip_length_s=CLIP, rule=rule, top_k=4,
                            nms_iou=0.5, min_score=0.1)
        want = rank_moments(logits, spans, num_clips=40, clip_length_s=CLIP, top_k=4, nms_iou=0.5, min_score=0.1)
        np.testing.assert_array_equal(got, want)
    assert merge_saliency([saliency], plan) is saliency


def test_window_moments_are_shifted_to_video_time():
    plan = plan_windows(200, 75, 38)
    output = _output([(10, 20, 0.8)], 75)
    moments = window_moments(output.pred_logits, output.pred_spans, plan, 1, CLIP)
    np.testing.assert_allclose(moments, [[(38 + 10) * CLIP, (38 + 20) * CLIP, 0.8]], rtol=1e-6)


def test_nms_keeps_one_copy_of_a_moment_two_windows_see():
    plan = plan_windows(30, 20, 10)  # windows [0, 20) and [10, 30)
    outputs = [_output([(12, 18, 0.7), (0, 4, 0.2)], 20), _output([(2, 8, 0.9), (15, 19, 0.3)], 20)]
    merged = merge_moments(outputs, plan, clip_length_s=CLIP, rule="nms")
    np.testing.assert_allclose(merged, [[24, 36, 0.9], [50, 58, 0.3], [0, 8, 0.2]], rtol=1e-5)


def test_fuse_scores_a_moment_by_the_mean_probability_of_the_windows_that_contain_it():
    plan = plan_windows(30, 20, 10)
    agreed = [_output([(12, 18, 0.8)], 20), _output([(2, 8, 0.6)], 20)]  # clips 12-18 seen by both
    np.testing.assert_allclose(merge_moments(agreed, plan, clip_length_s=CLIP, rule="fuse"), [[24, 36, 0.7]],
                               rtol=1e-5)
    alone = [_output([(12, 18, 0.8)], 20), _output([(15, 19, 0.6)], 20)]  # the second window saw it, said no
    merged = merge_moments(alone, plan, clip_length_s=CLIP, rule="fuse")
    np.testing.assert_allclose(merged, [[50, 58, 0.6], [24, 36, 0.4]], rtol=1e-5)
    assert (merged[:, 2] >= 0).all() and (merged[:, 2] <= 1).all()


def test_salient_drops_a_confident_moment_where_the_video_is_not_salient():
    """Window 0 is about the query (salient clips 4-8), window 1 is not, but predicts its moment with 0.95:
    nms ranks the unrelated moment first, salient keeps the moment on the salient clips."""
    plan = plan_windows(40, 20, 20)  # windows [0, 20) and [20, 40)
    salient_part = np.full(20, -3.0)
    salient_part[4:8] = 3.0
    outputs = [_output([(4, 8, 0.6)], 20, salient_part), _output([(5, 9, 0.95)], 20, np.full(20, -3.0))]
    nms = merge_moments(outputs, plan, clip_length_s=CLIP, rule="nms")
    salient = merge_moments(outputs, plan, clip_length_s=CLIP, rule="salient")
    np.testing.assert_allclose(nms[:, :2], [[50, 58], [8, 16]])
    np.testing.assert_allclose(salient, [[8, 16, 0.6]], rtol=1e-5)


def test_highlights_are_the_mean_of_the_windows_containing_each_clip():
    plan = plan_windows(5, 3, 2)  # windows [0, 3) and [2, 5)
    merged = merge_saliency([np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])], plan)
    np.testing.assert_allclose(merged, [1, 2, 6.5, 20, 30])


def test_wrong_inputs_are_refused_with_a_clear_message():
    plan = plan_windows(30, 20, 10)
    outputs = [_output([(2, 8, 0.6)], 20)] * 2
    with pytest.raises(ValueError, match="unknown merge rule"):
        merge_moments(outputs, plan, clip_length_s=CLIP, rule="vote")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="plan has 2"):
        merge_moments(outputs[:1], plan, clip_length_s=CLIP)
    with pytest.raises(ValueError, match="expected 20"):
        merge_saliency([np.zeros(20), np.zeros(19)], plan)


def test_fill_window_rewrites_every_tef_pair_of_an_audio_layout():
    from trdetr_common.features import tef_columns, with_tef

    stored = np.random.default_rng(0).standard_normal((30, 7)).astype(np.float32)
    whole = with_tef(stored, (4, 7))  # video 4 | TEF | audio 3 | TEF
    row = window_input(whole, 10, 8, tef=(4, 9))
    np.testing.assert_array_equal(row[:, 4:6], tef_columns(8))
    np.testing.assert_array_equal(row[:, 9:11], tef_columns(8))
    np.testing.assert_array_equal(row[:, 6:9], stored[10:18, 4:])
