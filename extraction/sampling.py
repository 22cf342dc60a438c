"""Frame sampling and normalisation of the official extractor, in numpy (no torch).

SlowFast (HERO ``slowfast/extract_feature/preprocessing.py`` ``Preprocessing.__call__`` and
``video_loader.py`` ``pack_pathway_output``), for frames decoded at ``decode_fps``:

1. ``_pad_frames``: pad the frame count to a multiple of ``decode_fps`` by repeating the last frame;
2. ``_pad_clips``: pad the seconds to a multiple of the clip length's numerator by repeating the last
   second (``decode_fps`` frames);
3. cut into clips of ``clip_length_s * decode_fps`` frames; keep ``ceil(duration / clip_length_s)``;
4. in every clip take ``num_frames`` frames at
   ``long(clamp(linspace(0, num_frames*sampling_rate*fps/decode_fps - 1, num_frames), 0, clip_frames-1))``
   where ``fps = floor(avg_frame_rate)`` of the *source* (``get_start_end_idx`` + ``temporal_sampling``;
   the window does not depend on the decoded rate: a quirk kept as is);
5. the slow pathway takes the fast frames at ``long(linspace(0, num_frames-1, num_frames // alpha))``.

:class:`ClipAssembler` does 1-4 on a stream of frames, holding at most one second plus one clip.
"""

from __future__ import annotations

import math
from collections import deque
from fractions import Fraction

import numpy as np

from trdetr_common.video_encoders import ImageNormalization


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """float32 values of ``torch.linspace(start, end, steps)`` on the CPU.

    torch computes ``step = (end - start) / (steps - 1)`` in float32, then ``start + step * i`` for the
    first half and ``end - step * (steps - 1 - i)`` for the second (tests compare with torch).
    """
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], dtype=np.float32)
    step = np.float32((end32 - start32) / np.float32(steps - 1))
    index = np.arange(steps)
    low = start32 + step * index.astype(np.float32)
    high = end32 - step * (steps - 1 - index).astype(np.float32)
    return np.where(index < steps // 2, low, high).astype(np.float32)


def fast_frame_indices(clip_frames: int, num_frames: int, sampling_rate: int, source_fps: int, decode_fps: int) -> np.ndarray:
    """Indices (num_frames,) of the frames of one clip the fast pathway sees (step 4 above)."""
    window = num_frames * sampling_rate * source_fps / decode_fps
    start = max(clip_frames - window, 0) * 0 / 1  # get_start_end_idx(clip_idx=0, num_clips=1)
    values = torch_linspace_f32(start, start + window - 1, num_frames)
    return np.clip(values, 0, clip_frames - 1).astype(np.int64)


def slow_frame_indices(num_frames: int, alpha: int) -> np.ndarray:
    """Indices into the fast frames that form the slow pathway (step 5 above)."""
    return torch_linspace_f32(0, num_frames - 1, num_frames // alpha).astype(np.int64)


def clip_count(duration_s: float, clip_length_s: float) -> int:
    """Clips the official extractor keeps for a video of ``duration_s`` seconds: ceil(duration / clip length)."""
    return int(math.ceil(duration_s / clip_length_s))


def clip_seconds_multiple(clip_length_s: float) -> int:
    """The official ``_pad_clips`` pads seconds to a multiple of the clip length's numerator (2 for '2', 3 for '3/2')."""
    return Fraction(clip_length_s).limit_denominator(1000).numerator


def normalization_table(norm: ImageNormalization) -> np.ndarray:
    """(256, 3) float32: the normalised value of every uint8 level per channel, computed as the official code does.

    ``(float32(v) / 255 - mean[c]) / (std[c] + 1e-8)`` in float32 (HERO ``Normalize``).
    """
    levels = np.arange(256, dtype=np.float32)[:, None]
    mean = np.asarray(norm.mean, dtype=np.float32)
    std = np.asarray(norm.std, dtype=np.float32) + np.float32(norm.std_epsilon)
    return ((levels / np.float32(1 / norm.scale) - mean) / std).astype(np.float32)


def normalize_frames(frames: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (3, ..., H, W) float32 through ``normalization_table``: channels first."""
    out = np.empty((3, *frames.shape[:-1]), dtype=np.float32)
    for channel in range(3):
        np.take(table[:, channel], frames[..., channel], out=out[channel])
    return out


class ClipAssembler:
    """Stream of decoded frames -> the sampled (num_frames, H, W, 3) uint8 frames of each clip.

    ``add`` returns the clips a frame completes, ``finish`` the padded last ones (steps 1-4 above).
    Never holds more than one clip's sampled frames plus the last second of frames.
    """

    def __init__(self, *, clip_frames: int, decode_fps: int, seconds_multiple: int, indices: np.ndarray, max_clips: int | None) -> None:
        self.clip_frames, self.decode_fps, self.seconds_multiple = clip_frames, decode_fps, seconds_multiple
        self.max_clips = max_clips
        self.positions: dict[int, list[int]] = {}
        for slot, position in enumerate(indices.tolist()):
            self.positions.setdefault(position, []).append(slot)
        self.num_samples = len(indices)
        self.frames_seen = 0
        self.clips_done = 0
        self.last_second: deque[np.ndarray] = deque(maxlen=decode_fps)
        self._slots: list[np.ndarray | None] = [None] * self.num_samples

    @property
    def full(self) -> bool:
        return self.max_clips is not None and self.clips_done >= self.max_clips

    def add(self, frame: np.ndarray) -> list[np.ndarray]:
        """Take the next frame; returns the clips it completes (0 or 1)."""
        self.last_second.append(frame)
        return self._place(frame)

    def _place(self, frame: np.ndarray) -> list[np.ndarray]:
        if self.full:
            return []
        position = self.frames_seen % self.clip_frames
        self.frames_seen += 1
        for slot in self.positions.get(position, ()):
            self._slots[slot] = frame
        if position < self.clip_frames - 1:
            return []
        clip = np.stack(self._slots)  # type: ignore[arg-type]
        self._slots = [None] * self.num_samples
        self.clips_done += 1
        return [clip]

    def finish(self) -> list[np.ndarray]:
        """Pad as the official code does (last frame, then last second) and return the remaining clips."""
        if self.frames_seen == 0 or self.full:
            return []
        clips = []
        while self.frames_seen % self.decode_fps:  # _pad_frames: repeat the last frame
            clips += self.add(self.last_second[-1])
        second = list(self.last_second)
        seconds = self.frames_seen // self.decode_fps
        padded_seconds = -(-seconds // self.seconds_multiple) * self.seconds_multiple
        for _ in range(padded_seconds - seconds):  # _pad_clips: repeat the last second
            for frame in second:
                clips += self._place(frame)
        return clips
