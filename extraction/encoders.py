"""Per-group encoders: which frames each needs, how it samples them, and its batched ONNX Runtime run.

One class per encoder *kind* of ``trdetr_common.video_encoders`` (the registry :data:`GROUP_RUNS`):
``chain(...)`` says which FFmpeg frames the kind reads, and a run object, created per video, takes
those frames one by one (``add``) and returns the group's features (``finish``: (T, dim) float32,
un-normalised encoder outputs). A new kind (e.g. audio) adds a class here and a spec there.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from service.inference.session import OnnxModel
from trdetr_common.video_encoders import ClipImageEncoderSpec, SlowFastEncoderSpec

from .frames import FrameChain, center_crop_chain, fps_arg
from .probe import VideoProbe
from .sampling import (
    ClipAssembler,
    clip_count,
    clip_seconds_multiple,
    fast_frame_indices,
    normalization_table,
    normalize_frames,
    slow_frame_indices,
)

Device = Literal["auto", "cpu", "cuda"]


class BatchedEncoder:
    """An ONNX encoder fed in batches: ``add`` one sample's inputs, outputs collected in order.

    Inputs are kept until ``batch_size`` samples are waiting, so memory is bounded by one batch.
    """

    def __init__(self, model: OnnxModel, input_names: Sequence[str], output_name: str, batch_size: int) -> None:
        self.model, self.input_names, self.output_name = model, list(input_names), output_name
        self.batch_size = max(1, batch_size)
        self.pending: list[tuple[np.ndarray, ...]] = []
        self.outputs: list[np.ndarray] = []
        self.seconds = 0.0

    def add(self, *inputs: np.ndarray) -> None:
        self.pending.append(inputs)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        feeds = {name: np.stack([sample[i] for sample in self.pending]) for i, name in enumerate(self.input_names)}
        self.pending = []
        started = time.perf_counter()
        self.outputs.append(self.model.run(feeds)[self.output_name].astype(np.float32, copy=False))
        self.seconds += time.perf_counter() - started

    def result(self, dim: int) -> np.ndarray:
        """All outputs so far, (N, dim) float32, after running what is still pending."""
        self.flush()
        return np.concatenate(self.outputs) if self.outputs else np.zeros((0, dim), np.float32)


class GroupRun(ABC):
    """One video's pass through one group's encoder."""

    chain: FrameChain
    encoder: BatchedEncoder

    @abstractmethod
    def add(self, frame: np.ndarray) -> None:
        """Take the next (H, W, 3) uint8 frame of this group's chain."""

    @abstractmethod
    def finish(self) -> np.ndarray:
        """The group's features (T, dim) float32."""


class GroupEncoder(ABC):
    """A bundled encoder of one kind; ``start`` begins a run over one video."""

    def __init__(self, bundle_dir: Path, spec, *, device: Device, intra_op_threads: int, batch_size: int) -> None:
        self.spec = spec
        self.model = OnnxModel(Path(bundle_dir) / spec.onnx_file, device=device, intra_op_threads=intra_op_threads)
        self.batch_size = batch_size

    @property
    def providers(self) -> list[str]:
        return self.model.providers

    @abstractmethod
    def chain(self, probe: VideoProbe, clip_length_s: float) -> FrameChain:
        """The FFmpeg frames this encoder reads from ``probe``'s video."""

    @abstractmethod
    def start(self, probe: VideoProbe, clip_length_s: float) -> GroupRun:
        """A run over one video."""


class ClipImageEncoder(GroupEncoder):
    """CLIP image tower: one frame per clip (HERO ``clip/``)."""

    spec: ClipImageEncoderSpec

    def chain(self, probe: VideoProbe, clip_length_s: float) -> FrameChain:
        """fps = 1/clip_length_s, or 2/max(int(duration), 1) for videos shorter than clip_length_s + 0.1 s.

        HERO ``clip/video_loader.py`` ``__getitem__``: ``if duration > 0 and duration < 1/fps + 0.1:
        fps = 2/max(int(duration), 1)``.
        """
        rate = 1 / clip_length_s
        if 0 < probe.duration_s < clip_length_s + self.spec.short_video_margin_s:
            rate = 2 / max(int(probe.duration_s), 1)
        return center_crop_chain(probe.width, probe.height, self.spec.image_size, fps_arg(rate))

    def start(self, probe: VideoProbe, clip_length_s: float) -> GroupRun:
        return _ClipImageRun(self, self.chain(probe, clip_length_s))


class _ClipImageRun(GroupRun):
    def __init__(self, owner: ClipImageEncoder, chain: FrameChain) -> None:
        self.chain, self.dim = chain, owner.spec.dim
        self.table = normalization_table(owner.spec.normalization)
        self.encoder = BatchedEncoder(owner.model, [owner.spec.input_name], owner.spec.output_name, owner.batch_size)

    def add(self, frame: np.ndarray) -> None:
        self.encoder.add(normalize_frames(frame, self.table))

    def finish(self) -> np.ndarray:
        return self.encoder.result(self.dim)


class SlowFastEncoder(GroupEncoder):
    """SlowFast 8x8: 30 fps frames, cut into clips, 32 + 8 sampled frames per clip (HERO ``slowfast/``)."""

    spec: SlowFastEncoderSpec

    def chain(self, probe: VideoProbe, clip_length_s: float) -> FrameChain:
        return center_crop_chain(probe.width, probe.height, self.spec.crop_size, str(self.spec.decode_fps))

    def start(self, probe: VideoProbe, clip_length_s: float) -> GroupRun:
        return _SlowFastRun(self, self.chain(probe, clip_length_s), probe, clip_length_s)


def source_fps(probe: VideoProbe, decode_fps: int) -> int:
    """floor(avg_frame_rate) as the official sampler uses it; FFmpeg's guessed rate, then decode_fps, when unknown."""
    for rate in (probe.avg_fps, probe.guessed_fps):
        if rate:
            return int(np.floor(rate))
    return decode_fps


class _SlowFastRun(GroupRun):
    def __init__(self, owner: SlowFastEncoder, chain: FrameChain, probe: VideoProbe, clip_length_s: float) -> None:
        spec = owner.spec
        self.chain, self.dim = chain, spec.dim
        clip_frames = round(clip_length_s * spec.decode_fps)
        if abs(clip_frames - clip_length_s * spec.decode_fps) > 1e-6:
            raise ValueError(f"clip length {clip_length_s} s is not a whole number of frames at {spec.decode_fps} fps")
        indices = fast_frame_indices(clip_frames, spec.num_frames, spec.sampling_rate,
                                     source_fps(probe, spec.decode_fps), spec.decode_fps)
        self.assembler = ClipAssembler(
            clip_frames=clip_frames, decode_fps=spec.decode_fps, seconds_multiple=clip_seconds_multiple(clip_length_s),
            indices=indices, max_clips=clip_count(probe.duration_s, clip_length_s),
        )
        self.slow = slow_frame_indices(spec.num_frames, spec.alpha)
        self.table = normalization_table(spec.normalization)
        self.encoder = BatchedEncoder(owner.model, spec.input_names, spec.output_name, owner.batch_size)

    def _encode(self, clips: list[np.ndarray]) -> None:
        for clip in clips:
            fast = normalize_frames(clip, self.table)  # (3, T, H, W)
            self.encoder.add(np.ascontiguousarray(fast[:, self.slow]), fast)

    def add(self, frame: np.ndarray) -> None:
        self._encode(self.assembler.add(frame))

    def finish(self) -> np.ndarray:
        self._encode(self.assembler.finish())
        return self.encoder.result(self.dim)


GROUP_RUNS: dict[str, type[GroupEncoder]] = {"clip_image": ClipImageEncoder, "slowfast": SlowFastEncoder}
