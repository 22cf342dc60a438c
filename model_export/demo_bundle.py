"""The untrained demo bundle the service starts on when nothing is configured.

    python -m model_export.demo_bundle --out service/default_bundle

builds a TR-DETR with seeded random weights and the released model's preprocessing contract
(video groups slowfast 2304 + clip 512 + 2 TEF columns = 2818, CLIP text tokens 512-d,
hidden_dim 256, 10 queries, max_v_l 75, max_q_l 32) but one encoder and one decoder layer and a
256-wide feed-forward, plus a tiny random text encoder with the CLIP text model's interface and a
byte-level vocabulary built here (no download, no dataset text), and tiny random video encoders with
the real interfaces (a CLIP image tower: (B, 3, 224, 224) -> 512; a SlowFast: 8 + 32 frames of
224x224 -> 2304), so video files can be ingested end to end; and exports them through
``export_bundle`` with every parity gate. Its predictions are meaningless: it exists so the service,
its tests and its container run end to end without a trained model.

Size: every weight is drawn on the fp16 grid, so the fp32 graphs store them as fp16 (losslessly,
see ``store_exact_fp16_weights``) and the bundle stays under 10 MB.

Reproducible: re-running the command with the same seed, library versions and CPU writes the same
bytes in every file, from any directory and to any output path (tests/export/test_reproducible_bundle.py).
The ONNX graphs hold no path; ``created_at`` is ``SOURCE_DATE_EPOCH`` when that is set, else
1970-01-01T00:00:00+00:00 (epoch 0, meaning "no date"), never the clock.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from model_export import TRDETRConfig, build_model, save_checkpoint
from model_export.export import export_bundle
from model_export.export.bundle import build_timestamp
from model_export.slowfast import LoadedSlowFast, SlowFast, init_random_, tiny_config
from trdetr_common.manifest import Manifest, VideoFeatureGroup

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "service" / "default_bundle"
DEMO_VIDEO_GROUPS = [VideoFeatureGroup(name="slowfast", dim=2304), VideoFeatureGroup(name="clip", dim=512)]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
DEMO_SOURCE_DATE_EPOCH = "0"  # created_at when SOURCE_DATE_EPOCH is unset: 1970-01-01, i.e. no date


def demo_config() -> TRDETRConfig:
    """Released preprocessing contract, reduced depth and width where it does not touch the contract."""
    return TRDETRConfig(
        v_feat_dim=2304 + 512 + 2,
        t_feat_dim=512,
        hidden_dim=256,
        nheads=8,
        num_queries=10,
        max_v_l=75,
        max_q_l=32,
        clip_length=2.0,
        enc_layers=1,
        dec_layers=1,
        dim_feedforward=256,
        n_input_proj=1,
    )


def _round_to_fp16_grid(module: torch.nn.Module) -> None:
    """Make every floating-point parameter exactly representable in fp16 (see module docstring)."""
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(param.half().float())


def build_demo_model(seed: int = 0) -> torch.nn.Module:
    """Seeded random-weight TR-DETR of ``demo_config()`` in eval mode."""
    torch.manual_seed(seed)
    model = build_model(demo_config()).eval()
    _round_to_fp16_grid(model)
    return model


def byte_level_vocab() -> dict[str, int]:
    """CLIP-style BPE vocabulary without merges: each byte's symbol, with and without ``</w>``.

    Any text tokenizes (character by character), no corpus is needed; ids of the specials are last.
    """
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}


def write_tiny_clip_text_dir(
    directory: Path,
    *,
    seed: int = 0,
    hidden_size: int = 512,
    num_layers: int = 0,
    num_heads: int = 8,
    intermediate_size: int = 64,
) -> Path:
    """Write a Hugging Face CLIP text model + tokenizer directory with random weights.

    Same interface as ``openai/clip-vit-base-patch32``'s text half (``CLIPTextModelWithProjection``: the text
    transformer and its projection to the ``hidden_size``-d joint space, ``CLIPTokenizer`` from
    vocab.json/merges.txt, 77-token context); made locally, nothing downloaded.

    Returns:
        ``directory``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    vocab = byte_level_vocab()
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(directory, model_max_length=77)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=77,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
        projection_dim=hidden_size,
    )
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config).eval()
    _round_to_fp16_grid(model)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_tiny_clip_vision_dir(directory: Path, *, seed: int = 0, hidden_size: int = 32) -> Path:
    """Write a Hugging Face CLIP vision tower (with projection) directory with random weights.

    Same interface as ``openai/clip-vit-base-patch32``'s image half (224x224 images, 32x32 patches,
    512-d projected embedding) but one narrow transformer layer.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=224,
        patch_size=32,
        projection_dim=512,
    )
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(config).eval()
    _round_to_fp16_grid(model)
    model.save_pretrained(directory)
    return directory


def build_demo_slowfast(seed: int = 0) -> LoadedSlowFast:
    """A tiny seeded random SlowFast (one block per stage, narrow) with the real 2048 + 256 outputs.

    Its BatchNorms are identities (scale 1, mean 0, variance 1 - eps): the exporter folds BN into the
    convolutions, and identity BNs keep the folded weights on the fp16 grid, so they are stored as fp16.
    """
    model = init_random_(SlowFast(tiny_config(stem_dims=(4, 2))), seed=seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.weight.fill_(1.0)
                module.running_mean.zero_()
                module.running_var.fill_(1.0 - module.eps)
    _round_to_fp16_grid(model)
    return LoadedSlowFast(model=model, file_name=None, sha256=None, format="random-init")


def build_demo_bundle(
    out_dir: Path, *, seed: int = 0, num_random_cases: int = 50, progress: bool = True
) -> Manifest:
    """Build, export and gate the demo bundle into ``out_dir``."""
    notes = [
        "UNTRAINED demo bundle: seeded random weights, predictions are meaningless. Regenerate with "
        f"`python -m model_export.demo_bundle --out service/default_bundle --seed {seed}`.",
        "Reduced architecture (enc_layers 1, dec_layers 1, dim_feedforward 256, n_input_proj 1) with the "
        "released model's inputs and outputs.",
        "text_encoder.onnx is a random CLIP-interface text model with no transformer layer and a byte-level "
        "vocabulary (no merges); it only makes text queries run end to end.",
        "image_encoder.onnx (one-layer CLIP-interface vision model) and slowfast.onnx (one block per stage, "
        "narrow) are random too: video files go through the official preprocessing end to end, but their "
        "features mean nothing.",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(
            Path(tmp) / "demo_untrained.ckpt", build_demo_model(seed), demo_config(), fmt="trdetr-service"
        )
        text_dir = write_tiny_clip_text_dir(Path(tmp) / "tiny_clip_text", seed=seed)
        vision_dir = write_tiny_clip_vision_dir(Path(tmp) / "tiny_clip_vision", seed=seed)
        return export_bundle(
            checkpoint,
            out_dir,
            text_encoder_dir=text_dir,
            video_groups=DEMO_VIDEO_GROUPS,
            num_random_cases=num_random_cases,
            untrained=True,
            notes=notes,
            progress=progress,
            image_encoder_dir=vision_dir,
            slowfast=build_demo_slowfast(seed),
            created_at=build_timestamp(os.environ.get("SOURCE_DATE_EPOCH") or DEMO_SOURCE_DATE_EPOCH),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_export.demo_bundle",
        description="Write the untrained demo bundle (random weights, released preprocessing contract).",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"bundle directory (default {DEFAULT_OUT})"
    )
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument(
        "--random-cases", type=int, default=50, help="random parity input batches (default 50)"
    )
    args = parser.parse_args(argv)
    manifest = build_demo_bundle(args.out, seed=args.seed, num_random_cases=args.random_cases)
    size = sum(entry.bytes for entry in manifest.files.values())
    print(
        f"demo bundle written to {args.out}: {size / 1e6:.1f} MB, parity passed: {manifest.parity['passed']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
