"""SlowFast checkpoint -> ``slowfast.onnx``, with its torch-vs-ORT parity gate.

Graph: ``slow`` (B, 3, num_frames/alpha, crop, crop) and ``fast`` (B, 3, num_frames, crop, crop),
normalised float32 -> ``features`` (B, slow_dim + fast_dim): the two pathways' res5 outputs averaged
over time and space, slow first (see ``model_export.slowfast.model``). Frame and spatial sizes are
fixed (the official 32 frames at 224x224), the batch is dynamic. The graph is exported from the
factorized form (``model_export.slowfast.factorize``: 3D convolutions as 2D ones, BatchNorm folded), which
ONNX Runtime's CPU kernels run several times faster; the gate compares it with the original network.

The gate runs the exported graph and our torch network on random clips, one at a time and as a
batch (max abs difference <= atol). That our torch network equals an independent implementation
with the same weights (pytorchvideo's ``create_slowfast``) is proven by the test suite.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from model_export.slowfast import LoadedSlowFast, SlowFast
from model_export.slowfast.factorize import factorized_for_export
from trdetr_common.video_encoders import EncoderWeights, SlowFastEncoderSpec

from .onnx_export import export_module, store_exact_fp16_weights

SLOWFAST_ONNX = "slowfast.onnx"
SLOWFAST_INPUTS = ("slow", "fast")
SLOWFAST_OUTPUT = "features"
SLOWFAST_DYNAMIC_AXES = {"slow": {0: "batch"}, "fast": {0: "batch"}, SLOWFAST_OUTPUT: {0: "batch"}}
NUM_FRAMES = 32
CROP_SIZE = 224


def example_clips(model: SlowFast, batch: int, *, seed: int = 0, size: int = CROP_SIZE, frames: int = NUM_FRAMES) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normalised (slow, fast) clips; the slow frames are every alpha-th-ish fast frame, as in extraction."""
    generator = torch.Generator().manual_seed(seed)
    fast = torch.randn(batch, 3, frames, size, size, generator=generator)
    index = torch.linspace(0, frames - 1, frames // model.config.alpha).long()
    return fast[:, :, index].contiguous(), fast


def export_slowfast(loaded: LoadedSlowFast, out_dir: str | Path, opset: int) -> SlowFastEncoderSpec:
    """Write ``slowfast.onnx`` for ``loaded.model``; returns the group's encoder spec (manifest)."""
    model = loaded.model.eval()
    path = Path(out_dir) / SLOWFAST_ONNX
    export_module(factorized_for_export(model), example_clips(model, 2), path, input_names=list(SLOWFAST_INPUTS),
                  output_names=[SLOWFAST_OUTPUT], dynamic_axes=SLOWFAST_DYNAMIC_AXES, opset=opset)
    store_exact_fp16_weights(path)
    config = model.config
    return SlowFastEncoderSpec(
        onnx_file=SLOWFAST_ONNX, input_names=SLOWFAST_INPUTS, output_name=SLOWFAST_OUTPUT,
        dim=config.feature_dim, slow_dim=config.feature_dims[0], fast_dim=config.feature_dims[1],
        alpha=config.alpha, num_frames=NUM_FRAMES, crop_size=CROP_SIZE, architecture=config.to_dict(),
        weights=EncoderWeights(file_name=loaded.file_name, sha256=loaded.sha256, format=loaded.format,
                               untrained=loaded.format == "random-init"),
    )


def check_slowfast(model: SlowFast, bundle_dir: str | Path, *, atol: float = 1e-4, cases: int = 2) -> dict:
    """ORT ``slowfast.onnx`` vs the torch network on ``cases`` random clips, singly and as one batch."""
    session = ort.InferenceSession(str(Path(bundle_dir) / SLOWFAST_ONNX), providers=["CPUExecutionProvider"])
    slow, fast = example_clips(model, cases, seed=1)
    with torch.no_grad():
        expected = model(slow, fast).numpy()

    def run(s: torch.Tensor, f: torch.Tensor) -> np.ndarray:
        return session.run([SLOWFAST_OUTPUT], {"slow": s.numpy(), "fast": f.numpy()})[0]

    singles = np.concatenate([run(slow[i : i + 1], fast[i : i + 1]) for i in range(cases)])
    batch = run(slow, fast)
    scale = float(np.abs(expected).max())
    diffs = {"single": float(np.abs(singles - expected).max()), "batch": float(np.abs(batch - expected).max())}
    failures = [f"slowfast {name} run differs from torch by {d:.3g} > {atol:g}" for name, d in diffs.items() if d > atol]
    return {"passed": not failures, "failures": failures, "atol": atol, "cases": cases, "output_abs_max": scale,
            "max_abs_diff": max(diffs.values()), "reference": "model_export.slowfast (torch)", **diffs}
