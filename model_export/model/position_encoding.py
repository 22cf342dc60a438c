"""Position encodings: sine over valid clips, trainable for text, and the decoder's span sine embedding."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """1-D sine embedding of the clip index, normalised by the number of valid clips.

    Clip i of a row gets position `cumsum(mask)[i] / (n_valid + 1e-6) * 2pi`, so a right-padded row
    gets the same embedding as the unpadded one.
    """

    def __init__(self, num_pos_feats: int = 256, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (batch, clips, d) (only its device is used); mask: (batch, clips), 1 = valid.

        Returns (batch, clips, num_pos_feats).
        """
        x_embed = mask.to(torch.float32).cumsum(1)
        x_embed = x_embed / (x_embed[:, -1:] + 1e-6) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos = x_embed[:, :, None] / dim_t
        return torch.stack((pos[:, :, 0::2].sin(), pos[:, :, 1::2].cos()), dim=3).flatten(2)


class TrainablePositionalEncoding(nn.Module):
    """Learned token positions for the text (`use_txt_pos`): LayerNorm(x + E[pos]) then dropout."""

    def __init__(self, max_position_embeddings: int, hidden_size: int, dropout: float = 0.1):
        super().__init__()
        self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_feat: Tensor) -> Tensor:
        """input_feat: (batch, tokens, d) -> (batch, tokens, d)."""
        positions = torch.arange(input_feat.shape[1], device=input_feat.device)
        embeddings = self.LayerNorm(input_feat + self.position_embeddings(positions)[None])
        return self.dropout(embeddings)


def span_sine_embedding(spans: Tensor, num_feats: int = 128) -> Tensor:
    """Sine embedding of (centre, width) spans as the conditional-DETR decoder uses it.

    spans: (..., 2) in [0, 1] -> (..., 2 * num_feats) = [sin/cos(centre), sin/cos(width)]; the official
    code fixes num_feats at 128, hence hidden_dim 256.
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=spans.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    halves = []
    for coord in (spans[..., 0], spans[..., 1]):
        pos = (coord * (2 * math.pi))[..., None] / dim_t
        halves.append(torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2))
    return torch.cat(halves, dim=-1)
