"""The one exception type of the extraction pipeline: a machine-readable code plus a message that says what to fix."""

from __future__ import annotations

from typing import Any

CODES = {
    "not_a_video": "the file is not a media file FFmpeg can open",
    "no_video_stream": "the file has no video stream (audio only, subtitles, a still cover image)",
    "unsupported_codec": "the video codec has no decoder in this build",
    "corrupt_video": "the video is truncated or cannot be decoded",
    "empty_video": "the video has zero length or no decodable frame",
    "video_too_long": "the video is longer than the allowed maximum",
    "encoder_missing": "the bundle has no encoder for some video feature group",
    "no_audio_stream": "the model needs audio but the file has none (bundles whose audio encoder refuses silence)",
}


class ExtractionError(Exception):
    """A video that cannot be turned into features, or a bundle that cannot extract them.

    Attributes:
        code: one of :data:`CODES`'s keys (stable, for API error codes).
        message: a human sentence saying what is wrong and what to do.
        details: JSON-serialisable facts (durations, group names, the path's name...).
    """

    def __init__(self, code: str, message: str, **details: Any) -> None:
        if code not in CODES:
            raise ValueError(f"unknown extraction error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def __repr__(self) -> str:
        return f"ExtractionError({self.code!r}, {self.message!r})"
