"""``trdetr-extract``: one .npz per video, the bytes a features upload takes; failures named, exit status 1."""

from __future__ import annotations

import numpy as np
from video_helpers import DEFAULT_BUNDLE, write_video

from extraction import npz_bytes
from extraction.cli import main
from service.uploads import file_format, parse_video
from trdetr_common.manifest import Manifest


def test_cli_writes_the_upload_bytes_and_names_the_failures(extractor, tmp_path, capsys):
    good = write_video(tmp_path / "walk.mp4", seconds=5.0, fps=25)
    bad = tmp_path / "notes.txt"
    bad.write_text("not a video")
    out = tmp_path / "features"
    status = main([str(good), str(bad), "--bundle", str(DEFAULT_BUNDLE), "--out", str(out), "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert status == 1
    assert "notes.txt: not_a_video:" in captured.err and "walk.mp4 ->" in captured.out and "3 clips" in captured.out
    written = (out / "walk.npz").read_bytes()
    assert written == npz_bytes(extractor.extract(good))
    pre = Manifest.load(DEFAULT_BUNDLE).preprocessing
    upload = parse_video(written, file_format("application/x-npz", written), pre, max_clips=75, max_unpacked_bytes=1 << 26)
    assert upload.num_clips == 3 and upload.features.shape == (3, 2816) and not upload.notes
    assert np.isfinite(upload.features).all()


def test_cli_refuses_a_bundle_it_cannot_use(tmp_path, capsys):
    assert main([str(tmp_path / "v.mp4"), "--bundle", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "cannot use the bundle" in capsys.readouterr().err
