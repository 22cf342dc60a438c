"""Attach exported video encoders to the manifest's feature groups, and re-check them in a bundle.

Each encoder kind computes one group, found by its conventional name and width: ``clip_image`` ->
group ``clip`` (512), ``slowfast`` -> group ``slowfast`` (2304). Models whose groups have other names
get them with ``--video-groups`` (e.g. ``slowfast:2304,clip:512``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from trdetr_common.manifest import Manifest
from trdetr_common.video_encoders import ClipImageEncoderSpec, SlowFastEncoderSpec

from .layouts import LayoutError, VideoLayout

GROUP_OF_KIND = {"clip_image": "clip", "slowfast": "slowfast"}


def attach_encoders(layout: VideoLayout, encoders: Sequence[ClipImageEncoderSpec | SlowFastEncoderSpec]) -> VideoLayout:
    """The layout with each encoder set on its group; raises LayoutError when no group fits one."""
    groups = list(layout.groups)
    for spec in encoders:
        name = GROUP_OF_KIND[spec.kind]
        index = next((i for i, g in enumerate(groups) if g.name == name), None)
        if index is None:
            raise LayoutError(
                f"the {spec.kind} encoder computes the video group {name!r}, but the model's groups are "
                f"{[(g.name, g.dim) for g in groups]}: name the groups with --video-groups (e.g. slowfast:2304,clip:512)"
            )
        if groups[index].dim != spec.dim:
            raise LayoutError(
                f"the {spec.kind} encoder outputs {spec.dim} values per clip but the model's group {name!r} has "
                f"{groups[index].dim}: export the encoder the model was trained with"
            )
        groups[index] = groups[index].model_copy(update={"encoder": spec})
    return dataclasses.replace(layout, groups=groups)


def _dummy_feeds(spec: ClipImageEncoderSpec | SlowFastEncoderSpec) -> dict[str, np.ndarray]:
    """One all-zero input of the spec's shapes (the mean image after normalisation is close to it)."""
    if isinstance(spec, ClipImageEncoderSpec):
        return {spec.input_name: np.zeros((1, 3, spec.image_size, spec.image_size), np.float32)}
    size, frames = spec.crop_size, spec.num_frames
    return {
        spec.input_names[0]: np.zeros((1, 3, frames // spec.alpha, size, size), np.float32),
        spec.input_names[1]: np.zeros((1, 3, frames, size, size), np.float32),
    }


def check_video_encoders_run(bundle_dir: Path, manifest: Manifest) -> dict[str, dict]:
    """Run each bundled video encoder once on a dummy input: output shape (1, dim) and finite values."""
    results = {}
    for group in manifest.preprocessing.video_groups:
        if group.encoder is None:
            continue
        spec = group.encoder
        session = ort.InferenceSession(str(Path(bundle_dir) / spec.onnx_file), providers=["CPUExecutionProvider"])
        out = session.run(None, _dummy_feeds(spec))[0]
        failures = []
        if out.shape != (1, group.dim):
            failures.append(f"{spec.onnx_file} output shape {out.shape} is not (1, {group.dim})")
        if not np.isfinite(out).all():
            failures.append(f"{spec.onnx_file} output has NaN or infinite values")
        results[group.name] = {"passed": not failures, "failures": failures, "max_abs_diff": None,
                               "reference": "shape and finiteness only (no checkpoint given)"}
    return results
