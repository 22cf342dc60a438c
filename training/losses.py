"""TR-DETR training losses, following the official ``SetCriterion`` + ``train_epoch``.

Terms (names as the official code logs them) and default weights (the released ``opt.json``):

- ``loss_span`` (10): L1 between matched predicted and target (centre, width) spans.
- ``loss_giou`` (1): 1 - GIoU of the matched spans.
- ``loss_label`` (4): sigmoid focal loss (alpha 0.25, gamma 2) on BOTH logit channels against a one-hot
  target (matched queries -> class 0 "foreground", all others -> class 1), averaged over
  batch x queries x 2. The official criterion builds ``empty_weight`` from ``eos_coef`` but never uses it:
  the no-object down-weighting of DETR is replaced by the focal loss, so ``eos_coef`` has no effect here either.
- ``loss_saliency`` (1 = ``lw_saliency``): hinge margin loss on (hard + easy) positive/negative clip pairs
  plus the rank-contrastive loss over the all-clips score array (thresholds 1..11, divided by 12).
- ``loss_vtc`` (0.3) / ``loss_ctc`` (0.5): TR-DETR's local-global alignment losses, computed by
  ``model_export.model.alignment`` from the model's projected (pre-fusion) video/text features.
- ``loss_span_i`` / ``loss_giou_i`` / ``loss_label_i``: the same three for the output of decoder layer ``i``
  (``aux_outputs``), each with its own Hungarian matching, when ``aux_loss`` is on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.matcher import FOREGROUND, MatchIndices
from training.options import LossConfig
from training.spans import generalized_temporal_iou, span_cxw_to_xx

BACKGROUND = 1


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Element-wise focal loss (Lin et al. 2017, as ``torchvision.ops.sigmoid_focal_loss``), same shape as input.

    Args:
        logits, targets: any equal shapes; targets in {0, 1}. ``alpha < 0`` disables the class balance.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def _matched(indices: MatchIndices) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch_idx, query_idx) of every matched query, concatenated over the batch."""
    batch_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)])
    query_idx = torch.cat([q for q, _ in indices])
    return batch_idx, query_idx


def span_losses(pred_spans: torch.Tensor, target_spans: list[torch.Tensor],
                indices: MatchIndices) -> dict[str, torch.Tensor]:
    """L1 and 1-GIoU of matched spans; pred_spans (batch, queries, 2) cxw, targets per video (n_i, 2) cxw."""
    src = pred_spans[_matched(indices)]  # (M, 2)
    tgt = torch.cat([t[j] for t, (_, j) in zip(target_spans, indices, strict=True)]).to(src)  # (M, 2)
    giou = generalized_temporal_iou(span_cxw_to_xx(src), span_cxw_to_xx(tgt))
    return {"loss_span": F.l1_loss(src, tgt, reduction="none").mean(),
            "loss_giou": (1 - torch.diag(giou)).mean()}


def label_losses(pred_logits: torch.Tensor, indices: MatchIndices, alpha: float,
                 gamma: float) -> dict[str, torch.Tensor]:
    """Focal loss on one-hot fg/bg targets over both channels; pred_logits (batch, queries, 2).

    Also returns ``class_error`` (logged only): % of matched queries whose argmax is not foreground.
    """
    idx = _matched(indices)
    classes = torch.full(pred_logits.shape[:2], BACKGROUND, dtype=torch.int64, device=pred_logits.device)
    classes[idx] = FOREGROUND
    one_hot = F.one_hot(classes, num_classes=2).float()  # (B, Q, 2)
    loss = sigmoid_focal_loss(pred_logits.float(), one_hot, alpha=alpha, gamma=gamma).mean()
    matched = pred_logits[idx]
    if len(matched):
        correct = (matched.argmax(-1) == FOREGROUND).float().mean() * 100
        class_error = (100 - correct).detach()
    else:
        class_error = pred_logits.new_zeros(())
    return {"loss_label": loss, "class_error": class_error}


def rank_contrastive_loss(saliency: torch.Tensor, video_mask: torch.Tensor, all_labels: torch.Tensor,
                          tau: float = 0.5) -> torch.Tensor:
    """Official rank-contrastive saliency loss.

    For each threshold r in 1..11, clips with score >= r are positives of an InfoNCE over all valid clips of
    their video (temperature ``tau``); videos without a positive at r contribute 0. Summed over r, / 12.

    Args:
        saliency: (batch, clips) predicted scores; video_mask: (batch, clips) 1 = valid;
        all_labels: (batch, clips) summed annotator scores (0 = not relevant).
    """
    scores = (video_mask * saliency + (1.0 - video_mask) * -1e3) / tau
    logits = scores - scores.max(dim=1, keepdim=True).values
    log_prob = logits - torch.log(logits.exp().sum(1, keepdim=True) + 1e-6)
    total = saliency.new_zeros(())
    for rank in range(1, 12):
        positive = (all_labels >= rank).float()
        if positive.sum() == 0:
            continue
        has_positive = (positive.sum(1) > 0).float()
        mean_log_prob = (positive * log_prob * video_mask).sum(1) / (positive.sum(1) + 1e-6)
        total = total + (-mean_log_prob * has_positive).mean()
    return total / 12


def margin_loss(saliency: torch.Tensor, pos_idx: torch.Tensor, neg_idx: torch.Tensor,
                margin: float) -> torch.Tensor:
    """Moment-DETR hinge loss: each positive clip scores ``margin`` above its paired negative.

    Args:
        saliency: (batch, clips); pos_idx, neg_idx: (batch, pairs) clip indices.
    """
    pos = saliency.gather(1, pos_idx)
    neg = saliency.gather(1, neg_idx)
    return torch.clamp(margin + neg - pos, min=0).sum() / pos.numel() * 2


class AlignmentLosses(nn.Module):
    """TR-DETR's local-global alignment losses from ``model_export.model.alignment``.

    ``loss_vtc``: InfoNCE between the pooled video and pooled text features of the batch (both directions);
    ``loss_ctc``: per-clip binary cross-entropy of clip-vs-pooled-text similarity against the relevant-clip
    mask ``targets["src_pos_mask"]``.
    """

    def forward(self, outputs: dict, targets: dict) -> dict[str, torch.Tensor]:
        from model_export.model import alignment

        return {"loss_vtc": alignment.vtc_loss(outputs), "loss_ctc": alignment.ctc_loss(outputs, targets)}


class TRDETRCriterion(nn.Module):
    """Computes every TR-DETR training loss and their weighted sum.

    ``forward(outputs, targets)`` takes the model's training-mode output dict and the batch targets of
    ``training.dataset.collate`` and returns ``(total, logs)`` where ``logs`` holds every unweighted term
    (floats detached) plus ``loss_overall``.
    """

    def __init__(self, config: LossConfig, alignment: AlignmentLosses | None = None) -> None:
        super().__init__()
        self.config = config
        self.matcher = config.matcher()
        self.alignment = alignment if alignment is not None else AlignmentLosses()
        self.weights = self._weights()

    def _weights(self) -> dict[str, float]:
        c = self.config
        return {"loss_span": c.span_loss_coef, "loss_giou": c.giou_loss_coef, "loss_label": c.label_loss_coef,
                "loss_saliency": c.lw_saliency, "loss_vtc": c.VTC_loss_coef, "loss_ctc": c.CTC_loss_coef}

    def _detection_losses(self, out: dict, span_targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        indices = self.matcher(out["pred_logits"], out["pred_spans"], span_targets)
        losses = span_losses(out["pred_spans"], span_targets, indices)
        losses.update(label_losses(out["pred_logits"], indices, self.config.focal_alpha, self.config.focal_gamma))
        return losses

    def compute(self, outputs: dict, targets: dict) -> dict[str, torch.Tensor]:
        """All unweighted loss terms (see module docstring for the names)."""
        spans = targets["span_labels"]
        losses = self._detection_losses(outputs, spans)
        mask = targets["src_vid_mask"]
        losses["loss_saliency"] = (
            margin_loss(outputs["saliency_scores"], targets["saliency_pos_labels"],
                        targets["saliency_neg_labels"], self.config.saliency_margin)
            + rank_contrastive_loss(outputs["saliency_scores"], mask, targets["saliency_all_labels"]))
        if self.config.VTC_loss_coef or self.config.CTC_loss_coef:
            losses.update(self.alignment(outputs, targets))
        if self.config.aux_loss:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                losses.update({f"{k}_{i}": v for k, v in self._detection_losses(aux, spans).items()})
        return losses

    def weight_of(self, name: str) -> float:
        """Weight of a loss term; aux terms ``loss_x_i`` share ``loss_x``'s weight; logs-only terms get 0."""
        base = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
        return self.weights.get(base, 0.0)

    def forward(self, outputs: dict, targets: dict) -> tuple[torch.Tensor, dict[str, float]]:
        losses = self.compute(outputs, targets)
        total = sum(self.weight_of(k) * v for k, v in losses.items() if self.weight_of(k) != 0)
        logs = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in losses.items()}
        logs["loss_overall"] = float(total.detach())
        return total, logs
