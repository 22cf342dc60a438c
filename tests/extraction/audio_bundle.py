"""A bundle of a model trained with audio that carries every encoder (tiny random CLIP vision, SlowFast
and PANN Cnn14), exported from an official-layout audio checkpoint, for the extraction tests."""

from __future__ import annotations

from pathlib import Path

import torch

from model_export import TRDETRConfig, build_model, save_checkpoint
from model_export.demo_bundle import build_demo_slowfast, write_tiny_clip_vision_dir
from model_export.export import export_bundle, parse_audio_groups, parse_video_groups
from model_export.pann import Cnn14Config, LoadedPann, random_pann, save_pann

AUDIO_DIM = 12
TINY_PANN = Cnn14Config(channels=(4, 4, 8, 8, 8, AUDIO_DIM))


def export_audio_extraction_bundle(root: Path) -> Path:
    """Write ``root/bundle`` (and ``root/tiny_cnn14.pth``, the PANN weights); returns the bundle dir."""
    torch.manual_seed(21)
    config = TRDETRConfig(v_feat_dim=2304 + 512 + 2, t_feat_dim=16, nheads=4, enc_layers=1, dec_layers=1,
                          dim_feedforward=32, num_queries=4, a_feat_dim=AUDIO_DIM + 2)
    checkpoint = save_checkpoint(root / "audio.ckpt", build_model(config).eval(), config)
    pth = save_pann(root / "tiny_cnn14.pth", random_pann(TINY_PANN, seed=2))
    from model_export.pann import load_pann

    bundle = root / "bundle"
    export_bundle(checkpoint, bundle, run_parity=False, video_groups=parse_video_groups("slowfast:2304,clip:512"),
                  audio_groups=parse_audio_groups(f"pann:{AUDIO_DIM}"),
                  image_encoder_dir=write_tiny_clip_vision_dir(root / "vision"), slowfast=build_demo_slowfast(),
                  pann=load_pann(pth))
    return bundle


def tiny_pann(root: Path) -> LoadedPann:
    from model_export.pann import load_pann

    return load_pann(root / "tiny_cnn14.pth")
