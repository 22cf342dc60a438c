"""The numpy sampling equals the official extractor's torch computations, step for step.

The references below are written in torch from the official algorithm (HERO
``slowfast/extract_feature/preprocessing.py`` ``Preprocessing.__call__``, ``get_start_end_idx``,
``temporal_sampling`` and ``video_loader.py`` ``pack_pathway_output``): whole-video tensors, padded and
viewed as clips, exactly as the official code does it; ``extraction`` streams instead.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from extraction.sampling import (
    ClipAssembler,
    clip_count,
    clip_seconds_multiple,
    fast_frame_indices,
    normalization_table,
    normalize_frames,
    slow_frame_indices,
    torch_linspace_f32,
)
from trdetr_common.video_encoders import CLIP_MEAN, CLIP_STD, ImageNormalization


def official_clips(num_frames_decoded: int, duration: float, clip_len: int, source_fps: int, target_fps: int = 30,
                   num_frames: int = 32, sampling_rate: int = 2) -> torch.Tensor:
    """Frame ids (clips, num_frames) the official SlowFast preprocessing feeds the fast pathway."""
    video = torch.arange(num_frames_decoded)[:, None]  # frame i carries its id
    pad = target_fps - len(video) % target_fps  # _pad_frames (tile)
    if pad != target_fps:
        video = torch.cat([video, video[-1:].repeat(pad, 1)])
    seconds = video.view(-1, target_fps, 1)
    pad = clip_len - len(seconds) % clip_len  # _pad_clips (tile the last second)
    if pad != clip_len:
        seconds = torch.cat([seconds, seconds[-1:].repeat(pad, 1, 1)])
    clips = seconds.view(-1, clip_len * target_fps)
    clips = clips[: int(math.ceil(duration / clip_len))]
    window = num_frames * sampling_rate * source_fps / target_fps  # get_start_end_idx(clip_idx=0, num_clips=1)
    start = max(clips.shape[1] - window, 0) * 0 / 1
    index = torch.clamp(torch.linspace(start, start + window - 1, num_frames), 0, clips.shape[1] - 1).long()
    return torch.index_select(clips, 1, index)


def test_linspace_equals_torch_up_to_its_simd_rounding_and_exactly_once_truncated():
    """torch's vectorised kernel may differ in the last bit (it depends on the CPU's SIMD width); the
    sampled frame indices, which are what the official code uses, are equal for every frame rate."""
    for fps in range(0, 241):
        window = 32 * 2 * fps / 30
        for steps in (32, 8, 16):
            expected = torch.linspace(0, window - 1, steps)
            ours = torch_linspace_f32(0, window - 1, steps)
            np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-6, atol=1e-6, err_msg=f"fps {fps}")
            np.testing.assert_array_equal(ours.astype(np.int64), expected.long().numpy(), err_msg=f"fps {fps}")
    for start, end, steps in [(0, 31, 8), (0, 15, 4), (0, 1, 1), (0, 63, 32)]:
        np.testing.assert_array_equal(torch_linspace_f32(start, end, steps).astype(np.int64),
                                      torch.linspace(start, end, steps).long().numpy())


@pytest.mark.parametrize("clip_frames", [60, 30, 45])
def test_fast_frame_indices_equal_the_official_temporal_sampling(clip_frames):
    for fps in range(1, 121):
        window = 32 * 2 * fps / 30
        expected = torch.clamp(torch.linspace(0, window - 1, 32), 0, clip_frames - 1).long().numpy()
        np.testing.assert_array_equal(fast_frame_indices(clip_frames, 32, 2, fps, 30), expected, err_msg=f"fps {fps}")


def test_slow_pathway_takes_8_of_the_32_fast_frames():
    assert slow_frame_indices(32, 4).tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert slow_frame_indices(32, 4).tolist() == torch.linspace(0, 31, 8).long().tolist()


@pytest.mark.parametrize(("frames", "duration", "source_fps"), [
    (1110, 37.0, 25),   # 37 s: 19 clips, the last one half padding
    (1080, 36.0, 30),   # exact multiple: no padding
    (31, 1.0, 25),      # 1 s: one clip from one second + the tiled last second
    (59, 1.95, 30),     # just under one clip
    (95, 3.2, 24),      # ceil(3.2 / 2) = 2 clips
    (130, 4.2, 30),     # 5 seconds of frames, 3 clips kept
    (200, 4.0, 60),     # duration shorter than the frames: ceil trims
])
def test_streamed_clips_equal_the_official_padded_clips(frames, duration, source_fps):
    expected = official_clips(frames, duration, 2, source_fps)
    assembler = ClipAssembler(clip_frames=60, decode_fps=30, seconds_multiple=2,
                              indices=fast_frame_indices(60, 32, 2, source_fps, 30), max_clips=clip_count(duration, 2.0))
    clips = []
    for i in range(frames):
        clips += assembler.add(np.array([i]))
    clips += assembler.finish()
    got = np.stack([clip[:, 0] for clip in clips])
    np.testing.assert_array_equal(got, expected.numpy())


def test_clip_counts_follow_the_official_rule():
    assert clip_count(37.0, 2.0) == 19 and clip_count(36.0, 2.0) == 18 and clip_count(1.0, 2.0) == 1
    assert clip_seconds_multiple(2.0) == 2 and clip_seconds_multiple(1.5) == 3 and clip_seconds_multiple(1.0) == 1


def test_normalization_table_equals_the_official_float32_formula():
    norm = ImageNormalization(mean=CLIP_MEAN, std=CLIP_STD)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    tensor = torch.from_numpy(pixels).float().permute(3, 0, 1, 2) / 255.0
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1, 1)
    expected = ((tensor - mean) / (std + 1e-8)).numpy()
    got = normalize_frames(pixels, normalization_table(norm))
    assert got.shape == (3, 2, 5, 7)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
