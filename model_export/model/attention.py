"""Multi-head attention written out (no fused fast path), batch-first, with official parameter names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _key_bias(key_valid: Tensor, dtype: torch.dtype) -> Tensor:
    """(batch, Lk) bool -> (batch, Lk) additive score bias: 0 where True, -inf where False.

    Adding it equals ``masked_fill(~key_valid, -inf)`` bit for bit (x + 0 = x, x + -inf = -inf) but exports to
    a broadcast Add over the (batch, heads, Lq, Lk) scores instead of a Where, which ONNX Runtime runs faster.
    """
    return torch.zeros(key_valid.shape, dtype=dtype, device=key_valid.device).masked_fill(~key_valid, float("-inf"))


def _attend(q: Tensor, k: Tensor, v: Tensor, nheads: int, key_valid: Tensor | None, dropout: float = 0.0,
            training: bool = False) -> Tensor:
    """Scaled dot-product attention per head (dropout on the attention weights while training).

    q: (batch, Lq, E), k: (batch, Lk, E), v: (batch, Lk, V); key_valid: (batch, Lk) bool, True = attend.
    Returns (batch, Lq, V) with heads concatenated in order.
    """
    bsz, len_q, embed = q.shape
    head_dim = embed // nheads
    q = (q * float(head_dim) ** -0.5).reshape(bsz, len_q, nheads, head_dim).transpose(1, 2)
    k = k.reshape(bsz, k.shape[1], nheads, head_dim).transpose(1, 2)
    v = v.reshape(bsz, v.shape[1], nheads, v.shape[2] // nheads).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-2, -1))  # (batch, heads, Lq, Lk)
    if key_valid is not None:
        scores = scores + _key_bias(key_valid, scores.dtype)[:, None, None, :]
    weights = F.dropout(scores.softmax(dim=-1), p=dropout, training=training)
    out = torch.matmul(weights, v)  # (batch, heads, Lq, V / heads)
    return out.transpose(1, 2).reshape(bsz, len_q, -1)


class MultiheadAttention(nn.Module):
    """`nn.MultiheadAttention` equivalent (same `in_proj_weight`/`in_proj_bias`/`out_proj` names)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_valid: Tensor | None = None) -> Tensor:
        """query: (batch, Lq, E), key/value: (batch, Lk, E), key_valid: (batch, Lk) -> (batch, Lq, E)."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        return self.out_proj(_attend(q, k, v, self.num_heads, key_valid, self.dropout, self.training))


class ProjectedMultiheadAttention(nn.Module):
    """The conditional-DETR attention: inputs arrive already projected, only `out_proj` is learned.

    `embed_dim` is the query/key width (2 * d for the decoder's cross-attention, whose query and key are
    [content, position] per head), `vdim` the value width.
    """

    def __init__(self, embed_dim: int, num_heads: int, vdim: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.out_proj = nn.Linear(vdim, vdim)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_valid: Tensor | None = None) -> Tensor:
        """query: (batch, Lq, E), key: (batch, Lk, E), value: (batch, Lk, V) -> (batch, Lq, V)."""
        return self.out_proj(_attend(query, key, value, self.num_heads, key_valid, self.dropout, self.training))
