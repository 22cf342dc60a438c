"""Real video files for the extraction tests, written with PyAV, and the reference ffmpeg CLI decoder.

Content: a colour gradient, a moving block and a changing blue level, so every frame differs from
its neighbours (a wrong frame index changes the features). ``ffmpeg_frames`` runs the ``ffmpeg``
binary of ``imageio-ffmpeg`` (test-only) on the same filter chain, the way the official extractor
calls it: ``ffmpeg -i VIDEO -vf CHAIN -f rawvideo -pix_fmt rgb24 pipe:``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = REPO_ROOT / "service" / "default_bundle"


def frame_image(i: int, width: int, height: int) -> np.ndarray:
    """Frame ``i`` of the synthetic clip: (height, width, 3) uint8."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = xx * 255 // max(width - 1, 1)
    image[..., 1] = yy * 255 // max(height - 1, 1)
    image[..., 2] = (i * 9) % 256
    size = max(4, min(width, height) // 5)
    x0 = (i * 7) % max(width - size, 1)
    y0 = (i * 3) % max(height - size, 1)
    image[y0 : y0 + size, x0 : x0 + size] = (255, (i * 31) % 256, 40)
    return image


def write_video(
    path: Path,
    *,
    seconds: float = 3.0,
    fps: int = 25,
    width: int = 320,
    height: int = 240,
    codec: str = "libx264",
    times_s: Sequence[float] | None = None,
    rotation: int = 0,
    audio: bool = False,
) -> Path:
    """Encode a synthetic video; ``times_s`` gives each frame's timestamp (variable frame rate)."""
    times = list(times_s) if times_s is not None else [i / fps for i in range(round(seconds * fps))]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if times_s is not None:  # variable frame rate: millisecond timestamps
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if codec == "libx264":
            stream.options = {"preset": "ultrafast"}
        if rotation:
            stream.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=16000) if audio else None
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")
            if times_s is not None:
                frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            else:
                frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if sound is not None:
            _write_tone(out, sound, times[-1] if times else seconds)
    return path


def _write_tone(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    samples = np.sin(np.arange(int(seconds * 16000)) * 2 * np.pi * 440 / 16000).astype(np.float32)
    for start in range(0, len(samples), 1024):
        chunk = samples[start : start + 1024]
        frame = av.AudioFrame.from_ndarray(chunk[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = 16000, start
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def write_audio_only(path: Path, seconds: float = 2.0) -> Path:
    with av.open(str(path), "w") as out:
        _write_tone(out, out.add_stream("aac", rate=16000), seconds)
    return path


def ffmpeg_frames(path: Path, vf: str, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W, 3) uint8 frames of the ffmpeg command line (with its default autorotate) for ``-vf vf``."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-vf", vf,
               "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"]
    result = subprocess.run(command, capture_output=True, check=True, timeout=120)
    return np.frombuffer(result.stdout, np.uint8).reshape(-1, size[0], size[1], 3)
