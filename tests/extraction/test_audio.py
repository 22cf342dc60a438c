"""Audio groups from video files: PyAV decoding and resampling to 32 kHz mono (checked against the ffmpeg
command line), 2-s clips through the bundled Cnn14 (checked against torch), cut with the video groups,
and the documented treatment of a video without an audio track."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from audio_bundle import AUDIO_DIM, export_audio_extraction_bundle, tiny_pann
from video_helpers import write_video

from extraction import ExtractionError, Extractor
from extraction.audio import PannGroupEncoder, cut_clips, decode_audio
from trdetr_common.manifest import Manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def audio_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audio_extraction")
    export_audio_extraction_bundle(root)
    return root


@pytest.fixture(scope="module")
def audio_extractor(audio_root: Path) -> Extractor:
    return Extractor(audio_root / "bundle", device="cpu", batch_size=4)


def _ffmpeg_mono_32k(path: Path) -> np.ndarray:
    """The ffmpeg CLI's own decode + downmix + resample: the independent reference of decode_audio."""
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-vn", "-ac", "1",
                          "-ar", "32000", "-f", "f32le", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(out, dtype="<f4")


def test_audio_group_is_cnn14_on_2s_clips_of_the_32k_mono_track(audio_root, audio_extractor, tmp_path):
    path = write_video(tmp_path / "with_audio.mp4", seconds=9.0, fps=10, width=160, height=120, audio=True)
    track = decode_audio(path, 32000)
    reference = _ffmpeg_mono_32k(path)
    assert track is not None and abs(len(track.samples) - len(reference)) <= 32
    # the CLI trims the codec padding before resampling, we after: only the resampler's last taps differ
    common = min(len(track.samples), len(reference)) - 64
    np.testing.assert_allclose(track.samples[:common], reference[:common], atol=2e-3)

    video = audio_extractor.extract(path)
    assert set(video.groups) == {"slowfast", "clip", "pann"}
    assert video.groups["pann"].shape == (video.num_clips, AUDIO_DIM)
    clips = cut_clips(reference, 64000)
    assert video.num_clips <= len(clips)
    with torch.no_grad():
        want = tiny_pann(audio_root).model(torch.from_numpy(clips[:video.num_clips].copy())).numpy()
    np.testing.assert_allclose(video.groups["pann"], want, atol=1e-3 * max(1.0, np.abs(want).max()))
    assert video.timings_s["pann"] > 0


def test_a_video_without_audio_gets_zero_audio_rows_and_a_note(audio_extractor, tmp_path):
    path = write_video(tmp_path / "silent.mp4", seconds=5.0, fps=10, width=160, height=120, audio=False)
    video = audio_extractor.extract(path)
    assert video.groups["pann"].shape == (video.num_clips, AUDIO_DIM) and video.num_clips >= 2
    assert not video.groups["pann"].any()
    assert any("no audio track" in note and "'pann'" in note for note in video.notes)


def test_a_bundle_that_refuses_silence_names_why(audio_root, tmp_path):
    spec = Manifest.load(audio_root / "bundle").preprocessing.audio_groups[0].encoder
    refusing = PannGroupEncoder(audio_root / "bundle", spec.model_copy(update={"no_audio_track": "refuse"}),
                                device="cpu", intra_op_threads=1, batch_size=2)
    path = write_video(tmp_path / "silent.mp4", seconds=3.0, fps=10, width=160, height=120)
    with pytest.raises(ExtractionError) as caught:
        refusing.extract(path, "pann", 1)
    assert caught.value.code == "no_audio_stream" and "no audio track" in caught.value.message
