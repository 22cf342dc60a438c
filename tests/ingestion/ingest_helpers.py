"""Helpers of the ingestion tests: real video files written with PyAV, processes, polling."""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = REPO / "service" / "default_bundle"
BIN = Path(sys.executable).parent


def write_video(path: Path, seconds: float, *, fps: int = 10, size: tuple[int, int] = (64, 48),
                codec: str = "mpeg4", rotation: int | None = None, vfr: bool = False, audio: bool = False) -> Path:
    """A real video file: moving colour blocks, ``seconds`` long (vfr: frame gaps of 40-160 ms)."""
    width, height = size
    rng = np.random.default_rng(int(seconds * 1000) + width)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if vfr:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        audio_stream = container.add_stream("aac", rate=16000) if audio else None
        t, index = 0.0, 0
        while t < seconds - 1e-9:
            image = np.zeros((height, width, 3), np.uint8)
            x = int((t / max(seconds, 1e-3)) * (width - 16))
            image[8:24, x:x + 16] = rng.integers(0, 255, 3, dtype=np.uint8)
            image[height // 2:, :, index % 3] = 200
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if vfr:
                frame.pts = int(t * 1000)
                frame.time_base = Fraction(1, 1000)
                t += rng.choice([0.04, 0.08, 0.16])
            else:
                frame.pts = index
                t += 1 / fps
            index += 1
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if audio_stream is not None:
            _write_tone(container, audio_stream, seconds)
    if rotation is not None:
        set_mp4_rotation(path, rotation)
    return path


_ROTATIONS = {90: (0, 1, -1, 0), 180: (-1, 0, 0, -1), 270: (0, -1, 1, 0)}


def set_mp4_rotation(path: Path, degrees: int) -> None:
    """Make an MP4 a "phone video" shown rotated: write the track header's display matrix (ISO 14496-12
    ``tkhd``), which is where FFmpeg reads the rotation from (FFmpeg's muxer drops a ``rotate`` tag)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    assert at > 0 and data[at + 4] == 0, "expected one version-0 tkhd box"
    a, b, c, d = (v * 65536 for v in _ROTATIONS[degrees])
    matrix = at + 4 + 40  # after version/flags, times, track id, duration, layer, group, volume
    data[matrix:matrix + 36] = struct.pack(">9i", a, b, 0, c, d, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))


def write_unknown_codec(path: Path) -> Path:
    """An AVI whose video stream has a codec tag no FFmpeg decoder knows (``QZQZ`` instead of ``FMP4``)."""
    write_video(path.with_suffix(".tmp.avi"), 1.0)
    source = path.with_suffix(".tmp.avi")
    path.write_bytes(source.read_bytes().replace(b"FMP4", b"QZQZ"))
    source.unlink()
    return path


def write_audio_only(path: Path, seconds: float = 2.0) -> Path:
    """A real media file with an audio stream and no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        _write_tone(container, stream, seconds)
    return path


def _write_tone(container: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    samples = np.sin(np.arange(int(seconds * 16000)) * 0.05).astype(np.float32)[None]
    for start in range(0, samples.shape[1], 1024):
        frame = av.AudioFrame.from_ndarray(samples[:, start:start + 1024].copy(), format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any service configuration, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRDETR_") and k != "REDIS_URL"}
    return {**env, **values}


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.1):  # noqa: ANN001, ANN201
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
