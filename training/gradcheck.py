"""Compact fingerprints of parameter gradients, to compare a training step with another implementation's.

A full set of gradients is as large as the model (17 MB for the released one); a fingerprint keeps, per
parameter tensor ``g`` (any shape, flattened to ``n`` float64 entries):

- ``norm``: ``||g||``;
- ``dots`` (K,): ``g . u_k`` for K seeded random unit directions ``u_k`` (i.i.d. symmetric entries from
  random bytes, normalised);
- ``entry_index`` / ``entries`` (S,): S seeded sampled entries of ``g``.

The directions and entries depend only on the tensor's name and size (legacy ``numpy.random.RandomState``,
whose streams numpy keeps stable across versions), so a fingerprint written by one program is reproduced by
another from its own gradients. Any real difference between two gradients shows in the dot products (two
different vectors agree on K random projections with probability 0); rounding noise does not.

``compare`` measures the differences relative to each tensor's gradient scale: the norm relative to
``||g_ref||``; a dot product relative to ``||g_ref|| / sqrt(n)``, the typical size of a random unit projection
(and of one entry), an entry relative to ``|g_ref[i]| + ||g_ref|| / sqrt(n)``. So a difference ``d`` between
two gradients shows in the projections as about ``||d|| / ||g||`` whatever the tensor's size.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

NUM_DIRECTIONS = 4
NUM_ENTRIES = 8


@dataclass(frozen=True)
class GradientFingerprint:
    """Fingerprint of one parameter tensor's gradient (``has_grad`` False: the parameter got no gradient)."""

    size: int
    has_grad: bool
    norm: float
    dots: np.ndarray  # (NUM_DIRECTIONS,) float64
    entry_index: np.ndarray  # (NUM_ENTRIES,) int64 flat indices
    entries: np.ndarray  # (NUM_ENTRIES,) float64


def _rng(name: str, size: int) -> np.random.RandomState:
    return np.random.RandomState(zlib.crc32(f"{name}:{size}".encode()))


def probes(name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded unit directions (NUM_DIRECTIONS, size) and entry indices (NUM_ENTRIES,) of one tensor."""
    rng = _rng(name, size)
    # odd integers -255..255, uniform and zero-mean: as good a random direction as a Gaussian one, and
    # drawn as raw bytes about 20 times faster (the released model has 4.5 M parameters)
    raw = np.frombuffer(rng.bytes(NUM_DIRECTIONS * size), dtype=np.int8).reshape(NUM_DIRECTIONS, size)
    directions = raw.astype(np.float64) * 2 + 1
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions, rng.randint(0, size, NUM_ENTRIES).astype(np.int64)


def fingerprint(name: str, size: int, grad: np.ndarray | None) -> GradientFingerprint:
    """Fingerprint of ``grad`` (any shape with ``size`` entries, or None for "no gradient")."""
    directions, index = probes(name, size)
    if grad is None:
        return GradientFingerprint(size, False, 0.0, np.zeros(NUM_DIRECTIONS), index, np.zeros(NUM_ENTRIES))
    flat = np.asarray(grad, dtype=np.float64).reshape(-1)
    if flat.size != size:
        raise ValueError(f"{name}: gradient has {flat.size} entries, expected {size}")
    return GradientFingerprint(size, True, float(np.linalg.norm(flat)), directions @ flat, index, flat[index])


def fingerprints(grads: Mapping[str, tuple[int, np.ndarray | None]]) -> dict[str, GradientFingerprint]:
    """``{name: (size, grad or None)}`` -> ``{name: fingerprint}``."""
    return {name: fingerprint(name, size, grad) for name, (size, grad) in grads.items()}


def relative_difference(ours: GradientFingerprint, ref: GradientFingerprint, floor: float = 0.0) -> float:
    """Largest difference between two fingerprints of one tensor, relative to the reference's scale
    ``max(||g_ref||, floor)``.

    0 for two tensors that both got no gradient; a tensor without a gradient compares as an all-zero one.
    """
    if not ours.has_grad and not ref.has_grad:
        return 0.0
    if not np.array_equal(ours.entry_index, ref.entry_index):
        raise ValueError("fingerprints of different probes (name or size differ)")
    scale = max(ref.norm, floor)
    if scale == 0.0:
        return 0.0 if ours.norm == 0.0 else math.inf
    typical = scale / math.sqrt(ref.size)  # of one entry, and of a projection on a random unit direction
    diffs = [abs(ours.norm - ref.norm) / scale,
             float(np.max(np.abs(ours.dots - ref.dots))) / typical,
             float(np.max(np.abs(ours.entries - ref.entries) / (np.abs(ref.entries) + typical)))]
    return max(diffs)


def compare(ours: Mapping[str, GradientFingerprint], ref: Mapping[str, GradientFingerprint],
            floor: float = 0.0) -> dict[str, float]:
    """Per-tensor ``relative_difference``; a name present on one side only raises KeyError.

    ``floor``: gradients smaller than this are measured relative to it instead of their own norm. Some
    gradients are zero in exact arithmetic (a bias added to every attention key of a softmax, a constant
    added to every saliency score of a softmax or margin loss) and only rounding noise of ~1e-16 in float64,
    which differs between any two implementations; a floor of ~1e-8 times the total gradient norm keeps
    that noise from counting while every real gradient is still compared relative to its own size.
    """
    if set(ours) != set(ref):
        raise KeyError(f"parameter names differ: only ours {sorted(set(ours) - set(ref))}, "
                       f"only reference {sorted(set(ref) - set(ours))}")
    return {name: relative_difference(ours[name], ref[name], floor) for name in ref}


def total_norm(prints: Mapping[str, GradientFingerprint]) -> float:
    """Norm of all gradients together (``clip_grad_norm_``'s total norm)."""
    return math.sqrt(sum(p.norm ** 2 for p in prints.values()))


def to_arrays(prints: Mapping[str, GradientFingerprint], prefix: str) -> dict[str, np.ndarray]:
    """Flatten fingerprints (in the mapping's order) into ``prefix``-named arrays for ``np.savez``."""
    names = list(prints)
    return {
        f"{prefix}names": np.array(names),
        f"{prefix}size": np.array([prints[n].size for n in names], dtype=np.int64),
        f"{prefix}has_grad": np.array([prints[n].has_grad for n in names]),
        f"{prefix}norm": np.array([prints[n].norm for n in names]),
        f"{prefix}dots": np.stack([prints[n].dots for n in names]),
        f"{prefix}entry_index": np.stack([prints[n].entry_index for n in names]),
        f"{prefix}entries": np.stack([prints[n].entries for n in names]),
    }


def from_arrays(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, GradientFingerprint]:
    """Inverse of ``to_arrays``."""
    names = [str(n) for n in arrays[f"{prefix}names"]]
    return {
        name: GradientFingerprint(int(arrays[f"{prefix}size"][i]), bool(arrays[f"{prefix}has_grad"][i]),
                                  float(arrays[f"{prefix}norm"][i]), arrays[f"{prefix}dots"][i],
                                  arrays[f"{prefix}entry_index"][i], arrays[f"{prefix}entries"][i])
        for i, name in enumerate(names)
    }


def seeded_parameters(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Deterministic float64 weights from each tensor's name and shape (no checkpoint file needed).

    Lets two implementations whose parameters share names load the same random model: matrices (>= 2 dims)
    Xavier-uniform (bound sqrt(6 / (fan_in + fan_out))); normalisation scales (vectors named ``*norm*.weight``
    or ``*LayerNorm.weight``) 1 + 0.1 N(0, 1); PReLU slopes (``*activation.weight``) 0.25 + 0.05 N(0, 1);
    every other vector (biases) 0.1 N(0, 1), so no tensor is left at a symmetric zero.
    """
    weights = {}
    for name, shape in shapes.items():
        rng = _rng(f"weights:{name}", int(np.prod(shape)))
        if len(shape) >= 2:
            bound = math.sqrt(6.0 / (shape[0] + int(np.prod(shape[1:]))))
            weights[name] = rng.uniform(-bound, bound, shape)
        elif name.endswith("activation.weight"):
            weights[name] = 0.25 + 0.05 * rng.standard_normal(shape)
        elif name.endswith(".weight") and "norm" in name.lower():
            weights[name] = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            weights[name] = 0.1 * rng.standard_normal(shape)
    return weights
