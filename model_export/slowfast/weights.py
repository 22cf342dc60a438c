"""Load SlowFast checkpoints in their published formats, safely, into :class:`~.model.SlowFast`.

Formats (detected from the file, not its name):

- ``pyslowfast-caffe2-pkl``: PySlowFast model-zoo ``SLOWFAST_8x8_R50.pkl`` (the file the official
  QVHighlights extractor loads with ``CHECKPOINT_TYPE: caffe2``): a Python-2 pickle of
  ``{"blobs": {caffe2_name: numpy array}}``. It is read with :class:`ArrayOnlyUnpickler`, which
  rebuilds numpy arrays and plain containers and refuses every other global, so a file that
  would run code is rejected instead of executed.
- ``pytorchvideo-pyth``: pytorchvideo's ``SLOWFAST_8x8_R50.pyth`` (``{"model_state": state_dict}``,
  names ``blocks.N.multipathway_blocks.P...``).
- ``pyslowfast-pyth``: PySlowFast's own PyTorch checkpoints (``{"model_state": ...}``, names
  ``s2.pathway0_res0.branch2.a...``).

``.pyth`` files are read with ``torch.load(weights_only=True)``. The classifier (``pred_*`` /
``head.projection`` / ``blocks.6.proj``), optimizer state and BN ``num_batches_tracked`` are dropped;
every tensor of the network must be present with the right shape, else :class:`SlowFastWeightsError`.
Name translations are written here from the three naming schemes (Caffe2 blob names are those
PySlowFast's ``c2_model_loading.py`` documents).
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import SlowFastConfig, config_from_shapes
from .model import SlowFast

_BN_SUFFIX = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_TORCH_BN = {"weight", "bias", "running_mean", "running_var"}
_PATHWAY = {"0": "slow", "1": "fast"}
_BRANCH2 = {"a": "a", "b": "b", "c": "c"}


class SlowFastWeightsError(ValueError):
    """The file is not a usable SlowFast checkpoint; the message says why."""


@dataclass(frozen=True)
class LoadedSlowFast:
    """A SlowFast network in eval mode plus where its weights came from."""

    model: SlowFast
    file_name: str | None
    sha256: str | None
    format: str


class ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler for Caffe2 weight pickles: numpy arrays, dtypes and plain containers only."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise SlowFastWeightsError(
                f"refusing to load {module}.{name} from the pickle: a Caffe2 weight file holds only numpy arrays"
            )
        if module.startswith("numpy") and module.endswith("multiarray"):
            module = "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
        return super().find_class(module, name)


def _caffe2_name(name: str) -> str | None:
    """Caffe2 blob name -> our parameter name; None for blobs that are not network weights."""
    if name.startswith("pred_") or name in {"lr", "model_iter"} or name.endswith("_momentum"):
        return None
    rules: list[tuple[str, Callable[[re.Match], str]]] = [
        (r"(t_)?res_conv1_bn_(s|b|rm|riv)", lambda m: f"{'fast' if m[1] else 'slow'}_stem.norm.{_BN_SUFFIX[m[2]]}"),
        (r"(t_)?conv1_w", lambda m: f"{'fast' if m[1] else 'slow'}_stem.conv.weight"),
        (r"t_pool1_subsample_bn_(s|b|rm|riv)", lambda m: f"fusions.0.norm.{_BN_SUFFIX[m[1]]}"),
        (r"t_pool1_subsample_w", lambda m: "fusions.0.conv.weight"),
        (r"t_res([2-4])_\d+_branch2c_bn_subsample_bn_(s|b|rm|riv)",
         lambda m: f"fusions.{int(m[1]) - 1}.norm.{_BN_SUFFIX[m[2]]}"),
        (r"t_res([2-4])_\d+_branch2c_bn_subsample_w", lambda m: f"fusions.{int(m[1]) - 1}.conv.weight"),
        (r"(t_)?res([2-5])_(\d+)_branch1_bn_(s|b|rm|riv)",
         lambda m: f"{_stage(m[1], m[2], m[3])}.shortcut_norm.{_BN_SUFFIX[m[4]]}"),
        (r"(t_)?res([2-5])_(\d+)_branch1_w", lambda m: f"{_stage(m[1], m[2], m[3])}.shortcut_conv.weight"),
        (r"(t_)?res([2-5])_(\d+)_branch2([abc])_bn_(s|b|rm|riv)",
         lambda m: f"{_stage(m[1], m[2], m[3])}.norm_{m[4]}.{_BN_SUFFIX[m[5]]}"),
        (r"(t_)?res([2-5])_(\d+)_branch2([abc])_w", lambda m: f"{_stage(m[1], m[2], m[3])}.conv_{m[4]}.weight"),
    ]
    for pattern, target in rules:
        if match := re.fullmatch(pattern, name):
            return target(match)
    raise SlowFastWeightsError(f"unknown Caffe2 blob {name!r}: not a SlowFast R50/R101 checkpoint")


def _stage(fast_prefix: str | None, res: str, block: str) -> str:
    return f"{'fast' if fast_prefix else 'slow'}_stages.{int(res) - 2}.{block}"


def _pytorchvideo_name(name: str) -> str | None:
    """pytorchvideo ``create_slowfast`` state-dict name -> ours; None for the head and BN counters."""
    if name.startswith("blocks.6.") or name.endswith("num_batches_tracked"):
        return None
    if m := re.fullmatch(r"blocks\.0\.multipathway_blocks\.([01])\.(conv|norm)\.(\w+)", name):
        return f"{_PATHWAY[m[1]]}_stem.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"blocks\.([0-3])\.multipathway_fusion\.(conv_fast_to_slow|norm)\.(\w+)", name):
        return f"fusions.{m[1]}.{'conv' if m[2] == 'conv_fast_to_slow' else 'norm'}.{m[3]}"
    if m := re.fullmatch(r"blocks\.([1-4])\.multipathway_blocks\.([01])\.res_blocks\.(\d+)\.(.+)", name):
        prefix = f"{_PATHWAY[m[2]]}_stages.{int(m[1]) - 1}.{m[3]}"
        if b := re.fullmatch(r"branch1_(conv|norm)\.(\w+)", m[4]):
            return f"{prefix}.shortcut_{b[1]}.{b[2]}"
        if b := re.fullmatch(r"branch2\.(conv|norm)_([abc])\.(\w+)", m[4]):
            return f"{prefix}.{b[1]}_{b[2]}.{b[3]}"
    raise SlowFastWeightsError(f"unknown pytorchvideo tensor {name!r}: not a pytorchvideo SlowFast state dict")


def _pyslowfast_name(name: str) -> str | None:
    """PySlowFast ``SlowFast`` state-dict name -> ours; None for the head and BN counters."""
    if name.startswith("head.") or name.endswith("num_batches_tracked"):
        return None
    if m := re.fullmatch(r"s1\.pathway([01])_stem\.(conv|bn)\.(\w+)", name):
        return f"{_PATHWAY[m[1]]}_stem.{'conv' if m[2] == 'conv' else 'norm'}.{m[3]}"
    if m := re.fullmatch(r"s([1-4])_fuse\.(conv_f2s|bn)\.(\w+)", name):
        return f"fusions.{int(m[1]) - 1}.{'conv' if m[2] == 'conv_f2s' else 'norm'}.{m[3]}"
    if m := re.fullmatch(r"s([2-5])\.pathway([01])_res(\d+)\.(.+)", name):
        prefix = f"{_PATHWAY[m[2]]}_stages.{int(m[1]) - 2}.{m[3]}"
        if b := re.fullmatch(r"branch1(_bn)?\.(\w+)", m[4]):
            return f"{prefix}.shortcut_{'norm' if b[1] else 'conv'}.{b[2]}"
        if b := re.fullmatch(r"branch2\.([abc])(_bn)?\.(\w+)", m[4]):
            return f"{prefix}.{'norm' if b[2] else 'conv'}_{b[1]}.{b[3]}"
    raise SlowFastWeightsError(f"unknown PySlowFast tensor {name!r}: not a PySlowFast SlowFast state dict")


def _translate(tensors: Mapping[str, np.ndarray | torch.Tensor], rename: Callable[[str], str | None]) -> dict[str, torch.Tensor]:
    """Rename every tensor (dropping the ones ``rename`` maps to None) into float32 torch tensors."""
    state: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        target = rename(name)
        if target is None:
            continue
        if target in state:
            raise SlowFastWeightsError(f"two tensors map to {target} (second: {name})")
        state[target] = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value).float()
    return state


def read_caffe2_pickle(path: Path) -> dict[str, np.ndarray]:
    """The ``blobs`` of a Caffe2 pickle, read without running code (see :class:`ArrayOnlyUnpickler`)."""
    with open(path, "rb") as handle:
        try:
            data = ArrayOnlyUnpickler(handle, encoding="latin1").load()
        except SlowFastWeightsError:
            raise
        except Exception as error:
            raise SlowFastWeightsError(f"{path} is not a readable Caffe2 pickle: {error}") from error
    blobs = data.get("blobs") if isinstance(data, dict) else None
    if not isinstance(blobs, dict):
        raise SlowFastWeightsError(f"{path} has no 'blobs' dict: not a PySlowFast Caffe2 checkpoint")
    return {k: v for k, v in blobs.items() if isinstance(v, np.ndarray)}


def read_torch_state(path: Path) -> dict[str, torch.Tensor]:
    """``model_state`` (or the bare state dict) of a ``.pyth`` file, loaded with ``weights_only=True``."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise SlowFastWeightsError(f"{path} cannot be loaded as tensors only (weights_only=True): {error}") from error
    state = data.get("model_state", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SlowFastWeightsError(f"{path} holds no state dict of tensors (expected {{'model_state': ...}})")
    return state


def state_dict_from_file(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Our-named state dict and the detected format of a ``.pkl`` / ``.pyth`` SlowFast checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SlowFast checkpoint {path} not found")
    if zipfile.is_zipfile(path):  # torch.save's format
        state = read_torch_state(path)
        if any(k.startswith("blocks.") for k in state):
            return _translate(state, _pytorchvideo_name), "pytorchvideo-pyth"
        return _translate(state, _pyslowfast_name), "pyslowfast-pyth"
    return _translate(read_caffe2_pickle(path), _caffe2_name), "pyslowfast-caffe2-pkl"


def build_from_state(state: Mapping[str, torch.Tensor], *, alpha: int = 4) -> SlowFast:
    """A SlowFast whose config is read off ``state``'s shapes, with ``state`` loaded strictly."""
    try:
        config: SlowFastConfig = config_from_shapes({k: tuple(v.shape) for k, v in state.items()}, alpha=alpha)
    except ValueError as error:
        raise SlowFastWeightsError(str(error)) from error
    model = SlowFast(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        raise SlowFastWeightsError(
            f"weights do not fit the SlowFast network read from them: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shapes {[(k, tuple(state[k].shape), expected[k]) for k in wrong[:5]]}"
        )
    model.load_state_dict(state, strict=False)  # strict apart from num_batches_tracked, checked above
    return model.eval()


def load_slowfast(path: Path, *, alpha: int = 4) -> LoadedSlowFast:
    """Read a SlowFast checkpoint (any supported format) into an eval-mode network."""
    path = Path(path)
    state, fmt = state_dict_from_file(path)
    model = build_from_state(state, alpha=alpha)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return LoadedSlowFast(model=model, file_name=path.name, sha256=digest, format=fmt)
