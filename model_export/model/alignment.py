"""TR-DETR's local-global alignment losses (training only), as the official `train.py` adds them.

Both read the projected, pre-fusion features the model returns in its output dict:

- VTC (video-text contrastive, global): the batch's pooled video `src_vid_cls_ed` (batch, d) and pooled
  text `src_txt_cls_ed` (batch, d), L2-normalised; logits = text @ video.T / temperature (batch, batch);
  loss = mean of the cross-entropies text->video and video->text with the diagonal as target. Weighted
  by `VTC_loss_coef` (0.3) officially.
- CTC (clip-text contrastive, local): every clip of `src_vid_ed` (batch, Lv, d) against the masked mean
  of the L2-normalised tokens of `src_txt_ed` (batch, Lt, d); the cosine similarities (zeroed on padded
  clips) / temperature are logits of a binary cross-entropy whose target is `src_pos_mask` (batch, Lv)
  (1 = clip inside a ground-truth moment), averaged over all batch x Lv entries as the official code
  does (padded clips count with logit 0, target 0). Weighted by `CTC_loss_coef` (0.5).

The official code's pooled features are plain means over the padded length; our model returns means
over the valid positions (equal for unpadded rows), so the loss does not depend on the batch's padding.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_TEMPERATURE = 0.07


def vtc_loss(outputs: Mapping[str, Tensor], temperature: float = DEFAULT_TEMPERATURE) -> Tensor:
    """Symmetric InfoNCE between pooled text and pooled video of each batch row (scalar)."""
    txt = F.normalize(outputs["src_txt_cls_ed"], dim=1)
    vid = F.normalize(outputs["src_vid_cls_ed"], dim=1)
    logits = txt @ vid.t() / temperature  # (batch, batch)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def ctc_loss(outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor],
             temperature: float = DEFAULT_TEMPERATURE) -> Tensor:
    """Per-clip BCE of clip-vs-sentence similarity against `targets["src_pos_mask"]` (scalar).

    targets: `src_pos_mask` (batch, Lv) required; `src_vid_mask` (batch, Lv) and `src_txt_mask`
    (batch, Lt), 1 = valid, optional (the video mask defaults to `outputs["video_mask"]`).
    """
    vid = F.normalize(outputs["src_vid_ed"], dim=2)
    txt = F.normalize(outputs["src_txt_ed"], dim=2)
    txt_mask = targets.get("src_txt_mask")
    if txt_mask is None:
        sentence = txt.mean(dim=1)
    else:
        txt_mask = txt_mask.to(txt.dtype)[..., None]
        sentence = (txt * txt_mask).sum(dim=1) / txt_mask.sum(dim=1)
    similarity = torch.bmm(vid, sentence[..., None])[..., 0]  # (batch, Lv)
    vid_mask = targets.get("src_vid_mask", outputs.get("video_mask"))
    if vid_mask is not None:
        similarity = similarity * vid_mask.to(similarity.dtype)
    return F.binary_cross_entropy_with_logits(similarity / temperature, targets["src_pos_mask"].to(similarity.dtype))
