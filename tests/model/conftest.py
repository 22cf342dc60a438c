"""Shared fixtures of the model tests: the official golden fixture (skipped when ../shared is absent)
and a tiny random TR-DETR configuration for the self-contained tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_export import TRDETRConfig, build_model, load_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_FIXTURE = REPO_ROOT / ".." / "shared" / "fixtures" / "official_small"


@pytest.fixture(scope="session")
def official_dir() -> Path:
    if not (OFFICIAL_FIXTURE / "checkpoint.ckpt").is_file():
        pytest.skip(f"official golden fixture not found at {OFFICIAL_FIXTURE.resolve()} (needs ../shared)")
    return OFFICIAL_FIXTURE


@pytest.fixture(scope="session")
def official_model(official_dir: Path):
    model, _ = load_checkpoint(official_dir / "checkpoint.ckpt")
    return model


@pytest.fixture(scope="session")
def official_cases(official_dir: Path):
    return np.load(official_dir / "cases.npz")


@pytest.fixture(scope="session")
def official_padded_batch(official_dir: Path):
    return np.load(official_dir / "padded_batch.npz")


def tiny_config(**overrides) -> TRDETRConfig:
    """A small but complete TR-DETR (hidden_dim must stay 256)."""
    fields = dict(v_feat_dim=12, t_feat_dim=10, nheads=4, enc_layers=2, dec_layers=3, dim_feedforward=32,
                  num_queries=4, clip_length=2.0)
    fields.update(overrides)
    return TRDETRConfig(**fields)


def perturbed_model(config: TRDETRConfig, seed: int = 0):
    """A randomly initialised model in eval mode whose zero-initialised tensors are made non-zero."""
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def random_inputs(config: TRDETRConfig, lengths: list[tuple[int, int]], seed: int = 0):
    """Right-padded batch for (L_v, L_t) per row: src_txt, src_txt_mask, src_vid, src_vid_mask."""
    gen = torch.Generator().manual_seed(seed)
    max_v, max_t = max(v for v, _ in lengths), max(t for _, t in lengths)
    vid = torch.zeros(len(lengths), max_v, config.v_feat_dim)
    txt = torch.zeros(len(lengths), max_t, config.t_feat_dim)
    vid_mask, txt_mask = torch.zeros(len(lengths), max_v), torch.zeros(len(lengths), max_t)
    for i, (n_v, n_t) in enumerate(lengths):
        vid[i, :n_v] = torch.randn(n_v, config.v_feat_dim, generator=gen)
        txt[i, :n_t] = torch.randn(n_t, config.t_feat_dim, generator=gen)
        vid_mask[i, :n_v], txt_mask[i, :n_t] = 1, 1
    return txt, txt_mask, vid, vid_mask
