"""The TR-DETR network (AAAI 2024) as the official code computes it at inference, batch-invariant."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TRDETRConfig
from .heads import MLP, input_projection, inverse_sigmoid
from .mr2hd import GRUFeatureExtractor, gather_moment_clips, python_slice_bounds, top1_clip_span
from .position_encoding import PositionEmbeddingSine, TrainablePositionalEncoding
from .transformer import Transformer
from .vsl_fuser import VSLFuser


class TRDETR(nn.Module):
    """TR-DETR: joint moment retrieval and highlight detection.

    `forward(src_txt, src_txt_mask, src_vid, src_vid_mask, src_aud=None)` with src_txt (batch, Lt,
    t_feat_dim), src_vid (batch, Lv, v_feat_dim incl. TEF), optional src_aud (batch, Lv, a_feat_dim),
    masks (batch, L) 1 = valid (float or bool; right padding). Returns a dict:

    - `pred_logits` (batch, nq, 2): class logits, class 0 = foreground.
    - `pred_spans` (batch, nq, 2): sigmoid (centre, width), normalised by the row's video length.
    - `saliency_scores` (batch, Lv): MR2HD-refined saliency (values at padded clips are meaningless).
    - `aux_outputs`: list (dec_layers - 1) of {`pred_logits`, `pred_spans`} of the earlier decoder layers.
    - For the training losses (official names): `video_mask` (batch, Lv), `src_vid_ed` (batch, Lv, d)
      and `src_txt_ed` (batch, Lt, d) (projected inputs, for CTC), `src_vid_cls_ed` / `src_txt_cls_ed`
      (batch, d) (their means over the valid positions, for VTC; the official mean includes padding),
      and with `contrastive_align_loss`: `proj_queries`, `proj_txt_mem`, `proj_vid_mem`.
    - With `return_intermediates=True` also `intermediates`: every stage the official fixture's `dbg_*`
      arrays hold plus `hd2mr_saliency` and the MR2HD facts (`mr2hd_top1_query`, `mr2hd_start`,
      `mr2hd_end`, `mr2hd_slice_len`).

    Unlike the official code every row equals a batch-1 run of itself (masked HD2MR softmax, spans
    scaled by the row's own length, the GRU read at the row's own length). `forward` has no Python
    control flow on tensor values, so it traces to ONNX with dynamic batch and lengths.
    """

    def __init__(self, config: TRDETRConfig):
        super().__init__()
        d = config.hidden_dim
        self.config = config
        self.hidden_dim = d
        self.clip_length = float(config.clip_length)
        self.transformer = Transformer(d, config.nheads, config.enc_layers, config.dec_layers,
                                       config.dim_feedforward, config.dropout)
        self.position_embed = PositionEmbeddingSine(d)
        self.txt_position_embed = TrainablePositionalEncoding(config.max_q_l, d, config.input_dropout)
        self.span_embed = MLP(d, d, 2, 3)
        self.class_embed = nn.Linear(d, 2)
        self.query_embed = nn.Embedding(config.num_queries, 2)
        self.input_txt_proj = input_projection(config.t_feat_dim, d, config.n_input_proj, config.input_dropout)
        self.input_vid_proj = input_projection(config.vid_input_dim, d, config.n_input_proj, config.input_dropout)
        if config.contrastive_align_loss:
            self.contrastive_align_projection_query = nn.Linear(d, config.contrastive_hdim)
            self.contrastive_align_projection_txt = nn.Linear(d, config.contrastive_hdim)
            self.contrastive_align_projection_vid = nn.Linear(d, config.contrastive_hdim)
        self.saliency_proj1 = nn.Linear(d, d)
        self.fuser = VSLFuser(d)
        self.gru_extractor = GRUFeatureExtractor(d, d)

    def forward(self, src_txt: Tensor, src_txt_mask: Tensor, src_vid: Tensor, src_vid_mask: Tensor,
                src_aud: Tensor | None = None, return_intermediates: bool = False) -> dict:
        if src_aud is not None:
            src_vid = torch.cat([src_vid, src_aud], dim=2)
        vid_mask, txt_mask = src_vid_mask.to(src_vid.dtype), src_txt_mask.to(src_txt.dtype)
        vid_valid, txt_valid = vid_mask > 0.5, txt_mask > 0.5
        vid_proj = self.input_vid_proj(src_vid)
        txt_proj = self.input_txt_proj(src_txt)
        fused = self.fuser(vid_proj, txt_proj, vid_mask, txt_mask)
        pos_vid = self.position_embed(fused, vid_mask).to(fused.dtype)  # float32 math, as the official code
        pos_txt = self.txt_position_embed(txt_proj) if self.config.use_txt_pos else torch.zeros_like(txt_proj)
        stages = self.transformer(fused, txt_proj, vid_valid, txt_valid, pos_vid, pos_txt,
                                  self.query_embed.weight, self.saliency_proj1)

        logits = self.class_embed(stages["hs"])  # (layers, batch, nq, 2)
        spans = (self.span_embed(stages["hs"]) + inverse_sigmoid(stages["references"])).sigmoid()
        out: dict = {"pred_logits": logits[-1], "pred_spans": spans[-1]}
        refined = self.mr2hd(logits[-1], spans[-1], stages["memory"], vid_proj, vid_mask)
        out["saliency_scores"] = refined["saliency_scores"]
        out["aux_outputs"] = [{"pred_logits": a, "pred_spans": b} for a, b in zip(logits[:-1], spans[:-1], strict=True)]
        out.update(self._alignment_outputs(vid_proj, txt_proj, vid_mask, txt_mask, src_vid_mask))
        if self.config.contrastive_align_loss:
            out.update(self._contrastive_outputs(stages["hs"], stages["memory"], out["aux_outputs"]))
        if return_intermediates:
            out["intermediates"] = {
                "vid_proj": vid_proj, "txt_proj": txt_proj, "fused_vid": fused,
                "t2v_out": torch.cat([stages["t2v_out"], txt_proj], dim=1),
                "enc_memory": stages["enc_memory"], "hd2mr_memory": stages["memory"],
                "hd2mr_saliency": stages["hd2mr_saliency"], "hs": stages["hs"],
                "references": stages["references"], **{k: v for k, v in refined.items() if k != "saliency_scores"},
            }
        return out

    def mr2hd(self, pred_logits: Tensor, pred_spans: Tensor, memory: Tensor, vid_proj: Tensor,
              vid_mask: Tensor) -> dict[str, Tensor]:
        """Re-weight the memory by the top-1 moment's GRU summary and score the clips again.

        pred_logits, pred_spans: (batch, nq, 2); memory, vid_proj: (batch, Lv, d); vid_mask (batch, Lv).
        Returns `saliency_scores` (batch, Lv), `gru_hidden` (batch, d) and the MR2HD facts.
        """
        n_clips = vid_mask.sum(dim=1)
        span = top1_clip_span(pred_logits, pred_spans, n_clips, self.clip_length)
        begin, rows = python_slice_bounds(span["start"], span["end"] + 1, n_clips)
        hidden = self.gru_extractor(gather_moment_clips(vid_proj, begin, rows), n_clips)
        weight = torch.matmul(hidden[:, None, :], vid_proj.transpose(1, 2))[:, 0]  # (batch, Lv)
        memory = memory * weight[..., None] + memory
        saliency = self.saliency_proj1(memory).sum(dim=-1) / math.sqrt(self.hidden_dim)
        return {"saliency_scores": saliency, "gru_hidden": hidden, "mr2hd_top1_query": span["top1_query"],
                "mr2hd_start": span["start"].to(torch.long), "mr2hd_end": span["end"].to(torch.long),
                "mr2hd_slice_len": rows.to(torch.long)}

    @staticmethod
    def _alignment_outputs(vid_proj: Tensor, txt_proj: Tensor, vid_mask: Tensor, txt_mask: Tensor,
                           src_vid_mask: Tensor) -> dict[str, Tensor]:
        """What the VTC / CTC alignment losses read (see `alignment.py`)."""
        return {
            "video_mask": src_vid_mask,
            "src_vid_ed": vid_proj,
            "src_txt_ed": txt_proj,
            "src_vid_cls_ed": _masked_mean(vid_proj, vid_mask),
            "src_txt_cls_ed": _masked_mean(txt_proj, txt_mask),
        }

    def _contrastive_outputs(self, hs: Tensor, memory: Tensor, aux_outputs: list[dict]) -> dict[str, Tensor]:
        """Official `contrastive_align_loss` projections; as there, the memory holds clips only, so
        `proj_txt_mem` has zero tokens."""
        proj_queries = F.normalize(self.contrastive_align_projection_query(hs), p=2, dim=-1)
        proj_txt_mem = F.normalize(self.contrastive_align_projection_txt(memory[:, memory.shape[1]:]), p=2, dim=-1)
        proj_vid_mem = F.normalize(self.contrastive_align_projection_vid(memory), p=2, dim=-1)
        for aux, queries in zip(aux_outputs, proj_queries[:-1], strict=True):
            aux.update(proj_queries=queries, proj_txt_mem=proj_txt_mem)
        return {"proj_queries": proj_queries[-1], "proj_txt_mem": proj_txt_mem, "proj_vid_mem": proj_vid_mem}


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x (batch, L, d) over the positions where mask (batch, L) is 1 -> (batch, d)."""
    return (x * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
