"""Parse and validate uploaded feature files (``.npy`` / ``.npz``) into model-ready arrays.

Video uploads come in the bundle's *feature layout without TEF*:

- ``.npy``: one ``(T, D)`` array, ``D`` = sum of the manifest's group dims, groups concatenated in
  manifest order (e.g. SlowFast 2304 then CLIP 512), then the audio groups of an audio bundle (PANN 2048);
- ``.npz``: one ``(T_g, d_g)`` array per group, named as the manifest's groups (e.g. ``slowfast``,
  ``clip``, and ``pann`` for an audio bundle); groups of different lengths (audio included) are cut to the
  shortest, as the official datasets do.

A bundle without audio refuses an audio group, and an audio bundle refuses features without its
audio groups, each with a 422 ``bad_groups`` / ``bad_shape`` that says which groups the model takes.

fp16, fp32 and fp64 (numpy's default, converted to fp32) are accepted. Files are loaded with
``allow_pickle=False``; anything unreadable is a 422 that says what was wrong, never a 500.

A ``.npz`` is a zip, and a small deflated member can inflate to gigabytes. So every member's ``.npy``
header (shape, dtype, order: its first bytes) is read and checked first -- names, widths, dtypes and
the clip limit -- and only then are the rows the video needs inflated: at most ``T x D`` values, never
what a member merely declares.
"""

from __future__ import annotations

import binascii
import functools
import io
import zipfile
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pybase64

from service.errors import InvalidInput, ServiceError
from trdetr_common.features import FeatureError, build_text_features, build_video_features, truncation_note
from trdetr_common.manifest import PreprocessingContract

NPY_TYPES = ("application/x-npy", "application/npy")
NPZ_TYPES = ("application/x-npz", "application/npz", "application/zip")
ACCEPTED_FLOAT_SIZES = (2, 4, 8)  # float16, float32, float64 (converted to float32), either byte order
_FLOAT32_MAX = float(np.finfo(np.float32).max)
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
        raise InvalidInput(
            "The application/octet-stream body is neither a .npy file (magic \\x93NUMPY) nor a .npz (zip) file.",
            code="corrupt_file",
        )
    raise ServiceError(
        415, "unsupported_media_type",
        f"Content-Type '{mime or '<none>'}' is not a feature file. Send the raw bytes of a .npy file as "
        "application/x-npy or of a .npz file as application/x-npz.",
        {"accepted": [*NPY_TYPES, *NPZ_TYPES, "application/octet-stream (sniffed)"]},
    )


def decode_base64(data: str, what: str) -> bytes:
    """Strict base64 decoding; a 422 naming the field on bad input."""
    try:
        return pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what} is not valid base64: {exc}") from None


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header declares: shape, dtype and memory order."""

    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize


_NPY_ERRORS = (ValueError, OSError, EOFError, SyntaxError, zipfile.BadZipFile)


def _parse_npy_header(stream: IO[bytes]) -> NpyHeader:
    """Read (only) the header of a ``.npy`` stream (numpy's own reader; its errors propagate)."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f".npy format version {version} is not supported; save with numpy.save")
    return NpyHeader(tuple(shape), bool(fortran), dtype)


def _read_npy_header(stream: IO[bytes], what: str) -> NpyHeader:
    """Read (only) the header of a ``.npy`` stream; 422 ``corrupt_file`` when it is not one."""
    try:
        return _parse_npy_header(stream)
    except _NPY_ERRORS as exc:
        raise InvalidInput(f"{what} is not a readable .npy file ({exc}).", code="corrupt_file") from None


def _npy_prefix(body: bytes) -> bytes:
    """The magic string, version, header length and header of a ``.npy`` file (all of ``body`` if shorter)."""
    if len(body) >= 12 and body[:6] == b"\x93NUMPY":
        if body[6] == 1:
            return body[:10 + int.from_bytes(body[8:10], "little")]
        return body[:12 + int.from_bytes(body[8:12], "little")]
    return body[:64]


@functools.lru_cache(maxsize=64)
def _npy_header_of(prefix: bytes) -> tuple[NpyHeader, int]:
    """(header, offset of the data) of a ``.npy`` that starts with ``prefix``.

    Cached by the header bytes: numpy parses a header with ``ast.literal_eval`` (~0.1 ms, once per query of
    every search request), and clients send the same few shapes over and over.
    """
    stream = io.BytesIO(prefix)
    return _parse_npy_header(stream), stream.tell()


def _check_declared_size(header: NpyHeader, available: int, what: str) -> None:
    """Refuse a header that declares more data than the file holds, before numpy allocates it."""
    if header.nbytes > available:
        raise InvalidInput(
            f"{what} declares shape {list(header.shape)} ({header.nbytes} bytes of data) but holds only "
            f"{available} bytes.", code="corrupt_file",
        )


def _load_npy(body: bytes, what: str) -> np.ndarray:
    """The array of a ``.npy`` file (a writable copy, as ``np.load`` gives); 422 ``corrupt_file`` when it is
    not a complete, pickle-free one."""
    try:
        header, offset = _npy_header_of(_npy_prefix(body))
    except _NPY_ERRORS as exc:
        raise InvalidInput(f"{what} is not a readable .npy file ({exc}).", code="corrupt_file") from None
    _check_declared_size(header, len(body) - offset, what)
    if header.dtype.hasobject:
        raise InvalidInput(f"{what} is not a readable .npy file (it holds Python objects, which would need "
                           "pickle; send a numeric array).", code="corrupt_file")
    count = header.nbytes // header.dtype.itemsize if header.dtype.itemsize else 0
    try:
        flat = np.frombuffer(body, dtype=header.dtype, count=count, offset=offset)
    except ValueError as exc:
        raise InvalidInput(f"{what} is not a readable .npy file ({exc}).", code="corrupt_file") from None
    return flat.reshape(header.shape, order="F" if header.fortran_order else "C").copy()


def _check_dtype(dtype: np.dtype, name: str) -> None:
    if dtype.kind != "f" or dtype.itemsize not in ACCEPTED_FLOAT_SIZES:
        raise InvalidInput(f"'{name}' has dtype {dtype}; send float16, float32 or float64.", code="bad_dtype")


def _check_layout(shape: tuple[int, ...], name: str, dim: int, row: str = "clip") -> None:
    """``shape`` must be ``(rows >= 1, dim)``; ``row`` names a row in messages."""
    if len(shape) != 2:
        raise InvalidInput(f"'{name}' must be 2-D ({row}s, {dim}), got shape {list(shape)}.", code="bad_shape")
    if shape[1] != dim:
        raise InvalidInput(
            f"'{name}' has {shape[1]} features per {row}; the model expects {dim}.",
            {"expected_dim": dim, "got_dim": int(shape[1])}, code="bad_shape",
        )
    if shape[0] < 1:
        raise InvalidInput(f"'{name}' has no {row}s; send at least one.", code="bad_shape")


def _check_array(array: np.ndarray, name: str, dim: int, row: str = "clip") -> None:
    """2-D ``(rows, dim)``, fp16/fp32/fp64, at least one row, finite and within float32's range."""
    _check_dtype(array.dtype, name)
    _check_layout(array.shape, name, dim, row)
    bad_rows = ~np.isfinite(array).all(axis=1)
    problem = "NaN or infinite values"
    if not bad_rows.any() and array.dtype.itemsize > 4:
        bad_rows = (np.abs(array) > _FLOAT32_MAX).any(axis=1)
        problem = f"values beyond float32's range (|x| > {_FLOAT32_MAX:.4g})"
    if bad_rows.any():
        first = int(np.nonzero(bad_rows)[0][0])
        raise InvalidInput(f"'{name}' contains {problem} (first in {row} {first}).", {row: first}, code="non_finite")


def _check_clip_count(num_clips: int, max_clips: int, pre: PreprocessingContract) -> None:
    if num_clips > max_clips:
        raise video_too_long(num_clips, max_clips, pre.clip_length_s)


def _layout_text(pre: PreprocessingContract) -> str:
    """e.g. ``slowfast (2304) + clip (512) + audio pann (2048)``."""
    video = [f"{g.name} ({g.dim})" for g in pre.video_groups]
    return " + ".join(video + [f"audio {g.name} ({g.dim})" for g in pre.audio_groups])


def _groups_from_npy(array: np.ndarray, pre: PreprocessingContract) -> dict[str, np.ndarray]:
    """Split a full-layout (T, D) array into the manifest's groups (video, then audio)."""
    groups = pre.feature_groups
    full = pre.stored_dim
    if array.ndim == 2 and pre.tef and array.shape[1] == full + 2 * len(pre.tef_after):
        raise InvalidInput(
            f"The array has {array.shape[1]} columns: it looks like it includes the TEF columns. Send the "
            f"{full} raw feature columns only ({_layout_text(pre)}); the service inserts TEF itself.",
            code="bad_shape",
        )
    if array.ndim == 2 and pre.audio_groups and array.shape[1] == sum(g.dim for g in pre.video_groups):
        raise InvalidInput(
            f"The array has the video groups' {array.shape[1]} columns but this model was trained with audio: "
            f"send {full} columns, {_layout_text(pre)}.",
            {"expected_dim": full, "got_dim": int(array.shape[1])}, code="bad_shape",
        )
    _check_array(array, "features", full)
    bounds = np.cumsum([0] + [g.dim for g in groups])
    return {g.name: array[:, bounds[i]:bounds[i + 1]] for i, g in enumerate(groups)}


def _npz_members(archive: zipfile.ZipFile, pre: PreprocessingContract) -> dict[str, zipfile.ZipInfo]:
    """The archive's member of each manifest group (``name`` or ``name.npy``), by the zip's directory."""
    expected = [g.name for g in pre.feature_groups]
    found: dict[str, zipfile.ZipInfo] = {}
    duplicates = []
    for info in archive.infolist():
        name = info.filename.removesuffix(".npy")
        if name in found:
            duplicates.append(name)
        found[name] = info
    missing = [name for name in expected if name not in found]
    extra = sorted(set(found) - set(expected))
    if missing or extra or duplicates:
        raise InvalidInput(
            f"The .npz must hold exactly the arrays {expected}; missing {missing}, unexpected {extra}"
            + (f", duplicated {sorted(set(duplicates))}" if duplicates else "") + _audio_hint(pre, missing, extra),
            {"expected": expected, "missing": missing, "unexpected": extra, "duplicated": sorted(set(duplicates))},
            code="bad_groups",
        )
    return {name: found[name] for name in expected}


def _audio_hint(pre: PreprocessingContract, missing: list[str], extra: list[str]) -> str:
    """The sentence that ends a ``bad_groups`` message: what the model takes when audio is the mismatch."""
    audio = [g for g in pre.audio_groups if g.name in missing]
    if audio:
        listed = ", ".join(f"'{g.name}' ({g.dim}-d per clip)" for g in audio)
        return (f". This model was trained with audio: add its audio group {listed}, computed as the manifest's "
                "audio encoder says (trdetr-extract writes it).")
    if extra and not pre.audio_groups:
        return (f". This model takes no audio features (its bundle has no audio groups): remove {extra}, or "
                "serve a bundle exported from a checkpoint trained with audio.")
    return "."


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, rows: int, max_bytes: int,
                 what: str) -> np.ndarray:
    """Inflate only the first ``rows`` rows of a C-order member (a Fortran-order one whole, if it fits)."""
    with archive.open(info) as member:
        header = _read_npy_header(member, what)
        columns = header.shape[1]
        if header.fortran_order and header.nbytes > max_bytes:
            raise InvalidInput(
                f"{what} is stored in Fortran order and declares {header.nbytes} bytes, more than the "
                f"{max_bytes} allowed; save a C-contiguous array (numpy.ascontiguousarray).", code="corrupt_file",
            )
        count = header.shape[0] * columns if header.fortran_order else rows * columns
        wanted = count * header.dtype.itemsize
        data = member.read(wanted)
    if len(data) != wanted:
        raise InvalidInput(
            f"{what} declares shape {list(header.shape)} but holds fewer bytes of data.", code="corrupt_file"
        )
    array = np.frombuffer(data, dtype=header.dtype, count=count)
    if header.fortran_order:
        return array.reshape(columns, header.shape[0]).T[:rows]
    return array.reshape(rows, columns)


def _groups_from_npz(body: bytes, pre: PreprocessingContract, max_clips: int,
                     max_unpacked_bytes: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Each group's first T rows (T = the shortest group) and every group's declared length.

    Everything is checked from the members' headers before a single data byte is inflated.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            members = _npz_members(archive, pre)
            lengths = {}
            for group in pre.feature_groups:
                info = members[group.name]
                what = f"The .npz member '{info.filename}'"
                with archive.open(info) as member:
                    header = _read_npy_header(member, what)
                _check_declared_size(header, info.file_size, what)
                _check_dtype(header.dtype, group.name)
                _check_layout(header.shape, group.name, group.dim)
                lengths[group.name] = int(header.shape[0])
            num_clips = min(lengths.values())
            _check_clip_count(num_clips, max_clips, pre)
            arrays = {
                name: _read_member(archive, info, num_clips, max_unpacked_bytes, f"The .npz member '{info.filename}'")
                for name, info in members.items()
            }
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, NotImplementedError) as exc:
        raise InvalidInput(f"The body is not a readable .npz file ({exc}).", code="corrupt_file") from None
    for group in pre.feature_groups:
        _check_array(arrays[group.name], group.name, group.dim)
    return arrays, lengths


def video_too_long(num_clips: int, max_clips: int, clip_length_s: float) -> InvalidInput:
    """422 ``video_too_long`` naming the limit in seconds and in clips (``TRDETR_MAX_VIDEO_S``)."""
    limit_s = max_clips * clip_length_s
    return InvalidInput(
        f"The video has {num_clips} clips ({num_clips * clip_length_s:g} s); at most {max_clips} clips "
        f"({limit_s:g} s of {clip_length_s:g}-s clips, TRDETR_MAX_VIDEO_S) are accepted. Split the video into "
        "parts of at most that length.",
        {"num_clips": num_clips, "max_clips": max_clips, "duration_s": num_clips * clip_length_s,
         "max_video_s": limit_s}, code="video_too_long",
    )


def parse_video(
    body: bytes, fmt: str, pre: PreprocessingContract, *, max_clips: int, max_unpacked_bytes: int
) -> VideoFeatures:
    """Validate an uploaded video and normalise it as the manifest says.

    Returns features ``(T, D)`` float32 without TEF; T = the shortest group's length.
    ``max_unpacked_bytes`` bounds what a Fortran-order ``.npz`` member may inflate to (C-order
    members only ever inflate the T rows used).
    """
    if not body:
        raise InvalidInput("The body is empty; send the bytes of a .npy or .npz file.", code="corrupt_file")
    if fmt == "npy":
        groups = _groups_from_npy(_load_npy(body, "The body"), pre)
        lengths = {name: int(array.shape[0]) for name, array in groups.items()}
        _check_clip_count(min(lengths.values()), max_clips, pre)
    else:
        groups, lengths = _groups_from_npz(body, pre, max_clips, max_unpacked_bytes)
    try:
        features = build_video_features(
            list(groups.values()), normalize=pre.group_normalization, tef=False, eps=pre.l2_eps
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
