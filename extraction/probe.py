"""``probe_video``: cheap facts about a video file (container metadata and the first frame only)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from .errors import ExtractionError

# Leading bytes of container formats that are video files for sure: when FFmpeg cannot open such a
# file it is damaged (truncated mp4 without its index, cut webm...), not "not a video".
_VIDEO_MAGIC = (
    (4, b"ftyp"), (0, b"\x1a\x45\xdf\xa3"), (0, b"RIFF"), (0, b"FLV"), (0, b"OggS"), (0, b"\x00\x00\x01\xba"),
    (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"),
)


@dataclass(frozen=True)
class VideoProbe:
    """What the container says about a video file's first video stream.

    Attributes:
        path: the file.
        duration_s: the video stream's duration (the container's when the stream has none, e.g. mkv/webm).
        duration_source: "stream" or "container".
        width, height: displayed frame size, rotation applied (portrait phone videos have height > width).
        coded_width, coded_height: frame size as stored.
        rotation_deg: clockwise rotation applied for display (0, 90, 180 or 270; the ffmpeg CLI's autorotate).
        codec: decoder name (e.g. "h264").
        avg_fps: the stream's average frame rate (frames / duration), None when unknown.
        guessed_fps: FFmpeg's guess of the base frame rate, None when unknown.
        has_audio: the file has at least one audio stream.
        container: FFmpeg demuxer name.
        stream_index: index of the video stream used.
        start_time_s: the container's start time (subtracted from timestamps, as the ffmpeg CLI does).
    """

    path: Path
    duration_s: float
    duration_source: str
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation_deg: int
    codec: str
    avg_fps: float | None
    guessed_fps: float | None
    has_audio: bool
    container: str
    stream_index: int
    start_time_s: float

    @property
    def avg_fps_floor(self) -> int | None:
        """floor(average frame rate): the official SlowFast sampler's ``fps``."""
        return math.floor(self.avg_fps) if self.avg_fps else None


def _looks_like_video_container(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(16)
    return any(head[offset : offset + len(magic)] == magic for offset, magic in _VIDEO_MAGIC)


def open_container(path: Path) -> av.container.InputContainer:
    """Open a file with FFmpeg, turning failures into ExtractionError (not_a_video / corrupt_video)."""
    path = Path(path)
    if not path.is_file():
        raise ExtractionError("not_a_video", f"{path.name}: no such file", file=path.name)
    if path.stat().st_size == 0:
        raise ExtractionError("empty_video", f"{path.name} is an empty file (0 bytes)", file=path.name)
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as error:
        if _looks_like_video_container(path):
            raise ExtractionError(
                "corrupt_video",
                f"{path.name} looks like a video container but FFmpeg cannot read it ({error}); the file is "
                "probably truncated or damaged: upload it again or re-encode it",
                file=path.name, ffmpeg_error=str(error),
            ) from error
        raise ExtractionError(
            "not_a_video", f"{path.name} is not a video file FFmpeg can open ({error})", file=path.name,
            ffmpeg_error=str(error),
        ) from error


def video_stream(container: av.container.InputContainer, name: str) -> av.video.stream.VideoStream:
    """The first real video stream (cover pictures of audio files do not count)."""
    streams = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not streams:
        kinds = sorted({"cover picture" if s.type == "video" else s.type for s in container.streams}) or ["none"]
        raise ExtractionError(
            "no_video_stream", f"{name} has no video stream (streams: {', '.join(kinds)}); send a video file",
            file=name, streams=kinds,
        )
    stream = streams[0]
    if stream.codec_context is None or stream.codec_context.codec is None:
        raise ExtractionError("unsupported_codec", f"{name}: no decoder for its video codec", file=name)
    return stream


def _rate(value: Fraction | None) -> float | None:
    return float(value) if value else None


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> tuple[float, str]:
    if stream.duration is not None and stream.duration > 0 and stream.time_base:
        return float(stream.duration * stream.time_base), "stream"
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base, "container"
    return 0.0, "none"


def first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> av.VideoFrame | None:
    """Decode frames until the first one comes out; None when none can be decoded."""
    try:
        for packet in container.demux(stream):
            try:
                for frame in packet.decode():
                    return frame
            except av.FFmpegError:
                continue
    except av.FFmpegError:
        return None
    return None


def probe_video(path: Path) -> VideoProbe:
    """Container facts plus the first frame's rotation; raises ExtractionError for unusable files.

    Raises:
        ExtractionError: ``not_a_video``, ``corrupt_video`` (a damaged video container),
            ``no_video_stream``, ``unsupported_codec`` or ``empty_video`` (zero length, no decodable frame).
    """
    path = Path(path)
    with open_container(path) as container:
        stream = video_stream(container, path.name)
        duration, source = _duration(container, stream)
        frame = first_frame(container, stream)
        if frame is None:
            raise ExtractionError(
                "empty_video", f"{path.name}: no frame of its {stream.codec_context.name} video stream can be decoded",
                file=path.name,
            )
        rotation = (-int(round(frame.rotation))) % 360 if frame.rotation else 0
        if rotation not in (0, 90, 180, 270):
            rotation = int(90 * round(rotation / 90)) % 360
        coded_w, coded_h = frame.width, frame.height
        width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)
        if duration <= 0:
            raise ExtractionError("empty_video", f"{path.name}: the video has zero duration", file=path.name)
        start = container.start_time / av.time_base if container.start_time is not None else 0.0
        return VideoProbe(
            path=path, duration_s=duration, duration_source=source, width=width, height=height,
            coded_width=coded_w, coded_height=coded_h, rotation_deg=rotation, codec=stream.codec_context.name,
            avg_fps=_rate(stream.average_rate), guessed_fps=_rate(stream.guessed_rate),
            has_audio=bool(container.streams.audio), container=container.format.name,
            stream_index=stream.index, start_time_s=start,
        )
