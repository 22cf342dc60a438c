"""Shared fixtures for the trdetr_common tests: the read-only official golden data."""

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
OFFICIAL_SMALL = SHARED / "fixtures" / "official_small"


@pytest.fixture(scope="session")
def official_cases() -> np.lib.npyio.NpzFile:
    """Golden inputs/outputs of the official TR-DETR code (see shared/fixtures/official_small/README.md)."""
    path = OFFICIAL_SMALL / "cases.npz"
    if not path.exists():
        pytest.skip(f"official golden fixture not found at {path} (the shared data directory is absent)")
    return np.load(path)


@pytest.fixture(scope="session")
def official_padded_batch() -> np.lib.npyio.NpzFile:
    """The same cases as one batch padded by the official ``pad_sequences_1d``."""
    path = OFFICIAL_SMALL / "padded_batch.npz"
    if not path.exists():
        pytest.skip(f"official padded batch not found at {path} (the shared data directory is absent)")
    return np.load(path)
