"""Read (and, for tests, write) PANN Cnn14 checkpoints in the released layout.

``Cnn14_mAP=0.431.pth`` (zenodo 3987831, the weights of Lighthouse's and the QVHighlights audio features) is
``torch.save({"model": state_dict, ...})``. It is loaded with ``weights_only=True`` (plain tensors only) and
strictly: a missing or extra key, or a shape that does not fit Cnn14, is an error that names it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .model import Cnn14, Cnn14Config


class PannWeightsError(ValueError):
    """The file is not a Cnn14 checkpoint; the message says why."""


@dataclass
class LoadedPann:
    """A Cnn14 in eval mode and where its weights came from."""

    model: Cnn14
    file_name: str
    sha256: str | None
    format: str  # "panns-cnn14-pth" | "random-init"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _config_from_state(state: dict) -> Cnn14Config:
    """Channel widths, mel bins and classes from the tensors' shapes (released: 64..2048, 64, 527)."""
    try:
        channels = []
        index = 1
        while f"conv_block{index}.conv1.weight" in state:
            channels.append(int(state[f"conv_block{index}.conv1.weight"].shape[0]))
            index += 1
        return Cnn14Config(mel_bins=int(state["bn0.weight"].shape[0]), channels=tuple(channels),
                           classes_num=int(state["fc_audioset.weight"].shape[0]))
    except (KeyError, AttributeError, IndexError) as error:
        raise PannWeightsError(f"not a Cnn14 state_dict: {error!r} missing") from error


def load_pann(path: str | Path) -> LoadedPann:
    """Load ``Cnn14_mAP=0.431.pth`` (or a file of the same layout) into our Cnn14, eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PANN checkpoint {path} not found (download Cnn14_mAP=0.431.pth from zenodo 3987831)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise PannWeightsError(f"{path} is not a readable torch checkpoint: {error}") from error
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise PannWeightsError(f"{path}: expected a dict with a 'model' state_dict (the released Cnn14 layout)")
    config = _config_from_state(state)
    model = Cnn14(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise PannWeightsError(f"{path} does not fit Cnn14: {error}") from error
    return LoadedPann(model.eval(), path.name, _sha256(path), "panns-cnn14-pth")


def random_pann(config: Cnn14Config | None = None, seed: int = 0) -> Cnn14:
    """A Cnn14 with seeded random weights and BatchNorm statistics (eval mode), for tests and demos."""
    generator = torch.Generator().manual_seed(seed)
    model = Cnn14(config)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.startswith(("spectrogram_extractor", "logmel_extractor")) or "num_batches" in name:
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif name.startswith("bn") or ".bn" in name:
                tensor.copy_(1.0 + 0.1 * torch.randn(tensor.shape, generator=generator))
            else:
                fan_in = max(1, tensor[0].numel())
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
    return model.eval()


def save_pann(path: str | Path, model: Cnn14) -> Path:
    """Write ``model`` in the released layout: ``{"model": state_dict, "iteration": 0}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "iteration": 0}, path)
    return path
