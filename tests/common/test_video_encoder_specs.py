"""Manifest video-encoder entries: optional and additive (old manifests load), discriminated by kind."""

from __future__ import annotations

import json

import pydantic
import pytest

from trdetr_common.manifest import Manifest, VideoFeatureGroup
from trdetr_common.video_encoders import GROUP_ALIGNMENT, EncoderWeights, SlowFastEncoderSpec


def _manifest_without_encoders() -> dict:
    """The default bundle's manifest as written before video encoders existed: no encoder fields at all."""
    from pathlib import Path

    data = json.loads((Path(__file__).resolve().parents[2] / "service" / "default_bundle" / "manifest.json").read_text())
    for group in data["preprocessing"]["video_groups"]:
        group.pop("encoder", None)
    data["preprocessing"].pop("video_groups_alignment", None)
    return data


def test_a_manifest_without_encoders_loads_and_names_every_group_as_missing():
    manifest = Manifest.model_validate(_manifest_without_encoders())
    assert manifest.groups_without_encoder() == ["slowfast", "clip"]
    assert manifest.preprocessing.video_groups_alignment == GROUP_ALIGNMENT


def test_encoder_kind_selects_the_spec_and_unknown_kinds_are_refused():
    spec = SlowFastEncoderSpec(weights=EncoderWeights(file_name="SLOWFAST_8x8_R50.pkl", format="pyslowfast-caffe2-pkl"))
    group = VideoFeatureGroup.model_validate({"name": "slowfast", "dim": 2304, "encoder": spec.model_dump(mode="json")})
    assert isinstance(group.encoder, SlowFastEncoderSpec) and group.encoder.slow_dim + group.encoder.fast_dim == 2304
    with pytest.raises(pydantic.ValidationError):
        VideoFeatureGroup.model_validate({"name": "x", "dim": 3, "encoder": {"kind": "optical_flow", "weights": {}}})
