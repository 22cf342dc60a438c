"""Small TR-DETR checkpoints trained "with audio", written in the official and Lighthouse layouts.

Official (``start_end_dataset_audio``): src_aud = PANN features + the 2 TEF columns, so
``a_feat_dim`` = audio width + 2 (2050 for PANN). Lighthouse: no TEF after the audio, ``a_feat_dim``
= audio width (2048). Both concatenate the audio after the video's TEF in ``forward``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from model_export import TRDETRConfig, build_model, save_checkpoint

AUDIO_DIM = 12  # stands for PANN's 2048
VIDEO_GROUPS = "slowfast:20,clip:8"  # + 2 TEF = v_feat_dim 30


def audio_config(a_feat_dim: int) -> TRDETRConfig:
    """The exporter tests' small config, with audio."""
    return TRDETRConfig(v_feat_dim=30, t_feat_dim=16, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=32,
                        num_queries=4, max_q_l=32, max_v_l=75, a_feat_dim=a_feat_dim)


def _model(config: TRDETRConfig, seed: int) -> torch.nn.Module:
    """Random weights, the audio columns' projection scaled up so that audio visibly moves the outputs."""
    torch.manual_seed(seed)
    model = build_model(config).eval()
    with torch.no_grad():
        first = model.input_vid_proj[0]
        linear = next(m for m in first.modules() if isinstance(m, torch.nn.Linear))
        linear.weight[:, config.v_feat_dim:] *= 8.0
    return model


def write_official_audio_checkpoint(path: Path, seed: int = 11) -> Path:
    """Official layout (``{"model", "opt": Namespace}``), audio with TEF: a_feat_dim = 12 + 2."""
    config = audio_config(AUDIO_DIM + 2)
    return save_checkpoint(path, _model(config, seed), config, epoch=5)


def write_lighthouse_audio_checkpoint(path: Path, seed: int = 12) -> Path:
    """Lighthouse layout (``{"model", "opt": dict}``), audio without TEF: a_feat_dim = 12."""
    config = audio_config(AUDIO_DIM)
    opt = {k: v for k, v in dataclasses.asdict(config).items()}
    opt.update(model_name="tr_detr", device="cpu", max_a_l=75, a_feat_types="pann",
               v_feat_types="clip_slowfast_pann")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _model(config, seed).state_dict(), "opt": opt}, path)
    return path
