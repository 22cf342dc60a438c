"""Decoded frames equal the ffmpeg command line's, byte for byte, for the official filter chains.

The official extractor pipes ``ffmpeg -i VIDEO -vf fps=R,scale=W:H,crop=224:224:X:Y -pix_fmt rgb24``;
``extraction`` runs the same chain in PyAV's filter graph. Checked for both encoders' chains (30 fps for
SlowFast, one frame per 2 s for CLIP) on ordinary, variable-frame-rate, rotated and odd-sized videos.
"""

from __future__ import annotations

import numpy as np
import pytest
from video_helpers import ffmpeg_frames, write_video

from extraction.decode import ChainDecoder
from extraction.frames import center_crop_chain, short_side_size
from extraction.probe import probe_video

CASES = {
    "cfr_25fps": dict(seconds=3.0, fps=25),
    "vfr": dict(times_s=[0.0, 0.04, 0.1, 0.3, 0.31, 0.7, 1.0, 1.05, 1.6, 2.2, 2.25, 2.9, 3.3]),
    "rotated_90": dict(seconds=2.5, fps=30, rotation=90, width=320, height=180),
    "odd_size_mpeg4": dict(seconds=2.0, fps=24, width=250, height=142, codec="mpeg4"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, videos):
    suffix = ".mp4" if CASES[request.param].get("codec", "libx264") == "libx264" else ".avi"
    return write_video(videos / f"frames_{request.param}{suffix}", **CASES[request.param])


def test_pyav_filter_graph_frames_equal_the_ffmpeg_cli(case):
    probe = probe_video(case)
    chains = {"slowfast": center_crop_chain(probe.width, probe.height, 224, "30"),
              "clip": center_crop_chain(probe.width, probe.height, 224, "0.5")}
    ours: dict[str, list[np.ndarray]] = {name: [] for name in chains}
    for name, frame in ChainDecoder(probe, chains):
        ours[name].append(frame)
    for name, chain in chains.items():
        reference = ffmpeg_frames(case, chain.vf(), (224, 224))
        assert len(reference) > 0
        np.testing.assert_array_equal(np.stack(ours[name]), reference, err_msg=f"{case.name} {name} {chain.vf()}")


def test_rotation_metadata_is_applied_like_the_cli(videos):
    path = write_video(videos / "portrait.mp4", seconds=1.0, fps=10, width=320, height=180, rotation=90)
    probe = probe_video(path)
    assert (probe.coded_width, probe.coded_height, probe.width, probe.height) == (320, 180, 180, 320)
    assert probe.rotation_deg == 270  # display_rotation 90 (counter-clockwise) = 270 clockwise
    chain = center_crop_chain(probe.width, probe.height, 224, "30")
    assert chain.scale == (224, 398) and chain.crop == (224, 224, 0, 87)


@pytest.mark.parametrize(("size", "expected"), [((320, 240), (298, 224)), ((240, 320), (224, 298)),
                                                ((1920, 1080), (398, 224)), ((224, 224), (224, 224)),
                                                ((250, 142), (394, 224))])
def test_short_side_resize_truncates_like_the_official_loader(size, expected):
    assert short_side_size(*size, 224) == expected
