"""Model inputs built exactly as the official TR-DETR dataset builds them (numpy only).

The official ``StartEndDataset`` does, per video feature group (e.g. SlowFast, CLIP image):
load ``[:max_v_l]`` -> ``astype(float32)`` -> L2-normalise each clip row on its own; then it
truncates every group to the shortest one, concatenates the groups along the feature axis and
appends the two temporal-endpoint-feature (TEF) columns ``[i / T, (i + 1) / T]``. Text token
features are truncated to ``max_q_l`` tokens, then L2-normalised per token.

Every function here reproduces those steps bit for bit in float32 (the official code runs them
in numpy / float32 torch on the CPU), so the service, the exporter and training feed the model
byte-identical inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "FeatureError",
    "build_text_features",
    "build_video_features",
    "l2_normalize",
    "pad_batch",
    "tef_columns",
    "tef_offsets",
    "truncation_note",
    "with_tef",
]


class FeatureError(ValueError):
    """Features that cannot be turned into model inputs; the message says what to fix."""


def l2_normalize(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Divide each row by its L2 norm plus ``eps`` (official ``l2_normalize_np_array``).

    Args:
        x: (..., dim) array, cast to float32 first as the official loader does.
        eps: added to the norm, so an all-zero row stays zero.
    Returns:
        (..., dim) float32 array.
    """
    x = np.asarray(x, dtype=np.float32)
    # float32 norm + Python float stays float32 (NEP 50), as in the official numpy code.
    with np.errstate(over="ignore"):  # rows whose squares overflow are redone just below
        norm = np.linalg.norm(x, axis=-1, keepdims=True)
    out = x / (norm + eps)
    overflowed = np.isinf(norm[..., 0]) & np.isfinite(x).all(axis=-1)
    if overflowed.any():
        out[overflowed] = _normalize_huge_rows(x[overflowed], eps)
    return out


def _normalize_huge_rows(rows: np.ndarray, eps: float) -> np.ndarray:
    """L2-normalise finite rows whose float32 squares overflow (values near 3e38).

    The official formula would give them an infinite norm, and the rows would become zeros. Here
    each row is first divided by its largest magnitude, so ``x / (||x|| + eps)`` is computed as
    ``s / (||s|| + eps / m)`` with ``s = x / m``, ``m = max|x|``: the same quantity, without overflow.
    Every other row keeps the official float32 formula bit for bit.
    """
    scale = np.abs(rows).max(axis=-1, keepdims=True)
    scaled = rows / scale
    return scaled / (np.linalg.norm(scaled, axis=-1, keepdims=True) + np.float32(eps) / scale)


def tef_columns(num_clips: int) -> np.ndarray:
    """Temporal endpoint features ``[i / T, (i + 1) / T]`` of each clip.

    The official code computes ``st = torch.arange(0, T, 1.0) / T`` and ``ed = st + 1.0 / T`` on
    float32 CPU tensors: the integers ``i`` and ``T`` are exact in float32, torch divides in float32
    (true division on the CPU, no reciprocal trick), and the Python scalar ``1.0 / T`` is cast to
    float32 before a float32 addition. numpy float32 arithmetic is the same IEEE arithmetic.

    Args:
        num_clips: T, the number of clips (>= 1).
    Returns:
        (T, 2) float32 array.
    """
    if num_clips < 1:
        raise FeatureError(f"num_clips must be >= 1 to build TEF columns, got {num_clips}")
    start = np.arange(num_clips, dtype=np.float32) / np.float32(num_clips)
    end = start + np.float32(1.0 / num_clips)
    return np.stack([start, end], axis=1)


def _as_float32_2d(array: np.ndarray, what: str) -> np.ndarray:
    """Check a (rows, dim) numeric, finite, non-empty array and cast it to float32."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise FeatureError(f"{what} must be a 2-D array (rows, dim), got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise FeatureError(
            f"{what} has dtype {array.dtype}, which cannot be cast to float32; send numeric features"
        )
    if array.shape[0] == 0:
        raise FeatureError(f"{what} is empty (0 rows); send at least one row")
    if array.shape[1] == 0:
        raise FeatureError(f"{what} has feature dim 0; send at least one feature column")
    with np.errstate(over="ignore"):  # overflow to inf is reported just below
        array = array.astype(np.float32)
    if not np.isfinite(array).all():
        bad_row = int(np.nonzero(~np.isfinite(array).all(axis=1))[0][0])
        raise FeatureError(
            f"{what} contains NaN or infinite values (first in row {bad_row}, or too large for float32)"
        )
    return array


def build_video_features(
    groups: Sequence[np.ndarray],
    *,
    normalize: bool | Sequence[bool] = True,
    tef: bool = True,
    max_clips: int | None = None,
    eps: float = 1e-5,
) -> np.ndarray:
    """Per-clip video features for the model, as official ``_get_video_feat_by_vid`` + TEF.

    Args:
        groups: feature groups in the model's order, each (T_g, d_g).
        normalize: L2-normalise each group's rows on their own (official ``normalize_v``); one flag per
            group when groups differ (e.g. video groups then audio groups).
        tef: append the two TEF columns (official ``ctx_mode`` containing ``tef``).
        max_clips: keep at most this many clips of every group (official ``max_v_l``), applied
            before normalising, then all groups are cut to the shortest (official order).
        eps: normalisation epsilon.
    Returns:
        (T, sum d_g [+ 2]) float32 array, T = min(max_clips, min_g T_g).
    """
    if len(groups) == 0:
        raise FeatureError("no video feature groups given; send at least one (clips, dim) array")
    if max_clips is not None and max_clips < 1:
        raise FeatureError(f"max_clips must be >= 1 or None, got {max_clips}")
    flags = [normalize] * len(groups) if isinstance(normalize, bool) else list(normalize)
    if len(flags) != len(groups):
        raise FeatureError(f"{len(flags)} normalisation flags for {len(groups)} feature groups")
    prepared = []
    for index, (group, flag) in enumerate(zip(groups, flags, strict=True)):
        array = _as_float32_2d(group, f"video feature group {index}")[:max_clips]
        prepared.append(l2_normalize(array, eps) if flag else array)
    num_clips = min(len(array) for array in prepared)
    video = np.concatenate([array[:num_clips] for array in prepared], axis=1)
    if tef:
        video = np.concatenate([video, tef_columns(num_clips)], axis=1)
    return video


def tef_offsets(tef_after: Sequence[int]) -> tuple[int, ...]:
    """Model-input columns where each TEF pair starts, for TEF pairs inserted after the stored columns
    ``tef_after`` (ascending): pair ``i`` lands at ``tef_after[i] + 2 * i``."""
    return tuple(int(pos) + 2 * index for index, pos in enumerate(tef_after))


def with_tef(features: np.ndarray, tef_after: Sequence[int]) -> np.ndarray:
    """Insert the TEF columns of the whole sequence into normalised features.

    The official audio dataset appends the same TEF pair after the video groups and again after the
    audio features (``start_end_dataset_audio``); Lighthouse appends it after the video groups only;
    a video-only model has it at the end. ``tef_after`` says where, in stored-column coordinates.

    Args:
        features: (T, D) float32 stored features (groups concatenated, no TEF).
        tef_after: ascending stored-column positions in [0, D] after which one TEF pair goes.
    Returns:
        (T, D + 2 * len(tef_after)) float32; one allocation.
    """
    num_clips, dim = features.shape
    out = np.empty((num_clips, dim + 2 * len(tef_after)), dtype=np.float32)
    if not tef_after:
        out[:] = features
        return out
    tef = tef_columns(num_clips)
    src = dst = 0
    for pos in tef_after:
        out[:, dst:dst + pos - src] = features[:, src:pos]
        dst += pos - src
        out[:, dst:dst + 2] = tef
        dst, src = dst + 2, pos
    out[:, dst:] = features[:, src:]
    return out


def build_text_features(
    tokens: np.ndarray,
    *,
    normalize: bool = True,
    max_tokens: int | None = 32,
    eps: float = 1e-5,
) -> np.ndarray:
    """Per-token query features, as official ``_get_query_feat_by_qid``.

    The official order is truncate to ``max_q_l`` then normalise (per token, so the order does
    not change the values).

    Args:
        tokens: (L, D) token features (e.g. CLIP text ``last_hidden_state``).
        normalize: L2-normalise each token (official ``normalize_t``).
        max_tokens: keep the first ``max_tokens`` tokens (official ``max_q_l`` = 32); None keeps all.
        eps: normalisation epsilon.
    Returns:
        (min(L, max_tokens), D) float32 array.
    """
    if max_tokens is not None and max_tokens < 1:
        raise FeatureError(f"max_tokens must be >= 1 or None, got {max_tokens}")
    text = _as_float32_2d(tokens, "text token features")[:max_tokens]
    return l2_normalize(text, eps) if normalize else text


def pad_batch(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad a list of sequences into one batch, as official ``pad_sequences_1d``.

    Args:
        arrays: B arrays (L_i, D) with the same D.
    Returns:
        padded (B, L_max, D) float32 with zeros after each row's length, and
        mask (B, L_max) float32, 1.0 on valid rows and 0.0 on padding.
    """
    if len(arrays) == 0:
        raise FeatureError("cannot pad an empty batch; send at least one sequence")
    arrays = [np.asarray(array) for array in arrays]
    trailing = arrays[0].shape[1:]
    for index, array in enumerate(arrays):
        if array.ndim < 1 or array.shape[1:] != trailing:
            raise FeatureError(
                f"sequence {index} has shape {array.shape}; every sequence must be (length, *{trailing})"
            )
    lengths = [len(array) for array in arrays]
    padded = np.zeros((len(arrays), max(lengths), *trailing), dtype=np.float32)
    mask = np.zeros((len(arrays), max(lengths)), dtype=np.float32)
    for row, (array, length) in enumerate(zip(arrays, lengths, strict=True)):
        padded[row, :length] = array
        mask[row, :length] = 1.0
    return padded, mask


def truncation_note(lengths: dict[str, int]) -> str | None:
    """A human note when feature groups have different clip counts, else None.

    Args:
        lengths: group name -> number of clips sent for that group.
    Returns:
        e.g. ``"video feature groups differ in length (slowfast: 75, clip: 74 clips); all were cut to
        the shortest, 74 clips, as the official dataset does"``; None when all lengths agree.
    """
    if len(set(lengths.values())) <= 1:
        return None
    listed = ", ".join(f"{name}: {count}" for name, count in lengths.items())
    shortest = min(lengths.values())
    return (
        f"video feature groups differ in length ({listed} clips); all were cut to the shortest, "
        f"{shortest} clips, as the official dataset does"
    )
