"""QVHighlights metric definitions on small hand-computed cases (no shared data needed)."""

import numpy as np
import pytest

from training.evaluation import (
    IOU_THRESHOLDS,
    EvaluationError,
    binary_average_precision,
    evaluate,
    moment_average_precision,
)


def test_iou_thresholds_are_the_official_rounded_values():
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_moment_ap_is_one_when_the_best_scored_window_is_exact():
    gt = np.array([[0.0, 10.0]])
    ap = moment_average_precision(gt, np.array([[0, 10, 0.9], [20, 30, 0.8]]))
    np.testing.assert_array_equal(ap, np.ones(10))


def test_moment_ap_halves_when_a_false_positive_is_ranked_first():
    gt = np.array([[0.0, 10.0]])
    ap = moment_average_precision(gt, np.array([[20, 30, 0.9], [0, 10, 0.8]]))
    np.testing.assert_allclose(ap, np.full(10, 0.5))


def test_moment_ap_counts_iou_equal_to_the_threshold_as_a_hit():
    ap = moment_average_precision(np.array([[0.0, 10.0]]), np.array([[0, 7, 0.9]]))  # IoU 0.7
    np.testing.assert_array_equal(ap, [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])


def test_a_ground_truth_window_is_matched_once_so_duplicates_are_false_positives():
    gt = np.array([[0.0, 10.0], [20.0, 30.0]])
    preds = np.array([[0, 10, 0.9], [0, 10, 0.8], [20, 30, 0.7]])
    # TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> 1/2 * 1 + 1/2 * 2/3
    np.testing.assert_allclose(moment_average_precision(gt, preds), np.full(10, 0.5 + 1 / 3))


def test_binary_ap_uses_the_precision_envelope_at_each_new_recall():
    # ranked labels 1, 0, 1, 0: precision 1 at recall 1/2, then 2/3 at recall 1
    assert binary_average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])) == pytest.approx(
        (1 + 2 / 3) / 2
    )


def test_binary_ap_treats_tied_scores_as_one_point():
    assert binary_average_precision(np.array([1, 0, 1, 0]), np.full(4, 0.5)) == 0.5


def test_binary_ap_of_constant_labels():
    assert binary_average_precision(np.zeros(3), np.array([0.3, 0.2, 0.1])) == 0
    assert binary_average_precision(np.ones(3), np.array([0.3, 0.2, 0.1])) == 1


def _annotation(qid, windows, duration=10, clip_ids=(0,), ratings=((2, 2, 2),)):
    return {
        "qid": qid,
        "duration": duration,
        "relevant_windows": windows,
        "relevant_clip_ids": list(clip_ids),
        "saliency_scores": [list(r) for r in ratings],
    }


def test_highlight_hit1_and_map_on_two_queries():
    annotations = [
        _annotation(1, [[0, 4]], duration=6, clip_ids=[0, 1], ratings=[[4, 2, 0], [1, 3, 4]]),
        _annotation(2, [[2, 4]], duration=4, clip_ids=[1], ratings=[[2, 2, 2]]),
    ]
    predictions = [
        {"qid": 1, "pred_saliency_scores": [0.1, 0.9, 0.5]},  # top clip 1 is rated [1, 3, 4]
        {"qid": 2, "pred_saliency_scores": [0.8, 0.2]},  # top clip 0 is unrated
    ]
    metrics = evaluate(predictions, annotations)
    assert list(metrics) == ["brief", "HL-min-Fair", "HL-min-Good", "HL-min-VeryGood"]
    assert [m["HL-Hit1"] for m in metrics.values() if "HL-Hit1" in m] == [50.0, 50.0, 50.0]
    # Fair AP per (query, annotator): 1/3, 5/6, 1 and 1/2 three times -> mean 0.6111
    assert metrics["HL-min-Fair"]["HL-mAP"] == 61.11
    assert metrics["brief"]["HL-min-Fair-mAP"] == 61.11


def test_moment_metrics_by_length_bucket_and_official_layout():
    annotations = [_annotation(1, [[0, 8]]), _annotation(2, [[0, 20], [40, 50]], duration=60)]
    predictions = [
        {"qid": 1, "pred_relevant_windows": [[0, 8, 0.9]]},
        {"qid": 2, "pred_relevant_windows": [[0, 20, 0.9], [40, 50, 0.5]]},
    ]
    metrics = evaluate(predictions, annotations)
    assert list(metrics) == ["brief", "full", "long", "middle", "short"]
    assert list(metrics["brief"]) == sorted(metrics["brief"])
    assert metrics["full"]["MR-R1"]["0.95"] == 100.0
    assert metrics["full"]["MR-mAP"]["average"] == 100.0
    # 'short' keeps query 1 and only the 10 s window of query 2, which is not its top prediction
    assert metrics["short"]["MR-R1"]["0.5"] == 50.0
    # query 2 ranks a false positive first there: AP 1/2, so mAP (1 + 1/2) / 2
    assert metrics["short"]["MR-mAP"]["0.5"] == 75.0
    assert metrics["middle"]["MR-R1"]["0.5"] == 100.0
    # no window longer than 30 s: the bucket is reported as null, not a crash
    assert metrics["long"]["MR-mAP"]["average"] is None and metrics["brief"]["MR-long-mAP"] is None


def test_mismatched_qids_are_rejected_unless_asked_to_use_the_shared_ones():
    annotations = [_annotation(1, [[0, 8]]), _annotation(2, [[0, 8]])]
    predictions = [{"qid": 1, "pred_relevant_windows": [[0, 8, 0.9]]}]
    with pytest.raises(EvaluationError, match="1 annotated qids have no prediction"):
        evaluate(predictions, annotations)
    assert evaluate(predictions, annotations, match_number=False)["full"]["MR-R1"]["0.5"] == 100.0


@pytest.mark.parametrize(
    ("prediction", "message"),
    [
        ({"pred_relevant_windows": [[0, 8, 0.9]]}, "missing key 'qid'"),
        ({"qid": 1}, "needs 'pred_relevant_windows' and/or 'pred_saliency_scores'"),
        ({"qid": 1, "pred_relevant_windows": [[0, 8]]}, r"list of \[start, end, score\]"),
        ({"qid": 1, "pred_relevant_windows": []}, "is empty"),
        ({"qid": 1, "pred_saliency_scores": ["x"]}, "non-empty list of numbers"),
    ],
)
def test_malformed_predictions_get_an_error_naming_the_record(prediction, message):
    with pytest.raises(EvaluationError, match=f"prediction 0: .*{message}"):
        evaluate([prediction], [_annotation(1, [[0, 8]])])


def test_malformed_annotations_get_an_error_naming_the_record():
    bad = _annotation(1, [[0, 8]], clip_ids=[9])  # a 10 s video has clips 0..4
    with pytest.raises(
        EvaluationError, match=r"annotation 0: 'relevant_clip_ids' must be clip indices in \[0, 5\)"
    ):
        evaluate([{"qid": 1, "pred_saliency_scores": [0.1]}], [bad])


def test_binary_ap_takes_the_precision_envelope_not_the_raw_precision():
    # ranked labels 0, 1, 1, 0, 1: precision 1/2, 2/3, 3/5 at recall 1/3, 2/3, 1. The envelope (best precision
    # at this recall or beyond) is 2/3, 2/3, 3/5 -> AP 29/45 = 0.6444; raw precision would give 0.5889.
    labels, scores = np.array([0, 1, 1, 0, 1]), np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    assert binary_average_precision(labels, scores) == pytest.approx(29 / 45)


def test_binary_ap_of_a_tie_group_between_positives():
    # scores 0.9 | 0.5 0.5 | 0.1 with labels 1 | 0 0 | 1: the tie is one point (recall 1/2, precision 1/3),
    # so the recall levels are 1/2 (envelope 1) and 1 (precision 2/4) -> AP 3/4.
    assert binary_average_precision(np.array([1, 0, 0, 1]), np.array([0.9, 0.5, 0.5, 0.1])) == 0.75


def test_binary_ap_of_a_single_clip():
    assert binary_average_precision(np.array([1]), np.array([0.2])) == 1
    assert binary_average_precision(np.array([0]), np.array([0.2])) == 0


def test_moment_ap_interpolates_precision_over_recall():
    # FP, TP, TP against 2 windows: precision 0, 1/2, 2/3 at recall 0, 1/2, 1; the VOC envelope is 2/3 at
    # both recall steps -> AP 2/3 (raw precision would give 1/2 * 1/2 + 1/2 * 2/3 = 0.583).
    gt = np.array([[0.0, 10.0], [20.0, 30.0]])
    preds = np.array([[40, 50, 0.9], [0, 10, 0.8], [20, 30, 0.7]])
    np.testing.assert_allclose(moment_average_precision(gt, preds), np.full(10, 2 / 3))


def test_highlight_top_clip_past_the_annotated_clips_is_a_miss():
    # a 4 s video has 2 clips; a third score (one clip of rounding slack) that ranks first hits nothing,
    # and the AP is computed on the 2 annotated clips: labels 0, 1 ranked 0.5, 0.2 -> 1/2.
    annotation = _annotation(1, [[2, 4]], duration=4, clip_ids=[0], ratings=[[0, 0, 0]])
    annotation["relevant_clip_ids"], annotation["saliency_scores"] = [1], [[3, 3, 3]]
    metrics = evaluate([{"qid": 1, "pred_saliency_scores": [0.5, 0.2, 0.9]}], [annotation])
    assert metrics["HL-min-Good"] == {"HL-mAP": 50.0, "HL-Hit1": 0.0}


@pytest.mark.parametrize("count", [4, 5, 6])
def test_saliency_of_one_score_per_clip_give_or_take_one_is_accepted(count):
    evaluate([{"qid": 1, "pred_saliency_scores": [0.5] * count}], [_annotation(1, [[0, 8]])])


@pytest.mark.parametrize("count", [1, 3, 7, 75])
def test_saliency_of_the_wrong_length_is_rejected(count):
    """A 10 s video has 5 clips: other lengths used to be cut or zero-padded without a word."""
    with pytest.raises(
        EvaluationError,
        match=rf"qid 1: 'pred_saliency_scores' has {count} scores but its video "
        r"\(10 s\) has 5 clips of 2 s: give one score per clip \(4..6\)",
    ):
        evaluate([{"qid": 1, "pred_saliency_scores": [0.5] * count}], [_annotation(1, [[0, 8]])])


def test_saliency_of_videos_cut_to_max_clips_is_accepted_when_said():
    annotation = _annotation(1, [[0, 8]], duration=20)  # 10 clips
    prediction = {"qid": 1, "pred_saliency_scores": [0.5] * 4}
    with pytest.raises(EvaluationError, match="or 4 for videos cut to their first 4 clips"):
        evaluate([{"qid": 1, "pred_saliency_scores": [0.5] * 3}], [annotation], max_clips=4)
    with pytest.raises(EvaluationError, match="has 4 scores"):
        evaluate([prediction], [annotation])
    assert evaluate([prediction], [annotation], max_clips=4)["HL-min-Fair"]["HL-Hit1"] == 100.0


def test_moment_ap_envelope_lifts_a_dip_to_the_best_precision_further_down_the_ranking():
    # TP, FP, FP, TP, TP against 3 disjoint windows: precision 1, 1/2, 1/3, 2/4, 3/5 at recall 1/3, 1/3, 1/3,
    # 2/3, 1. The envelope is the running max from the right: 1, 3/5, 3/5, 3/5, 3/5. Recall steps at the 1st,
    # 4th and 5th prediction: AP = 1/3 * 1 + 1/3 * 3/5 + 1/3 * 3/5 = 11/15 = 0.7333
    # (raw precision at the steps would give 1/3 * (1 + 2/4 + 3/5) = 0.7).
    gt = np.array([[0.0, 10.0], [20.0, 30.0], [40.0, 50.0]])
    preds = np.array([[0, 10, 0.9], [60, 70, 0.8], [80, 90, 0.7], [20, 30, 0.6], [40, 50, 0.5]])
    np.testing.assert_allclose(moment_average_precision(gt, preds), np.full(10, 11 / 15))


def test_binary_ap_envelope_lifts_a_dip_to_the_best_precision_further_down_the_ranking():
    # ranked labels 1, 0, 0, 1, 1: precision 1, 1/2, 1/3, 2/4, 3/5 at recall 1/3, 1/3, 1/3, 2/3, 1. Envelope
    # (max from the right) at the three recall levels: 1, 3/5, 3/5 -> AP (1 + 3/5 + 3/5) / 3 = 11/15.
    labels, scores = np.array([1, 0, 0, 1, 1]), np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    assert binary_average_precision(labels, scores) == pytest.approx(11 / 15)


def test_highlight_annotator_without_any_positive_clip_scores_zero_and_all_positive_scores_one():
    # 3 clips, ratings per clip (annotators 1, 2, 3): [4, 1, 2], [4, 1, 3], [4, 0, 2]; scores 0.2, 0.9, 0.5.
    # Fair (>= 2): annotator 1 all positive -> AP 1, annotator 2 none -> AP 0, annotator 3 all -> 1: mAP 2/3.
    # Good (>= 3): 1 -> 1, 2 -> 0, annotator 3 only clip 1, ranked first -> 1: mAP 2/3.
    # VeryGood (>= 4): 1 -> 1, 2 -> 0, 3 none -> 0: mAP 1/3.
    # Hit1: the top clip (1) is positive for annotator 1 at every threshold -> 100.
    annotation = _annotation(
        1, [[0, 6]], duration=6, clip_ids=[0, 1, 2], ratings=[[4, 1, 2], [4, 1, 3], [4, 0, 2]]
    )
    metrics = evaluate([{"qid": 1, "pred_saliency_scores": [0.2, 0.9, 0.5]}], [annotation])
    assert metrics["HL-min-Fair"] == {"HL-mAP": 66.67, "HL-Hit1": 100.0}
    assert metrics["HL-min-Good"] == {"HL-mAP": 66.67, "HL-Hit1": 100.0}
    assert metrics["HL-min-VeryGood"] == {"HL-mAP": 33.33, "HL-Hit1": 100.0}


def test_highlight_tied_scores_are_one_point_and_hit1_takes_the_first_clip_of_the_tie():
    # 4 clips rated 1, 4, 1, 4 by all three annotators: labels 0, 1, 0, 1 at every threshold.
    # All scores tied: one point, precision 2/4 at recall 1 -> AP 1/2. Hit1: np.argmax picks clip 0 -> miss.
    annotation = _annotation(
        1, [[0, 8]], duration=8, clip_ids=[0, 1, 2, 3], ratings=[[1, 1, 1], [4, 4, 4], [1, 1, 1], [4, 4, 4]]
    )
    tied = evaluate([{"qid": 1, "pred_saliency_scores": [0.5, 0.5, 0.5, 0.5]}], [annotation])
    assert tied["HL-min-VeryGood"] == {"HL-mAP": 50.0, "HL-Hit1": 0.0}
    # clips 0, 1, 3 tied at 0.5 above clip 2 (0.1): points (recall 1, precision 2/3) then (recall 1, precision 2/4);
    # recall changes once, from 0 to 1, where the envelope is max(2/3, 2/4) = 2/3 -> AP 2/3; Hit1 still clip 0.
    partly = evaluate([{"qid": 1, "pred_saliency_scores": [0.5, 0.5, 0.1, 0.5]}], [annotation])
    assert partly["HL-min-Fair"] == {"HL-mAP": 66.67, "HL-Hit1": 0.0}
