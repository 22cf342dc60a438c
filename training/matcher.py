"""Hungarian matching between predicted moments and ground-truth windows (as DETR / the official code).

The cost of assigning query ``q`` to target window ``t`` is::

    cost_span * L1(span_q, span_t) - cost_giou * GIoU(span_q, span_t) - cost_class * p_q(foreground)

and ``scipy.optimize.linear_sum_assignment`` picks the cheapest one-to-one assignment per video.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

from training.spans import generalized_temporal_iou, span_cxw_to_xx

FOREGROUND = 0  # class index of "this query is a moment" (official convention)

MatchIndices = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class HungarianMatcher:
    """Matches queries to targets; coefficients default to the official ``set_cost_*``."""

    cost_class: float = 4.0
    cost_span: float = 10.0
    cost_giou: float = 1.0

    def __post_init__(self) -> None:
        if self.cost_class == 0 and self.cost_span == 0 and self.cost_giou == 0:
            raise ValueError("HungarianMatcher: at least one of cost_class/cost_span/cost_giou must be non-zero")

    @torch.no_grad()
    def __call__(self, pred_logits: torch.Tensor, pred_spans: torch.Tensor,
                 target_spans: list[torch.Tensor]) -> MatchIndices:
        """Match every video's queries to its target windows.

        Args:
            pred_logits: (batch, queries, 2) class logits, class 0 = foreground.
            pred_spans: (batch, queries, 2) normalised (centre, width).
            target_spans: per video a (windows_i, 2) tensor of normalised (centre, width).

        Returns:
            per video ``(query_indices, target_indices)``, two int64 tensors of length
            ``min(queries, windows_i)``; query i is matched to target j pairwise.
        """
        batch, queries = pred_spans.shape[:2]
        sizes = [len(t) for t in target_spans]
        if sum(sizes) == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return [(empty, empty) for _ in range(batch)]
        prob_fg = pred_logits.flatten(0, 1).softmax(-1)[:, FOREGROUND]  # (B*Q,)
        spans = pred_spans.flatten(0, 1)  # (B*Q, 2)
        targets = torch.cat(target_spans).to(spans)  # (T, 2)
        cost = (
            self.cost_span * torch.cdist(spans, targets, p=1)
            - self.cost_giou * generalized_temporal_iou(span_cxw_to_xx(spans), span_cxw_to_xx(targets))
            - self.cost_class * prob_fg[:, None]
        )
        cost = cost.view(batch, queries, -1).cpu()
        indices = []
        for i, block in enumerate(cost.split(sizes, dim=-1)):
            rows, cols = linear_sum_assignment(block[i].numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
