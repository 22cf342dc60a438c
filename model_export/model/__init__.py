"""TR-DETR in PyTorch with the official module names (so official state_dicts load strictly)."""

from __future__ import annotations

from ..config import TRDETRConfig
from .trdetr import TRDETR


def build_model(config: TRDETRConfig) -> TRDETR:
    """A randomly initialised TR-DETR (initialisation as the official build_model)."""
    return TRDETR(config)


__all__ = ["TRDETR", "build_model"]
