"""Visual feature refinement (VSLFuser): context-query attention, then weighted-pool concatenation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_NEG = -1e30


def _mask_logits(logits: Tensor, valid: Tensor) -> Tensor:
    """Add -1e30 where `valid` is 0 (the official mask_logits)."""
    return logits + (1.0 - valid.to(logits.dtype)) * _NEG


class Conv1D(nn.Module):
    """Pointwise Conv1d on (batch, L, in_dim) -> (batch, L, out_dim) (official name `conv1d`).

    Computed as the equivalent linear layer on the last axis (same `conv1d.weight` (out, in, 1) and bias):
    the official transpose -> Conv1d(kernel 1) -> transpose exports to two Transposes and a Conv that ONNX
    Runtime runs slower than one MatMul; the sums differ only in float rounding order.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv1d = nn.Conv1d(in_dim, out_dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.conv1d.weight[:, :, 0], self.conv1d.bias)


class CQAttention(nn.Module):
    """Context(video)-query(text) attention with a trilinear similarity."""

    def __init__(self, dim: int, drop_rate: float = 0.1):
        super().__init__()
        self.w4C = nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, 1)))
        self.w4Q = nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, 1)))
        self.w4mlu = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, 1, dim)))
        self.dropout = nn.Dropout(p=drop_rate)
        self.cqa_linear = Conv1D(4 * dim, dim)

    def forward(self, context: Tensor, query: Tensor, c_mask: Tensor, q_mask: Tensor) -> Tensor:
        """context: (batch, Lv, d), query: (batch, Lt, d), masks 1 = valid -> (batch, Lv, d)."""
        score = self._trilinear(context, query)  # (batch, Lv, Lt)
        score_c2q = _mask_logits(score, q_mask[:, None, :]).softmax(dim=2)
        score_q2c = _mask_logits(score, c_mask[:, :, None]).softmax(dim=1).transpose(1, 2)  # (batch, Lt, Lv)
        c2q = torch.matmul(score_c2q, query)
        q2c = torch.matmul(torch.matmul(score_c2q, score_q2c), context)
        return self.cqa_linear(torch.cat([context, c2q, context * c2q, context * q2c], dim=2))

    def _trilinear(self, context: Tensor, query: Tensor) -> Tensor:
        """w_c.c_i + w_q.q_j + (c_i * w_m).q_j: (batch, Lv, Lt)."""
        context, query = self.dropout(context), self.dropout(query)
        sub_c = torch.matmul(context, self.w4C)  # (batch, Lv, 1)
        sub_q = torch.matmul(query, self.w4Q).transpose(1, 2)  # (batch, 1, Lt)
        sub_cq = torch.matmul(context * self.w4mlu, query.transpose(1, 2))
        return sub_c + sub_q + sub_cq


class WeightedPool(nn.Module):
    """Masked softmax-weighted pooling of a sequence: (batch, L, d) -> (batch, d)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, 1)))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        alpha = _mask_logits(torch.matmul(x, self.weight), mask[:, :, None]).softmax(dim=1)  # (batch, L, 1)
        return torch.matmul(x.transpose(1, 2), alpha).squeeze(2)


class CQConcatenate(nn.Module):
    """Concatenate each clip with the pooled text, project back to d."""

    def __init__(self, dim: int):
        super().__init__()
        self.weighted_pool = WeightedPool(dim)
        self.conv1d = Conv1D(2 * dim, dim)

    def forward(self, context: Tensor, query: Tensor, q_mask: Tensor) -> Tensor:
        """context: (batch, Lv, d), query: (batch, Lt, d) -> (batch, Lv, d)."""
        pooled = self.weighted_pool(query, q_mask)[:, None, :].expand(-1, context.shape[1], -1)
        return self.conv1d(torch.cat([context, pooled], dim=2))


class VSLFuser(nn.Module):
    """ReLU(CQConcatenate(CQAttention(video, text), text)): text-aware clip features (batch, Lv, d)."""

    def __init__(self, dim: int, drop_rate: float = 0.1):
        super().__init__()
        self.cq_attention = CQAttention(dim, drop_rate)
        self.cq_concat = CQConcatenate(dim)

    def forward(self, vid: Tensor, txt: Tensor, vid_mask: Tensor, txt_mask: Tensor) -> Tensor:
        """vid: (batch, Lv, d), txt: (batch, Lt, d), float masks 1 = valid -> (batch, Lv, d)."""
        return F.relu(self.cq_concat(self.cq_attention(vid, txt, vid_mask, txt_mask), txt, txt_mask))
