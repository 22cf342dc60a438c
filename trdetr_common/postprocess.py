"""From raw TR-DETR outputs to ranked moments and per-clip highlight scores (numpy only).

Mirrors what the official code does after the model (``tr_detr/inference.py``
``compute_mr_results``, ``tr_detr/postprocessing_tr_detr.py`` ``PostProcessorDETR`` and
``utils/temporal_nms.py``), in the same float32 arithmetic, so the windows the service returns are
the windows the official code would write. The two deliberate differences, both because the
service knows its video's clip count rather than a fixed QVHighlights duration, are documented at
:func:`rank_moments`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trdetr_common.spans import hull_iou, span_cxw_to_xx

__all__ = [
    "ClipSaliency",
    "clip_saliency",
    "foreground_scores",
    "official_hl_scores",
    "official_jsonl_windows",
    "rank_moments",
    "span_cxw_to_xx",
    "temporal_nms",
    "top_clips",
]


def foreground_scores(pred_logits: np.ndarray) -> np.ndarray:
    """Softmax probability of class 0 (foreground), official ``F.softmax(pred_logits, -1)[..., 0]``.

    Args:
        pred_logits: (..., Q, 2) class logits.
    Returns:
        (..., Q) probabilities in the input's float dtype (float64 for integer input); the max is
        subtracted first, so large logits do not overflow.
    """
    logits = np.asarray(pred_logits)
    if logits.shape[-1:] != (2,):
        raise ValueError(f"pred_logits must end in 2 classes (..., Q, 2), got shape {logits.shape}")
    if logits.dtype.kind != "f":
        logits = logits.astype(np.float64)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp[..., 0] / exp.sum(axis=-1)


def _check_query_outputs(pred_logits: np.ndarray, pred_spans: np.ndarray) -> None:
    """Both (Q, 2) with the same Q, else a ValueError naming the shapes."""
    if pred_logits.ndim != 2 or pred_logits.shape[1] != 2 or pred_spans.shape != pred_logits.shape:
        raise ValueError(
            "expected pred_logits and pred_spans of one query, both (num_queries, 2); got "
            f"{pred_logits.shape} and {pred_spans.shape}"
        )


def _ranked_windows_and_scores(
    pred_logits: np.ndarray, pred_spans: np.ndarray, duration_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Official ``compute_mr_results`` for one query, before the 4-decimal formatting.

    Returns:
        windows (Q, 2) float32 seconds ``span_cxw_to_xx(spans) * duration`` and scores (Q,) float32
        foreground probabilities, both sorted by score, descending and stable (official ``sorted(...,
        reverse=True)`` keeps the query order among equal scores).
    """
    pred_logits = np.asarray(pred_logits, dtype=np.float32)
    pred_spans = np.asarray(pred_spans, dtype=np.float32)
    _check_query_outputs(pred_logits, pred_spans)
    scores = foreground_scores(pred_logits)
    windows = span_cxw_to_xx(pred_spans) * np.float32(duration_s)
    order = np.argsort(-scores, kind="stable")
    return windows[order], scores[order]


def _four_decimals(values: np.ndarray) -> np.ndarray:
    """Official ``float(f"{e:.4f}")`` on every element: correctly rounded decimal formatting."""
    return np.array([float(f"{float(v):.4f}") for v in np.ravel(values)]).reshape(np.shape(values))


def _clip_and_round(windows: np.ndarray, clip_length_s: float, max_s: float) -> np.ndarray:
    """Official ``PostProcessorDETR(process_func_names=("clip_ts", "round_multiple"))`` in float32.

    ``torch.tensor(windows)`` (float32) -> ``clamp(0, max)`` -> ``round(w / clip_length) * clip_length``;
    ``np.round`` rounds half to even like ``torch.round``.

    Args:
        windows: (K, 2) seconds.
    Returns:
        (K, 2) float32 seconds, multiples of ``clip_length_s`` within [0, max_s].
    """
    clip_length = np.float32(clip_length_s)
    clamped = np.clip(np.asarray(windows, dtype=np.float32), np.float32(0), np.float32(max_s))
    return np.round(clamped / clip_length) * clip_length


def rank_moments(
    pred_logits: np.ndarray,
    pred_spans: np.ndarray,
    *,
    num_clips: int,
    clip_length_s: float,
    top_k: int | None = None,
    nms_iou: float | None = None,
    min_score: float = 0.0,
    round_to_clip: bool = True,
) -> np.ndarray:
    """Ranked moments of ONE query, following the official pipeline step by step.

    1. score = softmax foreground probability (official ``F.softmax(pred_logits, -1)[..., 0]``).
    2. ``[start, end] = span_cxw_to_xx(pred_spans) * duration`` in float32 (official: times
       ``meta["duration"]``; here duration = ``num_clips * clip_length_s``, the video the model saw).
    3. sort by score, descending, stable (official ``sorted(..., reverse=True)``).
    4. if ``round_to_clip``: times to 4 decimals (official ``float(f"{e:.4f}")`` in
       ``compute_mr_results``; kept because it decides ties of the next rounding), clamp to
       [0, duration] (official clamps to [0, 150], the QVHighlights maximum: we clamp to this video)
       and round to a multiple of ``clip_length_s`` (official ``round_multiple`` with 2 s).
       Without ``round_to_clip`` the times are only clamped.
    5. if ``nms_iou``: temporal NMS on these windows (official ``post_processing_mr_nms`` runs on the
       post-processed windows too, when ``nms_thd != -1``).
    6. keep scores >= ``min_score``, then the first ``top_k`` rows (no official equivalent).

    Scores keep full float precision (the official jsonl rounds them to 4 decimals; use
    :func:`official_jsonl_windows` for that format).

    Args:
        pred_logits: (Q, 2) class logits of one query (class 0 = foreground).
        pred_spans: (Q, 2) normalised ``[center, width]`` spans in [0, 1].
        num_clips: clips of the video (>= 1).
        clip_length_s: seconds per clip (> 0).
    Returns:
        (K, 3) float64 ``[start_s, end_s, score]`` rows, sorted by score descending, K <= Q.
    """
    if num_clips < 1 or clip_length_s <= 0:
        raise ValueError(f"need num_clips >= 1 and clip_length_s > 0, got {num_clips} and {clip_length_s}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    duration = float(np.float32(num_clips * clip_length_s))
    windows, scores = _ranked_windows_and_scores(pred_logits, pred_spans, duration)
    if round_to_clip:
        windows = _clip_and_round(_four_decimals(windows), clip_length_s, duration)
    else:
        windows = np.clip(windows, np.float32(0), np.float32(duration))
    moments = np.column_stack([windows.astype(np.float64), scores.astype(np.float64)])
    if nms_iou is not None:
        moments = temporal_nms(moments, nms_iou)
    moments = moments[moments[:, 2] >= min_score]
    return moments[:top_k]


def official_jsonl_windows(
    pred_logits: np.ndarray,
    pred_spans: np.ndarray,
    *,
    duration_s: float,
    clip_length_s: float = 2.0,
    max_ts_s: float = 150.0,
) -> list[list[float]]:
    """``pred_relevant_windows`` of one query exactly as the official prediction jsonl holds them.

    Official ``compute_mr_results`` (times ``meta["duration"]``, stable sort, every value to 4
    decimals) followed by ``PostProcessorDETR(clip_length=2, max_ts_val=150, ("clip_ts",
    "round_multiple"))``, which re-formats the score to 4 decimals after a float32 round trip.

    Args:
        pred_logits: (Q, 2) class logits; pred_spans: (Q, 2) normalised ``[center, width]``.
        duration_s: the annotation's video duration (150 for QVHighlights).
    Returns:
        Q lists ``[start_s, end_s, score]``, highest score first.
    """
    windows, scores = _ranked_windows_and_scores(pred_logits, pred_spans, duration_s)
    rounded_windows = _clip_and_round(_four_decimals(windows), clip_length_s, max_ts_s)
    rounded_scores = _four_decimals(_four_decimals(scores).astype(np.float32))
    return [
        [float(start), float(end), float(score)]
        for (start, end), score in zip(rounded_windows, rounded_scores, strict=True)
    ]


def temporal_nms(moments: np.ndarray, iou_threshold: float, max_after: int | None = None) -> np.ndarray:
    """Greedy temporal NMS with the official ``utils/temporal_nms.py`` semantics.

    Sort by score (descending, stable), keep the best remaining moment and drop every remaining one
    whose hull IoU with it (:func:`trdetr_common.spans.hull_iou`) is strictly greater than
    ``iou_threshold``; repeat until ``max_after`` are kept (official default 100; None = no limit).

    Args:
        moments: (N, 3) ``[start, end, score]``.
    Returns:
        (K, 3) kept moments, highest score first.
    """
    moments = np.asarray(moments, dtype=float)
    if moments.ndim != 2 or moments.shape[1] != 3:
        raise ValueError(f"moments must be (N, 3) [start, end, score], got shape {moments.shape}")
    if max_after is not None and max_after < 1:
        raise ValueError(f"max_after must be >= 1 or None, got {max_after}")
    if len(moments) <= 1:  # official: a single prediction is returned as is
        return moments
    remaining = moments[np.argsort(-moments[:, 2], kind="stable")]
    kept = []
    while len(remaining) and (max_after is None or len(kept) < max_after):
        best, remaining = remaining[0], remaining[1:]
        kept.append(best)
        remaining = remaining[hull_iou(best[None, :2], remaining[:, :2]) <= iou_threshold]
    return np.stack(kept)


@dataclass(frozen=True)
class ClipSaliency:
    """Per-clip highlight scores of one video, T clips.

    Attributes:
        start_s, end_s: (T,) clip bounds in seconds, ``i * clip_length`` and ``(i + 1) * clip_length``.
        raw: (T,) the model's saliency (logit-like, unbounded; higher = more salient).
        normalized: (T,) min-max scaled to [0, 1] within the video; a constant video (every clip
            equally salient, so every clip is the best) gets 1.0 everywhere.
    """

    start_s: np.ndarray
    end_s: np.ndarray
    raw: np.ndarray
    normalized: np.ndarray


def _check_saliency(saliency: np.ndarray) -> np.ndarray:
    """A (T,) finite, non-empty float array, else a ValueError saying what is wrong."""
    saliency = np.asarray(saliency)
    if saliency.ndim != 1 or saliency.size == 0 or saliency.dtype.kind not in "fiu":
        raise ValueError(
            f"saliency must be a non-empty 1-D numeric array (clips,), got shape {saliency.shape}"
        )
    saliency = saliency.astype(np.float64)
    if not np.isfinite(saliency).all():
        raise ValueError("saliency contains NaN or infinite values")
    return saliency


def clip_saliency(saliency: np.ndarray, clip_length_s: float) -> ClipSaliency:
    """Clip bounds, raw and min-max normalised saliency of one video.

    Args:
        saliency: (T,) model saliency of the T valid clips.
        clip_length_s: seconds per clip (> 0).
    """
    if clip_length_s <= 0:
        raise ValueError(f"clip_length_s must be > 0, got {clip_length_s}")
    raw = _check_saliency(saliency)
    starts = np.arange(len(raw)) * float(clip_length_s)
    low, high = raw.min(), raw.max()
    normalized = np.ones_like(raw) if high == low else (raw - low) / (high - low)
    return ClipSaliency(start_s=starts, end_s=starts + clip_length_s, raw=raw, normalized=normalized)


def top_clips(saliency: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` most salient clips, highest first (ties: earlier clip first).

    Args:
        saliency: (T,) scores.
    Returns:
        (min(k, T),) int64 indices.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return np.argsort(-_check_saliency(saliency), kind="stable")[:k]


def official_hl_scores(saliency: np.ndarray, num_clips: int | None = None) -> list[float]:
    """``pred_saliency_scores`` as the official jsonl holds them: float16 values of the valid clips.

    Official ``outputs["saliency_scores"].half()[j, :valid_length].tolist()``.

    Args:
        saliency: (L,) saliency, possibly over a padded length.
        num_clips: valid clips to keep (None = all).
    """
    return np.asarray(saliency)[:num_clips].astype(np.float16).astype(float).tolist()
