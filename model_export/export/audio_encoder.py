"""PANN Cnn14 checkpoint -> ``audio_encoder.onnx``, with its torch-vs-ORT parity gate.

Graph: ``waveform`` (B, clip_samples) float32 mono at 32 kHz -> ``embedding`` (B, 2048): the whole
network including its log-mel front end (STFT as 1-D convolutions, mel matrix, 10*log10), so extraction
only decodes, resamples and cuts audio (numpy + PyAV, no torch). The batch (clips) is dynamic, the clip
length fixed by the bundle's clip_length_s.

The gate runs the exported graph and our torch Cnn14 on random waveforms, one clip at a time and as a
batch (max abs difference <= atol, relative to the output scale). That our Cnn14 equals the reference
implementation (``panns_inference.models.Cnn14``, the code Lighthouse copied) with the same weights is
proven by the test suite (tests/export/test_pann.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from model_export.pann import LoadedPann
from trdetr_common.audio_encoders import PannEncoderSpec
from trdetr_common.video_encoders import EncoderWeights

from .layouts import AudioLayout, LayoutError
from .onnx_export import export_module

AUDIO_ONNX = "audio_encoder.onnx"
AUDIO_INPUT = "waveform"
AUDIO_OUTPUT = "embedding"
AUDIO_DYNAMIC_AXES = {AUDIO_INPUT: {0: "clips"}, AUDIO_OUTPUT: {0: "clips"}}
AUDIO_GROUP = "pann"


def example_waveforms(clips: int, samples: int, *, seed: int = 0) -> torch.Tensor:
    """Random waveforms in [-0.5, 0.5) with a few silent stretches (exercises the 1e-10 floor)."""
    generator = torch.Generator().manual_seed(seed)
    waves = torch.rand(clips, samples, generator=generator) - 0.5
    waves[:, : samples // 8] = 0.0
    return waves


def export_pann(loaded: LoadedPann, out_dir: str | Path, opset: int, clip_length_s: float) -> PannEncoderSpec:
    """Write ``audio_encoder.onnx`` for ``loaded.model``; returns the group's encoder spec (manifest)."""
    model = loaded.model.eval()
    config = model.config
    samples = round(clip_length_s * config.sample_rate)
    if samples <= config.window_size // 2:
        raise ValueError(f"clips of {clip_length_s} s are too short for Cnn14 ({samples} samples)")
    export_module(model, (example_waveforms(2, samples),), Path(out_dir) / AUDIO_ONNX, input_names=[AUDIO_INPUT],
                  output_names=[AUDIO_OUTPUT], dynamic_axes=AUDIO_DYNAMIC_AXES, opset=opset)
    return PannEncoderSpec(
        onnx_file=AUDIO_ONNX, input_name=AUDIO_INPUT, output_name=AUDIO_OUTPUT, dim=config.embedding_dim,
        sample_rate=config.sample_rate, window_size=config.window_size, hop_size=config.hop_size,
        mel_bins=config.mel_bins, fmin=config.fmin, fmax=config.fmax, clip_samples=samples,
        weights=EncoderWeights(file_name=loaded.file_name, sha256=loaded.sha256, format=loaded.format,
                               untrained=loaded.format == "random-init"),
    )


def attach_audio_encoder(layout: AudioLayout | None, spec: PannEncoderSpec) -> AudioLayout:
    """The audio layout with the PANN encoder set on its group ``pann``; LayoutError when none fits."""
    groups = list(layout.groups) if layout else []
    index = next((i for i, g in enumerate(groups) if g.name == AUDIO_GROUP), None)
    if index is None:
        raise LayoutError(
            f"--pann computes the audio group {AUDIO_GROUP!r}, but the model's audio groups are "
            f"{[(g.name, g.dim) for g in groups] or 'none (the checkpoint was trained without audio)'}"
            + ("; name it with --audio-groups pann:DIM" if groups else "")
        )
    if groups[index].dim != spec.dim:
        raise LayoutError(f"the PANN encoder outputs {spec.dim} values per clip but the model's audio group "
                          f"{AUDIO_GROUP!r} has {groups[index].dim}: export the encoder the model was trained with")
    groups[index] = groups[index].model_copy(update={"encoder": spec})
    assert layout is not None
    return dataclasses.replace(layout, groups=groups)


def check_pann(model: torch.nn.Module, bundle_dir: str | Path, samples: int, *, atol: float = 1e-4,
               cases: int = 3) -> dict:
    """ORT ``audio_encoder.onnx`` vs the torch Cnn14 on ``cases`` random clips, singly and as one batch.

    ``atol`` is applied to the difference divided by max(1, output scale): Cnn14 embeddings reach tens.
    """
    session = ort.InferenceSession(str(Path(bundle_dir) / AUDIO_ONNX), providers=["CPUExecutionProvider"])
    waves = example_waveforms(cases, samples, seed=1)
    with torch.no_grad():
        expected = model(waves).numpy()
    singles = np.concatenate([session.run([AUDIO_OUTPUT], {AUDIO_INPUT: waves[i:i + 1].numpy()})[0]
                              for i in range(cases)])
    batch = session.run([AUDIO_OUTPUT], {AUDIO_INPUT: waves.numpy()})[0]
    scale = max(1.0, float(np.abs(expected).max()))
    diffs = {"single": float(np.abs(singles - expected).max()), "batch": float(np.abs(batch - expected).max())}
    failures = [f"audio encoder {name} run differs from torch by {d:.3g} > {atol:g} x {scale:.3g}"
                for name, d in diffs.items() if d > atol * scale]
    return {"passed": not failures, "failures": failures, "atol": atol, "cases": cases, "output_abs_max": scale,
            "max_abs_diff": max(diffs.values()), "reference": "model_export.pann (torch)", **diffs}


def check_audio_encoder_runs(bundle_dir: Path, spec: PannEncoderSpec, dim: int) -> dict:
    """Run the bundled audio encoder once on one silent clip: output shape (1, dim), finite values."""
    session = ort.InferenceSession(str(Path(bundle_dir) / spec.onnx_file), providers=["CPUExecutionProvider"])
    out = session.run([spec.output_name], {spec.input_name: np.zeros((1, spec.clip_samples), np.float32)})[0]
    failures = []
    if out.shape != (1, dim):
        failures.append(f"{spec.onnx_file} output shape {out.shape} is not (1, {dim})")
    if not np.isfinite(out).all():
        failures.append(f"{spec.onnx_file} output has NaN or infinite values")
    return {"passed": not failures, "failures": failures, "max_abs_diff": None,
            "reference": "shape and finiteness only (no checkpoint given)"}
