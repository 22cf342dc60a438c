"""CLIP image tower -> ``image_encoder.onnx``, with its parity gate against ``transformers``.

The QVHighlights ``clip`` features are OpenAI CLIP ViT-B/32 ``encode_image`` outputs: the vision
transformer's pooled ``<cls>`` state after ``post_layernorm``, through ``visual_projection`` (512-d),
*not* L2-normalised. In ``transformers`` that is ``CLIPModel.get_image_features`` (=
``CLIPVisionModelWithProjection(...).image_embeds``). The graph takes ``pixel_values`` (B, 3, 224, 224)
already normalised with CLIP's mean/std (``extraction`` does that in numpy) and returns
``image_embeds`` (B, 512).

Gate: ORT vs ``CLIPModel.get_image_features`` (or the vision-only model for a vision-only
directory) on random normalised images, one at a time and as a batch: max abs difference <= atol.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from transformers import CLIPModel, CLIPVisionModelWithProjection

from trdetr_common.video_encoders import ClipImageEncoderSpec, EncoderWeights

from .onnx_export import export_module, store_exact_fp16_weights

IMAGE_ONNX = "image_encoder.onnx"
IMAGE_INPUT = "pixel_values"
IMAGE_OUTPUT = "image_embeds"
IMAGE_DYNAMIC_AXES = {IMAGE_INPUT: {0: "batch"}, IMAGE_OUTPUT: {0: "batch"}}


class ImageEncoderError(RuntimeError):
    """The image encoder export or its parity gate failed; the message says which."""


class ImageEmbeds(nn.Module):
    """CLIPVisionModelWithProjection -> its projected pooled embedding (B, projection_dim)."""

    def __init__(self, model: CLIPVisionModelWithProjection) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).image_embeds


def clip_towers(hf_dir: str | Path) -> set[str]:
    """Which CLIP towers a local Hugging Face directory holds: {'text', 'vision'} or a subset."""
    config_path = Path(hf_dir) / "config.json"
    if not config_path.is_file():
        raise ImageEncoderError(f"{hf_dir} is not a Hugging Face model directory (no config.json)")
    model_type = json.loads(config_path.read_text()).get("model_type")
    return {"clip": {"text", "vision"}, "clip_text_model": {"text"}, "clip_vision_model": {"vision"}}.get(model_type, set())


def load_vision_tower(hf_dir: str | Path) -> CLIPVisionModelWithProjection:
    """The image half (with its projection) of a local CLIP directory, in eval mode, no network."""
    return CLIPVisionModelWithProjection.from_pretrained(hf_dir, local_files_only=True).eval()


def export_image_encoder(hf_dir: str | Path, out_dir: str | Path, opset: int) -> ClipImageEncoderSpec:
    """Write ``image_encoder.onnx`` for the CLIP directory ``hf_dir``; returns the group's encoder spec."""
    model = load_vision_tower(hf_dir)
    size = int(model.config.image_size)
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    path = Path(out_dir) / IMAGE_ONNX
    export_module(ImageEmbeds(model), (example,), path, input_names=[IMAGE_INPUT], output_names=[IMAGE_OUTPUT],
                  dynamic_axes=IMAGE_DYNAMIC_AXES, opset=opset)
    store_exact_fp16_weights(path)
    return ClipImageEncoderSpec(
        onnx_file=IMAGE_ONNX, input_name=IMAGE_INPUT, output_name=IMAGE_OUTPUT,
        dim=int(model.config.projection_dim), image_size=size,
        weights=EncoderWeights(file_name=Path(hf_dir).name, format="huggingface-clip"),
    )


def _reference(hf_dir: Path):
    """The transformers function the gate compares with, and its name: get_image_features, else image_embeds."""
    if "text" in clip_towers(hf_dir):
        full = CLIPModel.from_pretrained(hf_dir, local_files_only=True).eval()

        def features(pixels: torch.Tensor) -> torch.Tensor:
            out = full.get_image_features(pixel_values=pixels)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        return features, "transformers CLIPModel.get_image_features"
    return ImageEmbeds(load_vision_tower(hf_dir)), "transformers CLIPVisionModelWithProjection.image_embeds"


def check_image_encoder(hf_dir: str | Path, bundle_dir: str | Path, *, atol: float = 1e-4, cases: int = 4) -> dict:
    """ORT ``image_encoder.onnx`` vs transformers on ``cases`` random images, singly and as one batch."""
    hf_dir = Path(hf_dir)
    reference, reference_name = _reference(hf_dir)
    session = ort.InferenceSession(str(Path(bundle_dir) / IMAGE_ONNX), providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[2]
    generator = torch.Generator().manual_seed(1)
    # normalised pixels of real images lie in about [-1.8, 2.2]; draw over that range
    images = torch.rand(cases, 3, size, size, generator=generator) * 4.0 - 1.8
    with torch.no_grad():
        expected = reference(images).numpy()
    singles = np.concatenate([session.run([IMAGE_OUTPUT], {IMAGE_INPUT: images[i : i + 1].numpy()})[0] for i in range(cases)])
    batch = session.run([IMAGE_OUTPUT], {IMAGE_INPUT: images.numpy()})[0]
    diffs = {"single": float(np.abs(singles - expected).max()), "batch": float(np.abs(batch - expected).max())}
    failures = [f"image encoder {name} run differs from transformers by {d:.3g} > {atol:g}" for name, d in diffs.items() if d > atol]
    return {"passed": not failures, "failures": failures, "atol": atol, "cases": cases,
            "max_abs_diff": max(diffs.values()), "reference": reference_name, **diffs}
