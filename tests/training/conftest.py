"""Shared fixtures of the training tests: a small synthetic dataset written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.synthetic import SyntheticSpec, write_synthetic_split

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"


def shared_path(*parts: str) -> Path:
    """A path under the team's shared read-only data; skips the test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} is absent (expected at ../shared relative to the repo root)")
    return path


@pytest.fixture(scope="session")
def synthetic_spec() -> SyntheticSpec:
    return SyntheticSpec(min_clips=12, max_clips=40)


@pytest.fixture(scope="session")
def synthetic_train(tmp_path_factory, synthetic_spec):
    return write_synthetic_split(tmp_path_factory.mktemp("synthetic"), "train", 24, seed=1,
                                 spec=synthetic_spec)
