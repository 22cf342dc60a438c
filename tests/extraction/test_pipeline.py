"""End to end on real files: ``Extractor.extract`` with the default bundle's (untrained) encoders."""

from __future__ import annotations

import io

import numpy as np
import pytest
from reference import official_features
from video_helpers import DEFAULT_BUNDLE, write_video

from extraction import ExtractedVideo, npz_bytes, probe_video


@pytest.mark.slow
def test_a_37s_video_gives_19_clips_per_group_float32_and_its_npz(extractor, video_37s):
    fractions: list[float] = []
    video = extractor.extract(video_37s, progress=fractions.append)
    assert isinstance(video, ExtractedVideo)
    assert video.num_clips == 19 and video.duration_s == 37.0
    assert {name: array.shape for name, array in video.groups.items()} == {"slowfast": (19, 2304), "clip": (19, 512)}
    assert all(array.dtype == np.float32 and np.isfinite(array).all() for array in video.groups.values())
    assert fractions[-1] == 1.0 and fractions == sorted(fractions) and len(fractions) > 10
    # every clip sees different frames, so no two rows are equal
    assert len({row.tobytes() for row in video.groups["clip"]}) == 19
    assert len({row.tobytes() for row in video.groups["slowfast"]}) == 19
    data = npz_bytes(video)
    assert data == npz_bytes(video)  # deterministic bytes
    with np.load(io.BytesIO(data), allow_pickle=False) as loaded:
        assert list(loaded.files) == ["slowfast", "clip"]
        for name, array in video.groups.items():
            np.testing.assert_array_equal(loaded[name], array)
    assert video.probe == probe_video(video_37s)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cfr_9s", "vfr", "one_second", "portrait_rotated", "odd_size_audio"])
def test_features_equal_the_encoders_on_the_official_ffmpeg_frames(extractor, videos, name):
    path = {
        "cfr_9s": lambda p: write_video(p, seconds=9.0, fps=25),  # 5 clips, the last one padded
        "vfr": lambda p: write_video(p, times_s=[0.0, 0.05, 0.4, 0.45, 1.3, 2.0, 2.1, 2.15, 3.9, 4.4, 5.2]),
        "one_second": lambda p: write_video(p, seconds=1.0, fps=30),
        "portrait_rotated": lambda p: write_video(p, seconds=3.0, fps=30, width=320, height=176, rotation=-90),
        "odd_size_audio": lambda p: write_video(p, seconds=4.2, fps=24, width=262, height=150, audio=True),
    }[name](videos / f"ref_{name}.mp4")
    video = extractor.extract(path)
    expected = official_features(path, DEFAULT_BUNDLE)
    assert video.num_clips == len(expected["clip"]) > 0
    for group, array in expected.items():
        np.testing.assert_allclose(video.groups[group], array, rtol=0, atol=1e-5, err_msg=f"{name} {group}")


def test_a_one_second_video_gives_one_clip_with_the_official_short_video_rule(extractor, videos):
    path = write_video(videos / "short1.mp4", seconds=1.0, fps=30)
    video = extractor.extract(path)
    # CLIP decodes 2 frames (fps = 2 / max(int(1.0), 1)), SlowFast keeps ceil(1 / 2) = 1 clip: cut to 1
    assert video.num_clips == 1 and any("cut to the shortest" in note for note in video.notes)
    assert extractor.encoders["clip"].chain(video.probe, 2.0).fps == "2.0"
