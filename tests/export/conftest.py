"""Fixtures of the exporter tests: a small self-made checkpoint, a tiny CLIP text model directory,
one exported bundle shared by the bundle tests, and the official golden fixture (skipped when
``../shared`` is absent)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from model_export import TRDETRConfig, build_model, save_checkpoint
from model_export.demo_bundle import write_tiny_clip_text_dir
from model_export.export import export_bundle, parse_video_groups
from model_export.export.parity import Thresholds

REPO_ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_FIXTURE = REPO_ROOT / ".." / "shared" / "fixtures" / "official_small"
SMALL_GROUPS = "slowfast:20,clip:8"  # + 2 TEF = v_feat_dim 30
FEW_CASES = 6
# a random-weight model has (almost) no decisive top-1 answers for the fp16 gate to keep: it asks for none,
# as the demo bundle does (tests/export/test_trained_gates.py gates a trained model)
RANDOM_WEIGHTS = Thresholds(fp16_min_decisive_rows=0)


def small_config() -> TRDETRConfig:
    """A complete but small TR-DETR (hidden_dim must stay 256)."""
    return TRDETRConfig(v_feat_dim=30, t_feat_dim=16, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=32,
                        num_queries=4, max_q_l=32, max_v_l=75)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Official-layout checkpoint of a seeded random small model."""
    torch.manual_seed(7)
    model = build_model(small_config()).eval()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.ckpt", model, small_config(), epoch=3)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hugging Face CLIP text model + tokenizer directory, 16-d tokens, one transformer layer."""
    return write_tiny_clip_text_dir(tmp_path_factory.mktemp("clip") / "tiny_clip", seed=1, hidden_size=16,
                                    num_layers=1, num_heads=4, intermediate_size=32)


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory: pytest.TempPathFactory, small_checkpoint: Path, tiny_clip_dir: Path) -> Path:
    """The small checkpoint exported with fp16, text encoder and every gate (read-only for tests)."""
    out = tmp_path_factory.mktemp("bundle") / "small"
    export_bundle(small_checkpoint, out, fp16=True, text_encoder_dir=tiny_clip_dir,
                  video_groups=parse_video_groups(SMALL_GROUPS), num_random_cases=FEW_CASES, thresholds=RANDOM_WEIGHTS)
    return out


@pytest.fixture
def bundle_copy(small_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the small bundle that a test may damage."""
    return Path(shutil.copytree(small_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def official_dir() -> Path:
    if not (OFFICIAL_FIXTURE / "checkpoint.ckpt").is_file():
        pytest.skip(f"official golden fixture not found at {OFFICIAL_FIXTURE.resolve()} (needs ../shared)")
    return OFFICIAL_FIXTURE


SYNTHETIC_WINDOW = 32  # max_v_l of the trained synthetic checkpoint


@pytest.fixture(scope="session")
def trained_synthetic(tmp_path_factory: pytest.TempPathFactory):
    """(checkpoint, held-out split) of a TR-DETR trained by ``trdetr-train`` on synthetic data with planted
    moments (max_v_l 32): a model with confident (decisive-margin) answers, unlike the random-weight ones.
    A CI-sized training (96 queries, 6 epochs, a tiny model)."""
    from training import train_cli
    from training.synthetic import SyntheticSpec, write_synthetic_split

    root = tmp_path_factory.mktemp("trained_synthetic")
    spec = SyntheticSpec(min_clips=16, max_clips=SYNTHETIC_WINDOW)
    train = write_synthetic_split(root / "data", "train", 96, seed=1, spec=spec)
    heldout = write_synthetic_split(root / "data", "test", 64, seed=2, spec=spec, first_qid=1_000_000)
    config = train.dataset_config()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        status = train_cli.main([
            "--train-path", str(config.annotation_path), "--v-feat-dirs", *map(str, config.v_feat_dirs),
            "--t-feat-dir", str(config.t_feat_dir), "--max-v-l", str(SYNTHETIC_WINDOW), "--cache-features",
            "--enc-layers", "1", "--dec-layers", "2", "--dim-feedforward", "64", "--num-queries", "3", "--nheads", "4",
            "--dropout", "0.0", "--input-dropout", "0.1", "--n-epoch", "6", "--bsz", "16", "--lr", "5e-4",
            "--seed", "0", "--out-dir", str(root / "run"), "--no-progress",
        ])
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    return root / "run" / "model_latest.ckpt", heldout
