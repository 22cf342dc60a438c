"""TR-DETR in PyTorch: the model, its config and checkpoint I/O (torch lives here and in training/).

The names below are imported on first use (PEP 562), so ``import model_export.cli`` (and with it
``trdetr-export --help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_SOURCES = {
    "CheckpointError": ".checkpoint",
    "CheckpointFormatError": ".checkpoint",
    "CheckpointMismatchError": ".checkpoint",
    "LoadedCheckpoint": ".checkpoint",
    "UnsafeCheckpointError": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "read_checkpoint": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "ConfigError": ".config",
    "TRDETRConfig": ".config",
    "TRDETR": ".model",
    "build_model": ".model",
}

__all__ = [
    "TRDETR",
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "ConfigError",
    "LoadedCheckpoint",
    "TRDETRConfig",
    "UnsafeCheckpointError",
    "build_model",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]

if TYPE_CHECKING:
    from .checkpoint import (
        CheckpointError,
        CheckpointFormatError,
        CheckpointMismatchError,
        LoadedCheckpoint,
        UnsafeCheckpointError,
        load_checkpoint,
        read_checkpoint,
        save_checkpoint,
    )
    from .config import ConfigError, TRDETRConfig
    from .model import TRDETR, build_model


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_SOURCES])
