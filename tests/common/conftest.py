"""Shared fixtures for the trdetr_common tests: the read-only official golden data."""

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
OFFICIAL_SMALL = SHARED / "fixtures" / "official_small"


def _official_npz(name: str) -> np.lib.npyio.NpzFile:
    path = OFFICIAL_SMALL / name
    if not path.exists():
        pytest.skip(f"official fixture {name} not found at {path} (the shared data directory is absent)")
    return np.load(path)


@pytest.fixture(scope="session")
def official_cases() -> np.lib.npyio.NpzFile:
    """Golden inputs/outputs of the official TR-DETR code (see shared/fixtures/official_small/README.md)."""
    return _official_npz("cases.npz")


@pytest.fixture(scope="session")
def official_padded_batch() -> np.lib.npyio.NpzFile:
    """The same cases as one batch padded by the official ``pad_sequences_1d``."""
    return _official_npz("padded_batch.npz")
