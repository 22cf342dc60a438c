"""SlowFast checkpoints in their published formats, written by the tests from an independent model.

The reference network is pytorchvideo's ``create_slowfast`` (an implementation independent of ours) with
random weights. These helpers save its weights the way each published file stores them:

- ``pytorchvideo-pyth``: ``torch.save({"model_state": state_dict})`` (pytorchvideo's hub files);
- ``pyslowfast-caffe2-pkl``: a pickle of ``{"blobs": {caffe2_name: ndarray}}`` plus the optimizer blobs
  the model zoo files carry (PySlowFast's ``SLOWFAST_8x8_R50.pkl``);
- ``pyslowfast-pyth``: ``{"model_state": ...}`` with PySlowFast's module names.

The name tables here map pytorchvideo names to the other two schemes; they are written from the
naming conventions, independently of ``model_export.slowfast.weights`` (which maps each scheme to ours).
pytorchvideo's models import ``torchvision.ops.RoIAlign`` for a detection head these tests never build;
torchvision is not installed (it would pull its own torch), so a placeholder module stands in for it.
"""

from __future__ import annotations

import pickle
import re
import sys
import types
from pathlib import Path

import numpy as np
import torch


def _import_create_slowfast():
    """pytorchvideo's builder, imported with a placeholder ``torchvision.ops`` that is removed again afterwards."""
    if "pytorchvideo.models.slowfast" not in sys.modules:
        torchvision, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")

        class RoIAlign:  # only the detection head uses it
            def __init__(self, *args, **kwargs) -> None:
                raise RuntimeError("torchvision is not installed: RoIAlign is unavailable in the tests")

        ops.RoIAlign, torchvision.ops = RoIAlign, ops
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = torchvision, ops
        try:
            import pytorchvideo.models.slowfast  # noqa: F401
        finally:
            del sys.modules["torchvision"], sys.modules["torchvision.ops"]
    return sys.modules["pytorchvideo.models.slowfast"].create_slowfast


def reference_slowfast(width: int = 8, depth: int = 50, pool: tuple[int, int] = (2, 2), seed: int = 0) -> torch.nn.Module:
    """pytorchvideo SlowFast (8x8 setting) with PySlowFast widths ``width``/8 and random eval-mode weights."""
    create_slowfast = _import_create_slowfast()
    model = create_slowfast(
        model_depth=depth, slowfast_fusion_conv_kernel_size=(7, 1, 1), stem_dim_outs=(width, width // 8),
        head_pool_kernel_sizes=((8, *pool), (32, *pool)),
    ).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Conv3d):
                module.weight.normal_(0, (2 / module.weight[0].numel()) ** 0.5, generator=generator)
            elif isinstance(module, torch.nn.BatchNorm3d):
                n, scale = module.num_features, 0.2 if name.endswith("norm_c") else 1.0
                module.weight.copy_(scale * (0.75 + 0.5 * torch.rand(n, generator=generator)))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
    return model


def reference_features(model: torch.nn.Module, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
    """The pooled, concatenated pathway features (what the official head returns with last_fc=True)."""
    x = [slow.clone(), fast.clone()]
    with torch.no_grad():
        for block in model.blocks[:-1]:  # all but the classifier head
            x = block(x)
    return x.flatten(1)


_BN = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}


def caffe2_name(name: str, depths: tuple[int, ...]) -> str | None:
    """pytorchvideo name -> PySlowFast Caffe2 blob name (None: not stored in the Caffe2 files)."""
    if name.endswith("num_batches_tracked"):
        return None
    if m := re.fullmatch(r"blocks\.6\.proj\.(weight|bias)", name):
        return f"pred_{m[1][0]}"
    if m := re.fullmatch(r"blocks\.0\.multipathway_blocks\.([01])\.conv\.weight", name):
        return f"{'t_' if m[1] == '1' else ''}conv1_w"
    if m := re.fullmatch(r"blocks\.0\.multipathway_blocks\.([01])\.norm\.(\w+)", name):
        return f"{'t_' if m[1] == '1' else ''}res_conv1_bn_{_BN[m[2]]}"
    if m := re.fullmatch(r"blocks\.([0-3])\.multipathway_fusion\.(conv_fast_to_slow|norm)\.(\w+)", name):
        stage = int(m[1])
        base = "t_pool1_subsample" if stage == 0 else f"t_res{stage + 1}_{depths[stage - 1] - 1}_branch2c_bn_subsample"
        return f"{base}_w" if m[2] == "conv_fast_to_slow" else f"{base}_bn_{_BN[m[3]]}"
    m = re.fullmatch(r"blocks\.([1-4])\.multipathway_blocks\.([01])\.res_blocks\.(\d+)\.(.+)", name)
    prefix = f"{'t_' if m[2] == '1' else ''}res{int(m[1]) + 1}_{m[3]}"
    if b := re.fullmatch(r"branch1_conv\.weight", m[4]):
        return f"{prefix}_branch1_w"
    if b := re.fullmatch(r"branch1_norm\.(\w+)", m[4]):
        return f"{prefix}_branch1_bn_{_BN[b[1]]}"
    if b := re.fullmatch(r"branch2\.conv_([abc])\.weight", m[4]):
        return f"{prefix}_branch2{b[1]}_w"
    b = re.fullmatch(r"branch2\.norm_([abc])\.(\w+)", m[4])
    return f"{prefix}_branch2{b[1]}_bn_{_BN[b[2]]}"


def pyslowfast_name(name: str) -> str:
    """pytorchvideo name -> PySlowFast PyTorch module name."""
    if m := re.fullmatch(r"blocks\.6\.proj\.(\w+)", name):
        return f"head.projection.{m[1]}"
    if m := re.fullmatch(r"blocks\.0\.multipathway_blocks\.([01])\.(conv|norm)\.(\w+)", name):
        return f"s1.pathway{m[1]}_stem.{'conv' if m[2] == 'conv' else 'bn'}.{m[3]}"
    if m := re.fullmatch(r"blocks\.([0-3])\.multipathway_fusion\.(conv_fast_to_slow|norm)\.(\w+)", name):
        return f"s{int(m[1]) + 1}_fuse.{'conv_f2s' if m[2] == 'conv_fast_to_slow' else 'bn'}.{m[3]}"
    m = re.fullmatch(r"blocks\.([1-4])\.multipathway_blocks\.([01])\.res_blocks\.(\d+)\.(.+)", name)
    prefix = f"s{int(m[1]) + 1}.pathway{m[2]}_res{m[3]}"
    if b := re.fullmatch(r"branch1_(conv|norm)\.(\w+)", m[4]):
        return f"{prefix}.branch1{'' if b[1] == 'conv' else '_bn'}.{b[2]}"
    b = re.fullmatch(r"branch2\.(conv|norm)_([abc])\.(\w+)", m[4])
    return f"{prefix}.branch2.{b[2]}{'' if b[1] == 'conv' else '_bn'}.{b[3]}"


def write_checkpoint(model: torch.nn.Module, path: Path, fmt: str) -> Path:
    """Save the reference's weights as ``fmt`` ('pytorchvideo-pyth', 'pyslowfast-pyth', 'pyslowfast-caffe2-pkl')."""
    state = model.state_dict()
    if fmt == "pytorchvideo-pyth":
        torch.save({"model_state": state, "epoch": 196}, path)
    elif fmt == "pyslowfast-pyth":
        torch.save({"model_state": {pyslowfast_name(k): v for k, v in state.items()}, "epoch": 196, "cfg": "MODEL: {}"}, path)
    else:
        depths = tuple(len(model.blocks[s].multipathway_blocks[0].res_blocks) for s in range(1, 5))
        blobs = {caffe2_name(k, depths): v.numpy().copy() for k, v in state.items() if caffe2_name(k, depths)}
        blobs.update({"conv1_w_momentum": np.zeros_like(blobs["conv1_w"]), "lr": np.array(0.1, np.float32),
                      "model_iter": np.array(196, np.int64)})
        with open(path, "wb") as handle:
            pickle.dump({"blobs": blobs}, handle, protocol=2)
    return path
