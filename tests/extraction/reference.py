"""The official extraction recomputed the official way, for comparison: whole-video tensors in torch.

Frames come from the ``ffmpeg`` command line (as the official loaders read them), the sampling is
HERO's ``Preprocessing`` / ``pack_pathway_output`` written in torch over the whole video, and the
bundle's ONNX encoders run one sample at a time. ``extraction`` must give the same features.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from video_helpers import ffmpeg_frames

from extraction.frames import center_crop_chain
from extraction.probe import probe_video
from trdetr_common.manifest import Manifest


def _normalise(frames: torch.Tensor, mean, std) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> float32 (x / 255 - mean) / (std + 1e-8), same layout."""
    x = frames.float() / 255.0
    return (x - torch.tensor(mean)) / (torch.tensor(std) + 1e-8)


def clip_features(path: Path, bundle: Path) -> np.ndarray:
    manifest = Manifest.load(bundle)
    group = next(g for g in manifest.preprocessing.video_groups if g.name == "clip")
    spec, clip_len = group.encoder, manifest.preprocessing.clip_length_s
    probe = probe_video(path)
    fps = 1 / clip_len
    if 0 < probe.duration_s < 1 / fps + 0.1:
        fps = 2 / max(int(probe.duration_s), 1)
    chain = center_crop_chain(probe.width, probe.height, spec.image_size, str(fps))
    frames = torch.from_numpy(ffmpeg_frames(path, chain.vf(), chain.size).copy())
    pixels = _normalise(frames, spec.normalization.mean, spec.normalization.std).permute(0, 3, 1, 2).numpy()
    session = ort.InferenceSession(str(bundle / spec.onnx_file), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {spec.input_name: pixels[i : i + 1]})[0] for i in range(len(pixels))])


def slowfast_features(path: Path, bundle: Path) -> np.ndarray:
    manifest = Manifest.load(bundle)
    group = next(g for g in manifest.preprocessing.video_groups if g.name == "slowfast")
    spec, clip_len = group.encoder, int(manifest.preprocessing.clip_length_s)
    probe = probe_video(path)
    target = spec.decode_fps
    chain = center_crop_chain(probe.width, probe.height, spec.crop_size, str(target))
    video = torch.from_numpy(ffmpeg_frames(path, chain.vf(), chain.size).copy())
    pad = target - len(video) % target  # _pad_frames
    if pad != target:
        video = torch.cat([video, video[-1:].repeat(pad, 1, 1, 1)])
    seconds = video.view(-1, target, *video.shape[1:])
    pad = clip_len - len(seconds) % clip_len  # _pad_clips
    if pad != clip_len:
        seconds = torch.cat([seconds, seconds[-1:].repeat(pad, 1, 1, 1, 1)])
    clips = seconds.view(-1, clip_len * target, *video.shape[1:])[: int(math.ceil(probe.duration_s / clip_len))]
    window = spec.num_frames * spec.sampling_rate * math.floor(probe.avg_fps) / target
    index = torch.clamp(torch.linspace(0, window - 1, spec.num_frames), 0, clips.shape[1] - 1).long()
    clips = torch.index_select(clips, 1, index)
    session = ort.InferenceSession(str(bundle / spec.onnx_file), providers=["CPUExecutionProvider"])
    rows = []
    for clip in clips:
        fast = _normalise(clip, spec.normalization.mean, spec.normalization.std).permute(3, 0, 1, 2)[None]  # (1, 3, T, H, W)
        slow = torch.index_select(fast, 2, torch.linspace(0, fast.shape[2] - 1, fast.shape[2] // spec.alpha).long())
        rows.append(session.run(None, {spec.input_names[0]: slow.numpy(), spec.input_names[1]: fast.numpy()})[0])
    return np.concatenate(rows)


def official_features(path: Path, bundle: Path) -> dict[str, np.ndarray]:
    """Both groups, cut to the shorter one (the official dataset's rule)."""
    groups = {"slowfast": slowfast_features(path, bundle), "clip": clip_features(path, bundle)}
    length = min(len(a) for a in groups.values())
    return {name: array[:length] for name, array in groups.items()}
