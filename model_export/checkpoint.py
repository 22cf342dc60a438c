"""Read, check and write TR-DETR checkpoints without ever running code from the file.

Formats read:
- "official" (mingyao1120/TR-DETR `train.py`): `{"model", "optimizer", "lr_scheduler", "epoch", "opt"}`
  with `opt` an `argparse.Namespace` (holding a `torch.device`), storages tagged `cuda:0`.
- "lighthouse" (line/lighthouse): `{"model", "opt", ...}` with `opt` an `easydict.EasyDict` of the same
  field names (`v_feat_dim` counts TEF there, `a_feat_dim` is set for audio models).
- "trdetr-service" (ours): `{"format": "trdetr-service", "version": 1, "model", "config": dict, "epoch"}`,
  plain containers only, so `torch.load(weights_only=True)` reads it without an allow-list.

Files are only ever opened with `torch.load(weights_only=True)` and a short allow-list; anything else
in the pickle (a class or function that would run) raises `UnsafeCheckpointError`.
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ConfigError, TRDETRConfig
from .model import TRDETR, build_model

FORMAT_OFFICIAL = "official"
FORMAT_LIGHTHOUSE = "lighthouse"
FORMAT_SERVICE = "trdetr-service"
SERVICE_FORMAT_VERSION = 1
_VID_PROJ_KEY = "input_vid_proj.0.net.1.weight"


class CheckpointError(ValueError):
    """Base class of every checkpoint problem (the message says what to do)."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle references a class/function outside the allow-list: it could run code."""


class CheckpointFormatError(CheckpointError):
    """Not a TR-DETR checkpoint in a known layout."""


class CheckpointMismatchError(CheckpointError):
    """The state_dict does not fit the architecture its config describes."""


class _EasyDictStandIn:
    """Stands in for `easydict.EasyDict` while unpickling: becomes an OrderedDict (which the safe
    unpickler may fill and give attributes), so Lighthouse opts load without easydict or its code."""

    def __new__(cls, *args: Any) -> collections.OrderedDict:  # type: ignore[misc]
        return collections.OrderedDict()


_SAFE_GLOBALS: list = [argparse.Namespace, torch.device, (_EasyDictStandIn, "easydict.EasyDict")]


@dataclass
class LoadedCheckpoint:
    """A checkpoint read and checked, but no model built."""

    state_dict: dict[str, torch.Tensor]
    config: TRDETRConfig
    format: str
    epoch: int | None
    raw_opt: dict[str, Any]


def _safe_torch_load(path: Path, map_location: str | torch.device) -> Any:
    """`torch.load(weights_only=True)` with the allow-list; unsafe content -> UnsafeCheckpointError."""
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            first_line = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
            raise UnsafeCheckpointError(
                f"{path}: refused to load: the pickle references something outside the allow-list "
                f"({first_line}). Loading it could run arbitrary code; re-save the weights from a trusted "
                f"environment with model_export.save_checkpoint(..., fmt='trdetr-service')."
            ) from exc
        raise CheckpointFormatError(f"{path}: not a torch checkpoint ({exc})") from exc
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # torch raises assorted types for truncated / foreign files
        raise CheckpointFormatError(
            f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc


def _opt_to_dict(opt: Any) -> dict[str, Any]:
    """Namespace / dict / unpickled EasyDict (OrderedDict with attributes) -> plain dict."""
    if isinstance(opt, argparse.Namespace):
        return dict(vars(opt))
    if isinstance(opt, Mapping):
        out = dict(getattr(opt, "__dict__", {}))
        out.update(opt)
        return out
    raise CheckpointFormatError(f"checkpoint 'opt' is a {type(opt).__name__}, expected a Namespace or a dict")


def _detect_format(obj: Any, path: Path) -> str:
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path}: holds a {type(obj).__name__}, expected a dict with a 'model' entry")
    if obj.get("format") == FORMAT_SERVICE:
        if obj.get("version") != SERVICE_FORMAT_VERSION:
            raise CheckpointFormatError(
                f"{path}: trdetr-service checkpoint version {obj.get('version')!r}, this code reads version "
                f"{SERVICE_FORMAT_VERSION}: upgrade trdetr-service")
        return FORMAT_SERVICE
    if "model" not in obj or "opt" not in obj:
        raise CheckpointFormatError(
            f"{path}: keys {sorted(map(str, obj))} are no known TR-DETR layout: expected 'model' and 'opt' "
            f"(official / Lighthouse) or format='trdetr-service'")
    return FORMAT_OFFICIAL if isinstance(obj["opt"], argparse.Namespace) else FORMAT_LIGHTHOUSE


def _state_dict_of(obj: Mapping, path: Path) -> dict[str, torch.Tensor]:
    state = obj["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointFormatError(f"{path}: 'model' must be a state_dict (names -> tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Read a checkpoint (any supported format), derive its config and check the state_dict shapes."""
    path = Path(path)
    obj = _safe_torch_load(path, map_location)
    fmt = _detect_format(obj, path)
    state = _state_dict_of(obj, path)
    raw_opt = dict(obj["config"]) if fmt == FORMAT_SERVICE else _opt_to_dict(obj["opt"])
    if _VID_PROJ_KEY not in state:
        raise CheckpointMismatchError(f"{path}: state_dict lacks {_VID_PROJ_KEY!r}: not a TR-DETR state_dict")
    try:
        config = TRDETRConfig.from_opt(raw_opt, vid_input_dim=int(state[_VID_PROJ_KEY].shape[1]))
    except (ConfigError, TypeError) as exc:
        raise CheckpointMismatchError(f"{path}: its opt/config cannot describe this model: {exc}") from exc
    check_state_dict(state, config, source=str(path))
    epoch = obj.get("epoch")
    return LoadedCheckpoint(state, config, fmt, int(epoch) if epoch is not None else None, raw_opt)


def check_state_dict(state: Mapping[str, torch.Tensor], config: TRDETRConfig, source: str = "state_dict") -> None:
    """Raise CheckpointMismatchError naming the first key that is missing, extra or of another shape."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
    for key, shape in expected.items():
        if key not in state:
            raise CheckpointMismatchError(f"{source}: missing key {key!r} (expected shape {shape}) for config {config}")
        if tuple(state[key].shape) != shape:
            raise CheckpointMismatchError(
                f"{source}: key {key!r} has shape {tuple(state[key].shape)}, the config "
                f"(from its opt) implies {shape}: the opt does not match the weights")
    extra = [k for k in state if k not in expected]
    if extra:
        raise CheckpointMismatchError(f"{source}: unexpected key {extra[0]!r} (+{len(extra) - 1} more) for config {config}")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[TRDETR, TRDETRConfig]:
    """Build the model of a checkpoint, load its weights strictly, return (model in eval mode, config)."""
    loaded = read_checkpoint(path, map_location)
    model = build_model(loaded.config)
    model.load_state_dict(loaded.state_dict, strict=True)
    return model.to(map_location).eval(), loaded.config


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: TRDETRConfig, *,
                    optimizer: torch.optim.Optimizer | None = None, lr_scheduler: Any = None,
                    epoch: int | None = None, fmt: str = FORMAT_OFFICIAL,
                    extra_opt: Mapping[str, Any] | None = None) -> Path:
    """Write `model`'s weights in the official layout (default) or ours (`fmt="trdetr-service"`).

    `extra_opt`: more fields for the opt (official) / config dict (ours), plain containers only, e.g.
    `{"video_feature_groups": [["slowfast", 2304], ["clip", 512]]}`, which `trdetr-export` reads so the
    bundle's preprocessing contract needs no flag. The official code ignores fields it does not know.
    """
    path = Path(path)
    extra = dict(extra_opt or {})
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if fmt == FORMAT_OFFICIAL:
        obj: dict[str, Any] = {
            "model": state,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
            "epoch": epoch,
            "opt": argparse.Namespace(**{**vars(config.to_opt()), **extra}),
        }
    elif fmt == FORMAT_SERVICE:
        obj = {"format": FORMAT_SERVICE, "version": SERVICE_FORMAT_VERSION, "model": state,
               "config": {**config.to_dict(), **extra}, "epoch": epoch}
    else:
        raise ValueError(f"fmt={fmt!r}: use {FORMAT_OFFICIAL!r} or {FORMAT_SERVICE!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path
