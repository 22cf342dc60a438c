"""MR2HD: refine the saliency with the clips of the top-1 retrieved moment, vectorised over the batch.

Per row the result equals a single (batch 1) run of the official code: the top-1 span is scaled by
the row's own number of clips `n`, floored to clip indices (start, end), and the rows
`clips[start:end + 1]` are taken with Python slicing semantics (a negative index counts from the end
and is then clamped to 0, an index past the end is clamped to n). The official GRU then runs over `n`
steps: the sliced rows followed by zero rows; its final hidden state is the output at step n - 1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def python_slice_bounds(start: Tensor, stop: Tensor, length: Tensor) -> tuple[Tensor, Tensor]:
    """Normalise `x[start:stop]` on a sequence of `length` as Python does (all (batch,) float tensors).

    Returns (begin, rows): the first row taken and how many rows the slice holds.
    """
    zero = torch.zeros_like(length)

    def clamp_index(index: Tensor) -> Tensor:
        index = torch.where(index < 0, index + length, index)
        return torch.minimum(torch.maximum(index, zero), length)

    begin, end = clamp_index(start), clamp_index(stop)
    return begin, torch.maximum(end - begin, zero)


def top1_clip_span(pred_logits: Tensor, pred_spans: Tensor, n_clips: Tensor, clip_length: float
                   ) -> dict[str, Tensor]:
    """The top-1 query's span in floored clip indices, as the official MR2HD computes it.

    pred_logits, pred_spans: (batch, nq, 2); n_clips: (batch,) float valid clips per row.
    Returns `top1_query` (batch,) int64 and float `start`, `end` (batch,) clip indices.
    """
    fg_prob = pred_logits.softmax(dim=-1)[..., 0]
    top1 = fg_prob.argmax(dim=-1)
    span = pred_spans.gather(1, top1[:, None, None].expand(-1, 1, 2))[:, 0]  # (batch, 2) centre, width
    bounds = torch.stack([span[:, 0] - 0.5 * span[:, 1], span[:, 0] + 0.5 * span[:, 1]], dim=-1)
    bounds = torch.floor(bounds * (n_clips * clip_length)[:, None] / clip_length)
    return {"top1_query": top1, "start": bounds[:, 0], "end": bounds[:, 1]}


def gather_moment_clips(clips: Tensor, begin: Tensor, rows: Tensor) -> Tensor:
    """Rows `begin .. begin + rows - 1` of each sequence moved to the front, zeros after.

    clips: (batch, L, d); begin, rows: (batch,) float. Returns (batch, L, d).
    """
    steps = torch.arange(clips.shape[1], device=clips.device)[None, :]  # (1, L)
    index = (begin[:, None].to(torch.long) + steps).clamp(max=clips.shape[1] - 1)
    taken = clips.gather(1, index[..., None].expand(-1, -1, clips.shape[2]))
    keep = steps < rows[:, None].to(torch.long)
    return torch.where(keep[..., None], taken, torch.zeros_like(taken))


class GRUFeatureExtractor(nn.Module):
    """One-layer GRU over (batch, L, d); returns the hidden state after each row's own length."""

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.gru = nn.GRU(input_dim, hidden_dim, num_layers=1, batch_first=True)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x: (batch, L, d); lengths: (batch,) float in [1, L] -> (batch, hidden)."""
        outputs, _ = self.gru(x)
        last = (lengths.to(torch.long) - 1)[:, None, None].expand(-1, 1, outputs.shape[2])
        return outputs.gather(1, last)[:, 0]
