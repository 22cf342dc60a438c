"""Fixtures of the extraction tests: PyAV-written videos (module-scoped) and the default bundle's Extractor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from video_helpers import DEFAULT_BUNDLE, write_video  # noqa: E402

from extraction import Extractor  # noqa: E402


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def video_37s(videos: Path) -> Path:
    """37 s at 25 fps, 320x240: the issue's example (19 clips of 2 s)."""
    return write_video(videos / "v37.mp4", seconds=37, fps=25)


@pytest.fixture(scope="session")
def extractor() -> Extractor:
    return Extractor(DEFAULT_BUNDLE, device="cpu", batch_size=4)
