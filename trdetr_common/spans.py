"""Temporal span geometry: format conversion and the two IoUs the official code uses.

The official QVHighlights code uses two different "IoU"s and both matter for exact metrics:

* :func:`temporal_iou_cross` is the true IoU (union = len1 + len2 - intersection); the official
  mAP and the choice of the ground-truth window for R1 use it.
* :func:`hull_iou` divides by the convex hull ``max(end) - min(start)`` instead of the union (the
  official code calls it "not the correct union though"); R1 itself and temporal NMS use it.
  It equals the true IoU when the spans overlap, and is 0 (not negative) when they do not.
"""

from __future__ import annotations

import numpy as np

__all__ = ["hull_iou", "span_cxw_to_xx", "span_xx_to_cxw", "temporal_iou_cross"]


def span_cxw_to_xx(spans: np.ndarray) -> np.ndarray:
    """(..., 2) ``[center, width]`` -> (..., 2) ``[start, end]``, in the input's float dtype.

    Official ``span_cxw_to_xx``: ``start = c - 0.5 * w``, ``end = c + 0.5 * w``.
    """
    spans = np.asarray(spans)
    half = 0.5 * spans[..., 1]
    return np.stack([spans[..., 0] - half, spans[..., 0] + half], axis=-1)


def span_xx_to_cxw(spans: np.ndarray) -> np.ndarray:
    """(..., 2) ``[start, end]`` -> (..., 2) ``[center, width]`` (official ``span_xx_to_cxw``)."""
    spans = np.asarray(spans)
    center = (spans[..., 0] + spans[..., 1]) * 0.5
    return np.stack([center, spans[..., 1] - spans[..., 0]], axis=-1)


def temporal_iou_cross(spans1: np.ndarray, spans2: np.ndarray) -> np.ndarray:
    """True IoU of every pair, as official ``compute_temporal_iou_batch_cross``.

    Args:
        spans1: (N, 2) ``[start, end]``.
        spans2: (M, 2) ``[start, end]``.
    Returns:
        (N, M) float64 IoU; a pair of zero-length spans at the same point gives NaN, as official.
    """
    spans1 = np.asarray(spans1, dtype=float)
    spans2 = np.asarray(spans2, dtype=float)
    lengths1 = spans1[:, 1] - spans1[:, 0]
    lengths2 = spans2[:, 1] - spans2[:, 0]
    left = np.maximum(spans1[:, None, 0], spans2[None, :, 0])
    right = np.minimum(spans1[:, None, 1], spans2[None, :, 1])
    inter = np.clip(right - left, 0, None)
    union = lengths1[:, None] + lengths2[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def hull_iou(spans1: np.ndarray, spans2: np.ndarray) -> np.ndarray:
    """Intersection over convex hull of paired spans (official ``compute_temporal_iou_batch_paired``).

    Args:
        spans1: (..., 2) ``[start, end]``.
        spans2: (..., 2) ``[start, end]``, broadcastable against ``spans1``.
    Returns:
        (...) float64; 0 where the hull has zero length.
    """
    spans1 = np.asarray(spans1, dtype=float)
    spans2 = np.asarray(spans2, dtype=float)
    inter = np.maximum(
        0, np.minimum(spans1[..., 1], spans2[..., 1]) - np.maximum(spans1[..., 0], spans2[..., 0])
    )
    hull = np.maximum(spans1[..., 1], spans2[..., 1]) - np.minimum(spans1[..., 0], spans2[..., 0])
    return np.divide(inter, hull, out=np.zeros_like(inter), where=hull != 0)
