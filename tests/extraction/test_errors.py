"""Files that cannot give features fail with a clear ExtractionError code, before any heavy work."""

from __future__ import annotations

import json
import shutil
import subprocess

import av
import imageio_ffmpeg
import numpy as np
import pytest
from video_helpers import DEFAULT_BUNDLE, write_audio_only, write_video

from extraction import ExtractionError, Extractor, probe_video
from extraction import pipeline as pipeline_module


def _code(call) -> ExtractionError:
    with pytest.raises(ExtractionError) as info:
        call()
    assert info.value.message and str(info.value) == info.value.message
    return info.value


def test_not_a_video_empty_file_and_missing_file(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    assert _code(lambda: probe_video(text)).code == "not_a_video"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert _code(lambda: probe_video(empty)).code == "empty_video"
    assert _code(lambda: probe_video(tmp_path / "missing.mp4")).code == "not_a_video"


def test_audio_only_and_cover_art_files_have_no_video_stream(tmp_path):
    tone = write_audio_only(tmp_path / "tone.m4a")
    assert _code(lambda: probe_video(tone)).code == "no_video_stream"
    with av.open(str(tmp_path / "cover.png"), "w") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 32, 32, "rgb24"
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8))), *stream.encode()]:
            out.mux(packet)
    song = tmp_path / "song.mp3"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(tone), "-i", str(tmp_path / "cover.png"),
                    "-map", "0", "-map", "1", "-c:a", "libmp3lame", "-c:v", "copy", "-disposition:v:0", "attached_pic",
                    str(song)], check=True, timeout=60)
    error = _code(lambda: probe_video(song))
    assert error.code == "no_video_stream" and "cover picture" in error.message


def test_a_truncated_mp4_is_corrupt_not_unknown(tmp_path):
    whole = write_video(tmp_path / "whole.mp4", seconds=4.0, fps=25)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # the index (moov) is at the end
    assert _code(lambda: probe_video(cut)).code == "corrupt_video"


def test_a_video_whose_frames_stop_early_is_corrupt(extractor, tmp_path):
    whole = write_video(tmp_path / "long.mkv", seconds=12.0, fps=25)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 3])  # mkv declares the duration up front
    error = _code(lambda: extractor.extract(cut))
    assert error.code == "corrupt_video" and error.details["decoded_until_s"] < error.details["duration_s"]


def test_too_long_is_refused_before_decoding(extractor, video_37s, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the video is too long")

    monkeypatch.setattr(pipeline_module, "ChainDecoder", no_decoding)
    error = _code(lambda: extractor.extract(video_37s, max_duration_s=30))
    assert error.code == "video_too_long" and error.details == {"duration_s": 37.0, "max_duration_s": 30}


def test_a_bundle_without_an_encoder_names_the_missing_group(tmp_path, video_37s):
    bundle = shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    next(g for g in manifest["preprocessing"]["video_groups"] if g["name"] == "slowfast")["encoder"] = None
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    extractor = Extractor(bundle, device="cpu")
    assert extractor.missing_groups == ["slowfast"]
    error = _code(lambda: extractor.extract(video_37s))
    assert error.code == "encoder_missing" and error.details == {"groups": ["slowfast"]} and "slowfast" in error.message


def test_an_mkv_whose_audio_outlasts_its_video_is_not_called_truncated(extractor, tmp_path):
    """mkv streams declare no duration; the container's covers the longer audio track."""
    video = write_video(tmp_path / "v.mkv", seconds=3.0, fps=25)
    tone = write_audio_only(tmp_path / "t.m4a", seconds=9.0)
    both = tmp_path / "both.mkv"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(video), "-i", str(tone), "-map", "0",
                    "-map", "1", "-c", "copy", str(both)], check=True, timeout=60)
    result = extractor.extract(both)
    assert result.probe.duration_source == "container" and result.probe.duration_s > 8
    assert result.num_clips == 2  # the frames stop at 3 s: CLIP gives 2 frames (0 s, 2 s), SlowFast 2 clips
