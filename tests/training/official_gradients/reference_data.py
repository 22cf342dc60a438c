"""The batches and models of the official-gradient reference, and our side of the comparison.

Shared by `make_reference.py` (which runs the official code too) and `tests/training/test_official_gradients.py`.
Two weight sets: "fixture" (the official golden fixture's checkpoint, ../shared) and "seeded" (a second
architecture, `SEEDED_OPT`, whose weights `training.gradcheck.seeded_parameters` derives from the parameter
names, so it needs no file).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model_export import TRDETRConfig, build_model, load_checkpoint
from training import gradcheck
from training.dataset import Batch, saliency_labels, span_labels
from training.losses import LossConfig, TRDETRCriterion
from training.trainer import backward_step

REPO = Path(__file__).resolve().parents[3]
FIXTURE_CHECKPOINT = REPO / ".." / "shared" / "fixtures" / "official_small" / "checkpoint.ckpt"
REFERENCE = Path(__file__).resolve().parent / "reference.npz"

#: (weights, batch size, clips, tokens, seed) of each batch. Rows of one batch share their lengths: the
#: official model is not batch-invariant under padding (training/README.md), ours deliberately is.
BATCHES = (("fixture", 4, 40, 12, 101), ("fixture", 2, 75, 32, 202), ("seeded", 3, 24, 7, 303))
#: The "seeded" architecture and loss weights: the fixture's opt with these fields changed (three decoder
#: layers, so two refined reference spans; one input projection; text positions; other loss weights).
SEEDED_OPT = {"enc_layers": 1, "dec_layers": 3, "n_input_proj": 1, "use_txt_pos": True, "num_queries": 4,
              "nheads": 8, "dim_feedforward": 32, "span_loss_coef": 5, "giou_loss_coef": 2, "label_loss_coef": 3,
              "lw_saliency": 2.0, "saliency_margin": 0.5, "VTC_loss_coef": 0.2, "CTC_loss_coef": 0.7,
              "set_cost_span": 5, "set_cost_giou": 2, "set_cost_class": 3}
GROUP_DIMS = (24, 8)  # the fixture's two video feature groups; the 2 TEF columns are appended
CLIP_LENGTH = 2.0


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows / (||row|| + 1e-5), as the official `l2_normalize_np_array`."""
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-5)


def make_sample(rng: np.random.RandomState, n_clips: int, n_tokens: int, t_dim: int) -> dict[str, np.ndarray]:
    """One query: float32 inputs (video (n_clips, 34) with TEF, text (n_tokens, t_dim)) and fixed targets."""
    groups = [l2_normalize(rng.standard_normal((n_clips, d)).astype(np.float32)) for d in GROUP_DIMS]
    tef = np.stack([np.arange(n_clips) / n_clips, np.arange(1, n_clips + 1) / n_clips], axis=1)
    video = np.concatenate([*groups, tef], axis=1).astype(np.float32)
    text = l2_normalize(rng.standard_normal((n_tokens, t_dim)).astype(np.float32))
    windows, clips = [], set()
    for _ in range(rng.randint(1, 3)):
        start = rng.randint(0, n_clips - 4)
        length = rng.randint(2, min(12, n_clips - start) + 1)
        windows.append([start * CLIP_LENGTH, (start + length) * CLIP_LENGTH])
        clips.update(range(start, start + length))
    clip_ids = sorted(clips)
    scores = rng.randint(0, 5, (len(clip_ids), 3)).tolist()
    label_rng = np.random.default_rng(rng.randint(2**31))
    pos, neg, all_scores = saliency_labels(clip_ids, scores, n_clips, label_rng)
    pos_mask = np.zeros(n_clips, np.float32)
    pos_mask[clip_ids] = 1
    return {"video": video, "text": text, "spans": span_labels(windows, n_clips, CLIP_LENGTH, 5, label_rng),
            "pos": pos, "neg": neg, "all": all_scores, "pos_mask": pos_mask}


def make_batch(index: int, t_dim: int) -> list[dict[str, np.ndarray]]:
    _, size, n_clips, n_tokens, seed = BATCHES[index]
    rng = np.random.RandomState(seed)
    return [make_sample(rng, n_clips, n_tokens, t_dim) for _ in range(size)]


def batch_arrays(samples: list[dict[str, np.ndarray]], prefix: str) -> dict[str, np.ndarray]:
    """One batch as npz arrays (spans stay per row: `{prefix}spans_{i}`)."""
    arrays = {f"{prefix}{key}": np.stack([s[key] for s in samples])
              for key in ("video", "text", "pos", "neg", "all", "pos_mask")}
    arrays.update({f"{prefix}spans_{i}": s["spans"] for i, s in enumerate(samples)})
    return arrays


def our_batch(arrays, prefix: str) -> Batch:
    """A stored batch as `training.dataset.Batch`: float64 features, float32 masks (all valid)."""
    video, text = (torch.from_numpy(arrays[f"{prefix}{k}"]).double() for k in ("video", "text"))
    vid_mask, txt_mask = torch.ones(video.shape[:2]), torch.ones(text.shape[:2])
    size = len(video)
    targets = {"span_labels": [torch.from_numpy(arrays[f"{prefix}spans_{i}"]).double() for i in range(size)],
               "saliency_pos_labels": torch.from_numpy(arrays[f"{prefix}pos"]),
               "saliency_neg_labels": torch.from_numpy(arrays[f"{prefix}neg"]),
               "saliency_all_labels": torch.from_numpy(arrays[f"{prefix}all"]),
               "src_pos_mask": torch.from_numpy(arrays[f"{prefix}pos_mask"]),
               "src_vid_mask": vid_mask, "src_txt_mask": txt_mask}
    inputs = {"src_txt": text, "src_txt_mask": txt_mask, "src_vid": video, "src_vid_mask": vid_mask}
    return Batch([{} for _ in range(size)], inputs, targets)


def json_opt(opt: argparse.Namespace) -> str:
    """The JSON-representable fields of an official opt (what our config and loss weights read)."""
    plain = (str, int, float, bool, type(None), list)
    return json.dumps({k: v for k, v in sorted(vars(opt).items()) if isinstance(v, plain)})


def disable_dropout(model: nn.Module) -> None:
    """Every dropout of a model (modules and attention-weight dropout rates) to 0."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0


@functools.cache
def _fixture_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], TRDETRConfig]:
    """The fixture's weights and config, read once (each batch gets a fresh model)."""
    model, config = load_checkpoint(path)
    return model.state_dict(), config


def our_model(weights: str, opt: dict) -> nn.Module:
    """Our TR-DETR for a weight set, float64, in training mode with dropout off."""
    if weights == "fixture":
        state, config = _fixture_checkpoint(FIXTURE_CHECKPOINT)
        model = build_model(config)
        model.load_state_dict(state, strict=True)
    else:
        model = build_model(TRDETRConfig.from_opt(opt))
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        state = {n: torch.from_numpy(w) for n, w in gradcheck.seeded_parameters(shapes).items()}
        model.load_state_dict(state, strict=True)
    model = model.double().train()
    disable_dropout(model)
    return model


def our_step(weights: str, opt: dict, batch: Batch) -> tuple[dict[str, tuple[int, torch.Tensor | None]],
                                                           dict[str, float]]:
    """Our training step (`training.trainer.backward_step`): ({name: (size, grad or None)}, loss logs)."""
    model = our_model(weights, opt)
    logs = backward_step(model, TRDETRCriterion(LossConfig.from_opt(opt)), batch)
    return {n: (p.numel(), p.grad) for n, p in model.named_parameters()}, logs


def fingerprints(grads: dict[str, tuple[int, torch.Tensor | None]]) -> dict[str, gradcheck.GradientFingerprint]:
    """`training.gradcheck` fingerprints of {name: (size, grad or None)}."""
    return gradcheck.fingerprints({n: (size, None if g is None else g.detach().numpy())
                                   for n, (size, g) in grads.items()})
