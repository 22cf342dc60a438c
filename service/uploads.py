"""Parse and validate uploaded feature files (``.npy`` / ``.npz``) into model-ready arrays.

Video uploads come in the bundle's *video layout without TEF*:

- ``.npy``: one ``(T, D)`` array, ``D`` = sum of the manifest's group dims, groups concatenated in
  manifest order (e.g. SlowFast 2304 then CLIP 512);
- ``.npz``: one ``(T_g, d_g)`` array per group, named as the manifest's groups (e.g. ``slowfast``,
  ``clip``); groups of different lengths are cut to the shortest, as the official dataset does.

fp16 and fp32 are accepted. Files are loaded with ``allow_pickle=False``; anything unreadable is
a 422 that says what was wrong, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import io
import zipfile
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from service.errors import InvalidInput, ServiceError
from trdetr_common.features import FeatureError, build_text_features, build_video_features, truncation_note
from trdetr_common.manifest import PreprocessingContract

NPY_TYPES = ("application/x-npy", "application/npy")
NPZ_TYPES = ("application/x-npz", "application/npz", "application/zip")
ACCEPTED_DTYPES = (np.dtype("float16"), np.dtype("float32"))
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class VideoFeatures:
    """Normalised video features without TEF, ``(T, D)`` float32, plus what the client should know."""

    features: np.ndarray
    group_lengths: dict[str, int]
    notes: list[str] = field(default_factory=list)

    @property
    def num_clips(self) -> int:
        return int(self.features.shape[0])


def file_format(content_type: str | None, body: bytes) -> str:
    """``"npy"`` or ``"npz"`` from the Content-Type (``application/octet-stream`` is sniffed); else 415."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime in NPY_TYPES:
        return "npy"
    if mime in NPZ_TYPES:
        return "npz"
    if mime == "application/octet-stream":
        if body.startswith(_NPY_MAGIC):
            return "npy"
        if body.startswith(_ZIP_MAGIC):
            return "npz"
    raise ServiceError(
        415, "unsupported_media_type",
        f"Content-Type '{mime or '<none>'}' is not a feature file. Send the raw bytes of a .npy file as "
        "application/x-npy or of a .npz file as application/x-npz.",
        {"accepted": [*NPY_TYPES, *NPZ_TYPES, "application/octet-stream (sniffed)"]},
    )


def decode_base64(data: str, what: str) -> bytes:
    """Strict base64 decoding; a 422 naming the field on bad input."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what} is not valid base64: {exc}") from None


def _check_npy_header(stream: IO[bytes], available: int, what: str) -> None:
    """Refuse a .npy whose header declares more data than the file holds, before numpy allocates it.

    ``available``: bytes of the whole .npy (header included). Raises 422 ``corrupt_file``.
    """
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f".npy format version {version} is not supported; save with numpy.save")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise InvalidInput(f"{what} is not a readable .npy file ({exc}).", code="corrupt_file") from None
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > available:
        raise InvalidInput(
            f"{what} declares shape {list(shape)} ({declared} bytes of data) but holds only {available} bytes.",
            code="corrupt_file",
        )


def _load_npy(body: bytes, what: str) -> np.ndarray:
    _check_npy_header(io.BytesIO(body), len(body), what)
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"{what} is not a readable .npy file ({exc}).", code="corrupt_file") from None
    if not isinstance(array, np.ndarray):
        raise InvalidInput(f"{what} must be a .npy file, not a .npz archive.", code="corrupt_file")
    return array


def _load_npz(body: bytes, max_unpacked_bytes: int) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            members = archive.infolist()
            unpacked = sum(info.file_size for info in members)
            if unpacked > max_unpacked_bytes:
                raise InvalidInput(
                    f"The .npz unpacks to {unpacked} bytes, more than the {max_unpacked_bytes} allowed.",
                    code="corrupt_file",
                )
            for info in members:
                with archive.open(info) as member:
                    _check_npy_header(member, info.file_size, f"The .npz member '{info.filename}'")
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, NotImplementedError) as exc:
        raise InvalidInput(f"The body is not a readable .npz file ({exc}).", code="corrupt_file") from None


def _check_array(array: np.ndarray, name: str, dim: int, row: str = "clip") -> None:
    """2-D ``(rows, dim)``, fp16/fp32, at least one row, finite; ``row`` names a row in messages."""
    if array.dtype not in ACCEPTED_DTYPES:
        raise InvalidInput(f"'{name}' has dtype {array.dtype}; send float16 or float32.", code="bad_dtype")
    if array.ndim != 2:
        raise InvalidInput(f"'{name}' must be 2-D ({row}s, {dim}), got shape {list(array.shape)}.", code="bad_shape")
    if array.shape[1] != dim:
        raise InvalidInput(
            f"'{name}' has {array.shape[1]} features per {row}; the model expects {dim}.",
            {"expected_dim": dim, "got_dim": int(array.shape[1])}, code="bad_shape",
        )
    if array.shape[0] < 1:
        raise InvalidInput(f"'{name}' has no {row}s; send at least one.", code="bad_shape")
    if not np.isfinite(array).all():
        first = int(np.nonzero(~np.isfinite(array).all(axis=1))[0][0])
        raise InvalidInput(
            f"'{name}' contains NaN or infinite values (first in {row} {first}).", {row: first},
            code="non_finite",
        )


def _groups_from_npy(array: np.ndarray, pre: PreprocessingContract) -> dict[str, np.ndarray]:
    """Split a full-layout (T, D) array into the manifest's groups."""
    full = sum(g.dim for g in pre.video_groups)
    if array.ndim == 2 and pre.tef and array.shape[1] == full + 2:
        raise InvalidInput(
            f"The array has {full + 2} columns: it looks like it includes the 2 TEF columns. Send the "
            f"{full} raw feature columns only; the service appends TEF itself.", code="bad_shape",
        )
    _check_array(array, "features", full)
    bounds = np.cumsum([0] + [g.dim for g in pre.video_groups])
    return {g.name: array[:, bounds[i]:bounds[i + 1]] for i, g in enumerate(pre.video_groups)}


def _groups_from_npz(arrays: dict[str, np.ndarray], pre: PreprocessingContract) -> dict[str, np.ndarray]:
    expected = [g.name for g in pre.video_groups]
    missing = [name for name in expected if name not in arrays]
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise InvalidInput(
            f"The .npz must hold exactly the arrays {expected}; missing {missing}, unexpected {extra}.",
            {"expected": expected, "missing": missing, "unexpected": extra}, code="bad_groups",
        )
    for group in pre.video_groups:
        _check_array(arrays[group.name], group.name, group.dim)
    return {name: arrays[name] for name in expected}


def parse_video(
    body: bytes, fmt: str, pre: PreprocessingContract, *, max_clips: int, max_unpacked_bytes: int
) -> VideoFeatures:
    """Validate an uploaded video and normalise it as the manifest says.

    Returns features ``(T, D)`` float32 without TEF; T = the shortest group's length.
    """
    if not body:
        raise InvalidInput("The body is empty; send the bytes of a .npy or .npz file.", code="corrupt_file")
    if fmt == "npy":
        groups = _groups_from_npy(_load_npy(body, "The body"), pre)
    else:
        groups = _groups_from_npz(_load_npz(body, max_unpacked_bytes), pre)
    lengths = {name: int(array.shape[0]) for name, array in groups.items()}
    num_clips = min(lengths.values())
    if num_clips > max_clips:
        raise InvalidInput(
            f"The video has {num_clips} clips; at most {max_clips} are accepted (the model was trained on "
            f"videos of up to {pre.max_video_clips} clips of {pre.clip_length_s:g} s). Split the video.",
            {"num_clips": num_clips, "max_clips": max_clips}, code="video_too_long",
        )
    try:
        features = build_video_features(
            list(groups.values()), normalize=pre.l2_normalize_video, tef=False, eps=pre.l2_eps
        )
    except FeatureError as exc:
        raise InvalidInput(str(exc)) from None
    note = truncation_note(lengths)
    return VideoFeatures(features=features, group_lengths=lengths, notes=[note] if note else [])


def video_meta(parsed: VideoFeatures) -> dict[str, Any]:
    """What a stored video's meta records about its features (``FeatureStore.put`` adds the rest).

    One definition for every way features are stored: the features upload and ingestion jobs.
    """
    return {"num_clips": parsed.num_clips, "dim": int(parsed.features.shape[1]),
            "group_lengths": parsed.group_lengths, "notes": parsed.notes}


def parse_query_features(body: bytes, pre: PreprocessingContract, index: int) -> np.ndarray:
    """A precomputed query ``(L, text_dim)`` (.npy bytes) -> normalised text features (L, text_dim)."""
    what = f"queries[{index}].features_b64"
    array = _load_npy(body, what)
    _check_array(array, what, pre.text_dim, row="token")
    if array.shape[0] > pre.max_text_tokens:
        raise InvalidInput(
            f"{what} has {array.shape[0]} tokens; the model takes at most {pre.max_text_tokens}. "
            "Keep the first tokens only.",
            {"tokens": int(array.shape[0]), "max_tokens": pre.max_text_tokens}, code="query_too_long",
        )
    return build_text_features(array, normalize=pre.l2_normalize_text, max_tokens=pre.max_text_tokens, eps=pre.l2_eps)
