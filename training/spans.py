"""Temporal span helpers for training: format conversion and (generalised) IoU.

Spans are either ``xx`` = (start, end) or ``cxw`` = (centre, width), both normalised by the
video duration in training. All functions accept any leading shape ``(..., 2)``.
"""

from __future__ import annotations

import torch


def span_xx_to_cxw(spans: torch.Tensor) -> torch.Tensor:
    """(..., 2) start/end -> (..., 2) centre/width."""
    start, end = spans.unbind(-1)
    return torch.stack([(start + end) * 0.5, end - start], dim=-1)


def span_cxw_to_xx(spans: torch.Tensor) -> torch.Tensor:
    """(..., 2) centre/width -> (..., 2) start/end."""
    centre, width = spans.unbind(-1)
    return torch.stack([centre - 0.5 * width, centre + 0.5 * width], dim=-1)


def temporal_iou(spans1: torch.Tensor, spans2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU of (N, 2) and (M, 2) xx spans.

    Returns:
        iou: (N, M), union: (N, M).
    """
    length1 = spans1[:, 1] - spans1[:, 0]
    length2 = spans2[:, 1] - spans2[:, 0]
    left = torch.max(spans1[:, None, 0], spans2[None, :, 0])
    right = torch.min(spans1[:, None, 1], spans2[None, :, 1])
    inter = (right - left).clamp(min=0)
    union = length1[:, None] + length2[None, :] - inter
    return inter / union, union


def generalized_temporal_iou(spans1: torch.Tensor, spans2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalised IoU (Rezatofighi et al. 2019) of (N, 2) and (M, 2) xx spans -> (N, M).

    Equals IoU minus the share of the enclosing span not covered by the union; in [-1, 1].
    """
    if not (spans1[:, 1] >= spans1[:, 0]).all() or not (spans2[:, 1] >= spans2[:, 0]).all():
        raise ValueError("generalized_temporal_iou needs spans with end >= start")
    iou, union = temporal_iou(spans1, spans2)
    left = torch.min(spans1[:, None, 0], spans2[None, :, 0])
    right = torch.max(spans1[:, None, 1], spans2[None, :, 1])
    enclosing = (right - left).clamp(min=0)
    return iou - (enclosing - union) / enclosing
