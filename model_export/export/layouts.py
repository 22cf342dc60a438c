"""Video feature group layouts: which per-clip features, in which order, make up ``src_vid``.

A checkpoint stores only the total video width (``v_feat_dim``, TEF columns included), not how
it splits into groups. The split matters to the service: each group is L2-normalised on its own
before concatenation, so normalising the wrong slices silently changes the model's inputs.

Checkpoints written by ``trdetr-train`` record their groups in the opt field ``video_feature_groups``
(``[[name, dim], ...]``). Otherwise, known layouts (QVHighlights ``slowfast_clip`` features, 2304 + 512 = 2816
columns):
- the official TR-DETR scripts list ``slowfast_features`` then ``clip_features``;
- Lighthouse concatenates ``clip`` then ``slowfast``.
Anything else needs ``--video-groups`` or falls back to one group ``video`` of the full width.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trdetr_common.manifest import AudioFeatureGroup, VideoFeatureGroup

PANN_DIM = 2048
SLOWFAST_DIM = 2304
CLIP_DIM = 512
TEF_COLUMNS = 2

_KNOWN_LAYOUTS: dict[str, list[tuple[str, int]]] = {
    "official": [("slowfast", SLOWFAST_DIM), ("clip", CLIP_DIM)],
    "lighthouse": [("clip", CLIP_DIM), ("slowfast", SLOWFAST_DIM)],
}
_GROUP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


class LayoutError(ValueError):
    """A video group layout that does not fit the checkpoint; the message says what to fix."""


@dataclass(frozen=True)
class VideoLayout:
    """Resolved layout: ordered groups, where it came from, and a note for humans."""

    groups: list[VideoFeatureGroup]
    source: str  # "official" | "lighthouse" | "flag" | "unknown"
    note: str | None = None


def parse_video_groups(spec: str) -> list[VideoFeatureGroup]:
    """Parse ``"slowfast:2304,clip:512"`` into ordered groups.

    Args:
        spec: comma-separated ``name:dim`` pairs.
    Returns:
        list of VideoFeatureGroup in the given order.
    """
    groups = []
    for part in (p.strip() for p in spec.split(",")):
        name, sep, dim = part.partition(":")
        if not sep or not _GROUP_NAME.match(name) or not dim.strip().isdigit() or int(dim) <= 0:
            raise LayoutError(
                f"bad video group {part!r} in {spec!r}: write name:dim pairs separated by commas, "
                "e.g. slowfast:2304,clip:512"
            )
        groups.append(VideoFeatureGroup(name=name, dim=int(dim)))
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise LayoutError(f"video group names must be unique, got {names}")
    return groups


def feature_width(v_feat_dim: int, use_tef: bool) -> int:
    """Width of the concatenated feature groups: ``v_feat_dim`` minus the TEF columns."""
    return v_feat_dim - (TEF_COLUMNS if use_tef else 0)


def resolve_video_layout(
    checkpoint_format: str,
    v_feat_dim: int,
    use_tef: bool,
    override: list[VideoFeatureGroup] | None = None,
    recorded: object = None,
) -> VideoLayout:
    """Decide the ordered video feature groups of a checkpoint.

    Args:
        checkpoint_format: "official" | "lighthouse" | "trdetr-service".
        v_feat_dim: model input width, TEF columns included.
        use_tef: whether the last 2 columns are TEF.
        override: groups given on the command line; must add up to the feature width.
        recorded: the opt's ``video_feature_groups`` (``[[name, dim], ...]``) when the checkpoint has it.
    Returns:
        VideoLayout; source "unknown" (one group ``video``) when the split cannot be known.
    """
    width = feature_width(v_feat_dim, use_tef)
    if override:
        _check_width(override, width, v_feat_dim, use_tef, "--video-groups")
        return VideoLayout(list(override), "flag", "video groups given explicitly at export time")
    if recorded:
        groups = _recorded_groups(recorded)
        _check_width(groups, width, v_feat_dim, use_tef, "the checkpoint's video_feature_groups")
        return VideoLayout(groups, "checkpoint", "video groups recorded in the checkpoint by trdetr-train")
    known = _KNOWN_LAYOUTS.get(checkpoint_format)
    if known and sum(dim for _, dim in known) == width:
        groups = [VideoFeatureGroup(name=n, dim=d) for n, d in known]
        order = " then ".join(f"{g.name} ({g.dim})" for g in groups)
        return VideoLayout(groups, checkpoint_format, f"{checkpoint_format} layout for {width} columns: {order}")
    note = (
        f"the split of the {width} video feature columns into groups cannot be known from a "
        f"{checkpoint_format!r} checkpoint; exported as one group 'video' of width {width}, L2-normalised "
        "as a whole. Re-export with --video-groups name:dim,... if the model was trained on several "
        "separately normalised groups"
    )
    return VideoLayout([VideoFeatureGroup(name="video", dim=width)], "unknown", note)


def _recorded_groups(recorded: object) -> list[VideoFeatureGroup]:
    """``[[name, dim], ...]`` from a checkpoint's opt, validated like the ``--video-groups`` flag."""
    try:
        spec = ",".join(f"{name}:{int(dim)}" for name, dim in recorded)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as error:
        raise LayoutError(
            f"the checkpoint's video_feature_groups {recorded!r} is not a list of [name, dim] pairs; "
            "override it with --video-groups name:dim,..."
        ) from error
    return parse_video_groups(spec)


def _check_width(groups: list[VideoFeatureGroup], width: int, v_feat_dim: int, use_tef: bool, what: str) -> None:
    total = sum(g.dim for g in groups)
    if total != width:
        raise LayoutError(
            f"{what} add up to {total} columns but the checkpoint's video features are {width} "
            f"wide (v_feat_dim {v_feat_dim}{' minus 2 TEF columns' if use_tef else ''}); fix the dims"
        )


@dataclass(frozen=True)
class AudioLayout:
    """Resolved audio layout: ordered groups, whether TEF follows them, where it came from."""

    groups: list[AudioFeatureGroup]
    tef: bool
    source: str  # "official" | "lighthouse" | "checkpoint" | "flag"
    note: str


def resolve_audio_layout(
    checkpoint_format: str,
    a_feat_dim: int | None,
    use_tef: bool,
    override: list[AudioFeatureGroup] | None = None,
    recorded: object = None,
) -> AudioLayout | None:
    """Decide the audio groups of a checkpoint trained with audio (None without audio).

    The official ``start_end_dataset_audio`` appends the TEF columns to the audio features as well
    (its scripts set ``a_feat_dim=2050`` for 2048-d PANN); Lighthouse appends TEF to the video only
    (``a_feat_dim=2048``). ``trdetr-service`` checkpoints follow the official layout.

    Args:
        checkpoint_format: "official" | "lighthouse" | "trdetr-service".
        a_feat_dim: the model's audio input width (TEF columns included when the layout has them).
        use_tef: whether the model uses TEF at all.
        override: ``--audio-groups`` (must add up to the audio feature width).
        recorded: the opt's ``audio_feature_groups`` (``[[name, dim], ...]``) when the checkpoint has it.
    """
    if not a_feat_dim:
        return None
    tef = use_tef and checkpoint_format != "lighthouse"
    width = a_feat_dim - (TEF_COLUMNS if tef else 0)
    where = "then the TEF columns again" if tef else "without TEF of their own"
    if width < 1:
        raise LayoutError(f"a_feat_dim={a_feat_dim} leaves no audio feature column after the 2 TEF columns")
    if override or recorded:
        groups = [AudioFeatureGroup(name=g.name, dim=g.dim) for g in
                  (override or _recorded_groups(recorded))]
        total = sum(g.dim for g in groups)
        if total != width:
            raise LayoutError(
                f"audio groups add up to {total} columns but the checkpoint's audio features are {width} wide "
                f"(a_feat_dim {a_feat_dim}{' minus 2 TEF columns' if tef else ''}); fix the dims")
        source = "flag" if override else "checkpoint"
        return AudioLayout(groups, tef, source, f"audio groups given by the {source}, {where}")
    name = "pann" if width == PANN_DIM else "audio"
    note = (f"{checkpoint_format} audio layout: one group '{name}' ({width}) after the video groups and TEF, "
            f"{where}")
    source = "lighthouse" if checkpoint_format == "lighthouse" else "official"
    return AudioLayout([AudioFeatureGroup(name=name, dim=width)], tef, source, note)


def parse_audio_groups(spec: str) -> list[AudioFeatureGroup]:
    """Parse ``"pann:2048"`` into ordered audio groups (same syntax as ``--video-groups``)."""
    return [AudioFeatureGroup(name=g.name, dim=g.dim) for g in parse_video_groups(spec)]
