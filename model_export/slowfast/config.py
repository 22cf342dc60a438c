"""SlowFast network configuration, and how to read it off a checkpoint's weight shapes.

The released features use SlowFast R50 8x8 (Kinetics-400, PySlowFast's
``configs/Kinetics/c2/SLOWFAST_8x8_R50.yaml``): a Slow pathway (8 frames, 64-channel stem) and a Fast
pathway (32 frames, 8 channels, beta = 1/8) joined by lateral Fast->Slow fusions after the stem and after
res2, res3 and res4. Everything in this config except the strides and alpha shows in the weight
shapes, so :func:`config_from_shapes` rebuilds it from any checkpoint (R50, R101, or the tiny
untrained encoders of the demo bundle and the tests).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

Pair = tuple[int, int]  # (slow, fast)


@dataclass(frozen=True)
class SlowFastConfig:
    """Widths, depths and kernels of a two-pathway SlowFast ResNet (slow first, fast second).

    Attributes:
        stem_dims: output channels of the two stems.
        depths: bottleneck blocks per stage res2..res5 (same for both pathways).
        inner_dims: per stage, (slow, fast) bottleneck inner widths.
        out_dims: per stage, (slow, fast) output widths; the last stage's are the feature widths.
        stem_temporal_kernels: temporal size of each stem's conv (spatial is 7x7).
        temporal_kernels: per stage, (slow, fast) temporal size of every block's first 1x1 conv.
        fusion_ratio: a fusion conv maps C fast channels to ``fusion_ratio * C`` slow ones.
        fusion_kernel: temporal size of the fusion convs.
        alpha: frame-rate ratio fast/slow (the fusion convs' temporal stride).
        spatial_strides: per stage, the stride of its first block's 3x3 conv.
        bn_eps: BatchNorm epsilon.
    """

    stem_dims: Pair = (64, 8)
    depths: tuple[int, int, int, int] = (3, 4, 6, 3)
    inner_dims: tuple[Pair, Pair, Pair, Pair] = ((64, 8), (128, 16), (256, 32), (512, 64))
    out_dims: tuple[Pair, Pair, Pair, Pair] = ((256, 32), (512, 64), (1024, 128), (2048, 256))
    stem_temporal_kernels: Pair = (1, 5)
    temporal_kernels: tuple[Pair, Pair, Pair, Pair] = ((1, 3), (1, 3), (3, 3), (3, 3))
    fusion_ratio: int = 2
    fusion_kernel: int = 7
    alpha: int = 4
    spatial_strides: tuple[int, int, int, int] = (1, 2, 2, 2)
    bn_eps: float = 1e-5

    @property
    def feature_dims(self) -> Pair:
        """(slow, fast) widths of the pooled features; their sum is the output width (2304 for R50)."""
        return self.out_dims[-1]

    @property
    def feature_dim(self) -> int:
        return sum(self.feature_dims)

    def stage_in_dims(self, stage: int) -> Pair:
        """(slow, fast) input widths of stage ``stage`` (0 = res2); the slow one includes the fused channels."""
        slow, fast = self.stem_dims if stage == 0 else self.out_dims[stage - 1]
        return slow + self.fusion_ratio * fast, fast

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


R50_8X8 = SlowFastConfig()


def tiny_config(stem_dims: Pair = (8, 2), feature_dims: Pair = (2048, 256)) -> SlowFastConfig:
    """A small SlowFast with the given output widths (one block per stage): cheap, same interfaces.

    Its fast stem is 1x7x7 (R50: 5x7x7): on 32 full-size frames the stem convolution dominates the cost of
    a narrow network, and a temporal kernel of 1 makes it five times cheaper.
    """
    slow, fast = stem_dims
    return SlowFastConfig(
        stem_dims=stem_dims,
        depths=(1, 1, 1, 1),
        stem_temporal_kernels=(1, 1),
        inner_dims=((slow // 2, fast), (slow, fast), (slow * 2, fast * 2), (slow * 4, fast * 4)),
        out_dims=((slow * 2, fast * 2), (slow * 4, fast * 4), (slow * 8, fast * 8), feature_dims),
    )


def proportional_config(width: int, depths: tuple[int, int, int, int] = (3, 4, 6, 3), beta_inv: int = 8) -> SlowFastConfig:
    """PySlowFast's width rule for ``WIDTH_PER_GROUP = width`` (64 = R50): what pytorchvideo builds too."""
    inner = tuple((width * 2**s, width * 2**s // beta_inv) for s in range(4))
    out = tuple((4 * w, 4 * w // beta_inv) for w, _ in inner)
    return SlowFastConfig(stem_dims=(width, width // beta_inv), depths=depths, inner_dims=inner, out_dims=out)


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]], *, alpha: int = 4) -> SlowFastConfig:
    """Rebuild the config from our state-dict names -> shapes (see ``model.SlowFast``).

    Raises:
        ValueError: naming a missing tensor when the names do not describe a SlowFast network.
    """
    def shape(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise ValueError(f"not a SlowFast checkpoint: no weight for {name}")
        return tuple(shapes[name])

    depths = tuple(
        sum(1 for k in shapes if k.startswith(f"slow_stages.{s}.") and k.endswith(".conv_a.weight")) for s in range(4)
    )
    if 0 in depths:
        raise ValueError(f"not a SlowFast checkpoint: blocks per stage {depths} (every stage needs at least one)")
    stems = shape("slow_stem.conv.weight"), shape("fast_stem.conv.weight")
    inner, out, temporal = [], [], []
    for s in range(4):
        a = [shape(f"{p}_stages.{s}.0.conv_a.weight") for p in ("slow", "fast")]
        c = [shape(f"{p}_stages.{s}.0.conv_c.weight") for p in ("slow", "fast")]
        inner.append((a[0][0], a[1][0]))
        out.append((c[0][0], c[1][0]))
        temporal.append((a[0][2], a[1][2]))
    fusion = shape("fusions.0.conv.weight")
    return SlowFastConfig(
        stem_dims=(stems[0][0], stems[1][0]),
        depths=depths,  # type: ignore[arg-type]
        inner_dims=tuple(inner),  # type: ignore[arg-type]
        out_dims=tuple(out),  # type: ignore[arg-type]
        stem_temporal_kernels=(stems[0][2], stems[1][2]),
        temporal_kernels=tuple(temporal),  # type: ignore[arg-type]
        fusion_ratio=fusion[0] // fusion[1],
        fusion_kernel=fusion[2],
        alpha=alpha,
    )
