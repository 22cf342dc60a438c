"""Video feature group layouts: known orders per checkpoint format, the flag, and the fallback."""

from __future__ import annotations

import pytest

from model_export.export.layouts import LayoutError, parse_video_groups, resolve_video_layout


def _names_dims(layout):
    return [(g.name, g.dim) for g in layout.groups]


def test_official_checkpoints_put_slowfast_before_clip():
    layout = resolve_video_layout("official", 2818, use_tef=True)
    assert layout.source == "official"
    assert _names_dims(layout) == [("slowfast", 2304), ("clip", 512)]


def test_lighthouse_checkpoints_put_clip_before_slowfast():
    layout = resolve_video_layout("lighthouse", 2818, use_tef=True)
    assert _names_dims(layout) == [("clip", 512), ("slowfast", 2304)]


def test_an_unknown_width_becomes_one_group_and_says_why():
    layout = resolve_video_layout("official", 34, use_tef=True)
    assert layout.source == "unknown"
    assert _names_dims(layout) == [("video", 32)]
    assert "--video-groups" in layout.note


def test_without_tef_the_whole_width_is_features():
    assert _names_dims(resolve_video_layout("official", 2816, use_tef=False)) == [("slowfast", 2304), ("clip", 512)]


def test_the_flag_overrides_the_format_default():
    layout = resolve_video_layout("official", 2818, True, parse_video_groups("clip:512,slowfast:2304"))
    assert layout.source == "flag"
    assert _names_dims(layout) == [("clip", 512), ("slowfast", 2304)]


def test_flag_dims_that_do_not_add_up_name_both_widths():
    with pytest.raises(LayoutError, match="add up to 2800 .* 2816 wide"):
        resolve_video_layout("official", 2818, True, parse_video_groups("slowfast:2288,clip:512"))


@pytest.mark.parametrize("spec", ["slowfast", "slowfast:abc", "slowfast:0", ":12", "a:1,a:2", "slowfast:2304,"])
def test_malformed_group_specs_are_rejected_with_an_example(spec):
    with pytest.raises(LayoutError):
        parse_video_groups(spec)


def test_groups_recorded_by_trdetr_train_beat_the_format_default():
    layout = resolve_video_layout("official", 34, True, recorded=[["group0", 24], ["group1", 8]])
    assert layout.source == "checkpoint"
    assert _names_dims(layout) == [("group0", 24), ("group1", 8)]


def test_the_flag_beats_recorded_groups():
    layout = resolve_video_layout("official", 34, True, parse_video_groups("a:30,b:2"), recorded=[["g", 32]])
    assert (layout.source, _names_dims(layout)) == ("flag", [("a", 30), ("b", 2)])


@pytest.mark.parametrize("recorded", [[["g", 30]], "slowfast", [["g"]], [["bad name", 32]]])
def test_recorded_groups_that_do_not_fit_are_refused(recorded):
    with pytest.raises(LayoutError):
        resolve_video_layout("official", 34, True, recorded=recorded)


def test_audio_layouts_official_has_tef_after_the_audio_lighthouse_not():
    from model_export.export.layouts import resolve_audio_layout

    assert resolve_audio_layout("official", None, True) is None
    official = resolve_audio_layout("official", 2050, True)
    assert [(g.name, g.dim) for g in official.groups] == [("pann", 2048)] and official.tef
    lighthouse = resolve_audio_layout("lighthouse", 2048, True)
    assert [(g.name, g.dim) for g in lighthouse.groups] == [("pann", 2048)] and not lighthouse.tef
    assert not resolve_audio_layout("official", 2048, False).tef  # no TEF at all without use_tef
    assert resolve_audio_layout("official", 14, True).groups[0].name == "audio"


def test_audio_groups_that_do_not_add_up_are_refused():
    from model_export.export.layouts import parse_audio_groups, resolve_audio_layout

    with pytest.raises(LayoutError, match="add up to 2048 .* 2046 wide"):
        resolve_audio_layout("official", 2048, True, parse_audio_groups("pann:2048"))
    assert resolve_audio_layout("trdetr-service", 12, True, recorded=[["vggish", 10]]).source == "checkpoint"
