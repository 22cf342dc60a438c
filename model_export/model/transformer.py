"""TR-DETR transformer: text-to-video encoder, shared encoder, HD2MR, conditional-DETR decoder.

All tensors are batch-first here (the official code is sequence-first; the arithmetic is the same).
Masks named `*_valid` are bool, True = a real clip/token.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .attention import MultiheadAttention, ProjectedMultiheadAttention
from .heads import MLP, inverse_sigmoid
from .position_encoding import span_sine_embedding


class FeedForward(nn.Module):
    """Base for post-norm layers ending in `norm(x + linear2(PReLU(linear1(x))))`."""

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))

    def _init_ffn(self, d_model: int, dim_feedforward: int, dropout: float) -> None:
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.activation = nn.PReLU()


class AttentionFeedForward(FeedForward):
    """Base of the encoder layers: one attention (`self_attn`), the feed-forward, two norms and dropouts."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout)
        self._init_ffn(d_model, dim_feedforward, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)


class TransformerEncoderLayer(AttentionFeedForward):
    """Post-norm self-attention layer over the clips: (batch, Lv, d) -> (batch, Lv, d)."""

    def forward(self, src: Tensor, valid: Tensor, pos: Tensor) -> Tensor:
        """src, pos: (batch, Lv, d); valid: (batch, Lv)."""
        q = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(q, q, src, valid)))
        return self.norm2(src + self.dropout2(self._ffn(src)))


class T2VEncoderLayer(AttentionFeedForward):
    """Clips attend to the text tokens (text passes through unchanged): (batch, Lv, d) -> (batch, Lv, d).

    The official layer also builds a (clip-pad AND token-pad) attn_mask; it only ever hides tokens the
    key-padding mask already hides (when tiled correctly), so the key-padding mask alone is used here.
    """

    def forward(self, vid: Tensor, txt: Tensor, txt_valid: Tensor, pos_vid: Tensor, pos_txt: Tensor) -> Tensor:
        """vid, pos_vid: (batch, Lv, d); txt, pos_txt: (batch, Lt, d); txt_valid: (batch, Lt)."""
        attended = self.self_attn(vid + pos_vid, txt + pos_txt, txt, txt_valid)
        vid = vid + self.dropout1(attended)
        return self.norm2(vid + self.dropout2(self._ffn(self.norm1(vid))))


class TransformerEncoder(nn.Module):
    """A stack of `layers` (official name), applied in order."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, *args: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, *args)
        return x


class TransformerDecoderLayer(FeedForward):
    """Conditional-DETR decoder layer: self-attention, then cross-attention on [content, position] halves."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, has_qpos_proj: bool):
        super().__init__()
        self.nhead = nhead
        for name in ("sa_qcontent_proj", "sa_qpos_proj", "sa_kcontent_proj", "sa_kpos_proj", "sa_v_proj"):
            setattr(self, name, nn.Linear(d_model, d_model))
        self.self_attn = ProjectedMultiheadAttention(d_model, nhead, vdim=d_model, dropout=dropout)
        self.norm1, self.dropout1 = nn.LayerNorm(d_model), nn.Dropout(dropout)
        self.ca_qcontent_proj = nn.Linear(d_model, d_model)
        # Only the first layer adds the query position to the cross-attention query (keep_query_pos=False).
        self.ca_qpos_proj = nn.Linear(d_model, d_model) if has_qpos_proj else None
        for name in ("ca_kcontent_proj", "ca_kpos_proj", "ca_v_proj", "ca_qpos_sine_proj"):
            setattr(self, name, nn.Linear(d_model, d_model))
        self.cross_attn = ProjectedMultiheadAttention(2 * d_model, nhead, vdim=d_model, dropout=dropout)
        self._init_ffn(d_model, dim_feedforward, dropout)
        self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, tgt: Tensor, memory: Tensor, mem_valid: Tensor, pos: Tensor,
                query_pos: Tensor, query_sine_embed: Tensor) -> Tensor:
        """tgt, query_pos, query_sine_embed: (batch, nq, d); memory, pos: (batch, Lv, d) -> (batch, nq, d)."""
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, self.sa_v_proj(tgt))))

        q = self.ca_qcontent_proj(tgt)
        k = self.ca_kcontent_proj(memory)
        k_pos = self.ca_kpos_proj(pos)
        if self.ca_qpos_proj is not None:
            q = q + self.ca_qpos_proj(query_pos)
            k = k + k_pos
        q = self._interleave_heads(q, self.ca_qpos_sine_proj(query_sine_embed))
        k = self._interleave_heads(k, k_pos)
        tgt = self.norm2(tgt + self.dropout2(self.cross_attn(q, k, self.ca_v_proj(memory), mem_valid)))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))

    def _interleave_heads(self, content: Tensor, position: Tensor) -> Tensor:
        """(batch, L, d) x2 -> (batch, L, 2d) laid out head by head as [content_h, position_h]."""
        bsz, length, d = content.shape
        parts = (content.reshape(bsz, length, self.nhead, -1), position.reshape(bsz, length, self.nhead, -1))
        return torch.cat(parts, dim=3).reshape(bsz, length, 2 * d)


class TransformerDecoder(nn.Module):
    """Decoder with per-layer span refinement and query-position modulation (official names)."""

    def __init__(self, d_model: int, nhead: int, num_layers: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, has_qpos_proj=i == 0)
            for i in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.query_scale = MLP(d_model, d_model, d_model, 2)
        self.ref_point_head = MLP(d_model, d_model, d_model, 2)
        self.bbox_embed = MLP(d_model, d_model, 2, 3)
        self.ref_anchor_head = MLP(d_model, d_model, 1, 2)
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)

    def forward(self, memory: Tensor, mem_valid: Tensor, pos: Tensor, refpoints_unsigmoid: Tensor
                ) -> tuple[Tensor, Tensor]:
        """memory, pos: (batch, Lv, d); refpoints_unsigmoid: (batch, nq, 2).

        Returns hs (layers, batch, nq, d) (normed layer outputs) and the reference spans each layer
        started from (layers, batch, nq, 2).

        Gradients, as the official decoder: each refined span is returned with its gradient path (the span
        head's loss reaches `bbox_embed` and the layer that refined it) but enters the next layer detached
        (DAB-DETR's iterative refinement), so the next layer's query position, width modulation and
        refinement send no gradient back through it.
        """
        bsz, nq, _ = refpoints_unsigmoid.shape
        output = memory.new_zeros(bsz, nq, memory.shape[2])
        reference = refpoints_unsigmoid.sigmoid()
        hs, references = [], []
        for layer_id, layer in enumerate(self.layers):
            references.append(reference)
            if layer_id > 0:
                reference = reference.detach()
            sine = span_sine_embedding(reference)
            query_pos = self.ref_point_head(sine)
            if layer_id > 0:
                sine = sine * self.query_scale(output)
            width_scale = self.ref_anchor_head(output).sigmoid()[..., 0] / reference[..., 1]
            sine = sine * width_scale[..., None]
            output = layer(output, memory, mem_valid, pos, query_pos, sine)
            reference = (self.bbox_embed(output) + inverse_sigmoid(reference)).sigmoid()
            hs.append(self.norm(output))
        return torch.stack(hs), torch.stack(references)


class Transformer(nn.Module):
    """t2v encoder -> encoder -> HD2MR (saliency-weighted video added, encoder again) -> decoder."""

    def __init__(self, d_model: int, nhead: int, enc_layers: int, dec_layers: int, dim_feedforward: int,
                 dropout: float):
        super().__init__()
        self.d_model = d_model
        self.t2v_encoder = TransformerEncoder(
            [T2VEncoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(enc_layers)])
        self.encoder = TransformerEncoder(
            [TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(enc_layers)])
        self.decoder = TransformerDecoder(d_model, nhead, dec_layers, dim_feedforward, dropout)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, vid: Tensor, txt: Tensor, vid_valid: Tensor, txt_valid: Tensor, pos_vid: Tensor,
                pos_txt: Tensor, query_embed: Tensor, saliency_proj: nn.Linear) -> dict[str, Tensor]:
        """vid: (batch, Lv, d) fused clips; txt: (batch, Lt, d); query_embed: (nq, 2).

        Returns dict: `t2v_out` (batch, Lv, d), `enc_memory` (batch, Lv, d) 1st encoder pass, `memory`
        (batch, Lv, d) after HD2MR, `hd2mr_saliency` (batch, Lv), `hs` (layers, batch, nq, d),
        `references` (layers, batch, nq, 2).
        """
        src = self.t2v_encoder(vid, txt, txt_valid, pos_vid, pos_txt)
        enc_memory = self.encoder(src, vid_valid, pos_vid)
        memory, saliency = self.hd2mr(enc_memory, src, vid_valid, pos_vid, saliency_proj)
        refpoints = query_embed[None].expand(vid.shape[0], -1, -1)
        hs, references = self.decoder(memory, vid_valid, pos_vid, refpoints)
        return {"t2v_out": src, "enc_memory": enc_memory, "memory": memory, "hd2mr_saliency": saliency,
                "hs": hs, "references": references}

    def hd2mr(self, memory: Tensor, src: Tensor, vid_valid: Tensor, pos: Tensor, saliency_proj: nn.Linear
              ) -> tuple[Tensor, Tensor]:
        """Add the saliency-softmax-weighted clips to the memory and encode again.

        The softmax runs over the valid clips only (the official one also weights padding).
        Returns memory (batch, Lv, d) and the saliency scores (batch, Lv).
        """
        saliency = saliency_proj(memory).sum(dim=-1) / math.sqrt(self.d_model)
        weight = saliency.masked_fill(~vid_valid, float("-inf")).softmax(dim=-1)
        memory = memory + src * weight[..., None]
        return self.encoder(memory, vid_valid, pos), saliency
