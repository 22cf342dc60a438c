"""FFmpeg filter chains that turn a decoded video into the frames an encoder samples.

Every encoder of the official extractor reads frames from ``ffmpeg -i VIDEO -vf fps=R,scale=W:H,crop=S:S:X:Y
-pix_fmt rgb24`` (HERO ``*/video_loader.py``). :class:`FrameChain` holds one such chain;
:func:`center_crop_chain` computes W, H, X, Y with the official rule. The same chain string runs in
PyAV's filter graph (``extraction.decode``) and, in the tests, in the ``ffmpeg`` command line, and
the two give byte-identical frames.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameChain:
    """``fps`` -> ``scale`` -> ``crop`` (after the rotation filters), rgb24 output.

    Attributes:
        fps: the fps filter's rate, as the official code writes it (e.g. "30", "0.5").
        scale: (width, height) given to the scale filter (FFmpeg's default bicubic swscale).
        crop: (width, height, x, y) of the crop filter.
    """

    fps: str
    scale: tuple[int, int]
    crop: tuple[int, int, int, int]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the output frames."""
        return self.crop[1], self.crop[0]

    def filters(self) -> list[tuple[str, str]]:
        """(filter name, arguments) in order, for ``av.filter.Graph.add``."""
        w, h = self.scale
        cw, ch, x, y = self.crop
        return [("fps", f"fps={self.fps}"), ("scale", f"{w}:{h}"), ("crop", f"{cw}:{ch}:{x}:{y}")]

    def vf(self) -> str:
        """The same chain as an ``ffmpeg -vf`` argument."""
        return ",".join(f"{name}={args}" for name, args in self.filters())


def short_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the short side resized to ``size``, the long one truncated.

    HERO ``video_loader.py`` ``_get_output_dim(h, w)``: ``h >= w`` -> ``(int(h * size / w), size)`` as
    (height, width), else ``(size, int(w * size / h))``.
    """
    if height >= width:
        return size, int(height * size / width)
    return int(width * size / height), size


def center_crop_chain(width: int, height: int, size: int, fps: str) -> FrameChain:
    """Official chain for a ``width`` x ``height`` (displayed) video: fps, short side -> size, centre crop."""
    out_w, out_h = short_side_size(width, height, size)
    x, y = int((out_w - size) / 2.0), int((out_h - size) / 2.0)
    return FrameChain(fps=fps, scale=(out_w, out_h), crop=(size, size, x, y))


def rotation_filters(rotation_deg: int) -> list[tuple[str, str | None]]:
    """The filters the ffmpeg CLI's autorotate inserts first for a clockwise display rotation."""
    return {
        0: [],
        90: [("transpose", "clock")],
        180: [("hflip", None), ("vflip", None)],
        270: [("transpose", "cclock")],
    }[rotation_deg]


def fps_arg(rate: float) -> str:
    """How the official code passes a float rate to the fps filter: Python's ``str(float)``."""
    return str(float(rate))
