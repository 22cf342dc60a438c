"""Export form of SlowFast: every 3D convolution rewritten as 2D convolutions, BatchNorm folded in.

ONNX Runtime's CPU kernels are far faster for 2D convolutions (blocked NCHWc layout, no im2col
buffer) than for 3D ones, and SlowFast's 3D kernels are all separable into cases that 2D convolutions
compute exactly:

- ``1 x 1 x 1`` (stride 1): a 1x1 Conv2d on (B, C, T*H, W), a free reshape;
- ``kt x 1 x 1`` (temporal, incl. the strided Fast->Slow fusion): a (kt, 1) Conv2d on (B, C, T, H*W);
- ``1 x kh x kw`` (spatial, incl. spatial strides): a Conv2d per frame on (B*T, C, H, W);
- ``kt x kh x kw`` (the fast stem, 5x7x7): one Conv2d per frame giving every time tap's output, then the
  taps' outputs summed over the shifted frames;
- the stem's ``1 x 3 x 3`` max-pool: a MaxPool2d on (B, C*T, H, W).

Same arithmetic up to float summation order; the export gate compares the ONNX graph with the original
:class:`~.model.SlowFast` (<= 1e-4). Shapes: every module maps (B, C, T, H, W) -> (B, C', T', H', W').
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .model import SlowFast, Stem


def fold_batchnorm(conv: nn.Conv3d, norm: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the convolution followed by the eval-mode BatchNorm, as one convolution."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1, 1)
    bias = norm.bias - norm.running_mean * scale
    return weight.detach().clone(), bias.detach().clone()


class Conv3dAs2d(nn.Module):
    """A Conv3d (+ folded BatchNorm) computed with Conv2d: (B, C, T, H, W) -> (B, C', T', H', W')."""

    def __init__(self, conv: nn.Conv3d, norm: nn.BatchNorm3d) -> None:
        super().__init__()
        weight, bias = fold_batchnorm(conv, norm)
        (self.kt, kh, kw), (self.st, self.sh, self.sw) = conv.kernel_size, conv.stride
        self.pt, self.ph, self.pw = conv.padding
        if self.kt > 1 and (kh, kw) != (1, 1):  # one 2D kernel per time tap, as output channels k*C' + o
            weight = weight.permute(2, 0, 1, 3, 4).reshape(-1, weight.shape[1], kh, kw)
        elif self.kt > 1:
            weight = weight[..., 0]  # (C', C, kt, 1)
        else:
            weight = weight[:, :, 0]  # (C', C, kh, kw)
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        self.spatial = (kh, kw) != (1, 1) or (self.sh, self.sw) != (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if self.kt > 1 and not self.spatial:  # temporal conv on (B, C, T, H*W)
            y = F.conv2d(x.reshape(b, c, t, h * w), self.weight, self.bias, stride=(self.st, 1), padding=(self.pt, 0))
            return y.reshape(b, y.shape[1], y.shape[2], h, w)
        if not self.spatial:  # 1x1x1
            y = F.conv2d(x.reshape(b, c, t * h, w), self.weight, self.bias)
            return y.reshape(b, y.shape[1], t, h, w)
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        if self.kt > 1:  # every tap's 2D conv on every frame, then out[t] = sum_k tap_k(frame t + k - pt)
            y = F.conv2d(frames, self.weight, None, stride=(self.sh, self.sw), padding=(self.ph, self.pw))
            y = y.reshape(b, t, self.kt, -1, y.shape[2], y.shape[3])
            y = F.pad(y, (0, 0, 0, 0, 0, 0, 0, 0, self.pt, self.pt))
            y = sum(y[:, k : k + t, k] for k in range(self.kt)) + self.bias.view(1, 1, -1, 1, 1)
            return y.transpose(1, 2)
        y = F.conv2d(frames, self.weight, self.bias, stride=(self.sh, self.sw), padding=(self.ph, self.pw))
        return y.reshape(b, t, y.shape[1], y.shape[2], y.shape[3]).transpose(1, 2)


class FramePool(nn.Module):
    """The stem's (1, 3, 3) / stride (1, 2, 2) max-pool as a MaxPool2d over (B, C*T, H, W)."""

    def __init__(self, pool: nn.MaxPool3d) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = pool.kernel_size[1:], pool.stride[1:], pool.padding[1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = F.max_pool2d(x.reshape(b, c * t, h, w), self.kernel, self.stride, self.padding)
        return y.reshape(b, c, t, y.shape[2], y.shape[3])


def factorized_for_export(model: SlowFast) -> SlowFast:
    """A copy of ``model`` (eval mode) whose conv/norm pairs and stem pools use only 2D operators."""
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Conv3d):
                norm_name = "norm" + name[len("conv"):] if name.startswith("conv") else name.replace("_conv", "_norm")
                setattr(module, name, Conv3dAs2d(child, getattr(module, norm_name)))
                setattr(module, norm_name, nn.Identity())
        if isinstance(module, Stem):
            module.pool = FramePool(module.pool)
    return model
