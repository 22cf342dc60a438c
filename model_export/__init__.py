"""TR-DETR in PyTorch: the model, its config and checkpoint I/O (torch lives here and in training/)."""

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
