"""SlowFast video network (Feichtenhofer et al., ICCV 2019) as a feature extractor.

Written for this project from the paper and the published architecture (3D ResNet bottlenecks, two
pathways, Fast->Slow lateral fusion by a strided temporal convolution). It returns what the official
QVHighlights extractor stores per clip: the global average of each pathway's last stage, slow then
fast, concatenated (2048 + 256 = 2304 for R50). The classifier of the checkpoints is not part of it.

Shapes: slow (B, 3, T/alpha, H, W), fast (B, 3, T, H, W) -> (B, slow_dim + fast_dim). For the
official 224x224 crops and 8/32 frames the average equals the official head's AvgPool3d((8, 7, 7)) /
((32, 7, 7)) output.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import SlowFastConfig


def conv_norm(dim_in: int, dim_out: int, kernel: tuple[int, int, int], stride: tuple[int, int, int], eps: float) -> tuple[nn.Conv3d, nn.BatchNorm3d]:
    """A bias-free Conv3d with 'same' padding (kernel // 2 per axis) and its BatchNorm3d."""
    padding = tuple(k // 2 for k in kernel)
    return nn.Conv3d(dim_in, dim_out, kernel, stride=stride, padding=padding, bias=False), nn.BatchNorm3d(dim_out, eps=eps)


class Stem(nn.Module):
    """Conv (t x 7 x 7, spatial stride 2) + BN + ReLU + max-pool (1 x 3 x 3, stride 2): (B, 3, T, H, W) -> (B, C, T, H/4, W/4)."""

    def __init__(self, dim_out: int, temporal_kernel: int, eps: float) -> None:
        super().__init__()
        self.conv, self.norm = conv_norm(3, dim_out, (temporal_kernel, 7, 7), (1, 2, 2), eps)
        self.pool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.norm(self.conv(x))))


class Bottleneck(nn.Module):
    """t x 1 x 1 -> 1 x 3 x 3 (spatial stride) -> 1 x 1 x 1, each with BN, plus the (projected) shortcut, ReLU."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, temporal_kernel: int, stride: int, eps: float) -> None:
        super().__init__()
        self.conv_a, self.norm_a = conv_norm(dim_in, dim_inner, (temporal_kernel, 1, 1), (1, 1, 1), eps)
        self.conv_b, self.norm_b = conv_norm(dim_inner, dim_inner, (1, 3, 3), (1, stride, stride), eps)
        self.conv_c, self.norm_c = conv_norm(dim_inner, dim_out, (1, 1, 1), (1, 1, 1), eps)
        self.project = dim_in != dim_out or stride != 1
        if self.project:
            self.shortcut_conv, self.shortcut_norm = conv_norm(dim_in, dim_out, (1, 1, 1), (1, stride, stride), eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm_a(self.conv_a(x)))
        out = torch.relu(self.norm_b(self.conv_b(out)))
        out = self.norm_c(self.conv_c(out))
        shortcut = self.shortcut_norm(self.shortcut_conv(x)) if self.project else x
        return torch.relu(out + shortcut)


def res_stage(dim_in: int, dim_inner: int, dim_out: int, depth: int, temporal_kernel: int, stride: int, eps: float) -> nn.Sequential:
    """``depth`` bottlenecks; the first one changes width and applies the spatial stride."""
    return nn.Sequential(*[
        Bottleneck(dim_in if i == 0 else dim_out, dim_inner, dim_out, temporal_kernel, stride if i == 0 else 1, eps)
        for i in range(depth)
    ])


class FastToSlow(nn.Module):
    """Lateral connection: fast (B, C, T, H, W) -> (B, ratio*C, T/alpha, H, W) by a strided temporal conv, BN, ReLU."""

    def __init__(self, dim_fast: int, ratio: int, kernel: int, alpha: int, eps: float) -> None:
        super().__init__()
        self.conv, self.norm = conv_norm(dim_fast, dim_fast * ratio, (kernel, 1, 1), (alpha, 1, 1), eps)

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        """Slow features with the fused fast ones appended along the channels."""
        return torch.cat([slow, torch.relu(self.norm(self.conv(fast)))], dim=1)


class SlowFast(nn.Module):
    """Two-pathway 3D ResNet; ``forward(slow, fast)`` -> pooled features (B, slow_dim + fast_dim)."""

    def __init__(self, config: SlowFastConfig) -> None:
        super().__init__()
        self.config = config
        eps = config.bn_eps
        self.slow_stem = Stem(config.stem_dims[0], config.stem_temporal_kernels[0], eps)
        self.fast_stem = Stem(config.stem_dims[1], config.stem_temporal_kernels[1], eps)
        fast_widths = [config.stem_dims[1]] + [dims[1] for dims in config.out_dims[:3]]
        self.fusions = nn.ModuleList(
            FastToSlow(width, config.fusion_ratio, config.fusion_kernel, config.alpha, eps) for width in fast_widths
        )
        self.slow_stages, self.fast_stages = nn.ModuleList(), nn.ModuleList()
        for s in range(4):
            for p, stages in enumerate((self.slow_stages, self.fast_stages)):
                stages.append(res_stage(
                    config.stage_in_dims(s)[p], config.inner_dims[s][p], config.out_dims[s][p], config.depths[s],
                    config.temporal_kernels[s][p], config.spatial_strides[s], eps,
                ))

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        """slow (B, 3, T/alpha, H, W), fast (B, 3, T, H, W) float32, normalised -> (B, feature_dim)."""
        slow, fast = self.slow_stem(slow), self.fast_stem(fast)
        for s in range(4):
            slow = self.fusions[s](slow, fast)
            slow, fast = self.slow_stages[s](slow), self.fast_stages[s](fast)
        return torch.cat([slow.mean(dim=(2, 3, 4)), fast.mean(dim=(2, 3, 4))], dim=1)


def init_random_(model: SlowFast, seed: int = 0) -> SlowFast:
    """Seeded random weights and BN statistics that keep activations O(1) through the network.

    Convs: He-normal; BN: weights around 1 (0.2 on each block's last norm, so residual sums stay
    bounded), small biases, running mean/var near 0 / 1. For the bench, tests and the demo bundle.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv3d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
            elif isinstance(module, nn.BatchNorm3d):
                scale = 0.2 if name.endswith("norm_c") else 1.0
                n = module.num_features
                module.weight.copy_(scale * (0.75 + 0.5 * torch.rand(n, generator=generator)))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
    return model.eval()
