"""Training hyper-parameters and their help texts, torch-free so that ``trdetr-train --help`` is instant.

``LossConfig`` and ``TrainConfig`` keep the official ``opt`` names and defaults; ``training.losses`` and
``training.trainer`` re-export them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.matcher import HungarianMatcher


@dataclass(frozen=True)
class LossConfig:
    """Loss and matcher coefficients; field names and defaults as the official released ``opt.json``."""

    span_loss_coef: float = 10.0
    giou_loss_coef: float = 1.0
    label_loss_coef: float = 4.0
    lw_saliency: float = 1.0
    saliency_margin: float = 0.2
    VTC_loss_coef: float = 0.3
    CTC_loss_coef: float = 0.5
    set_cost_span: float = 10.0
    set_cost_giou: float = 1.0
    set_cost_class: float = 4.0
    aux_loss: bool = True
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    @classmethod
    def from_opt(cls, opt: argparse.Namespace | dict) -> LossConfig:
        """Take every known field from an official opt (Namespace or dict); unknown keys are ignored."""
        values = vars(opt) if isinstance(opt, argparse.Namespace) else dict(opt)
        return cls(**{f.name: values[f.name] for f in fields(cls) if values.get(f.name) is not None})

    def matcher(self) -> HungarianMatcher:
        from training.matcher import HungarianMatcher

        return HungarianMatcher(cost_class=self.set_cost_class, cost_span=self.set_cost_span,
                                cost_giou=self.set_cost_giou)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; names and defaults as the official ``opt`` (eval_every: official uses 5)."""

    lr: float = 1e-4
    wd: float = 1e-4
    lr_drop: int = 400
    n_epoch: int = 200
    bsz: int = 32
    eval_bsz: int = 100
    grad_clip: float = 0.1
    seed: int = 2018
    eval_every: int = 5
    device: str = "cpu"
    num_workers: int = 0
    best_metric: str = "MR-full-mAP"
    progress: bool = True


MODEL_FLAGS: dict[str, tuple[type, object, str]] = {  # official opt name -> (type, default, help)
    "hidden_dim": (int, 256, "transformer width (the official decoder needs 256)"),
    "nheads": (int, 8, "attention heads"),
    "enc_layers": (int, 2, "transformer encoder layers"),
    "dec_layers": (int, 2, "transformer decoder layers"),
    "dim_feedforward": (int, 1024, "feed-forward width of the transformer layers"),
    "num_queries": (int, 10, "moment queries (the most moments one video can get)"),
    "dropout": (float, 0.1, "dropout inside the transformer"),
    "input_dropout": (float, 0.5, "dropout on the projected input features"),
    "n_input_proj": (int, 2, "layers of the input projections"),
}

LOSS_HELP: dict[str, str] = {
    "span_loss_coef": "weight of the L1 loss on matched (centre, width) spans",
    "giou_loss_coef": "weight of the 1 - GIoU loss on matched spans",
    "label_loss_coef": "weight of the foreground/background focal loss",
    "lw_saliency": "weight of the saliency (hinge + rank-contrastive) loss",
    "saliency_margin": "margin of the saliency hinge loss",
    "VTC_loss_coef": "weight of the video-text (local) alignment loss",
    "CTC_loss_coef": "weight of the clip-text (global) alignment loss",
    "set_cost_span": "Hungarian matcher: cost weight of the L1 span distance",
    "set_cost_giou": "Hungarian matcher: cost weight of the GIoU",
    "set_cost_class": "Hungarian matcher: cost weight of the foreground probability",
    "focal_alpha": "alpha of the focal loss",
    "focal_gamma": "gamma of the focal loss",
}

TRAIN_HELP: dict[str, str] = {
    "lr": "AdamW learning rate",
    "wd": "AdamW weight decay",
    "lr_drop": "epochs between the 10x learning-rate drops",
    "n_epoch": "training epochs",
    "bsz": "training batch size",
    "eval_bsz": "validation batch size",
    "grad_clip": "max gradient norm (0: no clipping)",
    "seed": "seed of Python, numpy and torch",
    "eval_every": "validate every N epochs (needs --eval-path)",
    "device": "torch device, e.g. cpu or cuda",
    "num_workers": "DataLoader worker processes",
    "best_metric": "validation metric that picks model_best.ckpt",
}


def loss_flags() -> dict[str, tuple[type, object, str]]:
    """Flag name -> (type, default, help) of every non-boolean ``LossConfig`` field."""
    return {f.name: (type(f.default), f.default, LOSS_HELP[f.name]) for f in fields(LossConfig) if f.type != "bool"}


def train_flags() -> dict[str, tuple[type, object, str]]:
    """Flag name -> (type, default, help) of every ``TrainConfig`` field but ``progress``."""
    return {f.name: (type(f.default), f.default, TRAIN_HELP[f.name]) for f in fields(TrainConfig)
            if f.name != "progress"}
