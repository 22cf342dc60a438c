"""End to end on real files: ``Extractor.extract`` with the default bundle's (untrained) encoders."""

from __future__ import annotations

import io

import numpy as np

from extraction import ExtractedVideo, npz_bytes, probe_video


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
