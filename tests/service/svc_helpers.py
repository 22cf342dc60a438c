"""Helpers of the service tests: bundles, feature files and the torch reference answers."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np

from service.app import create_app
from service.settings import Settings
from trdetr_common.features import build_text_features, build_video_features, tef_columns
from trdetr_common.manifest import Manifest, PreprocessingContract

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared"
SMALL_CHECKPOINT = SHARED / "fixtures" / "official_small" / "checkpoint.ckpt"
OFFICIAL_CASES = SHARED / "fixtures" / "official_small" / "cases.npz"
DEFAULT_BUNDLE = REPO / "service" / "default_bundle"
SMALL_GROUPS = "slowfast:24,clip:8"


def run_exporter(helper: str, out_dir: Path) -> None:
    """Run one export helper of this module in a fresh Python process.

    ``export_bundle`` could run in this process too (a second export in one process keeps its lengths
    dynamic: tests/export/test_onnx_export.py); the subprocess keeps the export's memory (tracing, the
    ONNX graphs) out of the long-running test process.
    """
    code = (f"import sys; from pathlib import Path; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import svc_helpers; svc_helpers.{helper}(Path({str(out_dir)!r}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{helper} failed:\n{result.stderr[-4000:]}")


def export_small_bundle(out_dir: Path) -> Path:
    """Export the official small golden checkpoint (or, without shared data, a random small one)."""
    from model_export.export import export_bundle, parse_video_groups  # torch: tests only, never the service

    checkpoint = SMALL_CHECKPOINT
    if not checkpoint.exists():
        checkpoint = _random_small_checkpoint(out_dir / "random_small.ckpt")
    bundle = out_dir / "bundle"
    # the fixture's two groups (see its README), so uploads exercise the multi-group path
    export_bundle(checkpoint, bundle, run_parity=False, video_groups=parse_video_groups(SMALL_GROUPS))
    return bundle


def export_small_int8_bundle(out_dir: Path) -> Path:
    """The small checkpoint with model.int8.onnx too (no gates: the int8 gate has its own tests)."""
    from model_export.export import export_bundle, parse_video_groups

    checkpoint = SMALL_CHECKPOINT
    if not checkpoint.exists():
        checkpoint = _random_small_checkpoint(out_dir / "random_small.ckpt")
    bundle = out_dir / "bundle"
    export_bundle(checkpoint, bundle, run_parity=False, video_groups=parse_video_groups(SMALL_GROUPS), int8=True)
    return bundle


def export_small_text_bundle(out_dir: Path) -> tuple[Path, Path]:
    """The small checkpoint with a tiny random CLIP-interface text encoder (16-d, like its text input).

    Returns (bundle dir, the Hugging Face text model directory it was exported from).
    """
    from model_export.demo_bundle import write_tiny_clip_text_dir
    from model_export.export import export_bundle, parse_video_groups

    checkpoint = SMALL_CHECKPOINT
    if not checkpoint.exists():
        checkpoint = _random_small_checkpoint(out_dir / "random_small.ckpt")
    text_dir = write_tiny_clip_text_dir(out_dir / "tiny_clip_text", seed=3, hidden_size=16, num_layers=1,
                                        num_heads=4)
    bundle = out_dir / "bundle"
    export_bundle(checkpoint, bundle, run_parity=False, video_groups=parse_video_groups(SMALL_GROUPS),
                  text_encoder_dir=text_dir)
    return bundle, text_dir


def _random_small_checkpoint(path: Path) -> Path:
    """A small random TR-DETR in the official checkpoint layout (shared fixture absent)."""
    import torch

    from model_export.checkpoint import save_checkpoint
    from model_export.config import TRDETRConfig
    from model_export.model import build_model

    torch.manual_seed(0)
    config = TRDETRConfig(v_feat_dim=34, t_feat_dim=16, nheads=4, dim_feedforward=64, num_queries=5)
    return save_checkpoint(path, build_model(config).eval(), config)


# --- feature files ---------------------------------------------------------------------------
def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def random_groups(pre: PreprocessingContract, clips: int | dict[str, int], seed: int,
                  dtype: str = "float32") -> dict[str, np.ndarray]:
    """Raw (unnormalised) per-group features, ``{name: (T_g, d_g)}``."""
    rng = np.random.default_rng(seed)
    lengths = clips if isinstance(clips, dict) else {g.name: clips for g in pre.video_groups}
    return {g.name: rng.standard_normal((lengths[g.name], g.dim)).astype(dtype) for g in pre.video_groups}


def full_layout(groups: dict[str, np.ndarray]) -> np.ndarray:
    """The groups concatenated into the single-array (.npy) layout (T, sum d_g)."""
    clips = min(len(a) for a in groups.values())
    return np.concatenate([a[:clips] for a in groups.values()], axis=1)


def random_text(pre: PreprocessingContract, tokens: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((tokens, pre.text_dim)).astype(np.float32)


def model_video(groups: dict[str, np.ndarray], pre: PreprocessingContract, *, stored: bool) -> np.ndarray:
    """What the model sees for these groups: normalised, concatenated, TEF appended.

    ``stored=True`` rounds the features to float16 first, as the Redis cache keeps them.
    """
    video = build_video_features(list(groups.values()), normalize=pre.l2_normalize_video, tef=False,
                                 eps=pre.l2_eps)
    if stored:
        video = video.astype(np.float16).astype(np.float32)
    return np.concatenate([video, tef_columns(len(video))], axis=1) if pre.tef else video


def model_text(tokens: np.ndarray, pre: PreprocessingContract) -> np.ndarray:
    return build_text_features(tokens, normalize=pre.l2_normalize_text, max_tokens=pre.max_text_tokens,
                               eps=pre.l2_eps)


class TorchReference:
    """The torch TR-DETR of a checkpoint, run one query at a time (batch 1, no padding)."""

    def __init__(self, checkpoint: Path) -> None:
        from model_export.checkpoint import load_checkpoint

        self.model, self.config = load_checkpoint(checkpoint)

    def __call__(self, text: np.ndarray, video: np.ndarray, audio: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``text`` (L_t, D_t), ``video`` (T, D_v incl. TEF), ``audio`` (T, a_feat_dim) for audio models, passed
        as the official code passes it (``src_aud``) -> pred_logits (Q, 2), pred_spans (Q, 2), saliency_scores (T,)."""
        import torch

        src_aud = None if audio is None else torch.from_numpy(audio)[None]
        with torch.no_grad():
            out = self.model(torch.from_numpy(text)[None], torch.ones(1, len(text)),
                             torch.from_numpy(video)[None], torch.ones(1, len(video)), src_aud=src_aud)
        return {name: out[name][0].numpy() for name in ("pred_logits", "pred_spans", "saliency_scores")}


def manifest_of(bundle: Path) -> Manifest:
    return Manifest.load(bundle)


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A fresh app with its lifespan running, behind an httpx client on the ASGI transport.

    httpx's ASGITransport does not run lifespans, so the app's lifespan context is entered here.
    ``client.app`` is the app (tests read ``app.state.runtime``).
    """
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service", timeout=60) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


# --- audio bundles ------------------------------------------------------------------------------
AUDIO_DIM = 12  # stands for PANN's 2048


def export_audio_bundle(out_dir: Path) -> Path:
    """A small random TR-DETR trained "with audio", official layout (src_aud = PANN + TEF, so a_feat_dim =
    12 + 2), written as an official checkpoint (``random_audio.ckpt``) and exported without gates (the
    exporter tests gate audio bundles)."""
    import torch

    from model_export.checkpoint import save_checkpoint
    from model_export.config import TRDETRConfig
    from model_export.export import export_bundle, parse_audio_groups, parse_video_groups
    from model_export.model import build_model

    torch.manual_seed(5)
    config = TRDETRConfig(v_feat_dim=34, t_feat_dim=16, nheads=4, dim_feedforward=64, num_queries=5,
                          a_feat_dim=AUDIO_DIM + 2)
    model = build_model(config).eval()
    checkpoint = save_checkpoint(out_dir / "random_audio.ckpt", model, config)
    bundle = out_dir / "bundle"
    export_bundle(checkpoint, bundle, run_parity=False, video_groups=parse_video_groups(SMALL_GROUPS),
                  audio_groups=parse_audio_groups(f"pann:{AUDIO_DIM}"))
    return bundle


def official_audio_input(groups: dict[str, np.ndarray], audio: np.ndarray, *,
                         stored: bool) -> tuple[np.ndarray, np.ndarray]:
    """(src_vid, src_aud) as the official start_end_dataset_audio builds them, written out step by step
    (independently of the service's helpers): each group L2-normalised, the video groups cut to the
    shortest, then video and audio cut to the shorter, then the same TEF appended to both.

    ``stored=True`` rounds the normalised features to float16, as the Redis cache keeps them.
    """
    def l2(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-5)

    parts = [l2(a) for a in groups.values()]
    clips = min(len(p) for p in parts)
    video = np.concatenate([p[:clips] for p in parts], axis=1)
    aud = l2(audio)
    clips = min(clips, len(aud))
    video, aud = video[:clips], aud[:clips]
    if stored:
        video = video.astype(np.float16).astype(np.float32)
        aud = aud.astype(np.float16).astype(np.float32)
    tef = np.stack([np.arange(clips) / clips, np.arange(1, clips + 1) / clips], axis=1).astype(np.float32)
    return np.concatenate([video, tef], axis=1), np.concatenate([aud, tef], axis=1)
