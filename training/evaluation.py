"""The standard QVHighlights metrics, reproducing the official ``standalone_eval`` numbers exactly.

Moment retrieval (MR): mAP over IoU thresholds 0.5:0.05:0.95 (at most 10 predicted windows per
query, every ground-truth window a positive) and Recall@1 (top window vs the ground-truth window it
overlaps most), on all queries (``full``) and on queries bucketed by ground-truth window length
(``short`` <= 10 s < ``middle`` <= 30 s < ``long``). Highlight detection (HD): per-clip AP and
Hit@1 against each of the three annotators' 0-4 ratings binarised at Fair (>= 2), Good (>= 3) and
VeryGood (>= 4).

Every number is computed with the same float64 operations as the official code (whose HD AP comes
from scikit-learn's precision-recall curve, redone here in numpy), then formatted the same way, so
the result dict equals the official ``*_metrics.json`` key for key. numpy only: no torch, no sklearn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from trdetr_common.spans import hull_iou, temporal_iou_cross

__all__ = [
    "CLIP_LENGTH_S",
    "EvaluationError",
    "IOU_THRESHOLDS",
    "binary_average_precision",
    "check_saliency_lengths",
    "evaluate",
    "evaluate_highlights",
    "evaluate_moments",
    "moment_average_precision",
    "validate_annotation",
    "validate_prediction",
]

IOU_THRESHOLDS: tuple[float, ...] = tuple(float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10))
LENGTH_BUCKETS: dict[str, tuple[float, float]] = {
    "short": (0, 10),
    "middle": (10, 30),
    "long": (30, 150),
    "full": (0, 150),
}
HL_MIN_RATINGS: dict[str, int] = {"Fair": 2, "Good": 3, "VeryGood": 4}
CLIP_LENGTH_S = 2
MAX_PRED_WINDOWS = 10

Record = dict[str, Any]


class EvaluationError(ValueError):
    """Predictions or annotations that cannot be evaluated; the message says what to fix."""


# --------------------------------------------------------------------------- input checks


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_windows(windows: Any, width: int, key: str) -> None:
    if not isinstance(windows, list) or not all(
        isinstance(w, list) and len(w) == width and all(_is_number(v) for v in w) for w in windows
    ):
        fields = "[start, end, score]" if width == 3 else "[start, end]"
        raise EvaluationError(f"'{key}' must be a list of {fields} number lists")


def validate_prediction(record: Any) -> None:
    """Raise EvaluationError unless ``record`` is one usable prediction line.

    A prediction is ``{"qid", "pred_relevant_windows": [[st, ed, score], ...] (non-empty),
    "pred_saliency_scores": [float per clip]}``; either task's key may be absent.
    """
    if not isinstance(record, dict):
        raise EvaluationError(f"expected a JSON object, got {type(record).__name__}")
    if "qid" not in record:
        raise EvaluationError("missing key 'qid'")
    if "pred_relevant_windows" not in record and "pred_saliency_scores" not in record:
        raise EvaluationError("needs 'pred_relevant_windows' and/or 'pred_saliency_scores'")
    if "pred_relevant_windows" in record:
        _check_windows(record["pred_relevant_windows"], 3, "pred_relevant_windows")
        if not record["pred_relevant_windows"]:
            raise EvaluationError("'pred_relevant_windows' is empty; give at least the top window")
    if "pred_saliency_scores" in record:
        scores = record["pred_saliency_scores"]
        if not isinstance(scores, list) or not scores or not all(_is_number(s) for s in scores):
            raise EvaluationError("'pred_saliency_scores' must be a non-empty list of numbers")


def _check_ratings(ratings: Any, num_ids: int) -> None:
    if (
        not isinstance(ratings, list)
        or len(ratings) != num_ids
        or not all(isinstance(r, list) and len(r) == 3 and all(_is_number(v) for v in r) for r in ratings)
    ):
        raise EvaluationError(
            "'saliency_scores' must hold one [r1, r2, r3] list of 0-4 ratings per relevant clip id"
        )


def validate_annotation(record: Any, *, moments: bool = True, highlights: bool = True) -> None:
    """Raise EvaluationError unless ``record`` is one usable QVHighlights annotation line.

    MR needs ``qid`` and non-empty ``relevant_windows``; HD needs ``duration``,
    ``relevant_clip_ids`` (clip indices within the video) and ``saliency_scores`` (three 0-4
    ratings per relevant clip).
    """
    if not isinstance(record, dict):
        raise EvaluationError(f"expected a JSON object, got {type(record).__name__}")
    needed = ["qid"]
    needed += ["relevant_windows"] if moments else []
    needed += ["duration", "relevant_clip_ids", "saliency_scores"] if highlights else []
    for key in needed:
        if key not in record:
            raise EvaluationError(f"missing key '{key}' (is this an unlabelled test split?)")
    if moments:
        _check_windows(record["relevant_windows"], 2, "relevant_windows")
        if not record["relevant_windows"]:
            raise EvaluationError("'relevant_windows' is empty")
    if highlights:
        if not _is_number(record["duration"]) or record["duration"] <= 0:
            raise EvaluationError("'duration' must be a positive number of seconds")
        num_clips = int(record["duration"] / CLIP_LENGTH_S)
        clip_ids = record["relevant_clip_ids"]
        if not isinstance(clip_ids, list) or not all(
            isinstance(c, int) and 0 <= c < num_clips for c in clip_ids
        ):
            raise EvaluationError(f"'relevant_clip_ids' must be clip indices in [0, {num_clips})")
        _check_ratings(record["saliency_scores"], len(clip_ids))


def _validate_all(
    predictions: Sequence[Record], annotations: Sequence[Record], moments: bool, highlights: bool
) -> None:
    """Every record valid and every qid unique on each side, else an error naming the record."""
    for name, records, check in (
        ("prediction", predictions, validate_prediction),
        ("annotation", annotations, lambda r: validate_annotation(r, moments=moments, highlights=highlights)),
    ):
        seen: set = set()
        for index, record in enumerate(records):
            try:
                check(record)
            except EvaluationError as error:
                raise EvaluationError(f"{name} {index}: {error}") from None
            if record["qid"] in seen:
                raise EvaluationError(f"{name} {index}: qid {record['qid']} appears more than once")
            seen.add(record["qid"])


def _matched(
    predictions: Sequence[Record], annotations: Sequence[Record], match_number: bool
) -> tuple[list[Record], list[Record]]:
    """Both lists restricted to the shared qids; with ``match_number`` the qid sets must be equal."""
    pred_qids = {p["qid"] for p in predictions}
    gt_qids = {a["qid"] for a in annotations}
    if match_number and pred_qids != gt_qids:
        missing, extra = sorted(gt_qids - pred_qids, key=str), sorted(pred_qids - gt_qids, key=str)
        raise EvaluationError(
            f"predictions and annotations must cover the same qids: {len(missing)} annotated qids have no "
            f"prediction (e.g. {missing[:5]}), {len(extra)} predicted qids are not annotated (e.g. {extra[:5]})"
        )
    shared = pred_qids & gt_qids
    return [p for p in predictions if p["qid"] in shared], [a for a in annotations if a["qid"] in shared]


def check_saliency_lengths(
    predictions: Sequence[Record], annotations: Sequence[Record], max_clips: int | None = None
) -> None:
    """Every ``pred_saliency_scores`` must have one score per clip of its video.

    A video of ``duration`` seconds has ``n = int(duration / 2)`` clips; ``n - 1 .. n + 1`` scores are
    accepted (the release's feature files differ from ``duration / 2`` by one clip for 13 of 1550 val
    videos). With ``max_clips`` (the ``max_v_l`` the videos were cut to), exactly ``max_clips`` scores are
    also accepted for a video longer than that. Anything else used to be cut or zero-padded silently.

    Raises:
        EvaluationError: naming the first qid whose score count does not fit its video.
    """
    gt_by_qid = {a["qid"]: a for a in annotations}
    for p in predictions:
        duration = gt_by_qid[p["qid"]]["duration"]
        num_clips, got = int(duration / CLIP_LENGTH_S), len(p["pred_saliency_scores"])
        if abs(got - num_clips) <= 1 or (max_clips is not None and got == max_clips < num_clips):
            continue
        cut = f", or {max_clips} for videos cut to their first {max_clips} clips" if max_clips else ""
        raise EvaluationError(
            f"qid {p['qid']}: 'pred_saliency_scores' has {got} scores but its video ({duration} s) has "
            f"{num_clips} clips of {CLIP_LENGTH_S:g} s: give one score per clip ({num_clips - 1}..{num_clips + 1}"
            f"{cut}); were the predictions written for another video or cut (trdetr-eval --max-v-l)?"
        )


# --------------------------------------------------------------------------- moment retrieval


def _voc_interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision envelope (VOC 2011 style), as official ``interpolated_precision_recall``.

    Args:
        precision, recall: (P,) cumulative values over the ranked predictions.
    """
    precision = np.hstack([[0], precision, [0]])
    recall = np.hstack([[0], recall, [1]])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * envelope[steps]))


def moment_average_precision(
    gt_windows: np.ndarray, pred_windows: np.ndarray, thresholds: Sequence[float] = IOU_THRESHOLDS
) -> np.ndarray:
    """Detection AP of one query's ranked windows at each IoU threshold (official MMAction2-style AP).

    Predictions are taken by score (descending, stable); each one matches the unmatched ground-truth
    window with the highest IoU if that IoU reaches the threshold, else it is a false positive.

    Args:
        gt_windows: (G, 2) ``[start, end]``.
        pred_windows: (P, 3) ``[start, end, score]``.
    Returns:
        (len(thresholds),) AP values.
    """
    thresholds = np.asarray(thresholds, dtype=float)
    if len(pred_windows) == 0:
        return np.zeros(len(thresholds))
    pred_windows = pred_windows[np.argsort(-pred_windows[:, 2], kind="stable")]
    ious = temporal_iou_cross(pred_windows[:, :2], gt_windows)  # (P, G)
    taken = np.zeros((len(thresholds), len(gt_windows)), dtype=bool)
    true_pos = np.zeros((len(thresholds), len(pred_windows)))
    for p, row in enumerate(ious):
        by_iou = row.argsort()[::-1]  # the official call, so ties and NaN (first) order the same way
        # a window qualifies unless its IoU is below the threshold (NaN qualifies, as official)
        free = ~(row[by_iou][None, :] < thresholds[:, None]) & ~taken[:, by_iou]
        hit = free.any(axis=1)
        first = free.argmax(axis=1)
        taken[np.nonzero(hit)[0], by_iou[first[hit]]] = True
        true_pos[hit, p] = 1
    tp_cum = np.cumsum(true_pos, axis=1)
    fp_cum = np.cumsum(1 - true_pos, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp_cum / float(len(gt_windows))
        precision = tp_cum / (tp_cum + fp_cum)
    return np.array([_voc_interpolated_ap(precision[t], recall[t]) for t in range(len(thresholds))])


def _percent(value: float) -> float:
    """Official formatting: ``float(f"{100 * v:.2f}")``."""
    return float(f"{100 * value:.2f}")


def _moment_map(predictions: Sequence[Record], annotations: Sequence[Record]) -> dict[str, float]:
    """``MR-mAP``: mean over queries of the AP at each threshold, plus their ``average``."""
    gt_by_qid = {a["qid"]: np.array(a["relevant_windows"], dtype=float).reshape(-1, 2) for a in annotations}
    per_query = np.array(
        [
            moment_average_precision(
                gt_by_qid[p["qid"]],
                np.array(p["pred_relevant_windows"][:MAX_PRED_WINDOWS], dtype=float).reshape(-1, 3),
            )
            for p in predictions
        ]
    )
    per_threshold = per_query.mean(0)
    result = {str(t): _percent(ap) for t, ap in zip(IOU_THRESHOLDS, per_threshold, strict=True)}
    result["average"] = _percent(np.mean(per_threshold))
    return result


def _moment_recall_at_1(predictions: Sequence[Record], annotations: Sequence[Record]) -> dict[str, float]:
    """``MR-R1``: share of queries whose first predicted window reaches each threshold.

    The ground-truth window compared is the one with the highest true IoU with the top prediction;
    the comparison itself uses the hull IoU, as official ``compute_mr_r1``.
    """
    top1 = {p["qid"]: np.array(p["pred_relevant_windows"][0][:2], dtype=float) for p in predictions}
    best_gt = {}
    for a in annotations:
        windows = np.array(a["relevant_windows"], dtype=float)
        best_gt[a["qid"]] = windows[np.argmax(temporal_iou_cross(top1[a["qid"]][None], windows)[0])]
    qids = list(top1)
    ious = hull_iou(np.stack([top1[q] for q in qids]), np.stack([best_gt[q] for q in qids]))
    return {str(t): float(f"{np.mean(ious >= t) * 100:.2f}") for t in IOU_THRESHOLDS}


def _in_length_bucket(
    predictions: Sequence[Record], annotations: Sequence[Record], bucket: tuple[float, float]
) -> tuple[list[Record], list[Record]]:
    """Queries with a ground-truth window of length in (low, high], keeping only those windows.

    The full range (0, 150] keeps every query and window untouched, as official.
    """
    low, high = bucket
    if bucket == LENGTH_BUCKETS["full"]:
        return list(predictions), list(annotations)
    kept = []
    for a in annotations:
        windows = [w for w in a["relevant_windows"] if low < w[1] - w[0] <= high]
        if windows:
            kept.append({**a, "relevant_windows": windows})
    qids = {a["qid"] for a in kept}
    return [p for p in predictions if p["qid"] in qids], kept


def evaluate_moments(predictions: Sequence[Record], annotations: Sequence[Record]) -> dict[str, dict]:
    """MR metrics per length bucket: ``{"short"|"middle"|"long"|"full": {"MR-mAP": ..., "MR-R1": ...}}``.

    A bucket without any ground-truth window of its length (possible on small sets) gets None
    (JSON null) for every number.

    Args:
        predictions, annotations: matched records with the same qids (see :func:`evaluate`).
    """
    result = {}
    for name, bucket in LENGTH_BUCKETS.items():
        preds, gts = _in_length_bucket(predictions, annotations, bucket)
        if not gts:  # the official code crashes here; we report "no data" as null
            result[name] = {
                "MR-mAP": dict.fromkeys([*map(str, IOU_THRESHOLDS), "average"]),
                "MR-R1": dict.fromkeys(map(str, IOU_THRESHOLDS)),
            }
            continue
        result[name] = {"MR-mAP": _moment_map(preds, gts), "MR-R1": _moment_recall_at_1(preds, gts)}
    return result


# --------------------------------------------------------------------------- highlight detection


def binary_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Official HD ``get_ap``: interpolated AP over scikit-learn's precision-recall curve.

    The curve has one point per distinct score (tied clips form one point); each point's precision
    is replaced by the best precision at equal or higher recall, and these are averaged over the
    points where recall (as float32, as official) changes. All-negative labels give 0, all-positive
    labels 1.

    Args:
        y_true: (T,) 0/1 labels.
        y_score: (T,) scores, higher = more likely positive.
    """
    y_true = np.asarray(y_true, dtype=float)
    if np.all(y_true == y_true[0]):
        return float(y_true[0] != 0)
    order = np.argsort(np.asarray(y_score), kind="mergesort")[::-1]
    sorted_scores, sorted_true = np.asarray(y_score)[order], y_true[order]
    last_of_tie = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(sorted_true) - 1]
    true_pos = np.cumsum(sorted_true, dtype=np.float64)[last_of_tie]
    precision = true_pos / (last_of_tie + 1)
    recall = true_pos / true_pos[-1]
    precision = np.maximum.accumulate(np.hstack([precision[::-1], 1]))
    recall = np.hstack([recall[::-1], 0]).astype(np.float32)
    return float(np.mean(precision[np.nonzero(np.diff(recall))]))


def _binary_ratings(annotation: Record, min_rating: int) -> np.ndarray:
    """(num_clips, 3) 0/1: each annotator's rating of each clip is >= ``min_rating`` (unrated = 0)."""
    ratings = np.zeros((int(annotation["duration"] / CLIP_LENGTH_S), 3))
    ratings[np.array(annotation["relevant_clip_ids"], dtype=int)] = np.array(
        annotation["saliency_scores"]
    ).reshape(-1, 3)
    return (ratings >= min_rating).astype(float)


def _fit_length(scores: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad predicted clip scores to the annotated clip count."""
    fitted = np.zeros(length)
    fitted[: min(length, len(scores))] = scores[:length]
    return fitted


def evaluate_highlights(predictions: Sequence[Record], annotations: Sequence[Record]) -> dict[str, dict]:
    """HD metrics: ``{"HL-min-Fair"|"HL-min-Good"|"HL-min-VeryGood": {"HL-mAP": .., "HL-Hit1": ..}}``.

    HL-mAP averages :func:`binary_average_precision` over queries and annotators; HL-Hit1 is the
    share of queries whose top-scored clip is positive for at least one annotator.
    """
    gt_by_qid = {a["qid"]: a for a in annotations}
    result = {}
    for name, min_rating in HL_MIN_RATINGS.items():
        hits = np.zeros((len(predictions), 3))
        aps = np.zeros((len(predictions), 3))
        for row, p in enumerate(predictions):
            labels = _binary_ratings(gt_by_qid[p["qid"]], min_rating)
            scores = np.array(p["pred_saliency_scores"], dtype=float)
            best_clip = int(np.argmax(scores))
            if best_clip < len(labels):
                hits[row] = labels[best_clip]
            fitted = _fit_length(scores, len(labels))
            aps[row] = [binary_average_precision(labels[:, k], fitted) for k in range(3)]
        result[f"HL-min-{name}"] = {
            "HL-mAP": _percent(np.mean(aps)),
            "HL-Hit1": _percent(np.mean(hits.max(1))),
        }
    return result


# --------------------------------------------------------------------------- both tasks


def _brief(moments: dict | None, highlights: dict | None) -> dict[str, float]:
    """The official ``brief`` block: the headline MR numbers (keys sorted), then every HD number."""
    brief: dict[str, float] = {}
    if moments is not None:
        headline = {
            "MR-full-mAP": moments["full"]["MR-mAP"]["average"],
            "MR-full-mAP@0.5": moments["full"]["MR-mAP"]["0.5"],
            "MR-full-mAP@0.75": moments["full"]["MR-mAP"]["0.75"],
            "MR-short-mAP": moments["short"]["MR-mAP"]["average"],
            "MR-middle-mAP": moments["middle"]["MR-mAP"]["average"],
            "MR-long-mAP": moments["long"]["MR-mAP"]["average"],
            "MR-full-R1@0.5": moments["full"]["MR-R1"]["0.5"],
            "MR-full-R1@0.7": moments["full"]["MR-R1"]["0.7"],
        }
        brief.update(sorted(headline.items()))
    if highlights is not None:
        for level, values in highlights.items():
            brief.update({f"{level}-{metric.split('-')[1]}": v for metric, v in values.items()})
    return brief


def evaluate(
    predictions: list[dict], annotations: list[dict], *, match_number: bool = True, max_clips: int | None = None
) -> dict[str, dict]:
    """All QVHighlights metrics in the official layout and key order.

    The tasks evaluated follow the first prediction's keys, as official: MR if it has
    ``pred_relevant_windows``, HD if it has ``pred_saliency_scores``.

    Args:
        predictions: official prediction records (``qid``, ``pred_relevant_windows``,
            ``pred_saliency_scores``).
        annotations: QVHighlights annotation records (``qid``, ``duration``, ``relevant_windows``,
            ``relevant_clip_ids``, ``saliency_scores``).
        match_number: require the same qids on both sides (official default); False evaluates the
            shared qids only.
        max_clips: the videos were cut to their first ``max_clips`` clips (``max_v_l``), so a
            prediction of exactly that many saliency scores fits a longer video (see
            :func:`check_saliency_lengths`).
    Returns:
        ``{"brief": {...}, "HL-min-Fair": ..., "HL-min-Good": ..., "HL-min-VeryGood": ...,
        "full": ..., "long": ..., "middle": ..., "short": ...}`` (percentages, 2 decimals).
    Raises:
        EvaluationError: malformed records, duplicate or mismatched qids.
    """
    if not predictions or not annotations:
        raise EvaluationError("need at least one prediction and one annotation")
    do_moments = isinstance(predictions[0], dict) and "pred_relevant_windows" in predictions[0]
    do_highlights = isinstance(predictions[0], dict) and "pred_saliency_scores" in predictions[0]
    _validate_all(predictions, annotations, moments=do_moments, highlights=do_highlights)
    predictions, annotations = _matched(predictions, annotations, match_number)
    if not predictions:
        raise EvaluationError("predictions and annotations share no qid")
    for task, key, wanted in (
        ("MR", "pred_relevant_windows", do_moments),
        ("HD", "pred_saliency_scores", do_highlights),
    ):
        lacking = [p["qid"] for p in predictions if wanted and key not in p]
        if lacking:
            raise EvaluationError(
                f"{task} is evaluated (first prediction has '{key}') but qid {lacking[0]} lacks it"
            )
    if do_highlights:
        check_saliency_lengths(predictions, annotations, max_clips)
    moments = evaluate_moments(predictions, annotations) if do_moments else None
    highlights = evaluate_highlights(predictions, annotations) if do_highlights else None
    sections = {**(moments or {}), **(highlights or {})}
    return {"brief": _brief(moments, highlights), **dict(sorted(sections.items()))}
